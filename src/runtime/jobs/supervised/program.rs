/*!
`fyn-runner supervise`: a job's supervisor. One process per job, started by the runner
from its own binary, that owns the job from its start to its end and needs nothing
from the runner once the job runs, so the job goes on while the runner restarts,
crashes or is upgraded.

What it does, in order: leaves the runner's session and process group (`setsid`), so
no terminal, service stop or signal to the runner's group reaches it; makes what needs
no plan (its runtime, without a thread yet; becomes a child subreaper on Linux; the
job's pipes and the child's stack; a rehearsal of the start's code on a sample plan),
since a spare supervisor does that while the runner is idle; reads its launch plan (one JSON
line on standard input); takes the lock in its folder, which it holds for as long as it
lives; checks the runner that sent the plan is still there (after a crash, a restarted
runner may already have judged this job lost); starts the job in a process group of its
own (dropping to the job's account, and asking the kernel to kill the job's main
process if the supervisor dies); answers the runner with the pid; waits (at most 2 ms)
for the runner to have read the answer, so that its own bookkeeping does not take a
core from the runner's report of the start; binds its socket; writes `started.json`.
Then,
until the job's main process ends: copies the job's stdout and stderr from their pipes
to the logs, at most `output_limit_bytes` each (the rest is read and dropped, so the
job never blocks on its output), tells every connected runner how far the logs got,
and obeys its requests (cancel with a grace, kill, renew the lease). When no runner
renews the lease in time, it ends the job itself: the API has given it away by then.
When the main process ends: SIGKILL to the group and to every descendant left, the
pipes read to their end, every child reaped, and `exit.json` written whole and synced
(status, byte counts, the cancel's reason, resource use). Then it exits.

The socket's service to runners is in `runner_service`; the end of the job's processes
(the sweep, the reaping, their resource use) in `reaping`.

Must not: talk to the network, read the runner's store or identity, or decide anything
about the job but what its plan and its runner's requests say.
*/

use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::protocol::ExitStatus;

use super::reaping::{children_usage, kill_everything_left, reap, reap_the_rest};
use super::runner_service::accept;
use super::tree;
use super::wire::{
    ExitRecord, Folder, LaunchPlan, Reply, RunnerAsks, Sizes, StartedRecord, StreamSize,
    WIRE_VERSION, line, monotonic_ms, write_record,
};

/// Once the job's processes are dead, how long its pipes may take to reach their end:
/// only a process that escaped the job (no subreaper on this system) can hold them.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// The supervisor's whole life; the process's exit code.
pub fn main() -> i32 {
    super::name_this_process(c"fyn-supervisor");
    // SAFETY: setsid and signal take and return integers only. setsid fails only for a
    // group leader, which a process the runner started without a group of its own is
    // not; either way the supervisor goes on.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // Files the supervisor makes (socket, records, its log) are its user's alone; the
    // job gets the mask back.
    // SAFETY: umask takes and returns a mode.
    let job_umask = unsafe { libc::umask(0o077) };
    let mut ready = super::ready::Ready::make();
    let plan = match read_plan() {
        Ok(plan) => plan,
        // No plan: the runner went away before sending one (a spare supervisor whose
        // runner stopped), or sent something this build cannot read.
        Err(error) => {
            if error.kind() != io::ErrorKind::UnexpectedEof {
                reply(&Reply::Failed {
                    error: format!("cannot read the launch plan: {error}"),
                });
            }
            return 2;
        }
    };
    let folder = Folder::at(plan.dir.path());
    log_to(&folder);
    if let Err(error) = &ready.subreaper {
        warn!(%error, "cannot become a child subreaper: a process that leaves the job's group may outlive it");
    }
    match start(&plan, &folder, job_umask, ready.ahead.take()) {
        Ok(Some((mut job, lock, leftovers))) => {
            reply(&Reply::Started { pid: job.pid });
            // What is left before the job is supervised is this process's own
            // bookkeeping, while the runner has the start to record and report. On
            // a machine of few cores the two compete, so this waits until the runner
            // has read the answer (it lets go of the plan's pipe then); bounded, since
            // a runner that never does only delays the socket.
            wait_for_hang_up(io::stdin().as_fd(), LET_GO_WITHIN);
            let dev_null = leftovers.into_dev_null();
            // Logged after the answer, which the job's start waits for.
            info!(job = %plan.job.job_id, attempt = plan.job.attempt, pid = job.pid, "job started");
            detach_standard_io(&dev_null);
            // The socket after the answer, not before: its bind was a fifth of a job
            // start's time here, and the runner retries its first connection every
            // millisecond while this process holds the lock. Before `started.json`,
            // so a runner that finds that record finds the socket too.
            job.listener = bind_socket(&folder)
                .map_err(|error| warn!(%error, "cannot bind the supervisor's socket; ending the job, which no runner could reach"))
                .ok();
            job.record_start(&plan, ready.start_ticks);
            supervise(plan, folder, job, lock, ready.runtime)
        }
        Ok(None) => 3,
        Err(error) => {
            warn!(%error, "the job could not be started");
            reply(&Reply::Failed { error });
            1
        }
    }
}

/// One line of JSON on standard input.
fn read_plan() -> io::Result<LaunchPlan> {
    let mut text = String::new();
    if io::stdin().lock().read_line(&mut text)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    LaunchPlan::parse(&text)
}

fn reply(reply: &Reply) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(&line(reply)).and_then(|()| out.flush());
}

/// The supervisor's own log lines go to `supervisor.log` in its folder: never to the
/// runner's standard error, which may be a terminal or a pipe that closes with it.
fn log_to(folder: &Folder) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(folder.log());
    if let Ok(file) = file {
        // SAFETY: dup2 onto standard error of a descriptor this process owns.
        unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) };
    }
}

/// Standard input and output were the runner's pipes: let go of them, so nothing of
/// the supervisor depends on the runner being there.
fn detach_standard_io(dev_null: &File) {
    // SAFETY: dup2 of a descriptor this process owns onto 0 and 1.
    unsafe {
        libc::dup2(dev_null.as_raw_fd(), libc::STDIN_FILENO);
        libc::dup2(dev_null.as_raw_fd(), libc::STDOUT_FILENO);
    }
}

/// A job that started, and what the supervisor holds of it.
struct Started {
    pid: u32,
    started_mono_ms: u64,
    /// Bound once the runner has its answer; `None` if that failed.
    listener: Option<std::os::unix::net::UnixListener>,
    /// The read ends of the job's standard output and error.
    stdout: OwnedFd,
    stderr: OwnedFd,
    logs: [File; 2],
}

impl Started {
    /// `started.json`, for a runner that comes later. Not synced: a power cut ends the
    /// supervisor too, and then there is nothing to reattach.
    fn record_start(&self, plan: &LaunchPlan, supervisor_start_ticks: Option<u64>) {
        let folder = Folder::at(plan.dir.path());
        let record = StartedRecord {
            version: WIRE_VERSION,
            job: plan.job.clone(),
            pid: self.pid,
            start_ticks: tree::stat_of(self.pid).map(|s| s.start_ticks),
            supervisor_pid: std::process::id(),
            supervisor_start_ticks,
            started_mono_ms: self.started_mono_ms,
            started_unix_ms: crate::runtime::status::unix_ms(),
            logs: plan.logs.clone(),
        };
        if let Err(error) = write_record(&folder.started(), &record, false) {
            warn!(%error, "cannot write started.json; a restarted runner cannot reattach this job");
        }
    }
}

/// Everything up to the job's start: the job, and the lock held for the supervisor's
/// whole life (let go of only once `exit.json` is written, since a runner that can
/// take it reads the record next). `Ok(None)`: the runner that asked is gone, so the
/// job is not started (a runner started since may have reported it lost already).
fn start(
    plan: &LaunchPlan,
    folder: &Folder,
    job_umask: libc::mode_t,
    ahead: Option<super::spawn::Ahead>,
) -> Result<Option<(Started, File, super::spawn::Leftovers)>, String> {
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(folder.lock())
        .map_err(|e| format!("cannot open {}: {e}", folder.lock().display()))?;
    take_lock(&lock).map_err(|e| format!("cannot lock {}: {e}", folder.lock().display()))?;
    if runner_gone() {
        info!(job = %plan.job.job_id, "the runner that sent the plan is gone; not starting the job");
        return Ok(None);
    }
    let logs = [open_log(plan, 0)?, open_log(plan, 1)?];
    let started_mono_ms = monotonic_ms();
    let cannot_start = |e| format!("cannot start {:?}: {e}", plan.argv0.os().to_string_lossy());
    let ahead = match ahead {
        Some(ahead) => ahead,
        None => super::spawn::Ahead::make().map_err(cannot_start)?,
    };
    let job = super::spawn::start_job(plan, job_umask, ahead).map_err(cannot_start)?;
    Ok(Some((
        Started {
            pid: job.pid,
            started_mono_ms,
            listener: None,
            stdout: job.stdout,
            stderr: job.stderr,
            logs,
        },
        lock,
        job.leftovers,
    )))
}

/// The supervisor's socket in its folder, where runners reach it.
fn bind_socket(folder: &Folder) -> io::Result<std::os::unix::net::UnixListener> {
    let _ = std::fs::remove_file(folder.socket());
    std::os::unix::net::UnixListener::bind(folder.socket()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind {}: {e}", folder.socket().display()),
        )
    })
}

/// The lock, exclusively. A runner testing whether a supervisor lives holds it shared
/// for a moment: that is waited out; a lock held longer is another supervisor's.
fn take_lock(lock: &File) -> io::Result<()> {
    for _ in 0..100 {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(error),
        }
    }
    Err(io::Error::other(
        "another supervisor holds it: this job attempt runs already",
    ))
}

/// How long the supervisor waits, after its answer, for the runner to read it.
const LET_GO_WITHIN: Duration = Duration::from_millis(2);

/// Until the other end of the pipe `read_end` is closed (`true`), or `within` passed.
fn wait_for_hang_up(read_end: BorrowedFd<'_>, within: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    let ms = libc::c_int::try_from(within.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll reads and writes the one pollfd given. With no events asked for, it
    // returns on the pipe's hang-up (or an error) or at the timeout.
    let ready = unsafe { libc::poll(&raw mut fd, 1, ms) };
    ready > 0 && fd.revents & libc::POLLHUP != 0
}

/// Whether the runner's end of standard input is closed (it died after sending the
/// plan). The runner keeps it open until it has read the reply.
fn runner_gone() -> bool {
    wait_for_hang_up(io::stdin().as_fd(), Duration::ZERO)
}

/// A log the runner made, opened for writing by its path, and checked to be the very
/// file the plan names (the job's account owns the folder it is in).
fn open_log(plan: &LaunchPlan, stream: usize) -> Result<File, String> {
    let id = &plan.logs[stream];
    let path = id.path.path();
    let file = File::options()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("cannot open the log {}: {e}", path.display()))?;
    match id.matches(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(format!(
            "{} is not the log the runner made; refusing to write to it",
            path.display()
        )),
        Err(e) => Err(format!("cannot inspect the log {}: {e}", path.display())),
    }
}

/// Run the job to its end, then record how it ended. The exit code of the supervisor.
fn supervise(
    plan: LaunchPlan,
    folder: Folder,
    job: Started,
    lock: File,
    runtime: io::Result<tokio::runtime::Runtime>,
) -> i32 {
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            warn!(%error, "cannot start the supervisor's runtime; ending the job");
            tree::signal_group(job.pid, libc::SIGKILL);
            return 1;
        }
    };
    let record = runtime.block_on(run(&plan, job));
    let code = match write_record(&folder.exit(), &record, true) {
        Ok(()) => 0,
        Err(error) => {
            warn!(%error, "cannot write exit.json; the runner will report the job lost");
            1
        }
    };
    info!(job = %plan.job.job_id, attempt = plan.job.attempt, status = ?record.status, "job ended; supervisor exits");
    let _ = std::fs::remove_file(folder.socket());
    // Dropping the runtime closes every runner's connection: they read exit.json then.
    drop(runtime);
    drop(lock);
    code
}

/// Where the job is on its way to the end, as the supervisor drives it.
struct Ladder {
    pgid: u32,
    /// The first cancel's reason; runners are told it on connecting.
    reason: Arc<Mutex<Option<String>>>,
    terminated: bool,
    kill_at: Option<Instant>,
}

impl Ladder {
    fn cancel(&mut self, grace: Duration, reason: &str) {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| reason.to_owned());
        if !self.terminated {
            self.terminated = true;
            signal_job(self.pgid, libc::SIGTERM);
        }
        let at = Instant::now().checked_add(grace);
        self.kill_at = match (self.kill_at, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn kill(&mut self) {
        self.kill_at = None;
        signal_job(self.pgid, libc::SIGKILL);
    }

    fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A signal to every process of the job: its group, and every descendant of the
/// supervisor (which, as a subreaper, the job's escaped processes remain).
fn signal_job(pgid: u32, signal: libc::c_int) {
    tree::signal_group(pgid, signal);
    for pid in tree::descendants(std::process::id()) {
        tree::signal_process(pid, signal);
    }
}

async fn run(plan: &LaunchPlan, job: Started) -> ExitRecord {
    let Started {
        pid,
        started_mono_ms,
        listener,
        stdout,
        stderr,
        logs: [stdout_log, stderr_log],
    } = job;
    let (sizes_tx, sizes) = watch::channel(Sizes::default());
    let sizes_tx = Arc::new(sizes_tx);
    let limit = plan.output_limit_bytes;
    let pumps = [
        tokio::spawn(super::logs::pump(
            stdout,
            stdout_log,
            limit,
            sizes_tx.clone(),
            true,
        )),
        tokio::spawn(super::logs::pump(
            stderr,
            stderr_log,
            limit,
            sizes_tx.clone(),
            false,
        )),
    ];
    let mut ladder = Ladder {
        pgid: pid,
        reason: Arc::new(Mutex::new(None)),
        terminated: false,
        kill_at: None,
    };
    let (asks_tx, mut asks) = mpsc::unbounded_channel();
    let accepting = match listener {
        Some(listener) => tokio::spawn(accept(
            listener,
            plan.job.clone(),
            pid,
            ladder.reason.clone(),
            sizes.clone(),
            asks_tx,
        )),
        None => {
            // No runner could cancel it, renew its lease or follow it.
            ladder.cancel(Duration::ZERO, crate::core::CancelReason::Abandoned.name());
            tokio::spawn(async move { drop(asks_tx) })
        }
    };
    let grace = Duration::from_millis(plan.cancel_grace_ms);
    let mut lease_until = Instant::now().checked_add(Duration::from_millis(plan.lease_ms));
    let (mut children, mut terminate, mut interrupt) = match (
        signal(SignalKind::child()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(c), Ok(t), Ok(i)) => (c, t, i),
        _ => {
            warn!("cannot watch signals; ending the job");
            ladder.kill();
            return finish(plan, pid, started_mono_ms, None, &ladder, &sizes, pumps).await;
        }
    };
    // The job may have ended before SIGCHLD was watched.
    let mut main_end = reap(pid);
    while main_end.is_none() {
        let kill_at = ladder.kill_at;
        tokio::select! {
            _ = children.recv() => main_end = reap(pid),
            Some(ask) = asks.recv() => match ask {
                RunnerAsks::Cancel { grace_ms, reason } => {
                    info!(reason, grace_ms, "cancel requested");
                    ladder.cancel(Duration::from_millis(grace_ms), &reason);
                }
                RunnerAsks::Kill => {
                    info!("kill requested");
                    ladder.kill();
                }
                RunnerAsks::Lease { within_ms } => {
                    lease_until = Instant::now().checked_add(Duration::from_millis(within_ms));
                }
            },
            () = sleep_until(kill_at), if kill_at.is_some() => ladder.kill(),
            () = sleep_until(lease_until), if lease_until.is_some() => {
                warn!(lease_ms = plan.lease_ms, "no runner renewed the lease in time: the control plane has given this job away; ending it");
                lease_until = None;
                ladder.cancel(grace, crate::core::CancelReason::RunnerLost.name());
            }
            _ = terminate.recv() => {
                warn!("SIGTERM: ending the job");
                ladder.cancel(grace, crate::core::CancelReason::Abandoned.name());
            }
            _ = interrupt.recv() => {
                warn!("SIGINT: ending the job");
                ladder.cancel(grace, crate::core::CancelReason::Abandoned.name());
            }
        }
    }
    accepting.abort();
    finish(plan, pid, started_mono_ms, main_end, &ladder, &sizes, pumps).await
}

/// A sleep until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The main process ended (or must): nothing of the job may outlive it.
async fn finish(
    plan: &LaunchPlan,
    pid: u32,
    started_mono_ms: u64,
    main_end: Option<(ExitStatus, u64)>,
    ladder: &Ladder,
    sizes: &watch::Receiver<Sizes>,
    pumps: [tokio::task::JoinHandle<StreamSize>; 2],
) -> ExitRecord {
    let ended_mono_ms = main_end.map_or_else(monotonic_ms, |(_, at)| at);
    kill_everything_left(pid).await;
    let [stdout, stderr] = pumps;
    let drained =
        tokio::time::timeout(DRAIN_AFTER_EXIT, async { tokio::join!(stdout, stderr) }).await;
    let (stdout, stderr) = match drained {
        Ok((Ok(out), Ok(err))) => (out, err),
        _ => {
            warn!(
                "the job's output was still open after its processes were killed; reading stops here"
            );
            let last = *sizes.borrow();
            (last.stdout, last.stderr)
        }
    };
    reap_the_rest().await;
    ExitRecord {
        version: WIRE_VERSION,
        job: plan.job.clone(),
        status: main_end.map_or(ExitStatus::Unknown, |(status, _)| status),
        duration_ms: ended_mono_ms.saturating_sub(started_mono_ms),
        ended_unix_ms: crate::runtime::status::unix_ms(),
        stdout,
        stderr,
        cancel: ladder.reason(),
        usage: children_usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_after_the_answer_ends_with_the_runners_end_or_its_bound() {
        let (reader, writer) = io::pipe().expect("pipe");
        assert!(
            !wait_for_hang_up(reader.as_fd(), Duration::from_millis(1)),
            "the runner's end open: the bound ends it"
        );
        drop(writer);
        assert!(
            wait_for_hang_up(reader.as_fd(), Duration::from_secs(600)),
            "the runner's end closed: at once"
        );
    }
}
