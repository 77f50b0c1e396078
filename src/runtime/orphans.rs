//! Jobs whose runner died (kill -9, power loss) leave no result, and on Unix may leave
//! their process group running. At start the runner kills what is left of each such
//! job — after checking, through `/proc`, that the process really is that job, since a
//! pid can be reused — and the core reports the job `lost`, once.
//!
//! On Windows nothing can be left: every job runs in a job object with
//! `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`, and when the runner dies the system closes
//! its handle to the job object, which ends every process in it. Only the report
//! remains to be made.

use tracing::warn;

use crate::protocol::JobRef;

/// Kill what is left of a job of a previous runner, if anything still runs. `pid` is
/// the one the store kept from the job's `job_started` event (on Unix the job leads its
/// own process group, so it is also the group's id).
pub async fn reap(pid: u32, job: &JobRef) {
    // Never 0 or 1: `kill(-1, ..)` would signal every process the runner may signal.
    let Some(pid) = i32::try_from(pid).ok().filter(|pid| *pid > 1) else {
        warn!(job = %job.job_id, pid, "the stored pid cannot be a job's process group");
        return;
    };
    leftovers::kill(pid, job).await;
}

#[cfg(unix)]
mod leftovers {
    use std::time::Duration;

    use tracing::{info, warn};

    use crate::protocol::JobRef;

    /// SIGKILL the process group `pid` led, if it is still that job's.
    pub(super) async fn kill(pid: i32, job: &JobRef) {
        if !is_that_job(pid, job) {
            return;
        }
        info!(job = %job.job_id, attempt = job.attempt, pid, "killing a job left running by a previous runner");
        // SAFETY: kill has no memory-safety preconditions; -pid names the job's own group,
        // checked above to belong to this job.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        for _ in 0..100 {
            if !is_that_job(pid, job) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        warn!(job = %job.job_id, pid, "a leftover job process did not die after SIGKILL");
    }

    /// Whether `pid` is alive and carries this job's identity in its environment.
    fn is_that_job(pid: i32, job: &JobRef) -> bool {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let id = format!("FYN_JOB_ID={}", job.job_id);
        let attempt = format!("FYN_JOB_ATTEMPT={}", job.attempt);
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        !zombie && vars.contains(&id.as_bytes()) && vars.contains(&attempt.as_bytes())
    }
}

#[cfg(windows)]
mod leftovers {
    use tracing::debug;

    use crate::protocol::JobRef;

    /// Nothing to kill: the job object of a dead runner's job closed with it, and its
    /// kill-on-close limit ended every process in it (see the module header).
    pub(super) async fn kill(pid: i32, job: &JobRef) {
        debug!(job = %job.job_id, attempt = job.attempt, pid, "the job's processes ended with the previous runner's job object");
    }
}
