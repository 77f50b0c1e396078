//! Records the session traces kept in `tests/traces/`, which `tests/trace_corpus.rs`
//! replays against today's machine. Run after a deliberate change to the lifecycle:
//! `cargo build && cargo run --example record_traces` (then review and commit the new
//! traces; the build makes the `fyn-runner` binary its jobs' supervisors run from).
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fyn_runner::core::CoreConfig;
use fyn_runner::devserver::{DevServer, DevServerConfig, JobRequest, JobState};
use fyn_runner::protocol::SessionParams;
use fyn_runner::runtime::{self, RunnerHandle, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(30);

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces")
}

async fn server(db: Option<&Path>, listen: Option<std::net::SocketAddr>) -> DevServer {
    let mut config = DevServerConfig::ephemeral();
    config.session = SessionParams {
        heartbeat_interval_ms: 300,
        ack_timeout_ms: 200,
        runner_lost_threshold_ms: 30_000,
    };
    config.db = db.map(Path::to_path_buf);
    if let Some(addr) = listen {
        config.listen = addr;
    }
    DevServer::start(config).await.expect("dev-server")
}

fn settings(server: &DevServer, dir: &Path, token: Option<String>) -> RunnerSettings {
    RunnerSettings {
        token: token.map(Secret::new),
        name: "trace-runner".into(),
        core: CoreConfig {
            slots: 2,
            drain_deadline_secs: 2,
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

fn job(command: &[&str], timeout_secs: u64) -> JobRequest {
    JobRequest {
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::from([("SECRET".to_owned(), "do-not-record-me".to_owned())]),
        workdir: None,
        timeout_secs,
        output_limit_bytes: None,
        cancel_grace_secs: Some(1),
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

async fn active(handle: &mut RunnerHandle) {
    let status = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("in time");
    assert_eq!(status.state, "Active");
}

async fn settle(server: &DevServer, id: &str, done: impl Fn(JobState) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(server.job(id).expect("query").expect("job").state) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not settle"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn keep(handle: &RunnerHandle, name: &str) {
    let from = handle.trace_path().expect("tracing is on").to_path_buf();
    let to = out_dir().join(format!("{name}.jsonl"));
    std::fs::copy(&from, &to).expect("copy the trace");
    println!("recorded {}", to.display());
}

/// Registration, hardware sync, a job of every outcome, then a drain that waits for a
/// running job.
async fn jobs_and_drain() {
    let server = server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = runtime::start(settings(
        &server,
        dir.path(),
        Some(server.mint_token().expect("token")),
    ))
    .expect("start");
    active(&mut handle).await;
    let ok = server
        .submit_job(job(&["sh", "-c", "echo \"$SECRET\" | wc -c"], 60))
        .expect("submit");
    let failed = server
        .submit_job(job(&["sh", "-c", "exit 3"], 60))
        .expect("submit");
    settle(&server, &ok, |s| s == JobState::Finished).await;
    settle(&server, &failed, |s| s == JobState::Finished).await;
    let cancelled = server
        .submit_job(job(&["sleep", "60"], 60))
        .expect("submit");
    let timed_out = server.submit_job(job(&["sleep", "60"], 1)).expect("submit");
    settle(&server, &cancelled, |s| s == JobState::Running).await;
    server.cancel_job(&cancelled).expect("cancel");
    settle(&server, &cancelled, |s| s == JobState::Cancelled).await;
    settle(&server, &timed_out, |s| s == JobState::Finished).await;
    let draining = server
        .submit_job(job(&["sleep", "0.5"], 60))
        .expect("submit");
    settle(&server, &draining, |s| s == JobState::Running).await;
    handle.shutdown();
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Stopped"))
            .await
            .expect("stops")
            .state,
        "Stopped"
    );
    keep(&handle, "jobs-every-outcome-and-drain");
    let _ = handle.wait().await;
    server.shutdown().await;
}

/// A dev-server restart: the runner loses the link, backs off, re-validates, resumes.
async fn reconnect() {
    let db_dir = tempfile::tempdir().expect("tempdir");
    let db = db_dir.path().join("dev.db");
    let first = server(Some(&db), None).await;
    let addr = first.local_addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = runtime::start(settings(
        &first,
        dir.path(),
        Some(first.mint_token().expect("token")),
    ))
    .expect("start");
    active(&mut handle).await;
    let before = handle.status.borrow().transitions;
    first.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = server(Some(&db), Some(addr)).await;
    let status = tokio::time::timeout(
        WAIT,
        handle.wait_for(|s| s.state == "Active" && s.transitions > before + 2),
    )
    .await
    .expect("back");
    assert_eq!(status.state, "Active");
    handle.shutdown();
    let _ = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Stopped")).await;
    keep(&handle, "reconnect-after-dev-server-restart");
    let _ = handle.wait().await;
    second.shutdown().await;
}

/// A second instance with the same identity evicts the first.
async fn eviction() {
    let server = server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = runtime::start(settings(
        &server,
        dir.path(),
        Some(server.mint_token().expect("token")),
    ))
    .expect("start");
    active(&mut first).await;
    let copy = tempfile::tempdir().expect("tempdir");
    // A store comes first: the runner refuses an identity without one.
    drop(fyn_runner::runtime::store::Store::open(copy.path()).expect("store"));
    for name in ["identity/runner.json", "identity/key"] {
        let to = copy.path().join(name);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("dir");
        std::fs::copy(dir.path().join(name), &to).expect("copy identity");
    }
    // The copy must be private, as the runner checks.
    fyn_runner::runtime::secure_fs::create_private_dir(&copy.path().join("identity"))
        .expect("private identity folder");
    let mut second = runtime::start(settings(&server, copy.path(), None)).expect("start");
    active(&mut second).await;
    let _ = tokio::time::timeout(WAIT, first.wait_for(|s| s.state == "Stopped")).await;
    keep(&first, "evicted-by-a-newer-session");
    second.shutdown();
    let _ = second.wait().await;
    let _ = first.wait().await;
    server.shutdown().await;
}

/// A job that outlives the drain deadline is cancelled; the stop is forced.
async fn forced_drain() {
    let server = server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = runtime::start(settings(
        &server,
        dir.path(),
        Some(server.mint_token().expect("token")),
    ))
    .expect("start");
    active(&mut handle).await;
    let id = server
        .submit_job(job(&["sleep", "60"], 600))
        .expect("submit");
    settle(&server, &id, |s| s == JobState::Running).await;
    handle.shutdown();
    let _ = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Stopped")).await;
    keep(&handle, "drain-deadline-forces-the-stop");
    let _ = handle.wait().await;
    server.shutdown().await;
}

/// A stop (SIGTERM) leaves a job running under its supervisor; the next start finds it,
/// reattaches it, reports the rest of its output and its end, then drains.
async fn reattach() {
    let server = server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = runtime::start(settings(
        &server,
        dir.path(),
        Some(server.mint_token().expect("token")),
    ))
    .expect("start");
    active(&mut first).await;
    let id = server
        .submit_job(job(&["sh", "-c", "echo before; sleep 1; echo after"], 60))
        .expect("submit");
    settle(&server, &id, |s| s == JobState::Running).await;
    let _ = first.control().send(fyn_runner::runtime::Control::Stop);
    let _ = first.wait().await;
    let mut second = runtime::start(settings(&server, dir.path(), None)).expect("start");
    active(&mut second).await;
    settle(&server, &id, |s| s == JobState::Finished).await;
    second.shutdown();
    let _ = tokio::time::timeout(WAIT, second.wait_for(|s| s.state == "Stopped")).await;
    keep(&second, "reattached-after-a-stop");
    let _ = second.wait().await;
    server.shutdown().await;
}

#[tokio::main]
async fn main() {
    std::fs::create_dir_all(out_dir()).expect("tests/traces");
    jobs_and_drain().await;
    reconnect().await;
    eviction().await;
    forced_drain().await;
    reattach().await;
}
