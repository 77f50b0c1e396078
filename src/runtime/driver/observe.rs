//! The observer: what the outside sees of each dispatch. Fed `(event, phase before,
//! phase after, effects)` at the one dispatch point, it records the trace, logs and
//! broadcasts the transition, and publishes the status; it delivers the core's
//! notices to the operator (log lines, `problem`) and to the service manager.
//!
//! It also feeds the metrics (`crate::runtime::metrics`, when `--metrics-listen` is
//! set) from the same view, plus the two timings only the runtime sees (a store
//! commit's duration, a resend's count), and answers health probes from the core's
//! getters.
//!
//! Owns: the trace recorder, the status and transition channels, the service-manager
//! channel, the metrics feed. Must not: feed anything back into the core, or decide what to tell
//! anyone: every notice is an effect the core emitted.

use std::path::PathBuf;

use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::core::{
    BootMode, Core, DurableState, Effects, Event, Lifecycle, Link, ManagerNotice, Notice, State,
};
use crate::runtime::metrics::{MetricsFeed, ProbeAnswer};
use crate::runtime::notices::{log_notice, problem_of};
use crate::runtime::secure_fs;
use crate::runtime::settings::RunnerSettings;
use crate::runtime::status::{RunnerStatus, status_of, unix_ms};

use super::handle::Transition;

/// The trace of this run (see `crate::trace`).
struct Trace {
    recorder: crate::trace::Recorder,
    seq: u64,
    started: std::time::Instant,
}

pub(super) struct Observer {
    trace: Option<Trace>,
    status: watch::Sender<RunnerStatus>,
    transitions: broadcast::Sender<Transition>,
    manager: ServiceManager,
    endpoint: String,
    metrics: Option<MetricsFeed>,
}

impl Observer {
    pub(super) fn new(
        trace: Option<TraceStart>,
        status: watch::Sender<RunnerStatus>,
        transitions: broadcast::Sender<Transition>,
        endpoint: String,
    ) -> Self {
        Self {
            trace: trace.map(|t| t.0),
            status,
            transitions,
            manager: ServiceManager::from_environment(),
            endpoint,
            metrics: None,
        }
    }

    /// The metrics listener's address, for `status`.
    pub(super) fn metrics_listening(&mut self, addr: std::net::SocketAddr) {
        self.status
            .send_modify(|s| s.metrics_listen = Some(addr.to_string()));
    }

    /// Feed these metrics from now on.
    pub(super) fn feed_metrics(&mut self, feed: MetricsFeed) {
        self.metrics = Some(feed);
    }

    /// A health probe's answer: the loop is alive (it is answering), and whether the
    /// runner is ready for jobs (Active, authenticated).
    pub(super) fn probe_answer(&self, core: &Core) -> ProbeAnswer {
        ProbeAnswer {
            state: core.state_name(),
            ready: matches!(core.state(), State::Active {}) && core.link() == Link::Authenticated,
        }
    }

    /// A store transaction's duration, measured around the commit.
    pub(super) fn store_committed(&self, took: std::time::Duration) {
        if let Some(metrics) = &self.metrics {
            metrics.store_committed(took);
        }
    }

    /// Events sent again from the outbox.
    pub(super) fn resent(&self, count: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.resent(count);
        }
    }

    /// Every event and what came of it, before the batch is performed: the trace
    /// (from here and nowhere else) and the transition.
    pub(super) fn dispatched(&mut self, event: &Event, passage: &Passage<'_>, fx: &Effects) {
        let (before, after) = (passage.before, passage.after);
        self.record(event, before, after, fx);
        if let Some(metrics) = &mut self.metrics {
            metrics.dispatched(
                event,
                passage.was,
                passage.is,
                fx,
                std::time::Instant::now(),
            );
        }
        if before != after {
            info!(from = %before, to = %after, event = event.kind().name(), "transition");
            let _ = self.transitions.send(Transition {
                from: before.to_owned(),
                to: after.to_owned(),
                event: event.kind().name(),
            });
        }
    }

    /// After the batch was performed: the status behind `fyn-runner status`.
    pub(super) fn performed(&mut self, core: &Core, event: &Event) {
        let next = status_of(
            core,
            Some(&self.status.borrow()),
            &self.endpoint,
            Some(event),
        );
        let _ = self.status.send(next);
        if let Some(metrics) = &mut self.metrics {
            metrics.performed(core);
        }
    }

    /// A notice for the operator: a log line, and the `problem` when it explains a
    /// failure.
    pub(super) fn notify(&mut self, notice: &Notice) {
        log_notice(notice);
        if let Some(problem) = problem_of(notice) {
            self.status.send_modify(|s| s.problem = Some(problem));
        }
    }

    /// A notice for the service manager (and, for the drain's progress, the log).
    pub(super) fn tell_manager(&mut self, notice: &ManagerNotice) {
        if let ManagerNotice::DrainProgress {
            jobs_left,
            undelivered,
            ..
        } = notice
        {
            info!(jobs_left, undelivered, "draining");
        }
        self.manager.tell(notice);
    }

    fn record(&mut self, event: &Event, before: &str, after: &str, fx: &Effects) {
        let Some(trace) = &mut self.trace else { return };
        trace.seq += 1;
        let mono_ms = u64::try_from(trace.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let entry = crate::trace::TraceEntry::new(
            trace.seq,
            unix_ms(),
            mono_ms,
            event,
            before,
            after,
            &fx.list,
        );
        if let Err(e) = trace.recorder.record(entry) {
            warn!(error = %e, "trace recording stopped");
            self.trace = None;
        }
    }

    /// Push what the trace buffered to its file; called when the loop is idle.
    pub(super) fn flush_trace(&mut self) {
        if let Some(trace) = &mut self.trace
            && let Err(e) = trace.recorder.flush()
        {
            warn!(error = %e, "trace recording stopped");
            self.trace = None;
        }
    }

    /// Flush and close the trace file (an install rolling back removes its folder,
    /// and Windows refuses to delete an open file).
    pub(super) fn close_trace(&mut self) {
        self.flush_trace();
        self.trace = None;
    }
}

/// Where one dispatch took the machine: the phases as the trace names them, and the
/// lifecycle states typed, for what acts on them.
pub(super) struct Passage<'a> {
    pub before: &'a str,
    pub after: &'a str,
    pub was: Lifecycle,
    pub is: Lifecycle,
}

/// A started trace recording, handed from the launch to the observer.
pub(super) struct TraceStart(Trace);

impl TraceStart {
    pub(super) fn path(&self) -> PathBuf {
        self.0.recorder.path().to_path_buf()
    }
}

/// Tracing is a diagnostic: when it cannot start, the runner runs without it and says so.
pub(super) fn start_trace(
    settings: &RunnerSettings,
    mode: BootMode,
    config: &crate::core::CoreConfig,
    durable: &DurableState,
    boot: &Effects,
) -> Option<TraceStart> {
    let limits = settings.trace.as_ref()?;
    let dir = settings.state_dir.join("traces");
    let started = std::time::Instant::now();
    let result = secure_fs::create_private_dir(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let stamp = crate::trace::StartedAt::UnixMs(unix_ms());
            crate::trace::TraceHeader::new(stamp, mode, config, durable, &boot.list)
                .map_err(|e| e.to_string())
        })
        .and_then(|header| {
            crate::trace::Recorder::create(&dir, header, limits.max_bytes, limits.keep)
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(recorder) => {
            info!(path = %recorder.path().display(), "recording the session trace");
            Some(TraceStart(Trace {
                recorder,
                seq: 0,
                started,
            }))
        }
        Err(error) => {
            warn!(%error, dir = %dir.display(), "cannot record a trace; running without one");
            None
        }
    }
}

/// systemd's notification socket (`Type=notify` units), through the `sd-notify` crate,
/// which reads `NOTIFY_SOCKET` itself. Best effort: a missing or broken socket changes
/// nothing about the runner. Linux only: launchd has no such channel, and the Windows
/// service tells the service control manager its state itself.
struct ServiceManager {
    enabled: bool,
}

impl ServiceManager {
    fn from_environment() -> Self {
        Self {
            enabled: cfg!(target_os = "linux") && std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    fn tell(&self, notice: &ManagerNotice) {
        if self.enabled {
            deliver(notice);
        }
    }
}

#[cfg(target_os = "linux")]
fn deliver(notice: &ManagerNotice) {
    use sd_notify::NotifyState;
    // `EXTEND_TIMEOUT_USEC` is a u32 in the crate (about 71 minutes). A longer bound is
    // clamped: the drain's progress notices extend it again every few seconds, and
    // systemd keeps the later of the deadlines it was given.
    let extend = |secs: u64| {
        NotifyState::ExtendTimeoutUsec(
            u32::try_from(secs.saturating_mul(1_000_000)).unwrap_or(u32::MAX),
        )
    };
    let result = match notice {
        ManagerNotice::Ready => sd_notify::notify(&[NotifyState::Ready]),
        ManagerNotice::Status { state } => sd_notify::notify(&[NotifyState::Status(state)]),
        ManagerNotice::Stopping { within_secs } => {
            sd_notify::notify(&[NotifyState::Stopping, extend(*within_secs)])
        }
        ManagerNotice::DrainProgress {
            jobs_left,
            undelivered,
            within_secs,
        } => {
            let status =
                format!("Draining: {jobs_left} job(s) left, {undelivered} event(s) to deliver");
            sd_notify::notify(&[NotifyState::Status(&status), extend(*within_secs)])
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "service manager notification failed");
    }
}

#[cfg(not(target_os = "linux"))]
fn deliver(_notice: &ManagerNotice) {}
