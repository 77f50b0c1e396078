//! Runner events: dropped as duplicates by index, otherwise stored and applied to the
//! job they are about (or to the hardware record), all in one transaction.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::api::JobState;
use super::commands::command_rejected;
use super::control::release_hold;
use super::hub::Inner;
use super::store::{JobRow, Store, StoreError};
use super::util::now_ms;
use crate::protocol::{
    HardwareChanges, JobOutcome, JobRef, OutputStream, RejectReason, RunnerEvent, apply_changes,
};

/// What became of an incoming event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// Its index was stored already: nothing applied, acknowledged again.
    Duplicate,
    /// Stored and applied; `frees_slot` when a job left the runner, so assignment
    /// should run again.
    Stored { frees_slot: bool },
}

impl Inner {
    pub fn receive_event(
        &mut self,
        runner_id: &str,
        index: u64,
        event: &RunnerEvent,
    ) -> Result<Received, StoreError> {
        let last = self
            .store
            .runner(runner_id)?
            .map_or(0, |runner| runner.last_event_index);
        if index <= last {
            tracing::debug!(runner_id, index, last, "duplicate event dropped");
            return Ok(Received::Duplicate);
        }
        if index > last + 1 {
            // The runner's outbox is ordered, so this means events were lost on its
            // side; they cannot be asked for, so carry on from here.
            tracing::warn!(runner_id, index, last, "event indexes skip ahead");
        }
        let frees_slot = self.store.atomically(|store| {
            store.record_event(runner_id, index, event.kind(), &log_body(event), now_ms())?;
            apply_event(store, runner_id, event)
        })?;
        self.changed();
        Ok(Received::Stored { frees_slot })
    }
}

/// The event as stored in the log; output bytes live with the job, so only their
/// count is kept here.
fn log_body(event: &RunnerEvent) -> Value {
    let mut body = serde_json::to_value(event).unwrap_or(Value::Null);
    if let RunnerEvent::JobOutput { data, .. } = event
        && let Some(fields) = body.as_object_mut()
    {
        fields.remove("data");
        let bytes = STANDARD.decode(data).map_or(0, |bytes| bytes.len());
        fields.insert("data_bytes".to_owned(), Value::from(bytes));
    }
    body
}

fn apply_event(store: &Store, runner_id: &str, event: &RunnerEvent) -> Result<bool, StoreError> {
    let job_ref = match event {
        RunnerEvent::HardwareChanged { changes } => {
            apply_hardware_changes(store, runner_id, changes)?;
            return Ok(false);
        }
        RunnerEvent::CommandRejected { index, reason } => {
            return command_rejected(store, runner_id, *index, reason);
        }
        other => match other.job() {
            Some(job) => job,
            None => return Ok(false),
        },
    };
    let ends = matches!(
        event,
        RunnerEvent::JobFinished { .. } | RunnerEvent::JobRejected { .. }
    );
    if ends && ends_older_attempt(store, runner_id, job_ref)? {
        return Ok(true);
    }
    let Some(mut job) = current_job(store, runner_id, job_ref)? else {
        return Ok(false);
    };
    let frees_slot = apply_job_event(store, &mut job, event)?;
    store.save_job(&job)?;
    Ok(frees_slot)
}

/// The end of an older attempt on the runner that may still have held it: the job
/// may go back to that runner now. Returns whether that was the case.
fn ends_older_attempt(
    store: &Store,
    runner_id: &str,
    job_ref: &JobRef,
) -> Result<bool, StoreError> {
    let older = store
        .job(&job_ref.job_id)?
        .is_some_and(|job| job_ref.attempt < job.attempt);
    if !older {
        return Ok(false);
    }
    tracing::info!(runner_id, job_id = %job_ref.job_id, attempt = job_ref.attempt,
        "an older attempt ended on the runner that lost it");
    release_hold(store, runner_id, &job_ref.job_id)
}

/// The job an event is about, if the event is about its current attempt on this
/// runner; anything else is stale (the job moved on) and ignored.
fn current_job(
    store: &Store,
    runner_id: &str,
    job_ref: &JobRef,
) -> Result<Option<JobRow>, StoreError> {
    let job = store.job(&job_ref.job_id)?;
    let current = job.filter(|job| {
        job.runner_id.as_deref() == Some(runner_id)
            && job.attempt == job_ref.attempt
            && job.state.on_runner()
    });
    if current.is_none() {
        tracing::info!(runner_id, job_id = %job_ref.job_id, attempt = job_ref.attempt,
            "event about a stale or unknown job attempt ignored");
    }
    Ok(current)
}

fn apply_job_event(
    store: &Store,
    job: &mut JobRow,
    event: &RunnerEvent,
) -> Result<bool, StoreError> {
    match event {
        RunnerEvent::JobAccepted { .. } => {
            if job.state == JobState::Assigned {
                job.state = JobState::Accepted;
            }
            Ok(false)
        }
        RunnerEvent::JobRejected { reason, detail, .. } => {
            if *reason == RejectReason::AlreadyRun && !job.cancel_requested {
                // Its output, if any came, belongs to the attempt that ran.
                store.clear_output(&job.id)?;
            }
            reject(job, *reason, detail);
            // No assignment right away: the runner that said "no free slot" would most
            // likely get the job straight back. The periodic pass hands it out.
            Ok(false)
        }
        RunnerEvent::JobStarted { .. } => {
            job.state = JobState::Running;
            Ok(false)
        }
        RunnerEvent::JobOutput {
            stream,
            offset,
            data,
            ..
        } => {
            append_output(store, job, *stream, *offset, data)?;
            Ok(false)
        }
        RunnerEvent::JobOutputTruncated { .. } => {
            job.truncated = true;
            Ok(false)
        }
        RunnerEvent::JobFinished {
            outcome,
            status,
            duration_ms,
            detail,
            ..
        } => {
            job.state = finished_state(*outcome);
            job.outcome = Some(*outcome);
            job.exit_status = Some(*status);
            job.duration_ms = Some(*duration_ms);
            if let Some(detail) = detail {
                job.detail = Some(detail.clone());
            }
            store.set_phase(&job.id, job.attempt, None)?;
            if let Some(usage) = event.usage().filter(|usage| !usage.is_empty()) {
                store.set_usage(&job.id, job.attempt, &usage)?;
            }
            Ok(true)
        }
        RunnerEvent::HardwareChanged { .. } | RunnerEvent::CommandRejected { .. } => Ok(false),
        side => {
            apply_job_side(store, job, side)?;
            Ok(false)
        }
    }
}

/// Phases, progress, key-value writes and the outputs' reports: kept per job (the
/// report rows per attempt), shown by `GET /admin/v1/jobs/{id}` and `.../results`.
fn apply_job_side(store: &Store, job: &JobRow, event: &RunnerEvent) -> Result<(), StoreError> {
    let (id, attempt) = (job.id.as_str(), job.attempt);
    match event {
        RunnerEvent::JobPhase { phase, .. } => store.set_phase(id, attempt, Some(*phase)),
        RunnerEvent::JobProgress {
            fraction, message, ..
        } => store.set_progress(id, attempt, *fraction, message.as_deref()),
        RunnerEvent::JobKvPut { key, value, .. } => store.kv_put(id, key, value),
        RunnerEvent::JobOutputFile {
            path, sha256, size, ..
        } => store.result_reported(id, attempt, path, sha256, *size),
        RunnerEvent::JobOutputFailed { path, reason, .. } => {
            store.result_failed(id, attempt, path, reason)
        }
        RunnerEvent::JobOutputs { missing, .. } => store.set_missing(id, attempt, missing),
        _ => Ok(()),
    }
}

/// An invalid spec fails for good; "not now" (draining, no free slot) queues the job
/// again for any runner, unless it was being cancelled anyway. `already_run`: the
/// attempt ended on that runner and its result never reached the job (a resend from an
/// older state of this store): it counts as lost, and the job is queued again as the
/// next attempt, which the runner will take.
fn reject(job: &mut JobRow, reason: RejectReason, detail: &str) {
    let name = serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    job.detail = Some(format!("rejected ({name}): {detail}"));
    if reason == RejectReason::InvalidSpec {
        job.state = JobState::Failed;
    } else if job.cancel_requested {
        job.state = JobState::Cancelled;
    } else if reason == RejectReason::AlreadyRun {
        job.state = JobState::Queued;
        job.runner_id = None;
        job.attempt += 1;
        job.outcome = None;
        job.exit_status = None;
        job.duration_ms = None;
        job.truncated = false;
        job.stdout_len = 0;
        job.stderr_len = 0;
    } else {
        job.state = JobState::Queued;
        job.runner_id = None;
    }
}

fn finished_state(outcome: JobOutcome) -> JobState {
    match outcome {
        JobOutcome::Succeeded | JobOutcome::Failed | JobOutcome::TimedOut => JobState::Finished,
        JobOutcome::Cancelled => JobState::Cancelled,
        JobOutcome::Lost => JobState::Lost,
    }
}

/// Append the bytes at `offset` that are not held yet, so a resent chunk changes
/// nothing. Chunks are stored at the held length, which keeps the stream contiguous
/// even if the runner skipped ahead.
fn append_output(
    store: &Store,
    job: &mut JobRow,
    stream: OutputStream,
    offset: u64,
    data: &str,
) -> Result<(), StoreError> {
    let bytes = match STANDARD.decode(data) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(job_id = %job.id, %error, "job output is not base64; ignored");
            return Ok(());
        }
    };
    let held = job.output_len(stream);
    if offset > held {
        tracing::warn!(job_id = %job.id, offset, held, "job output skips ahead");
    }
    let skip = usize::try_from(held.saturating_sub(offset)).unwrap_or(usize::MAX);
    let Some(fresh) = bytes.get(skip..).filter(|fresh| !fresh.is_empty()) else {
        return Ok(());
    };
    store.append_output(&job.id, stream, held, fresh)?;
    job.set_output_len(stream, held + fresh.len() as u64);
    Ok(())
}

/// Apply a change list to the stored hardware record. When it does not fit (no record,
/// or a conflict) the record is marked unknown, so the next
/// `authenticated` says `hardware_known: false` and the runner sends it in full.
pub(crate) fn apply_hardware_changes(
    store: &Store,
    runner_id: &str,
    changes: &HardwareChanges,
) -> Result<bool, StoreError> {
    let base = store.runner(runner_id)?.and_then(|runner| runner.hardware);
    let applied = match base {
        None => Err("no hardware record is stored".to_owned()),
        Some(base) => apply_changes(&base, changes).map_err(|error| error.to_string()),
    };
    match applied {
        Ok(updated) => {
            store.set_hardware(runner_id, &updated, true)?;
            Ok(true)
        }
        Err(reason) => {
            tracing::warn!(runner_id, %reason, "hardware changes not applied; will ask for a full report");
            store.set_hardware_known(runner_id, false)?;
            Ok(false)
        }
    }
}
