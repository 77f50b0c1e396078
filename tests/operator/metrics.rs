//! `run --metrics-listen 127.0.0.1:0` on the real binary: the port in `status`, an
//! exposition `promtool` accepts, counters that move as a job runs and as the link
//! drops, `/readyz` following the session, `/healthz` answered by the loop.

use std::time::{Duration, Instant};

use fyn_runner::devserver::JobRequest;

use crate::support::{
    Runner, dev_server, finished, get, promtool_check, runner_active, sample, session,
};

/// Scrape `/metrics` in Prometheus's text format (what promtool reads).
async fn scrape(addr: &str) -> String {
    let (status, body) = get(addr, "/metrics", &[]).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn wait_for(addr: &str, path: &str, code: u16) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _) = get(addr, path, &[]).await;
        if status == code {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < crate::support::WAIT,
            "{path} never answered {code}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn metrics_and_probes_follow_jobs_and_the_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("api.sqlite");
    let server = dev_server(&db, None).await;
    let mut runner = Runner::spawn(&server, dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    runner_active(&server, &mut runner).await;

    // The bound port: in status, and in the log.
    let status = runner.status().await;
    let addr = status["metrics_listen"]
        .as_str()
        .expect("status shows the metrics address")
        .to_owned();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    assert!(
        runner.log_text().contains(&addr),
        "the bound address is logged:\n{}",
        runner.log_text()
    );
    wait_for(&addr, "/readyz", 200).await;
    let (code, body) = get(&addr, "/healthz", &[]).await;
    assert_eq!((code, body.as_str()), (200, "ok: Active\n"));

    let before = scrape(&addr).await;
    promtool_check(&before).unwrap_or_else(|e| panic!("{e}\n{before}"));
    assert_eq!(
        sample(&before, r#"fyn_runner_state{state="Active"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&before, "fyn_runner_connected"), Some(1.0));
    assert_eq!(sample(&before, "fyn_runner_jobs_started_total"), Some(0.0));

    // A job moves the job counters.
    let id = server
        .submit_job(JobRequest {
            command: vec!["sh".into(), "-c".into(), "printf hello".into()],
            env: Default::default(),
            workdir: None,
            timeout_secs: 60,
            output_limit_bytes: None,
            cancel_grace_secs: Some(1),
            inputs: Default::default(),
            outputs: Default::default(),
            kv: Default::default(),
        })
        .expect("submit");
    finished(&server, &id).await;
    // The acknowledgement of job_finished may trail the job's end a little.
    let deadline = Instant::now() + crate::support::WAIT;
    let after = loop {
        let text = scrape(&addr).await;
        if sample(&text, "fyn_runner_outbox_depth") == Some(0.0) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox never emptied:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    promtool_check(&after).unwrap_or_else(|e| panic!("{e}\n{after}"));
    assert_eq!(sample(&after, "fyn_runner_jobs_started_total"), Some(1.0));
    assert_eq!(
        sample(
            &after,
            r#"fyn_runner_jobs_finished_total{outcome="succeeded"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, r#"fyn_runner_output_bytes_total{stream="stdout"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(&after, "fyn_runner_job_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "fyn_runner_dispatch_latency_seconds_count"),
        Some(1.0)
    );
    assert!(sample(&after, "fyn_runner_commands_applied_total") >= Some(1.0));
    let acked = sample(&after, "fyn_runner_events_acked_total").expect("acked");
    assert!(
        acked >= 4.0,
        "accepted, started, output, finished: {acked}\n{after}"
    );
    assert!(sample(&after, "fyn_runner_store_commit_seconds_count") > Some(0.0));
    assert_eq!(
        sample(&after, r#"fyn_runner_hardware_syncs_total{kind="full"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&after, "fyn_runner_jobs_running"), Some(0.0));

    // The link drops: not ready within one heartbeat, the loss counted by its cause.
    let api_addr = server.local_addr();
    server.shutdown().await;
    let took = wait_for(&addr, "/readyz", 503).await;
    let heartbeat = Duration::from_millis(session().heartbeat_interval_ms);
    assert!(took <= heartbeat, "/readyz turned 503 only after {took:?}");
    let (code, body) = get(&addr, "/healthz", &[]).await;
    assert_eq!(code, 200, "the loop still answers: {body}");
    let lost = scrape(&addr).await;
    assert_eq!(sample(&lost, "fyn_runner_connected"), Some(0.0));
    assert_eq!(
        sample(&lost, r#"fyn_runner_state{state="Reconnecting"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&lost, "fyn_runner_session_uptime_seconds"),
        Some(0.0)
    );
    let reconnects: f64 = lost
        .lines()
        .filter(|l| l.starts_with("fyn_runner_reconnects_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(reconnects, 1.0, "{lost}");

    // The API is back: ready again once Active.
    let server = dev_server(&db, Some(api_addr)).await;
    wait_for(&addr, "/readyz", 200).await;
    let back = scrape(&addr).await;
    promtool_check(&back).unwrap_or_else(|e| panic!("{e}\n{back}"));
    assert_eq!(
        sample(&back, r#"fyn_runner_state{state="Active"}"#),
        Some(1.0)
    );
    assert_eq!(runner.stop().await, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn openmetrics_on_request_and_foreign_hosts_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(&dir.path().join("api.sqlite"), None).await;
    let mut runner = Runner::spawn(&server, dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    runner_active(&server, &mut runner).await;
    let addr = runner.status().await["metrics_listen"]
        .as_str()
        .expect("address")
        .to_owned();
    let accept = ("Accept", "application/openmetrics-text; version=1.0.0");
    let (code, text) = get(&addr, "/metrics", &[accept]).await;
    assert_eq!(code, 200);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# UNIT fyn_runner_job_duration_seconds seconds"),
        "{text}"
    );
    // A page in a browser reaching this port through a rebound name is refused.
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    let (code, _) = get(&addr, "/nothing", &[]).await;
    assert_eq!(code, 404);
    assert_eq!(runner.stop().await, 0);
    server.shutdown().await;
}

#[test]
fn an_address_off_loopback_needs_the_opt_in() {
    let out = std::process::Command::new(crate::support::BIN)
        .args([
            "run",
            "--server",
            "ws://127.0.0.1:9",
            "--metrics-listen",
            "0.0.0.0:9464",
            "--print-config",
        ])
        .env_remove("FYN_RUNNER_CONFIG")
        .output()
        .expect("runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("--metrics-allow-remote"), "{said}");
    let out = std::process::Command::new(crate::support::BIN)
        .args([
            "run",
            "--server",
            "ws://127.0.0.1:9",
            "--metrics-listen",
            "0.0.0.0:9464",
            "--metrics-allow-remote",
            "--print-config",
        ])
        .env_remove("FYN_RUNNER_CONFIG")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("metrics_listen = \"0.0.0.0:9464\""),
        "{shown}"
    );
    let out = std::process::Command::new(crate::support::BIN)
        .args([
            "run",
            "--server",
            "ws://127.0.0.1:9",
            "--metrics-listen",
            "9464",
        ])
        .env_remove("FYN_RUNNER_CONFIG")
        .output()
        .expect("runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("IP:PORT"), "{said}");
}

/// The dev-server's own `/metrics`: behind the admin token, runners by state, sessions,
/// the queue, jobs by state and its request latencies, in a form promtool accepts.
#[tokio::test]
async fn the_dev_server_serves_metrics_behind_its_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(&dir.path().join("api.sqlite"), None).await;
    let addr = server.local_addr().to_string();
    let (code, _) = get(&addr, "/metrics", &[]).await;
    assert_eq!(code, 401, "no token, no metrics");
    let bearer = format!("Bearer {}", server.admin_token());
    let auth = ("Authorization", bearer.as_str());
    // A job waits in the queue before any runner exists.
    let queued = server
        .submit_job(JobRequest {
            command: vec!["true".into()],
            env: Default::default(),
            workdir: None,
            timeout_secs: 60,
            output_limit_bytes: None,
            cancel_grace_secs: None,
            inputs: Default::default(),
            outputs: Default::default(),
            kv: Default::default(),
        })
        .expect("submit");
    let (_, _) = get(&addr, "/admin/v1/jobs", &[auth]).await;
    let (code, text) = get(&addr, "/metrics", &[auth]).await;
    assert_eq!(code, 200, "{text}");
    promtool_check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        sample(&text, "fyn_devserver_queue_depth"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"fyn_devserver_jobs{state="queued"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "fyn_devserver_sessions"), Some(0.0));
    assert!(
        text.contains(
            r#"fyn_devserver_request_duration_seconds_count{method="GET",route="/admin/v1/jobs"} 1"#
        ),
        "{text}"
    );
    // A runner connects and takes the job.
    let mut runner = Runner::spawn(&server, dir.path(), &[]);
    runner_active(&server, &mut runner).await;
    finished(&server, &queued).await;
    let (_, text) = get(&addr, "/metrics", &[auth]).await;
    assert_eq!(
        sample(&text, r#"fyn_devserver_runners{state="active"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "fyn_devserver_sessions"), Some(1.0));
    assert_eq!(sample(&text, "fyn_devserver_queue_depth"), Some(0.0));
    assert_eq!(
        sample(&text, r#"fyn_devserver_jobs{state="finished"}"#),
        Some(1.0)
    );
    let accept = ("Accept", "application/openmetrics-text; version=1.0.0");
    let (_, open) = get(&addr, "/metrics", &[auth, accept]).await;
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert_eq!(runner.stop().await, 0);
    server.shutdown().await;
}
