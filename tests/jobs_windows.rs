//! The job executor on Windows, against real processes (run with Wine or on Windows):
//! exit codes, output, the clean environment, and a cancel that ends every process of
//! the job through its job object. The Unix counterparts are in `tests/jobs.rs`.
#![cfg(windows)]
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::collections::BTreeMap;
use std::time::Duration;

use fyn_runner::protocol::{ExitStatus, JobSpec, OutputStream};
use fyn_runner::runtime::jobs::{JobReport, JobSupervisor};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(60);

fn spec(id: &str, command: &[&str]) -> JobSpec {
    JobSpec {
        job_id: id.to_owned(),
        attempt: 1,
        command: command.iter().map(|part| (*part).to_owned()).collect(),
        env: BTreeMap::new(),
        workdir: None,
        timeout_secs: 60,
        output_limit_bytes: 1 << 20,
        cancel_grace_secs: 10,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

/// Reports until `Exited`: (stdout, status).
async fn run_to_exit(reports: &mut UnboundedReceiver<JobReport>) -> (Vec<u8>, ExitStatus) {
    let mut stdout = Vec::new();
    loop {
        let report = timeout(WAIT, reports.recv())
            .await
            .expect("a report in time")
            .expect("the channel is open");
        match report {
            JobReport::Output {
                stream: OutputStream::Stdout,
                data,
                ..
            } => stdout.extend_from_slice(&data),
            JobReport::Exited { status, .. } => return (stdout, status),
            JobReport::SpawnFailed { error, .. } => panic!("spawn failed: {error}"),
            _ => {}
        }
    }
}

fn cmd(script: &str) -> Vec<&str> {
    vec!["cmd.exe", "/d", "/c", script]
}

#[tokio::test]
async fn a_job_runs_with_its_exit_code_output_and_a_clean_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut reports) = unbounded_channel();
    let mut jobs = JobSupervisor::new(dir.path().join("jobs"), tx);
    jobs.preflight().expect("preflight");
    // SAFETY: set before any job starts; this test binary's threads do not read it.
    unsafe { std::env::set_var("FYN_RUNNER_TEST_SECRET", "leaked") };
    let started = jobs.spawn(&spec(
        "env",
        &cmd("echo id=%FYN_JOB_ID% secret=%FYN_RUNNER_TEST_SECRET% root=%SystemRoot%& exit 3"),
    ));
    assert!(matches!(started, JobReport::Started { .. }), "{started:?}");
    let (stdout, status) = run_to_exit(&mut reports).await;
    let text = String::from_utf8_lossy(&stdout);
    assert!(text.contains("id=env "), "{text}");
    // Not passed on: cmd leaves an undefined variable as written.
    assert!(text.contains("secret=%FYN_RUNNER_TEST_SECRET%"), "{text}");
    assert!(
        !text.contains("root=%SystemRoot%"),
        "SystemRoot must reach jobs: {text}"
    );
    assert_eq!(status, ExitStatus::Exited { code: 3 });
}

#[tokio::test]
async fn a_cancel_ends_the_job_and_what_it_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, mut reports) = unbounded_channel();
    let mut jobs = JobSupervisor::new(dir.path().join("jobs"), tx);
    // The main process waits on a child of its own; both must go.
    let job = spec("tree", &cmd("ping -n 120 127.0.0.1 > nul"));
    match jobs.spawn(&job) {
        JobReport::Started { .. } => {}
        other => panic!("expected Started, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled = Instant::now();
    jobs.cancel(&job.job_ref(), "cancelled", Duration::from_secs(2));
    let (_, status) = run_to_exit(&mut reports).await;
    assert!(
        cancelled.elapsed() < Duration::from_secs(30),
        "the job outlived its cancel: {:?}",
        cancelled.elapsed()
    );
    assert!(matches!(status, ExitStatus::Exited { .. }), "{status:?}");
}
