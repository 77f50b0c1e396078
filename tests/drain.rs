//! Draining and shutdown end to end (seed 001's shutdown): say stopping, take no new
//! work, let running jobs finish until the deadline, deliver every result exactly once,
//! close with 1000, exit with the documented code.
// Unix only: its jobs are `sh` scripts, and it checks processes through signals.
#![cfg(unix)]
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use fyn_runner::core::{CoreConfig, ExitCode};
use fyn_runner::devserver::{DevServer, DevServerConfig, JobRequest, JobState};
use fyn_runner::protocol::{JobOutcome, SessionParams};
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
        workdir: None,
        timeout_secs: 600,
        output_limit_bytes: None,
        cancel_grace_secs: Some(grace),
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

async fn started(dir: &Path, server: &DevServer, token: bool, deadline: u64) -> RunnerHandle {
    let token = token.then(|| server.mint_token().expect("token"));
    let mut handle = runtime::start(settings(server, dir, token, deadline)).expect("starts");
    let status = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("in time");
    assert_eq!(status.state, "Active");
    handle
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

/// Every job has its outcome, and the API stored exactly one `job_finished` for it.
fn recorded_once(server: &DevServer, runner: &str, jobs: &[(&str, JobOutcome)]) {
    let events = server.events(runner).expect("events");
    for (id, outcome) in jobs {
        let job = server.job(id).expect("query").expect("job");
        assert_eq!(job.outcome, Some(*outcome), "job {id}");
        let finishes = events
            .iter()
            .filter(|e| e.kind == "job_finished" && e.body.to_string().contains(id))
            .count();
        assert_eq!(finishes, 1, "job {id} finished {finishes} times at the API");
    }
}

/// The pid the runner reported in the job's `job_started` event.
fn pid_of(server: &DevServer, runner_id: &str, id: &str) -> i32 {
    server
        .events(runner_id)
        .expect("events")
        .iter()
        .filter(|e| e.kind == "job_started" && e.body["job"]["job_id"] == id)
        .find_map(|e| e.body["pid"].as_i64())
        .and_then(|pid| i32::try_from(pid).ok())
        .expect("a job_started event with the pid")
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test]
async fn a_job_that_finishes_before_the_deadline_succeeds_and_the_runner_exits_0() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = started(dir.path(), &server, true, 30).await;
    let runner = handle.status.borrow().runner_id.clone().expect("id");
    let id = server.submit_job(sleep_job("0.5", 1)).expect("submit");
    running(&server, &id).await;
    handle.shutdown();
    draining(&mut handle).await;
    // While draining no new job is taken: the API assigns nothing to a stopping runner.
    let late = server.submit_job(sleep_job("0.1", 1)).expect("submit");
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops"),
        ExitCode::Clean
    );
    recorded_once(&server, &runner, &[(&id, JobOutcome::Succeeded)]);
    assert_eq!(
        server.job(&late).expect("query").expect("job").state,
        JobState::Queued
    );
    // Acknowledgements are written with the next batch or before the exit: none is
    // left to resend after a clean stop.
    let store = fyn_runner::runtime::store::Store::open(dir.path()).expect("store");
    assert_eq!(store.outbox_depth().expect("depth"), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_job_that_outlives_the_deadline_is_cancelled_and_leaves_no_process() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = started(dir.path(), &server, true, 1).await;
    let runner = handle.status.borrow().runner_id.clone().expect("id");
    let id = server.submit_job(sleep_job("300", 1)).expect("submit");
    running(&server, &id).await;
    let pid = pid_of(&server, &runner, &id);
    handle.shutdown();
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops"),
        ExitCode::Forced
    );
    recorded_once(&server, &runner, &[(&id, JobOutcome::Cancelled)]);
    assert!(!alive(pid), "the job's process outlived the runner");
    server.shutdown().await;
}

#[tokio::test]
async fn a_second_signal_forces_the_stop() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = started(dir.path(), &server, true, 300).await;
    let runner = handle.status.borrow().runner_id.clone().expect("id");
    let id = server.submit_job(sleep_job("300", 1)).expect("submit");
    running(&server, &id).await;
    handle.shutdown();
    draining(&mut handle).await;
    handle.shutdown();
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops"),
        ExitCode::Forced
    );
    recorded_once(&server, &runner, &[(&id, JobOutcome::Cancelled)]);
    server.shutdown().await;
}

#[tokio::test]
async fn the_apis_drain_command_enters_the_same_path() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = started(dir.path(), &server, true, 30).await;
    let runner = handle.status.borrow().runner_id.clone().expect("id");
    let id = server.submit_job(sleep_job("0.5", 1)).expect("submit");
    running(&server, &id).await;
    server.drain_runner(&runner, Some(30)).expect("drain");
    draining(&mut handle).await;
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops"),
        ExitCode::Clean
    );
    recorded_once(&server, &runner, &[(&id, JobOutcome::Succeeded)]);
    server.shutdown().await;
}

#[tokio::test]
async fn fyn_runner_drain_on_the_machine_drains_and_waits() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = started(dir.path(), &server, true, 30).await;
    let runner = handle.status.borrow().runner_id.clone().expect("id");
    let id = server.submit_job(sleep_job("0.5", 1)).expect("submit");
    running(&server, &id).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
        .args(["drain", "--wait", "--deadline", "20"])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .await
        .expect("fyn-runner drain runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("draining") && stdout.contains("stopped"),
        "{stdout}"
    );
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stopped"),
        ExitCode::Clean
    );
    recorded_once(&server, &runner, &[(&id, JobOutcome::Succeeded)]);

    // With no runner, `status` says so with its documented code.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
        .args(["status"])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("status runs");
    assert_eq!(status.status.code(), Some(3));
    server.shutdown().await;
}

#[tokio::test]
async fn a_drain_while_disconnected_keeps_results_for_the_next_start() {
    let db_dir = tempfile::tempdir().expect("tempdir");
    let db = db_dir.path().join("dev.db");
    let server = dev_server(Some(&db), None).await;
    let addr = server.local_addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = started(dir.path(), &server, true, 30).await;
    let runner = handle.status.borrow().runner_id.clone().expect("id");
    let id = server.submit_job(sleep_job("0.5", 1)).expect("submit");
    running(&server, &id).await;

    server.shutdown().await;
    tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Reconnecting"))
        .await
        .expect("link lost");
    handle.shutdown();
    // It waits for the job offline, keeps the result in the outbox, and exits saying
    // so: undelivered (7), not a clean stop.
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops"),
        ExitCode::Undelivered
    );

    let server = dev_server(Some(&db), Some(addr)).await;
    assert_eq!(
        server.job(&id).expect("query").expect("job").outcome,
        None,
        "not delivered yet"
    );
    let mut handle = started(dir.path(), &server, false, 30).await;
    let deadline = Instant::now() + WAIT;
    while server
        .job(&id)
        .expect("query")
        .expect("job")
        .outcome
        .is_none()
    {
        assert!(Instant::now() < deadline, "the kept result never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    recorded_once(&server, &runner, &[(&id, JobOutcome::Succeeded)]);
    handle.shutdown();
    let _ = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Stopped")).await;
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops"),
        ExitCode::Clean
    );
    server.shutdown().await;
}
