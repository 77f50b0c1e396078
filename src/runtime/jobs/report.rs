/*!
What the job executor tells the driver: one enum that mirrors the core's job events,
and its conversion into them. `Started` or `SpawnFailed` is what a spawn returns, and
`Found` (with `Started` before it when the store lacks the job's start) what a
reattach returns; the rest arrive through the reports channel, and the driver
forwards each as it arrives.
*/

use tracing::warn;

use crate::core::{CancelReason, Event, FoundJob};
use crate::protocol::{ExitStatus, JobRef, JobUsage, OutputStream};

use super::output::OutputChunk;

/// One thing that happened to a job's process. For one job they arrive in this order:
/// `Started`, any `Output`/`Truncated`, then `Exited`; or only `SpawnFailed`.
#[derive(Debug, PartialEq)]
pub enum JobReport {
    Started {
        job: JobRef,
        pid: u32,
    },
    /// Bytes `offset..offset + data.len()` of one stream. `data` holds a credit of the
    /// stream's reader until the report is converted or dropped (see `OutputChunk`).
    Output {
        job: JobRef,
        stream: OutputStream,
        offset: u64,
        data: OutputChunk,
    },
    /// The stream passed the job's output limit at `offset`; nothing more of it is
    /// reported or logged, though the job keeps running and its pipe keeps draining.
    Truncated {
        job: JobRef,
        stream: OutputStream,
        offset: u64,
    },
    /// The main process ended, its process group was killed and both streams were read
    /// to the end. Byte counts are what the job wrote, before truncation. `cancel` is
    /// the name of a cancel's reason the job's supervisor recorded with its end.
    Exited {
        job: JobRef,
        status: ExitStatus,
        duration_ms: u64,
        stdout_bytes: u64,
        stderr_bytes: u64,
        cancel: Option<String>,
        /// What the job's processes used, as far as it was measured.
        usage: JobUsage,
    },
    /// The job never ran; `error` says why, for people (it is never matched on).
    SpawnFailed {
        job: JobRef,
        error: String,
    },
    /// At start: what became of a job the previous run started. `cancel` is the name
    /// of the reason a cancel was given with, as its supervisor recorded it.
    Found {
        job: JobRef,
        state: FoundState,
        cancel: Option<String>,
    },
}

/// Whether a job of the previous run still runs, ended meanwhile, or is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundState {
    Running { elapsed_ms: u64 },
    Ended,
    Lost,
}

impl JobReport {
    /// The job attempt this report is about.
    pub fn job(&self) -> &JobRef {
        match self {
            Self::Started { job, .. }
            | Self::Output { job, .. }
            | Self::Truncated { job, .. }
            | Self::Exited { job, .. }
            | Self::SpawnFailed { job, .. }
            | Self::Found { job, .. } => job,
        }
    }

    /// The core's event for this report. Converting an `Output` gives its credit back
    /// to the job's reader.
    pub fn into_event(self) -> Event {
        match self {
            Self::Started { job, pid } => Event::JobStarted { job, pid },
            Self::Output {
                job,
                stream,
                offset,
                data,
            } => Event::JobOutput {
                job,
                stream,
                offset,
                data: data.into_bytes(),
            },
            Self::Truncated {
                job,
                stream,
                offset,
            } => Event::JobOutputTruncated {
                job,
                stream,
                offset,
            },
            Self::Exited {
                job,
                status,
                duration_ms,
                stdout_bytes,
                stderr_bytes,
                cancel,
                usage,
            } => {
                let cancel = cancel_reason(&job, cancel);
                Event::JobExited {
                    job,
                    status,
                    duration_ms,
                    stdout_bytes,
                    stderr_bytes,
                    cancel,
                    usage,
                }
            }
            Self::SpawnFailed { job, error } => Event::JobSpawnFailed { job, error },
            Self::Found { job, state, cancel } => {
                let cancel = cancel_reason(&job, cancel);
                let found = match state {
                    FoundState::Running { elapsed_ms } => FoundJob::Running { elapsed_ms, cancel },
                    FoundState::Ended => FoundJob::Ended { cancel },
                    FoundState::Lost => FoundJob::Lost,
                };
                Event::JobFound { job, found }
            }
        }
    }
}

/// The reason a supervisor recorded, by name; one this build does not know is dropped
/// (with a warning) rather than guessed.
fn cancel_reason(job: &JobRef, name: Option<String>) -> Option<CancelReason> {
    let name = name?;
    let reason = CancelReason::from_name(&name);
    if reason.is_none() {
        warn!(job = %job.job_id, reason = name, "a supervisor recorded a cancel reason this runner does not know");
    }
    reason
}
