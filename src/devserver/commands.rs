//! Commands to runners: issued (stored, then sent while the runner takes commands),
//! resent after every `ready_ack` until acknowledged, and retired when they can never
//! be applied: superseded, over the frame limit, unreadable from an older database, or
//! refused by the runner with `command_rejected`. A retired command is marked
//! acknowledged, so it is never sent again, and the job it was about learns why.
//!
//! Runs on `Inner` (or, inside a transaction, on `Store`) under the hub's lock.

use super::api::JobState;
use super::control::release_hold;
use super::hub::{Inner, Post};
use super::store::{Store, StoreError, StoredCommand};
use super::util::now_ms;
use crate::protocol::{Command, JobRef, JobSpec, MAX_FRAME_BYTES, ServerMessage, encode};

/// The size of the `command` frame that carries `command` under `index`.
pub(crate) fn frame_len(index: u64, command: &Command) -> usize {
    encode(&ServerMessage::Command {
        index,
        command: command.clone(),
    })
    .len()
}

/// The size of the largest `start_job` frame `spec` can ever travel in: under the
/// largest index and attempt, so neither a re-queue nor a long-lived runner can push
/// an accepted job over the limit later.
pub(crate) fn largest_start_frame_len(spec: &JobSpec) -> usize {
    let mut job = spec.clone();
    job.attempt = u32::MAX;
    frame_len(u64::MAX, &Command::StartJob { job })
}

impl Inner {
    /// Persist a command for a runner, then queue it if the runner's session takes
    /// commands now; otherwise it goes out after the runner's next `ready`.
    pub fn issue(
        &mut self,
        runner_id: &str,
        command: Command,
        post: &mut Post,
    ) -> Result<u64, StoreError> {
        let index = self.store.append_command(runner_id, &command, now_ms())?;
        self.send_command(runner_id, index, command, post);
        Ok(index)
    }

    pub fn send_command(&mut self, runner_id: &str, index: u64, command: Command, post: &mut Post) {
        if let Some(live) = self.live.get_mut(runner_id)
            && live.active
        {
            if matches!(command, Command::Drain { .. }) {
                live.draining = true;
            }
            post.message(&live.tx, ServerMessage::Command { index, command });
        }
    }

    /// After `ready_ack`: every unacknowledged command again, in index order. A command
    /// about a job attempt that has moved on (re-queued, finished) is retired instead,
    /// so a runner back from the dead does not start an attempt given to another; so is
    /// one that could never reach the runner (see the module comment).
    pub fn resend_unacked(&mut self, runner_id: &str, post: &mut Post) -> Result<(), StoreError> {
        for pending in self.store.unacked_commands(runner_id)? {
            let Some(command) = self.sendable(runner_id, &pending)? else {
                continue;
            };
            if self.still_wanted(runner_id, &command)? {
                self.send_command(runner_id, pending.index, command, post);
                continue;
            }
            tracing::info!(
                runner_id,
                index = pending.index,
                "retiring a superseded command"
            );
            self.store.ack_command(runner_id, pending.index)?;
            if let Command::StartJob { job } = &command {
                // Never applied (its index is above what the runner applied), so the
                // runner cannot hold that attempt.
                release_hold(&self.store, runner_id, &job.job_id)?;
            }
        }
        Ok(())
    }

    /// The stored command, decoded and small enough to send; otherwise it is retired
    /// here, with a log line and (for a `start_job`) its job failed with the reason.
    fn sendable(
        &mut self,
        runner_id: &str,
        pending: &StoredCommand,
    ) -> Result<Option<Command>, StoreError> {
        let index = pending.index;
        let command = match pending.decode() {
            Ok(command) => command,
            Err(error) => {
                let reason = format!("it is stored in a form this build cannot read ({error})");
                tracing::error!(runner_id, index, "retiring a stored command: {reason}");
                let target = target_of_raw(&pending.body);
                self.store
                    .atomically(|store| retire(store, runner_id, index, target, &reason))?;
                return Ok(None);
            }
        };
        let size = frame_len(index, &command);
        if size <= MAX_FRAME_BYTES {
            return Ok(Some(command));
        }
        let reason = format!(
            "its frame of {size} bytes is over the protocol's {MAX_FRAME_BYTES}-byte limit"
        );
        tracing::error!(
            runner_id,
            index,
            size,
            "retiring a stored command that cannot be sent: {reason}"
        );
        let target = target_of(&command);
        self.store
            .atomically(|store| retire(store, runner_id, index, target, &reason))?;
        Ok(None)
    }

    fn still_wanted(&self, runner_id: &str, command: &Command) -> Result<bool, StoreError> {
        let (job_id, attempt, is_cancel) = match command {
            Command::StartJob { job } => (&job.job_id, job.attempt, false),
            Command::CancelJob { job_id, attempt } => (job_id, *attempt, true),
            Command::Drain { .. } => return Ok(true),
        };
        Ok(self.store.job(job_id)?.is_some_and(|job| {
            let current = job.runner_id.as_deref() == Some(runner_id)
                && job.attempt == attempt
                && job.state.on_runner();
            // A cancel of an attempt the runner lost but may still be running.
            let lingering = job.held_by.as_deref() == Some(runner_id) && attempt <= job.attempt;
            current || (is_cancel && lingering)
        }))
    }
}

/// The event `command_rejected {index, reason}`: the runner read the index but can
/// never apply the command. It is retired; returns whether a job left the runner (so
/// assignment should run again).
pub(crate) fn command_rejected(
    store: &Store,
    runner_id: &str,
    index: u64,
    reason: &str,
) -> Result<bool, StoreError> {
    let Some(stored) = store.command(runner_id, index)? else {
        tracing::warn!(
            runner_id,
            index,
            reason,
            "the runner rejected a command index never issued to it"
        );
        return Ok(false);
    };
    tracing::warn!(
        runner_id,
        index,
        reason,
        "the runner rejected a command; retired"
    );
    let target = match stored.decode() {
        Ok(command) => target_of(&command),
        Err(_) => target_of_raw(&stored.body),
    };
    let why = format!("the runner rejected it: {reason}");
    retire(store, runner_id, index, target, &why)
}

/// What a command is about: a job attempt and the command's kind, or nothing (drain).
type Target = Option<(JobRef, &'static str)>;

fn target_of(command: &Command) -> Target {
    match command {
        Command::StartJob { job } => Some((job.job_ref(), "start_job")),
        Command::CancelJob { job_id, attempt } => Some((
            JobRef {
                job_id: job_id.clone(),
                attempt: *attempt,
            },
            "cancel_job",
        )),
        Command::Drain { .. } => None,
    }
}

/// The same from a body that does not decode as a whole: what its `job_id` and
/// `attempt` fields say, if they can be found, so the job still learns its fate.
fn target_of_raw(body: &str) -> Target {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let kind = value.get("kind")?.as_str()?;
    let (what, fields) = match kind {
        "start_job" => ("start_job", value.get("job")?),
        "cancel_job" => ("cancel_job", &value),
        _ => return None,
    };
    let job_id = fields.get("job_id")?.as_str()?.to_owned();
    let attempt = u32::try_from(fields.get("attempt")?.as_u64()?).ok()?;
    Some((JobRef { job_id, attempt }, what))
}

/// Mark a command that can never be applied as done, and tell its job why. A
/// `start_job` for the job's current attempt on this runner fails the job (the runner
/// never ran it, so the slot is free again); any other command only leaves a note.
/// Returns whether a job left the runner.
fn retire(
    store: &Store,
    runner_id: &str,
    index: u64,
    target: Target,
    why: &str,
) -> Result<bool, StoreError> {
    store.ack_command(runner_id, index)?;
    let Some((job, what)) = target else {
        return Ok(false);
    };
    let Some(mut row) = store.job(&job.job_id)? else {
        return Ok(false);
    };
    let current = row.runner_id.as_deref() == Some(runner_id)
        && row.attempt == job.attempt
        && row.state.on_runner();
    if !current {
        return Ok(false);
    }
    row.detail = Some(format!("{what} (command {index}) was retired: {why}"));
    let frees_slot = what == "start_job";
    if frees_slot {
        row.state = JobState::Failed;
    }
    store.save_job(&row)?;
    Ok(frees_slot)
}
