//! The end of a job's processes, as its supervisor makes it: SIGKILL to whatever of the
//! job is left, every child reaped, how the main process ended, and what the whole tree
//! used. Must not: decide when the job ends; the supervisor's loop (`program`) does.

use std::io;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::protocol::ExitStatus;

use super::tree;
use super::wire::{Usage, monotonic_ms};

/// How long reaping what is left may take after the job ended.
const REAP_WITHIN: Duration = Duration::from_secs(5);

/// SIGKILL to the group and every descendant, until none is left (a process may fork
/// while the sweep runs; its children are found in the next round).
pub(super) async fn kill_everything_left(pgid: u32) {
    tree::signal_group(pgid, libc::SIGKILL);
    for _ in 0..100 {
        let _ = reap(0);
        // The common end, a job that left nothing behind, costs no walk of `/proc`.
        if no_children_left() {
            return;
        }
        let left = tree::descendants(std::process::id());
        if left.is_empty() {
            return;
        }
        for pid in left {
            tree::signal_process(pid, libc::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warn!("processes of the job are still there after SIGKILL (a process stuck in the kernel?)");
}

/// Reap every child that has ended. Returns how the main process `pid` ended, with the
/// `CLOCK_MONOTONIC` time it was found, once it has.
pub(super) fn reap(pid: u32) -> Option<(ExitStatus, u64)> {
    let mut main = None;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes one int, which `status` is.
        let reaped = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
        if reaped <= 0 {
            return main;
        }
        if u32::try_from(reaped).ok() == Some(pid) {
            main = Some((exit_status(status), monotonic_ms()));
        }
    }
}

fn exit_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFEXITED(status) {
        ExitStatus::Exited {
            code: libc::WEXITSTATUS(status),
        }
    } else if libc::WIFSIGNALED(status) {
        ExitStatus::Signaled {
            signal: libc::WTERMSIG(status),
        }
    } else {
        ExitStatus::Unknown
    }
}

/// Wait (bounded) until no child is left to reap, so the resource use counts them all.
pub(super) async fn reap_the_rest() {
    let deadline = Instant::now() + REAP_WITHIN;
    loop {
        let _ = reap(0);
        if no_children_left() {
            return;
        }
        if Instant::now() >= deadline {
            warn!("children of the job could not all be reaped");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the supervisor has no child, living or a zombie. Then no descendant is left
/// either: a descendant hangs from a child of the supervisor (an orphan of the job is
/// handed to the supervisor, its subreaper, and so becomes one of its children).
fn no_children_left() -> bool {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes one int, which `status` is.
    let rc = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
    rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
}

/// The resource use of every process the supervisor reaped: the job's whole tree.
pub(super) fn children_usage() -> Usage {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage, which `usage` is.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage) } != 0 {
        return Usage::default();
    }
    let micros = |t: libc::timeval| {
        u64::try_from(t.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .saturating_add(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Usage {
        user_us: micros(usage.ru_utime),
        system_us: micros(usage.ru_stime),
        // Linux counts ru_maxrss in KiB.
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    }
}
