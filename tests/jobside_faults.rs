//! A job's side under faults (issue 19), end to end on the real binary against the
//! reference control plane, with every byte between them through a relay this test
//! controls: the WebSocket session and the result uploads alike, as one network path.
//!
//! - the link cut while a result is half uploaded: the upload is tried again and the
//!   result arrives once, complete, and the job finishes once;
//! - the runner killed (SIGKILL) while a result is half uploaded and started again: the
//!   same;
//! - a thousand progress reports in a second and a run of key-value writes while the
//!   link is down: after the reconnect the API holds the last progress and every write
//!   in order, a handful of progress events were sent, and the runner's memory stayed
//!   bounded.
// Unix only: its jobs are `sh` scripts talking to a Unix socket; /proc for memory.
#![cfg(unix)]
#![allow(clippy::disallowed_methods)] // waiting on real processes is what this does

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use fyn_runner::devserver::{DevServer, DevServerConfig, JobInfo, JobRequest, OutputRequest};
use fyn_runner::protocol::{JobOutcome, SessionParams, to_hex};
use fyn_runner::runtime::job_endpoint::wire::{Answer, Request};

const WAIT: Duration = Duration::from_secs(60);
/// The result file's size: large enough that an upload is caught half way.
const RESULT_BYTES: usize = 8 << 20;
/// Bytes of an upload the relay passes on before it holds the rest.
const HOLD_AFTER: u64 = 1 << 20;

/// A TCP relay between the runner and the dev-server that can cut every connection,
/// refuse new ones (the link down), and hold an upload half way.
#[derive(Default)]
struct RelayState {
    down: AtomicBool,
    /// Armed: the next upload is held once this many of its bytes passed.
    hold_upload_after: Mutex<Option<u64>>,
    /// An upload is being held.
    upload_held: AtomicBool,
    /// Uploads (`PUT /blobs/...` requests) that began through the relay.
    uploads_begun: AtomicU32,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

struct Relay {
    addr: SocketAddr,
    state: Arc<RelayState>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Relays what `listener` accepts to `upstream`.
    fn start(listener: TcpListener, upstream: SocketAddr) -> Self {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(RelayState::default());
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(relay_one(client, upstream, shared.clone()));
                if let Ok(mut connections) = shared.connections.lock() {
                    connections.retain(|t| !t.is_finished());
                    connections.push(task);
                }
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    fn hold_next_upload(&self) {
        *self.state.hold_upload_after.lock().expect("lock") = Some(HOLD_AFTER);
    }

    async fn until_upload_held(&self, runner_state: &Path) {
        let deadline = Instant::now() + WAIT;
        while !self.state.upload_held.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "no upload reached the relay; the runner's log:\n{}",
                runner_log(runner_state)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The link goes down: every connection cut, new ones closed at once.
    fn cut(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        for task in self.state.connections.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.state.down.store(false, Ordering::SeqCst);
    }

    fn uploads_begun(&self) -> u32 {
        self.state.uploads_begun.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn relay_one(client: TcpStream, upstream: SocketAddr, state: Arc<RelayState>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    // Dropped with this task when the relay cuts: the other direction goes too.
    let _answers = AbortOnDrop(answers);
    let uploaded = AtomicU64::new(0);
    let mut in_upload = false;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let bytes = &buffer[..n];
        if bytes.windows(11).any(|w| w == b"PUT /blobs/") {
            in_upload = true;
            state.uploads_begun.fetch_add(1, Ordering::SeqCst);
        }
        if in_upload {
            let so_far = uploaded.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            let hold = {
                let mut armed = state.hold_upload_after.lock().expect("lock");
                let hold = armed.is_some_and(|after| so_far >= after);
                if hold {
                    *armed = None;
                }
                hold
            };
            if hold {
                state.upload_held.store(true, Ordering::SeqCst);
                // Held until the relay cuts it.
                std::future::pending::<()>().await;
            }
        }
        if server_write.write_all(bytes).await.is_err() {
            break;
        }
    }
    let _ = server_write.shutdown().await;
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn dev_server(public_url: Option<String>) -> DevServer {
    let mut config = DevServerConfig::ephemeral();
    config.session = SessionParams {
        heartbeat_interval_ms: 1_000,
        ack_timeout_ms: 500,
        runner_lost_threshold_ms: 60_000,
    };
    config.public_url = public_url;
    DevServer::start(config).await.expect("dev-server")
}

/// The dev-server and, in front of it, the relay its blob URLs name: the runner
/// reaches both the session and the uploads through the relay.
async fn network() -> (DevServer, Relay) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let relay_addr = listener.local_addr().expect("addr");
    let server = dev_server(Some(format!("http://{relay_addr}"))).await;
    let relay = Relay::start(listener, server.local_addr());
    (server, relay)
}

/// The runner binary, killed when dropped: a test that fails half way leaves no runner.
struct Runner(Child);

impl Runner {
    fn spawn(url: &str, dir: &Path, token: Option<&str>) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
        command
            .args(["run", "--server", url, "--slots", "2", "--state-dir"])
            .arg(dir)
            .env("RUST_LOG", "fyn_runner=info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        Self(command.spawn().expect("the binary starts"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

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

fn runner_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
}

fn shell(script: &str) -> JobRequest {
    JobRequest {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        workdir: None,
        timeout_secs: 120,
        output_limit_bytes: None,
        cancel_grace_secs: Some(1),
        inputs: Vec::new(),
        outputs: Vec::new(),
        kv: BTreeMap::new(),
    }
}

/// A job that writes `RESULT_BYTES` of a known pattern to `result.bin`, declared as
/// its output; and the SHA-256 of those bytes.
fn job_with_a_result() -> (JobRequest, String) {
    const LINE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde";
    let copies = RESULT_BYTES / (LINE.len() + 1);
    let mut job = shell(&format!("yes '{LINE}' | head -n {copies} > result.bin"));
    job.outputs = vec![OutputRequest {
        path: Some("result.bin".into()),
        glob: None,
    }];
    let expected = format!("{LINE}\n").repeat(copies);
    (job, to_hex(&Sha256::digest(expected.as_bytes())))
}

async fn until_job(
    server: &DevServer,
    id: &str,
    dir: &Path,
    done: impl Fn(&JobInfo) -> bool,
) -> JobInfo {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = server.job(id).expect("query").expect("the job exists");
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} stuck in {:?}; the runner's log:\n{}",
            job.state,
            runner_log(dir)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The job's events of one kind, as the API stored them, in order.
fn events_of(server: &DevServer, job: &JobInfo, kind: &str) -> Vec<serde_json::Value> {
    let runner = job.runner.as_deref().expect("assigned");
    server
        .events(runner)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == kind && e.body["job"]["job_id"] == job.id.as_str())
        .map(|e| e.body)
        .collect()
}

/// The result arrived once, whole, and the job ended once, as its process did.
fn assert_result_once(server: &DevServer, job: &JobInfo, sha256: &str) {
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
    let results = server.job_results(&job.id).expect("results");
    assert!(results.complete, "{results:?}");
    assert!(results.missing.is_empty(), "{results:?}");
    let [file] = results.files.as_slice() else {
        panic!("one result file: {results:?}");
    };
    assert_eq!(file.path, "result.bin");
    assert_eq!(file.sha256.as_deref(), Some(sha256), "{results:?}");
    assert_eq!(file.size, Some(RESULT_BYTES as u64));
    assert!(file.reported && file.failure.is_none(), "{results:?}");
    let stored = server.result_bytes(&job.id, "result.bin").expect("bytes");
    assert_eq!(to_hex(&Sha256::digest(&stored)), sha256);
    assert_eq!(events_of(server, job, "job_output_file").len(), 1);
    assert_eq!(events_of(server, job, "job_outputs").len(), 1);
    assert_eq!(events_of(server, job, "job_finished").len(), 1);
}

#[tokio::test]
async fn a_link_cut_during_an_upload_delivers_the_result_once() {
    let (server, relay) = network().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let token = server.mint_token().expect("token");
    let _runner = Runner::spawn(&relay.ws_url(), &state, Some(&token));
    relay.hold_next_upload();
    let (job, sha256) = job_with_a_result();
    let id = server.submit_job(job).expect("submit");

    relay.until_upload_held(&state).await;
    let runner_id = server.job(&id).expect("query").expect("job").runner;
    relay.cut();
    tokio::time::sleep(Duration::from_millis(700)).await;
    relay.restore();

    let job = until_job(&server, &id, &state, |j| j.outcome.is_some()).await;
    assert_eq!(job.runner, runner_id);
    assert!(
        relay.uploads_begun() >= 2,
        "the upload was begun {} times",
        relay.uploads_begun()
    );
    assert_result_once(&server, &job, &sha256);
}

#[tokio::test]
async fn a_runner_killed_during_an_upload_delivers_the_result_once_after_its_restart() {
    let (server, relay) = network().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let token = server.mint_token().expect("token");
    let mut runner = Runner::spawn(&relay.ws_url(), &state, Some(&token));
    relay.hold_next_upload();
    let (job, sha256) = job_with_a_result();
    let id = server.submit_job(job).expect("submit");

    relay.until_upload_held(&state).await;
    runner.kill_9();
    relay.cut();
    relay.restore();
    let _runner = Runner::spawn(&relay.ws_url(), &state, None);

    let job = until_job(&server, &id, &state, |j| j.outcome.is_some()).await;
    assert!(
        relay.uploads_begun() >= 2,
        "the upload was begun {} times",
        relay.uploads_begun()
    );
    assert_result_once(&server, &job, &sha256);
}

/// Peak resident memory of a process, from /proc (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .expect("VmHWM")
}

/// One connection to a job's socket: many requests, each answered before the next.
struct JobSocket {
    reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl JobSocket {
    async fn connect(path: &Path) -> Self {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .expect("the job's socket");
        let (read, writer) = stream.into_split();
        Self {
            reader: tokio::io::BufReader::new(read),
            writer,
        }
    }

    async fn ask(&mut self, request: &Request) -> Answer {
        use tokio::io::AsyncBufReadExt;
        let mut line = serde_json::to_string(request).expect("json");
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await.expect("send");
        let mut answer = String::new();
        self.reader.read_line(&mut answer).await.expect("answer");
        serde_json::from_str(&answer).expect("an answer")
    }
}

async fn until_file(path: &Path) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text.trim_end().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn progress_and_writes_while_the_link_is_down_arrive_after_it_in_order() {
    let (server, relay) = network().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let token = server.mint_token().expect("token");
    let runner = Runner::spawn(&relay.ws_url(), &state, Some(&token));
    // The job names its socket, then waits for the test to say it is done talking.
    let socket_file = dir.path().join("socket-path");
    let go = dir.path().join("go");
    let written = dir.path().join("written");
    let mut job = shell(
        "echo \"$FYN_JOB_SOCKET\" > \"$SOCKET_FILE\"; \
         while [ ! -e \"$GO\" ]; do sleep 0.01; done; \
         i=0; while [ $i -lt 20 ]; do i=$((i+1)); \"$FYN\" job kv put step $i || exit 7; done; \
         echo > \"$WRITTEN\"",
    );
    job.env
        .insert("FYN".into(), env!("CARGO_BIN_EXE_fyn-runner").into());
    job.env.insert(
        "SOCKET_FILE".into(),
        socket_file.to_string_lossy().into_owned(),
    );
    job.env
        .insert("GO".into(), go.to_string_lossy().into_owned());
    job.env
        .insert("WRITTEN".into(), written.to_string_lossy().into_owned());
    let id = server.submit_job(job).expect("submit");
    let socket = PathBuf::from(until_file(&socket_file).await);
    let before = peak_rss(runner.pid());

    relay.cut();
    let mut endpoint = JobSocket::connect(&socket).await;
    let started = Instant::now();
    for i in 1..=1000u32 {
        let answer = endpoint
            .ask(&Request::Progress {
                fraction: Some(f64::from(i) / 1000.0),
                message: Some(format!("iteration {i}")),
            })
            .await;
        assert!(answer.ok, "{answer:?}");
    }
    let burst = started.elapsed();
    assert!(
        burst < Duration::from_secs(5),
        "1,000 reports took {burst:?}"
    );
    for (key, value) in [("mesh", "coarse"), ("mesh", "fine"), ("solver", "gmres")] {
        let answer = endpoint
            .ask(&Request::KvPut {
                key: key.into(),
                value: value.into(),
            })
            .await;
        assert!(answer.ok, "{answer:?}");
    }
    drop(endpoint);
    std::fs::write(&go, b"").expect("go");
    // Each write returns once the runner made it durable, the link down or not.
    until_file(&written).await;
    let job = server.job(&id).expect("query").expect("job");
    let said = job.progress.as_ref().and_then(|p| p.message.clone());
    assert_eq!(said, None, "nothing of it reached the API yet: {job:?}");
    assert!(job.kv.is_empty(), "{job:?}");
    let after = peak_rss(runner.pid());
    relay.restore();

    let job = until_job(&server, &id, &state, |j| j.outcome.is_some()).await;
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
    let progress = job.progress.clone().expect("progress");
    assert_eq!(progress.message.as_deref(), Some("iteration 1000"));
    assert_eq!(progress.fraction, Some(1.0));
    let reports = events_of(&server, &job, "job_progress");
    assert!(
        (1..=10).contains(&reports.len()),
        "{} progress events for 1,000 reports",
        reports.len()
    );
    let writes: Vec<String> = events_of(&server, &job, "job_kv_put")
        .iter()
        .map(|body| {
            format!(
                "{}={}",
                body["key"].as_str().unwrap_or(""),
                body["value"].as_str().unwrap_or("")
            )
        })
        .collect();
    let mut expected = vec![
        "mesh=coarse".to_owned(),
        "mesh=fine".into(),
        "solver=gmres".into(),
    ];
    expected.extend((1..=20).map(|i| format!("step={i}")));
    assert_eq!(writes, expected);
    assert_eq!(job.kv.get("mesh").map(String::as_str), Some("fine"));
    assert_eq!(job.kv.get("step").map(String::as_str), Some("20"));
    // Bounded: the burst cost the runner no more than a few MiB.
    assert!(
        after.saturating_sub(before) < 8 << 20,
        "peak RSS {before} -> {after} bytes over 1,000 reports"
    );
}
