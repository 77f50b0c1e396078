//! Hostile neighbours (issue 15): what a job, a local user or a stray signal can reach
//! of the runner, end to end — the real runtime against the reference control plane,
//! and the real binary where the command line, the log or a signal is what is tested.
// Unix only: jobs are `sh` scripts; accounts, modes and signals are Unix's.
#![cfg(unix)]
#![allow(clippy::disallowed_methods)] // deadlines for what the tests wait on

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use fyn_runner::devserver::{DevServer, DevServerConfig, JobInfo, JobRequest};
use fyn_runner::protocol::{JobOutcome, OutputStream, SessionParams};
use fyn_runner::runtime::{self, RunnerHandle, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_fyn-runner");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

async fn dev_server() -> DevServer {
    let mut config = DevServerConfig::ephemeral();
    config.session = SessionParams {
        heartbeat_interval_ms: 1_000,
        ack_timeout_ms: 500,
        runner_lost_threshold_ms: 30_000,
    };
    DevServer::start(config).await.expect("dev-server")
}

fn settings(server: &DevServer, state_dir: &Path) -> RunnerSettings {
    RunnerSettings {
        token: Some(Secret::new(server.mint_token().expect("token"))),
        name: "hostile".into(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..RunnerSettings::new(
            runtime::settings::endpoint(&server.url(), false).expect("url"),
            state_dir.to_path_buf(),
        )
    }
}

fn shell(script: &str, env: &[(&str, &str)]) -> JobRequest {
    JobRequest {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        workdir: None,
        timeout_secs: 60,
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
    assert_eq!(status.state, "Active", "{status:?}");
}

async fn finished(server: &DevServer, id: &str) -> JobInfo {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = server.job(id).expect("query").expect("the job exists");
        if job.outcome.is_some() {
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

/// What the job printed on `stream`, as the dev-server holds it.
fn printed(server: &DevServer, id: &str, stream: OutputStream) -> String {
    let bytes = server.output_bytes(id, stream).expect("output");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A temporary folder every account may pass through (the default is 0700 root), as
/// `/var/lib` is.
fn passable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

// ---------------------------------------------------------------- item 2: job account

#[tokio::test]
async fn a_job_of_the_job_account_cannot_reach_the_key_the_store_or_the_socket() {
    if !is_root() {
        eprintln!("skipped: running jobs as another account needs root (CI runs as root)");
        return;
    }
    let server = dev_server().await;
    let dir = passable_tempdir();
    let state = dir.path().join("state");
    let mut config = settings(&server, &state);
    config.job_account = Some(
        fyn_runner::platform::lookup_account("nobody")
            .expect("look up")
            .expect("nobody exists"),
    );
    let mut handle = runtime::start(config).expect("starts");
    active(&mut handle).await;

    let script = r#"
        for f in "$STATE/identity/key" "$STATE/runner.db" "$STATE/control.sock"; do
            if (: < "$f") 2>/dev/null || (: > "$f") 2>/dev/null; then echo "reached $f"; else echo "refused $f: $( (: < "$f") 2>&1 )"; fi
        done
        ls "$STATE" >/dev/null 2>&1 && echo "listed the state folder"
        ls "$JOBS/.supervisors" >/dev/null 2>&1 && echo "listed the supervisors' folder"
        (: > "$JOBS/.supervisors/forged") 2>/dev/null && echo "wrote in the supervisors' folder"
        echo "home=$HOME"
        echo "uid=$(id -u) groups=$(id -G)"
        touch "$HOME/dotfile" && echo "home is writable"
    "#;
    let state_text = state.display().to_string();
    let jobs_text = dir.path().join("state-jobs").display().to_string();
    let id = server
        .submit_job(shell(
            script,
            &[("STATE", &state_text), ("JOBS", &jobs_text)],
        ))
        .expect("submit");
    let job = finished(&server, &id).await;
    let out = printed(&server, &id, OutputStream::Stdout);
    assert_eq!(
        job.outcome,
        Some(JobOutcome::Succeeded),
        "{}",
        printed(&server, &id, OutputStream::Stderr)
    );
    for file in ["identity/key", "runner.db", "control.sock"] {
        let refused = format!("refused {}: ", state.join(file).display());
        assert!(out.contains(&refused), "{file} was not refused:\n{out}");
    }
    assert!(!out.contains("reached"), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(!out.contains("listed the state folder"), "{out}");
    // Its supervisor's records and socket are out of its reach: it cannot forge its end.
    assert!(!out.contains("supervisors' folder"), "{out}");
    assert!(out.contains("uid=65534 groups=65534\n"), "{out}");
    assert!(out.contains("home is writable"), "{out}");
    let home = out
        .lines()
        .find_map(|line| line.strip_prefix("home="))
        .expect("HOME printed");
    assert!(
        !Path::new(home).starts_with(&state),
        "HOME {home} is inside the state folder"
    );
    assert!(
        Path::new(home).starts_with(dir.path().join("state-jobs")),
        "{home}"
    );
    // The state folder stays private; the jobs folder is passable, not listable.
    let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o7777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&dir.path().join("state-jobs")), 0o711);
    assert_eq!(mode(&dir.path().join("state-jobs/.supervisors")), 0o700);
    handle.shutdown();
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops");
    server.shutdown().await;
}

#[tokio::test]
async fn a_jobs_folder_the_job_account_could_change_is_refused() {
    if !is_root() {
        eprintln!("skipped: running jobs as another account needs root (CI runs as root)");
        return;
    }
    let server = dev_server().await;
    let dir = passable_tempdir();
    let jobs = dir.path().join("jobs-of-nobody");
    std::fs::create_dir(&jobs).expect("mkdir");
    std::os::unix::fs::chown(&jobs, Some(65534), Some(65534)).expect("chown");
    let mut config = settings(&server, &dir.path().join("state"));
    config.job_account = fyn_runner::platform::lookup_account("nobody").expect("look up");
    config.jobs_dir = Some(jobs.clone());
    let Err(error) = runtime::start(config) else {
        panic!("a jobs folder owned by the job account was accepted");
    };
    let said = error.to_string();
    assert!(
        said.contains(&format!("refusing the jobs folder {}", jobs.display()))
            && said.contains("owned by uid 65534"),
        "{said}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn job_folders_of_the_old_layout_move_out_of_the_state_folder() {
    if !is_root() {
        eprintln!("skipped: running jobs as another account needs root (CI runs as root)");
        return;
    }
    let server = dev_server().await;
    let dir = passable_tempdir();
    let state = dir.path().join("state");
    let old = state.join("jobs").join("job-old-1");
    std::fs::create_dir_all(old.join("work")).expect("an old job folder");
    std::fs::write(old.join("stdout.log"), "old output").expect("log");
    let mut config = settings(&server, &state);
    config.job_account = fyn_runner::platform::lookup_account("nobody").expect("look up");
    let mut handle = runtime::start(config).expect("starts");
    active(&mut handle).await;
    let moved = dir.path().join("state-jobs").join("job-old-1");
    assert_eq!(
        std::fs::read_to_string(moved.join("stdout.log")).expect("moved along"),
        "old output"
    );
    assert!(!state.join("jobs").exists(), "the old jobs folder is gone");
    handle.shutdown();
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops");
    server.shutdown().await;
}

// ---------------------------------------------------------------- the binary

/// The binary, its stderr captured, killed if the test ends first.
struct Runner(Child);

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fyn(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("FYN_RUNNER_TOKEN")
        .env_remove("FYN_RUNNER_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent-fyn-test");
    command
}

fn output(command: &mut Command) -> (i32, String, String) {
    let out = command.output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write");
    path
}

// ---------------------------------------------------------------- item 10: one check

#[test]
fn print_config_refuses_plain_text_off_loopback_as_run_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let state = state.to_str().expect("utf-8");
    let (code, stdout, printed) = output(&mut fyn(&[
        "run",
        "--print-config",
        "--server",
        "ws://10.1.2.3:7480",
        "--state-dir",
        state,
    ]));
    assert_eq!(code, 1, "{stdout}");
    let (code, _, ran) = output(&mut fyn(&[
        "run",
        "--server",
        "ws://10.1.2.3:7480",
        "--state-dir",
        state,
    ]));
    assert_eq!(code, 1);
    let refusal = "refusing plain ws:// to 10.1.2.3";
    assert!(printed.contains(refusal), "{printed}");
    assert!(ran.contains(refusal), "{ran}");
}

#[test]
fn the_flag_and_the_file_take_the_same_drain_deadlines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, flag) = output(&mut fyn(&[
        "run",
        "--print-config",
        "--drain-deadline",
        "18446744073709551615",
    ]));
    assert_eq!(code, 2, "clap's usage error: {flag}");
    assert!(flag.contains("too large: 18446744073709551615"), "{flag}");
    let config = write_config(dir.path(), "drain_deadline = 9223372036854775807\n");
    let (code, _, file) = output(&mut fyn(&[
        "run",
        "--print-config",
        "--config",
        config.to_str().expect("utf-8"),
    ]));
    assert_eq!(code, 1);
    let range = "must be between 0 and 2592000, got 9223372036854775807";
    assert!(file.contains(range), "{file}");
    let (code, _, flag) = output(&mut fyn(&[
        "run",
        "--print-config",
        "--drain-deadline",
        "9223372036854775807",
    ]));
    assert_eq!(code, 2);
    assert!(flag.contains(range), "{flag}");
    // And `drain --deadline` the same.
    let (code, _, drain) = output(&mut fyn(&["drain", "--deadline", "9223372036854775807"]));
    assert_eq!(code, 2);
    assert!(drain.contains(range), "{drain}");
}

#[test]
fn a_trace_size_too_small_to_replay_is_refused_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, flag) = output(&mut fyn(&[
        "run",
        "--print-config",
        "--trace-max-bytes",
        "0",
    ]));
    assert_eq!(code, 2);
    assert!(flag.contains("must be between 1024 and"), "{flag}");
    let config = write_config(dir.path(), "trace_max_bytes = 0\n");
    let (code, _, file) = output(&mut fyn(&[
        "run",
        "--print-config",
        "--config",
        config.to_str().expect("utf-8"),
    ]));
    assert_eq!(code, 1);
    assert!(
        file.contains("key `trace_max_bytes`: must be between 1024 and"),
        "{file}"
    );
}

#[tokio::test]
async fn the_control_socket_refuses_a_deadline_run_would_refuse() {
    use fyn_runner::runtime::control::{ControlRequest, ControlResponse, request};
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut handle = runtime::start(settings(&server, &state)).expect("starts");
    active(&mut handle).await;
    let answer = request(
        &state,
        &ControlRequest::Drain {
            deadline_secs: Some(u64::MAX),
            force: false,
            uninstall: false,
        },
    )
    .await
    .expect("an answer");
    let ControlResponse::Error { message } = answer else {
        panic!("expected a refusal, got {answer:?}");
    };
    assert!(message.contains("too large"), "{message}");
    assert_eq!(handle.status.borrow().state, "Active", "not draining");
    handle.shutdown();
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops");
    server.shutdown().await;
}

/// Wait until the dev-server sees one runner Active.
async fn runner_active(server: &DevServer, runner: &mut Runner) {
    let deadline = Instant::now() + WAIT;
    while !server
        .runners()
        .expect("runners")
        .iter()
        .any(|r| r.connected && r.state == fyn_runner::devserver::RunnerState::Active)
    {
        if let Some(status) = runner.0.try_wait().expect("wait") {
            panic!("the runner ended before Active: {status}");
        }
        assert!(Instant::now() < deadline, "the runner never became Active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `run` with the token from a file, its log on stderr to `log`.
fn spawn_runner(server: &DevServer, dir: &Path, log: &Path, rust_log: &str) -> (Runner, String) {
    let token = server.mint_token().expect("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let log = std::fs::File::create(log).expect("log file");
    let child = fyn(&[
        "run",
        "--server",
        &server.url(),
        "--state-dir",
        dir.join("state").to_str().expect("utf-8"),
        "--token-file",
        token_file.to_str().expect("utf-8"),
        "--name",
        "hostile-bin",
    ])
    .env("RUST_LOG", rust_log)
    .stdout(std::process::Stdio::null())
    .stderr(log)
    .spawn()
    .expect("runs");
    (Runner(child), token)
}

fn signal(runner: &Runner, signal: libc::c_int) {
    let pid = i32::try_from(runner.0.id()).expect("pid");
    // SAFETY: kill(2) with a pid this test started and still holds (not reaped).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal}");
}

// ---------------------------------------------------------------- item 8: signals

#[tokio::test]
async fn stray_signals_do_not_kill_the_runner_mid_job() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("runner.log");
    let (mut runner, _) = spawn_runner(&server, dir.path(), &log, "info");
    runner_active(&server, &mut runner).await;
    let id = server
        .submit_job(shell("sleep 1; echo done", &[]))
        .expect("submit");
    let deadline = Instant::now() + WAIT;
    while server.job(&id).expect("job").expect("exists").state
        != fyn_runner::devserver::JobState::Running
    {
        assert!(Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for sig in [
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGALRM,
    ] {
        signal(&runner, sig);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            runner.0.try_wait().expect("wait").is_none(),
            "signal {sig} ended the runner"
        );
    }
    let job = finished(&server, &id).await;
    assert_eq!(
        (
            job.outcome,
            printed(&server, &id, OutputStream::Stdout).as_str()
        ),
        (Some(JobOutcome::Succeeded), "done\n")
    );
    assert!(
        runner.0.try_wait().expect("wait").is_none(),
        "the runner stays"
    );
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(
        said.contains("nothing to reload"),
        "SIGHUP is logged: {said}"
    );
    assert!(said.contains("SIGUSR1"), "{said}");
    signal(&runner, libc::SIGTERM);
    let status = runner.0.wait().expect("ends");
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM still stops it cleanly: {said}"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------- item 7: secrets

#[tokio::test]
async fn at_trace_level_no_token_and_no_job_secret_reaches_the_log() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("runner.log");
    let (mut runner, token) = spawn_runner(
        &server,
        dir.path(),
        &log,
        "trace,tungstenite::protocol=trace,tokio_tungstenite=trace,rustls=trace",
    );
    runner_active(&server, &mut runner).await;
    let secret = "job-secret-4f1d2e77";
    let id = server
        .submit_job(shell("echo ok", &[("API_KEY", secret)]))
        .expect("submit");
    assert_eq!(
        finished(&server, &id).await.outcome,
        Some(JobOutcome::Succeeded)
    );
    // The command line holds no token either: it came from a file.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", runner.0.id())).expect("cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains(&token));
    signal(&runner, libc::SIGTERM);
    runner.0.wait().expect("ends");
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(
        said.contains("DEBUG"),
        "the log is at debug level or finer: {said}"
    );
    assert!(!said.contains(&token), "the token is in the log");
    assert!(!said.contains(secret), "the job's secret is in the log");
    server.shutdown().await;
}

#[tokio::test]
async fn a_removed_jobs_environment_is_not_left_in_the_store_files() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut handle = runtime::start(settings(&server, &state)).expect("starts");
    active(&mut handle).await;
    let secret = "store-secret-9a8b7c6d5e";
    let id = server
        .submit_job(shell("echo ok", &[("API_KEY", secret)]))
        .expect("submit");
    assert_eq!(
        finished(&server, &id).await.outcome,
        Some(JobOutcome::Succeeded)
    );
    let lingering = || {
        ["runner.db", "runner.db-wal"]
            .into_iter()
            .filter(|name| {
                std::fs::read(state.join(name)).is_ok_and(|bytes| {
                    bytes
                        .windows(secret.len())
                        .any(|window| window == secret.as_bytes())
                })
            })
            .collect::<Vec<_>>()
    };
    // While the runner runs, once the job is out of the store...
    assert_eq!(lingering(), Vec::<&str>::new());
    handle.shutdown();
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops");
    // ...and after it stopped.
    assert_eq!(lingering(), Vec::<&str>::new());
    server.shutdown().await;
}

#[tokio::test]
async fn the_token_can_come_from_standard_input() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut child = fyn(&[
        "run",
        "--server",
        &server.url(),
        "--state-dir",
        dir.path().join("state").to_str().expect("utf-8"),
        "--token",
        "-",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{token}").expect("write the token");
    }
    let mut runner = Runner(child);
    runner_active(&server, &mut runner).await;
    signal(&runner, libc::SIGTERM);
    assert_eq!(runner.0.wait().expect("ends").code(), Some(0));
    server.shutdown().await;
}

// ---------------------------------------------------------------- item 4: owners

#[tokio::test]
async fn folders_and_files_of_another_user_are_refused() {
    if !is_root() {
        eprintln!("skipped: giving a folder to another user needs root (CI runs as root)");
        return;
    }
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut handle = runtime::start(settings(&server, &state)).expect("starts");
    active(&mut handle).await;
    handle.shutdown();
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops");
    let nobody = 65534;
    for path in [
        state.clone(),
        state.join("identity"),
        state.join("runner.db"),
    ] {
        std::os::unix::fs::chown(&path, Some(nobody), None).expect("chown");
        let state_arg = state.to_str().expect("utf-8");
        let (code, _, said) = output(&mut fyn(&[
            "run",
            "--server",
            &server.url(),
            "--state-dir",
            state_arg,
        ]));
        assert_eq!(
            code,
            1,
            "{} of another user accepted: {said}",
            path.display()
        );
        let expected = format!(
            "{} is owned by uid {nobody}, not by this user (uid 0)",
            path.display()
        );
        assert!(said.contains(&expected), "{said}");
        assert!(
            said.contains(&format!("chown -R 0 {}", path.display())),
            "{said}"
        );
        std::os::unix::fs::chown(&path, Some(0), None).expect("chown back");
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------- item 5: config file

#[test]
fn a_config_file_others_can_write_is_refused() {
    let dir = passable_tempdir();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let config = write_config(&open, "server = \"wss://evil.example\"\n");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let print = |config: &Path| {
        output(&mut fyn(&[
            "run",
            "--print-config",
            "--config",
            config.to_str().expect("utf-8"),
        ]))
    };
    let (code, stdout, said) = print(&config);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        said.contains(&format!(
            "refusing the config file {}: it is writable by group or others (mode 0666)",
            config.display()
        )),
        "{said}"
    );
    // Tight itself, but in a folder anyone can replace it in.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, _, said) = print(&config);
    assert_eq!(code, 1);
    assert!(
        said.contains(&format!(
            "its folder {} is writable by others (mode 0777) without the sticky bit",
            open.display()
        )),
        "{said}"
    );
    // With the sticky bit (as /tmp has), only its owner can replace it.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let (code, stdout, said) = print(&config);
    assert_eq!(code, 0, "{said}");
    assert!(
        stdout.contains("server = \"wss://evil.example\""),
        "{stdout}"
    );
}

// ---------------------------------------------------------------- item 6: lost store

#[tokio::test]
async fn an_empty_or_missing_store_beside_an_identity_is_an_error_with_a_way_out() {
    let server = dev_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut handle = runtime::start(settings(&server, &state)).expect("starts");
    active(&mut handle).await;
    handle.shutdown();
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops");
    let db = state.join("runner.db");

    std::fs::File::create(&db).expect("truncate to 0 bytes");
    let Err(error) = runtime::start(settings(&server, &state)) else {
        panic!("an empty store beside an identity was accepted");
    };
    let said = error.to_string();
    assert!(
        said.starts_with(&format!(
            "store {} is empty, but this runner is registered",
            db.display()
        )),
        "{said}"
    );
    assert!(said.contains("Restore"), "{said}");
    assert!(said.contains("mv "), "{said}");

    std::fs::remove_file(&db).expect("remove");
    let Err(error) = runtime::start(settings(&server, &state)) else {
        panic!("a missing store beside an identity was accepted");
    };
    assert!(error.to_string().contains("is missing"), "{error}");

    // The way out it gives: the identity aside, a new token, a new runner.
    let identity = state.join("identity");
    std::fs::rename(&identity, state.join("identity.lost")).expect("mv");
    let mut handle = runtime::start(settings(&server, &state)).expect("starts afresh");
    active(&mut handle).await;
    handle.shutdown();
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops");
    server.shutdown().await;
}

// ---------------------------------------------------------------- error messages

#[test]
fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, "").expect("a file where a folder should be");
    let state = file.join("state");
    let (code, _, said) = output(&mut fyn(&[
        "run",
        "--server",
        "ws://127.0.0.1:9",
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--token",
        "x",
    ]));
    assert_eq!(code, 1, "{said}");
    assert_eq!(
        said.matches("Not a directory (os error 20)").count(),
        1,
        "{said}"
    );
}

// ---------------------------------------------------------------- item 2: install

/// Removes the test's account whatever happens.
struct TestAccount(String);

impl Drop for TestAccount {
    fn drop(&mut self) {
        if fyn_runner::platform::lookup_account(&self.0).is_ok_and(|a| a.is_some()) {
            let _ = Command::new("userdel").arg(&self.0).output();
        }
    }
}

fn account_exists(name: &str) -> bool {
    fyn_runner::platform::lookup_account(name)
        .expect("look up")
        .is_some()
}

// Several threads: the install is waited for synchronously while the dev-server serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_install_creates_the_job_account_and_a_rollback_removes_it() {
    if !is_root() || !cfg!(target_os = "linux") {
        eprintln!("skipped: creating accounts needs root on Linux (CI runs as root)");
        return;
    }
    let account = TestAccount(format!("fyn-t{}", std::process::id()));
    let name = account.0.clone();
    assert!(!account_exists(&name), "a leftover account {name}");
    let server = dev_server().await;
    let dir = passable_tempdir();
    let config_dir = dir.path().join("etc");
    let state = dir.path().join("state");
    let install = |token: &str| {
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).expect("token file");
        output(&mut fyn(&[
            "install",
            "--scope",
            "system",
            "--no-service",
            "--config-dir",
            config_dir.to_str().expect("utf-8"),
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--server",
            &server.url(),
            "--job-user",
            &name,
            "--token-file",
            token_file.to_str().expect("utf-8"),
        ]))
    };

    // A token the control plane refuses: everything the install created goes, the
    // account included.
    let (code, said, _) = install("not-a-token");
    assert_ne!(code, 0, "{said}");
    assert!(
        said.contains(&format!("created the account {name}")),
        "{said}"
    );
    assert!(
        said.contains(&format!("removed the job account {name}")),
        "{said}"
    );
    assert!(!account_exists(&name), "the rollback left the account");

    let (code, said, err) = install(&server.mint_token().expect("token"));
    assert_eq!(code, 0, "{said}{err}");
    let config = config_dir.join("config.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains(&format!("job_user = \"{name}\"")), "{text}");
    let uid = fyn_runner::platform::lookup_account(&name)
        .expect("look up")
        .expect("created")
        .uid;

    // The service's command line: jobs run as the account.
    let child = fyn(&["run", "--config", config.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runs");
    let mut runner = Runner(child);
    runner_active(&server, &mut runner).await;
    let id = server
        .submit_job(shell("id -u; echo \"$USER $HOME\"", &[]))
        .expect("submit");
    let job = finished(&server, &id).await;
    let jobs_dir = dir.path().join("state-jobs");
    let out = printed(&server, &id, OutputStream::Stdout);
    assert!(
        out.starts_with(&format!("{uid}\n{name} {}", jobs_dir.display())),
        "{out}{}{:?}",
        printed(&server, &id, OutputStream::Stderr),
        job.outcome
    );
    signal(&runner, libc::SIGTERM);
    assert_eq!(runner.0.wait().expect("ends").code(), Some(0));

    let (code, said, err) = output(&mut fyn(&[
        "uninstall",
        "--scope",
        "system",
        "--config-dir",
        config_dir.to_str().expect("utf-8"),
    ]));
    assert_eq!(code, 0, "{said}{err}");
    assert!(said.contains(&format!("left the account {name}")), "{said}");
    assert!(!state.exists() && !jobs_dir.exists(), "{said}");
    assert!(
        account_exists(&name),
        "uninstall leaves the account, as it says"
    );
    drop(account);
    assert!(!account_exists(&name));
    server.shutdown().await;
}
