//! A job's files through the dev-server, from `fyn-runner ctl` to the runner's side and
//! back: `ctl submit --input --output --kv` stores the inputs and queues the job; a
//! hand-driven runner gets a `start_job` with per-attempt URLs, fetches the inputs with
//! the runner's transfer module, reports phase, progress, key-value writes, uploads the
//! outputs and reports them and its accounting; `ctl job`, `ctl results` and `ctl fetch`
//! show it all. Also: what the blob endpoints refuse (a foreign Origin or Host, a wrong
//! digest, an unknown or spent token).
#![cfg(unix)]

mod wire;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use fyn_runner::devserver::{DevServer, DevServerConfig, JobState};
use fyn_runner::protocol::{
    ExitStatus, JobOutcome, JobPhase, JobSpec, RunnerEvent, content_digest, to_hex,
};
use fyn_runner::runtime::transfer::{RetryPolicy, Timeouts, TransferSettings, Transfers};
use sha2::{Digest, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn ctl(server: &DevServer, token_file: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
    command
        .arg("ctl")
        .arg("--server")
        .arg(server.admin_url())
        .arg("--admin-token-file")
        .arg(token_file)
        .args(args)
        .env_remove("FYN_RUNNER_ADMIN_TOKEN")
        .env_remove("FYN_RUNNER_ADMIN_URL")
        .stdin(Stdio::null());
    command
}

/// Run off the async threads: the dev-server answering it runs on them.
async fn run(mut command: Command) -> std::io::Result<Output> {
    tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(std::io::Error::other)?
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

fn transfers(dir: &Path) -> Result<Transfers, Box<dyn std::error::Error>> {
    Ok(Transfers::new(&TransferSettings {
        ca_file: None,
        allow_insecure: false,
        cache_dir: dir.join("cache"),
        cache_max_bytes: 1 << 30,
        timeouts: Timeouts::default(),
        retry: RetryPolicy {
            attempts: 2,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
        },
    })?)
}

/// A blob request as a browser (or anyone) might send it: the exact headers given.
async fn blob_request(
    server: &DevServer,
    method: &str,
    url: &str,
    headers: &str,
    body: &str,
) -> u16 {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| format!("/{path}"))
        .unwrap_or_default();
    let Ok(mut stream) = tokio::net::TcpStream::connect(server.local_addr()).await else {
        return 0;
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    // Only the status line: a body may be a blob's bytes.
    String::from_utf8_lossy(&response[..response.len().min(64)])
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn inputs_results_progress_and_kv_round_trip_through_ctl() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("admin-token");
    let server = DevServer::start(DevServerConfig {
        admin_token_file: Some(token_file.clone()),
        ..DevServerConfig::ephemeral()
    })
    .await?;
    let local = dir.path().join("local");
    std::fs::create_dir(&local)?;
    let mesh: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(local.join("mesh.bin"), &mesh)?;
    std::fs::write(local.join("run.sh"), "echo run\n")?;
    std::fs::set_permissions(
        local.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mesh_arg = format!("{}:in/mesh.bin", local.join("mesh.bin").display());
    let script_arg = local.join("run.sh").display().to_string();

    // The operator submits; the runner registers afterwards and gets the job.
    let submitted = run(ctl(
        &server,
        &token_file,
        &[
            "submit",
            "--input",
            &mesh_arg,
            "--input",
            &script_arg,
            "--output",
            "result.txt",
            "--output",
            "csv/*.csv",
            "--output",
            "never.txt",
            "--kv",
            "step=1",
            "--",
            "sh",
            "run.sh",
        ],
    ))
    .await?;
    assert_eq!(
        submitted.status.code(),
        Some(0),
        "{}",
        text(&submitted.stderr)
    );
    let id = text(&submitted.stdout).trim().to_owned();

    let (_identity, mut runner) = wire::register(&server).await;
    wire::activate(&mut runner).await;
    let (_, spec) = wire::expect_start_job(&mut runner).await;
    assert_eq!(spec.job_id, id);
    assert_eq!(spec.kv.get("step").map(String::as_str), Some("1"));
    spec.validate()?;
    let job = spec.job_ref();
    let mut index = 0;
    let mut event = |event: RunnerEvent| {
        index += 1;
        (index, event)
    };
    let (i, e) = event(RunnerEvent::JobAccepted { job: job.clone() });
    wire::send_event(&mut runner, i, e).await;
    let (i, e) = event(RunnerEvent::JobPhase {
        job: job.clone(),
        phase: JobPhase::Fetching,
    });
    wire::send_event(&mut runner, i, e).await;

    // The runner's side: inputs through the transfer module, into work/.
    let work = dir.path().join("job").join("work");
    std::fs::create_dir_all(&work)?;
    let transfers = transfers(&dir.path().join("runner"))?;
    for input in &spec.inputs {
        transfers.fetch_input(input, &work, None).await?;
    }
    assert_eq!(std::fs::read(work.join("in/mesh.bin"))?, mesh);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(work.join("run.sh"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o755, "executable here, executable there");

    check_blob_rules(&server, &spec).await;

    let (i, e) = event(RunnerEvent::JobStarted {
        job: job.clone(),
        pid: 4242,
    });
    wire::send_event(&mut runner, i, e).await;
    let (i, e) = event(RunnerEvent::JobProgress {
        job: job.clone(),
        fraction: Some(0.5),
        message: Some("half way".into()),
    });
    wire::send_event(&mut runner, i, e).await;
    let (i, e) = event(RunnerEvent::JobKvPut {
        job: job.clone(),
        key: "step".into(),
        value: "2".into(),
    });
    wire::send_event(&mut runner, i, e).await;

    // The process "wrote" its results; the runner uploads them.
    std::fs::write(work.join("result.txt"), "the answer is 42\n")?;
    std::fs::create_dir(work.join("csv"))?;
    std::fs::write(work.join("csv/a.csv"), "x,y\n1,2\n")?;
    let (i, e) = event(RunnerEvent::JobPhase {
        job: job.clone(),
        phase: JobPhase::Uploading,
    });
    wire::send_event(&mut runner, i, e).await;
    let plan = transfers.plan_outputs(&work, &spec.outputs, None).await?;
    assert_eq!(plan.missing, ["never.txt"]);
    for planned in &plan.uploads {
        let file = transfers.upload(&work, planned, None).await?;
        let (i, e) = event(RunnerEvent::JobOutputFile {
            job: job.clone(),
            path: file.path,
            url: file.url,
            sha256: file.sha256,
            size: file.size,
        });
        wire::send_event(&mut runner, i, e).await;
    }
    let (i, e) = event(RunnerEvent::JobOutputs {
        job: job.clone(),
        uploaded: 2,
        failed: 0,
        missing: plan.missing.clone(),
    });
    wire::send_event(&mut runner, i, e).await;
    let (i, e) = event(RunnerEvent::JobFinished {
        job: job.clone(),
        outcome: JobOutcome::Succeeded,
        status: ExitStatus::Exited { code: 0 },
        duration_ms: 1500,
        stdout_bytes: 0,
        stderr_bytes: 0,
        detail: None,
        cpu_user_ms: Some(1200),
        cpu_system_ms: Some(80),
        peak_rss_bytes: Some(50 << 20),
        wall_ms: Some(2100),
        gpu_memory_peak_bytes: None,
    });
    wire::send_event(&mut runner, i, e).await;

    // What the operator sees.
    let shown = run(ctl(&server, &token_file, &["job", &id])).await?;
    let shown = text(&shown.stdout);
    for expected in [
        "50.0 %, half way",
        "step = 2",
        "cpu 1.200 s user",
        "peak memory 50.0 MiB",
        "in/mesh.bin",
    ] {
        assert!(
            shown.contains(expected),
            "`ctl job` lacks {expected:?}:\n{shown}"
        );
    }
    let json = run(ctl(&server, &token_file, &["--json", "job", &id])).await?;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(json["kv"]["step"], "2");
    assert_eq!(json["usage"]["wall_ms"], 2100);
    assert_eq!(json["state"], "finished");

    let results = run(ctl(&server, &token_file, &["results", &id])).await?;
    let results = text(&results.stdout);
    assert!(
        results.contains("result.txt") && results.contains("csv/a.csv"),
        "{results}"
    );
    assert!(
        results.contains("uploaded") && results.contains("missing: never.txt"),
        "{results}"
    );

    let fetched = dir.path().join("fetched.txt");
    let fetch = ctl(&server, &token_file, &["fetch", &id, "result.txt", "-o"]);
    let mut fetch = fetch;
    fetch.arg(&fetched);
    let output = run(fetch).await?;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(std::fs::read(&fetched)?, b"the answer is 42\n");
    let csv = run(ctl(
        &server,
        &token_file,
        &["fetch", &id, "csv/a.csv", "-o", "-"],
    ))
    .await?;
    assert_eq!(text(&csv.stdout), "x,y\n1,2\n");
    let missing = run(ctl(
        &server,
        &token_file,
        &["fetch", &id, "never.txt", "-o", "-"],
    ))
    .await?;
    assert_eq!(missing.status.code(), Some(3));

    // The attempt ended: its URLs are spent.
    let spent = blob_request(
        &server,
        "GET",
        &spec.inputs[0].url,
        &format!("Host: {}\r\n", server.local_addr()),
        "",
    )
    .await;
    assert_eq!(spent, 410);
    assert_eq!(wire::job(&server, &id).state, JobState::Finished);
    Ok(())
}

/// What the blob endpoints refuse while the attempt runs.
async fn check_blob_rules(server: &DevServer, spec: &JobSpec) {
    let host = format!("Host: {}\r\n", server.local_addr());
    let input = &spec.inputs[0].url;
    assert_eq!(blob_request(server, "GET", input, &host, "").await, 200);
    let evil = format!("{host}Origin: http://evil.example\r\n");
    assert_eq!(blob_request(server, "GET", input, &evil, "").await, 403);
    let rebound = "Host: attacker.example\r\n";
    assert_eq!(blob_request(server, "GET", input, rebound, "").await, 403);
    let guessed = input.replace("/blobs/v1/", "/blobs/v1/0000");
    assert_eq!(blob_request(server, "GET", &guessed, &host, "").await, 404);
    // An upload must say its checksum, and the body must match it.
    let result = &spec.outputs[0].url;
    let no_digest = blob_request(server, "PUT", result, &host, "abc").await;
    assert_eq!(no_digest, 400);
    let wrong = format!(
        "{host}Content-Digest: {}\r\n",
        content_digest(&sha256(b"xyz")).unwrap_or_default()
    );
    assert_eq!(
        blob_request(server, "PUT", result, &wrong, "abc").await,
        400
    );
    // Below a glob's URL, only a path the glob matches.
    let glob = &spec.outputs[1].url;
    let digest = format!(
        "{host}Content-Digest: {}\r\n",
        content_digest(&sha256(b"abc")).unwrap_or_default()
    );
    let outside = format!("{glob}other/x.txt");
    assert_eq!(
        blob_request(server, "PUT", &outside, &digest, "abc").await,
        404
    );
}
