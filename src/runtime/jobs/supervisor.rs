/*!
The job supervisor: what the driver holds, the runner's side of every job. It starts
jobs through an executor (off the loop: `start`, then `launched`), finds the jobs of an
earlier run, runs the cancellation ladder, renews the jobs' leases, and sends one
stream of `JobReport`s. Each job gets
one task that owns its ladder and reports its end; the supervisor keeps only what it
needs to reach that task, and to end the jobs that must end with the runner.

(On Unix each job also has a supervisor process of its own, which outlives the runner:
`supervised/`. This one lives and dies with the runner.)
*/

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::protocol::{ExitStatus, JobRef, JobSpec, SessionParams};

use super::executor::{
    Executor, ExecutorError, FindRequest, Finding, JobControl, JobEnd, OutputProgress, RunningJob,
    SpawnRequest,
};
use super::output::OutputSink;
use super::process::{JobsLayout, ProcessExecutor};
use super::report::{FoundState, JobReport};

pub struct JobSupervisor {
    executor: Arc<dyn Executor>,
    reports: UnboundedSender<JobReport>,
    jobs: HashMap<JobRef, Supervised>,
    /// Jobs whose launch `start` began and `launched` has not taken yet.
    launching: HashMap<JobRef, Pending>,
    /// How long a job may go on without a runner: the last lease the core granted.
    lease: Duration,
}

/// What a launch ended with: handed from its task to `launched`.
pub struct Launched {
    job: JobRef,
    result: Result<RunningJob, ExecutorError>,
}

/// What was asked of a job while it was being launched, done once it runs.
#[derive(Default)]
struct Pending {
    /// The lease its launch carried; renewed at once if the core granted another.
    lease: Option<Duration>,
    /// The first cancel's reason, with the shortest grace asked.
    cancel: Option<(String, Duration)>,
}

/// What the supervisor keeps of a started job.
struct Supervised {
    control: Arc<dyn JobControl>,
    /// To the job's task: start the ladder with this grace, for this reason.
    cancels: UnboundedSender<(Duration, String)>,
    /// Set once the core asked for the job to stop: such a job ends with the runner.
    cancelling: bool,
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
            launching: HashMap::new(),
            lease: Duration::from_millis(SessionParams::default().runner_lost_threshold_ms),
        }
    }

    pub fn executor_name(&self) -> &'static str {
        self.executor.name()
    }

    /// Whether the executor can run jobs here; call before taking any.
    pub fn preflight(&self) -> Result<(), ExecutorError> {
        self.executor.preflight()
    }

    /// Make a job's folder ready before its process starts (for its inputs).
    pub fn prepare_folder(
        &self,
        spec: &JobSpec,
    ) -> Result<super::executor::PreparedFolder, ExecutorError> {
        self.executor.prepare_folder(spec)
    }

    /// The `work/` of a job (for its outputs).
    pub fn work_folder(
        &self,
        job: &JobRef,
    ) -> Result<super::executor::PreparedFolder, ExecutorError> {
        self.executor.work_folder(job)
    }

    /// Called when the runner is idle: the executor prepares for the next start then,
    /// never on a job's way to `job_started`.
    pub fn prepare_ahead(&self) {
        self.executor.prepare_ahead();
    }

    /// Start a job and wait for its start. Returns how that went, `Started` or
    /// `SpawnFailed`. After `Started`, the job's output and its `Exited` come through
    /// the reports channel. Never panics on a bad spec; must be called from inside a
    /// tokio runtime. (The driver uses `start`, which does not wait.)
    pub fn spawn(&mut self, spec: &JobSpec) -> JobReport {
        let job = spec.job_ref();
        let request = match self.request(spec, false) {
            Ok(request) => request,
            Err(error) => return spawn_failed(job, error),
        };
        let result = self.executor.spawn(request);
        self.launched(Launched { job, result })
    }

    /// Start a job without waiting for it: the launch (a supervisor process's answer,
    /// a millisecond or two) is awaited in a task of its own (`Executor::spawn_later`),
    /// so the loop goes on with other jobs' events and starts meanwhile, and several
    /// jobs start at once. What came of it goes to `deliver`, to be handed back to
    /// `launched`. Returns a report at once only when the job cannot be started at all.
    /// `folder_ready`: `prepare_folder` made the job's folder for this start.
    pub fn start(
        &mut self,
        spec: &JobSpec,
        folder_ready: bool,
        deliver: impl FnOnce(Launched) + Send + 'static,
    ) -> Option<JobReport> {
        let job = spec.job_ref();
        let request = match self.request(spec, folder_ready) {
            Ok(request) => request,
            Err(error) => return Some(spawn_failed(job, error)),
        };
        let pending = Pending {
            lease: Some(request.lease),
            cancel: None,
        };
        self.launching.insert(job.clone(), pending);
        let spawning = self.executor.clone().spawn_later(request);
        drop(tokio::spawn(async move {
            let result = spawning.await;
            deliver(Launched { job, result });
        }));
        None
    }

    /// The end of a launch `start` began: a started job is followed from now on (and
    /// asked to stop, if that was asked meanwhile). `Started` or `SpawnFailed`.
    pub fn launched(&mut self, launched: Launched) -> JobReport {
        let Launched { job, result } = launched;
        let pending = self.launching.remove(&job).unwrap_or_default();
        let running = match result {
            Ok(running) => running,
            Err(error) => return spawn_failed(job, error),
        };
        let pid = running.pid;
        if pending.lease.is_some_and(|lease| lease != self.lease) {
            running.control.renew(self.lease);
        }
        self.watch(&job, running);
        if let Some((reason, grace)) = pending.cancel {
            self.cancel(&job, &reason, grace);
        }
        // Output only follows once the job's task first polls `finished`, which is
        // after the caller has this.
        JobReport::Started { job, pid }
    }

    /// Launches begun and not yet handed back to `launched`.
    pub fn launching(&self) -> usize {
        self.launching.len()
    }

    /// Whether this job's launch is in flight.
    pub fn is_launching(&self, job: &JobRef) -> bool {
        self.launching.contains_key(job)
    }

    /// What a launch needs, or why there is none: the same attempt twice is the one
    /// thing worse than not running it.
    fn request(
        &mut self,
        spec: &JobSpec,
        folder_ready: bool,
    ) -> Result<SpawnRequest, ExecutorError> {
        self.prune();
        let job = spec.job_ref();
        if self.jobs.contains_key(&job) || self.launching.contains_key(&job) {
            return Err(ExecutorError::AlreadyRunning {
                job_id: job.job_id,
                attempt: job.attempt,
            });
        }
        Ok(SpawnRequest {
            spec: spec.clone(),
            output: OutputSink::new(job.clone(), self.reports.clone()),
            lease: self.lease,
            folder_ready,
        })
    }

    /// At start: what became of a job the previous run started, as reports for the
    /// driver to take before anything else (`Found`, after `Started` when the store
    /// lacks the job's start; for a lost job, its `Exited` with an unknown status). A
    /// job that runs or ended is followed from there: its output from where the outbox
    /// stopped, then its end.
    pub fn reattach(
        &mut self,
        spec: &JobSpec,
        pid: Option<u32>,
        progress: OutputProgress,
    ) -> Vec<JobReport> {
        let job = spec.job_ref();
        let request = FindRequest {
            spec: spec.clone(),
            pid,
            progress,
            output: OutputSink::new(job.clone(), self.reports.clone()),
        };
        let mut reports = Vec::new();
        let (state, cancel) = match self.executor.find(request) {
            Finding::Running {
                running,
                elapsed_ms,
                cancel,
                started_pid,
            } => {
                reports.extend(started_pid.map(|pid| JobReport::Started {
                    job: job.clone(),
                    pid,
                }));
                self.watch(&job, running);
                (FoundState::Running { elapsed_ms }, cancel)
            }
            Finding::Ended {
                running,
                cancel,
                started_pid,
            } => {
                reports.extend(started_pid.map(|pid| JobReport::Started {
                    job: job.clone(),
                    pid,
                }));
                self.watch(&job, running);
                (FoundState::Ended, cancel)
            }
            Finding::Lost => (FoundState::Lost, None),
        };
        reports.push(JobReport::Found {
            job: job.clone(),
            state,
            cancel,
        });
        if state == FoundState::Lost {
            reports.push(JobReport::Exited {
                job,
                status: ExitStatus::Unknown,
                duration_ms: 0,
                stdout_bytes: 0,
                stderr_bytes: 0,
                cancel: None,
                usage: crate::protocol::JobUsage::default(),
            });
        }
        reports
    }

    /// After every `reattach`: whatever the executor keeps of jobs the store does not
    /// hold is ended and forgotten.
    pub fn forget_others(&self, known: &[JobRef]) {
        self.executor.forget_others(known);
    }

    /// One task per job: its ladder and its end.
    fn watch(&mut self, job: &JobRef, running: RunningJob) {
        let RunningJob {
            control, finished, ..
        } = running;
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
                cancelling: false,
                ended,
            },
        );
    }

    /// SIGTERM the job's processes, then SIGKILL them after `grace` unless they ended.
    /// A second cancel can only shorten the grace. `reason` is recorded with the job's
    /// end where the backend keeps it (its supervisor process). Unknown or ended jobs
    /// are ignored: what to make of that is the core's business.
    pub fn cancel(&mut self, job: &JobRef, reason: &str, grace: Duration) {
        self.prune();
        if let Some(pending) = self.launching.get_mut(job) {
            let cancel = pending
                .cancel
                .get_or_insert_with(|| (reason.to_owned(), grace));
            cancel.1 = cancel.1.min(grace);
            return;
        }
        match self.jobs.get_mut(job) {
            Some(supervised) => {
                supervised.cancelling = true;
                // A closed channel means the job's task is done: nothing left to stop.
                let _ = supervised.cancels.send((grace, reason.to_owned()));
            }
            None => {
                debug!(job = %job.job_id, attempt = job.attempt, "cancel for a job with no process here")
            }
        }
    }

    /// The session is alive: every job may go on for `within` more without a runner,
    /// and so may the jobs started from now on.
    pub fn renew(&mut self, within: Duration) {
        self.prune();
        self.lease = within;
        for supervised in self.jobs.values() {
            supervised.control.renew(within);
        }
    }

    /// The runner exits: jobs the core asked to stop are killed now; the others stay
    /// with their supervisor processes, where the backend has them (else they are
    /// killed too). Returns how many were left running.
    pub fn end_at_exit(&mut self) -> usize {
        self.prune();
        if !self.executor.outlives_runner() {
            self.kill_all();
            return 0;
        }
        let mut left = 0;
        for supervised in self.jobs.values() {
            if supervised.cancelling {
                supervised.control.kill();
            } else {
                left += 1;
            }
        }
        if left > 0 {
            info!(
                jobs = left,
                "leaving running jobs to their supervisors; the next start reattaches them"
            );
        }
        left
    }

    /// SIGKILL every job's processes now. Their `Exited` reports still follow while
    /// the runtime runs.
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

/// A job supervisor that goes away takes its jobs with it, unless they have
/// supervisor processes of their own that keep them.
impl Drop for JobSupervisor {
    fn drop(&mut self) {
        if !self.executor.outlives_runner() {
            self.kill_all();
        }
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
    fn cancel(self, grace: Duration, reason: &str, control: &dyn JobControl) -> Self {
        let kill_at = Instant::now().checked_add(grace);
        match self {
            Self::Running => {
                control.terminate(grace, reason);
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
    mut cancels: UnboundedReceiver<(Duration, String)>,
    reports: UnboundedSender<JobReport>,
    ended: Arc<AtomicBool>,
) {
    let mut ladder = Ladder::Running;
    let mut cancels_open = true;
    let end = loop {
        let kill_at = ladder.kill_at();
        tokio::select! {
            end = &mut finished => break end,
            cancel = cancels.recv(), if cancels_open => match cancel {
                Some((grace, reason)) => ladder = ladder.cancel(grace, &reason, &*control),
                // The job supervisor is gone (the runner stops); the job is either
                // killed with it or kept by its supervisor process.
                None => cancels_open = false,
            },
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                control.kill();
                ladder = Ladder::Killed;
            }
        }
    };
    let usage = end.usage.unwrap_or_default();
    info!(job = %job.job_id, attempt = job.attempt, status = ?end.status, duration_ms = end.duration_ms, stdout_bytes = end.stdout_bytes, stderr_bytes = end.stderr_bytes, user_us = usage.user_us, system_us = usage.system_us, max_rss_kib = usage.max_rss_kib, "job exited");
    // Before the report, so whoever reads `Exited` sees `running()` without this job.
    ended.store(true, Ordering::Release);
    let _ = reports.send(JobReport::Exited {
        job,
        status: end.status,
        duration_ms: end.duration_ms,
        stdout_bytes: end.stdout_bytes,
        stderr_bytes: end.stderr_bytes,
        cancel: end.cancel,
        usage: end
            .usage
            .map(super::executor::ProcessUsage::figures)
            .unwrap_or_default(),
    });
}
