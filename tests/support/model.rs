//! The reference model for the spec conformance tests: the table decides the next phase
//! and the effects; this model only keeps the data the table's guards read (jobs,
//! indexes, the link), and it updates that data from the table's own effects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{LazyLock, Mutex};

use fyn_runner::core::{
    BootMode, CancelReason, ENDED_ATTEMPTS_KEPT, EVENT_INDEX_HEADROOM, Event, EventKind,
    FetchOutcome, FoundJob, HardwareCache, HookPoint, TimerKind, outcome_of,
};
use fyn_runner::protocol::{
    Command, JobOutcome, JobRef, MAX_INDEX, PROTOCOL_VERSION, ServerMessage,
};
use fyn_runner::spec::{EffectPattern, Spec, Step};

pub static SPEC: LazyLock<Spec> = LazyLock::new(|| match fyn_runner::spec::embedded() {
    Ok(spec) => spec,
    Err(e) => panic!("fsm-spec/lifecycle.spec does not parse: {e}"),
});

/// Table lines that decided at least one step in this test process.
static ROWS_HIT: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

pub fn rows_hit() -> BTreeSet<usize> {
    ROWS_HIT.lock().map(|rows| rows.clone()).unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct Model {
    pub phase: String,
    pub boot: BootMode,
    pub slots: u32,
    pub jobs: BTreeMap<String, u32>,
    pub draining_link: bool,
    pub startup_reported: bool,
    pub api_hw_known: bool,
    /// The service manager was told the runner is ready (`tell(ready)`).
    pub told_ready: bool,
    /// Reconnect attempts since the last healthy session: one per `start(backoff)`,
    /// none again after a heartbeat acknowledged in Active.
    pub backoff_attempt: u32,
    pub last_applied: u64,
    pub last_event: u64,
    pub acked: u64,
    /// The highest event index the API can hold: the store's last at boot, then
    /// whatever was sent.
    pub sent_up_to: u64,
    /// Timers armed by the table's effects (job timers by job id).
    pub armed: BTreeSet<String>,
    /// Heartbeats sent (`send(heartbeat)`): the seq of the latest.
    pub heartbeat_seq: u64,
    /// A registration key is kept (restored at boot, or generated in this run).
    pub key_kept: bool,
    /// Attempts that ended here (`persist(job_removed)`), oldest first.
    pub ended: Vec<JobRef>,
    /// The hooks configured (run only when booted to run: register or resume).
    pub hooks: BTreeSet<HookPoint>,
    /// The current session reached Active (its loss runs on_disconnected).
    pub was_active: bool,
    /// Jobs the table asked to stop (`kill(..)`) and not yet removed.
    pub stopping: BTreeSet<String>,
    /// Jobs accepted with a pre_job hook (`hook(pre_job)`) that has not ended.
    pub awaiting: BTreeMap<String, u32>,
    /// Jobs accepted whose spec lists inputs (fetched before the process starts).
    pub with_inputs: BTreeSet<String>,
    /// Jobs whose inputs are being fetched (`fetch`), until `InputsFetched`.
    pub fetching: BTreeMap<String, u32>,
    /// Jobs accepted whose spec lists outputs.
    pub with_outputs: BTreeSet<String>,
    /// Why the table asked each job to stop (the first reason), by job id.
    pub stop_reasons: BTreeMap<String, CancelReason>,
    /// Jobs whose outputs are being uploaded (`upload`), until `UploadsDone`.
    pub uploading: BTreeMap<String, u32>,
    /// Output files whose end was recorded (`persist(output_done)`), by job id.
    pub recorded: BTreeMap<String, BTreeSet<String>>,
    /// What the last step must have produced, and what held before it.
    pub last: Option<LastStep>,
}

#[derive(Debug, Clone)]
pub struct LastStep {
    pub phase_before: String,
    pub link_before: bool,
    pub authed_before: bool,
    pub step: Step,
    pub expected: Vec<EffectPattern>,
}

impl Model {
    pub fn link_up(&self) -> bool {
        let p = self.phase.as_str();
        if p == "Registering.connecting"
            || p == "Registering.waiting"
            || p == "Validating.connecting"
        {
            return false;
        }
        if p.starts_with("Draining") {
            return self.draining_link;
        }
        p.starts_with("Registering")
            || p.starts_with("Validating")
            || p.starts_with("HardwareSync")
            || p == "Ready"
            || p == "Active"
    }

    pub fn authed(&self) -> bool {
        let p = self.phase.as_str();
        self.link_up()
            && (p == "Validating.await_startup"
                || p.starts_with("HardwareSync")
                || p == "Ready"
                || p == "Active"
                || p.starts_with("Draining"))
    }

    fn event_job(event: &Event) -> Option<JobRef> {
        match event {
            Event::JobStarted { job, .. }
            | Event::JobOutput { job, .. }
            | Event::JobOutputTruncated { job, .. }
            | Event::JobProgressed { job, .. }
            | Event::JobKvWritten { job, .. }
            | Event::JobExited { job, .. }
            | Event::JobSpawnFailed { job, .. }
            | Event::JobFound { job, .. } => Some(job.clone()),
            Event::TimerFired {
                timer: TimerKind::JobTimeout(job),
            } => Some(job.clone()),
            Event::Message(ServerMessage::Command {
                command: Command::CancelJob { job_id, attempt },
                ..
            }) => Some(JobRef {
                job_id: job_id.clone(),
                attempt: *attempt,
            }),
            Event::Message(ServerMessage::Command {
                command: Command::StartJob { job },
                ..
            }) => Some(job.job_ref()),
            Event::HookFinished { job, .. } => job.clone(),
            Event::InputsFetched { job, .. }
            | Event::OutputUploaded { job, .. }
            | Event::OutputFailed { job, .. }
            | Event::UploadsDone { job, .. } => Some(job.clone()),
            _ => None,
        }
    }

    fn hooked(&self, point: HookPoint) -> bool {
        matches!(self.boot, BootMode::Register | BootMode::Resume) && self.hooks.contains(&point)
    }

    fn known(&self, event: &Event) -> bool {
        Self::event_job(event).is_some_and(|j| self.jobs.get(&j.job_id) == Some(&j.attempt))
    }

    fn drained(&self) -> bool {
        self.jobs.is_empty() && (self.acked >= self.last_event || !self.authed())
    }

    pub fn guard(&self, name: &str, event: &Event) -> bool {
        match name {
            "boot_install" => self.boot == BootMode::Install,
            "boot_leave" => self.boot == BootMode::Leave,
            "told_ready" => self.told_ready,
            "version_ok" => {
                matches!(event, Event::Message(ServerMessage::Hello { protocol, .. }) if *protocol == PROTOCOL_VERSION)
            }
            "resumed" => self.startup_reported,
            "behind_api" => matches!(
                event,
                Event::Message(ServerMessage::Authenticated { last_event_index, .. })
                    if *last_event_index > self.sent_up_to
            ),
            "no_room" => matches!(
                event,
                Event::Message(ServerMessage::Authenticated { last_event_index, .. })
                    if self.last_event + last_event_index.saturating_sub(self.sent_up_to)
                        > MAX_INDEX - EVENT_INDEX_HEADROOM
            ),
            "key_kept" => self.key_kept,
            "already_run" => Self::event_job(event).is_some_and(|j| {
                matches!(
                    event,
                    Event::Message(ServerMessage::Command {
                        command: Command::StartJob { .. },
                        ..
                    })
                ) && self.ended.contains(&j)
            }),
            "undelivered" => self.acked < self.last_event,
            "latest_beat" => matches!(
                event,
                Event::Message(ServerMessage::HeartbeatAck { seq })
                    if self.heartbeat_seq > 0 && *seq == self.heartbeat_seq
            ),
            "hw_known" => matches!(
                event,
                Event::Message(ServerMessage::Authenticated {
                    hardware_known: true,
                    ..
                })
            ),
            "send_full" => {
                matches!(
                    event,
                    Event::HardwareCollected {
                        cache: HardwareCache::Missing,
                        ..
                    }
                ) || !self.api_hw_known
            }
            "cache_changed" => matches!(
                event,
                Event::HardwareCollected {
                    cache: HardwareCache::Changed { .. },
                    ..
                }
            ),
            "cache_missing" => matches!(
                event,
                Event::HardwareCollected {
                    cache: HardwareCache::Missing,
                    ..
                }
            ),
            "dup" => match event {
                Event::Message(ServerMessage::Command { index, .. })
                | Event::UnreadableCommand { index, .. } => *index <= self.last_applied,
                _ => false,
            },
            "invalid" => {
                matches!(event, Event::Message(ServerMessage::Command { command: Command::StartJob { job }, .. }) if job.validate().is_err())
            }
            "id_running" => {
                Self::event_job(event).is_some_and(|j| self.jobs.contains_key(&j.job_id))
            }
            "slots_full" => self.jobs.len() >= self.slots as usize,
            "known" => self.known(event),
            "last_job" => self.known(event) && self.jobs.len() == 1,
            "jobs" => !self.jobs.is_empty(),
            "no_jobs" => self.jobs.is_empty(),
            "link_up" => self.link_up(),
            "link_down" => !self.link_up(),
            "authed" => self.authed(),
            "acks_all" => {
                matches!(event, Event::Message(ServerMessage::EventsAck { up_to }) if (*up_to).min(self.sent_up_to) >= self.last_event)
            }
            "drained" => self.drained(),
            "hook_connected" => self.hooked(HookPoint::OnConnected),
            "hook_disconnected" => self.hooked(HookPoint::OnDisconnected),
            "hook_drain" => self.hooked(HookPoint::OnDrain),
            "hook_stopped" => self.hooked(HookPoint::OnStopped),
            "hook_pre_job" => self.hooked(HookPoint::PreJob),
            "hook_post_job" => self.hooked(HookPoint::PostJob),
            "was_active" => self.was_active,
            "pre_job" => matches!(
                event,
                Event::HookFinished {
                    hook: HookPoint::PreJob,
                    ..
                }
            ),
            "hook_ok" => {
                matches!(event, Event::HookFinished { outcome, .. } if outcome.passed())
            }
            "awaiting" => Self::event_job(event)
                .is_some_and(|j| self.awaiting.get(&j.job_id) == Some(&j.attempt)),
            "has_inputs" => match event {
                Event::Message(ServerMessage::Command {
                    command: Command::StartJob { job },
                    ..
                }) => !job.inputs.is_empty(),
                _ => Self::event_job(event).is_some_and(|j| self.with_inputs.contains(&j.job_id)),
            },
            "fetching" => Self::event_job(event)
                .is_some_and(|j| self.fetching.get(&j.job_id) == Some(&j.attempt)),
            "fetch_ok" => matches!(
                event,
                Event::InputsFetched {
                    outcome: FetchOutcome::Fetched,
                    ..
                }
            ),
            "uploads" => match event {
                Event::JobExited {
                    job,
                    status,
                    cancel,
                    ..
                } if self.with_outputs.contains(&job.job_id) => {
                    let reason = self.stop_reasons.get(&job.job_id).copied().or(*cancel);
                    matches!(
                        outcome_of(reason, *status),
                        JobOutcome::Succeeded | JobOutcome::Failed | JobOutcome::TimedOut
                    )
                }
                _ => false,
            },
            "uploading" => Self::event_job(event)
                .is_some_and(|j| self.uploading.get(&j.job_id) == Some(&j.attempt)),
            "recorded" => match event {
                Event::OutputUploaded { job, path, .. } | Event::OutputFailed { job, path, .. } => {
                    self.recorded
                        .get(&job.job_id)
                        .is_some_and(|paths| paths.contains(path))
                }
                _ => false,
            },
            "stopping_job" => {
                Self::event_job(event).is_some_and(|j| self.stopping.contains(&j.job_id))
            }
            "found_running" => matches!(
                event,
                Event::JobFound {
                    found: FoundJob::Running { .. },
                    ..
                }
            ),
            other => panic!("the model does not know guard {other:?}"),
        }
    }

    /// Apply one event as the table says, remembering what the machine must produce.
    pub fn apply(mut self, event: &Event) -> Model {
        let kind = event.kind();
        let link_before = self.link_up();
        let authed_before = self.authed();
        let phase_before = self.phase.clone();
        let step = {
            let guard = |g: &str| self.guard(g, event);
            let entry_guard = |g: &str, handler: &[EffectPattern]| {
                let closed = handler.iter().any(|e| e.token.starts_with("close("));
                let up = link_before && !closed;
                match g {
                    "link_up" => up,
                    "link_down" => !up,
                    // What held before the step: the hooks, and whether the session
                    // being left had reached Active.
                    other => self.guard(other, event),
                }
            };
            match SPEC.step(&self.phase, kind.name(), &guard, &entry_guard) {
                Ok(step) => step,
                Err(e) => panic!("{e}"),
            }
        };
        if let Ok(mut rows) = ROWS_HIT.lock() {
            rows.insert(step.line);
        }
        let expected = substitute(&step.effects, event);
        let tokens: Vec<&str> = expected.iter().map(|e| e.token.as_str()).collect();
        self.update_data(event, kind, &tokens, &phase_before);
        self.update_link(event, &tokens, &phase_before, &step.next_phase, link_before);
        self.update_timers(event, &tokens);
        self.update_hooks(event, &expected, &phase_before, &step.next_phase);
        if step.next_phase == "Stopped" {
            // Stopped's entry cancels the timer of every job still in the table.
            self.armed.retain(|t| !t.starts_with("job_timeout:"));
        }
        self.phase = step.next_phase.clone();
        self.last = Some(LastStep {
            phase_before,
            link_before,
            authed_before,
            step,
            expected,
        });
        self
    }

    fn update_data(&mut self, event: &Event, kind: EventKind, tokens: &[&str], phase_before: &str) {
        let has = |t: &str| tokens.contains(&t);
        if has("send(startup)") {
            self.startup_reported = true;
        }
        if has("tell(ready)") {
            self.told_ready = true;
        }
        // Only the answer to the latest heartbeat proves the session healthy.
        if kind == EventKind::HeartbeatAck && phase_before == "Active" && has("cancel(ack)") {
            self.backoff_attempt = 0;
        }
        self.heartbeat_seq += tokens.iter().filter(|t| **t == "send(heartbeat)").count() as u64;
        if kind == EventKind::KeyGenerated && has("send(register)") {
            self.key_kept = true;
        }
        self.backoff_attempt += tokens.iter().filter(|t| **t == "start(backoff)").count() as u32;
        if kind == EventKind::HardwareConfirmed && phase_before == "HardwareSync.await_confirm" {
            self.api_hw_known = true;
        }
        match event {
            Event::Message(ServerMessage::Authenticated {
                last_event_index,
                hardware_known,
                ..
            }) if has("persist(outbox_acked)") => {
                self.api_hw_known = *hardware_known;
                // Past what was sent: the store went back in time, and the events not
                // sent move up to follow the API's.
                let api_last = *last_event_index;
                if has("persist(outbox_renumbered)") {
                    self.last_event += api_last - self.sent_up_to;
                    self.sent_up_to = api_last;
                }
                self.acked = self.acked.max(api_last.min(self.sent_up_to));
                // The resend after authentication sends the rest.
                self.sent_up_to = self.last_event;
            }
            Event::Message(ServerMessage::Command { index, .. })
            | Event::UnreadableCommand { index, .. }
                if has("persist(last_applied)") =>
            {
                self.last_applied = *index;
            }
            _ => {}
        }
        self.last_event += tokens.iter().filter(|t| **t == "persist(outbox)").count() as u64;
        if has("send(event)") {
            self.sent_up_to = self.last_event;
        }
        if let Event::Message(ServerMessage::EventsAck { up_to }) = event
            && has("persist(outbox_acked)")
        {
            // Never past what the API can hold: an event not sent stays in the outbox.
            self.acked = self.acked.max((*up_to).min(self.sent_up_to));
        }
        if let Some(job) = Self::event_job(event) {
            // Accepted: the process starts now, or once its pre_job hook succeeds.
            if kind == EventKind::StartJob && (has("spawn") || has("hook(pre_job)") || has("fetch"))
            {
                self.jobs.insert(job.job_id.clone(), job.attempt);
                if let Event::Message(ServerMessage::Command {
                    command: Command::StartJob { job: spec },
                    ..
                }) = event
                {
                    if !spec.inputs.is_empty() {
                        self.with_inputs.insert(job.job_id.clone());
                    }
                    if !spec.outputs.is_empty() {
                        self.with_outputs.insert(job.job_id.clone());
                    }
                }
            }
            if has("fetch") {
                self.fetching.insert(job.job_id.clone(), job.attempt);
            }
            if kind == EventKind::InputsFetched && (has("spawn") || has("persist(job_removed)")) {
                self.fetching.remove(&job.job_id);
            }
            if has("upload") {
                self.uploading.insert(job.job_id.clone(), job.attempt);
            }
            if has("persist(output_done)")
                && let Event::OutputUploaded { path, .. } | Event::OutputFailed { path, .. } = event
            {
                self.recorded
                    .entry(job.job_id.clone())
                    .or_default()
                    .insert(path.clone());
            }
            if has("hook(pre_job)") {
                self.awaiting.insert(job.job_id.clone(), job.attempt);
            }
            if kind == EventKind::HookFinished
                && (has("spawn") || has("fetch") || has("persist(job_removed)"))
            {
                self.awaiting.remove(&job.job_id);
            }
            if has("persist(job_removed)") {
                self.jobs.remove(&job.job_id);
                self.ended.push(job.clone());
                if self.ended.len() > ENDED_ATTEMPTS_KEPT {
                    self.ended.remove(0);
                }
                self.stopping.remove(&job.job_id);
                self.awaiting.remove(&job.job_id);
                self.fetching.remove(&job.job_id);
                self.with_inputs.remove(&job.job_id);
                self.with_outputs.remove(&job.job_id);
                self.stop_reasons.remove(&job.job_id);
                self.uploading.remove(&job.job_id);
                self.recorded.remove(&job.job_id);
            }
        }
    }

    /// Which jobs were asked to stop, and whether the session reached Active.
    fn update_hooks(
        &mut self,
        event: &Event,
        expected: &[EffectPattern],
        before: &str,
        next: &str,
    ) {
        for effect in expected {
            if !effect.token.starts_with("kill(") {
                continue;
            }
            let reason = effect
                .token
                .strip_prefix("kill(")
                .and_then(|t| t.strip_suffix(')'))
                .and_then(CancelReason::from_name);
            if effect.repeat {
                self.stopping.extend(self.jobs.keys().cloned());
                if let Some(reason) = reason {
                    for id in self.jobs.keys() {
                        self.stop_reasons.entry(id.clone()).or_insert(reason);
                    }
                }
            } else if let Some(job) = Self::event_job(event)
                && self.jobs.get(&job.job_id) == Some(&job.attempt)
            {
                if let Some(reason) = reason {
                    self.stop_reasons
                        .entry(job.job_id.clone())
                        .or_insert(reason);
                }
                self.stopping.insert(job.job_id);
            }
        }
        // A cancel the previous process asked for, found with the job, stops it too.
        if let Event::JobFound { job, found } = event
            && let Some(reason) = found.cancel()
            && self.jobs.get(&job.job_id) == Some(&job.attempt)
        {
            self.stopping.insert(job.job_id.clone());
            self.stop_reasons
                .entry(job.job_id.clone())
                .or_insert(reason);
        }
        if next == "Active" && before != "Active" {
            self.was_active = true;
        }
        if next.starts_with("Reconnecting") && !before.starts_with("Reconnecting") {
            self.was_active = false;
        }
    }

    fn update_link(
        &mut self,
        event: &Event,
        tokens: &[&str],
        before: &str,
        next: &str,
        link_before: bool,
    ) {
        if !next.starts_with("Draining") {
            return;
        }
        let closed = tokens.iter().any(|t| t.starts_with("close("));
        let lost = matches!(
            event.kind(),
            EventKind::SocketClosed | EventKind::SocketFailed
        );
        self.draining_link = if before.starts_with("Draining") {
            self.draining_link && !closed && !lost
        } else {
            link_before && !closed
        };
    }

    fn update_timers(&mut self, event: &Event, tokens: &[&str]) {
        if let Event::TimerFired { timer } = event {
            self.armed.remove(&timer_key(timer));
        }
        let job = Self::event_job(event).map(|j| j.job_id);
        for token in tokens {
            if let Some(name) = token
                .strip_prefix("start(")
                .and_then(|t| t.strip_suffix(')'))
            {
                self.armed.insert(named_timer(name, job.as_deref()));
            } else if let Some(name) = token
                .strip_prefix("cancel(")
                .and_then(|t| t.strip_suffix(')'))
            {
                if name == "job_timeout" && job.is_none() {
                    // Stopped's entry cancels the timer of every remaining job.
                    self.armed.retain(|t| !t.starts_with("job_timeout:"));
                } else {
                    self.armed.remove(&named_timer(name, job.as_deref()));
                }
            }
        }
    }
}

fn named_timer(name: &str, job: Option<&str>) -> String {
    match (name, job) {
        ("job_timeout", Some(job)) => format!("job_timeout:{job}"),
        _ => name.to_owned(),
    }
}

pub fn timer_key(timer: &TimerKind) -> String {
    match timer {
        TimerKind::JobTimeout(job) => format!("job_timeout:{}", job.job_id),
        other => other.name().to_owned(),
    }
}

/// `close(frame)` means the close reason the bad frame carries.
fn substitute(effects: &[EffectPattern], event: &Event) -> Vec<EffectPattern> {
    effects
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if let Event::BadFrame { close, .. } = event {
                e.token = e
                    .token
                    .replace("close(frame)", &format!("close({})", close.name()));
            }
            e
        })
        .collect()
}
