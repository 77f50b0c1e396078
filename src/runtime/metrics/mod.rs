/*!
The runner's metrics and health probes, behind `--metrics-listen` (off by default).

Owns: the metric families (`RunnerMetrics`, one `prometheus_client` registry, every
family named once here), the feed that turns what the dispatch point saw into
counts (`feed`), the age of the oldest unacknowledged event (`outbox_age`), and the
HTTP listener serving `/metrics`, `/healthz` and `/readyz` (`server`).

Must not: feed anything back into the core, or be fed from anywhere but the observer
(`driver/observe.rs`) after a dispatch, plus the two timings only the runtime sees
(a store commit, a resend's count), which the driver hands to that same observer.
No label carries a job id, a runner id or anything else without a fixed bound: every
label value is a name from a closed set (a state, an event kind, an outcome, a
stream), so memory stays flat however many jobs run.
*/

mod feed;
mod outbox_age;
mod server;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

pub use feed::MetricsFeed;
pub use server::{
    MetricsServer, MetricsServerError, PROBE_WITHIN, Probe, ProbeAnswer, ProbeSender, serve,
};

use outbox_age::OutboxAge;

use crate::core::Lifecycle;

/// A label set of one name and a value from a closed set.
pub(crate) type Label = [(&'static str, &'static str); 1];

pub use crate::exposition::Exposition;

/// Every metric of the runner. Counters and histograms are atomics; the two values
/// that are ages (session uptime, oldest unacknowledged event) are computed when
/// scraped, from the instants in `clocks`.
#[derive(Debug)]
pub struct RunnerMetrics {
    registry: Registry,
    state: Family<Label, Gauge>,
    connected: Gauge,
    session_uptime: Gauge<f64, AtomicU64>,
    reconnects: Family<Label, Counter>,
    heartbeat_rtt: Histogram,
    commands_applied: Counter,
    events_sent: Counter,
    events_resent: Counter,
    events_acked: Counter,
    outbox_depth: Gauge,
    outbox_oldest_age: Gauge<f64, AtomicU64>,
    jobs_running: Gauge,
    jobs_started: Counter,
    jobs_rejected: Family<Label, Counter>,
    jobs_finished: Family<Label, Counter>,
    job_duration: Histogram,
    dispatch_latency: Histogram,
    output_bytes: Family<Label, Counter>,
    hardware_syncs: Family<Label, Counter>,
    store_commit: Histogram,
    hooks: Family<[(&'static str, &'static str); 2], Counter>,
    clocks: Mutex<Clocks>,
}

/// What the scrape-time ages are measured from.
#[derive(Debug, Default)]
struct Clocks {
    /// When the current session reached Active.
    session_since: Option<std::time::Instant>,
    outbox: OutboxAge,
}

impl RunnerMetrics {
    /// Every family registered, the state set at `phase` (the boot phase), so a
    /// scrape before the first event already shows all nine states.
    pub fn new(phase: Lifecycle) -> Arc<Self> {
        let mut registry = Registry::with_prefix("fyn_runner");
        let state = Family::<Label, Gauge>::default();
        for lifecycle in <Lifecycle as strum::VariantArray>::VARIANTS {
            state.get_or_create(&[("state", lifecycle.name())]).set(0);
        }
        state.get_or_create(&[("state", phase.name())]).set(1);
        registry.register(
            "state",
            "The lifecycle state: 1 for the current one, 0 for the others",
            state.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "connected",
            "1 while the API has authenticated this runner on an open connection",
            connected.clone(),
        );
        let session_uptime = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "session_uptime",
            "Time since the current session reached Active (0 without one)",
            Unit::Seconds,
            session_uptime.clone(),
        );
        let reconnects = Family::<Label, Counter>::default();
        registry.register(
            "reconnects",
            "Sessions lost, by the event that ended them (SocketClosed, SocketFailed, AckOverdue, BadFrame, violation, HardwareFailed)",
            reconnects.clone(),
        );
        let heartbeat_rtt = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register_with_unit(
            "heartbeat_rtt",
            "From sending a heartbeat to its acknowledgement",
            Unit::Seconds,
            heartbeat_rtt.clone(),
        );
        let commands_applied = Counter::default();
        registry.register(
            "commands_applied",
            "Commands applied (each index once; resent indexes are not counted)",
            commands_applied.clone(),
        );
        let events_sent = Counter::default();
        registry.register(
            "events_sent",
            "Events sent as they were made",
            events_sent.clone(),
        );
        let events_resent = Counter::default();
        registry.register(
            "events_resent",
            "Events sent from the outbox after a reconnect (one made while that resend runs goes out through it and counts here and in events_sent)",
            events_resent.clone(),
        );
        let events_acked = Counter::default();
        registry.register(
            "events_acked",
            "Events the API acknowledged (and the outbox dropped)",
            events_acked.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register(
            "outbox_depth",
            "Events persisted and not yet acknowledged by the API",
            outbox_depth.clone(),
        );
        let outbox_oldest_age = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest unacknowledged event (0 when the outbox is empty; events an earlier process left count from this process's start)",
            Unit::Seconds,
            outbox_oldest_age.clone(),
        );
        let jobs_running = Gauge::default();
        registry.register(
            "jobs_running",
            "Jobs accepted and not yet ended",
            jobs_running.clone(),
        );
        let jobs_started = Counter::default();
        registry.register(
            "jobs_started",
            "Job processes started",
            jobs_started.clone(),
        );
        let jobs_rejected = Family::<Label, Counter>::default();
        registry.register(
            "jobs_rejected",
            "start_job commands refused, by reason",
            jobs_rejected.clone(),
        );
        let jobs_finished = Family::<Label, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs ended, by the outcome reported to the API",
            jobs_finished.clone(),
        );
        // One second to a week: simulations run for days.
        let job_duration = Histogram::new([
            1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 43_200.0, 86_400.0, 259_200.0,
            604_800.0,
        ]);
        registry.register_with_unit(
            "job_duration",
            "How long jobs ran, from their process's start to its end",
            Unit::Seconds,
            job_duration.clone(),
        );
        let dispatch_latency = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        registry.register_with_unit(
            "dispatch_latency",
            "From a start_job command's arrival to its job_started event being sent",
            Unit::Seconds,
            dispatch_latency.clone(),
        );
        let output_bytes = Family::<Label, Counter>::default();
        registry.register_with_unit(
            "output",
            "Job output taken into the outbox, by stream",
            Unit::Bytes,
            output_bytes.clone(),
        );
        let hardware_syncs = Family::<Label, Counter>::default();
        registry.register(
            "hardware_syncs",
            "Hardware reports sent: full records, change lists, unchanged notes, and changes found while Active",
            hardware_syncs.clone(),
        );
        let store_commit = Histogram::new(exponential_buckets(0.000_1, 2.0, 15));
        registry.register_with_unit(
            "store_commit",
            "Duration of one SQLite transaction (one per batch that writes)",
            Unit::Seconds,
            store_commit.clone(),
        );
        let hooks = Family::<[(&'static str, &'static str); 2], Counter>::default();
        registry.register(
            "hooks",
            "Hooks that ended, by hook and result (passed, failed)",
            hooks.clone(),
        );
        Arc::new(Self {
            hooks,
            registry,
            state,
            connected,
            session_uptime,
            reconnects,
            heartbeat_rtt,
            commands_applied,
            events_sent,
            events_resent,
            events_acked,
            outbox_depth,
            outbox_oldest_age,
            jobs_running,
            jobs_started,
            jobs_rejected,
            jobs_finished,
            job_duration,
            dispatch_latency,
            output_bytes,
            hardware_syncs,
            store_commit,
            clocks: Mutex::new(Clocks::default()),
        })
    }

    /// Every family as text, the scrape-time ages measured at `now`.
    pub fn render(&self, now: std::time::Instant, format: Exposition) -> String {
        {
            let clocks = self.clocks();
            let uptime = clocks.session_since.map_or(0.0, |since| {
                now.saturating_duration_since(since).as_secs_f64()
            });
            self.session_uptime.set(uptime);
            self.outbox_oldest_age.set(clocks.outbox.oldest_age(now));
        }
        format.encode(&self.registry)
    }

    fn clocks(&self) -> std::sync::MutexGuard<'_, Clocks> {
        // Held for a few instructions, never across an await: a poisoned lock only
        // means a panic elsewhere, and the ages are still worth showing.
        self.clocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
