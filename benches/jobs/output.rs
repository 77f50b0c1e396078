//! Output throughput: fyn-runner against a floor measured in the same run.
//!
//! The floor is a bare tokio-tungstenite client (this bench binary in client mode, a
//! process of its own on a current-thread runtime, as the runner is) that starts the
//! same job (`head -c BYTES /dev/zero`), reads its pipe into a buffer of the runner's
//! chunk size (`CHUNK_BYTES`), encodes each chunk as the protocol does (a `job_output`
//! event, base64 in JSON) and sends it; and a bare server that decodes each frame as
//! the dev-server does and stores it durably the way the dev-server does (SQLite in
//! WAL mode at its default `synchronous`, one transaction per event: the event's log
//! row and the decoded bytes). "With duties" adds the runner's one promise about
//! output to the client: each event is in its own SQLite outbox (WAL,
//! `synchronous=FULL`) before it is sent.
//!
//! fyn-runner's figure is the same job through the real binary and a dev-server that
//! stores to a file (`DevServerConfig::db`), submit to slot free again.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use fyn_runner::devserver::{DevServer, DevServerConfig, JobState};
use fyn_runner::protocol::{
    JobRef, MAX_FRAME_BYTES, OutputStream, RunnerEvent, RunnerMessage, decode_runner, encode,
};
use fyn_runner::runtime::jobs::CHUNK_BYTES;

use super::{Duties, request, spawn_runner, spawn_runner_binary, status_kib, until_ready};

/// Client mode: the floor's client, started by `floor_throughput`.
pub const CLIENT_URL: &str = "JOBS_BENCH_OUTPUT_CLIENT_URL";
const CLIENT_BYTES: &str = "JOBS_BENCH_OUTPUT_CLIENT_BYTES";
const CLIENT_DUTIES_DIR: &str = "JOBS_BENCH_OUTPUT_CLIENT_DUTIES_DIR";

/// The floor's client: the job's pipe, in chunks, to the server.
pub async fn floor_client(url: String) {
    let bytes: u64 = std::env::var(CLIENT_BYTES)
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("the byte count");
    let duties = std::env::var_os(CLIENT_DUTIES_DIR).map(|dir| Duties::new(Path::new(&dir)));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let mut child = tokio::process::Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut pipe = child.stdout.take().expect("stdout");
    let mut buf = vec![0u8; CHUNK_BYTES];
    let job = JobRef {
        job_id: "floor".to_owned(),
        attempt: 1,
    };
    let (mut offset, mut index) = (0u64, 0u64);
    loop {
        // A pipe gives at most its capacity per read: fill the chunk as the runner's
        // reader of the log does, up to the end of the output.
        let mut filled = 0;
        while filled < buf.len() {
            match pipe.read(&mut buf[filled..]).await.expect("read") {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        index += 1;
        let message = RunnerMessage::Event {
            index,
            event: RunnerEvent::JobOutput {
                job: job.clone(),
                stream: OutputStream::Stdout,
                offset,
                data: STANDARD.encode(&buf[..filled]),
            }
            .into(),
        };
        let text = encode(&message);
        if let Some(duties) = &duties {
            duties.record(&text, true);
        }
        ws.send(Message::text(text)).await.expect("send");
        offset += filled as u64;
    }
    let _ = child.wait().await;
    let _ = ws.close(None).await;
}

/// The floor's server: every `job_output` decoded and stored as the dev-server does.
async fn floor_server(db: &Path) -> (String, watch::Receiver<u64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let conn = rusqlite::Connection::open(db).expect("db");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE events (idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL);
         CREATE TABLE job_output (job_id TEXT NOT NULL, stream TEXT NOT NULL,
             pos INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (job_id, stream, pos));",
    )
    .expect("schema");
    let (stored_tx, stored) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut conn = conn;
        let (tcp, _) = listener.accept().await.expect("accept");
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(config))
            .await
            .expect("upgrade");
        let mut total = 0u64;
        while let Some(Ok(Message::Text(text))) = ws.next().await {
            let Ok(RunnerMessage::Event { index, event }) = decode_runner(text.as_str()) else {
                panic!("the floor's client sends job_output events only");
            };
            let RunnerEvent::JobOutput {
                job,
                stream,
                offset,
                data,
            } = std::sync::Arc::unwrap_or_clone(event)
            else {
                panic!("the floor's client sends job_output events only");
            };
            let bytes = STANDARD.decode(&data).expect("base64");
            let body = serde_json::json!({
                "kind": "job_output", "job": job, "stream": stream, "offset": offset,
                "data_bytes": bytes.len(),
            });
            let tx = conn.transaction().expect("begin");
            tx.prepare_cached("INSERT INTO events (idx, kind, body) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| {
                    s.execute(rusqlite::params![
                        index as i64,
                        "job_output",
                        body.to_string()
                    ])
                })
                .expect("event row");
            tx.prepare_cached(
                "INSERT OR REPLACE INTO job_output (job_id, stream, pos, data) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(rusqlite::params![job.job_id, "stdout", offset as i64, bytes]))
            .expect("output row");
            tx.commit().expect("commit");
            total += bytes.len() as u64;
            stored_tx.send_replace(total);
        }
    });
    (url, stored)
}

/// Seconds for the floor to take `bytes` from the job's pipe into the server's store.
async fn floor_throughput(bytes: usize, duties: bool) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, mut stored) = floor_server(&dir.path().join("floor-server.db")).await;
    let started = Instant::now();
    let mut command = Command::new(std::env::current_exe().expect("the bench binary"));
    command
        .env(CLIENT_URL, url)
        .env(CLIENT_BYTES, bytes.to_string())
        .stdout(Stdio::null());
    let client_dir = tempfile::tempdir().expect("tempdir");
    if duties {
        command.env(CLIENT_DUTIES_DIR, client_dir.path());
    }
    let mut client = command.spawn().expect("the floor's client starts");
    stored
        .wait_for(|stored| *stored >= bytes as u64)
        .await
        .expect("the floor's server runs");
    let elapsed = started.elapsed().as_secs_f64();
    let _ = client.wait();
    elapsed
}

/// Seconds for fyn-runner (this build's, or `binary`) to bring `bytes` of one job's
/// output into a dev-server that stores to a file, and the runner's peak resident
/// memory (KiB).
async fn runner_throughput(bytes: usize, binary: Option<&std::ffi::OsStr>) -> (f64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = DevServerConfig {
        db: Some(dir.path().join("dev.db")),
        ..DevServerConfig::ephemeral()
    };
    let server = DevServer::start(config).await.expect("dev-server");
    let state = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut runner = match binary {
        Some(binary) => spawn_runner_binary(binary, &server.url(), state.path(), &token, 4),
        None => spawn_runner(&server.url(), state.path(), &token, 4),
    };
    until_ready(&server).await;
    let started = Instant::now();
    let id = server
        .submit_job(request(&[
            "sh",
            "-c",
            &format!("head -c {bytes} /dev/zero"),
        ]))
        .expect("submit");
    // Polled, not awaited per stored event: a query for each of thousands of events
    // would take CPU from the runner and the dev-server.
    let job = loop {
        let job = server.job(&id).expect("query").expect("job");
        if job.outcome.is_some() && !matches!(job.state, JobState::Queued | JobState::Assigned) {
            break job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    let peak = status_kib(runner.id(), "VmHWM");
    assert_eq!(
        job.stdout_bytes, bytes as u64,
        "the dev-server holds the whole output"
    );
    let _ = runner.kill();
    let _ = runner.wait();
    server.shutdown().await;
    (elapsed, peak)
}

/// The section of `cargo bench --bench jobs`: floor, floor with duties, fyn-runner.
pub async fn section(bytes: usize) {
    let mib = bytes >> 20;
    println!(
        "output throughput ({mib} MiB of one job's stdout, chunks of {} KiB; job start -> all \
         bytes stored durably at the server)",
        CHUNK_BYTES >> 10
    );
    let floor = floor_throughput(bytes, false).await;
    super::pause_between_fs_heavy_runs().await;
    let with_duties = floor_throughput(bytes, true).await;
    super::pause_between_fs_heavy_runs().await;
    let (ours, peak) = runner_throughput(bytes, None).await;
    // Another build's runner (`JOBS_BENCH_BASELINE`), the same job in the same run.
    let baseline = match std::env::var_os("JOBS_BENCH_BASELINE") {
        Some(binary) => {
            super::pause_between_fs_heavy_runs().await;
            let (secs, _) = runner_throughput(bytes, Some(&binary)).await;
            Some((binary, secs))
        }
        None => None,
    };
    let rate = |secs: f64| bytes as f64 / secs / 1e6;
    println!(
        "  floor: bare client, bare durable server   {:7.1} MB/s ({floor:.1} s)",
        rate(floor)
    );
    println!(
        "  floor with an outbox commit per event     {:7.1} MB/s ({with_duties:.1} s)",
        rate(with_duties)
    );
    println!(
        "  fyn-runner                                {:7.1} MB/s ({ours:.1} s); {:.2}x the floor, \
         {:.2}x the floor with duties; runner peak RSS {:.1} MiB",
        rate(ours),
        floor / ours,
        with_duties / ours,
        peak as f64 / 1024.0
    );
    if let Some((binary, theirs)) = baseline {
        println!(
            "  baseline: {:<30} {:7.1} MB/s ({theirs:.1} s); fyn-runner is {:.2}x its rate",
            binary.to_string_lossy(),
            rate(theirs),
            theirs / ours
        );
    }
}
