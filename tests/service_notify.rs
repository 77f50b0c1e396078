//! systemd hears the runner (`Type=notify`): READY on reaching Active, its state as
//! STATUS, STOPPING and EXTEND_TIMEOUT while it drains. The core decides each notice
//! (`tell(...)` in the spec table); this checks they reach a real notification socket.
#![cfg(target_os = "linux")]
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use fyn_runner::core::{CoreConfig, ExitCode};
use fyn_runner::devserver::{DevServer, DevServerConfig, JobRequest, JobState};
use fyn_runner::protocol::SessionParams;
use fyn_runner::runtime::{self, RunnerHandle, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(30);

async fn dev_server(db: Option<&Path>, listen: Option<std::net::SocketAddr>) -> DevServer {
    let mut config = DevServerConfig::ephemeral();
    config.session = SessionParams {
        heartbeat_interval_ms: 500,
        ack_timeout_ms: 300,
        runner_lost_threshold_ms: 60_000,
    };
    config.db = db.map(Path::to_path_buf);
    if let Some(addr) = listen {
        config.listen = addr;
    }
    DevServer::start(config).await.expect("dev-server")
}

fn settings(
    server: &DevServer,
    dir: &Path,
    token: Option<String>,
    drain_deadline_secs: u64,
) -> RunnerSettings {
    RunnerSettings {
        token: token.map(Secret::new),
        name: "drain-runner".into(),
        core: CoreConfig {
            slots: 2,
            drain_deadline_secs,
            flush_grace_secs: 2,
            ..CoreConfig::default()
        },
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        ..RunnerSettings::new(
            runtime::settings::endpoint(&server.url(), false).expect("url"),
            dir.to_path_buf(),
        )
    }
}

fn sleep_job(secs: &str, grace: u64) -> JobRequest {
    JobRequest {
        command: vec!["sleep".into(), secs.into()],
        env: BTreeMap::new(),
        timeout_secs: 600,
        output_limit_bytes: None,
        cancel_grace_secs: Some(grace),
        workdir: None,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

async fn running(server: &DevServer, id: &str) {
    let deadline = Instant::now() + WAIT;
    while server.job(id).expect("query").expect("job").state != JobState::Running {
        assert!(Instant::now() < deadline, "job {id} never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn draining(handle: &mut RunnerHandle) {
    let status = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Draining"))
        .await
        .expect("drains");
    assert_eq!(status.state, "Draining");
}

/// The one test of this binary: `NOTIFY_SOCKET` is process-wide (the `sd-notify` crate
/// reads it), so it is set here, before any thread of the test's runtime exists.
#[test]
fn systemd_hears_ready_stopping_and_extend_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    // SAFETY: no other thread of this process reads or writes the environment now:
    // this binary has no other test, and the runtime below is not built yet.
    unsafe { std::env::set_var("NOTIFY_SOCKET", &socket_path) };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            hears(&dir, &socket_path).await;
            a_huge_drain_deadline_does_not_overflow(&dir, &socket_path).await;
        });
}

async fn hears(dir: &tempfile::TempDir, socket_path: &Path) {
    let server = dev_server(None, None).await;
    let listener = tokio::net::UnixDatagram::bind(socket_path).expect("bind");
    let config = settings(
        &server,
        &dir.path().join("state"),
        Some(server.mint_token().expect("token")),
        30,
    );
    let mut handle = runtime::start(config).expect("starts");
    let mut heard = String::new();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while !heard.contains("READY=1") {
        assert!(Instant::now() < deadline, "no READY=1: {heard}");
        let n = tokio::time::timeout(WAIT, listener.recv(&mut buf))
            .await
            .expect("a notification")
            .expect("recv");
        heard.push_str(&String::from_utf8_lossy(&buf[..n]));
        heard.push('\n');
    }
    assert!(heard.contains("STATUS=Registering"), "{heard}");
    let id = server.submit_job(sleep_job("0.5", 1)).expect("submit");
    running(&server, &id).await;
    handle.shutdown();
    draining(&mut handle).await;
    while !heard.contains("STOPPING=1") {
        assert!(Instant::now() < deadline, "no STOPPING=1: {heard}");
        let n = tokio::time::timeout(WAIT, listener.recv(&mut buf))
            .await
            .expect("a notification")
            .expect("recv");
        heard.push_str(&String::from_utf8_lossy(&buf[..n]));
        heard.push('\n');
    }
    assert!(heard.contains("EXTEND_TIMEOUT_USEC="), "{heard}");
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops"),
        ExitCode::Clean
    );
    server.shutdown().await;
}

/// Issue 15 item 10: a drain deadline of u64::MAX seconds (past the control socket's
/// own check, straight to the runner) must not overflow into a tiny timeout that gets
/// the runner killed mid-drain. The bound saturates, and the crate's `u32` field
/// clamps it to its largest value (the drain's progress notices extend it again).
async fn a_huge_drain_deadline_does_not_overflow(dir: &tempfile::TempDir, socket_path: &Path) {
    let server = dev_server(None, None).await;
    let _ = std::fs::remove_file(socket_path);
    let listener = tokio::net::UnixDatagram::bind(socket_path).expect("bind");
    let config = settings(
        &server,
        &dir.path().join("state-huge"),
        Some(server.mint_token().expect("token")),
        30,
    );
    let mut handle = runtime::start(config).expect("starts");
    let mut heard = String::new();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while !heard.contains("READY=1") {
        assert!(Instant::now() < deadline, "no READY=1: {heard}");
        let n = tokio::time::timeout(WAIT, listener.recv(&mut buf))
            .await
            .expect("a notification")
            .expect("recv");
        heard.push_str(&String::from_utf8_lossy(&buf[..n]));
        heard.push('\n');
    }
    // A running job keeps the drain going.
    let id = server.submit_job(sleep_job("300", 1)).expect("submit");
    running(&server, &id).await;
    handle
        .control()
        .send(runtime::Control::Drain {
            deadline_secs: Some(u64::MAX),
            by: fyn_runner::core::StopOrigin::DrainCommand,
        })
        .expect("sent");
    heard.clear();
    while !heard.contains("EXTEND_TIMEOUT_USEC=") {
        assert!(Instant::now() < deadline, "no EXTEND_TIMEOUT_USEC: {heard}");
        let n = tokio::time::timeout(WAIT, listener.recv(&mut buf))
            .await
            .expect("a notification")
            .expect("recv");
        heard.push_str(&String::from_utf8_lossy(&buf[..n]));
        heard.push('\n');
    }
    assert!(
        heard.contains(&format!("EXTEND_TIMEOUT_USEC={}", u32::MAX)),
        "{heard}"
    );
    // The status follows once the batch that told systemd is performed.
    let status = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state != "Active"))
        .await
        .expect("the status moves on");
    assert_eq!(status.state, "Draining", "still draining, no panic");
    handle.force();
    let code = tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops");
    assert_eq!(code.code(), 2, "a forced stop, not a panic");
    server.shutdown().await;
}
