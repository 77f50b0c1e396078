/*!
The supervisor: what the driver holds. It starts jobs through an executor, runs the
cancellation ladder, and sends one stream of `JobReport`s. Each started job gets one
task that owns its ladder and reports its end; the supervisor keeps only what it
needs to reach that task and to kill the job at exit.
*/

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::protocol::{JobRef, JobSpec};

use super::executor::{Executor, ExecutorError, JobControl, JobEnd, RunningJob, SpawnRequest};
use super::output::OutputSink;
use super::process::{JobsLayout, ProcessExecutor};
use super::report::JobReport;

pub struct JobSupervisor {
    executor: Arc<dyn Executor>,
    reports: UnboundedSender<JobReport>,
    jobs: HashMap<JobRef, Supervised>,
}

/// What the supervisor keeps of a started job.
struct Supervised {
    control: Arc<dyn JobControl>,
    /// To the job's task: start the ladder with this grace.
    cancels: UnboundedSender<Duration>,
    /// Set just before `Exited` is sent.
    ended: Arc<AtomicBool>,
}

impl JobSupervisor {
    /// A supervisor running jobs as local processes under `jobs_root`.
    pub fn new(jobs_root: PathBuf, events: UnboundedSender<JobReport>) -> Self {
        Self::with_executor(Arc::new(ProcessExecutor::new(jobs_root)), events)
    }

    /// A supervisor running jobs as local processes laid out as `layout` says (where,
    /// and as whom).
    pub fn with_layout(layout: JobsLayout, events: UnboundedSender<JobReport>) -> Self {
        Self::with_executor(Arc::new(ProcessExecutor::with_layout(layout)), events)
    }

    pub fn with_executor(executor: Arc<dyn Executor>, events: UnboundedSender<JobReport>) -> Self {
        Self {
            executor,
            reports: events,
            jobs: HashMap::new(),
        }
    }

    pub fn executor_name(&self) -> &'static str {
        self.executor.name()
    }

    /// Whether the executor can run jobs here; call before taking any.
    pub fn preflight(&self) -> Result<(), ExecutorError> {
        self.executor.preflight()
    }

    /// Called when the runner is idle: the executor prepares for the next start then,
    /// never on a job's way to `job_started`.
    pub fn prepare_ahead(&self) {
        self.executor.prepare_ahead();
    }

    /// Start a job. Returns how that went, `Started` or `SpawnFailed`, at once: the
    /// driver tells the API before anything else that arrived meanwhile. After
    /// `Started`, the job's output and its `Exited` come through the reports channel.
    /// Never panics on a bad spec; must be called from inside a tokio runtime.
    pub fn spawn(&mut self, spec: &JobSpec) -> JobReport {
        self.prune();
        let job = spec.job_ref();
        if self.jobs.contains_key(&job) {
            // Running the same attempt twice is the one thing worse than not running it.
            let error = ExecutorError::AlreadyRunning {
                job_id: job.job_id.clone(),
                attempt: job.attempt,
            };
            return spawn_failed(job, error);
        }
        let request = SpawnRequest {
            spec: spec.clone(),
            output: OutputSink::new(job.clone(), self.reports.clone()),
        };
        let RunningJob {
            pid,
            control,
            finished,
        } = match self.executor.spawn(request) {
            Ok(running) => running,
            Err(error) => return spawn_failed(job, error),
        };
        let (cancels, cancel_rx) = mpsc::unbounded_channel();
        let ended = Arc::new(AtomicBool::new(false));
        tokio::spawn(supervise(
            job.clone(),
            finished,
            control.clone(),
            cancel_rx,
            self.reports.clone(),
            ended.clone(),
        ));
        self.jobs.insert(
            job.clone(),
            Supervised {
                control,
                cancels,
                ended,
            },
        );
        // Output only follows once the job's task first polls `finished`, which is
        // after the caller has this.
        JobReport::Started { job, pid }
    }

    /// SIGTERM the job's processes, then SIGKILL them after `grace` unless they ended.
    /// A second cancel can only shorten the grace. Unknown or ended jobs are ignored:
    /// what to make of that is the core's business.
    pub fn cancel(&mut self, job: &JobRef, grace: Duration) {
        self.prune();
        match self.jobs.get(job) {
            Some(supervised) => {
                // A closed channel means the job's task is done: nothing left to stop.
                let _ = supervised.cancels.send(grace);
            }
            None => {
                debug!(job = %job.job_id, attempt = job.attempt, "cancel for a job with no process here")
            }
        }
    }

    /// SIGKILL every job's processes now (used at exit). Their `Exited` reports still
    /// follow while the runtime runs.
    pub fn kill_all(&mut self) {
        self.prune();
        if !self.jobs.is_empty() {
            warn!(count = self.jobs.len(), "killing every running job");
        }
        for supervised in self.jobs.values() {
            supervised.control.kill();
        }
    }

    /// Jobs started and not yet reported `Exited`.
    pub fn running(&self) -> usize {
        self.jobs
            .values()
            .filter(|supervised| !supervised.ended.load(Ordering::Acquire))
            .count()
    }

    fn prune(&mut self) {
        self.jobs
            .retain(|_, supervised| !supervised.ended.load(Ordering::Acquire));
    }
}

fn spawn_failed(job: JobRef, error: ExecutorError) -> JobReport {
    warn!(job = %job.job_id, attempt = job.attempt, %error, "job could not be started");
    JobReport::SpawnFailed {
        job,
        error: error.to_string(),
    }
}

/// A supervisor that goes away takes its jobs with it.
impl Drop for JobSupervisor {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Where a job is on the cancellation ladder.
#[derive(Debug, Clone, Copy)]
enum Ladder {
    Running,
    /// SIGTERM sent; SIGKILL at `kill_at` (`None`: a grace too long to represent).
    Terminating {
        kill_at: Option<Instant>,
    },
    Killed,
}

impl Ladder {
    fn cancel(self, grace: Duration, control: &dyn JobControl) -> Self {
        let kill_at = Instant::now().checked_add(grace);
        match self {
            Self::Running => {
                control.terminate();
                Self::Terminating { kill_at }
            }
            Self::Terminating { kill_at: earlier } => Self::Terminating {
                kill_at: match (earlier, kill_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            },
            Self::Killed => Self::Killed,
        }
    }

    fn kill_at(self) -> Option<Instant> {
        match self {
            Self::Terminating { kill_at } => kill_at,
            Self::Running | Self::Killed => None,
        }
    }
}

/// One job's task: drive it to its end, climbing the ladder when asked, then report.
async fn supervise(
    job: JobRef,
    mut finished: std::pin::Pin<Box<dyn std::future::Future<Output = JobEnd> + Send>>,
    control: Arc<dyn JobControl>,
    mut cancels: UnboundedReceiver<Duration>,
    reports: UnboundedSender<JobReport>,
    ended: Arc<AtomicBool>,
) {
    let mut ladder = Ladder::Running;
    let mut cancels_open = true;
    let end = loop {
        let kill_at = ladder.kill_at();
        tokio::select! {
            end = &mut finished => break end,
            grace = cancels.recv(), if cancels_open => match grace {
                Some(grace) => ladder = ladder.cancel(grace, &*control),
                // The supervisor is gone; its drop killed the job, which ends soon.
                None => cancels_open = false,
            },
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                control.kill();
                ladder = Ladder::Killed;
            }
        }
    };
    info!(job = %job.job_id, attempt = job.attempt, status = ?end.status, duration_ms = end.duration_ms, stdout_bytes = end.stdout_bytes, stderr_bytes = end.stderr_bytes, "job exited");
    // Before the report, so whoever reads `Exited` sees `running()` without this job.
    ended.store(true, Ordering::Release);
    let _ = reports.send(JobReport::Exited {
        job,
        status: end.status,
        duration_ms: end.duration_ms,
        stdout_bytes: end.stdout_bytes,
        stderr_bytes: end.stderr_bytes,
    });
}
