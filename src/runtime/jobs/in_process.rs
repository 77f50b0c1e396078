//! Windows: the runner starts a job itself, in a kill-on-close job object
//! (`job_object.rs`), and copies its output from the pipes to its logs and reports.
//! The job object dies with the runner, and so does the job: on Windows a restart of
//! the runner ends its jobs, which the next start reports lost (docs/operations.md).

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::protocol::{ExitStatus, JobRef, OutputStream};

use super::executor::{ExecutorError, JobControl, JobEnd, RunningJob};
use super::output::{LogFile, OutputSink, StreamSink, pump};
use super::process::{Prepared, tree};
use crate::platform::{self, Access};

/// Start a prepared job and stream its output.
pub(super) fn launch(
    prepared: Prepared,
    output: OutputSink,
    limit: u64,
) -> Result<RunningJob, ExecutorError> {
    let Prepared {
        job,
        logs: [stdout_path, stderr_path],
        start_dir,
        program,
        argv0,
        args,
        env,
        account: _,
    } = prepared;
    let stdout_log = open_log(stdout_path)?;
    let stderr_log = open_log(stderr_path)?;
    let mut command = Command::new(&program);
    command
        .args(&args)
        .current_dir(&start_dir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tree::prepare(&mut command);
    let mut child = command.spawn().map_err(|source| ExecutorError::Spawn {
        program: argv0.clone(),
        source,
    })?;
    let started = Instant::now();
    // On an early return from here, dropping `child` kills the main process and
    // dropping `guard` kills the rest of its tree.
    let pid = child.id().ok_or(ExecutorError::NoPid)?;
    let group = Arc::new(tree::ProcessTree::adopt(&child, job.clone())?);
    let guard = RetireOnDrop(group.clone());
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ExecutorError::Spawn {
            program: argv0,
            source: io::Error::other("the output pipes were not set up"),
        });
    };
    info!(job = %job.job_id, attempt = job.attempt, pid, dir = %start_dir.display(), "job started");
    let streams = Streams {
        stdout,
        stderr,
        stdout_log,
        stderr_log,
        stdout_sink: output.stream(OutputStream::Stdout),
        stderr_sink: output.stream(OutputStream::Stderr),
        limit,
    };
    Ok(RunningJob {
        pid,
        control: group,
        finished: Box::pin(run_to_end(child, guard, streams, started)),
    })
}

/// A log the runner made empty, opened for writing; a symlink in its place is refused.
fn open_log(path: PathBuf) -> Result<LogFile, ExecutorError> {
    match platform::no_follow(platform::open_options(Access::Private).write(true)).open(&path) {
        Ok(file) => Ok(LogFile::new(file, path)),
        Err(source) => Err(ExecutorError::Io {
            op: "open",
            path,
            source,
        }),
    }
}

/// A job's two pipes and where their bytes go.
struct Streams {
    stdout: ChildStdout,
    stderr: ChildStderr,
    stdout_log: LogFile,
    stderr_log: LogFile,
    stdout_sink: StreamSink,
    stderr_sink: StreamSink,
    limit: u64,
}

/// Read both streams while waiting for the main process; when it exits, kill its
/// group, then finish reading. Nothing runs until this future is first polled, so the
/// supervisor's `Started` report comes before any output.
async fn run_to_end(
    mut child: Child,
    group: RetireOnDrop,
    streams: Streams,
    started: Instant,
) -> JobEnd {
    let (ended_tx, ended) = watch::channel(false);
    let stdout = pump(
        streams.stdout,
        streams.stdout_log,
        streams.stdout_sink,
        streams.limit,
        ended.clone(),
    );
    let stderr = pump(
        streams.stderr,
        streams.stderr_log,
        streams.stderr_sink,
        streams.limit,
        ended,
    );
    let main = async {
        let status = child.wait().await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Whatever the main process left behind dies with it; that also closes the
        // pipes those processes held, so the readers reach their end.
        group.0.retire();
        // An error only means both readers are done already.
        let _ = ended_tx.send(true);
        (exit_status(status, group.0.job()), duration_ms)
    };
    let ((status, duration_ms), (stdout_bytes, stderr_bytes)) =
        tokio::join!(main, async { tokio::join!(stdout, stderr) });
    JobEnd {
        status,
        duration_ms,
        stdout_bytes,
        stderr_bytes,
        usage: None,
        cancel: None,
    }
}

fn exit_status(status: io::Result<std::process::ExitStatus>, job: &JobRef) -> ExitStatus {
    match status {
        Ok(status) => tree::exit_status_of(status),
        Err(error) => {
            warn!(job = %job.job_id, attempt = job.attempt, %error, "cannot observe the job's exit");
            ExitStatus::Unknown
        }
    }
}

impl JobControl for tree::ProcessTree {
    /// Ctrl+Break to the job's group; the runner's ladder kills it after the grace.
    fn terminate(&self, _grace: std::time::Duration, _reason: &str) {
        tree::ProcessTree::terminate(self);
    }

    fn kill(&self) {
        tree::ProcessTree::kill(self);
    }
}

/// Kills the tree if the job's future is dropped before it finished (the runtime
/// shutting down, a spawn error after the start): no process of a job outlives it.
struct RetireOnDrop(Arc<tree::ProcessTree>);

impl Drop for RetireOnDrop {
    fn drop(&mut self) {
        self.0.retire();
    }
}
