//! Jobs end to end: the real runtime (in-process, or the real binary where a crash or
//! memory must be observed) against the reference control plane, plus a scripted API
//! for deliveries the dev-server never makes (a slot overrun, a duplicated command, a
//! job ID that climbs out of the job area).
// Unix only: its jobs are `sh` scripts and it checks processes through signals.
#![cfg(unix)]
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use fyn_runner::core::CoreConfig;
use fyn_runner::devserver::{DevServer, DevServerConfig, JobInfo, JobRequest, JobState};
use fyn_runner::protocol::{
    Command as ApiCommand, JobOutcome, JobSpec, OutputStream, PROTOCOL_VERSION, RejectReason,
    RunnerEvent, RunnerMessage, ServerMessage, SessionParams, decode_runner, encode,
};
use fyn_runner::runtime::identity::Identity;
use fyn_runner::runtime::{self, RunnerHandle, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(30);

fn session() -> SessionParams {
    SessionParams {
        heartbeat_interval_ms: 1_000,
        ack_timeout_ms: 500,
        runner_lost_threshold_ms: 30_000,
    }
}

async fn dev_server(db: Option<&Path>, listen: Option<std::net::SocketAddr>) -> DevServer {
    let mut config = DevServerConfig::ephemeral();
    config.session = session();
    config.db = db.map(Path::to_path_buf);
    if let Some(addr) = listen {
        config.listen = addr;
    }
    DevServer::start(config).await.expect("dev-server")
}

fn settings(url: &str, dir: &Path, token: Option<String>, slots: u32) -> RunnerSettings {
    RunnerSettings {
        token: token.map(Secret::new),
        name: "jobs-runner".into(),
        core: CoreConfig {
            slots,
            ..CoreConfig::default()
        },
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..RunnerSettings::new(
            runtime::settings::endpoint(url, false).expect("url"),
            dir.to_path_buf(),
        )
    }
}

/// A stream of a job's output, as text.
fn output(server: &DevServer, id: &str, stream: OutputStream) -> String {
    let bytes = server.output_bytes(id, stream).expect("the output");
    String::from_utf8_lossy(&bytes).into_owned()
}

fn request(command: &[&str], timeout_secs: u64) -> JobRequest {
    JobRequest {
        command: command.iter().map(|s| (*s).to_owned()).collect(),
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

async fn active(handle: &mut RunnerHandle) {
    let status = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("in time");
    assert_eq!(status.state, "Active", "{status:?}");
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
            "job {id} stuck in {:?} ({} stdout bytes)",
            job.state,
            job.stdout_bytes
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn finished(server: &DevServer, id: &str) -> JobInfo {
    until_job(server, id, |j| j.outcome.is_some()).await
}

#[tokio::test]
async fn every_outcome_reaches_the_api() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = runtime::start(settings(
        &server.url(),
        dir.path(),
        Some(server.mint_token().expect("token")),
        4,
    ))
    .expect("starts");
    active(&mut handle).await;

    let mut with_env = request(&["sh", "-c", "echo \"$GREETING\"; echo err >&2"], 60);
    with_env.env.insert("GREETING".into(), "hello".into());
    let ok = server.submit_job(with_env).expect("submit");
    let failed = server
        .submit_job(request(&["sh", "-c", "exit 3"], 60))
        .expect("submit");
    let cancelled = server
        .submit_job(request(&["sleep", "300"], 60))
        .expect("submit");
    let timed_out = server
        .submit_job(request(&["sleep", "300"], 1))
        .expect("submit");
    let unstartable = server
        .submit_job(request(&["/no/such/program"], 60))
        .expect("submit");

    let job = finished(&server, &ok).await;
    assert_eq!(
        (
            job.outcome,
            output(&server, &ok, OutputStream::Stdout).as_str(),
            output(&server, &ok, OutputStream::Stderr).as_str()
        ),
        (Some(JobOutcome::Succeeded), "hello\n", "err\n")
    );
    assert_eq!(
        finished(&server, &failed).await.outcome,
        Some(JobOutcome::Failed)
    );
    until_job(&server, &cancelled, |j| j.state == JobState::Running).await;
    server.cancel_job(&cancelled).expect("cancel");
    assert_eq!(
        finished(&server, &cancelled).await.outcome,
        Some(JobOutcome::Cancelled)
    );
    assert_eq!(
        finished(&server, &timed_out).await.outcome,
        Some(JobOutcome::TimedOut)
    );
    // A process that cannot start: failed, and the runner's reason reaches the API.
    let job = finished(&server, &unstartable).await;
    assert_eq!(job.outcome, Some(JobOutcome::Failed));
    let detail = job.detail.unwrap_or_default();
    assert!(detail.contains("/no/such/program"), "detail: {detail:?}");

    handle.shutdown();
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops")
            .code(),
        0
    );
    server.shutdown().await;
}

/// The state folder's database copied from `from` to `to`, as a backup or a snapshot
/// of the machine has it.
fn copy_store(from: &Path, to: &Path) {
    for name in ["runner.db", "runner.db-wal", "runner.db-shm"] {
        let _ = std::fs::remove_file(to.join(name));
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).expect("copy");
        }
    }
}

#[tokio::test]
async fn a_store_restored_from_an_older_copy_delivers_old_and_new_events_after_the_apis() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");

    // The copy is taken while a job runs (a snapshot of a live machine).
    let (running, pid) = kill_9_mid_job(&server, dir.path(), &token).await;
    copy_store(dir.path(), backup.path());

    // Life goes on: the job is reported lost, another runs; the API holds these events.
    let mut runner = spawn_runner(&server.url(), dir.path(), None);
    assert_eq!(
        finished(&server, &running).await.outcome,
        Some(JobOutcome::Lost)
    );
    until_gone(pid).await;
    let between = server.submit_job(request(&["true"], 60)).expect("submit");
    assert_eq!(
        finished(&server, &between).await.outcome,
        Some(JobOutcome::Succeeded)
    );
    runner.kill().expect("stop");
    let _ = runner.wait();

    // The machine is rolled back. The restored store reports the job it holds lost
    // again, before it reaches the API: an event it never sent, numbered where the API
    // already holds one. (The report is made at start, before the connection is even
    // opened; were it made after authentication, it would be numbered after the API's
    // in the ordinary way and this test would still pass, without the renumbering.)
    copy_store(backup.path(), dir.path());
    let mut runner = spawn_runner(&server.url(), dir.path(), None);
    let after = server
        .submit_job(request(&["sh", "-c", "echo after"], 60))
        .expect("submit");
    // Numbered from where the copy stopped, new events would be dropped as ones the
    // API holds, and this job's output with them.
    let job = finished(&server, &after).await;
    assert_eq!(
        (
            job.outcome,
            output(&server, &after, OutputStream::Stdout).as_str()
        ),
        (Some(JobOutcome::Succeeded), "after\n")
    );
    // The restored store's report reached the API (which ignores it: the job ended
    // already) instead of being acknowledged away unsent.
    let runner_id = job.runner.clone().expect("assigned");
    let reports = server
        .events(&runner_id)
        .expect("events")
        .iter()
        .filter(|e| e.kind == "job_finished" && e.body["job"]["job_id"] == running.as_str())
        .count();
    assert_eq!(reports, 2);
    runner.kill().expect("stop");
    let _ = runner.wait();
    server.shutdown().await;
}

#[tokio::test]
async fn a_job_survives_a_lost_link_and_its_result_arrives_after_reconnect() {
    let db_dir = tempfile::tempdir().expect("tempdir");
    let db = db_dir.path().join("dev.db");
    let server = dev_server(Some(&db), None).await;
    let addr = server.local_addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = runtime::start(settings(
        &server.url(),
        dir.path(),
        Some(server.mint_token().expect("token")),
        1,
    ))
    .expect("starts");
    active(&mut handle).await;
    let id = server
        .submit_job(request(
            &["sh", "-c", "echo before; sleep 1; echo after"],
            60,
        ))
        .expect("submit");
    until_job(&server, &id, |j| j.state == JobState::Running).await;

    server.shutdown().await;
    tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Reconnecting"))
        .await
        .expect("notices the loss");
    // The job goes on without the link; its end is kept in the outbox.
    tokio::time::timeout(WAIT, handle.wait_for(|s| s.jobs_running == 0))
        .await
        .expect("the job ends offline");
    let server = dev_server(Some(&db), Some(addr)).await;
    let job = finished(&server, &id).await;
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded));
    assert_eq!(
        output(&server, &id, OutputStream::Stdout),
        "before\nafter\n",
        "all output delivered exactly once"
    );
    handle.shutdown();
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops")
            .code(),
        0
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------- a scripted API

/// Accept one runner, take it through the handshake to Active, send `commands`, and
/// collect the events it reports until `enough` says so.
async fn scripted_api(
    commands: Vec<ApiCommand>,
    repeat_first_index: bool,
    enough: impl Fn(&[RunnerEvent]) -> bool + Send + 'static,
) -> (
    String,
    tokio::task::JoinHandle<(Vec<RunnerEvent>, Vec<u64>)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("a runner connects");
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, accept_subprotocol)
            .await
            .expect("upgrade");
        let send = |m: ServerMessage| Message::text(encode(&m));
        ws.send(send(ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            nonce: "n".into(),
        }))
        .await
        .expect("send");
        let mut events = Vec::new();
        let mut acks = Vec::new();
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else { continue };
            let reply = match decode_runner(text.as_str()).expect("the runner speaks the protocol")
            {
                RunnerMessage::Authenticate { runner_id, .. } => {
                    vec![ServerMessage::Authenticated {
                        runner_id,
                        last_event_index: 0,
                        session: session(),
                        hardware_known: false,
                    }]
                }
                RunnerMessage::Startup { .. } => vec![ServerMessage::StartupAck {}],
                RunnerMessage::HardwareFull { .. }
                | RunnerMessage::HardwareChanges { .. }
                | RunnerMessage::HardwareUnchanged {} => {
                    vec![ServerMessage::HardwareConfirmed {}]
                }
                RunnerMessage::Ready { .. } => {
                    let mut out = vec![ServerMessage::ReadyAck {}];
                    for (i, command) in commands.iter().enumerate() {
                        out.push(ServerMessage::Command {
                            index: i as u64 + 1,
                            command: command.clone(),
                        });
                        if i == 0 && repeat_first_index {
                            out.push(ServerMessage::Command {
                                index: 1,
                                command: command.clone(),
                            });
                        }
                    }
                    out
                }
                RunnerMessage::Heartbeat { seq, .. } => vec![ServerMessage::HeartbeatAck { seq }],
                RunnerMessage::CommandAck { index } => {
                    acks.push(index);
                    vec![]
                }
                RunnerMessage::Event { index, event } => {
                    events.push(std::sync::Arc::unwrap_or_clone(event));
                    vec![ServerMessage::EventsAck { up_to: index }]
                }
                _ => vec![],
            };
            for message in reply {
                ws.send(send(message)).await.expect("send");
            }
            if enough(&events) {
                break;
            }
        }
        (events, acks)
    });
    (url, task)
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn accept_subprotocol(
    _req: &tokio_tungstenite::tungstenite::handshake::server::Request,
    mut resp: tokio_tungstenite::tungstenite::handshake::server::Response,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::server::Response,
    tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
> {
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        "fyn-runner.v1".parse().expect("header"),
    );
    Ok(resp)
}

fn spec(job_id: &str, command: &[&str]) -> JobSpec {
    JobSpec {
        job_id: job_id.into(),
        attempt: 1,
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::new(),
        workdir: None,
        timeout_secs: 60,
        output_limit_bytes: 1 << 20,
        cancel_grace_secs: 1,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

fn identity_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Identity::generate_key().expect("key");
    // A registered runner: its store comes first (the runner refuses an identity
    // without one).
    drop(fyn_runner::runtime::store::Store::open(dir.path()).expect("store"));
    Identity::save(dir.path(), "r-scripted", &key).expect("identity");
    dir
}

fn finished_count(events: &[RunnerEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, RunnerEvent::JobFinished { .. }))
        .count()
}

#[tokio::test]
async fn slots_full_rejects_a_resent_command_runs_once_and_a_climbing_id_is_refused() {
    let commands = vec![
        ApiCommand::StartJob {
            job: spec("first", &["sleep", "0.3"]),
        },
        ApiCommand::StartJob {
            job: spec("second", &["true"]),
        },
        ApiCommand::StartJob {
            job: spec("../escape", &["true"]),
        },
        ApiCommand::StartJob {
            job: JobSpec {
                env: BTreeMap::from([("A=B".to_owned(), "x".to_owned())]),
                ..spec("bad-env", &["true"])
            },
        },
        ApiCommand::StartJob {
            job: spec("nul-arg", &["echo", "a\0b"]),
        },
    ];
    // The first command is delivered twice under the same index; one slot only.
    let (url, api) = scripted_api(commands, true, |events| finished_count(events) >= 1).await;
    let dir = identity_dir();
    let handle = runtime::start(settings(&url, dir.path(), None, 1)).expect("starts");
    let (events, acks) = tokio::time::timeout(WAIT, api)
        .await
        .expect("in time")
        .expect("api task");

    let started: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, RunnerEvent::JobStarted { .. }))
        .collect();
    assert_eq!(
        started.len(),
        1,
        "the resent command started nothing: {events:?}"
    );
    assert_eq!(
        acks.iter().filter(|i| **i == 1).count(),
        2,
        "a resent index is acknowledged again: {acks:?}"
    );
    let rejected = |id: &str| {
        events.iter().find_map(|e| match e {
            RunnerEvent::JobRejected { job, reason, .. } if job.job_id == id => Some(*reason),
            _ => None,
        })
    };
    assert_eq!(rejected("second"), Some(RejectReason::NoFreeSlot));
    assert_eq!(rejected("../escape"), Some(RejectReason::InvalidSpec));
    // What the OS cannot hold is refused before anything starts, saying why.
    let detail = |id: &str| {
        events.iter().find_map(|e| match e {
            RunnerEvent::JobRejected {
                job,
                reason: RejectReason::InvalidSpec,
                detail,
            } if job.job_id == id => Some(detail.clone()),
            _ => None,
        })
    };
    assert!(detail("bad-env").is_some_and(|d| d.contains("env name \"A=B\"")));
    assert!(detail("nul-arg").is_some_and(|d| d.contains("command[1]")));
    assert!(!dir.path().join("escape-1").exists() && !dir.path().join("jobs/../escape-1").exists());
    handle.shutdown();
    let _ = tokio::time::timeout(WAIT, handle.wait()).await;
}

// ---------------------------------------------------------------- the real binary

/// The runner binary, killed when dropped: a test that fails half way leaves no runner
/// behind.
struct Runner(Child);

impl std::ops::Deref for Runner {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Runner {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_runner(url: &str, dir: &Path, token: Option<&str>) -> Runner {
    spawn_runner_with(url, dir, token, &[])
}

fn spawn_runner_with(url: &str, dir: &Path, token: Option<&str>, flags: &[&str]) -> Runner {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
    command
        .args(["run", "--server", url, "--slots", "2"])
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

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The pid the runner reported in the job's `job_started` event.
fn started_pid(server: &DevServer, job: &JobInfo) -> i32 {
    let runner_id = job.runner.as_deref().expect("assigned");
    server
        .events(runner_id)
        .expect("events")
        .iter()
        .filter(|e| e.kind == "job_started" && e.body["job"]["job_id"] == job.id.as_str())
        .find_map(|e| e.body["pid"].as_i64())
        .and_then(|pid| i32::try_from(pid).ok())
        .expect("a job_started event with the pid")
}

/// The real binary runs a long job, and the machine loses it: the runner and the job's
/// supervisor are killed with SIGKILL (the kernel then kills the job's main process,
/// while a child of the job, in its process group, lives on). The job ID, and the pid
/// of that child.
async fn kill_9_mid_job(server: &DevServer, dir: &Path, token: &str) -> (String, i32) {
    let mut runner = spawn_runner(&server.url(), dir, Some(token));
    let id = server
        .submit_job(request(&["sh", "-c", "sleep 300 & echo $!; wait"], 600))
        .expect("submit");
    let job = until_job(server, &id, |j| j.stdout_bytes > 0).await;
    let main = started_pid(server, &job);
    let child: i32 = output(server, &id, OutputStream::Stdout)
        .trim()
        .parse()
        .expect("the child's pid");
    runner.kill().expect("kill -9");
    let _ = runner.wait();
    let supervisor = parent_of(main).expect("the job has its supervisor");
    // SAFETY: kill(2) with the pid of the job's supervisor, read from /proc just now.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGKILL) }, 0);
    (id, child)
}

/// The parent of a process, from /proc.
fn parent_of(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Until the orphaned job process `pid` is gone (killed by the next start).
async fn until_gone(pid: i32) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the orphaned job process {pid} was not killed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Neither the runner nor the job's supervisor is there any more (tests/reattach.rs
/// covers a runner whose jobs' supervisors live on): the next start reports the job
/// lost, once, and kills what is left of it.
#[tokio::test]
async fn a_job_whose_runner_and_supervisor_died_is_reported_lost_once_and_leaves_no_process() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let (id, pid) = kill_9_mid_job(&server, dir.path(), &token).await;
    assert!(
        alive(pid),
        "a process of the job's group outlives its supervisor until the next start"
    );

    let mut runner = spawn_runner(&server.url(), dir.path(), None);
    let job = finished(&server, &id).await;
    assert_eq!(job.outcome, Some(JobOutcome::Lost));
    until_gone(pid).await;
    let runner_id = job.runner.clone().expect("assigned");
    let finishes = server
        .events(&runner_id)
        .expect("events")
        .iter()
        .filter(|e| format!("{e:?}").contains("job_finished"))
        .count();
    assert_eq!(finishes, 1, "reported exactly once");
    runner.kill().expect("stop");
    let _ = runner.wait();
    server.shutdown().await;
}

/// Until `done` holds of the job folders, or the wait runs out.
async fn until_folders(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A folder as a job leaves it, whose output was last written `hours_ago`.
fn ended_job_folder(jobs: &Path, name: &str, hours_ago: u64) -> std::path::PathBuf {
    let folder = jobs.join(name);
    std::fs::create_dir_all(folder.join("work")).expect("folder");
    let written = std::time::SystemTime::now() - Duration::from_secs(hours_ago * 3600);
    for log in ["stdout.log", "stderr.log"] {
        let file = std::fs::File::create(folder.join(log)).expect("log");
        file.set_modified(written).expect("log time");
    }
    folder
}

/// The runner's children: what it started and has not let go of.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`: the name may hold spaces, the last ')' ends it.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// A runner that cannot reach its API has no job to start: it makes no spare job
/// folder and no spare supervisor (a fleet starting at once, or one waiting out an
/// outage, would otherwise pay for a thousand of them). The spare comes once Active
/// (the retention test below finds it after a job).
#[tokio::test]
async fn a_runner_not_yet_active_makes_no_spare() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs = dir.path().join("jobs");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}", closed.local_addr().expect("address"));
    drop(closed);
    let runner = spawn_runner(&url, dir.path(), Some("fyn_rt_unreachable"));
    until_folders("the runner's preflight did not run", || {
        jobs.join(".supervisors").is_dir()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spares = std::fs::read_dir(&jobs)
        .expect("jobs folder")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".spare-"))
        .count();
    assert_eq!(spares, 0, "no spare job folder before Active");
    assert_eq!(
        children_of(runner.0.id()),
        Vec::<u32>::new(),
        "no spare supervisor before Active"
    );
}

/// However long the term, no more than `--job-retention-max` ended jobs' folders are
/// kept: the oldest go first, the newest stay.
#[tokio::test]
async fn no_more_ended_folders_are_kept_than_the_cap() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs = dir.path().join("jobs");
    let token = server.mint_token().expect("token");
    let cap = ["--job-retention-max", "2"];
    let _runner = spawn_runner_with(&server.url(), dir.path(), Some(&token), &cap);
    let mut folders = Vec::new();
    for n in 0..5 {
        let id = server
            .submit_job(request(&["sh", "-c", &format!("echo {n}")], 60))
            .expect("submit");
        let job = finished(&server, &id).await;
        assert_eq!(job.outcome, Some(JobOutcome::Succeeded));
        folders.push(jobs.join(format!("{id}-{}", job.attempt)));
    }
    let (gone, kept) = folders.split_at(3);
    until_folders("the oldest ended folders were not removed", || {
        gone.iter().all(|folder| !folder.exists())
    })
    .await;
    assert!(kept.iter().all(|folder| folder.join("stdout.log").exists()));
}

#[tokio::test]
async fn ended_jobs_folders_go_when_their_term_is_up_and_a_start_sweeps_old_ones() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let jobs = dir.path().join("jobs");
    let token = server.mint_token().expect("token");
    let keep_nothing = ["--job-retention-hours", "0"];
    let mut runner = spawn_runner_with(&server.url(), dir.path(), Some(&token), &keep_nothing);
    let id = server
        .submit_job(request(&["sh", "-c", "echo result > out.txt"], 60))
        .expect("submit");
    let job = finished(&server, &id).await;
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded));
    let folder = jobs.join(format!("{id}-{}", job.attempt));
    until_folders("the ended job's folder was not removed", || {
        !folder.exists()
    })
    .await;
    let spare_kept = std::fs::read_dir(&jobs)
        .expect("jobs folder")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".spare-"));
    assert!(spare_kept, "the spare folder is not an ended job's");
    runner.kill().expect("stop");
    let _ = runner.wait();

    // What a run that kept folders longer left behind, judged at the next start with
    // the default term of a week.
    let old = ended_job_folder(&jobs, "old-job-1", 200);
    let recent = ended_job_folder(&jobs, "recent-job-1", 2);
    let mut runner = spawn_runner(&server.url(), dir.path(), None);
    until_folders("a folder past its term was not removed at start", || {
        !old.exists()
    })
    .await;
    // Had the young one been taken for expired, it would have gone in the same batch:
    // a job's round trip later, that batch is long done.
    let later = server.submit_job(request(&["true"], 60)).expect("submit");
    finished(&server, &later).await;
    assert!(
        recent.join("stdout.log").exists(),
        "a folder within its term was removed"
    );
    runner.kill().expect("stop");
    let _ = runner.wait();
    server.shutdown().await;
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn two_hundred_mib_of_output_arrive_byte_for_byte_in_bounded_memory() {
    const SIZE: usize = 200 << 20;
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut runner = spawn_runner(&server.url(), dir.path(), Some(&token));
    let mut big = request(
        &["sh", "-c", &format!("yes 0123456789abcde | head -c {SIZE}")],
        600,
    );
    big.output_limit_bytes = Some(1 << 30);
    let id = server.submit_job(big).expect("submit");
    let started = Instant::now();
    until_job(&server, &id, |j| j.state == JobState::Running).await;
    // Then poll the runner's free slots, not the job: the job's view carries its output.
    let deadline = started + Duration::from_secs(600);
    while server
        .runners()
        .expect("runners")
        .first()
        .is_none_or(|r| r.slots_free < r.slots || !r.connected)
    {
        assert!(
            Instant::now() < deadline,
            "200 MiB job did not finish in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let job = server.job(&id).expect("query").expect("the job");
    let peak = vm_hwm_kib(runner.id());
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded));
    assert_eq!(job.stdout_bytes, SIZE as u64);
    let stdout = server
        .output_bytes(&id, OutputStream::Stdout)
        .expect("the output");
    assert!(
        stdout.len() == SIZE,
        "every byte arrived ({} of {SIZE})",
        stdout.len()
    );
    let line = b"0123456789abcde\n";
    assert!(
        stdout.chunks(line.len()).all(|c| line.starts_with(c)),
        "and in order"
    );
    assert!(
        peak < 64 * 1024,
        "runner peak RSS {peak} KiB for 200 MiB of output"
    );
    eprintln!("200 MiB through the API in {elapsed:?}; runner peak RSS {peak} KiB");
    runner.kill().expect("stop");
    let _ = runner.wait();
    server.shutdown().await;
}
