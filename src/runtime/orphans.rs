//! What a job leaves when nothing supervises it any more: its supervisor was killed
//! (SIGKILL, the OOM killer), or it was started by a runner from before supervisors
//! and that runner died. The kernel killed the job's main process with its supervisor
//! (`PR_SET_PDEATHSIG`); what else of the job still runs is ended here, once, before
//! the job is reported `lost`:
//!
//! - its process group, when its leader is gone or is still the job's own process
//!   (the pid and its start time both match what was recorded; a pid alone proves
//!   nothing, since pids are reused). A process group's number is not reused while a
//!   process of the group lives;
//! - every process whose environment names the job attempt (`FYN_JOB_ID` and
//!   `FYN_JOB_ATTEMPT`, which every process of the job starts with): what left the
//!   group (`setsid`) and outlived the supervisor, unless it cleared its environment.
//!
//! Linux only (it reads `/proc`). Elsewhere on Unix nothing is found; on Windows
//! nothing can be left: every job runs in a kill-on-close job object, which the system
//! closes with the runner.

use tracing::info;

use crate::protocol::JobRef;

/// What is known of the job's main process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    /// Its pid, which is also its process group's number.
    pub pid: u32,
    /// When it started (ticks after boot), when recorded; without it only the
    /// environment tells the job's processes apart.
    pub start_ticks: Option<u64>,
}

/// SIGKILL to whatever still runs of `job`. Returns how many processes were signalled.
pub fn end_leftovers(job: &JobRef, leader: Option<Leader>) -> usize {
    let ended = leftovers::end(job, leader);
    if ended > 0 {
        info!(job = %job.job_id, attempt = job.attempt, processes = ended, "killed what was left of a job no supervisor watches");
    }
    ended
}

#[cfg(target_os = "linux")]
mod leftovers {
    use tracing::warn;

    use super::Leader;
    use crate::protocol::JobRef;
    use crate::runtime::jobs::supervised_tree as tree;

    pub(super) fn end(job: &JobRef, leader: Option<Leader>) -> usize {
        let mut ended = 0;
        if let Some(leader) = leader.filter(|l| l.pid > 1) {
            let group_is_the_jobs = match (tree::stat_of(leader.pid), leader.start_ticks) {
                // The leader lives: the group is the job's only if the leader is.
                (Some(now), Some(ticks)) => now.start_ticks == ticks,
                (Some(_), None) => tree::carries_job_marker(leader.pid, &job.job_id, job.attempt),
                // The leader is gone; its group's number is the job's for as long as a
                // member lives.
                (None, _) => true,
            };
            if group_is_the_jobs {
                let members = tree::all_processes()
                    .iter()
                    .filter(|p| p.pgrp == leader.pid && !p.zombie)
                    .count();
                if members > 0 {
                    tree::signal_group(leader.pid, libc::SIGKILL);
                    ended += members;
                }
            }
        }
        for process in tree::all_processes() {
            if !process.zombie
                && process.pid != std::process::id()
                && tree::carries_job_marker(process.pid, &job.job_id, job.attempt)
            {
                tree::signal_process(process.pid, libc::SIGKILL);
                ended += 1;
            }
        }
        if ended == 0 {
            return 0;
        }
        // SIGKILL is certain, but not instant: give the kernel a moment, then say so if
        // something is still there.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let left = tree::all_processes()
            .iter()
            .any(|p| !p.zombie && tree::carries_job_marker(p.pid, &job.job_id, job.attempt));
        if left {
            warn!(job = %job.job_id, attempt = job.attempt, "a leftover job process did not die yet after SIGKILL");
        }
        ended
    }
}

#[cfg(not(target_os = "linux"))]
mod leftovers {
    use super::Leader;
    use crate::protocol::JobRef;

    /// Nothing to find without `/proc` (see the module header).
    pub(super) fn end(_job: &JobRef, _leader: Option<Leader>) -> usize {
        0
    }
}
