/*!
The executor interface (seed 002's pluggable backends): a backend checks it can run
jobs at all (`preflight`), then starts each one and hands back a `RunningJob`. What
a backend must guarantee is written on `Executor`; the cancellation ladder and the
reports around it belong to the supervisor, the same for every backend.
*/

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::protocol::{ExitStatus, JobSpec, JobSpecError};

use super::output::OutputSink;

/// A way to run jobs.
///
/// `spawn` is called from inside a tokio runtime and must not block for long. A
/// backend must: start the job or say why not; stream its output only through
/// `SpawnRequest::output`, and only once `RunningJob::finished` is first polled (so
/// `Started` comes first); make `finished` resolve only after the job's last process
/// is gone and its output is read; and kill whatever is left of the job when
/// `finished` is dropped early.
pub trait Executor: Send + Sync {
    /// A short name for logs and the operator ("process").
    fn name(&self) -> &'static str;

    /// Whether this backend can run jobs here at all; run once before taking jobs.
    fn preflight(&self) -> Result<(), ExecutorError>;

    fn spawn(&self, request: SpawnRequest) -> Result<RunningJob, ExecutorError>;

    /// The runner has nothing else to do: prepare what makes the next start quicker.
    /// Must return at once (heavy work goes to a blocking thread).
    fn prepare_ahead(&self) {}
}

/// What to run, and where its output goes.
pub struct SpawnRequest {
    pub spec: JobSpec,
    pub output: OutputSink,
}

/// Stops a started job. Both calls return at once; the job's end still arrives
/// through `RunningJob::finished`. After the job ended, they do nothing.
pub trait JobControl: Send + Sync {
    /// Ask every process of the job to stop (SIGTERM).
    fn terminate(&self);

    /// Stop every process of the job now (SIGKILL).
    fn kill(&self);
}

/// A job that started.
pub struct RunningJob {
    pub pid: u32,
    pub control: Arc<dyn JobControl>,
    /// Drives the job (its output included) and resolves with how it ended.
    pub finished: Pin<Box<dyn Future<Output = JobEnd> + Send>>,
}

/// How a job ended, as the backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobEnd {
    pub status: ExitStatus,
    /// From the spawn to the end of the main process.
    pub duration_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("invalid job: {0}")]
    InvalidSpec(#[from] JobSpecError),
    #[error("job directory name {name:?} is not a single plain path component")]
    UnsafeJobDir { name: String },
    #[error("workdir {workdir:?} resolves to {resolved}, outside the job's work directory")]
    WorkdirEscapes { workdir: String, resolved: PathBuf },
    #[error("environment variable {name:?} cannot be passed: {why}")]
    BadEnv { name: String, why: &'static str },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists but is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the job's process is gone before its pid could be read")]
    NoPid,
    #[error("pid {pid} cannot safely name a process group")]
    BadPid { pid: u32 },
    #[error("job {job_id} attempt {attempt} is already running here")]
    AlreadyRunning { job_id: String, attempt: u32 },
    #[error(
        "the job account {user} cannot reach the jobs folder {}: {} (mode {mode:04o}) is \
         closed to it. Choose a jobs_dir it can reach, or let it pass (chmod o+x {})",
        root.display(),
        folder.display(),
        folder.display()
    )]
    JobsRootUnreachable {
        user: String,
        root: PathBuf,
        folder: PathBuf,
        mode: u32,
    },
    #[error(
        "refusing the jobs folder {}: {why}, and whoever can change it could have the \
         runner, as root, follow a link a job planted there. Give it to root, mode 0711",
        root.display()
    )]
    JobsRootUntrusted {
        root: PathBuf,
        why: crate::platform::ForeignWrite,
    },
}
