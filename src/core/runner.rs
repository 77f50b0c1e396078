//! The machine's shared storage and the pure logic every phase uses: the job table,
//! the outbox indexes, the link the core believes it has, heartbeats; the API's
//! commands are applied in `runner/commands.rs`.
//!
//! Nothing here performs I/O; every consequence is an `Effect` pushed into `Effects`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::{
    CloseReason, ExitStatus, HardwareReport, JobOutcome, JobRef, JobSpec, JobUsage, MAX_INDEX,
    OutputFile, RunnerEvent, SessionParams,
};

use super::backoff::{BackoffPolicy, Jitter};
use super::effect::{CancelReason, Delay, Durable, Effect, Effects, Notice, Outbound, TimerKind};
pub use super::ended::ENDED_ATTEMPTS_KEPT;
use super::ended::EndedAttempts;
use super::event::FoundJob;
use super::hooks::HookPoint;

mod commands;

/// How many indexes a session must have left below the top of the protocol's range
/// (`MAX_INDEX`, 2^53 − 1) when it starts: an API whose claim (`last_event_index`)
/// leaves fewer is refused (4002). No real session comes near it (2^32 events, 50 days
/// at a thousand a second); it keeps a claim at the top from wedging the numbering.
pub const EVENT_INDEX_HEADROOM: u64 = 1 << 32;

/// How the process was started, which fixes the machine's first state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    /// `fyn-runner install`: create folders and config, register, install the service.
    Install,
    /// `fyn-runner run` with a one-time token and no identity yet.
    Register,
    /// `fyn-runner run` with a stored identity.
    Resume,
    /// A farewell with a stored identity: authenticate, say `leaving`, stop once the
    /// API answers `left` (`fyn-runner uninstall`, or an install rolling back).
    Leave,
}

/// Settings the core needs to decide durations; chosen by the operator, not the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreConfig {
    pub slots: u32,
    /// How long to wait for each handshake reply before the link counts as dead.
    pub handshake_timeout_ms: u64,
    pub drain_deadline_secs: u64,
    pub hardware_recheck_ms: u64,
    /// Extra time after the last SIGKILL of a forced stop to flush the outbox.
    pub flush_grace_secs: u64,
    /// Session parameters to use until the API sends its own.
    pub default_session: SessionParams,
    /// The reconnect delays' bounds.
    pub backoff: BackoffPolicy,
    /// Seeds the backoff's jitter. Drawn once per process by the runtime, and recorded
    /// with the rest of this config in the trace header, so replay draws the same.
    pub rng_seed: u64,
    /// The hooks the operator configured (which, not what: the executables are the
    /// runtime's). Recorded in the trace header like the rest, so replay runs them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookPoint>,
    /// How long one hook may run; a stop's bound allows for `post_job` and `on_stopped`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hook_timeout_secs: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            slots: 1,
            handshake_timeout_ms: 30_000,
            drain_deadline_secs: 120,
            hardware_recheck_ms: 600_000,
            flush_grace_secs: 5,
            default_session: SessionParams::default(),
            backoff: BackoffPolicy::default(),
            rng_seed: 0,
            hooks: Vec::new(),
            hook_timeout_secs: 0,
        }
    }
}

/// What survives a restart: the runtime's store rebuilds the core from this alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    pub runner_id: Option<String>,
    pub last_applied_command: u64,
    /// The highest event index ever appended to the outbox.
    pub last_event_index: u64,
    /// The highest event index the API has acknowledged.
    pub acked_event_index: u64,
    /// Jobs that were running when the previous process stopped.
    pub jobs: Vec<JobSpec>,
    /// The last `ENDED_ATTEMPTS_KEPT` attempts that ended here, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended_attempts: Vec<JobRef>,
    /// The public half of the key kept by a registration that did not finish (the
    /// identity folder holds the key without a runner ID): a retried `register`
    /// carries it again, so an API that committed the first one answers with the same
    /// runner ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_key: Option<String>,
    /// Output files of the jobs above whose upload is recorded as done (uploaded, or
    /// failed for good): a restarted runner uploads only the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs_done: Vec<OutputDone>,
}

/// One output file of a job whose upload is over, as the store records it in the same
/// transaction as its event (`job_output_file` or `job_output_failed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDone {
    pub job: JobRef,
    /// Below `work/`.
    pub path: String,
    /// Uploaded (else it failed for good).
    pub uploaded: bool,
}

/// The connection as the core sees it. This is an orthogonal region, not a phase:
/// Draining, for one, can be entered with the link up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    Down,
    /// Open, but the API has not authenticated this runner on it yet.
    Open,
    Authenticated,
}

/// One row of the core's job table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEntry {
    pub attempt: u32,
    pub grace_secs: u64,
    /// The job's timeout, so a job reattached after a restart keeps the time it has
    /// left (`FoundJob::Running`).
    #[serde(default)]
    pub timeout_secs: u64,
    /// Set when the core asked for the job to stop; decides the reported outcome.
    pub cancel: Option<CancelReason>,
    /// The files to upload once the process ended (`start_job.outputs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runner {
    pub(crate) config: CoreConfig,
    pub(crate) boot: BootMode,
    pub(crate) runner_id: Option<String>,
    pub(crate) last_applied: u64,
    pub(crate) last_event_index: u64,
    pub(crate) acked_event_index: u64,
    /// The highest index the API can hold from this store: its last at boot (an
    /// earlier process may have sent them all), then whatever this process sent.
    #[serde(default)]
    pub(crate) sent_up_to: u64,
    pub(crate) jobs: BTreeMap<String, JobEntry>,
    pub(crate) link: Link,
    pub(crate) nonce: Option<String>,
    pub(crate) session: SessionParams,
    pub(crate) api_has_hardware: bool,
    pub(crate) startup_reported: bool,
    /// Reconnect attempts since the last healthy session (see `super::backoff`).
    pub(crate) reconnect_attempt: u32,
    pub(crate) jitter: Jitter,
    pub(crate) heartbeat_seq: u64,
    /// The report collected in HardwareSync, cached once the API confirms it.
    pub(crate) pending_hardware: Option<Box<HardwareReport>>,
    pub(crate) drain_deadline_secs: u64,
    /// The service manager was told the runner is ready (once per process).
    pub(crate) told_ready: bool,
    /// Attempts that ended here (see `ENDED_ATTEMPTS_KEPT`), oldest first.
    #[serde(default)]
    pub(crate) ended: EndedAttempts,
    /// The public key `register` carries; kept across retries (see `DurableState`).
    #[serde(default)]
    pub(crate) registration_key: Option<String>,
    /// What `stopping.reason` says: who asked for the drain.
    #[serde(default)]
    pub(crate) stopping_reason: String,
    /// Accepted jobs whose `pre_job` hook runs: their specs, until it ends.
    #[serde(default)]
    pub(crate) awaiting_pre_job: BTreeMap<String, Arc<JobSpec>>,
    /// The current session reached Active (so its loss runs `on_disconnected`).
    #[serde(default)]
    pub(crate) session_was_active: bool,
    /// Accepted jobs whose inputs are being fetched: their specs, until that ends.
    #[serde(default)]
    pub(crate) fetching: BTreeMap<String, Arc<JobSpec>>,
    /// Jobs whose process ended and whose outputs are being uploaded.
    #[serde(default)]
    pub(crate) uploading: BTreeMap<String, super::job_files::Uploading>,
    /// Output files recorded as done, per job id (from the store at boot, then as each
    /// upload ends), so none is uploaded or reported twice.
    #[serde(default)]
    pub(crate) outputs_done: BTreeMap<String, Vec<OutputDone>>,
}

impl Runner {
    pub fn new(config: CoreConfig, boot: BootMode, durable: DurableState) -> Self {
        let mut outputs_done: BTreeMap<String, Vec<OutputDone>> = BTreeMap::new();
        for done in durable.outputs_done {
            outputs_done
                .entry(done.job.job_id.clone())
                .or_default()
                .push(done);
        }
        let jobs = durable
            .jobs
            .into_iter()
            .map(|job| {
                let entry = JobEntry {
                    attempt: job.attempt,
                    grace_secs: job.cancel_grace_secs,
                    timeout_secs: job.timeout_secs,
                    cancel: None,
                    outputs: job.outputs,
                };
                (job.job_id, entry)
            })
            .collect();
        Self {
            session: config.default_session,
            jitter: Jitter::new(config.rng_seed),
            drain_deadline_secs: config.drain_deadline_secs,
            config,
            boot,
            runner_id: durable.runner_id,
            last_applied: durable.last_applied_command,
            last_event_index: durable.last_event_index,
            acked_event_index: durable.acked_event_index.min(durable.last_event_index),
            sent_up_to: durable.last_event_index,
            jobs,
            link: Link::Down,
            nonce: None,
            api_has_hardware: false,
            startup_reported: false,
            reconnect_attempt: 0,
            heartbeat_seq: 0,
            pending_hardware: None,
            told_ready: false,
            ended: EndedAttempts::from(VecDeque::from(durable.ended_attempts)),
            registration_key: durable.registration_key,
            stopping_reason: String::new(),
            awaiting_pre_job: BTreeMap::new(),
            session_was_active: false,
            fetching: BTreeMap::new(),
            uploading: BTreeMap::new(),
            outputs_done,
        }
    }

    // ---- the link ----

    pub(crate) fn close(&mut self, fx: &mut Effects, reason: CloseReason) {
        self.link = Link::Down;
        fx.close(reason);
    }

    pub(crate) fn link_up(&self) -> bool {
        self.link != Link::Down
    }

    // ---- the outbox ----

    pub(crate) fn outbox_empty(&self) -> bool {
        self.acked_event_index >= self.last_event_index
    }

    /// Persist an event, then send it if the API can take it now. When it cannot, the
    /// resend after the next authentication delivers it. An index past the protocol's
    /// range is never sent: the event stays in the outbox (the store holds it), and the
    /// next authentication refuses the API's claim that caused it (`no_index_room`).
    pub(crate) fn emit(&mut self, fx: &mut Effects, event: RunnerEvent) {
        self.last_event_index += 1;
        let index = self.last_event_index;
        let event = Arc::new(event);
        fx.persist(Durable::OutboxAppend {
            index,
            event: Arc::clone(&event),
        });
        if index > MAX_INDEX {
            fx.notify(Notice::IndexRangeExhausted { index });
        } else if self.link == Link::Authenticated {
            self.sent_up_to = index;
            fx.send(Outbound::Event { index, event });
        }
    }

    /// Whether the API's claim (`authenticated.last_event_index`) leaves too few indexes
    /// in the protocol's range for this runner's events: its outbox, renumbered to
    /// follow the claim when the claim is past what it sent, must end at least
    /// `EVENT_INDEX_HEADROOM` below `MAX_INDEX`. Returns the last index it would need.
    pub(crate) fn no_index_room(&self, api_last: u64) -> Option<u64> {
        let moved_up = api_last.saturating_sub(self.sent_up_to);
        let needed = self.last_event_index.saturating_add(moved_up);
        (needed > MAX_INDEX - EVENT_INDEX_HEADROOM).then_some(needed)
    }

    /// The API's word, at authentication, on the last event it holds. When it is past
    /// what this store has sent, the events in between were sent by the runner this
    /// store was before it went back in time (restored from an older copy, or a snapshot
    /// of the machine), and the API holds them: events made since and never sent move
    /// up to follow them, and numbering goes on from there. One that kept its index
    /// would be dropped by the API as one it has.
    pub(crate) fn adopt_api_position(&mut self, fx: &mut Effects, api_last: u64) {
        if api_last > self.sent_up_to {
            fx.persist(Durable::OutboxRenumbered {
                sent_up_to: self.sent_up_to,
                api_last,
            });
            self.last_event_index += api_last - self.sent_up_to;
            self.sent_up_to = api_last;
        }
        self.acknowledge_events(fx, api_last);
        // The resend that follows authentication sends everything after that.
        self.sent_up_to = self.last_event_index;
    }

    /// The API holds every event up to `up_to`. Claims beyond what it can hold are
    /// clamped: an event never sent must not be taken off the outbox.
    pub(crate) fn acknowledge_events(&mut self, fx: &mut Effects, up_to: u64) {
        self.acked_event_index = self.acked_event_index.max(up_to.min(self.sent_up_to));
        fx.persist(Durable::OutboxAcked {
            up_to: self.acked_event_index,
        });
    }

    // ---- jobs ----

    pub(crate) fn is_known(&self, job: &JobRef) -> bool {
        self.jobs
            .get(&job.job_id)
            .is_some_and(|entry| entry.attempt == job.attempt)
    }

    pub(crate) fn job_refs(&self) -> Vec<JobRef> {
        self.jobs
            .iter()
            .map(|(id, entry)| JobRef {
                job_id: id.clone(),
                attempt: entry.attempt,
            })
            .collect()
    }

    pub(crate) fn slots_free(&self) -> u32 {
        let used = u32::try_from(self.jobs.len()).unwrap_or(u32::MAX);
        self.config.slots.saturating_sub(used)
    }

    pub(crate) fn cancel_job(&mut self, fx: &mut Effects, job: &JobRef, reason: CancelReason) {
        if let Some(entry) = self.jobs.get_mut(&job.job_id) {
            // The first reason decides the outcome: a job cancelled by the API and then
            // caught by a shutdown was still cancelled by the API.
            entry.cancel.get_or_insert(reason);
            fx.push(Effect::CancelJob {
                job: job.clone(),
                reason,
                grace_secs: entry.grace_secs,
            });
        }
    }

    pub(crate) fn cancel_all_jobs(&mut self, fx: &mut Effects, reason: CancelReason) {
        for job in self.job_refs() {
            self.cancel_job(fx, &job, reason);
        }
    }

    /// A job of the previous process, as the runtime found it at start. A cancel that
    /// process asked for still decides the outcome; a job its supervisor still runs
    /// keeps its timeout counted from when it started, not from now.
    pub(crate) fn job_found(&mut self, fx: &mut Effects, job: &JobRef, found: FoundJob) {
        if !self.check_job(fx, job, "job_found") {
            return;
        }
        let Some(entry) = self.jobs.get_mut(&job.job_id) else {
            return;
        };
        if let Some(cancel) = found.cancel() {
            entry.cancel.get_or_insert(cancel);
        }
        if let FoundJob::Running { elapsed_ms, .. } = found {
            let left = entry
                .timeout_secs
                .saturating_mul(1000)
                .saturating_sub(elapsed_ms);
            fx.start(TimerKind::JobTimeout(job.clone()), Delay::Millis(left));
        }
        fx.notify(Notice::JobFound {
            job: job.clone(),
            found: found.name().to_owned(),
        });
    }

    /// The session is alive: jobs' supervisors may go on for the API's threshold.
    pub(crate) fn renew_leases(&self, fx: &mut Effects) {
        fx.push(Effect::RenewLeases {
            within_ms: self.session.runner_lost_threshold_ms,
        });
    }

    pub(crate) fn max_grace_secs(&self) -> u64 {
        self.jobs.values().map(|j| j.grace_secs).max().unwrap_or(0)
    }

    /// A job-process event for a job we do not run (or a stale attempt) is logged and
    /// otherwise ignored; returns whether the job is ours.
    pub(crate) fn check_job(&self, fx: &mut Effects, job: &JobRef, what: &str) -> bool {
        let known = self.is_known(job);
        if !known {
            fx.notify(Notice::StaleJob {
                job: job.clone(),
                what: what.to_owned(),
            });
        }
        known
    }

    /// Record the end of a job we run. `spawn_error` marks a job whose process never
    /// started: it failed, whatever its (unknown) exit status says, and the API is
    /// told why.
    pub(crate) fn job_finished(&mut self, fx: &mut Effects, end: JobFinish<'_>) {
        let JobFinish {
            job,
            status,
            duration_ms,
            output_bytes,
            spawn_error,
            recorded_cancel,
            usage,
        } = end;
        let Some(entry) = self.jobs.remove(&job.job_id) else {
            return;
        };
        self.awaiting_pre_job.remove(&job.job_id);
        self.fetching.remove(&job.job_id);
        self.uploading.remove(&job.job_id);
        self.outputs_done.remove(&job.job_id);
        fx.cancel(TimerKind::JobTimeout(job.clone()));
        fx.persist(Durable::JobRemoved { job: job.clone() });
        self.remember_ended(job.clone());
        let outcome = if spawn_error.is_some() {
            JobOutcome::Failed
        } else {
            // The core's own reason first: the first reason decides the outcome.
            outcome_of(entry.cancel.or(recorded_cancel), status)
        };
        let post_job = self.post_job_call(job, outcome, status);
        let finished = RunnerEvent::JobFinished {
            job: job.clone(),
            outcome,
            status,
            duration_ms,
            stdout_bytes: output_bytes.0,
            stderr_bytes: output_bytes.1,
            detail: spawn_error.map(str::to_owned),
            cpu_user_ms: usage.cpu_user_ms,
            cpu_system_ms: usage.cpu_system_ms,
            peak_rss_bytes: usage.peak_rss_bytes,
            wall_ms: usage.wall_ms,
            gpu_memory_peak_bytes: usage.gpu_memory_peak_bytes,
        };
        self.emit(fx, finished);
        // After the end is persisted (this batch's transaction comes first).
        if let Some(call) = post_job {
            fx.push(Effect::RunHook(call));
        }
    }

    /// Record the end of a job that never started: its `pre_job` hook or an input
    /// failed (`detail` says why; the outcome is failed), or it was asked to stop
    /// while the hook ran or its inputs were fetched (the outcome the stop calls for).
    pub(crate) fn job_ended_unstarted(
        &mut self,
        fx: &mut Effects,
        job: &JobRef,
        detail: Option<String>,
    ) {
        let Some(entry) = self.jobs.remove(&job.job_id) else {
            return;
        };
        self.awaiting_pre_job.remove(&job.job_id);
        self.fetching.remove(&job.job_id);
        self.outputs_done.remove(&job.job_id);
        fx.cancel(TimerKind::JobTimeout(job.clone()));
        fx.persist(Durable::JobRemoved { job: job.clone() });
        // Never started, but ended: the same attempt is never run again.
        self.remember_ended(job.clone());
        let outcome = match (&detail, entry.cancel) {
            (Some(_), _) | (None, None) => JobOutcome::Failed,
            (None, cancel) => outcome_of(cancel, ExitStatus::Unknown),
        };
        self.emit(
            fx,
            RunnerEvent::JobFinished {
                job: job.clone(),
                outcome,
                status: ExitStatus::Unknown,
                duration_ms: 0,
                stdout_bytes: 0,
                stderr_bytes: 0,
                detail,
                // Never ran: nothing to account.
                cpu_user_ms: None,
                cpu_system_ms: None,
                peak_rss_bytes: None,
                wall_ms: None,
                gpu_memory_peak_bytes: None,
            },
        );
    }

    /// Remember an attempt that ended here, forgetting the oldest past the bound (the
    /// store keeps the same ones: it applies `JobRemoved` the same way).
    fn remember_ended(&mut self, job: JobRef) {
        self.ended.remember(job);
    }

    pub(crate) fn ended_here(&self, job_id: &str, attempt: u32) -> bool {
        self.ended.contains(job_id, attempt)
    }

    // ---- heartbeats ----

    pub(crate) fn send_heartbeat(&mut self, fx: &mut Effects) {
        self.heartbeat_seq += 1;
        fx.send(Outbound::Heartbeat {
            seq: self.heartbeat_seq,
            jobs_running: u32::try_from(self.jobs.len()).unwrap_or(u32::MAX),
        });
        fx.start(
            TimerKind::Heartbeat,
            Delay::Millis(self.session.heartbeat_interval_ms),
        );
        fx.start(TimerKind::Ack, Delay::Millis(self.session.ack_timeout_ms));
    }

    /// Whether a `heartbeat_ack` answers the latest heartbeat sent: a late answer to an
    /// older one must not stand in for it (its reply timer stays armed).
    pub(crate) fn answers_latest_heartbeat(&self, seq: u64) -> bool {
        self.heartbeat_seq > 0 && seq == self.heartbeat_seq
    }

    pub(crate) fn arm_handshake_timer(&self, fx: &mut Effects) {
        fx.start(
            TimerKind::Ack,
            Delay::Millis(self.config.handshake_timeout_ms),
        );
    }

    pub(crate) fn send_authenticate(&self, fx: &mut Effects) {
        fx.send(Outbound::Authenticate {
            nonce: self.nonce.clone().unwrap_or_default().into(),
            runner_id: self.runner_id.clone().unwrap_or_default(),
            slots: self.config.slots,
            last_command_index: self.last_applied,
        });
    }
}

/// How a job ended, as the runtime observed it.
#[derive(Clone, Copy)]
pub(crate) struct JobFinish<'a> {
    pub job: &'a JobRef,
    pub status: ExitStatus,
    pub duration_ms: u64,
    pub output_bytes: (u64, u64),
    /// Why the process could not be started, when it could not.
    pub spawn_error: Option<&'a str>,
    /// A cancel the job's supervisor recorded that this process did not ask for.
    pub recorded_cancel: Option<CancelReason>,
    /// What the job's processes used, as the runtime measured it.
    pub usage: JobUsage,
}

/// The outcome the API is told. A cancellation the core asked for wins over the exit
/// status, because a job killed on timeout "fails" with a signal but timed out.
pub fn outcome_of(cancel: Option<CancelReason>, status: ExitStatus) -> JobOutcome {
    match (cancel, status) {
        (Some(CancelReason::TimedOut), _) => JobOutcome::TimedOut,
        (Some(CancelReason::RunnerLost | CancelReason::Abandoned), _) => JobOutcome::Lost,
        (Some(CancelReason::Cancelled | CancelReason::Shutdown), _) => JobOutcome::Cancelled,
        (None, ExitStatus::Exited { code: 0 }) => JobOutcome::Succeeded,
        (None, ExitStatus::Unknown) => JobOutcome::Lost,
        (None, _) => JobOutcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticated(durable: DurableState) -> Runner {
        let mut runner = Runner::new(CoreConfig::default(), BootMode::Resume, durable);
        runner.link = Link::Authenticated;
        runner
    }

    fn sent_indexes(fx: &Effects) -> Vec<u64> {
        fx.list
            .iter()
            .filter_map(|effect| match effect {
                Effect::Send(Outbound::Event { index, .. }) => Some(*index),
                _ => None,
            })
            .collect()
    }

    fn hardware_changed() -> RunnerEvent {
        RunnerEvent::HardwareChanged {
            changes: serde_json::from_str("[]").unwrap_or_default(),
        }
    }

    #[test]
    fn no_event_is_sent_past_the_top_of_the_range() {
        let mut runner = authenticated(DurableState {
            last_event_index: MAX_INDEX - 1,
            acked_event_index: MAX_INDEX - 1,
            ..DurableState::default()
        });
        let mut fx = Effects::default();
        runner.emit(&mut fx, hardware_changed());
        runner.emit(&mut fx, hardware_changed());
        assert_eq!(sent_indexes(&fx), [MAX_INDEX], "the last index is sent");
        let kept = fx.list.iter().any(|effect| {
            matches!(effect, Effect::Persist(Durable::OutboxAppend { index, .. }) if *index == MAX_INDEX + 1)
        });
        assert!(kept, "the one past it stays in the outbox: {:?}", fx.list);
        assert!(fx.list.iter().any(|effect| matches!(
            effect,
            Effect::Notify(notice)
                if matches!(**notice, Notice::IndexRangeExhausted { index } if index == MAX_INDEX + 1)
        )));
    }

    #[test]
    fn a_claim_must_leave_the_headroom_below_the_top() {
        let bound = MAX_INDEX - EVENT_INDEX_HEADROOM;
        let empty = authenticated(DurableState::default());
        assert_eq!(empty.no_index_room(bound), None);
        assert_eq!(empty.no_index_room(bound + 1), Some(bound + 1));
        assert_eq!(empty.no_index_room(MAX_INDEX), Some(MAX_INDEX));
        // Events made while no link was up move up behind the claim, and need room too.
        let mut unsent = Runner::new(
            CoreConfig::default(),
            BootMode::Resume,
            DurableState::default(),
        );
        let mut fx = Effects::default();
        unsent.emit(&mut fx, hardware_changed());
        unsent.emit(&mut fx, hardware_changed());
        assert_eq!(unsent.no_index_room(bound - 2), None);
        assert_eq!(unsent.no_index_room(bound - 1), Some(bound + 1));
    }

    #[test]
    fn ended_attempts_are_remembered_up_to_the_bound() {
        let mut runner = authenticated(DurableState::default());
        let job = |n: usize| JobRef {
            job_id: format!("j-{n}"),
            attempt: 1,
        };
        for n in 0..=ENDED_ATTEMPTS_KEPT {
            runner.remember_ended(job(n));
        }
        assert_eq!(runner.ended.len(), ENDED_ATTEMPTS_KEPT);
        assert!(!runner.ended_here("j-0", 1), "the oldest is forgotten");
        assert!(runner.ended_here("j-1", 1));
        assert!(runner.ended_here(&format!("j-{ENDED_ATTEMPTS_KEPT}"), 1));
        assert!(!runner.ended_here("j-1", 2));
    }

    #[test]
    fn only_the_latest_heartbeat_is_answered() {
        let mut runner = authenticated(DurableState::default());
        assert!(!runner.answers_latest_heartbeat(0), "none sent yet");
        let mut fx = Effects::default();
        runner.send_heartbeat(&mut fx);
        runner.send_heartbeat(&mut fx);
        assert!(runner.answers_latest_heartbeat(2));
        assert!(!runner.answers_latest_heartbeat(1), "a late answer");
        assert!(!runner.answers_latest_heartbeat(3), "never sent");
    }
}
