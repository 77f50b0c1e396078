/*!
The operator's hooks: runs the executable configured for a hook point when the core
asks (`Effect::RunHook`), off the loop, and reports its end (`Event::HookFinished`).

Each hook runs with a clean environment: `PATH`, `HOME`, `LANG`, and the documented
`FYN_*` variables (the hook, the runner's id and state, the job and its attempt, the
outcome) — never the runner's own environment, so no token or other secret of the
runner's reaches it. It runs as `job_user` where jobs do, in its own process group, from
`/`, with standard input closed. Its output goes to the runner's log, line by line, at
most [`LOGGED_BYTES`] per stream (the rest is read and dropped, so a chatty hook never
blocks on a full pipe). Past its timeout, or when its job is asked to stop (`pre_job`),
its process group is killed.

Owns: the hook processes and their bookkeeping. Must not: decide whether a hook runs
or what its end means (the core), or wait for a hook on the loop.
*/

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::core::{Event, HookCall, HookOutcome, HookPoint};
use crate::protocol::{ExitStatus, JobRef};
use crate::runtime::jobs::{JobAccount, default_path};

/// Output of one stream logged per hook run; the rest is read and dropped.
pub const LOGGED_BYTES: usize = 16 * 1024;

/// The hooks an operator configured: which executable at which point, and how long each
/// run may take.
#[derive(Debug, Clone, Default)]
pub struct HookSettings {
    pub executables: BTreeMap<HookPoint, PathBuf>,
    pub timeout: Duration,
}

impl HookSettings {
    /// The points with an executable, for the core's boot record.
    pub fn points(&self) -> Vec<HookPoint> {
        self.executables.keys().copied().collect()
    }
}

/// What a hook is told about the runner (besides what the call carries).
#[derive(Debug, Clone, Default)]
struct RunnerFacts {
    runner_id: String,
    name: String,
    /// The lifecycle state when the hook was asked for.
    state: String,
    /// Where the job's folder is (job hooks; for `pre_job` it does not exist yet).
    job_dir: Option<PathBuf>,
}

/// The hooks in flight.
/// Where a hook's end goes: the loop's input, as the event the core expects.
pub type HookSink = std::sync::Arc<dyn Fn(Event) + Send + Sync>;

pub struct HookRunner {
    settings: HookSettings,
    account: Option<JobAccount>,
    /// The runner's name and its jobs' folder, for the hooks' variables.
    name: String,
    jobs_root: PathBuf,
    finished: HookSink,
    /// A way to stop each `pre_job` hook in flight, by job.
    pre_jobs: BTreeMap<JobRef, oneshot::Sender<()>>,
    running: usize,
}

impl HookRunner {
    /// `finished` takes each hook's end, as the event the core expects.
    pub fn new(
        settings: HookSettings,
        account: Option<JobAccount>,
        (name, jobs_root): (String, PathBuf),
        finished: HookSink,
    ) -> Self {
        Self {
            settings,
            account,
            name,
            jobs_root,
            finished,
            pre_jobs: BTreeMap::new(),
            running: 0,
        }
    }

    /// How long one hook may run.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Hooks started and not yet reported finished (see [`HookRunner::finished`]).
    pub fn running(&self) -> usize {
        self.running
    }

    /// Start `call`'s hook, telling it the runner's id and its lifecycle `state`.
    /// Without an executable for it (the core only asks for configured hooks, so only
    /// a bug gets here) it is reported failed at once.
    pub fn run(&mut self, call: HookCall, runner_id: &str, state: &str) {
        let point = call.point();
        let job = call.job().cloned();
        let facts = RunnerFacts {
            runner_id: runner_id.to_owned(),
            name: self.name.clone(),
            state: state.to_owned(),
            job_dir: job
                .as_ref()
                .and_then(|job| crate::runtime::jobs::job_dir(&self.jobs_root, job).ok()),
        };
        self.running += 1;
        let Some(program) = self.settings.executables.get(&point).cloned() else {
            let outcome = HookOutcome::Failed {
                reason: "no executable is configured for it".into(),
            };
            (self.finished)(hook_finished(point, job, outcome));
            return;
        };
        let (stop_tx, stop) = oneshot::channel();
        if let (HookPoint::PreJob, Some(job)) = (point, &job) {
            self.pre_jobs.insert(job.clone(), stop_tx);
        }
        let mut command = tokio::process::Command::new(&program);
        command
            .env_clear()
            .envs(environment(&call, &facts, self.account.as_ref()))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        if let Some(account) = &self.account {
            account.apply(&mut command);
        }
        let timeout = self.settings.timeout;
        let finished = self.finished.clone();
        info!(hook = point.name(), program = %program.display(), job = ?job, "running hook");
        tokio::spawn(async move {
            let outcome = supervise(command, point, timeout, stop).await;
            match &outcome {
                HookOutcome::Passed => info!(hook = point.name(), "hook passed"),
                HookOutcome::Failed { reason } => {
                    warn!(hook = point.name(), %reason, "hook failed");
                }
            }
            finished(hook_finished(point, job, outcome));
        });
    }

    /// A hook's end reached the loop.
    pub fn finished(&mut self, point: HookPoint, job: Option<&JobRef>) {
        self.running = self.running.saturating_sub(1);
        if let (HookPoint::PreJob, Some(job)) = (point, job) {
            self.pre_jobs.remove(job);
        }
    }

    /// The job was asked to stop: a `pre_job` hook still running for it is killed (its
    /// end is then reported failed, and the core ends the job unstarted).
    pub fn stop_pre_job(&mut self, job: &JobRef) {
        if let Some(stop) = self.pre_jobs.remove(job) {
            let _ = stop.send(());
        }
    }

    /// The runner is exiting: `pre_job` hooks are killed (their jobs will never start).
    pub fn stop_pre_jobs(&mut self) {
        for (_, stop) in std::mem::take(&mut self.pre_jobs) {
            let _ = stop.send(());
        }
    }
}

fn hook_finished(hook: HookPoint, job: Option<JobRef>, outcome: HookOutcome) -> Event {
    Event::HookFinished { hook, job, outcome }
}

/// The documented variables, and nothing of the runner's own environment.
fn environment(
    call: &HookCall,
    facts: &RunnerFacts,
    account: Option<&JobAccount>,
) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_owned(),
            default_path().to_string_lossy().into_owned(),
        ),
        ("HOME".to_owned(), "/".to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("FYN_HOOK".to_owned(), call.point().name().to_owned()),
        ("FYN_RUNNER_ID".to_owned(), facts.runner_id.clone()),
        ("FYN_RUNNER_NAME".to_owned(), facts.name.clone()),
        ("FYN_RUNNER_STATE".to_owned(), facts.state.clone()),
    ];
    if let Some(account) = account {
        for (name, value) in account.environment() {
            env.push((name.to_owned(), value.to_owned()));
        }
    }
    if let Some(job) = call.job() {
        env.push(("FYN_JOB_ID".to_owned(), job.job_id.clone()));
        env.push(("FYN_JOB_ATTEMPT".to_owned(), job.attempt.to_string()));
    }
    if let Some(dir) = &facts.job_dir {
        env.push(("FYN_JOB_DIR".to_owned(), dir.to_string_lossy().into_owned()));
    }
    match call {
        HookCall::PostJob {
            outcome, status, ..
        } => {
            let outcome = serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            env.push(("FYN_JOB_OUTCOME".to_owned(), outcome));
            match status {
                ExitStatus::Exited { code } => {
                    env.push(("FYN_JOB_EXIT_CODE".to_owned(), code.to_string()));
                }
                ExitStatus::Signaled { signal } => {
                    env.push(("FYN_JOB_SIGNAL".to_owned(), signal.to_string()));
                }
                ExitStatus::Unknown => {}
            }
        }
        HookCall::OnStopped { exit_code } => {
            env.push(("FYN_EXIT_CODE".to_owned(), exit_code.to_string()));
        }
        _ => {}
    }
    env
}

/// Start the hook, log its output, and wait for its end, its timeout or a stop.
async fn supervise(
    mut command: tokio::process::Command,
    point: HookPoint,
    timeout: Duration,
    stop: oneshot::Receiver<()>,
) -> HookOutcome {
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return HookOutcome::Failed {
                reason: format!("could not start: {error}"),
            };
        }
    };
    let pid = child.id();
    let out = child
        .stdout
        .take()
        .map(|o| tokio::spawn(log_lines(o, point, "stdout")));
    let err = child
        .stderr
        .take()
        .map(|e| tokio::spawn(log_lines(e, point, "stderr")));
    let ended = tokio::select! {
        status = child.wait() => match status {
            Ok(status) if status.success() => HookOutcome::Passed,
            Ok(status) => HookOutcome::Failed {
                reason: match status.code() {
                    Some(code) => format!("exited with {code}"),
                    None => format!("ended by {status}"),
                },
            },
            Err(error) => HookOutcome::Failed {
                reason: format!("could not be waited for: {error}"),
            },
        },
        () = tokio::time::sleep(timeout) => {
            kill_group(pid, &mut child).await;
            HookOutcome::Failed {
                reason: format!("timed out after {} s and was killed", timeout.as_secs()),
            }
        }
        Ok(()) = stop => {
            kill_group(pid, &mut child).await;
            HookOutcome::Failed {
                reason: "killed: its job was asked to stop".into(),
            }
        }
    };
    // Whatever the hook left holding its pipes is gone with its group; the loggers end.
    for logger in [out, err].into_iter().flatten() {
        let _ = logger.await;
    }
    ended
}

/// SIGKILL the hook's process group (so nothing it started outlives it), then reap it.
async fn kill_group(pid: Option<u32>, child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pgid) = pid
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|p| *p > 1)
    {
        // SAFETY: kill(2) on the group this hook leads (`process_group(0)`); the child
        // is not reaped yet, so the number cannot belong to anyone else.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    #[cfg(not(unix))]
    let _ = pid;
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// The longest line logged as one; a longer one is logged in pieces of this size.
const LINE_BYTES: usize = 4096;

/// Log a hook's output lines, at most [`LOGGED_BYTES`]; read the rest and drop it.
async fn log_lines(mut stream: impl AsyncRead + Unpin, point: HookPoint, name: &'static str) {
    let mut buffer = [0u8; 8192];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut logged = 0usize;
    let emit = |line: &mut Vec<u8>, logged: &mut usize| {
        if *logged < LOGGED_BYTES {
            let keep = line.len().min(LOGGED_BYTES - *logged);
            *logged += line.len();
            let text = String::from_utf8_lossy(&line[..keep]);
            info!(hook = point.name(), stream = name, "{}", text.trim_end());
            if *logged >= LOGGED_BYTES {
                info!(
                    hook = point.name(),
                    stream = name,
                    "hook output past {LOGGED_BYTES} bytes is not logged"
                );
            }
        }
        line.clear();
    };
    loop {
        let n = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if logged >= LOGGED_BYTES {
            continue;
        }
        for &byte in &buffer[..n] {
            if byte == b'\n' {
                emit(&mut line, &mut logged);
            } else {
                line.push(byte);
                if line.len() >= LINE_BYTES {
                    emit(&mut line, &mut logged);
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line, &mut logged);
    }
}
