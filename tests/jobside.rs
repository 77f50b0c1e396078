//! A job's side end to end (issue 19): the real runtime against the dev-server, on
//! loopback. Inputs fetched before the process starts (one shared by two jobs fetched
//! once: the cache hit is in the log); a wrong checksum fails the job with no process
//! started; outputs uploaded after it ended, each reported once, before its end;
//! accounting on `job_finished`.
// Unix only: its jobs are `sh` scripts.
#![cfg(unix)]
#![allow(clippy::disallowed_methods)] // waiting in real time is what these tests do

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fyn_runner::core::CoreConfig;
use fyn_runner::devserver::{
    DevServer, DevServerConfig, InputRequest, JobInfo, JobRequest, JobState, OutputRequest,
};
use fyn_runner::protocol::{JobOutcome, OutputStream, SessionParams};
use fyn_runner::runtime::{self, RunnerHandle, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(30);

/// Every log line of this test process (the runtime logs through `tracing`).
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("fyn_runner=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
}

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    log()
        .lock()
        .map(|log| String::from_utf8_lossy(&log).into_owned())
        .unwrap_or_default()
}

async fn dev_server(blob_dir: &Path) -> DevServer {
    let mut config = DevServerConfig::ephemeral();
    config.session = SessionParams {
        heartbeat_interval_ms: 1_000,
        ack_timeout_ms: 500,
        runner_lost_threshold_ms: 30_000,
    };
    config.blob_dir = Some(blob_dir.to_path_buf());
    DevServer::start(config).await.expect("dev-server")
}

fn settings(url: &str, dir: &Path, token: String) -> RunnerSettings {
    RunnerSettings {
        token: Some(Secret::new(token)),
        name: "jobside-runner".into(),
        core: CoreConfig {
            slots: 4,
            ..CoreConfig::default()
        },
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        input_cache_max_bytes: 1 << 30,
        ..RunnerSettings::new(
            runtime::settings::endpoint(url, false).expect("url"),
            dir.to_path_buf(),
        )
    }
}

async fn runner(server: &DevServer, dir: &Path) -> RunnerHandle {
    let mut handle = runtime::start(settings(
        &server.url(),
        dir,
        server.mint_token().expect("token"),
    ))
    .expect("starts");
    let status = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("in time");
    assert_eq!(status.state, "Active", "{status:?}");
    handle
}

async fn stop(handle: RunnerHandle) {
    handle.shutdown();
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops");
}

fn request(script: &str) -> JobRequest {
    JobRequest {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        workdir: None,
        timeout_secs: 60,
        output_limit_bytes: None,
        cancel_grace_secs: Some(1),
        inputs: Vec::new(),
        outputs: Vec::new(),
        kv: BTreeMap::new(),
    }
}

fn input(sha256: &str, path: &str) -> InputRequest {
    InputRequest {
        sha256: sha256.into(),
        path: path.into(),
        executable: false,
    }
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

fn stdout(server: &DevServer, id: &str) -> String {
    let bytes = server
        .output_bytes(id, OutputStream::Stdout)
        .expect("the output");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The events the runner sent about a job, in order: kind and body.
fn job_events(server: &DevServer, id: &str) -> Vec<(String, serde_json::Value)> {
    let runners = server.runners().expect("runners");
    runners
        .iter()
        .flat_map(|runner| server.events(&runner.id).expect("events"))
        .filter(|record| record.body["job"]["job_id"] == id)
        .map(|record| (record.kind, record.body))
        .collect()
}

fn kinds(events: &[(String, serde_json::Value)]) -> Vec<&str> {
    events.iter().map(|(kind, _)| kind.as_str()).collect()
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn inputs_are_in_place_before_the_process_starts_and_fetched_once() {
    log();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(&dir.path().join("blobs")).await;
    let mesh = server
        .store_blob(b"mesh bytes\n".to_vec())
        .await
        .expect("blob");
    let case = server
        .store_blob(b"case bytes\n".to_vec())
        .await
        .expect("blob");
    let handle = runner(&server, &dir.path().join("state")).await;

    let mut first = request("cat mesh.dat setup/case.dat");
    first.inputs = vec![input(&mesh, "mesh.dat"), input(&case, "setup/case.dat")];
    let first = server.submit_job(first).expect("submit");
    let job = finished(&server, &first).await;
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
    assert_eq!(stdout(&server, &first), "mesh bytes\ncase bytes\n");

    // The same mesh for a second job: taken from the cache, not fetched again.
    let mut second = request("cat again.dat");
    second.inputs = vec![input(&mesh, "again.dat")];
    let second = server.submit_job(second).expect("submit");
    let job = finished(&server, &second).await;
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
    assert_eq!(stdout(&server, &second), "mesh bytes\n");
    let log = log_text();
    let fetched = log
        .lines()
        .filter(|l| l.contains("input fetched") && l.contains(&mesh))
        .count();
    let hits = log
        .lines()
        .filter(|l| l.contains("input found in the cache") && l.contains(&mesh))
        .count();
    assert_eq!((fetched, hits), (1, 1), "{log}");

    // The API saw the phase, between acceptance and the start.
    let events = job_events(&server, &second);
    assert_eq!(
        kinds(&events),
        [
            "job_accepted",
            "job_phase",
            "job_started",
            "job_output",
            "job_finished"
        ],
    );
    assert_eq!(events[1].1["phase"], "fetching");
    stop(handle).await;
}

#[tokio::test]
async fn a_wrong_checksum_fails_the_job_before_any_process_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs");
    let server = dev_server(&blobs).await;
    let mesh = server
        .store_blob(b"the real mesh\n".to_vec())
        .await
        .expect("blob");
    // The store's copy goes bad: same size, other bytes.
    for file in files_below(&blobs) {
        if std::fs::read(&file).is_ok_and(|bytes| bytes == b"the real mesh\n") {
            std::fs::write(&file, b"a false mesh\n!").expect("corrupt");
        }
    }
    let state = dir.path().join("state");
    let handle = runner(&server, &state).await;
    let mut job = request("touch started");
    job.inputs = vec![input(&mesh, "mesh.dat")];
    let id = server.submit_job(job).expect("submit");
    let job = finished(&server, &id).await;
    assert_eq!(job.outcome, Some(JobOutcome::Failed), "{job:?}");
    assert_ne!(job.state, JobState::Running);
    let detail = job.detail.unwrap_or_default();
    assert!(
        detail.contains("mesh.dat") && detail.contains("not started"),
        "{detail}"
    );
    let events = job_events(&server, &id);
    assert_eq!(
        kinds(&events),
        ["job_accepted", "job_phase", "job_finished"]
    );
    let started = files_below(&dir.path().join("state-jobs"))
        .iter()
        .any(|f| f.ends_with("started"));
    assert!(!started, "no process ran");
    stop(handle).await;
}

#[tokio::test]
async fn job_finished_carries_cpu_time_and_peak_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(&dir.path().join("blobs")).await;
    let handle = runner(&server, &dir.path().join("state")).await;
    // Busy for a while in user mode, in a child the shell waits for.
    let id = server
        .submit_job(request(
            "sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done'",
        ))
        .expect("submit");
    let job = finished(&server, &id).await;
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
    let usage = job.usage.expect("accounting on job_finished");
    let user = usage.cpu_user_ms.expect("cpu_user_ms");
    let system = usage.cpu_system_ms.expect("cpu_system_ms");
    let rss = usage.peak_rss_bytes.expect("peak_rss_bytes");
    let duration = job.duration_ms.expect("duration");
    assert!(user >= 50, "a busy loop shows user time: {usage:?}");
    assert!(
        user + system <= duration + 50,
        "one process cannot use more CPU than the time it ran: {usage:?}, {duration} ms"
    );
    assert!(
        (100 << 10..1 << 30).contains(&rss),
        "a shell's peak memory: {rss} bytes"
    );
    // The wall time spans the job from its acceptance: at least its running phase.
    let wall = usage.wall_ms.expect("wall_ms");
    assert!(
        (duration..duration + 5_000).contains(&wall),
        "wall {wall} ms, running {duration} ms"
    );
    stop(handle).await;
}

#[tokio::test]
async fn outputs_are_uploaded_once_before_the_job_finishes() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(&dir.path().join("blobs")).await;
    let handle = runner(&server, &dir.path().join("state")).await;
    let mut job =
        request("printf 'x,y\\n1,2\\n' > result.csv; mkdir -p plots; echo p > plots/a.txt; exit 3");
    job.outputs = vec![
        OutputRequest {
            path: Some("result.csv".into()),
            glob: None,
        },
        OutputRequest {
            path: None,
            glob: Some("plots/*.txt".into()),
        },
        OutputRequest {
            path: Some("never-written.dat".into()),
            glob: None,
        },
    ];
    let id = server.submit_job(job).expect("submit");
    let job = finished(&server, &id).await;
    // The outputs do not change how the process ended.
    assert_eq!(job.outcome, Some(JobOutcome::Failed), "{job:?}");
    let results = server.job_results(&id).expect("results");
    assert!(results.complete, "{results:?}");
    assert_eq!(results.missing, ["never-written.dat"]);
    let csv = results
        .files
        .iter()
        .find(|f| f.path == "result.csv")
        .expect("result.csv");
    let expected = fyn_runner::protocol::to_hex(&Sha256::digest(b"x,y\n1,2\n"));
    assert_eq!(
        csv.sha256.as_deref(),
        Some(expected.as_str()),
        "{results:?}"
    );
    assert!(csv.reported && csv.failure.is_none(), "{results:?}");
    assert_eq!(
        server.result_bytes(&id, "result.csv").expect("bytes"),
        b"x,y\n1,2\n"
    );
    assert!(
        results
            .files
            .iter()
            .any(|f| f.path == "plots/a.txt" && f.reported)
    );
    // Each file reported once, the summary, then the end.
    let events = job_events(&server, &id);
    let kinds = kinds(&events);
    let tail: Vec<&str> = kinds.iter().rev().take(5).rev().copied().collect();
    assert_eq!(
        tail,
        [
            "job_phase",
            "job_output_file",
            "job_output_file",
            "job_outputs",
            "job_finished"
        ],
        "{kinds:?}"
    );
    let summary = &events[events.len() - 2].1;
    assert_eq!(summary["uploaded"], 2);
    assert_eq!(summary["failed"], 0);
    // Its wall time includes the uploads, after the process's end.
    let end = &events[events.len() - 1].1;
    let (wall, ran) = (end["wall_ms"].as_u64(), end["duration_ms"].as_u64());
    assert!(
        wall.zip(ran).is_some_and(|(wall, ran)| wall >= ran),
        "{end}"
    );
    assert_eq!(events[events.len() - 5].1["phase"], "uploading");
    stop(handle).await;
}

#[tokio::test]
async fn progress_and_key_value_writes_reach_the_api_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(&dir.path().join("blobs")).await;
    let handle = runner(&server, &dir.path().join("state")).await;
    let mut job = request(
        "test -S \"$FYN_JOB_SOCKET\" || exit 9; \
         \"$FYN\" job kv put step 1; \"$FYN\" job kv put step 2; \"$FYN\" job kv put other x; \
         test \"$(\"$FYN\" job kv get seed)\" = planted || exit 8; \
         i=0; while [ $i -lt 50 ]; do i=$((i+1)); \"$FYN\" job progress 0.$i \"iteration $i\"; done; \
         \"$FYN\" job progress 1 done",
    );
    job.env
        .insert("FYN".into(), env!("CARGO_BIN_EXE_fyn-runner").into());
    job.kv.insert("seed".into(), "planted".into());
    let id = server.submit_job(job).expect("submit");
    let job = finished(&server, &id).await;
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
    // The writes are applied in order (2 after 1).
    assert_eq!(job.kv.get("step").map(String::as_str), Some("2"));
    assert_eq!(job.kv.get("other").map(String::as_str), Some("x"));
    let events = job_events(&server, &id);
    let puts: Vec<String> = events
        .iter()
        .filter(|(kind, _)| kind == "job_kv_put")
        .map(|(_, body)| {
            format!(
                "{}={}",
                body["key"].as_str().unwrap_or(""),
                body["value"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(puts, ["step=1", "step=2", "other=x"]);
    // Coalesced: far fewer progress events than reports, the last one last.
    let progress_events = events
        .iter()
        .filter(|(kind, _)| kind == "job_progress")
        .count();
    assert!(
        (1..51).contains(&progress_events),
        "{progress_events}: {:?}",
        kinds(&events)
    );
    let last_progress = events
        .iter()
        .rev()
        .find(|(kind, _)| kind == "job_progress")
        .map(|(_, body)| body["message"].clone());
    assert_eq!(last_progress, Some(serde_json::json!("done")));
    stop(handle).await;
}

/// Short jobs end with their output and their exit taken together (the exit joining
/// the output's group): each job's socket still closes at its end, and what the job
/// said just before it ended arrives before its `job_finished`. (Before, the exit
/// taken with a group left the socket open and its file behind: one file descriptor
/// and a few KiB per job, for the runner's life.)
#[tokio::test]
async fn every_short_job_closes_its_socket_and_delivers_its_last_word() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dev_server(&dir.path().join("blobs")).await;
    let state = dir.path().join("state");
    let handle = runner(&server, &state).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut job = request(&format!("\"$FYN\" job progress 1 last-{i}; echo out-{i}"));
        job.env
            .insert("FYN".into(), env!("CARGO_BIN_EXE_fyn-runner").into());
        ids.push((i, server.submit_job(job).expect("submit")));
    }
    for (i, id) in &ids {
        let job = finished(&server, id).await;
        assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
        let events = job_events(&server, id);
        let progress = events.iter().position(|(kind, body)| {
            kind == "job_progress" && body["message"] == format!("last-{i}")
        });
        let end = events.iter().position(|(kind, _)| kind == "job_finished");
        assert!(
            matches!((progress, end), (Some(p), Some(e)) if p < e),
            "job {i}: {:?}",
            kinds(&events)
        );
    }
    // A spare job folder's socket is the next job's, listened on already.
    let spare = |path: &Path| {
        path.components()
            .any(|part| part.as_os_str().to_string_lossy().starts_with(".spare-"))
    };
    let sockets: Vec<PathBuf> = files_below(&state.join("jobs"))
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|name| name == "job.sock"))
        .filter(|path| !spare(path))
        .collect();
    assert_eq!(sockets, Vec::<PathBuf>::new(), "sockets left by ended jobs");
    stop(handle).await;
}
