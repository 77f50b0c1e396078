//! The API's commands applied, each index once: a job's start accepted or rejected (and
//! why), a cancel, a drain; and a command that can never be read answered for good.
//! Must not: decide what a state does with a drain; the machine (`crate::core::machine`)
//! turns it into a transition.

use std::sync::Arc;

use crate::core::effect::{CancelReason, Delay, Durable, Effects, Notice, Outbound, TimerKind};
use crate::core::hooks::{HookCall, HookPoint};
use crate::protocol::{Command, JobRef, JobSpec, RejectReason, RunnerEvent};

use super::{JobEntry, Runner};

impl Runner {
    /// A command whose index could be read but whose body could not: it can never be
    /// applied, so it is answered for good under its index: the event
    /// `command_rejected` persisted with the index marked applied, in one batch, then
    /// sent and the index acknowledged, so the API retires it. A resent index is only
    /// acknowledged again.
    pub(crate) fn reject_unreadable_command(&mut self, fx: &mut Effects, index: u64, error: &str) {
        if index <= self.last_applied {
            fx.send(Outbound::CommandAck { index });
            return;
        }
        self.last_applied = index;
        fx.persist(Durable::LastApplied { index });
        let reason = bounded_reason(error);
        self.emit(
            fx,
            RunnerEvent::CommandRejected {
                index,
                reason: reason.clone(),
            },
        );
        fx.send(Outbound::CommandAck { index });
        fx.notify(Notice::CommandRejected { index, reason });
    }

    /// Apply one command exactly once. Returns whether the command asked for a drain,
    /// which the caller turns into a transition.
    pub(crate) fn apply_command(
        &mut self,
        fx: &mut Effects,
        index: u64,
        command: &Command,
        draining: bool,
    ) -> bool {
        if index <= self.last_applied {
            // A resend of something already applied: acknowledge again, do nothing.
            fx.send(Outbound::CommandAck { index });
            return false;
        }
        self.last_applied = index;
        fx.persist(Durable::LastApplied { index });
        match command {
            Command::StartJob { job } => {
                let accepted = self.start_job(fx, job, draining);
                fx.send(Outbound::CommandAck { index });
                if let Some(spec) = accepted {
                    fx.start(
                        TimerKind::JobTimeout(job.job_ref()),
                        Delay::Millis(job.timeout_secs.saturating_mul(1000)),
                    );
                    if self.hooked(HookPoint::PreJob) {
                        // The process starts once the hook succeeds (`pre_job_finished`).
                        self.awaiting_pre_job.insert(job.job_id.clone(), spec);
                        self.run_hook(fx, HookCall::PreJob { job: job.job_ref() });
                    } else {
                        self.start_or_fetch(fx, spec);
                    }
                }
                false
            }
            Command::CancelJob { job_id, attempt } => {
                let job = JobRef {
                    job_id: job_id.clone(),
                    attempt: *attempt,
                };
                let known = self.check_job(fx, &job, "cancel_job");
                fx.send(Outbound::CommandAck { index });
                if known {
                    self.cancel_job(fx, &job, CancelReason::Cancelled);
                }
                false
            }
            Command::Drain { deadline_secs } => {
                fx.send(Outbound::CommandAck { index });
                if let Some(secs) = deadline_secs {
                    self.drain_deadline_secs = *secs;
                }
                true
            }
        }
    }

    /// Accept or reject a start; returns the accepted job's spec, as persisted (its one
    /// copy, shared with the effect that starts it). An accepted job enters the table
    /// now so a second delivery of the same job (under a new index) cannot start it
    /// twice.
    fn start_job(
        &mut self,
        fx: &mut Effects,
        job: &JobSpec,
        draining: bool,
    ) -> Option<Arc<JobSpec>> {
        let rejection = if let Err(error) = job.validate() {
            Some((RejectReason::InvalidSpec, error.to_string()))
        } else if self.jobs.contains_key(&job.job_id) {
            fx.notify(Notice::StaleJob {
                job: job.job_ref(),
                what: "start_job for a job already running".into(),
            });
            return None;
        } else if self.ended_here(&job.job_id, job.attempt) {
            Some((
                RejectReason::AlreadyRun,
                format!(
                    "attempt {} of job {} already ran on this runner; it is not run again",
                    job.attempt, job.job_id
                ),
            ))
        } else if draining {
            Some((RejectReason::Draining, "runner is draining".into()))
        } else if self.slots_free() == 0 {
            Some((
                RejectReason::NoFreeSlot,
                format!("all {} slots busy", self.config.slots),
            ))
        } else {
            None
        };
        match rejection {
            Some((reason, detail)) => {
                self.emit(
                    fx,
                    RunnerEvent::JobRejected {
                        job: job.job_ref(),
                        reason,
                        detail,
                    },
                );
                None
            }
            None => {
                self.jobs.insert(
                    job.job_id.clone(),
                    JobEntry {
                        attempt: job.attempt,
                        grace_secs: job.cancel_grace_secs,
                        timeout_secs: job.timeout_secs,
                        cancel: None,
                        outputs: job.outputs.clone(),
                    },
                );
                let spec = Arc::new(job.clone());
                fx.persist(Durable::JobAdded {
                    job: Arc::clone(&spec),
                });
                self.emit(fx, RunnerEvent::JobAccepted { job: job.job_ref() });
                Some(spec)
            }
        }
    }
}

/// The longest `command_rejected.reason`: the decoder's message can quote what the API
/// sent (an unknown kind), which is the API's to bound, not the runner's to echo whole.
const MAX_REASON_BYTES: usize = 1024;

fn bounded_reason(error: &str) -> String {
    if error.len() <= MAX_REASON_BYTES {
        return error.to_owned();
    }
    let mut end = MAX_REASON_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_reason_is_bounded_at_a_character_boundary() {
        assert_eq!(bounded_reason("short"), "short");
        let long = "é".repeat(MAX_REASON_BYTES);
        let bounded = bounded_reason(&long);
        assert!(bounded.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert!(bounded.ends_with('…'));
    }
}
