//! Jobs that outlive the runner (issue 17), end to end on the real binary against the
//! reference control plane: a runner killed with SIGKILL mid-job and started again
//! reattaches the job and delivers exactly its output, once; a job that ends while no
//! runner is there is reported after the restart; a binary replaced mid-job takes the
//! job over; a supervisor killed takes its job with it, reported lost once; a
//! double-forked `setsid` daemon of a job never outlives the job, however it ends; a
//! reattached job keeps its endpoint (`FYN_JOB_SOCKET`) with its own key-value
//! writes, and its timeout counted from its first start.
// Unix only: supervisors, process groups and /proc.
#![cfg(unix)]
#![allow(clippy::disallowed_methods)] // waiting on real processes is what this does

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fyn_runner::devserver::{DevServer, DevServerConfig, JobInfo, JobRequest, JobState};
use fyn_runner::protocol::{JobOutcome, OutputStream, SessionParams};

const WAIT: Duration = Duration::from_secs(30);

async fn dev_server() -> DevServer {
    let mut config = DevServerConfig::ephemeral();
    config.session = SessionParams {
        heartbeat_interval_ms: 1_000,
        ack_timeout_ms: 500,
        runner_lost_threshold_ms: 30_000,
    };
    DevServer::start(config).await.expect("dev-server")
}

/// The runner binary, killed when dropped: a test that fails half way leaves no runner.
struct Runner(Child);

impl Runner {
    fn kill_9(&mut self) {
        self.0.kill().expect("kill -9");
        let _ = self.0.wait();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fyn-runner"))
}

fn spawn_runner(program: &Path, url: &str, dir: &Path, token: Option<&str>) -> Runner {
    spawn_runner_with(program, url, dir, token, &[])
}

fn spawn_runner_with(
    program: &Path,
    url: &str,
    dir: &Path,
    token: Option<&str>,
    flags: &[&str],
) -> Runner {
    let mut command = Command::new(program);
    command
        .args(["run", "--server", url, "--slots", "4"])
        .args(flags)
        .arg("--state-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    Runner(command.spawn().expect("the binary starts"))
}

fn shell(script: &str, timeout_secs: u64) -> JobRequest {
    JobRequest {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        workdir: None,
        timeout_secs,
        output_limit_bytes: None,
        cancel_grace_secs: Some(1),
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

async fn until_job(server: &DevServer, id: &str, done: impl Fn(&JobInfo) -> bool) -> JobInfo {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = server.job(id).expect("query").expect("the job exists");
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} stuck in {:?}",
            job.state
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn finished(server: &DevServer, id: &str) -> JobInfo {
    until_job(server, id, |j| j.outcome.is_some()).await
}

fn stdout_of(server: &DevServer, id: &str) -> Vec<u8> {
    server
        .output_bytes(id, OutputStream::Stdout)
        .expect("the output")
}

/// The job's events of one kind, as the API stored them.
fn events_of(server: &DevServer, job: &JobInfo, kind: &str) -> usize {
    let runner = job.runner.as_deref().expect("assigned");
    server
        .events(runner)
        .expect("events")
        .iter()
        .filter(|e| e.kind == kind && e.body["job"]["job_id"] == job.id.as_str())
        .count()
}

/// The pid the runner reported in the job's `job_started` event.
fn started_pid(server: &DevServer, job: &JobInfo) -> u32 {
    let runner = job.runner.as_deref().expect("assigned");
    server
        .events(runner)
        .expect("events")
        .iter()
        .filter(|e| e.kind == "job_started" && e.body["job"]["job_id"] == job.id.as_str())
        .find_map(|e| e.body["pid"].as_u64())
        .and_then(|pid| u32::try_from(pid).ok())
        .expect("a job_started event with the pid")
}

/// (parent pid, zombie) of a process, from /proc; None once it is gone.
fn stat(pid: u32) -> Option<(u32, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, *fields.first()? == "Z"))
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, zombie)| !zombie)
}

async fn until_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "{what} (pid {pid}) is still there"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn kill_9(pid: u32) {
    // SAFETY: kill(2) with a pid this test found as the job's supervisor.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

/// `line 0` .. `line {n-1}`, one every 50 ms.
fn numbered_lines(n: u32) -> (String, Vec<u8>) {
    let script =
        format!("i=0; while [ $i -lt {n} ]; do echo \"line $i\"; i=$((i+1)); sleep 0.05; done");
    let expected = (0..n).map(|i| format!("line {i}\n")).collect::<String>();
    (script, expected.into_bytes())
}

/// A short hash to name output in failure messages (FNV-1a).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn assert_same_output(got: &[u8], expected: &[u8]) {
    assert!(
        got == expected,
        "the API holds {} bytes (checksum {:016x}), the job printed {} (checksum {:016x}):\n{}",
        got.len(),
        checksum(got),
        expected.len(),
        checksum(expected),
        String::from_utf8_lossy(got)
    );
}

/// A runner started again on `dir` (no token: it is registered), and the job `id` it
/// takes back: succeeded, its output exactly `expected`, its end reported once.
async fn started_again_delivers(
    server: &DevServer,
    dir: &Path,
    id: &str,
    expected: &[u8],
) -> (Runner, JobInfo) {
    let runner = spawn_runner(&binary(), &server.url(), dir, None);
    let job = finished(server, id).await;
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
    assert_same_output(&stdout_of(server, id), expected);
    assert_eq!(events_of(server, &job, "job_finished"), 1);
    (runner, job)
}

#[tokio::test]
async fn a_runner_killed_mid_job_and_started_again_delivers_the_whole_output_once() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), Some(&token));
    let (script, expected) = numbered_lines(80);
    let id = server.submit_job(shell(&script, 120)).expect("submit");
    until_job(&server, &id, |j| j.stdout_bytes >= 100).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    runner.kill_9();
    // The job goes on without a runner; some of its output is not reported yet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = server.job(&id).expect("query").expect("job");
    assert_eq!(before.state, JobState::Running, "{before:?}");
    let (mut runner, job) = started_again_delivers(&server, dir.path(), &id, &expected).await;
    assert_eq!(job.attempt, 1, "the job was kept, not given away");
    assert_eq!(events_of(&server, &job, "job_started"), 1);
    runner.kill_9();
    server.shutdown().await;
}

#[tokio::test]
async fn a_job_that_ends_while_the_runner_is_down_is_reported_after_the_restart() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), Some(&token));
    let (lines, expected) = numbered_lines(20);
    let script = format!("{lines}; echo done >&2; exit 3");
    let id = server.submit_job(shell(&script, 120)).expect("submit");
    let running = until_job(&server, &id, |j| j.stdout_bytes > 0).await;
    let pid = started_pid(&server, &running);
    runner.kill_9();
    until_gone(pid, "the job").await;
    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), None);
    let job = finished(&server, &id).await;
    assert_eq!(job.outcome, Some(JobOutcome::Failed), "{job:?}");
    assert_eq!(
        job.exit_status,
        Some(fyn_runner::protocol::ExitStatus::Exited { code: 3 }),
        "{job:?}"
    );
    assert_same_output(&stdout_of(&server, &id), &expected);
    assert_eq!(
        server
            .output_bytes(&id, OutputStream::Stderr)
            .expect("stderr"),
        b"done\n"
    );
    assert_eq!(events_of(&server, &job, "job_finished"), 1);
    runner.kill_9();
    server.shutdown().await;
}

#[tokio::test]
async fn a_binary_replaced_mid_job_takes_the_job_over() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = tempfile::tempdir().expect("tempdir");
    let program = bin.path().join("fyn-runner");
    std::fs::copy(binary(), &program).expect("copy the binary");
    let token = server.mint_token().expect("token");
    let mut runner = spawn_runner(&program, &server.url(), dir.path(), Some(&token));
    let (script, expected) = numbered_lines(60);
    let id = server.submit_job(shell(&script, 120)).expect("submit");
    until_job(&server, &id, |j| j.stdout_bytes > 0).await;
    // An upgrade: the new build is written beside the old and renamed over it, while
    // the old one still runs (and its supervisor with it).
    let staged = bin.path().join("fyn-runner.new");
    std::fs::copy(binary(), &staged).expect("copy the new build");
    std::fs::rename(&staged, &program).expect("replace the binary");
    runner.kill_9();
    let mut runner = spawn_runner(&program, &server.url(), dir.path(), None);
    let job = finished(&server, &id).await;
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
    assert_same_output(&stdout_of(&server, &id), &expected);
    assert_eq!(events_of(&server, &job, "job_finished"), 1);
    runner.kill_9();
    server.shutdown().await;
}

#[tokio::test]
async fn a_supervisor_killed_takes_its_job_with_it_reported_lost_once() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), Some(&token));
    // The main process and a child in its group.
    let id = server
        .submit_job(shell("sleep 300 & echo $!; wait", 600))
        .expect("submit");
    let running = until_job(&server, &id, |j| j.stdout_bytes > 0).await;
    let main = started_pid(&server, &running);
    let child: u32 = String::from_utf8_lossy(&stdout_of(&server, &id))
        .trim()
        .parse()
        .expect("the child's pid");
    let (supervisor, _) = stat(main).expect("the job runs");
    kill_9(supervisor);
    let job = finished(&server, &id).await;
    assert_eq!(job.outcome, Some(JobOutcome::Lost), "{job:?}");
    until_gone(main, "the job's main process").await;
    until_gone(child, "a process of the job's group").await;
    assert_eq!(events_of(&server, &job, "job_finished"), 1);
    // The runner carries on.
    let next = server.submit_job(shell("echo next", 60)).expect("submit");
    assert_eq!(
        finished(&server, &next).await.outcome,
        Some(JobOutcome::Succeeded)
    );
    runner.kill_9();
    server.shutdown().await;
}

/// The runner's supervisor launcher, if it has one now: its child whose environment
/// names it a launcher.
fn launcher_of(runner: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(parent, zombie)| parent == runner && !zombie))
        .find(|pid| is_launcher(*pid))
}

fn is_launcher(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|byte| *byte == 0)
            .any(|entry| entry == b"FYN_RUNNER_SUPERVISOR_LAUNCHER=1")
    })
}

/// A supervisor's and the launcher's command line, as `ps -ef` prints it.
const SUPERVISE: &str = "fyn-runner supervise";

/// A process's name (`ps -o comm`) and command line (`ps -o args`).
fn shown_as(pid: u32) -> (String, String) {
    let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
    let name = String::from_utf8_lossy(&read("comm")).trim_end().to_owned();
    let args = read("cmdline")
        .split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    (name, args)
}

async fn until_launcher(runner: u32) -> u32 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(launcher) = launcher_of(runner) {
            return launcher;
        }
        assert!(Instant::now() < deadline, "the runner has no launcher");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Supervisors are forked by one launcher, the runner's child, rather than each
/// executed. A supervisor outlives its launcher; a launcher killed is replaced, and
/// jobs start meanwhile; a runner killed takes its launcher with it but not its jobs,
/// which the next runner delivers whole.
#[tokio::test]
async fn supervisors_come_from_a_launcher_that_goes_with_the_runner_not_with_its_jobs() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), Some(&token));
    let (script, expected) = numbered_lines(60);
    let id = server.submit_job(shell(&script, 120)).expect("submit");
    let running = until_job(&server, &id, |j| j.stdout_bytes > 0).await;
    let (supervisor, _) = stat(started_pid(&server, &running)).expect("the job runs");
    let (launcher, _) = stat(supervisor).expect("its supervisor runs");
    assert!(
        is_launcher(launcher),
        "the supervisor's parent is a launcher"
    );
    assert_eq!(
        stat(launcher).map(|(parent, _)| parent),
        Some(runner.0.id())
    );
    // What `ps` shows an operator: a name each, not `exe` (the binary runs from
    // `/proc/self/exe`), and the command that started them.
    assert_eq!(
        shown_as(supervisor),
        ("fyn-supervisor".into(), SUPERVISE.into())
    );
    assert_eq!(
        shown_as(launcher),
        ("fyn-launcher".into(), SUPERVISE.into())
    );

    kill_9(launcher);
    until_gone(launcher, "the killed launcher").await;
    assert!(alive(supervisor), "a supervisor outlives its launcher");
    for n in 0..3 {
        let next = server
            .submit_job(shell(&format!("echo {n}"), 60))
            .expect("submit");
        assert_eq!(
            finished(&server, &next).await.outcome,
            Some(JobOutcome::Succeeded),
            "job {n} after the launcher was killed"
        );
    }
    let replaced = until_launcher(runner.0.id()).await;

    runner.kill_9();
    until_gone(replaced, "the launcher of a killed runner").await;
    assert!(alive(supervisor), "the job runs on without a runner");
    let (mut runner, _) = started_again_delivers(&server, dir.path(), &id, &expected).await;
    runner.kill_9();
    server.shutdown().await;
}

/// A job that starts a daemon the classic way (a subshell that starts a `setsid`
/// process in the background and exits): the daemon leaves the job's process group and
/// session, and is reparented to the job's supervisor. It prints its pid first.
fn daemonizing(then: &str, timeout_secs: u64) -> JobRequest {
    shell(
        &format!("(setsid sh -c 'echo $$; exec sleep 1000' &); sleep 0.2; {then}"),
        timeout_secs,
    )
}

/// The daemon's pid, once the job printed it.
async fn daemon_of(server: &DevServer, id: &str) -> u32 {
    let job = until_job(server, id, |j| j.stdout_bytes > 0).await;
    let pid = String::from_utf8_lossy(&stdout_of(server, &job.id))
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("the daemon's pid");
    assert!(alive(pid), "the daemon runs while its job does");
    pid
}

#[tokio::test]
async fn a_setsid_daemon_never_outlives_its_job_however_the_job_ends() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), Some(&token));

    let cancelled = server
        .submit_job(daemonizing("sleep 300", 600))
        .expect("submit");
    let timed_out = server
        .submit_job(daemonizing("sleep 300", 2))
        .expect("submit");
    let exited = server
        .submit_job(daemonizing("sleep 0.5; exit 0", 600))
        .expect("submit");
    let daemons = [
        daemon_of(&server, &cancelled).await,
        daemon_of(&server, &timed_out).await,
        daemon_of(&server, &exited).await,
    ];
    server.cancel_job(&cancelled).expect("cancel");
    for (id, outcome) in [
        (&cancelled, JobOutcome::Cancelled),
        (&timed_out, JobOutcome::TimedOut),
        (&exited, JobOutcome::Succeeded),
    ] {
        assert_eq!(finished(&server, id).await.outcome, Some(outcome), "{id}");
    }
    for daemon in daemons {
        until_gone(daemon, "a daemon of an ended job").await;
    }

    // The runner killed and started again: the daemon stays with the job meanwhile,
    // and goes with it when it ends.
    let reattached = server
        .submit_job(daemonizing("sleep 300", 600))
        .expect("submit");
    let daemon = daemon_of(&server, &reattached).await;
    runner.kill_9();
    let runner = spawn_runner(&binary(), &server.url(), dir.path(), None);
    until_job(&server, &reattached, |j| j.state == JobState::Running).await;
    // `status` shows the job as reattached, with its age.
    let deadline = Instant::now() + WAIT;
    let shown = loop {
        let out = tokio::process::Command::new(binary())
            .args(["status", "--json", "--state-dir"])
            .arg(dir.path())
            .output()
            .await
            .expect("status runs");
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if let Some(job) = status["running"].as_array().and_then(|jobs| jobs.first()) {
            break job.clone();
        }
        assert!(Instant::now() < deadline, "status never showed the job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shown["job"], format!("{reattached}#1").as_str(), "{shown}");
    assert_eq!(shown["reattached"], true, "{shown}");
    let text = tokio::process::Command::new(binary())
        .args(["status", "--state-dir"])
        .arg(dir.path())
        .output()
        .await
        .expect("status runs");
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains(&format!("{reattached}#1 (reattached, ")),
        "{text}"
    );
    assert!(alive(daemon), "the daemon stays with its running job");
    server.cancel_job(&reattached).expect("cancel");
    assert_eq!(
        finished(&server, &reattached).await.outcome,
        Some(JobOutcome::Cancelled)
    );
    until_gone(daemon, "the daemon of a job cancelled after a restart").await;

    // A drain ends the last one.
    let drained = server
        .submit_job(daemonizing("sleep 300", 600))
        .expect("submit");
    let daemon = daemon_of(&server, &drained).await;
    // Asynchronously: the dev-server answers the runner on this test's runtime.
    let out = tokio::process::Command::new(binary())
        .args(["drain", "--wait", "--deadline", "1"])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .await
        .expect("fyn-runner drain runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        finished(&server, &drained).await.outcome,
        Some(JobOutcome::Cancelled)
    );
    until_gone(daemon, "the daemon of a drained job").await;
    drop(runner);
    server.shutdown().await;
}

/// What a service manager's stop does (SIGTERM): the runner exits 0 and the job runs
/// on. `uninstall` then ends it; a running runner it drains first.
#[tokio::test]
async fn sigterm_leaves_jobs_running_and_uninstall_still_ends_them() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\nstate_dir = \"{}\"\n",
            server.url(),
            state.display()
        ),
    )
    .expect("config");
    let token = server.mint_token().expect("token");
    let quick_drain = ["--drain-deadline", "1"];
    let mut runner =
        spawn_runner_with(&binary(), &server.url(), &state, Some(&token), &quick_drain);
    let left = server
        .submit_job(daemonizing("sleep 300", 600))
        .expect("submit");
    let daemon = daemon_of(&server, &left).await;
    let job = server.job(&left).expect("query").expect("job");
    let main = started_pid(&server, &job);
    // SAFETY: kill(2) on the runner this test started and still holds.
    assert_eq!(
        unsafe { libc::kill(runner.0.id() as i32, libc::SIGTERM) },
        0
    );
    let code = runner.0.wait().expect("exits").code();
    assert_eq!(code, Some(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        alive(main) && alive(daemon),
        "the job runs on after SIGTERM"
    );

    // Started again, the runner takes the job back; one more job, then uninstall.
    let _runner = spawn_runner_with(&binary(), &server.url(), &state, None, &quick_drain);
    let second = server.submit_job(shell("sleep 300", 600)).expect("submit");
    let second_job = until_job(&server, &second, |j| j.state == JobState::Running).await;
    let second_main = started_pid(&server, &second_job);
    let out = tokio::process::Command::new(binary())
        .args(["uninstall", "--leave-timeout", "5"])
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("uninstall runs");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("draining"), "{said}");
    for (pid, what) in [
        (main, "a job left by SIGTERM"),
        (daemon, "its daemon"),
        (second_main, "a job the drain ended"),
    ] {
        until_gone(pid, what).await;
    }
    assert!(!state.exists(), "the state folder is removed");
    server.shutdown().await;
}

/// A job whose runner is gone, or is back but cannot reach the API: its supervisor
/// ends it once no lease renewal came for the API's threshold, since the API has given
/// it away by then. (A runner without a session renews nothing, and its own
/// runner-lost timer, at the default threshold, would come far later.)
#[tokio::test]
async fn a_job_no_runner_comes_back_for_is_ended_by_its_supervisor_after_the_threshold() {
    let mut config = DevServerConfig::ephemeral();
    config.session = SessionParams {
        heartbeat_interval_ms: 500,
        ack_timeout_ms: 250,
        runner_lost_threshold_ms: 2_000,
    };
    let server = DevServer::start(config).await.expect("dev-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), Some(&token));
    let id = server
        .submit_job(daemonizing("sleep 300", 600))
        .expect("submit");
    let daemon = daemon_of(&server, &id).await;
    let job = server.job(&id).expect("query").expect("job");
    let main = started_pid(&server, &job);
    let runner_id = job.runner.clone().expect("assigned");
    runner.kill_9();
    let began = Instant::now();
    // Started again at once, but where no control plane answers.
    let mut cut_off = spawn_runner(&binary(), "ws://127.0.0.1:9", dir.path(), None);
    until_gone(main, "a job whose lease ran out").await;
    until_gone(daemon, "its daemon").await;
    assert!(
        began.elapsed() >= Duration::from_millis(1_000),
        "ended before its lease could run out ({:?})",
        began.elapsed()
    );
    cut_off.kill_9();
    // The next start finds its end recorded and reports it lost, once.
    let runner = spawn_runner(&binary(), &server.url(), dir.path(), None);
    let deadline = Instant::now() + WAIT;
    loop {
        let reported = server
            .events(&runner_id)
            .expect("events")
            .iter()
            .filter(|e| {
                e.kind == "job_finished"
                    && e.body["job"]["job_id"] == id.as_str()
                    && e.body["job"]["attempt"] == 1
            })
            .map(|e| e.body["outcome"].clone())
            .collect::<Vec<_>>();
        if !reported.is_empty() {
            assert_eq!(reported, vec![serde_json::json!("lost")]);
            break;
        }
        assert!(Instant::now() < deadline, "the lost job was never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(runner);
    server.shutdown().await;
}

/// Whether something answers on the Unix socket at `path`.
fn served(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

#[tokio::test]
async fn a_reattached_job_keeps_its_endpoint_and_its_own_writes() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let talk = tempfile::tempdir().expect("tempdir");
    let go = talk.path().join("go");
    let token = server.mint_token().expect("token");
    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), Some(&token));
    let mut job = shell(
        "\"$FYN\" job kv put step 1 && \"$FYN\" job kv put step 2 || exit 7; \
         echo ready; \
         while [ ! -e \"$GO\" ]; do sleep 0.02; done; \
         test \"$(\"$FYN\" job kv get step)\" = 2 || exit 8; \
         test \"$(\"$FYN\" job kv get seed)\" = planted || exit 9; \
         \"$FYN\" job kv put step 3 && \"$FYN\" job progress 1 'after the restart'",
        120,
    );
    job.env
        .insert("FYN".into(), binary().to_string_lossy().into());
    job.env.insert("GO".into(), go.to_string_lossy().into());
    job.kv.insert("seed".into(), "planted".into());
    let id = server.submit_job(job).expect("submit");
    // Its writes returned, so they are durable.
    let running = until_job(&server, &id, |j| j.stdout_bytes > 0).await;
    let socket = dir
        .path()
        .join("jobs")
        .join(format!("{}-{}", running.id, running.attempt))
        .join("job.sock");
    assert!(served(&socket), "{} is served", socket.display());
    runner.kill_9();
    assert!(!served(&socket), "nothing answers while the runner is away");

    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), None);
    let deadline = Instant::now() + WAIT;
    while !served(&socket) {
        assert!(
            Instant::now() < deadline,
            "the endpoint is not served again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&go, b"").expect("go");
    let job = finished(&server, &id).await;
    // Exit 8 would be the spec's view without its own writes; 5, no endpoint.
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
    assert_eq!(job.kv.get("step").map(String::as_str), Some("3"));
    let progress = job.progress.clone().expect("progress");
    assert_eq!(progress.message.as_deref(), Some("after the restart"));
    assert_eq!(events_of(&server, &job, "job_kv_put"), 3);
    assert_eq!(events_of(&server, &job, "job_finished"), 1);
    runner.kill_9();
    server.shutdown().await;
}

#[tokio::test]
async fn a_reattached_job_times_out_counted_from_its_first_start() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), Some(&token));
    let id = server
        .submit_job(shell("echo started; sleep 60", 4))
        .expect("submit");
    let running = until_job(&server, &id, |j| j.stdout_bytes > 0).await;
    let pid = started_pid(&server, &running);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    runner.kill_9();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut runner = spawn_runner(&binary(), &server.url(), dir.path(), None);
    let job = finished(&server, &id).await;
    let ended = started.elapsed();
    assert_eq!(job.outcome, Some(JobOutcome::TimedOut), "{job:?}");
    // Four seconds from the first start, not four more after the restart (2.5 s in).
    assert!(
        ended < Duration::from_millis(6000),
        "timed out {ended:?} after the start"
    );
    assert!(
        job.duration_ms
            .is_some_and(|ms| (3_500..6_000).contains(&ms)),
        "{job:?}"
    );
    until_gone(pid, "the timed-out job").await;
    assert_eq!(events_of(&server, &job, "job_finished"), 1);
    runner.kill_9();
    server.shutdown().await;
}
