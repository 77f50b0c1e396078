//! Leaving for good (`fyn-runner uninstall`'s farewell) is the runner booted in
//! `BootMode::Leave`: the same machine and dispatch as any run, traced, and its
//! `authenticate` carries the last command index the store applied (`docs/protocol.md`
//! §5.2, `leaving`; §15 for its retries).
#![cfg(unix)]
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fyn_runner::core::{CoreConfig, ExitCode};
use fyn_runner::devserver::{DevServer, DevServerConfig, JobRequest, JobState};
use fyn_runner::runtime::{self, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(30);

fn settings(server: &DevServer, state_dir: &Path, token: Option<String>) -> RunnerSettings {
    RunnerSettings {
        token: token.map(Secret::new),
        name: "leaving-runner".into(),
        core: CoreConfig::default(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        ..RunnerSettings::new(
            runtime::settings::endpoint(&server.url(), false).expect("url"),
            state_dir.to_path_buf(),
        )
    }
}

/// The trace files of the state folder, oldest first.
fn traces(state_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state_dir.join("traces"))
        .expect("a traces folder")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn the_farewell_is_a_traced_session_with_the_real_last_command_index() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut handle = runtime::start(settings(&server, dir.path(), Some(token))).expect("starts");
    let status = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("in time");
    let runner_id = status.runner_id.expect("registered");
    // One command applied: the store's last applied index is 1.
    let id = server
        .submit_job(JobRequest {
            command: vec!["true".into()],
            env: BTreeMap::new(),
            timeout_secs: 60,
            output_limit_bytes: None,
            cancel_grace_secs: None,
            workdir: None,
            inputs: Default::default(),
            outputs: Default::default(),
            kv: Default::default(),
        })
        .expect("submit");
    let deadline = Instant::now() + WAIT;
    while server.job(&id).expect("query").expect("job").state != JobState::Finished {
        assert!(Instant::now() < deadline, "the job never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown();
    assert_eq!(handle.wait().await, ExitCode::Clean);
    let before = traces(dir.path()).len();

    let left = runtime::leave::leave(&settings(&server, dir.path(), None), WAIT)
        .await
        .expect("the API confirms");
    assert_eq!(left, runner_id);
    assert!(
        server.runner(&runner_id).expect("query").is_none(),
        "forgotten"
    );

    let files = traces(dir.path());
    assert_eq!(
        files.len(),
        before + 1,
        "the farewell recorded a trace of its own"
    );
    let farewell = files.last().expect("a trace");
    let text = std::fs::read_to_string(farewell).expect("readable");
    let header: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a header")).expect("JSON");
    assert_eq!(header["boot"]["mode"], "leave");
    let authenticate = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .flat_map(|entry| entry["effects"].as_array().cloned().unwrap_or_default())
        .find(|e| e["message"] == "authenticate")
        .expect("the farewell authenticates");
    assert_eq!(authenticate["last_command_index"], 1);
    assert!(text.contains(r#""message":"leaving""#), "says leaving");
    assert!(text.contains(r#""notice":"left""#), "hears left");
    let outcome = fyn_runner::trace::replay(farewell, None, None, |_| {}).expect("readable");
    assert!(outcome.is_match(), "the farewell replays");
    server.shutdown().await;
}

#[tokio::test]
async fn a_farewell_with_no_api_gives_up_at_its_bound() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut handle = runtime::start(settings(&server, dir.path(), Some(token))).expect("starts");
    tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("in time");
    handle.shutdown();
    assert_eq!(handle.wait().await, ExitCode::Clean);
    let gone = settings(&server, dir.path(), None);
    server.shutdown().await;
    let started = Instant::now();
    let outcome = runtime::leave::leave(&gone, Duration::from_millis(500)).await;
    assert!(
        matches!(outcome, Err(runtime::leave::LeaveError::Timeout(_))),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");
}
