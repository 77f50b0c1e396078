//! The feed: what one dispatch changes in the metrics, read off the event and the
//! effects the core returned for it (and, after the batch, the core's getters).
//!
//! Owns: the little bookkeeping the timings need — when the heartbeat in flight was
//! sent, when each start command still waiting for its `job_started` arrived (one
//! entry per accepted job, gone when it starts or ends: bounded by the slots), the
//! acknowledged index. Must not: decide anything, or hold anything per job beyond
//! those entries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::{Core, Durable, Effect, Effects, Event, Lifecycle, Link, Outbound};
use crate::protocol::{
    Command, JobOutcome, OutputStream, RejectReason, RunnerEvent, ServerMessage,
};

use super::RunnerMetrics;
use super::outbox_age::OutboxAge;

/// The observer's handle on the metrics, with what the timings need to remember.
pub struct MetricsFeed {
    metrics: Arc<RunnerMetrics>,
    /// The heartbeat in flight: its sequence number and when it was sent.
    heartbeat: Option<(u64, Instant)>,
    /// Start commands accepted and not yet started: when each arrived, by job id.
    starting: HashMap<String, Instant>,
    /// The highest event index the API acknowledged, to count acknowledgements.
    acked: u64,
}

impl MetricsFeed {
    /// Start from the store's outbox as it was at boot (`acked`, `last` indexes).
    pub fn new(metrics: Arc<RunnerMetrics>, acked: u64, last: u64, now: Instant) -> Self {
        metrics.clocks().outbox = OutboxAge::boot(acked, last, now);
        Self {
            metrics,
            heartbeat: None,
            starting: HashMap::new(),
            acked,
        }
    }

    /// One dispatch: the event, the phases around it and the effects it produced.
    pub fn dispatched(
        &mut self,
        event: &Event,
        was: Lifecycle,
        is: Lifecycle,
        fx: &Effects,
        now: Instant,
    ) {
        let m = &self.metrics;
        if was != is {
            m.state.get_or_create(&[("state", was.name())]).set(0);
            m.state.get_or_create(&[("state", is.name())]).set(1);
            if is == Lifecycle::Reconnecting {
                m.reconnects
                    .get_or_create(&[("cause", reconnect_cause(event))])
                    .inc();
            }
            let mut clocks = m.clocks();
            if is == Lifecycle::Active && was != Lifecycle::Draining {
                clocks.session_since = Some(now);
            } else if is != Lifecycle::Draining {
                clocks.session_since = None;
            }
        }
        self.event_seen(event, fx, now);
        for effect in &fx.list {
            self.effect_seen(effect, now);
        }
    }

    /// After the batch: the gauges the core's getters give.
    pub fn performed(&mut self, core: &Core) {
        let m = &self.metrics;
        m.connected
            .set(i64::from(core.link() == Link::Authenticated));
        m.outbox_depth
            .set(i64::try_from(core.outbox_depth()).unwrap_or(i64::MAX));
        m.jobs_running
            .set(i64::try_from(core.running_jobs().len()).unwrap_or(i64::MAX));
    }

    /// A store transaction took `took` (measured by the runtime around the commit).
    pub fn store_committed(&self, took: Duration) {
        self.metrics.store_commit.observe(took.as_secs_f64());
    }

    /// `count` events went out again from the outbox (measured by the resend pump).
    pub fn resent(&self, count: usize) {
        self.metrics
            .events_resent
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    fn event_seen(&mut self, event: &Event, fx: &Effects, now: Instant) {
        match event {
            Event::Message(ServerMessage::HeartbeatAck { seq }) => {
                if let Some((sent_seq, sent_at)) = self.heartbeat
                    && sent_seq == *seq
                {
                    self.heartbeat = None;
                    let rtt = now.saturating_duration_since(sent_at);
                    self.metrics.heartbeat_rtt.observe(rtt.as_secs_f64());
                }
            }
            Event::HookFinished { hook, outcome, .. } => {
                let result = if outcome.passed() { "passed" } else { "failed" };
                self.metrics
                    .hooks
                    .get_or_create(&[("hook", hook.name()), ("result", result)])
                    .inc();
            }
            Event::Message(ServerMessage::Command {
                command: Command::StartJob { job },
                ..
            }) if accepted(fx) => {
                self.starting.insert(job.job_id.clone(), now);
            }
            _ => {}
        }
    }

    fn effect_seen(&mut self, effect: &Effect, now: Instant) {
        let m = &self.metrics;
        match effect {
            Effect::Send(Outbound::Heartbeat { seq, .. }) => self.heartbeat = Some((*seq, now)),
            Effect::Send(Outbound::Event { event, .. }) => {
                m.events_sent.inc();
                if let RunnerEvent::JobStarted { job, .. } = &**event
                    && let Some(arrived) = self.starting.remove(&job.job_id)
                {
                    let latency = now.saturating_duration_since(arrived);
                    m.dispatch_latency.observe(latency.as_secs_f64());
                }
            }
            Effect::Send(Outbound::HardwareFull { .. }) => hardware(m, "full"),
            Effect::Send(Outbound::HardwareChanges { .. }) => hardware(m, "changes"),
            Effect::Send(Outbound::HardwareUnchanged) => hardware(m, "unchanged"),
            Effect::Persist(write) => self.written(write, now),
            _ => {}
        }
    }

    fn written(&mut self, write: &Durable, now: Instant) {
        let m = &self.metrics;
        match write {
            Durable::LastApplied { .. } => {
                m.commands_applied.inc();
            }
            Durable::OutboxAppend { index, event } => {
                m.clocks().outbox.appended(*index, now);
                self.appended(event);
            }
            Durable::OutboxAcked { up_to } => {
                if *up_to > self.acked {
                    m.events_acked.inc_by(up_to - self.acked);
                    self.acked = *up_to;
                }
                m.clocks().outbox.acknowledged(*up_to);
            }
            Durable::OutboxRenumbered {
                sent_up_to,
                api_last,
            } => {
                // The API holds what this store never sent; those are not "acknowledged"
                // by this process.
                self.acked = self.acked.max(*api_last);
                m.clocks().outbox.renumbered(*sent_up_to, *api_last);
            }
            _ => {}
        }
    }

    /// An event the core put in the outbox.
    fn appended(&mut self, event: &RunnerEvent) {
        let m = &self.metrics;
        match event {
            RunnerEvent::JobStarted { .. } => {
                m.jobs_started.inc();
            }
            RunnerEvent::JobRejected { reason, .. } => {
                m.jobs_rejected
                    .get_or_create(&[("reason", reject_label(*reason))])
                    .inc();
            }
            RunnerEvent::JobFinished {
                job,
                outcome,
                duration_ms,
                ..
            } => {
                self.starting.remove(&job.job_id);
                m.jobs_finished
                    .get_or_create(&[("outcome", outcome_label(*outcome))])
                    .inc();
                #[allow(clippy::cast_precision_loss)] // milliseconds far below 2^52
                m.job_duration.observe(*duration_ms as f64 / 1000.0);
            }
            RunnerEvent::JobOutput { stream, data, .. } => {
                let stream = match stream {
                    OutputStream::Stdout => "stdout",
                    OutputStream::Stderr => "stderr",
                };
                m.output_bytes
                    .get_or_create(&[("stream", stream)])
                    .inc_by(base64_decoded_len(data));
            }
            RunnerEvent::HardwareChanged { .. } => hardware(m, "changed_while_active"),
            _ => {}
        }
    }
}

fn hardware(m: &RunnerMetrics, kind: &'static str) {
    m.hardware_syncs.get_or_create(&[("kind", kind)]).inc();
}

/// A start command was accepted when the batch spawns a job (or runs its `pre_job`).
fn accepted(fx: &Effects) -> bool {
    fx.list.iter().any(|e| {
        matches!(
            e,
            Effect::Persist(Durable::OutboxAppend { event, .. })
                if matches!(**event, RunnerEvent::JobAccepted { .. })
        )
    })
}

/// Why a session ended, as a label from a closed set: the event kind, with any
/// unexpected message counted as a protocol violation.
fn reconnect_cause(event: &Event) -> &'static str {
    match event {
        Event::Message(_) => "violation",
        other => other.kind().name(),
    }
}

fn reject_label(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::Draining => "draining",
        RejectReason::NoFreeSlot => "no_free_slot",
        RejectReason::InvalidSpec => "invalid_spec",
        RejectReason::AlreadyRun => "already_run",
    }
}

fn outcome_label(outcome: JobOutcome) -> &'static str {
    match outcome {
        JobOutcome::Succeeded => "succeeded",
        JobOutcome::Failed => "failed",
        JobOutcome::Cancelled => "cancelled",
        JobOutcome::TimedOut => "timed_out",
        JobOutcome::Lost => "lost",
    }
}

/// The byte count base64 text stands for (the outbox holds output as base64).
fn base64_decoded_len(data: &str) -> u64 {
    let padding = data.bytes().rev().take_while(|b| *b == b'=').count();
    let len = (data.len() / 4 * 3).saturating_sub(padding);
    u64::try_from(len).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::base64_decoded_len;

    #[test]
    fn decoded_lengths() {
        use base64::Engine;
        for n in 0..20 {
            let data = vec![7u8; n];
            let text = base64::engine::general_purpose::STANDARD.encode(&data);
            assert_eq!(base64_decoded_len(&text), n as u64);
        }
    }
}
