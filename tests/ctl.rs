//! `fyn-runner ctl` as an operator types it, against a dev-server with a real runner
//! binary: tokens, submit --wait with the job's exit code, logs --follow streaming a
//! running job live, a runner shown and drained, the admin token found where the
//! dev-server wrote it, and the exit codes of what goes wrong. Unix: the jobs are `sh`.
#![cfg(unix)]
#![allow(clippy::disallowed_methods)] // deadlines for what the tests wait on

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fyn_runner::devserver::{DevServer, DevServerConfig, JobState, RunnerState};
use fyn_runner::protocol::SessionParams;

const WAIT: Duration = Duration::from_secs(20);

/// A child process killed when dropped, so a failing test leaves none behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    server: DevServer,
    token_file: PathBuf,
    runner: Killed,
    _dir: tempfile::TempDir,
}

async fn dev_server(dir: &Path) -> (DevServer, PathBuf) {
    let token_file = dir.join("admin").join("token");
    let server = DevServer::start(DevServerConfig {
        admin_token_file: Some(token_file.clone()),
        session: SessionParams {
            heartbeat_interval_ms: 1_000,
            ack_timeout_ms: 500,
            runner_lost_threshold_ms: 10_000,
        },
        ..DevServerConfig::ephemeral()
    })
    .await
    .expect("the dev-server starts");
    (server, token_file)
}

/// `fyn-runner ctl ARGS` against the setup's server, with its token file.
fn ctl(server: &DevServer, token_file: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
    command
        .arg("ctl")
        .arg("--server")
        .arg(server.admin_url())
        .arg("--admin-token-file")
        .arg(token_file)
        .env_remove("FYN_RUNNER_ADMIN_TOKEN")
        .env_remove("FYN_RUNNER_ADMIN_URL")
        .stdin(Stdio::null());
    command
}

/// Run to the end off the async threads: the dev-server answering it runs on them.
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joined")
        .expect("ctl runs")
}

/// Run with `args` added; the exit code and stderr.
async fn code(mut command: Command, args: &[&str]) -> (Option<i32>, String) {
    command.args(args);
    let output = run(command).await;
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A dev-server and a runner binary registered with a token `ctl tokens create`
/// minted, Active.
async fn with_a_runner() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, token_file) = dev_server(dir.path()).await;
    let mut mint = ctl(&server, &token_file);
    mint.args(["tokens", "create"]);
    let minted = run(mint).await;
    assert_eq!(minted.status.code(), Some(0), "{minted:?}");
    let token = stdout(&minted).trim().to_owned();
    let runner = Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
        .args([
            "run",
            "--server",
            &server.url(),
            "--token",
            &token,
            "--no-trace",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("runner"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the runner starts");
    let runner = Killed(runner);
    let deadline = Instant::now() + WAIT;
    while !server
        .runners()
        .expect("runners")
        .iter()
        .any(|r| r.state == RunnerState::Active)
    {
        assert!(Instant::now() < deadline, "the runner never became Active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Setup {
        server,
        token_file,
        runner,
        _dir: dir,
    }
}

#[tokio::test]
async fn submit_wait_exits_with_the_jobs_exit_code() {
    let setup = with_a_runner().await;
    let mut submit = ctl(&setup.server, &setup.token_file);
    submit.args([
        "submit",
        "--wait",
        "--",
        "sh",
        "-c",
        "echo hello; echo oops >&2; exit 3",
    ]);
    let output = run(submit).await;
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(stdout(&output), "hello\n", "the job's stdout, as it is");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("oops"), "{stderr}");

    // The job as the API holds it, through ctl.
    let jobs = setup.server.jobs().expect("jobs");
    let mut show = ctl(&setup.server, &setup.token_file);
    show.args(["--json", "job", &jobs[0].id]);
    let shown = run(show).await;
    let job: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    assert_eq!(
        job["exit_status"],
        serde_json::json!({"how": "exited", "code": 3})
    );

    // A job killed by a signal: 128 + the signal.
    let mut killed = ctl(&setup.server, &setup.token_file);
    killed.args(["submit", "--wait", "--", "sh", "-c", "kill -9 $$"]);
    let output = run(killed).await;
    assert_eq!(output.status.code(), Some(137), "{output:?}");
}

#[tokio::test]
async fn logs_follow_streams_a_running_job_live() {
    let setup = with_a_runner().await;
    let gate = setup._dir.path().join("gate");
    let script = format!(
        "echo one; while [ ! -e {} ]; do sleep 0.05; done; echo two",
        gate.display()
    );
    let mut submit = ctl(&setup.server, &setup.token_file);
    submit.args(["submit", "--", "sh", "-c", &script]);
    let submitted = run(submit).await;
    assert_eq!(submitted.status.code(), Some(0), "{submitted:?}");
    let id = stdout(&submitted).trim().to_owned();

    let mut follow = ctl(&setup.server, &setup.token_file);
    follow
        .args(["logs", "--follow", "--stream", "stdout", &id])
        .stdout(Stdio::piped());
    let mut child = Killed(follow.spawn().expect("ctl logs starts"));
    let out = child.0.stdout.take().expect("its stdout");
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if lines_tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });

    // The first line arrives while the job still runs (it waits for the gate).
    let mut next = async || {
        tokio::time::timeout(WAIT, lines_rx.recv())
            .await
            .expect("a line in time")
            .expect("ctl still prints")
    };
    assert_eq!(next().await, "one");
    let job = setup.server.job(&id).expect("query").expect("the job");
    assert_eq!(job.state, JobState::Running, "printed live, not at the end");
    std::fs::write(&gate, b"").expect("open the gate");
    assert_eq!(next().await, "two");
    let status = tokio::task::spawn_blocking(move || {
        let status = child.0.wait();
        drop(child);
        status
    })
    .await
    .expect("joined")
    .expect("ctl ends when the job does");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn what_goes_wrong_has_its_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, token_file) = dev_server(dir.path()).await;
    let (status, stderr) = code(ctl(&server, &token_file), &["job", "j-missing"]).await;
    assert_eq!(status, Some(3), "{stderr}");
    let (status, _) = code(ctl(&server, &token_file), &["cancel", "j-missing"]).await;
    assert_eq!(status, Some(3));

    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef\n").expect("write");
    set_private(&wrong);
    let (status, stderr) = code(ctl(&server, &wrong), &["runners"]).await;
    assert_eq!(status, Some(4), "{stderr}");
    assert!(stderr.contains("not authorized"), "{stderr}");

    // Refused by the API (400): a workdir outside the job's folder.
    let (status, stderr) = code(
        ctl(&server, &token_file),
        &["submit", "--workdir", "../x", "--", "true"],
    )
    .await;
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stderr.contains("workdir"), "{stderr}");
    // Bad usage: clap's own code.
    let (status, _) = code(
        ctl(&server, &token_file),
        &["submit", "--timeout", "0", "--", "true"],
    )
    .await;
    assert_eq!(status, Some(2));

    let stopped_at = server.admin_url();
    server.shutdown().await;
    let mut gone = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
    gone.args(["ctl", "--server", &stopped_at, "--admin-token-file"])
        .arg(&token_file)
        .arg("jobs");
    let (status, stderr) = code(gone, &[]).await;
    assert_eq!(status, Some(5), "{stderr}");
    // No token anywhere and nothing listening: unreachable (5), not unauthorized (4).
    let mut gone = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
    gone.args(["ctl", "--server", &stopped_at, "jobs"])
        .env_remove("FYN_RUNNER_ADMIN_TOKEN")
        .env_remove("FYN_RUNNER_ADMIN_TOKEN_FILE")
        .env("XDG_RUNTIME_DIR", dir.path());
    let (status, stderr) = code(gone, &[]).await;
    assert_eq!(status, Some(5), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    // With --wait, ctl's own failures are 125, never a job's code.
    let mut gone = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
    gone.args(["ctl", "--server", &stopped_at, "--admin-token-file"])
        .arg(&token_file)
        .args(["submit", "--wait", "--", "true"]);
    let (status, _) = code(gone, &[]).await;
    assert_eq!(status, Some(125));
}

#[tokio::test]
async fn a_runner_is_shown_and_drained() {
    let mut setup = with_a_runner().await;
    let id = setup.server.runners().expect("runners")[0].id.clone();
    let mut list = ctl(&setup.server, &setup.token_file);
    list.arg("runners");
    let listed = run(list).await;
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    assert!(stdout(&listed).contains(&id), "{}", stdout(&listed));
    let mut show = ctl(&setup.server, &setup.token_file);
    show.args(["--json", "runner", &id]);
    let shown = run(show).await;
    assert_eq!(shown.status.code(), Some(0), "{shown:?}");
    let runner: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    assert_eq!(
        (runner["id"].as_str(), runner["state"].as_str()),
        (Some(id.as_str()), Some("Active"))
    );
    let (status, stderr) = code(ctl(&setup.server, &setup.token_file), &["runner", "r-none"]).await;
    assert_eq!(status, Some(3), "{stderr}");

    let (status, stderr) = code(ctl(&setup.server, &setup.token_file), &["drain", &id]).await;
    assert_eq!(status, Some(0), "{stderr}");
    // The runner drains (no job to wait for), says goodbye and exits 0.
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(exit) = setup.runner.0.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the runner did not stop after the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0));
    let after = setup.server.runner(&id).expect("query").expect("runner");
    assert!(!after.connected, "{after:?}");
}

/// With no token given, `ctl` reads the one the dev-server wrote for its port under
/// `$XDG_RUNTIME_DIR`: the two commands an operator types, nothing more.
#[tokio::test]
async fn the_admin_token_is_found_where_the_dev_server_wrote_it() {
    let runtime_dir = tempfile::tempdir().expect("tempdir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
    server
        .args(["dev-server", "--listen", "127.0.0.1:0"])
        .env("XDG_RUNTIME_DIR", runtime_dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = Killed(server.spawn().expect("the dev-server starts"));
    let out = server.0.stdout.take().expect("stdout");
    let admin_url = tokio::task::spawn_blocking(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("admin-url: ").map(str::to_owned))
    })
    .await
    .expect("joined")
    .expect("the dev-server prints its admin URL");
    let bare = |runtime: &Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
        command
            .args(["ctl", "--server", &admin_url, "runners"])
            .env_remove("FYN_RUNNER_ADMIN_TOKEN")
            .env_remove("FYN_RUNNER_ADMIN_TOKEN_FILE")
            .env("XDG_RUNTIME_DIR", runtime)
            .stdin(Stdio::null());
        command
    };
    let found = run(bare(runtime_dir.path())).await;
    assert_eq!(found.status.code(), Some(0), "{found:?}");
    // Elsewhere there is no token to find: unauthorized, and told where to look.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let (status, stderr) = code(bare(elsewhere.path()), &[]).await;
    assert_eq!(status, Some(4), "{stderr}");
    assert!(stderr.contains("token"), "{stderr}");
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A job's files from the operator's side with a real runner: `ctl submit --input
/// --output` stores the input and queues the job; the runner fetches it, runs the job
/// and uploads its result; `ctl results` lists it and `ctl fetch` brings it back.
#[tokio::test]
async fn submit_with_files_then_results_and_fetch() {
    let setup = with_a_runner().await;
    let local = setup._dir.path().join("local");
    std::fs::create_dir(&local).expect("mkdir");
    std::fs::write(local.join("words.txt"), "hello files\n").expect("write");
    let input = format!("{}:in/words.txt", local.join("words.txt").display());
    let mut submit = ctl(&setup.server, &setup.token_file);
    submit.args([
        "submit",
        "--input",
        &input,
        "--output",
        "shout.txt",
        "--",
        "sh",
        "-c",
        "tr a-z A-Z < in/words.txt > shout.txt",
    ]);
    let submitted = run(submit).await;
    assert_eq!(submitted.status.code(), Some(0), "{submitted:?}");
    let id = stdout(&submitted).trim().to_owned();
    let deadline = Instant::now() + WAIT;
    loop {
        let job = setup.server.job(&id).expect("query").expect("the job");
        if job.outcome.is_some() {
            assert_eq!(job.state, JobState::Finished, "{job:?}");
            break;
        }
        assert!(Instant::now() < deadline, "job stuck in {:?}", job.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut results = ctl(&setup.server, &setup.token_file);
    results.args(["results", &id]);
    let listed = run(results).await;
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    assert!(stdout(&listed).contains("shout.txt"), "{}", stdout(&listed));
    let mut fetch = ctl(&setup.server, &setup.token_file);
    fetch.args(["fetch", &id, "shout.txt", "-o", "-"]);
    let fetched = run(fetch).await;
    assert_eq!(fetched.status.code(), Some(0), "{fetched:?}");
    assert_eq!(stdout(&fetched), "HELLO FILES\n");
}
