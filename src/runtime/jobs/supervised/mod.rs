/*!
Unix: every job runs under a supervisor of its own (`program`, the hidden `fyn-runner
supervise`), so a job outlives the runner that started it. This is the runner's side:
starting a supervisor for a job, following its output in the logs, asking it to cancel,
kill or go on, reattaching to the supervisors an earlier run left, and ending those no
store knows.

- Supervisors are forked by one launcher process (`launcher`), which the runner
  starts from its binary with the first supervisor: a fork of a process that has
  started once costs a fraction of starting the binary again. Should the launcher be
  gone, a supervisor is executed, and the next one starts a new launcher.
- A supervisor is made ahead of time when the runner is idle (a spare, as the job
  folder is), so a job start costs a message to a process that is already up, not the
  start of one. It waits for its launch plan on its standard input and exits, unused,
  when the runner goes away. Its folder, with an empty lock and log, is made ahead
  too (`spare_dir`), so no file is created on a start's path.
- The runner talks to a supervisor on its socket: the supervisor says how far the logs
  got, the runner reads them by offset (`follow`) and sends its requests.
- Whether a supervisor lives is what its lock says (`flock`, which the kernel lets go
  of when it dies): never a pid alone.

Layout: `wire` is what both sides write and read; `program` is the supervisor itself,
`ready` what it makes before its plan comes, `spawn` how it starts the job,
`runner_service` its socket's service to runners and `reaping` the end of the job's
processes; `tree` is the supervisor's view of the job's processes. On the runner's
side, `pool` holds the supervisors waiting for a plan and `launcher` forks them;
`follow` is the reading of a job; `ending` ends the supervised jobs no store accounts
for, and all of them at uninstall.
*/

mod ending;
mod follow;
mod launcher;
mod logs;
mod pool;
pub mod program;
mod ready;
mod reaping;
mod runner_service;
mod spawn;
pub mod tree;
pub mod wire;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender};
use tracing::{debug, info, warn};

use crate::protocol::JobRef;
use crate::runtime::orphans::{self, Leader};

use super::executor::{ExecutorError, FindRequest, Finding, JobControl, RunningJob};
use super::output::OutputSink;
use super::spare_dir::{Contents, SpareDirs};
pub use ending::end_all;
use ending::end_supervised;
use follow::{Follow, Log};
use pool::{SupervisorPool, SupervisorProcess};
use wire::{
    AccountIds, ExitRecord, Folder, LaunchPlan, LogId, OsBytes, Reply, RunnerAsks, StartedRecord,
    SupervisorSays, WIRE_VERSION, line, read_record,
};

/// `fyn-runner supervise`: the launcher, when the runner started it as one, or a job's
/// supervisor. The process's exit code.
pub fn main() -> i32 {
    if std::env::var_os(launcher::LAUNCHER_ENV).is_some() {
        launcher::main()
    } else {
        program::main()
    }
}

/// `fyn-runner supervise` from `program` (the runner's own binary), as both the launcher
/// and an executed supervisor start: an empty environment and `/` as its folder (it
/// needs nothing of the runner's), no standard error, not killed with its handle. Its
/// command line reads `fyn-runner supervise` (`ps -ef`, `/proc/<pid>/cmdline`) whatever
/// path the binary was started from (on Linux `/proc/self/exe`, which reads as nothing
/// to an operator).
fn supervise_command(program: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .arg0("fyn-runner")
        .arg("supervise")
        .env_clear()
        .current_dir("/")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(false);
    command
}

/// Give this process the short name `ps -o comm`, `top` and `pstree` show (at most 15
/// bytes): without one, a process started from `/proc/self/exe` is called `exe`. The
/// runner keeps `fyn-runner`, so `pgrep -x fyn-runner` finds the runner alone.
fn name_this_process(name: &std::ffi::CStr) {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes) that
    // lives through the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// How long a supervisor may take to start a job and answer.
const REPLY_WITHIN: Duration = Duration::from_secs(30);

/// How long a live supervisor may take to write `started.json` or answer on its socket
/// when a runner reattaches (it does both right after starting its job).
const REATTACH_WITHIN: Duration = Duration::from_secs(5);

/// A job the process executor has prepared: everything decided, nothing started.
pub struct Launch {
    pub job: JobRef,
    pub program: PathBuf,
    pub argv0: String,
    pub args: Vec<String>,
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    pub cwd: PathBuf,
    pub account: Option<AccountIds>,
    pub output_limit_bytes: u64,
    pub cancel_grace: Duration,
    pub lease: Duration,
    /// stdout's log, then stderr's, made empty by the runner.
    pub logs: [PathBuf; 2],
}

/// A supervisor's folder made ahead: its lock and its log, empty (the supervisor
/// opens both, and creates them only when there was no spare).
const SPARE_FOLDER: Contents = Contents {
    folders: &[],
    files: &[Folder::LOCK, Folder::LOG],
    socket: None,
};

#[derive(Clone)]
pub struct Supervisors {
    jobs_root: PathBuf,
    /// Supervisor processes waiting for a plan, and where they come from.
    pool: SupervisorPool,
    /// The next supervisor's folder, made ahead (in `.supervisors/`).
    spare_folder: Arc<SpareDirs>,
}

impl Supervisors {
    pub fn new(program: PathBuf, jobs_root: PathBuf) -> Self {
        Self {
            spare_folder: Arc::new(SpareDirs::new(
                jobs_root.join(wire::SUPERVISORS_DIR),
                SPARE_FOLDER,
                None,
            )),
            jobs_root,
            pool: SupervisorPool::new(program),
        }
    }

    /// Whether supervisors can run here: their folder, the socket path's length, the
    /// program. The first spare comes with `prepare_ahead`, once jobs can arrive.
    pub fn preflight(&self) -> Result<(), ExecutorError> {
        if let Some(len) = wire::socket_path_too_long(&self.jobs_root) {
            return Err(ExecutorError::JobsRootTooLong {
                root: self.jobs_root.clone(),
                len,
                max: wire::MAX_SOCKET_PATH,
            });
        }
        let dir = self.jobs_root.join(wire::SUPERVISORS_DIR);
        crate::platform::create_dir_all(&dir, crate::platform::Access::Private).map_err(
            |source| ExecutorError::Io {
                op: "create",
                path: dir.clone(),
                source,
            },
        )?;
        if !self.pool.program().is_file() {
            return Err(ExecutorError::NoSupervisor {
                program: self.pool.program().to_owned(),
            });
        }
        Ok(())
    }

    /// Start a spare supervisor and make a spare folder for it if there is none, on
    /// blocking threads; returns at once.
    pub fn prepare_ahead(&self) {
        self.spare_folder.refill();
        self.pool.prepare_ahead();
    }

    /// Start `launch` under a supervisor and follow it. Returns once the job runs (its
    /// pid known), or why it does not; the supervisor's answer is waited for here.
    pub fn launch(&self, launch: Launch, output: OutputSink) -> Result<RunningJob, ExecutorError> {
        let start = self.ready_start(launch, output)?;
        let reply = match self
            .plan_to_supervisor(&start.plan)?
            .wait_for_answer(REPLY_WITHIN)
        {
            Ok(reply) => reply,
            Err(error) => {
                spare_did_not_answer(&error);
                self.plan_to_supervisor(&start.plan)?
                    .wait_for_answer(REPLY_WITHIN)
                    .map_err(|error| not_answered(&error))?
            }
        };
        start.running(reply)
    }

    /// `launch`, with the supervisor's answer awaited on the caller's tokio runtime
    /// rather than on a thread of its own: the plan is handed over now, and the runner's
    /// loop is woken by the answer itself, two thread hops fewer on a job start's path.
    pub fn launch_async(
        &self,
        launch: Launch,
        output: OutputSink,
    ) -> impl Future<Output = Result<RunningJob, ExecutorError>> + Send + 'static {
        let first = self.ready_start(launch, output).and_then(|start| {
            let process = self.plan_to_supervisor(&start.plan)?;
            Ok((start, process))
        });
        let supervisors = self.clone();
        async move {
            let (start, process) = first?;
            let reply = match process.answer(REPLY_WITHIN).await {
                Ok(reply) => reply,
                Err(error) => {
                    spare_did_not_answer(&error);
                    supervisors
                        .plan_to_supervisor(&start.plan)?
                        .answer(REPLY_WITHIN)
                        .await
                        .map_err(|error| not_answered(&error))?
                }
            };
            start.running(reply)
        }
    }

    /// What a start needs before a supervisor is asked: the supervisor's folder
    /// claimed, the job's logs opened for reading, the plan's line.
    fn ready_start(&self, launch: Launch, output: OutputSink) -> Result<Start, ExecutorError> {
        let folder = Folder::of(&self.jobs_root, &launch.job);
        claim_folder(&folder, &launch.job, &self.spare_folder)?;
        let io_error = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| ExecutorError::Io { op, path, source }
        };
        let [stdout, stderr] = &launch.logs;
        let logs = [
            LogId::of(stdout).map_err(io_error("inspect", stdout))?,
            LogId::of(stderr).map_err(io_error("inspect", stderr))?,
        ];
        let readers = [Log::open(&logs[0]), Log::open(&logs[1])];
        let plan = LaunchPlan {
            version: WIRE_VERSION,
            job: launch.job.clone(),
            dir: OsBytes::of(folder.path().as_os_str()),
            program: OsBytes::of(launch.program.as_os_str()),
            argv0: OsBytes::of(launch.argv0.as_ref()),
            args: launch
                .args
                .iter()
                .map(|a| OsBytes::of(a.as_ref()))
                .collect(),
            env: launch
                .env
                .iter()
                .map(|(name, value)| (OsBytes::of(name), OsBytes::of(value)))
                .collect(),
            cwd: OsBytes::of(launch.cwd.as_os_str()),
            account: launch.account.clone(),
            output_limit_bytes: launch.output_limit_bytes,
            cancel_grace_ms: millis(launch.cancel_grace),
            lease_ms: millis(launch.lease),
            logs,
        };
        Ok(Start {
            job: launch.job,
            folder,
            readers,
            output,
            output_limit_bytes: launch.output_limit_bytes,
            plan: line(&plan),
        })
    }

    /// The spare (or a supervisor started now), with `plan` handed to it.
    fn plan_to_supervisor(&self, plan: &[u8]) -> Result<SupervisorProcess, ExecutorError> {
        let mut process = self.pool.take().map_err(|source| ExecutorError::Spawn {
            program: self.pool.program().display().to_string(),
            source,
        })?;
        // A supervisor that died before it read the plan fails here or in its answer
        // alike: both are retried once.
        if let Err(error) = process.send_plan(plan) {
            debug!(%error, "the supervisor did not take the plan");
        }
        Ok(process)
    }

    /// What became of a job an earlier run started (see `Finding`).
    pub fn find(&self, request: FindRequest) -> Finding {
        let job = request.spec.job_ref();
        let folder = Folder::of(&self.jobs_root, &job);
        let legacy = request.pid.map(|pid| Leader {
            pid,
            start_ticks: None,
        });
        if !folder.lock().exists() {
            // Started before supervisors, or never got as far as one.
            orphans::end_leftovers(&job, legacy);
            return Finding::Lost;
        }
        let started = wait_for_started(&folder, supervisor_lives(&folder));
        let leader = started.as_ref().map(|s| Leader {
            pid: s.pid,
            start_ticks: s.start_ticks,
        });
        // A job whose `job_started` the store does not hold (the runner died between
        // the supervisor's answer and its commit) is reported started now.
        let started_pid = match (request.pid, &started) {
            (None, Some(record)) => Some(record.pid),
            _ => None,
        };
        let readers = match &started {
            Some(record) => [Log::open(&record.logs[0]), Log::open(&record.logs[1])],
            None => [Log::Missing, Log::Missing],
        };
        let follow = |asks_rx| {
            Follow::new(
                job.clone(),
                folder.clone(),
                readers,
                request.output.clone(),
                request.progress,
                request.spec.output_limit_bytes,
                asks_rx,
            )
        };
        if supervisor_lives(&folder) {
            // No lease renewal here: only a session that proves alive renews it, so a
            // runner that restarts but cannot reach the API does not keep a job the
            // API is about to give away.
            let (asks, asks_rx) = mpsc::unbounded_channel();
            let (stream, cancel) = match hello(&folder) {
                Some((stream, cancel)) => (Some(stream), cancel),
                None => (None, None),
            };
            let elapsed_ms = started.as_ref().map_or(0, |s| {
                wire::monotonic_ms().saturating_sub(s.started_mono_ms)
            });
            let pid = started.as_ref().map_or(0, |s| s.pid);
            return Finding::Running {
                running: RunningJob {
                    pid,
                    control: Arc::new(SupervisorControl { asks }),
                    finished: Box::pin(follow(asks_rx).run(stream)),
                },
                elapsed_ms,
                cancel,
                started_pid,
            };
        }
        match read_record::<ExitRecord>(&folder.exit()) {
            Ok(Some(record)) => {
                let (asks, asks_rx) = mpsc::unbounded_channel();
                Finding::Ended {
                    running: RunningJob {
                        pid: started.as_ref().map_or(0, |s| s.pid),
                        control: Arc::new(SupervisorControl { asks }),
                        finished: Box::pin(follow(asks_rx).run(None)),
                    },
                    cancel: record.cancel,
                    started_pid,
                }
            }
            found => {
                if let Err(error) = found {
                    warn!(job = %job.job_id, %error, "the job's exit record cannot be read");
                }
                orphans::end_leftovers(&job, leader.or(legacy));
                Finding::Lost
            }
        }
    }

    /// Supervisors of jobs not in `known` (the store was restored from an older copy,
    /// or a job's end was recorded but its folder stayed): a live one has its job
    /// ended, since no store accounts for it; every such folder goes.
    pub fn forget_others(&self, known: &[JobRef]) {
        let keys: Vec<String> = known.iter().map(wire::key).collect();
        let dir = self.jobs_root.join(wire::SUPERVISORS_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keys.contains(&name) || !entry.path().is_dir() {
                continue;
            }
            let folder = Folder::at(entry.path());
            if supervisor_lives(&folder) {
                warn!(folder = %folder.path().display(), "a supervisor runs a job this runner's store does not know of; ending it");
                end_supervised(&folder);
            }
            let _ = std::fs::remove_dir_all(folder.path());
        }
    }
}

/// A start made ready for a supervisor (`Supervisors::ready_start`).
struct Start {
    job: JobRef,
    folder: Folder,
    readers: [Log; 2],
    output: OutputSink,
    output_limit_bytes: u64,
    /// The launch plan's line.
    plan: Vec<u8>,
}

impl Start {
    /// The job as its supervisor answered: running and followed, or why not.
    fn running(self, reply: Reply) -> Result<RunningJob, ExecutorError> {
        let pid = match reply {
            Reply::Started { pid } => pid,
            Reply::Failed { error } => return Err(ExecutorError::NotStarted { why: error }),
        };
        info!(job = %self.job.job_id, attempt = self.job.attempt, pid, "job started under its supervisor");
        let (asks, asks_rx) = mpsc::unbounded_channel();
        let follow = Follow::new(
            self.job,
            self.folder,
            self.readers,
            self.output,
            Default::default(),
            self.output_limit_bytes,
            asks_rx,
        );
        Ok(RunningJob {
            pid,
            control: Arc::new(SupervisorControl { asks }),
            finished: Box::pin(follow.run(None)),
        })
    }
}

fn spare_did_not_answer(error: &io::Error) {
    debug!(%error, "the spare supervisor did not take the plan; starting another");
}

fn not_answered(error: &io::Error) -> ExecutorError {
    ExecutorError::NotStarted {
        why: format!("the job's supervisor did not answer: {error}"),
    }
}

/// Make the supervisor's folder for a new attempt, clearing what a dead one left. One
/// whose lock is held means that attempt runs already.
fn claim_folder(folder: &Folder, job: &JobRef, spare: &SpareDirs) -> Result<(), ExecutorError> {
    if folder.path().exists() {
        if supervisor_lives(folder) {
            return Err(ExecutorError::AlreadyRunning {
                job_id: job.job_id.clone(),
                attempt: job.attempt,
            });
        }
        let _ = std::fs::remove_dir_all(folder.path());
    }
    if spare.take_into(folder.path()).is_some() {
        return Ok(());
    }
    crate::platform::create_dir_all(folder.path(), crate::platform::Access::Private).map_err(
        |source| ExecutorError::Io {
            op: "create",
            path: folder.path().to_owned(),
            source,
        },
    )
}

/// Whether the supervisor of `folder` lives: it holds its lock.
pub(super) fn supervisor_lives(folder: &Folder) -> bool {
    let Ok(lock) = File::options().read(true).open(folder.lock()) else {
        return false;
    };
    match lock.try_lock_shared() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(error)) => {
            warn!(%error, lock = %folder.lock().display(), "cannot test a supervisor's lock; taking it for alive");
            true
        }
    }
}

/// `started.json`, waiting a little for a supervisor that is alive but has not
/// written it yet.
fn wait_for_started(folder: &Folder, alive: bool) -> Option<StartedRecord> {
    let tries = if alive { 250 } else { 1 };
    for _ in 0..tries {
        match read_record::<StartedRecord>(&folder.started()) {
            Ok(Some(record)) => return Some(record),
            Ok(None) => std::thread::sleep(REATTACH_WITHIN / 250),
            Err(error) => {
                warn!(%error, "cannot read a supervisor's started.json");
                return None;
            }
        }
    }
    None
}

/// Connect to a live supervisor and read its hello: the connection (for `follow`) and
/// the reason of a cancel it was given, if any.
fn hello(folder: &Folder) -> Option<(tokio::net::UnixStream, Option<String>)> {
    let stream = std::os::unix::net::UnixStream::connect(folder.socket()).ok()?;
    stream.set_read_timeout(Some(REATTACH_WITHIN)).ok()?;
    // Byte by byte up to the newline, so nothing after the hello is read here.
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    let mut reader = &stream;
    while io::Read::read(&mut reader, &mut byte).ok()? == 1 && byte[0] != b'\n' {
        text.push(byte[0]);
    }
    let cancel = match serde_json::from_slice(&text).ok()? {
        SupervisorSays::Hello {
            version, cancel, ..
        } if version == WIRE_VERSION => cancel,
        _ => return None,
    };
    stream.set_read_timeout(None).ok()?;
    stream.set_nonblocking(true).ok()?;
    let stream = tokio::net::UnixStream::from_std(stream).ok()?;
    Some((stream, cancel))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The runner's requests to one supervisor, queued for its connection (which a
/// reattach may still be opening).
struct SupervisorControl {
    asks: UnboundedSender<RunnerAsks>,
}

impl JobControl for SupervisorControl {
    fn terminate(&self, grace: Duration, reason: &str) {
        let _ = self.asks.send(RunnerAsks::Cancel {
            grace_ms: millis(grace),
            reason: reason.to_owned(),
        });
    }

    fn kill(&self) {
        let _ = self.asks.send(RunnerAsks::Kill);
    }

    fn renew(&self, within: Duration) {
        let _ = self.asks.send(RunnerAsks::Lease {
            within_ms: millis(within),
        });
    }
}
