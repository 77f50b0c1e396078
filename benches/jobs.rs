//! Job figures on the real binary against the in-process dev-server:
//! - dispatch latency: job submitted at the dev-server → `job_started` stored there,
//!   p50 and p99 over 1,000 jobs running `true`;
//! - the floor for that: a bare tokio-tungstenite client that spawns `true` on each
//!   `start_job` and replies `job_started`, through a dev-server of its own and timed
//!   the same way; the same client doing the durable records and job directory the
//!   issue requires ("floor with duties"); and a raw floor with no control plane at
//!   all (send → reply received);
//! - output throughput for a 1 GiB job against a floor and a floor with duties, and
//!   the runner's peak resident memory (`jobs/output.rs`);
//! - concurrent starts: 8 slots against the floor with duties with 8 in flight, and
//!   one slot (`jobs/starts.rs`);
//! - idle memory in Active beside an idle `node` (`jobs/idle.rs`).
//!
//! `cargo bench --bench jobs` (`JOBS_BENCH_COUNT` and `JOBS_BENCH_ROUNDS` for the
//! dispatch latency, `FYN_BENCH_OUTPUT_BYTES` for the output, `FYN_BENCH_JOBS` for
//! the concurrent starts, `FYN_BENCH_SECTIONS` to run only some of
//! `latency,output,starts,idle`, `JOBS_BENCH_RUNNER` to measure another build's
//! binary, `JOBS_BENCH_BASELINE` to time another build's binary beside this one's: in
//! the latency's interleaved rounds, and after it in the output section). Sections
//! that load the file system are 30 s apart: see `pause_between_fs_heavy_runs`.
#![allow(clippy::disallowed_methods)] // measuring time is what this does

#[path = "jobs/idle.rs"]
mod idle;
#[path = "jobs/output.rs"]
mod output;
#[path = "jobs/starts.rs"]
mod starts;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use fyn_runner::devserver::{DevServer, DevServerConfig, JobRequest, JobState};
use fyn_runner::protocol::{
    Command as ServerCommand, ExitStatus, JobOutcome, RunnerEvent, RunnerMessage, SUBPROTOCOL,
    ServerMessage, auth_message, decode_server, encode,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The runner measured: this build's, or `JOBS_BENCH_RUNNER` (another build's binary,
/// to compare two versions against the same floors in one run).
fn spawn_runner(url: &str, dir: &std::path::Path, token: &str, slots: u32) -> Child {
    let binary = std::env::var_os("JOBS_BENCH_RUNNER")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_fyn-runner").into());
    spawn_runner_binary(&binary, url, dir, token, slots)
}

/// `binary` as a runner of `slots` slots, connected to the dev-server at `url`.
fn spawn_runner_binary(
    binary: &std::ffi::OsStr,
    url: &str,
    dir: &std::path::Path,
    token: &str,
    slots: u32,
) -> Child {
    Command::new(binary)
        .args(["run", "--server", url, "--token", token])
        .args(["--slots", &slots.to_string()])
        .arg("--state-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the fyn-runner binary starts")
}

fn request(command: &[&str]) -> JobRequest {
    JobRequest {
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::new(),
        workdir: None,
        timeout_secs: 600,
        output_limit_bytes: Some(2 << 30),
        cancel_grace_secs: Some(1),
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A `/proc/<pid>/status` figure in KiB (`VmHWM`: peak resident; `VmRSS`: now).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Looks at the job each time the dev-server stored an event, rather than polling:
/// a poll loop would take one of the two cores from the runner, the dev-server and
/// the job itself, and most from whoever has the most to do at a job's start.
async fn dispatch_latency(server: &DevServer, count: usize) -> Vec<Duration> {
    let mut stored = server.events_stored();
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        stored.borrow_and_update();
        let submitted = Instant::now();
        let id = server.submit_job(request(&["true"])).expect("submit");
        loop {
            stored.changed().await.expect("the dev-server runs");
            let job = server.job(&id).expect("query").expect("job");
            if !matches!(
                job.state,
                JobState::Queued | JobState::Assigned | JobState::Accepted
            ) {
                samples.push(submitted.elapsed());
                break;
            }
        }
        // Let the job finish before the next, so one job at a time is measured.
        while server
            .job(&id)
            .expect("query")
            .expect("job")
            .outcome
            .is_none()
        {
            stored.changed().await.expect("the dev-server runs");
        }
    }
    samples
}

/// The floor through the dev-server: a bare tokio-tungstenite client that speaks just
/// enough of the protocol to be handed jobs (register, authenticate, ready) and then, on
/// each `start_job`, spawns `true` and replies `job_started` — no store, no trace, no
/// job directory, no checks. Timed exactly as the runner is (`dispatch_latency`), on a
/// dev-server of its own, so the ratio measures what the runner adds and nothing else.
/// Like the runner, it is a process of its own on a current-thread runtime (this bench
/// binary, started again in client mode): run inside the bench, its blocking spawns
/// would hold up whatever dev-server task shared their worker thread, which the
/// runner's spawns never can.
async fn bare_runner_on_its_own_server(
    duties: Option<&std::path::Path>,
    slots: u32,
) -> (DevServer, Child) {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let token = server.mint_token().expect("token");
    let mut command = Command::new(std::env::current_exe().expect("the bench binary"));
    command
        .env(CLIENT_URL, server.runner_url())
        .env(CLIENT_TOKEN, token)
        .env(CLIENT_SLOTS, slots.to_string())
        .stdout(Stdio::null());
    if let Some(dir) = duties {
        command.env(CLIENT_DUTIES_DIR, dir);
    }
    let client = command.spawn().expect("the bare client starts");
    until_ready(&server).await;
    (server, client)
}

/// Client mode: what `bare_runner_on_its_own_server` starts this binary with.
const CLIENT_URL: &str = "JOBS_BENCH_CLIENT_URL";
const CLIENT_TOKEN: &str = "JOBS_BENCH_CLIENT_TOKEN";
const CLIENT_DUTIES_DIR: &str = "JOBS_BENCH_CLIENT_DUTIES_DIR";
const CLIENT_SLOTS: &str = "JOBS_BENCH_CLIENT_SLOTS";

/// `docs/architecture.md`: ext4 here does not reuse inodes freed in the last 30 s, so a
/// run right after one that removed thousands of files finds every creation slower.
async fn pause_between_fs_heavy_runs() {
    tokio::time::sleep(Duration::from_secs(30)).await;
}

/// Until a runner is connected and Active with a free slot.
async fn until_ready(server: &DevServer) {
    while !server
        .runners()
        .expect("runners")
        .iter()
        .any(|r| r.connected && r.slots_free > 0)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Socket, message: &RunnerMessage) {
    ws.send(Message::text(encode(message))).await.expect("send");
}

async fn recv(ws: &mut Socket) -> ServerMessage {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return decode_server(text.as_str()).expect("the server's frame decodes");
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("the bare runner's socket ended: {other:?}"),
        }
    }
}

/// What the issue asks of any runner before it may say `job_started`, done the plainest
/// way: the command and `job_accepted` recorded durably before the process starts
/// (SQLite, WAL, `synchronous=FULL`), the job's own directory with its `work/` and two
/// log files, the process started there, `job_accepted` sent, and `job_started`
/// recorded before it is sent (committed without waiting for the disk, as fyn-runner
/// does: see `runtime/store/mod.rs` for why that is safe). The
/// "floor with duties" is the bare client doing exactly this and nothing more: what
/// fyn-runner costs beyond it is overhead of its own making.
struct Duties {
    root: std::path::PathBuf,
    db: rusqlite::Connection,
    /// The `synchronous` level set now: changed only when it must, as the runner does.
    waits_for_disk: std::cell::Cell<bool>,
}

impl Duties {
    fn new(root: &std::path::Path) -> Self {
        let db = rusqlite::Connection::open(root.join("floor.db")).expect("db");
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE log (idx INTEGER PRIMARY KEY, body TEXT NOT NULL);",
        )
        .expect("schema");
        Self {
            root: root.to_path_buf(),
            db,
            waits_for_disk: std::cell::Cell::new(true),
        }
    }

    fn record(&self, body: &str, wait_for_disk: bool) {
        if self.waits_for_disk.replace(wait_for_disk) != wait_for_disk {
            let level = if wait_for_disk { "FULL" } else { "NORMAL" };
            self.db
                .pragma_update(None, "synchronous", level)
                .expect("synchronous");
        }
        self.db
            .execute("INSERT INTO log (body) VALUES (?1)", [body])
            .expect("insert");
    }

    fn prepare(&self, job_id: &str) -> std::path::PathBuf {
        let dir = self.root.join(job_id);
        let work = dir.join("work");
        std::fs::create_dir_all(&work).expect("job dir");
        for log in ["stdout.log", "stderr.log"] {
            std::fs::File::create(dir.join(log)).expect("log file");
        }
        work
    }
}

/// What the durability the issue requires costs by itself: one commit that waits for
/// the disk, as the acceptance of a job must be before its process starts (a command
/// recorded as applied, then a power cut, must not start the job again). On a disk
/// where this alone is more than the target's allowance over the floor, no runner that
/// keeps that promise can meet the target there.
fn durable_commit_latency(duties: &Duties, count: usize) -> Vec<Duration> {
    (0..count)
        .map(|i| {
            let started = Instant::now();
            duties.record(&format!("{{\"commit\":{i}}}"), true);
            started.elapsed()
        })
        .collect()
}

/// The least a runner can be: handshake, then spawn-and-reply per `start_job` (with
/// `duties`, also the durable records and the job directory).
async fn bare_runner(url: String, token: String, duties: Option<Duties>, slots: u32) {
    let mut request = url.into_client_request().expect("runner URL");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let ServerMessage::Hello { nonce, .. } = recv(&mut ws).await else {
        panic!("expected hello");
    };
    send(&mut ws, &RunnerMessage::ValidateToken { token }).await;
    recv(&mut ws).await;
    let key = SigningKey::from_bytes(&[7u8; 32]);
    send(
        &mut ws,
        &RunnerMessage::Register {
            public_key: STANDARD.encode(key.verifying_key().to_bytes()),
            name: "bare".to_owned(),
            version: "0".to_owned(),
            slots,
        },
    )
    .await;
    let ServerMessage::Registered { runner_id } = recv(&mut ws).await else {
        panic!("expected registered");
    };
    let signature = key.sign(&auth_message(&nonce, &runner_id));
    let authenticate = RunnerMessage::Authenticate {
        runner_id,
        signature: STANDARD.encode(signature.to_bytes()),
        name: "bare".to_owned(),
        version: "0".to_owned(),
        slots,
        last_command_index: 0,
    };
    send(&mut ws, &authenticate).await;
    recv(&mut ws).await;
    let startup = RunnerMessage::Startup {
        version: "0".to_owned(),
        jobs: Vec::new(),
    };
    send(&mut ws, &startup).await;
    recv(&mut ws).await;
    let hardware = RunnerMessage::HardwareFull {
        report: Box::new(hardware_report(1)),
    };
    send(&mut ws, &hardware).await;
    recv(&mut ws).await;
    send(&mut ws, &RunnerMessage::Ready { slots_free: slots }).await;
    recv(&mut ws).await;

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut index = 0;
    // Idle while the other contenders' rounds run: heartbeats keep the session open.
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                seq += 1;
                send(&mut ws, &RunnerMessage::Heartbeat { seq, jobs_running: 0 }).await;
            }
            message = recv(&mut ws) => {
                let ServerMessage::Command { command: ServerCommand::StartJob { job }, .. } = message
                else {
                    continue;
                };
                let job_ref = job.job_ref();
                let mut command = tokio::process::Command::new("true");
                let mut accepted = None;
                if let Some(duties) = &duties {
                    index += 1;
                    let event = RunnerEvent::JobAccepted { job: job_ref.clone() };
                    let message = RunnerMessage::Event { index, event: event.into() };
                    duties.record(&encode(&message), true);
                    accepted = Some(message);
                    command.current_dir(duties.prepare(&job.job_id));
                }
                let mut child = command.spawn().expect("spawn");
                let pid = child.id().unwrap_or(0);
                if let Some(message) = accepted {
                    send(&mut ws, &message).await;
                }
                index += 1;
                let job = job_ref;
                let event = RunnerEvent::JobStarted { job: job.clone(), pid };
                if let Some(duties) = &duties {
                    let started = RunnerMessage::Event { index, event: event.clone().into() };
                    duties.record(&encode(&started), false);
                }
                send(&mut ws, &RunnerMessage::Event { index, event: event.into() }).await;
                let done = done_tx.clone();
                tokio::spawn(async move {
                    let status = child.wait().await.expect("wait");
                    let _ = done.send((job, status.code().unwrap_or(-1)));
                });
            }
            Some((job, code)) = done_rx.recv() => {
                index += 1;
                let event = RunnerEvent::JobFinished {
                    job,
                    outcome: if code == 0 { JobOutcome::Succeeded } else { JobOutcome::Failed },
                    status: ExitStatus::Exited { code },
                    duration_ms: 0,
                    stdout_bytes: 0,
                    stderr_bytes: 0,
                    detail: None,
                    cpu_user_ms: None,
                    cpu_system_ms: None,
                    peak_rss_bytes: None,
                    wall_ms: None,
                    gpu_memory_peak_bytes: None,
                };
                send(&mut ws, &RunnerMessage::Event { index, event: event.into() }).await;
            }
        }
    }
}

/// The raw floor: receive a frame, spawn `true`, answer — over a loopback WebSocket with
/// no control plane at all. Stricter than the floor above: it also leaves out the
/// dev-server's own work (its SQLite store, assignment, the admin query).
async fn floor_latency(count: usize) -> Vec<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
            .await
            .expect("connect");
        while let Some(Ok(Message::Text(text))) = ws.next().await {
            let child = tokio::process::Command::new("true").spawn().expect("spawn");
            let _pid = child.id();
            ws.send(Message::text(text.to_string()))
                .await
                .expect("reply");
            tokio::spawn(async move {
                let mut child = child;
                let _ = child.wait().await;
            });
        }
    });
    let (tcp, _) = listener.accept().await.expect("accept");
    let mut server = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let sent = Instant::now();
        server
            .send(Message::text(format!("{{\"job\":{i}}}")))
            .await
            .expect("send");
        let _ = server.next().await;
        samples.push(sent.elapsed());
    }
    drop(server);
    client.abort();
    samples
}

fn main() {
    let client = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    if let (Ok(url), Ok(token)) = (std::env::var(CLIENT_URL), std::env::var(CLIENT_TOKEN)) {
        let duties =
            std::env::var_os(CLIENT_DUTIES_DIR).map(|dir| Duties::new(std::path::Path::new(&dir)));
        let slots = env_or(CLIENT_SLOTS, 4) as u32;
        client().block_on(bare_runner(url, token, duties, slots));
        return;
    }
    if let Ok(url) = std::env::var(output::CLIENT_URL) {
        client().block_on(output::floor_client(url));
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench());
}

/// Whether `FYN_BENCH_SECTIONS` (all when unset) names `section`.
fn wanted(section: &str) -> bool {
    std::env::var("FYN_BENCH_SECTIONS")
        .map(|list| list.split(',').any(|s| s.trim() == section))
        .unwrap_or(true)
}

async fn bench() {
    println!(
        "(figures are ratios within this run: the machine is shared, and absolute figures \
         move from run to run)"
    );
    let mut first = true;
    let mut next_section = async || {
        if !std::mem::replace(&mut first, false) {
            pause_between_fs_heavy_runs().await;
        }
    };
    if wanted("latency") {
        next_section().await;
        latency().await;
    }
    if wanted("output") {
        next_section().await;
        let bytes = env_or(
            "FYN_BENCH_OUTPUT_BYTES",
            env_or("JOBS_BENCH_BYTES", 1 << 30),
        );
        output::section(bytes).await;
    }
    if wanted("starts") {
        next_section().await;
        starts::section(env_or("FYN_BENCH_JOBS", 1000)).await;
    }
    if wanted("idle") {
        next_section().await;
        idle::section().await;
    }
}

async fn latency() {
    let count = env_or("JOBS_BENCH_COUNT", 1000);
    let rounds = env_or("JOBS_BENCH_ROUNDS", 100).clamp(1, count);
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut runner = spawn_runner(
        &server.url(),
        dir.path(),
        &server.mint_token().expect("token"),
        4,
    );
    until_ready(&server).await;
    let (bare_server, bare) = bare_runner_on_its_own_server(None, 4).await;
    let duty_dir = tempfile::tempdir().expect("tempdir");
    let (duty_server, duty) = bare_runner_on_its_own_server(Some(duty_dir.path()), 4).await;
    let baseline = match std::env::var_os("JOBS_BENCH_BASELINE") {
        Some(binary) => Some(Baseline::start(&binary).await),
        None => None,
    };

    // Interleaved rounds, so that a slow spell of the machine (a shared VM) falls on
    // every contender alike rather than on whichever ran then.
    let (mut ours, mut floor, mut with_duties, mut raw) = (vec![], vec![], vec![], vec![]);
    let mut theirs = vec![];
    // In the runner's state folder's file system (both are temporary folders).
    let commit_dir = tempfile::tempdir().expect("tempdir");
    let commits = Duties::new(commit_dir.path());
    let mut durable = vec![];
    let per_round = count / rounds;
    for round in 0..rounds {
        // Whoever goes first in a round follows the last round's synced commits, which
        // cost it a little: this build and the baseline take turns at it.
        let baseline_first = round % 2 == 1;
        if let Some(baseline) = baseline.as_ref().filter(|_| baseline_first) {
            theirs.extend(dispatch_latency(&baseline.server, per_round).await);
        }
        ours.extend(dispatch_latency(&server, per_round).await);
        if let Some(baseline) = baseline.as_ref().filter(|_| !baseline_first) {
            theirs.extend(dispatch_latency(&baseline.server, per_round).await);
        }
        floor.extend(dispatch_latency(&bare_server, per_round).await);
        with_duties.extend(dispatch_latency(&duty_server, per_round).await);
        raw.extend(floor_latency(per_round).await);
        durable.extend(durable_commit_latency(&commits, per_round));
    }
    for samples in [
        &mut ours,
        &mut floor,
        &mut with_duties,
        &mut raw,
        &mut durable,
        &mut theirs,
    ] {
        samples.sort();
    }
    for mut client in [bare, duty] {
        let _ = client.kill();
        let _ = client.wait();
    }
    bare_server.shutdown().await;
    duty_server.shutdown().await;
    let count = per_round * rounds;
    println!(
        "runner after {count} jobs: resident {:.1} MiB, peak {:.1} MiB",
        status_kib(runner.id(), "VmRSS") as f64 / 1024.0,
        status_kib(runner.id(), "VmHWM") as f64 / 1024.0
    );
    let (p50, p99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));
    println!(
        "dispatch latency ({count} jobs of `true` each, in {rounds} interleaved rounds; \
         submitted -> job_started at the dev-server)"
    );
    println!("  fyn-runner:                              p50 {p50:?}, p99 {p99:?}");
    let baseline_name = baseline
        .as_ref()
        .map(|b| format!("baseline: {}", b.binary.to_string_lossy()));
    let contenders = baseline_name.iter().map(|name| (name.as_str(), &theirs));
    for (name, floor) in contenders.chain([
        ("floor: bare client via the dev-server", &floor),
        ("floor with the issue's duties", &with_duties),
        ("raw floor: bare client, bare server", &raw),
    ]) {
        let (f50, f99) = (percentile(floor, 0.5), percentile(floor, 0.99));
        println!(
            "  {name:<40} p50 {f50:?}, p99 {f99:?}; fyn-runner is p50 {:.2}x, p99 {:.2}x",
            p50.as_secs_f64() / f50.as_secs_f64(),
            p99.as_secs_f64() / f99.as_secs_f64()
        );
    }
    let allowance = percentile(&floor, 0.5).mul_f64(0.3);
    println!(
        "  one durable commit alone (SQLite WAL, synchronous=FULL): p50 {:?}, p99 {:?}; \
         the 1.3x target allows {allowance:?} over the floor's p50",
        percentile(&durable, 0.5),
        percentile(&durable, 0.99)
    );

    let _ = runner.kill();
    let _ = runner.wait();
    server.shutdown().await;
    if let Some(baseline) = baseline {
        baseline.stop().await;
    }
}

/// Another build's runner (`JOBS_BENCH_BASELINE`), on a dev-server and in a state
/// folder of its own, timed in the same interleaved rounds as this build's (the two
/// taking turns at going first): the one comparison between two versions that a slow
/// spell of the machine falls on alike.
struct Baseline {
    binary: std::ffi::OsString,
    server: DevServer,
    runner: Child,
    _dir: tempfile::TempDir,
}

impl Baseline {
    async fn start(binary: &std::ffi::OsStr) -> Self {
        let server = DevServer::start(DevServerConfig::ephemeral())
            .await
            .expect("dev-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let token = server.mint_token().expect("token");
        let runner = spawn_runner_binary(binary, &server.url(), dir.path(), &token, 4);
        until_ready(&server).await;
        Self {
            binary: binary.to_owned(),
            server,
            runner,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.runner.kill();
        let _ = self.runner.wait();
        self.server.shutdown().await;
    }
}

/// A small but complete hardware record, `cores` logical cores.
fn hardware_report(cores: u32) -> fyn_runner::protocol::HardwareReport {
    serde_json::from_value(serde_json::json!({
        "os": {"name": "Linux", "kernel": "6.8.0", "arch": "x86_64", "hostname": "test"},
        "cpu": {"model": "Test CPU", "vendor": "GenuineIntel", "logical_cores": cores},
        "memory": {"total_bytes": 1u64 << 30},
        "job_disk": {"mount_point": "/", "total_bytes": 1u64 << 40, "available_bytes": 1u64 << 39},
        "gpus": {"kind": "none"}
    }))
    .expect("a valid hardware record")
}
