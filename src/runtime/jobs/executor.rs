/*!
The executor interface (seed 002's pluggable backends): a backend checks it can run
jobs at all (`preflight`), then starts each one and hands back a `RunningJob`, and at
start says what became of the jobs an earlier run started (`find`). What a backend
must guarantee is written on `Executor`; the cancellation ladder and the reports
around it belong to the job supervisor (`JobSupervisor`), the same for every backend.
*/

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::{ExitStatus, JobRef, JobSpec, JobSpecError};

use super::output::OutputSink;

/// A way to run jobs.
///
/// `spawn` is called from inside a tokio runtime and must not block for long. A
/// backend must: start the job or say why not; stream its output only through
/// `SpawnRequest::output`, and only once `RunningJob::finished` is first polled (so
/// `Started` comes first); make `finished` resolve only after the job's last process
/// is gone and its output is read; and, unless its jobs outlive the runner
/// (`outlives_runner`), kill whatever is left of the job when `finished` is dropped
/// early.
pub trait Executor: Send + Sync + 'static {
    /// A short name for logs and the operator ("process").
    fn name(&self) -> &'static str;

    /// Whether this backend can run jobs here at all; run once before taking jobs.
    fn preflight(&self) -> Result<(), ExecutorError>;

    fn spawn(&self, request: SpawnRequest) -> Result<RunningJob, ExecutorError>;

    /// `spawn` without holding up the caller (the runner's loop): resolves once the
    /// job runs. By default `spawn` runs on a blocking thread. A backend whose start
    /// mostly waits for another process (a supervisor's answer) does its quick part at
    /// once and awaits the answer on the caller's runtime instead, which spares the
    /// start two thread hops. Must be called inside a tokio runtime.
    fn spawn_later(self: Arc<Self>, request: SpawnRequest) -> PendingSpawn {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || self.spawn(request))
                .await
                .unwrap_or_else(|error| {
                    Err(ExecutorError::NotStarted {
                        why: format!("the start's thread failed: {error}"),
                    })
                })
        })
    }

    /// Make the job's folder ready before its process starts (for its inputs): returns
    /// its `work/` and the account whose rights files placed there must be made with
    /// (`None`: the runner's own). `spawn` must accept a folder made this way.
    fn prepare_folder(&self, spec: &JobSpec) -> Result<PreparedFolder, ExecutorError> {
        let _ = spec;
        Err(ExecutorError::NotStarted {
            why: format!("the {} executor takes no input files", self.name()),
        })
    }

    /// The `work/` of a job this executor started (for its outputs), and the account
    /// whose rights its files are read with.
    fn work_folder(&self, job: &JobRef) -> Result<PreparedFolder, ExecutorError> {
        let _ = job;
        Err(ExecutorError::NotStarted {
            why: format!("the {} executor keeps no output files", self.name()),
        })
    }

    /// The runner has nothing else to do: prepare what makes the next start quicker.
    /// Must return at once (heavy work goes to a blocking thread).
    fn prepare_ahead(&self) {}

    /// Whether a job goes on when the runner stops (its supervisor keeps it). When
    /// false, the runner's end is its jobs' end.
    fn outlives_runner(&self) -> bool {
        false
    }

    /// At start: what became of a job the previous run started (the store holds it).
    /// A backend whose jobs die with the runner has nothing to find: lost.
    fn find(&self, request: FindRequest) -> Finding {
        let _ = request;
        Finding::Lost
    }

    /// At start, after every `find`: whatever the backend still keeps of jobs that are
    /// not in `known` is ended and forgotten.
    fn forget_others(&self, known: &[JobRef]) {
        let _ = known;
    }
}

/// A job's folder made ready before its process starts.
#[derive(Debug)]
pub struct PreparedFolder {
    /// The job's `work/`.
    pub work: PathBuf,
    /// The account jobs run as, when not the runner's own.
    pub account: Option<crate::platform::Account>,
    /// The job's endpoint socket, when the folder came with one bound (a spare's).
    pub endpoint_socket: Option<super::spare_dir::BoundSocket>,
}

/// What to run, and where its output goes.
pub struct SpawnRequest {
    pub spec: JobSpec,
    pub output: OutputSink,
    /// How long the job may go on without a runner renewing its lease (the API's
    /// runner-lost threshold), for backends whose jobs outlive the runner.
    pub lease: Duration,
    /// Whether `prepare_folder` made the job's folder already (it is not made again).
    pub folder_ready: bool,
}

/// A job of the previous run, to be found (`Executor::find`).
pub struct FindRequest {
    pub spec: JobSpec,
    /// The pid its `job_started` recorded, if it got that far.
    pub pid: Option<u32>,
    /// How much of its output the outbox holds already.
    pub progress: OutputProgress,
    pub output: OutputSink,
}

/// How far a job's output was reported (taken into the outbox), per stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputProgress {
    pub stdout: StreamProgress,
    pub stderr: StreamProgress,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamProgress {
    /// Bytes reported, from offset 0.
    pub sent: u64,
    /// Whether its `job_output_truncated` was reported.
    pub cut: bool,
}

/// What `find` found.
pub enum Finding {
    /// Its supervisor runs it; `running` follows it from where the outbox stopped.
    Running {
        running: RunningJob,
        /// Since the job started.
        elapsed_ms: u64,
        /// The reason of a cancel its supervisor was given, if any.
        cancel: Option<String>,
        /// The job's pid, when the store does not hold its `job_started` yet.
        started_pid: Option<u32>,
    },
    /// It ended while no runner was there; `running` reports the rest of its output
    /// and resolves with how it ended.
    Ended {
        running: RunningJob,
        cancel: Option<String>,
        started_pid: Option<u32>,
    },
    /// Neither a supervisor nor a record of its end; what was left of it is killed.
    Lost,
}

/// Stops a started job. Every call returns at once; the job's end still arrives
/// through `RunningJob::finished`. After the job ended, they do nothing.
pub trait JobControl: Send + Sync {
    /// Ask every process of the job to stop (SIGTERM). A backend that keeps its jobs
    /// beyond the runner also kills them after `grace` itself, and records `reason`
    /// with the job's end.
    fn terminate(&self, grace: Duration, reason: &str);

    /// Stop every process of the job now (SIGKILL).
    fn kill(&self);

    /// The session is alive: the job may go on for `within` more without a runner.
    fn renew(&self, within: Duration) {
        let _ = within;
    }
}

/// A start under way (`Executor::spawn_later`).
pub type PendingSpawn = Pin<Box<dyn Future<Output = Result<RunningJob, ExecutorError>> + Send>>;

/// A job that started.
pub struct RunningJob {
    pub pid: u32,
    pub control: Arc<dyn JobControl>,
    /// Drives the job (its output included) and resolves with how it ended.
    pub finished: Pin<Box<dyn Future<Output = JobEnd> + Send>>,
}

/// How a job ended, as the backend saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    pub status: ExitStatus,
    /// From the spawn to the end of the main process.
    pub duration_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// What the job's processes used, when the backend measured it.
    pub usage: Option<ProcessUsage>,
    /// The name of the reason of a cancel the backend recorded with the job's end (its
    /// supervisor's own, or one an earlier runner asked for).
    pub cancel: Option<String>,
}

/// CPU time and peak memory of a job's processes (the main one and every descendant
/// its supervisor reaped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    pub user_us: u64,
    pub system_us: u64,
    pub max_rss_kib: u64,
}

impl ProcessUsage {
    /// As `job_finished` carries them: milliseconds and bytes.
    pub fn figures(self) -> crate::protocol::JobUsage {
        crate::protocol::JobUsage {
            cpu_user_ms: Some(self.user_us / 1000),
            cpu_system_ms: Some(self.system_us / 1000),
            peak_rss_bytes: Some(self.max_rss_kib.saturating_mul(1024)),
            ..crate::protocol::JobUsage::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("invalid job: {0}")]
    InvalidSpec(#[from] JobSpecError),
    #[error("job directory name {name:?} is not a single plain path component")]
    UnsafeJobDir { name: String },
    #[error("workdir {workdir:?} resolves to {resolved}, outside the job's work directory")]
    WorkdirEscapes { workdir: String, resolved: PathBuf },
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
    #[error("{why}")]
    NotStarted { why: String },
    #[error(
        "the supervisor program {} cannot be found; jobs run under it",
        program.display()
    )]
    NoSupervisor { program: PathBuf },
    #[error(
        "the jobs folder {} is too long a path: a job supervisor's socket below it would \
         take {len} bytes, and a socket address holds {max}. Choose a shorter jobs_dir",
        root.display()
    )]
    JobsRootTooLong {
        root: PathBuf,
        len: usize,
        max: usize,
    },
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
