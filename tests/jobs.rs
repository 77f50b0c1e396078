//! The job executor against real processes: exit statuses, output order and offsets,
//! the clean environment, the cancellation ladder, process groups that leave nothing
//! behind, spawn failures, the output limit, and bounded memory under a flood.
// Unix only: its jobs are `sh` scripts and its checks are signals and process groups; `tests/jobs_windows.rs` covers Windows.
#![cfg(unix)]
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fyn_runner::core::Event;
use fyn_runner::protocol::{ExitStatus, JobRef, JobSpec, OutputStream};
use fyn_runner::runtime::jobs::{
    CHUNK_BYTES, Executor, ExecutorError, JobReport, JobSupervisor, OutputChunk, OutputSink,
    ProcessExecutor, SpawnRequest,
};
use tempfile::TempDir;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::{Instant, timeout};

/// How long any one report may take; generous for a loaded CI machine.
const WAIT: Duration = Duration::from_secs(30);

fn spec(id: &str, command: &[&str]) -> JobSpec {
    JobSpec {
        job_id: id.to_owned(),
        attempt: 1,
        command: command.iter().map(|part| (*part).to_owned()).collect(),
        env: BTreeMap::new(),
        workdir: None,
        timeout_secs: 60,
        output_limit_bytes: 1 << 30,
        cancel_grace_secs: 10,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

struct Harness {
    dir: TempDir,
    supervisor: JobSupervisor,
    reports: UnboundedReceiver<JobReport>,
    /// What `spawn` returned, read by `next` before the channel.
    spawned: std::collections::VecDeque<JobReport>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (tx, reports) = unbounded_channel();
        let supervisor = JobSupervisor::new(dir.path().join("jobs"), tx);
        Self {
            dir,
            supervisor,
            reports,
            spawned: std::collections::VecDeque::new(),
        }
    }

    fn spawn(&mut self, spec: &JobSpec) {
        let report = self.supervisor.spawn(spec);
        self.spawned.push_back(report);
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("jobs")
    }

    fn job_dir(&self, spec: &JobSpec) -> PathBuf {
        self.root()
            .join(format!("{}-{}", spec.job_id, spec.attempt))
    }

    async fn next(&mut self) -> JobReport {
        if let Some(report) = self.spawned.pop_front() {
            return report;
        }
        timeout(WAIT, self.reports.recv())
            .await
            .expect("a report in time")
            .expect("the reports channel is open")
    }

    /// The `Started` report of a job just spawned; its pid.
    async fn started(&mut self, job: &JobRef) -> u32 {
        match self.next().await {
            JobReport::Started { job: got, pid } => {
                assert_eq!(&got, job);
                pid
            }
            other => panic!("expected Started, got {other:?}"),
        }
    }

    /// Everything up to and including `Exited`, for a job whose `Started` was read.
    async fn until_exit(&mut self, job: &JobRef) -> Run {
        let mut run = Run::default();
        loop {
            let report = self.next().await;
            assert_eq!(report.job(), job, "a report about another job: {report:?}");
            match report {
                JobReport::Output {
                    stream,
                    offset,
                    data,
                    ..
                } => {
                    assert!(!data.is_empty(), "an empty chunk");
                    assert!(data.len() <= CHUNK_BYTES, "a chunk of {} bytes", data.len());
                    let (bytes, truncated) = run.stream_mut(stream);
                    assert!(truncated.is_none(), "output after Truncated");
                    assert_eq!(offset, bytes.len() as u64, "offsets are contiguous");
                    bytes.extend_from_slice(&data);
                    run.chunks += 1;
                }
                JobReport::Truncated { stream, offset, .. } => {
                    let (bytes, truncated) = run.stream_mut(stream);
                    assert!(truncated.is_none(), "a second Truncated");
                    assert_eq!(offset, bytes.len() as u64);
                    *truncated = Some(offset);
                }
                JobReport::Exited {
                    status,
                    duration_ms,
                    stdout_bytes,
                    stderr_bytes,
                    ..
                } => {
                    run.status = Some(status);
                    run.duration_ms = duration_ms;
                    run.stdout_bytes = stdout_bytes;
                    run.stderr_bytes = stderr_bytes;
                    return run;
                }
                other => panic!("unexpected report {other:?}"),
            }
        }
    }

    async fn run(&mut self, spec: &JobSpec) -> Run {
        let job = spec.job_ref();
        self.spawn(spec);
        self.started(&job).await;
        self.until_exit(&job).await
    }

    async fn spawn_failed(&mut self, spec: &JobSpec) -> String {
        self.spawn(spec);
        match self.next().await {
            JobReport::SpawnFailed { job, error } => {
                assert_eq!(job, spec.job_ref());
                error
            }
            other => panic!("expected SpawnFailed, got {other:?}"),
        }
    }

    /// Read until a chunk of `stream` containing `needle` arrived (the job is ready).
    async fn output_containing(&mut self, stream: OutputStream, needle: &str) -> String {
        let mut text = String::new();
        loop {
            match self.next().await {
                JobReport::Output {
                    stream: got, data, ..
                } if got == stream => {
                    text.push_str(&String::from_utf8_lossy(&data));
                    if text.contains(needle) {
                        return text;
                    }
                }
                JobReport::Output { .. } => {}
                other => panic!("expected output, got {other:?}"),
            }
        }
    }
}

#[derive(Default, Debug)]
struct Run {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_truncated: Option<u64>,
    stderr_truncated: Option<u64>,
    chunks: usize,
    status: Option<ExitStatus>,
    duration_ms: u64,
    stdout_bytes: u64,
    stderr_bytes: u64,
}

impl Run {
    fn stream_mut(&mut self, stream: OutputStream) -> (&mut Vec<u8>, &mut Option<u64>) {
        match stream {
            OutputStream::Stdout => (&mut self.stdout, &mut self.stdout_truncated),
            OutputStream::Stderr => (&mut self.stderr, &mut self.stderr_truncated),
        }
    }

    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Whether `pid` no longer runs. A killed orphan may stay a zombie until init reaps
/// it; a zombie runs no code, so it counts as gone.
fn process_gone(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 sends nothing and reads no memory of this process;
    // it only asks whether `pid` exists. `pid` is a positive process ID.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z" | "X"))
}

/// Poll (briefly, bounded) until `pid` is gone.
async fn assert_gone(pid: i32) {
    let gone = timeout(Duration::from_secs(10), async {
        while !process_gone(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "process {pid} outlived its job");
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a VmRSS line")
}

#[tokio::test]
async fn a_successful_job_reports_started_then_exit_code_zero() {
    let mut h = Harness::new();
    let spec = spec("ok", &["true"]);
    h.spawn(&spec);
    let pid = h.started(&spec.job_ref()).await;
    assert!(pid > 1);
    let run = h.until_exit(&spec.job_ref()).await;
    assert_eq!(run.status, Some(ExitStatus::Exited { code: 0 }));
    assert_eq!((run.stdout_bytes, run.stderr_bytes, run.chunks), (0, 0, 0));
    assert_eq!(h.supervisor.running(), 0);
    assert!(h.job_dir(&spec).join("work").is_dir());
    assert_eq!(
        std::fs::read(h.job_dir(&spec).join("stdout.log")).unwrap(),
        b""
    );
}

#[tokio::test]
async fn a_failing_job_reports_its_exit_code() {
    let mut h = Harness::new();
    let run = h.run(&spec("fail", &["sh", "-c", "exit 3"])).await;
    assert_eq!(run.status, Some(ExitStatus::Exited { code: 3 }));
}

#[tokio::test]
async fn output_arrives_in_order_with_offsets_and_matches_the_log() {
    let mut h = Harness::new();
    let small = spec(
        "printf",
        &[
            "sh",
            "-c",
            "printf 'one'; printf ' two'; printf ' three\\n'",
        ],
    );
    let run = h.run(&small).await;
    assert_eq!(run.stdout_text(), "one two three\n");
    assert_eq!(run.stdout_bytes, 14);

    // Enough to need many chunks: every one of them in order, none over 64 KiB.
    let count = 100_000;
    let big = spec("printf-many", &["sh", "-c", &format!("seq 1 {count}")]);
    let run = h.run(&big).await;
    let expected: String = (1..=count).map(|n| format!("{n}\n")).collect();
    assert_eq!(run.stdout.len(), expected.len());
    assert!(run.stdout == expected.as_bytes(), "the bytes differ");
    assert!(run.chunks >= expected.len() / CHUNK_BYTES);
    assert_eq!(run.stdout_bytes, expected.len() as u64);
    assert_eq!(run.stdout_truncated, None);
    let log = std::fs::read(h.job_dir(&big).join("stdout.log")).unwrap();
    assert!(
        log == expected.as_bytes(),
        "the log differs from the stream"
    );
}

#[tokio::test]
async fn stderr_is_its_own_stream_and_log() {
    let mut h = Harness::new();
    let spec = spec("stderr", &["sh", "-c", "echo out; echo err >&2; exit 1"]);
    let run = h.run(&spec).await;
    assert_eq!(run.stdout, b"out\n");
    assert_eq!(run.stderr, b"err\n");
    assert_eq!((run.stdout_bytes, run.stderr_bytes), (4, 4));
    assert_eq!(run.status, Some(ExitStatus::Exited { code: 1 }));
    let dir = h.job_dir(&spec);
    assert_eq!(std::fs::read(dir.join("stdout.log")).unwrap(), b"out\n");
    assert_eq!(std::fs::read(dir.join("stderr.log")).unwrap(), b"err\n");
}

#[tokio::test]
async fn the_environment_is_clean_and_holds_the_declared_variables() {
    // SAFETY: set_var is unsafe because another thread could read the environment
    // through libc meanwhile. Everything in this test binary reads it through std
    // (`std::env`, `Command`), which serialises with set_var; and the value is the
    // runner's secret that must not reach jobs, which is what this test checks.
    unsafe { std::env::set_var("FYN_RUNNER_TOKEN", "secret") };
    let mut h = Harness::new();
    let mut spec = spec("env", &["env"]);
    spec.attempt = 2;
    spec.env = BTreeMap::from([
        ("GREETING".to_owned(), "hello world".to_owned()),
        ("LANG".to_owned(), "de_DE.UTF-8".to_owned()),
        // The runner's word on which job this is wins.
        ("FYN_JOB_ID".to_owned(), "spoofed".to_owned()),
    ]);
    let run = h.run(&spec).await;
    assert_eq!(run.status, Some(ExitStatus::Exited { code: 0 }));
    let text = run.stdout_text();
    assert!(
        !text.contains("secret"),
        "the runner's token leaked:\n{text}"
    );
    let vars: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let names: BTreeSet<&str> = vars.keys().copied().collect();
    let expected: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "FYN_JOB_ID",
        "FYN_JOB_ATTEMPT",
        "FYN_JOB_SOCKET",
        "GREETING",
    ]
    .into();
    assert_eq!(names, expected, "the job's environment:\n{text}");
    assert!(
        vars["FYN_JOB_SOCKET"].ends_with("/env-2/job.sock"),
        "{text}"
    );
    assert_eq!(vars["GREETING"], "hello world");
    assert_eq!(vars["LANG"], "de_DE.UTF-8");
    assert_eq!(vars["LC_ALL"], "C.UTF-8");
    assert_eq!(vars["FYN_JOB_ID"], "env");
    assert_eq!(vars["FYN_JOB_ATTEMPT"], "2");
    assert_eq!(Path::new(vars["HOME"]), h.job_dir(&spec));
    assert!(!vars["PATH"].is_empty());
}

#[tokio::test]
async fn a_job_starts_in_its_workdir_below_work() {
    let mut h = Harness::new();
    let mut spec = spec("workdir", &["sh", "-c", "pwd -P"]);
    spec.workdir = Some("sub/dir".into());
    let run = h.run(&spec).await;
    let expected = std::fs::canonicalize(h.job_dir(&spec).join("work/sub/dir")).unwrap();
    assert_eq!(run.stdout_text().trim_end(), expected.to_str().unwrap());
}

#[tokio::test]
async fn cancel_sends_sigterm_to_the_group() {
    let mut h = Harness::new();
    let spec = spec("cancel", &["sleep", "100"]);
    h.spawn(&spec);
    h.started(&spec.job_ref()).await;
    assert_eq!(h.supervisor.running(), 1);
    h.supervisor
        .cancel(&spec.job_ref(), "cancelled", Duration::from_secs(20));
    let run = h.until_exit(&spec.job_ref()).await;
    assert_eq!(
        run.status,
        Some(ExitStatus::Signaled {
            signal: libc::SIGTERM
        })
    );
    assert!(run.duration_ms < 20_000, "SIGTERM alone ended it");
    assert_eq!(h.supervisor.running(), 0);
}

#[tokio::test]
async fn cancel_reaches_the_jobs_children() {
    let mut h = Harness::new();
    let spec = spec("cancel-tree", &["sh", "-c", "sleep 1000 & echo $!; wait"]);
    h.spawn(&spec);
    h.started(&spec.job_ref()).await;
    let child: i32 = h
        .output_containing(OutputStream::Stdout, "\n")
        .await
        .trim()
        .parse()
        .expect("the child's pid");
    h.supervisor
        .cancel(&spec.job_ref(), "cancelled", Duration::from_secs(20));
    let run = h.until_exit(&spec.job_ref()).await;
    assert_eq!(
        run.status,
        Some(ExitStatus::Signaled {
            signal: libc::SIGTERM
        })
    );
    assert_gone(child).await;
}

#[tokio::test]
async fn a_job_ignoring_sigterm_is_killed_after_the_grace() {
    let mut h = Harness::new();
    let spec = spec(
        "stubborn",
        &["sh", "-c", "trap '' TERM; echo ready; sleep 100"],
    );
    h.spawn(&spec);
    h.started(&spec.job_ref()).await;
    // Once it printed, the trap is set.
    h.output_containing(OutputStream::Stdout, "ready").await;
    let grace = Duration::from_millis(300);
    let cancelled = Instant::now();
    h.supervisor.cancel(&spec.job_ref(), "cancelled", grace);
    let run = h.until_exit(&spec.job_ref()).await;
    assert_eq!(
        run.status,
        Some(ExitStatus::Signaled {
            signal: libc::SIGKILL
        })
    );
    assert!(
        cancelled.elapsed() >= grace,
        "killed before the grace ran out"
    );
}

#[tokio::test]
async fn no_child_outlives_its_job() {
    let mut h = Harness::new();
    // The background sleep keeps stdout open; the job still ends, and so does it.
    let run = h
        .run(&spec("orphan", &["sh", "-c", "sleep 1000 & echo $!"]))
        .await;
    assert_eq!(run.status, Some(ExitStatus::Exited { code: 0 }));
    let child: i32 = run.stdout_text().trim().parse().expect("the child's pid");
    assert_gone(child).await;
}

#[tokio::test]
async fn a_missing_program_is_a_spawn_failure() {
    let mut h = Harness::new();
    let error = h
        .spawn_failed(&spec("missing", &["fyn-no-such-program"]))
        .await;
    assert!(error.contains("fyn-no-such-program"), "{error}");
    let error = h
        .spawn_failed(&spec("missing-path", &["/nonexistent/fyn-program"]))
        .await;
    assert!(error.contains("/nonexistent/fyn-program"), "{error}");
    assert_eq!(h.supervisor.running(), 0);
    assert!(h.reports.try_recv().is_err(), "nothing follows SpawnFailed");
}

/// The runner looks the program up itself (so it can use `posix_spawn`); it must find
/// what `execvp` in the job's environment would have found.
#[tokio::test]
async fn the_program_is_found_as_execvp_would_find_it() {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::new();
    let tools = h.dir.path().join("tools");
    let (first, second) = (tools.join("first"), tools.join("second"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    let script = |dir: &Path, text: &str, mode: u32| {
        let path = dir.join("fyn-tool");
        std::fs::write(&path, format!("#!/bin/sh\necho {text} \"$0\" \"$@\"\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // Not executable in the first directory: skipped, as execvp skips it.
    script(&first, "first", 0o644);
    script(&second, "second", 0o755);

    // argv[0] stays as the job wrote it.
    let run = h.run(&spec("argv0", &["cat", "/proc/self/cmdline"])).await;
    assert_eq!(run.stdout_text(), "cat\0/proc/self/cmdline\0");

    // The job's own PATH is searched, in order. (A script's `$0` is the path the
    // kernel ran, with execvp as here.)
    let mut own_path = spec("own-path", &["fyn-tool", "arg"]);
    let search = format!("{}:{}:/usr/bin:/bin", first.display(), second.display());
    own_path.env = BTreeMap::from([("PATH".to_owned(), search)]);
    let run = h.run(&own_path).await;
    assert_eq!(run.status, Some(ExitStatus::Exited { code: 0 }));
    assert_eq!(
        run.stdout_text(),
        format!("second {} arg\n", second.join("fyn-tool").display())
    );

    // An empty entry and a relative one are taken from where the job starts.
    let mut relative = spec("relative-path", &["fyn-tool"]);
    relative.workdir = Some("bin".into());
    relative.env = BTreeMap::from([("PATH".to_owned(), "/nonexistent::/usr/bin:/bin".to_owned())]);
    let dir = h.job_dir(&relative).join("work/bin");
    std::fs::create_dir_all(&dir).unwrap();
    script(&dir, "workdir", 0o755);
    let run = h.run(&relative).await;
    assert_eq!(
        run.stdout_text(),
        format!("workdir {}\n", dir.join("fyn-tool").display())
    );

    // A path with a slash is not searched, and is relative to the start directory.
    let mut slash = spec("slash", &["./fyn-tool"]);
    slash.workdir = Some("bin".into());
    let dir = h.job_dir(&slash).join("work/bin");
    std::fs::create_dir_all(&dir).unwrap();
    script(&dir, "slash", 0o755);
    let run = h.run(&slash).await;
    let text = run.stdout_text();
    assert!(
        text.starts_with("slash ") && text.ends_with("/work/bin/./fyn-tool\n"),
        "{text}"
    );

    // Found nowhere, or only without the execute bit: the error says where it looked.
    let mut nowhere = spec("nowhere", &["fyn-tool"]);
    nowhere.env = BTreeMap::from([("PATH".to_owned(), first.display().to_string())]);
    let error = h.spawn_failed(&nowhere).await;
    assert!(
        error.contains("fyn-tool") && error.contains("PATH"),
        "{error}"
    );
}

#[tokio::test]
async fn a_bad_workdir_is_a_spawn_failure() {
    let mut h = Harness::new();
    let mut escaping = spec("escape-workdir", &["true"]);
    escaping.workdir = Some("../outside".into());
    h.spawn_failed(&escaping).await;
    assert!(!h.job_dir(&escaping).join("outside").exists());

    // A file where the workdir should be created.
    let mut blocked = spec("blocked-workdir", &["true"]);
    blocked.workdir = Some("file/sub".into());
    let work = h.job_dir(&blocked).join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("file"), b"not a directory").unwrap();
    let error = h.spawn_failed(&blocked).await;
    assert!(error.contains("file/sub"), "{error}");
    assert_eq!(h.supervisor.running(), 0);
}

#[tokio::test]
async fn a_job_id_that_climbs_out_is_refused() {
    let mut h = Harness::new();
    let error = h.spawn_failed(&spec("../escape", &["true"])).await;
    assert!(error.contains("../escape"), "{error}");
    assert!(!h.dir.path().join("escape-1").exists());
    assert!(!h.root().join("escape-1").exists());

    // The executor checks again on its own, whoever calls it.
    let (tx, _rx) = unbounded_channel();
    let executor = ProcessExecutor::new(h.root());
    for id in ["../escape", "a/b", "..", ".hidden", ""] {
        let bad = spec(id, &["true"]);
        let request = SpawnRequest {
            output: OutputSink::new(bad.job_ref(), tx.clone()),
            spec: bad.clone(),
            lease: Duration::from_secs(60),
            folder_ready: false,
        };
        let result = executor.spawn(request);
        assert!(
            matches!(result, Err(ExecutorError::InvalidSpec(_))),
            "{id:?} was not refused"
        );
        assert!(executor.job_dir(&bad.job_ref()).is_err());
    }
}

#[tokio::test]
async fn output_past_the_limit_is_truncated_and_drained() {
    let mut h = Harness::new();
    // A MiB is far more than a pipe holds: the job only finishes if its pipe drains.
    let mut spec = spec(
        "limit",
        &["sh", "-c", "head -c 1048576 /dev/zero; echo done >&2"],
    );
    spec.output_limit_bytes = 1000;
    let run = h.run(&spec).await;
    assert_eq!(run.status, Some(ExitStatus::Exited { code: 0 }));
    assert_eq!(run.stdout.len(), 1000);
    assert_eq!(run.stdout_truncated, Some(1000));
    assert_eq!(run.stdout_bytes, 1_048_576, "counted before truncation");
    assert_eq!(run.stderr, b"done\n");
    assert_eq!(run.stderr_truncated, None);
    let log = std::fs::metadata(h.job_dir(&spec).join("stdout.log")).unwrap();
    assert_eq!(log.len(), 1000);
}

#[tokio::test]
async fn output_exactly_at_the_limit_is_not_truncated() {
    let mut h = Harness::new();
    let mut spec = spec("at-limit", &["printf", "hello"]);
    spec.output_limit_bytes = 5;
    let run = h.run(&spec).await;
    assert_eq!(run.stdout, b"hello");
    assert_eq!(run.stdout_truncated, None);
}

#[tokio::test]
async fn fifty_mib_stream_in_full_with_bounded_memory() {
    const TOTAL: u64 = 50 * 1024 * 1024;
    let mut h = Harness::new();
    let spec = spec("flood", &["head", "-c", "52428800", "/dev/zero"]);
    let before = rss_kib();
    let mut peak = before;
    let began = Instant::now();
    h.spawn(&spec);
    h.started(&spec.job_ref()).await;
    let mut received: u64 = 0;
    let mut chunks: u64 = 0;
    let exit = loop {
        match h.next().await {
            JobReport::Output {
                stream,
                offset,
                data,
                ..
            } => {
                assert_eq!(stream, OutputStream::Stdout);
                assert_eq!(offset, received);
                assert!(data.len() <= CHUNK_BYTES);
                received += data.len() as u64;
                chunks += 1;
                if chunks.is_multiple_of(64) {
                    peak = peak.max(rss_kib());
                }
                // Consumed as it goes: the chunk and its credit are dropped here.
            }
            JobReport::Exited {
                status,
                stdout_bytes,
                ..
            } => break (status, stdout_bytes),
            other => panic!("unexpected {other:?}"),
        }
    };
    let elapsed = began.elapsed();
    peak = peak.max(rss_kib());
    assert_eq!(exit, (ExitStatus::Exited { code: 0 }, TOTAL));
    assert_eq!(received, TOTAL, "every byte streamed");
    let growth_kib = peak.saturating_sub(before);
    let mb_per_s = TOTAL as f64 / 1e6 / elapsed.as_secs_f64();
    eprintln!(
        "50 MiB: {chunks} chunks in {:.2?} ({mb_per_s:.0} MB/s), RSS {before} KiB -> peak {peak} KiB (+{growth_kib} KiB)",
        elapsed
    );
    assert!(growth_kib < 64 * 1024, "RSS grew by {growth_kib} KiB");
    let log = std::fs::metadata(h.job_dir(&spec).join("stdout.log")).unwrap();
    assert_eq!(log.len(), TOTAL);
}

/// A consumer that takes nothing holds back the reports (at most the stream's credits
/// are out), never the job: its supervisor writes its output to the log, and the job
/// finishes while the reports wait; they resume from the log.
#[tokio::test]
async fn a_stalled_consumer_holds_the_reports_back_not_the_job() {
    const TOTAL: u64 = 52_428_800;
    let mut h = Harness::new();
    let spec = spec("stalled", &["head", "-c", "52428800", "/dev/zero"]);
    h.spawn(&spec);
    h.started(&spec.job_ref()).await;
    // Without reading, wait until the reader runs out of credits: the reports stop.
    let mut held = Vec::new();
    while let Ok(Some(report)) = timeout(Duration::from_millis(500), h.reports.recv()).await {
        assert!(matches!(report, JobReport::Output { .. }), "{report:?}");
        held.push(report);
    }
    assert!(
        held.len() <= fyn_runner::runtime::jobs::CREDITS_PER_STREAM,
        "{} chunks out without credit",
        held.len()
    );
    // Meanwhile the job wrote all of it: nothing waited for the consumer.
    let log = h.job_dir(&spec).join("stdout.log");
    let deadline = Instant::now() + WAIT;
    while std::fs::metadata(&log).map_or(0, |m| m.len()) < TOTAL {
        assert!(Instant::now() < deadline, "the job was held back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.supervisor.running(),
        1,
        "its end is reported only after its output"
    );
    // Converting gives the credits back and the flood resumes to its end.
    let mut received: u64 = held
        .into_iter()
        .map(|report| match report.into_event() {
            Event::JobOutput { data, .. } => data.len() as u64,
            other => panic!("{other:?}"),
        })
        .sum();
    loop {
        match h.next().await {
            JobReport::Output { data, .. } => received += data.len() as u64,
            JobReport::Exited { stdout_bytes, .. } => {
                assert_eq!(stdout_bytes, 52_428_800);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, 52_428_800);
}

#[tokio::test]
async fn kill_all_kills_every_job_now() {
    let mut h = Harness::new();
    let a = spec("kill-a", &["sleep", "100"]);
    let b = spec("kill-b", &["sh", "-c", "trap '' TERM; sleep 100"]);
    h.spawn(&a);
    h.started(&a.job_ref()).await;
    h.spawn(&b);
    h.started(&b.job_ref()).await;
    assert_eq!(h.supervisor.running(), 2);
    h.supervisor.kill_all();
    let mut ended = BTreeSet::new();
    while ended.len() < 2 {
        match h.next().await {
            JobReport::Exited { job, status, .. } => {
                assert_eq!(
                    status,
                    ExitStatus::Signaled {
                        signal: libc::SIGKILL
                    }
                );
                ended.insert(job.job_id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(h.supervisor.running(), 0);
}

/// The runner's side of a job going away (the runner stops) leaves the job to its
/// supervisor process, which keeps running it; ending every supervised job under a
/// jobs folder (what `uninstall` does) then ends it, with what it started.
#[tokio::test]
async fn dropping_the_job_supervisor_leaves_the_job_to_its_supervisor_process() {
    let mut h = Harness::new();
    let spec = spec("dropped", &["sh", "-c", "sleep 1000 & echo $!; wait"]);
    h.spawn(&spec);
    let main = h.started(&spec.job_ref()).await;
    let child: i32 = h
        .output_containing(OutputStream::Stdout, "\n")
        .await
        .trim()
        .parse()
        .expect("the child's pid");
    let root = h.root();
    let Harness {
        dir: _dir,
        supervisor,
        ..
    } = h;
    drop(supervisor);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !process_gone(i32::try_from(main).unwrap()) && !process_gone(child),
        "the job runs on without the runner"
    );
    let ended =
        tokio::task::spawn_blocking(move || fyn_runner::runtime::jobs::end_supervised_jobs(&root))
            .await
            .expect("ends");
    assert_eq!(ended, 1);
    assert_gone(i32::try_from(main).unwrap()).await;
    assert_gone(child).await;
}

#[tokio::test]
async fn the_same_attempt_never_runs_twice() {
    let mut h = Harness::new();
    let spec = spec("twice", &["sleep", "100"]);
    h.spawn(&spec);
    h.started(&spec.job_ref()).await;
    let error = h.spawn_failed(&spec).await;
    assert!(error.contains("already running"), "{error}");
    assert_eq!(h.supervisor.running(), 1);
    h.supervisor
        .cancel(&spec.job_ref(), "cancelled", Duration::ZERO);
    let run = h.until_exit(&spec.job_ref()).await;
    assert!(matches!(run.status, Some(ExitStatus::Signaled { .. })));
    // Once it ended, the attempt may be started again.
    let again = h.run(&spec_with_command(&spec, &["true"])).await;
    assert_eq!(again.status, Some(ExitStatus::Exited { code: 0 }));
}

fn spec_with_command(spec: &JobSpec, command: &[&str]) -> JobSpec {
    JobSpec {
        command: command.iter().map(|part| (*part).to_owned()).collect(),
        ..spec.clone()
    }
}

#[tokio::test]
async fn cancelling_an_unknown_job_does_nothing() {
    let mut h = Harness::new();
    let job = JobRef {
        job_id: "nobody".into(),
        attempt: 1,
    };
    h.supervisor
        .cancel(&job, "cancelled", Duration::from_secs(1));
    assert!(h.reports.try_recv().is_err());
    assert_eq!(h.supervisor.running(), 0);
}

/// (spare job folders, anything else) in a jobs root.
fn spares_and_others(root: &Path) -> (usize, usize) {
    let names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let spares = names.iter().filter(|n| n.starts_with(".spare-")).count();
    // Where jobs' supervisors keep their folders is no job's folder either.
    let machinery = names.iter().filter(|n| *n == ".supervisors").count();
    (spares, names.len() - spares - machinery)
}

/// The one spare job folder in `root`, once it is there.
async fn ready_spare(root: &Path) -> PathBuf {
    let deadline = Instant::now() + WAIT;
    loop {
        let spare = std::fs::read_dir(root)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| {
                path.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".spare-")
            });
        // Complete: the logs are made last; it is taken for ready a moment later.
        if let Some(spare) = spare.filter(|s| s.join("stderr.log").exists()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return spare;
        }
        assert!(Instant::now() < deadline, "no spare job folder in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// A job's folder is the spare made ahead of time (when the runner is idle in Active,
/// not at preflight), moved into place; the next spare follows when the runner is idle
/// again. A job whose folder exists already (the same attempt run again) uses that
/// folder, with fresh logs, and leaves the spare for the next. Spares an earlier run
/// left are removed at preflight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_folders_are_the_spare_made_ahead_of_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jobs");
    std::fs::create_dir_all(root.join(".spare-1-0/work")).unwrap();
    let (tx, mut reports) = unbounded_channel();
    let mut supervisor = JobSupervisor::new(root.clone(), tx);
    supervisor.preflight().expect("preflight");
    assert!(!root.join(".spare-1-0").exists(), "an old spare is removed");
    assert_eq!(
        spares_and_others(&root),
        (0, 0),
        "none made before the runner can be handed jobs"
    );
    supervisor.prepare_ahead();
    let spare = ready_spare(&root).await;
    let spare_inode = inode(&spare);

    let mut run = async |supervisor: &mut JobSupervisor, spec: JobSpec| {
        let started = supervisor.spawn(&spec);
        assert!(matches!(started, JobReport::Started { .. }), "{started:?}");
        loop {
            let report = timeout(WAIT, reports.recv()).await.unwrap().unwrap();
            assert_eq!(report.job(), &spec.job_ref());
            if matches!(report, JobReport::Exited { .. }) {
                return;
            }
        }
    };
    let job_dir = root.join("a-1");
    run(&mut supervisor, spec("a", &["sh", "-c", "echo first; pwd"])).await;
    assert_eq!(
        inode(&job_dir),
        spare_inode,
        "the spare became the job's folder"
    );
    let work = std::fs::canonicalize(job_dir.join("work")).unwrap();
    let log = std::fs::read_to_string(job_dir.join("stdout.log")).unwrap();
    assert_eq!(log, format!("first\n{}\n", work.display()));
    assert_eq!(
        spares_and_others(&root),
        (0, 1),
        "made only when the runner is idle"
    );
    supervisor.prepare_ahead();
    let next = ready_spare(&root).await;
    assert_ne!(inode(&next), spare_inode, "a new spare is made");

    let next_inode = inode(&next);
    run(&mut supervisor, spec("a", &["sh", "-c", "echo again"])).await;
    assert_eq!(inode(&job_dir), spare_inode, "the existing folder is used");
    assert_eq!(
        std::fs::read_to_string(job_dir.join("stdout.log")).unwrap(),
        "again\n",
        "with fresh logs"
    );
    assert_eq!(
        inode(&ready_spare(&root).await),
        next_inode,
        "the spare stays"
    );
    assert_eq!(spares_and_others(&root), (1, 1));
    drop(supervisor);
    assert_eq!(
        spares_and_others(&root),
        (0, 1),
        "the spare goes with the runner"
    );
}

/// A spare job folder comes with the job's endpoint socket bound and listening: the
/// endpoint serves on it, at its place in the job's folder, with no bind of its own
/// on the start's path. One that no endpoint takes is removed with its listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_folders_socket_is_the_jobs_endpoint() {
    use fyn_runner::runtime::job_endpoint::{
        EndpointConfig, JobEndpoint, JobSays, KvView, SOCKET_NAME, SOCKET_VARIABLE,
    };
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("jobs");
    let (tx, _reports) = unbounded_channel();
    let supervisor = JobSupervisor::new(root.clone(), tx);
    supervisor.preflight().expect("preflight");
    supervisor.prepare_ahead();
    let spare = ready_spare(&root).await;
    let bound_inode = inode(&spare.join(SOCKET_NAME));

    let folder = supervisor
        .prepare_folder(&spec("served", &["true"]))
        .expect("the folder");
    let job_dir = root.join("served-1");
    let socket = job_dir.join(SOCKET_NAME);
    let bound = folder.endpoint_socket.expect("the spare's socket");
    assert_eq!(bound.path(), socket);
    assert_eq!(inode(&socket), bound_inode, "the spare's, not a new one");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let (reports_tx, mut reports) = tokio::sync::mpsc::channel(8);
    let config = EndpointConfig::new(
        JobRef {
            job_id: "served".into(),
            attempt: 1,
        },
        &job_dir,
        KvView::new(BTreeMap::new()),
    );
    let endpoint = JobEndpoint::bind(config, reports_tx, Some(bound))
        .await
        .expect("served");
    assert_eq!(inode(&socket), bound_inode, "served where it was bound");
    let socket_var = socket.clone();
    let said = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
            .args(["job", "progress", "0.5", "half"])
            .env(SOCKET_VARIABLE, socket_var)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        said.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );
    let report = timeout(WAIT, reports.recv()).await.unwrap().unwrap();
    assert!(
        matches!(report.says, JobSays::Progress { .. }),
        "{:?}",
        report.says
    );
    endpoint.close().await;
    assert!(!socket.exists(), "removed with its endpoint");

    // Taken for a folder whose endpoint never comes (its job failed to start).
    supervisor.prepare_ahead();
    ready_spare(&root).await;
    let folder = supervisor
        .prepare_folder(&spec("unserved", &["true"]))
        .expect("the folder");
    let socket = root.join("unserved-1").join(SOCKET_NAME);
    assert!(socket.exists());
    drop(folder);
    assert!(
        !socket.exists(),
        "no socket without a listener is left for a job"
    );
}

#[test]
fn preflight_checks_the_jobs_root() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = ProcessExecutor::new(dir.path().join("a/b/jobs"));
    assert_eq!(fresh.name(), "process");
    fresh.preflight().expect("a creatable root passes");
    assert!(dir.path().join("a/b/jobs").is_dir());
    assert_eq!(
        spares_and_others(&dir.path().join("a/b/jobs")),
        (0, 0),
        "the probe is removed; no spare before the runner can be handed jobs"
    );

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let blocked = ProcessExecutor::new(file.clone());
    assert!(matches!(
        blocked.preflight(),
        Err(ExecutorError::NotADirectory { .. })
    ));
    let below_file = ProcessExecutor::new(file.join("jobs"));
    assert!(matches!(
        below_file.preflight(),
        Err(ExecutorError::Io { .. })
    ));
}

#[test]
fn reports_become_the_cores_events() {
    let job = JobRef {
        job_id: "j".into(),
        attempt: 1,
    };
    let cases = [
        (
            JobReport::Started {
                job: job.clone(),
                pid: 7,
            },
            Event::JobStarted {
                job: job.clone(),
                pid: 7,
            },
        ),
        (
            JobReport::Output {
                job: job.clone(),
                stream: OutputStream::Stderr,
                offset: 3,
                data: OutputChunk::from(b"abc".to_vec()),
            },
            Event::JobOutput {
                job: job.clone(),
                stream: OutputStream::Stderr,
                offset: 3,
                data: b"abc".to_vec(),
            },
        ),
        (
            JobReport::Truncated {
                job: job.clone(),
                stream: OutputStream::Stdout,
                offset: 9,
            },
            Event::JobOutputTruncated {
                job: job.clone(),
                stream: OutputStream::Stdout,
                offset: 9,
            },
        ),
        (
            JobReport::Exited {
                job: job.clone(),
                status: ExitStatus::Signaled { signal: 9 },
                duration_ms: 5,
                stdout_bytes: 1,
                stderr_bytes: 2,
                cancel: None,
                usage: Default::default(),
            },
            Event::JobExited {
                job: job.clone(),
                status: ExitStatus::Signaled { signal: 9 },
                duration_ms: 5,
                stdout_bytes: 1,
                stderr_bytes: 2,
                cancel: None,
                usage: Default::default(),
            },
        ),
        (
            JobReport::SpawnFailed {
                job: job.clone(),
                error: "no".into(),
            },
            Event::JobSpawnFailed {
                job: job.clone(),
                error: "no".into(),
            },
        ),
    ];
    for (report, event) in cases {
        assert_eq!(report.job(), &job);
        assert_eq!(report.into_event(), event);
    }
}

/// An executor other than the process one plugs in the same way.
#[tokio::test]
async fn a_refusing_executor_reports_spawn_failed() {
    struct Refusing;
    impl Executor for Refusing {
        fn name(&self) -> &'static str {
            "refusing"
        }
        fn preflight(&self) -> Result<(), ExecutorError> {
            Ok(())
        }
        fn spawn(
            &self,
            _request: SpawnRequest,
        ) -> Result<fyn_runner::runtime::jobs::RunningJob, ExecutorError> {
            Err(ExecutorError::NoPid)
        }
    }
    let (tx, mut rx) = unbounded_channel();
    let mut supervisor = JobSupervisor::with_executor(Arc::new(Refusing), tx);
    assert_eq!(supervisor.executor_name(), "refusing");
    supervisor.preflight().unwrap();
    let report = supervisor.spawn(&spec("refused", &["true"]));
    assert!(
        matches!(report, JobReport::SpawnFailed { .. }),
        "{report:?}"
    );
    assert!(rx.try_recv().is_err(), "nothing else is reported");
}

/// A job's launch runs off the loop (`start`): asked again meanwhile it is refused, a
/// cancel asked meanwhile reaches the job once it runs (with the shortest grace asked),
/// and a lease granted meanwhile is passed on; its end is reported as ever.
#[tokio::test]
async fn a_cancel_asked_while_a_job_launches_reaches_it_once_it_runs() {
    use std::sync::Mutex;

    /// Everything asked of the job, in order.
    #[derive(Default)]
    struct Asked(Mutex<Vec<String>>);
    impl fyn_runner::runtime::jobs::JobControl for Asked {
        fn terminate(&self, grace: Duration, reason: &str) {
            let mut asked = self.0.lock().unwrap();
            asked.push(format!("terminate {reason} {}s", grace.as_secs()));
        }
        fn kill(&self) {
            self.0.lock().unwrap().push("kill".into());
        }
        fn renew(&self, within: Duration) {
            let mut asked = self.0.lock().unwrap();
            asked.push(format!("renew {}s", within.as_secs()));
        }
    }
    /// Starts a job only once the test lets it; the job ends once it is terminated.
    struct Gated {
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
        asked: Arc<Asked>,
    }
    impl Executor for Gated {
        fn name(&self) -> &'static str {
            "gated"
        }
        fn preflight(&self) -> Result<(), ExecutorError> {
            Ok(())
        }
        fn spawn(
            &self,
            _request: SpawnRequest,
        ) -> Result<fyn_runner::runtime::jobs::RunningJob, ExecutorError> {
            self.gate
                .lock()
                .unwrap()
                .recv()
                .map_err(|_| ExecutorError::NoPid)?;
            let asked = self.asked.clone();
            let finished = async move {
                while !asked
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|a| a.starts_with("terminate"))
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                fyn_runner::runtime::jobs::JobEnd {
                    status: ExitStatus::Signaled { signal: 15 },
                    duration_ms: 1,
                    stdout_bytes: 0,
                    stderr_bytes: 0,
                    usage: None,
                    cancel: Some("cancelled".into()),
                }
            };
            Ok(fyn_runner::runtime::jobs::RunningJob {
                pid: 4242,
                control: self.asked.clone(),
                finished: Box::pin(finished),
            })
        }
    }
    let (open, gate) = std::sync::mpsc::channel();
    let asked = Arc::new(Asked::default());
    let executor = Gated {
        gate: Mutex::new(gate),
        asked: asked.clone(),
    };
    let (tx, mut reports) = unbounded_channel();
    let mut supervisor = JobSupervisor::with_executor(Arc::new(executor), tx);
    let job = spec("gated", &["true"]);
    let (deliver, mut launched) = unbounded_channel();
    let started = supervisor.start(&job, false, move |l| drop(deliver.send(l)));
    assert!(
        started.is_none(),
        "nothing to report before the launch ends"
    );
    assert!(supervisor.is_launching(&job.job_ref()));
    let again = supervisor.start(&job, false, |_| {
        panic!("a second launch of the same attempt")
    });
    assert!(
        matches!(again, Some(JobReport::SpawnFailed { .. })),
        "{again:?}"
    );
    supervisor.cancel(&job.job_ref(), "cancelled", Duration::from_secs(30));
    supervisor.cancel(&job.job_ref(), "timeout", Duration::from_secs(3));
    supervisor.renew(Duration::from_secs(90));
    assert!(asked.0.lock().unwrap().is_empty(), "no job to ask yet");
    open.send(()).unwrap();
    let result = timeout(Duration::from_secs(5), launched.recv())
        .await
        .expect("the launch ends")
        .expect("a launch result");
    let report = supervisor.launched(result);
    assert!(
        matches!(&report, JobReport::Started { pid: 4242, .. }),
        "{report:?}"
    );
    assert!(!supervisor.is_launching(&job.job_ref()));
    let end = timeout(Duration::from_secs(5), reports.recv())
        .await
        .expect("the job ends")
        .expect("a report");
    assert!(matches!(end, JobReport::Exited { .. }), "{end:?}");
    assert_eq!(
        *asked.0.lock().unwrap(),
        ["renew 90s", "terminate cancelled 3s"],
        "the lease granted meanwhile, then the first cancel's reason with the shortest grace"
    );
}
