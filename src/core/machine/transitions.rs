//! The moves several states make alike: a stop, a drain begun or finished,
//! registration ended or retried, the next backoff, the hand-over to `HardwareSync` and
//! `Ready`. Each returns the state's outcome (or only effects); the states (`super`)
//! decide when. Must not: route events; that is the states' handlers'.

use statig::blocking::*;

use crate::core::effect::{
    CancelReason, Delay, Effect, Effects, ExitCode, InstallStep, Notice, Outbound, TimerKind,
};
use crate::core::hooks::HookPoint;
use crate::core::runner::{Link, Runner};
use crate::protocol::CloseReason;

use super::{DrainMode, RegisterStep, State, SyncStep};

/// Beyond its own bound, the time a stop is given to flush and exit, which the service
/// manager is asked to allow on top.
const STOP_MARGIN_SECS: u64 = 30;

impl Runner {
    /// Undo the install. Past registration (the service step) the API holds a runner
    /// this install made: it is told to forget it, so no ghost stays behind.
    pub(super) fn roll_back_install(step: InstallStep, fx: &mut Effects) -> Outcome<State> {
        fx.push(Effect::RollbackInstall);
        if step == InstallStep::InstallService {
            fx.push(Effect::Farewell);
        }
        Transition(State::stopped(ExitCode::RegistrationFailed))
    }

    /// How long a drain in `mode` may still take, at most: its deadline (graceful), the
    /// longest cancel grace and the flush, and a margin to exit.
    pub(super) fn stop_bound_secs(&self, mode: DrainMode) -> u64 {
        // Saturating: a deadline or a grace from outside (the API, the control socket) must
        // not overflow into a tiny bound that gets the runner killed mid-drain.
        let hooks_at_stop = if self.hooked(HookPoint::PostJob) || self.hooked(HookPoint::OnStopped)
        {
            self.config.hook_timeout_secs
        } else {
            0
        };
        let tail = self
            .max_grace_secs()
            .saturating_add(self.config.flush_grace_secs)
            .saturating_add(STOP_MARGIN_SECS)
            .saturating_add(hooks_at_stop);
        match mode {
            DrainMode::Graceful => self.drain_deadline_secs.saturating_add(tail),
            DrainMode::Forced => tail,
        }
    }

    pub(super) fn registration_failed(
        &mut self,
        fx: &mut Effects,
        close: CloseReason,
        reason: Option<String>,
    ) -> Outcome<State> {
        self.registration_ended(fx, close, reason, ExitCode::RegistrationFailed)
    }

    /// Registration failed for good: report, close, roll back, stop with `code`.
    pub(super) fn registration_ended(
        &mut self,
        fx: &mut Effects,
        close: CloseReason,
        reason: Option<String>,
        code: ExitCode,
    ) -> Outcome<State> {
        fx.notify(Notice::RegistrationFailed {
            reason: reason
                .unwrap_or_else(|| "the control plane did not complete registration".into()),
        });
        if self.link_up() {
            self.close(fx, close);
        }
        fx.push(Effect::RollbackInstall);
        Transition(State::stopped(code))
    }

    pub(super) fn begin_hardware_sync(&mut self, fx: &mut Effects) -> Outcome<State> {
        fx.push(Effect::CollectHardware);
        self.arm_handshake_timer(fx);
        Transition(State::hardware_sync(SyncStep::Collecting))
    }

    pub(super) fn enter_ready(&mut self, fx: &mut Effects) -> Outcome<State> {
        fx.send(Outbound::Ready {
            slots_free: self.slots_free(),
        });
        self.arm_handshake_timer(fx);
        Transition(State::ready())
    }

    /// Stop at once: jobs are abandoned (the exit kills their process groups).
    pub(super) fn stop_now(&mut self, fx: &mut Effects, code: ExitCode) -> Outcome<State> {
        self.cancel_all_jobs(fx, CancelReason::Abandoned);
        Transition(State::stopped(code))
    }

    pub(super) fn force_jobs(&mut self, fx: &mut Effects) {
        self.cancel_all_jobs(fx, CancelReason::Shutdown);
        let secs = self.max_grace_secs() + self.config.flush_grace_secs;
        fx.start(
            TimerKind::DrainDeadline,
            Delay::Millis(secs.saturating_mul(1000)),
        );
    }

    /// Enter the drain; when there is nothing to wait for, stop right away.
    pub(super) fn begin_drain(&mut self, fx: &mut Effects, mode: DrainMode) -> Outcome<State> {
        // Without an authenticated session the outbox cannot drain now: it waits for
        // the next start, so only running jobs are worth waiting for.
        if self.jobs.is_empty() && (self.outbox_empty() || self.link != Link::Authenticated) {
            if self.link == Link::Authenticated {
                fx.send(Outbound::Stopping {
                    reason: self.stopping_reason.clone(),
                    deadline_secs: 0,
                });
            }
            if self.link_up() {
                self.close(fx, CloseReason::Normal);
            }
            return Transition(State::stopped(self.unless_undelivered(ExitCode::Clean)));
        }
        if self.link == Link::Open {
            // Not yet authenticated: there is no session to report the drain on.
            self.close(fx, CloseReason::Normal);
        }
        if mode == DrainMode::Forced {
            self.cancel_all_jobs(fx, CancelReason::Shutdown);
        }
        Transition(State::draining(mode))
    }

    pub(super) fn link_lost_while_draining(
        &mut self,
        fx: &mut Effects,
        mode: DrainMode,
    ) -> Outcome<State> {
        fx.cancel(TimerKind::Heartbeat);
        fx.cancel(TimerKind::Ack);
        self.finish_if_drained(fx, mode)
    }

    pub(super) fn finish_if_drained(
        &mut self,
        fx: &mut Effects,
        mode: DrainMode,
    ) -> Outcome<State> {
        let drained = self.jobs.is_empty() && (self.outbox_empty() || !self.link_up());
        if !drained {
            return Handled;
        }
        let code = match mode {
            DrainMode::Graceful => ExitCode::Clean,
            DrainMode::Forced => ExitCode::Forced,
        };
        self.stop_draining(fx, code)
    }

    pub(super) fn stop_draining(&mut self, fx: &mut Effects, code: ExitCode) -> Outcome<State> {
        if self.link_up() {
            self.close(fx, CloseReason::Normal);
        }
        Transition(State::stopped(self.unless_undelivered(code)))
    }

    /// A stop that leaves events the API has not acknowledged must not look like a
    /// clean one (or a forced one, which a service manager counts as a success): it
    /// exits `Undelivered`, and the events wait in the store for the next start.
    pub(super) fn unless_undelivered(&self, code: ExitCode) -> ExitCode {
        if self.outbox_empty() {
            code
        } else {
            ExitCode::Undelivered
        }
    }

    pub(super) fn send_register(&mut self, fx: &mut Effects, public_key: String) {
        fx.send(Outbound::Register {
            public_key,
            slots: self.config.slots,
        });
        self.arm_handshake_timer(fx);
    }

    /// Registration failed for now, not for good: back off, then try again with the
    /// token this process still holds (and the key it kept).
    pub(super) fn retry_registration(
        &mut self,
        fx: &mut Effects,
        step: &mut RegisterStep,
    ) -> Outcome<State> {
        self.schedule_backoff(fx);
        *step = RegisterStep::Waiting;
        Handled
    }

    /// The next reconnect attempt's delay, drawn here (full jitter below the ceiling
    /// of this attempt) so the effect carries the exact delay.
    pub(super) fn schedule_backoff(&mut self, fx: &mut Effects) {
        self.reconnect_attempt = self.reconnect_attempt.saturating_add(1);
        let delay = self
            .jitter
            .delay_ms(&self.config.backoff, self.reconnect_attempt);
        fx.start(TimerKind::Backoff, Delay::Millis(delay));
    }
}
