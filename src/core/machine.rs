//! The statig machine: states, superstates, entry and exit actions. Routing only; the
//! logic lives in `Runner` (`runner.rs`). Each handler's doc names the `fsm-spec/` rows
//! it implements; `tests/spec_conformance.rs` holds the two together.
//!
//! Hierarchy (exit actions run up to the common ancestor, then entries run down):
//!
//! ```text
//! alive ─┬─ Installing {step}
//!        ├─ Registering {step}
//!        ├─ session ─┬─ Validating {step}
//!        │           ├─ HardwareSync {step}
//!        │           ├─ Ready
//!        │           └─ Active
//!        ├─ Reconnecting {step}
//!        └─ Draining {mode}
//! Stopped {code}
//! ```

#![allow(clippy::trivially_copy_pass_by_ref)] // statig hands local storage by reference

use serde::{Deserialize, Serialize};
use statig::blocking::*;
use strum::IntoStaticStr;

use crate::protocol::{CloseReason, Command, JobUsage, PROTOCOL_VERSION, ServerMessage};

use super::effect::{
    CancelReason, Delay, Effect, Effects, ExitCode, InstallStep, ManagerNotice, Notice, Outbound,
    TimerKind,
};
use super::event::{Event, HardwareCache, StopOrigin};
use super::hooks::{HookCall, HookPoint};
use super::job_files::FileEnd;
use super::runner::{BootMode, JobFinish, Link, Runner};

/// How often a drain reports what it still waits for.
pub const DRAIN_PROGRESS_MS: u64 = 5_000;

/// Beyond its own bound, the time a stop is given to flush and exit, which the service
/// manager is asked to allow on top.
const STOP_MARGIN_SECS: u64 = 30;

/// `stopping.reason` when the API's `drain` command asked (protocol §11).
const DRAIN_COMMAND_REASON: &str = "the control plane's drain command";

/// `stopping.reason` for a forced stop (a second stop signal, `fyn-runner drain --force`).
const FORCED_STOP_REASON: &str = "forced stop (a second stop signal or fyn-runner drain --force)";

/// `stopping.reason` when the origin is not known (a trace recorded before it was).
const UNKNOWN_STOP_REASON: &str = "runner shutdown";

// The steps' names are the spec table's (`Validating.await_auth`), the same as serde's.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RegisterStep {
    /// Waiting out the backoff before the next attempt (the token is still held).
    Waiting,
    Connecting,
    AwaitHello,
    AwaitToken,
    AwaitKey,
    AwaitRegistration,
    Saving,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ValidateStep {
    Connecting,
    AwaitHello,
    AwaitAuth,
    AwaitStartup,
    /// A farewell (`BootMode::Leave`): `leaving` sent, waiting for `left`.
    AwaitLeft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SyncStep {
    Collecting,
    AwaitConfirm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ReconnectStep {
    /// Waiting out the backoff delay.
    Waiting,
    /// A connection attempt is in flight.
    Connecting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DrainMode {
    /// Jobs may finish until the deadline.
    Graceful,
    /// Jobs were told to stop; wait for them (bounded), flush, exit non-zero.
    Forced,
}

macro_rules! step_names {
    ($($ty:ident)*) => {$(
        impl $ty {
            pub fn name(self) -> &'static str {
                self.into()
            }
        }
    )*};
}

step_names!(RegisterStep ValidateStep SyncStep ReconnectStep DrainMode);

#[state_machine(
    initial = "State::validating(ValidateStep::Connecting)",
    state(derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)),
    superstate(derive(Debug)),
    context_identifier = "fx"
)]
impl Runner {
    // ---------------------------------------------------------------- Installing

    /// Rows `Installing.*`: run each install step in turn, then register.
    #[state(superstate = "alive", entry_action = "enter_installing")]
    fn installing(
        &mut self,
        step: &mut InstallStep,
        event: &Event,
        fx: &mut Effects,
    ) -> Outcome<State> {
        match event {
            Event::StepDone => match step {
                InstallStep::CreateDirectories => {
                    *step = InstallStep::WriteConfig;
                    fx.push(Effect::RunInstallStep { step: *step });
                    Handled
                }
                InstallStep::WriteConfig => {
                    Transition(State::registering(RegisterStep::Connecting))
                }
                InstallStep::InstallService => Transition(State::stopped(ExitCode::Clean)),
            },
            Event::StepFailed { error } => {
                fx.notify(Notice::InstallFailed {
                    error: error.clone(),
                });
                Self::roll_back_install(*step, fx)
            }
            Event::ShutdownRequested { .. } | Event::ForceShutdown | Event::StopRequested => {
                Self::roll_back_install(*step, fx)
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_installing(step: &mut InstallStep, fx: &mut Effects) {
        tell_state(fx, "Installing");
        fx.push(Effect::RunInstallStep { step: *step });
    }

    // ---------------------------------------------------------------- Registering

    /// Rows `Registering.*`: hello, validate the one-time token, generate the key,
    /// register, save the identity. Any failure reports, rolls back and stops.
    #[state(
        superstate = "alive",
        entry_action = "enter_registering",
        exit_action = "leave_registering"
    )]
    fn registering(
        &mut self,
        step: &mut RegisterStep,
        event: &Event,
        fx: &mut Effects,
    ) -> Outcome<State> {
        use RegisterStep as S;
        match (*step, event) {
            (S::Connecting, Event::SocketOpened) => {
                self.link = Link::Open;
                self.arm_handshake_timer(fx);
                *step = S::AwaitHello;
                Handled
            }
            (S::AwaitHello, Event::Message(ServerMessage::Hello { protocol, nonce })) => {
                if *protocol != PROTOCOL_VERSION {
                    fx.notify(Notice::Incompatible {
                        server_protocol: *protocol,
                    });
                    return self.registration_ended(
                        fx,
                        CloseReason::Normal,
                        None,
                        ExitCode::Incompatible,
                    );
                }
                self.nonce = Some(nonce.clone());
                fx.send(Outbound::ValidateToken);
                self.arm_handshake_timer(fx);
                *step = S::AwaitToken;
                Handled
            }
            (S::AwaitToken, Event::Message(ServerMessage::TokenAccepted {})) => {
                // A retry sends the key the first attempt kept: an API that committed
                // that `register` answers with the same runner ID.
                if let Some(public_key) = self.registration_key.clone() {
                    self.send_register(fx, public_key);
                    *step = S::AwaitRegistration;
                } else {
                    fx.push(Effect::GenerateKey);
                    *step = S::AwaitKey;
                }
                Handled
            }
            (S::AwaitKey, Event::KeyGenerated { public_key }) => {
                self.registration_key = Some(public_key.clone());
                self.send_register(fx, public_key.clone());
                *step = S::AwaitRegistration;
                Handled
            }
            (
                S::Waiting,
                Event::TimerFired {
                    timer: TimerKind::Backoff,
                },
            ) => {
                fx.push(Effect::OpenConnection);
                self.arm_handshake_timer(fx);
                *step = S::Connecting;
                Handled
            }
            // Waiting for the backoff, no connection is open or being opened: these
            // belong to no attempt (`alive` notes them).
            (
                S::Waiting,
                Event::SocketClosed { .. }
                | Event::SocketFailed { .. }
                | Event::TimerFired {
                    timer: TimerKind::Ack,
                },
            ) => Super,
            (S::AwaitRegistration, Event::Message(ServerMessage::Registered { runner_id })) => {
                self.runner_id = Some(runner_id.clone());
                fx.persist(super::effect::Durable::Identity {
                    runner_id: runner_id.clone(),
                });
                *step = S::Saving;
                Handled
            }
            (S::Saving, Event::StepDone) => {
                let runner_id = self.runner_id.clone().unwrap_or_default();
                fx.notify(Notice::Registered { runner_id });
                if self.boot == BootMode::Install {
                    self.close(fx, CloseReason::Normal);
                    Transition(State::installing(InstallStep::InstallService))
                } else {
                    self.send_authenticate(fx);
                    Transition(State::validating(ValidateStep::AwaitAuth))
                }
            }
            (_, Event::Message(ServerMessage::TokenRejected { reason })) if self.link_up() => {
                let reason = Some(reason.clone());
                let stopped = self.registration_failed(fx, CloseReason::Normal, reason);
                // No runner holds the kept key under this token: nothing to keep it for.
                self.registration_key = None;
                fx.push(Effect::ForgetKey);
                stopped
            }
            // Transient failures: the token is still held, so registration is tried
            // again after the backoff (a cut before `registered`, a refused connection,
            // a 5xx at the upgrade, a missed reply, a frame or message out of place).
            (_, Event::SocketClosed { .. } | Event::SocketFailed { .. }) => {
                self.link = Link::Down;
                fx.cancel(TimerKind::Ack);
                self.retry_registration(fx, step)
            }
            (_, Event::BadFrame { close, error }) if self.link_up() => {
                fx.notify(Notice::BadFrame {
                    error: error.clone(),
                });
                self.close(fx, *close);
                fx.cancel(TimerKind::Ack);
                self.retry_registration(fx, step)
            }
            (
                _,
                Event::TimerFired {
                    timer: TimerKind::Ack,
                },
            ) => {
                // While connecting, the close abandons the attempt in flight.
                self.close(fx, CloseReason::AckTimeout);
                self.retry_registration(fx, step)
            }
            (_, Event::StepFailed { error }) => {
                self.registration_failed(fx, CloseReason::Internal, Some(error.clone()))
            }
            (_, Event::Message(_) | Event::UnreadableCommand { .. }) if self.link_up() => {
                fx.notify(Notice::ProtocolViolation {
                    phase: "Registering".into(),
                    got: format!("{:?}", event.kind()),
                });
                self.close(fx, CloseReason::Violation);
                fx.cancel(TimerKind::Ack);
                self.retry_registration(fx, step)
            }
            (_, Event::ShutdownRequested { .. } | Event::ForceShutdown | Event::StopRequested) => {
                self.close(fx, CloseReason::Normal);
                fx.push(Effect::RollbackInstall);
                Transition(State::stopped(ExitCode::RegistrationFailed))
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_registering(&mut self, fx: &mut Effects) {
        tell_state(fx, "Registering");
        fx.push(Effect::OpenConnection);
        self.arm_handshake_timer(fx);
    }

    /// Rows `exit Registering`, `exit Registering.waiting`: a registration may end while
    /// it waits out a backoff (a stop signal, a store failure).
    #[action]
    fn leave_registering(step: &mut RegisterStep, fx: &mut Effects) {
        fx.cancel(TimerKind::Ack);
        if *step == RegisterStep::Waiting {
            fx.cancel(TimerKind::Backoff);
        }
    }

    #[action]
    fn leave_handshake_step(fx: &mut Effects) {
        fx.cancel(TimerKind::Ack);
    }

    // ---------------------------------------------------------------- session

    /// Rows `session`: the link is open in every state below. Losing it, a bad frame or
    /// a missed reply leads to Reconnecting; eviction stops; any message the current
    /// phase did not expect is a protocol violation.
    #[superstate(
        superstate = "alive",
        entry_action = "enter_session",
        exit_action = "leave_handshake_step"
    )]
    fn session(&mut self, event: &Event, fx: &mut Effects) -> Outcome<State> {
        match event {
            Event::SocketClosed { .. } | Event::SocketFailed { .. } => {
                self.link = Link::Down;
                Transition(State::reconnecting(ReconnectStep::Waiting))
            }
            Event::BadFrame { close, error } => {
                fx.notify(Notice::BadFrame {
                    error: error.clone(),
                });
                self.close(fx, *close);
                Transition(State::reconnecting(ReconnectStep::Waiting))
            }
            Event::TimerFired {
                timer: TimerKind::Ack,
            } => {
                self.close(fx, CloseReason::AckTimeout);
                Transition(State::reconnecting(ReconnectStep::Waiting))
            }
            Event::Message(ServerMessage::Evicted { reason }) => {
                fx.notify(Notice::Evicted {
                    reason: reason.clone(),
                });
                self.close(fx, CloseReason::Normal);
                self.stop_now(fx, ExitCode::Evicted)
            }
            // Resent events are acknowledged while the handshake is still going on.
            Event::Message(ServerMessage::EventsAck { up_to })
                if self.link == Link::Authenticated =>
            {
                self.acknowledge_events(fx, *up_to);
                Handled
            }
            // A command before `ready_ack` is a violation, readable or not.
            Event::Message(_) | Event::UnreadableCommand { .. } => {
                fx.notify(Notice::ProtocolViolation {
                    phase: "session".into(),
                    got: format!("{:?}", event.kind()),
                });
                self.close(fx, CloseReason::Violation);
                Transition(State::reconnecting(ReconnectStep::Waiting))
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_session(&mut self, fx: &mut Effects) {
        self.arm_handshake_timer(fx);
    }

    /// Rows `Validating.*`: hello, authenticate with a signature over the nonce, report
    /// start-up once per process, then sync hardware (or go straight to Ready when
    /// resuming and the API already holds our hardware record).
    #[state(superstate = "session", entry_action = "enter_validating")]
    fn validating(
        &mut self,
        step: &mut ValidateStep,
        event: &Event,
        fx: &mut Effects,
    ) -> Outcome<State> {
        use ValidateStep as S;
        match (*step, event) {
            (S::Connecting, Event::SocketOpened) => {
                self.link = Link::Open;
                self.arm_handshake_timer(fx);
                *step = S::AwaitHello;
                Handled
            }
            (S::AwaitHello, Event::Message(ServerMessage::Hello { protocol, nonce })) => {
                if *protocol != PROTOCOL_VERSION {
                    fx.notify(Notice::Incompatible {
                        server_protocol: *protocol,
                    });
                    self.close(fx, CloseReason::Normal);
                    return self.stop_now(fx, ExitCode::Incompatible);
                }
                self.nonce = Some(nonce.clone());
                self.send_authenticate(fx);
                self.arm_handshake_timer(fx);
                *step = S::AwaitAuth;
                Handled
            }
            (S::AwaitAuth, Event::Message(ServerMessage::Authenticated { .. }))
                if self.boot == BootMode::Leave =>
            {
                // A farewell: nothing to resend or report; the API forgets this runner.
                fx.send(Outbound::Leaving);
                self.arm_handshake_timer(fx);
                *step = S::AwaitLeft;
                Handled
            }
            (
                S::AwaitAuth,
                Event::Message(ServerMessage::Authenticated {
                    last_event_index, ..
                }),
            ) if self.no_index_room(*last_event_index).is_some() => {
                let needed = self.no_index_room(*last_event_index).unwrap_or_default();
                fx.notify(Notice::NoIndexRoom {
                    api_last: *last_event_index,
                    needed,
                });
                self.close(fx, CloseReason::Violation);
                Transition(State::reconnecting(ReconnectStep::Waiting))
            }
            (
                S::AwaitAuth,
                Event::Message(ServerMessage::Authenticated {
                    last_event_index,
                    session,
                    hardware_known,
                    ..
                }),
            ) => {
                self.link = Link::Authenticated;
                self.session = *session;
                self.api_has_hardware = *hardware_known;
                self.adopt_api_position(fx, *last_event_index);
                fx.push(Effect::ResendOutbox {
                    after: self.acked_event_index,
                });
                let outcome = if !self.startup_reported {
                    self.startup_reported = true;
                    fx.send(Outbound::Startup {
                        jobs: self.job_refs(),
                    });
                    self.arm_handshake_timer(fx);
                    *step = S::AwaitStartup;
                    Handled
                } else if *hardware_known {
                    self.enter_ready(fx)
                } else {
                    self.begin_hardware_sync(fx)
                };
                // The API stops its runner-lost clock here: so do the jobs' supervisors.
                self.renew_leases(fx);
                outcome
            }
            (S::AwaitAuth, Event::Message(ServerMessage::AuthRejected { reason })) => {
                fx.notify(Notice::AuthRejected {
                    reason: reason.clone(),
                });
                self.close(fx, CloseReason::Normal);
                self.stop_now(fx, ExitCode::AuthRejected)
            }
            (S::AwaitStartup, Event::Message(ServerMessage::StartupAck {})) => {
                self.begin_hardware_sync(fx)
            }
            (S::AwaitLeft, Event::Message(ServerMessage::Left {})) => {
                let runner_id = self.runner_id.clone().unwrap_or_default();
                fx.notify(Notice::Left { runner_id });
                self.close(fx, CloseReason::Normal);
                Transition(State::stopped(ExitCode::Clean))
            }
            // The API may acknowledge events any time after `authenticated`; a farewell
            // resent none, so there is nothing to take off the outbox.
            (S::AwaitLeft, Event::Message(ServerMessage::EventsAck { .. })) => Handled,
            _ => Super,
        }
    }

    #[action]
    fn enter_validating(step: &mut ValidateStep, fx: &mut Effects) {
        tell_state(fx, "Validating");
        if *step == ValidateStep::Connecting {
            fx.push(Effect::OpenConnection);
        }
    }

    /// Rows `HardwareSync.*`: send the full record, the changes, or "unchanged", and wait
    /// for the API's confirmation; cache the record only once the API holds it.
    #[state(superstate = "session", entry_action = "enter_hardware_sync")]
    fn hardware_sync(
        &mut self,
        step: &mut SyncStep,
        event: &Event,
        fx: &mut Effects,
    ) -> Outcome<State> {
        match (*step, event) {
            (SyncStep::Collecting, Event::HardwareCollected { report, cache }) => {
                let message = match cache {
                    HardwareCache::Missing => Outbound::HardwareFull {
                        report: report.clone(),
                    },
                    _ if !self.api_has_hardware => Outbound::HardwareFull {
                        report: report.clone(),
                    },
                    HardwareCache::Changed { changes } => Outbound::HardwareChanges {
                        changes: changes.clone(),
                    },
                    HardwareCache::Unchanged => Outbound::HardwareUnchanged,
                };
                self.pending_hardware = Some(report.clone());
                fx.send(message);
                self.arm_handshake_timer(fx);
                *step = SyncStep::AwaitConfirm;
                Handled
            }
            (SyncStep::Collecting, Event::HardwareFailed { error }) => {
                fx.notify(Notice::HardwareFailed {
                    error: error.clone(),
                });
                self.close(fx, CloseReason::Internal);
                Transition(State::reconnecting(ReconnectStep::Waiting))
            }
            (SyncStep::AwaitConfirm, Event::Message(ServerMessage::HardwareConfirmed {})) => {
                self.api_has_hardware = true;
                if let Some(report) = self.pending_hardware.take() {
                    fx.persist(super::effect::Durable::HardwareCache { report });
                }
                self.enter_ready(fx)
            }
            (_, Event::HardwareCollected { .. } | Event::HardwareFailed { .. }) => Handled,
            _ => Super,
        }
    }

    #[action]
    fn enter_hardware_sync(fx: &mut Effects) {
        tell_state(fx, "HardwareSync");
    }

    /// Rows `Ready`: wait for the API to acknowledge readiness; the first time in this
    /// process, tell the service manager the runner is up.
    #[state(superstate = "session", entry_action = "enter_ready_state")]
    fn ready(&mut self, event: &Event, fx: &mut Effects) -> Outcome<State> {
        match event {
            Event::Message(ServerMessage::ReadyAck {}) => {
                fx.cancel(TimerKind::Ack);
                if !self.told_ready {
                    self.told_ready = true;
                    fx.tell_manager(ManagerNotice::Ready);
                }
                Transition(State::active())
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_ready_state(fx: &mut Effects) {
        tell_state(fx, "Ready");
    }

    /// Rows `Active`: heartbeats, commands, event acknowledgements, hardware re-checks.
    #[state(
        superstate = "session",
        entry_action = "enter_active",
        exit_action = "leave_active"
    )]
    fn active(&mut self, event: &Event, fx: &mut Effects) -> Outcome<State> {
        match event {
            Event::TimerFired {
                timer: TimerKind::Heartbeat,
            } => {
                self.send_heartbeat(fx);
                Handled
            }
            Event::Message(ServerMessage::HeartbeatAck { seq }) => {
                // A late answer to an older heartbeat says nothing about the latest.
                if self.answers_latest_heartbeat(*seq) {
                    fx.cancel(TimerKind::Ack);
                    // The session has proven healthy: the next loss backs off from the
                    // first step again. Not before: a failure right after each
                    // handshake must not turn into a tight reconnect loop.
                    self.reconnect_attempt = 0;
                    self.renew_leases(fx);
                }
                Handled
            }
            Event::Message(ServerMessage::EventsAck { up_to }) => {
                self.acknowledge_events(fx, *up_to);
                Handled
            }
            Event::Message(ServerMessage::Command { index, command }) => {
                if self.apply_command(fx, *index, command, false)
                    && matches!(command, Command::Drain { .. })
                {
                    self.stopping_reason = DRAIN_COMMAND_REASON.to_owned();
                    self.begin_drain(fx, DrainMode::Graceful)
                } else {
                    Handled
                }
            }
            Event::UnreadableCommand { index, error } => {
                self.reject_unreadable_command(fx, *index, error);
                Handled
            }
            Event::TimerFired {
                timer: TimerKind::HardwareRecheck,
            } => {
                fx.push(Effect::CollectHardware);
                fx.start(
                    TimerKind::HardwareRecheck,
                    Delay::Millis(self.config.hardware_recheck_ms),
                );
                Handled
            }
            Event::HardwareCollected { report, cache } => {
                match cache {
                    HardwareCache::Changed { changes } => {
                        fx.persist(super::effect::Durable::HardwareCache {
                            report: report.clone(),
                        });
                        let event = crate::protocol::RunnerEvent::HardwareChanged {
                            changes: changes.clone(),
                        };
                        self.emit(fx, event);
                    }
                    HardwareCache::Missing => {
                        fx.persist(super::effect::Durable::HardwareCache {
                            report: report.clone(),
                        });
                    }
                    HardwareCache::Unchanged => {}
                }
                Handled
            }
            Event::HardwareFailed { error } => {
                fx.notify(Notice::HardwareFailed {
                    error: error.clone(),
                });
                Handled
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_active(&mut self, fx: &mut Effects) {
        tell_state(fx, "Active");
        fx.start(
            TimerKind::Heartbeat,
            Delay::Millis(self.session.heartbeat_interval_ms),
        );
        fx.start(
            TimerKind::HardwareRecheck,
            Delay::Millis(self.config.hardware_recheck_ms),
        );
        self.session_was_active = true;
        self.run_hook(fx, HookCall::OnConnected);
    }

    #[action]
    fn leave_active(fx: &mut Effects) {
        fx.cancel(TimerKind::Heartbeat);
        fx.cancel(TimerKind::HardwareRecheck);
    }

    // ---------------------------------------------------------------- Reconnecting

    /// Rows `Reconnecting.*`: back off (exponential, full jitter, `super::backoff`),
    /// try again; past the runner-lost threshold, stop the jobs the API has given away.
    /// A second close or error report for the same loss starts no second backoff, so
    /// one loss counts once.
    #[state(
        superstate = "alive",
        entry_action = "enter_reconnecting",
        exit_action = "leave_reconnecting"
    )]
    fn reconnecting(
        &mut self,
        step: &mut ReconnectStep,
        event: &Event,
        fx: &mut Effects,
    ) -> Outcome<State> {
        match (*step, event) {
            (
                ReconnectStep::Waiting,
                Event::TimerFired {
                    timer: TimerKind::Backoff,
                },
            ) => {
                fx.push(Effect::OpenConnection);
                *step = ReconnectStep::Connecting;
                Handled
            }
            (ReconnectStep::Connecting, Event::SocketOpened) => {
                self.link = Link::Open;
                Transition(State::validating(ValidateStep::AwaitHello))
            }
            (
                ReconnectStep::Connecting,
                Event::SocketClosed { .. } | Event::SocketFailed { .. },
            ) => {
                self.schedule_backoff(fx);
                *step = ReconnectStep::Waiting;
                Handled
            }
            (
                _,
                Event::TimerFired {
                    timer: TimerKind::RunnerLost,
                },
            ) => {
                fx.notify(Notice::RunnerLost);
                self.cancel_all_jobs(fx, CancelReason::RunnerLost);
                Handled
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_reconnecting(&mut self, fx: &mut Effects) {
        tell_state(fx, "Reconnecting");
        self.schedule_backoff(fx);
        fx.start(
            TimerKind::RunnerLost,
            Delay::Millis(self.session.runner_lost_threshold_ms),
        );
        // Paired with `on_connected`: only a session that reached Active was "connected".
        if std::mem::take(&mut self.session_was_active) {
            self.run_hook(fx, HookCall::OnDisconnected);
        }
    }

    #[action]
    fn leave_reconnecting(fx: &mut Effects) {
        fx.cancel(TimerKind::Backoff);
        fx.cancel(TimerKind::RunnerLost);
    }

    // ---------------------------------------------------------------- Draining

    /// Rows `Draining.*`: a barrier. Stopped once no job runs and the outbox is empty
    /// (or the link is down, so the outbox waits for the next start); the deadline or a
    /// second signal turns a graceful drain into a forced one.
    #[state(
        superstate = "alive",
        entry_action = "enter_draining",
        exit_action = "leave_draining"
    )]
    fn draining(
        &mut self,
        mode: &mut DrainMode,
        event: &Event,
        fx: &mut Effects,
    ) -> Outcome<State> {
        match event {
            Event::TimerFired {
                timer: TimerKind::Heartbeat,
            } if self.link_up() => {
                self.send_heartbeat(fx);
                Handled
            }
            Event::Message(ServerMessage::HeartbeatAck { seq }) if self.link_up() => {
                if self.answers_latest_heartbeat(*seq) {
                    fx.cancel(TimerKind::Ack);
                    self.renew_leases(fx);
                }
                Handled
            }
            Event::TimerFired {
                timer: TimerKind::DrainProgress,
            } => {
                fx.tell_manager(ManagerNotice::DrainProgress {
                    jobs_left: u32::try_from(self.jobs.len()).unwrap_or(u32::MAX),
                    undelivered: self.last_event_index.saturating_sub(self.acked_event_index),
                    within_secs: self.stop_bound_secs(*mode),
                });
                fx.start(TimerKind::DrainProgress, Delay::Millis(DRAIN_PROGRESS_MS));
                Handled
            }
            Event::TimerFired {
                timer: TimerKind::Ack,
            } if self.link_up() => {
                self.close(fx, CloseReason::AckTimeout);
                self.link_lost_while_draining(fx, *mode)
            }
            Event::SocketClosed { .. } | Event::SocketFailed { .. } if self.link_up() => {
                self.link = Link::Down;
                self.link_lost_while_draining(fx, *mode)
            }
            Event::BadFrame { close, error } if self.link_up() => {
                fx.notify(Notice::BadFrame {
                    error: error.clone(),
                });
                self.close(fx, *close);
                self.link_lost_while_draining(fx, *mode)
            }
            Event::SocketOpened if !self.link_up() => {
                // A connection attempt from before the drain completed: not needed now.
                fx.close(CloseReason::Normal);
                Handled
            }
            Event::Message(ServerMessage::EventsAck { up_to }) if self.link_up() => {
                self.acknowledge_events(fx, *up_to);
                self.finish_if_drained(fx, *mode)
            }
            Event::Message(ServerMessage::Command { index, command }) if self.link_up() => {
                self.apply_command(fx, *index, command, true);
                Handled
            }
            Event::UnreadableCommand { index, error } if self.link_up() => {
                self.reject_unreadable_command(fx, *index, error);
                Handled
            }
            Event::Message(ServerMessage::Evicted { reason }) if self.link_up() => {
                fx.notify(Notice::Evicted {
                    reason: reason.clone(),
                });
                self.close(fx, CloseReason::Normal);
                self.stop_now(fx, ExitCode::Evicted)
            }
            Event::Message(_) => Handled,
            Event::JobExited { .. } | Event::JobSpawnFailed { .. } => {
                self.record_job_event(event, fx);
                self.finish_if_drained(fx, *mode)
            }
            Event::HookFinished {
                hook: HookPoint::PreJob,
                job: Some(job),
                outcome,
            } => {
                if self.pre_job_finished(fx, job, outcome) {
                    self.finish_if_drained(fx, *mode)
                } else {
                    Handled
                }
            }
            Event::InputsFetched { job, outcome } => {
                if self.inputs_fetched(fx, job, outcome) {
                    self.finish_if_drained(fx, *mode)
                } else {
                    Handled
                }
            }
            Event::UploadsDone {
                job,
                missing,
                wall_ms,
            } => {
                if self.uploads_done(fx, job, missing, *wall_ms) {
                    self.finish_if_drained(fx, *mode)
                } else {
                    Handled
                }
            }
            // A stop signal during a drain hurries it: the jobs were to end anyway.
            Event::TimerFired {
                timer: TimerKind::DrainDeadline,
            }
            | Event::ShutdownRequested { .. }
            | Event::ForceShutdown
            | Event::StopRequested => match mode {
                DrainMode::Forced if matches!(event, Event::TimerFired { .. }) => {
                    self.stop_draining(fx, ExitCode::Forced)
                }
                DrainMode::Forced => Handled,
                DrainMode::Graceful if self.jobs.is_empty() => {
                    let code = if matches!(event, Event::TimerFired { .. }) {
                        ExitCode::Clean
                    } else {
                        ExitCode::Forced
                    };
                    self.stop_draining(fx, code)
                }
                DrainMode::Graceful => {
                    *mode = DrainMode::Forced;
                    self.force_jobs(fx);
                    Handled
                }
            },
            _ => Super,
        }
    }

    #[action]
    fn enter_draining(&mut self, mode: &mut DrainMode, fx: &mut Effects) {
        tell_state(fx, "Draining");
        fx.tell_manager(ManagerNotice::Stopping {
            within_secs: self.stop_bound_secs(*mode),
        });
        let deadline_secs = match mode {
            DrainMode::Graceful => self.drain_deadline_secs,
            DrainMode::Forced => self.max_grace_secs() + self.config.flush_grace_secs,
        };
        if self.link_up() {
            fx.send(Outbound::Stopping {
                reason: self.stopping_reason.clone(),
                deadline_secs,
            });
        }
        fx.start(
            TimerKind::DrainDeadline,
            Delay::Millis(deadline_secs.saturating_mul(1000)),
        );
        if self.link_up() {
            fx.start(
                TimerKind::Heartbeat,
                Delay::Millis(self.session.heartbeat_interval_ms),
            );
        }
        fx.start(TimerKind::DrainProgress, Delay::Millis(DRAIN_PROGRESS_MS));
        self.run_hook(fx, HookCall::OnDrain);
    }

    #[action]
    fn leave_draining(fx: &mut Effects) {
        fx.cancel(TimerKind::DrainDeadline);
        fx.cancel(TimerKind::Heartbeat);
        fx.cancel(TimerKind::Ack);
        fx.cancel(TimerKind::DrainProgress);
    }

    // ---------------------------------------------------------------- alive

    /// Rows `alive`: what every living state shares. Job processes report wherever the
    /// machine is (jobs outlive reconnects), jobs of the previous process are found, a
    /// drain request starts the drain, a stop leaves jobs to their supervisors, a store
    /// failure stops. Anything else that reaches here changes nothing but leaves a notice (and
    /// so a log line and a trace line): no event disappears without a word.
    #[superstate]
    fn alive(&mut self, event: &Event, fx: &mut Effects) -> Outcome<State> {
        match event {
            Event::JobStarted { .. }
            | Event::JobOutput { .. }
            | Event::JobOutputTruncated { .. }
            | Event::JobProgressed { .. }
            | Event::JobKvWritten { .. }
            | Event::JobExited { .. }
            | Event::JobSpawnFailed { .. } => {
                self.record_job_event(event, fx);
                Handled
            }
            Event::TimerFired {
                timer: TimerKind::JobTimeout(job),
            } => {
                if self.check_job(fx, job, "job_timeout") {
                    self.cancel_job(fx, job, CancelReason::TimedOut);
                }
                Handled
            }
            Event::JobFound { job, found } => {
                self.job_found(fx, job, *found);
                Handled
            }
            // A service manager's stop or restart: the jobs stay with their
            // supervisors, and the next start reattaches them.
            Event::StopRequested => {
                if self.link_up() {
                    self.close(fx, CloseReason::Normal);
                }
                Transition(State::stopped(self.unless_undelivered(ExitCode::Clean)))
            }
            Event::ShutdownRequested {
                deadline_secs,
                origin,
            } => {
                if let Some(secs) = deadline_secs {
                    self.drain_deadline_secs = *secs;
                }
                self.stopping_reason = origin
                    .map_or(UNKNOWN_STOP_REASON, StopOrigin::reason)
                    .to_owned();
                self.begin_drain(fx, DrainMode::Graceful)
            }
            Event::ForceShutdown => {
                self.stopping_reason = FORCED_STOP_REASON.to_owned();
                self.begin_drain(fx, DrainMode::Forced)
            }
            Event::HookFinished {
                hook: HookPoint::PreJob,
                job: Some(job),
                outcome,
            } => {
                self.pre_job_finished(fx, job, outcome);
                Handled
            }
            Event::InputsFetched { job, outcome } => {
                self.inputs_fetched(fx, job, outcome);
                Handled
            }
            Event::OutputUploaded {
                job,
                path,
                url,
                sha256,
                size,
            } => {
                let end = FileEnd::Uploaded {
                    url,
                    sha256,
                    size: *size,
                };
                self.output_done(fx, job, path, end);
                Handled
            }
            Event::OutputFailed { job, path, reason } => {
                self.output_done(fx, job, path, FileEnd::Failed { reason });
                Handled
            }
            Event::UploadsDone {
                job,
                missing,
                wall_ms,
            } => {
                self.uploads_done(fx, job, missing, *wall_ms);
                Handled
            }
            // A lifecycle hook's or `post_job`'s end changes nothing (the runtime logged
            // how it went).
            Event::HookFinished {
                hook: HookPoint::PreJob,
                job: None,
                ..
            } => {
                fx.notify(Notice::Unexpected {
                    event: event.kind().name().to_owned(),
                    detail: "a pre_job hook without its job".to_owned(),
                });
                Handled
            }
            Event::HookFinished { .. } => Handled,
            Event::StoreFailed { error } => {
                fx.notify(Notice::StoreFailed {
                    error: error.clone(),
                });
                if self.link_up() {
                    self.close(fx, CloseReason::Internal);
                }
                self.stop_now(fx, ExitCode::StoreFailure)
            }
            _ => {
                fx.notify(Notice::Unexpected {
                    event: event.kind().name().to_owned(),
                    detail: error_of(event).unwrap_or_default().to_owned(),
                });
                Handled
            }
        }
    }

    // ---------------------------------------------------------------- Stopped

    /// Row `Stopped`: terminal. Nothing leaves it; every event is ignored.
    #[state(entry_action = "enter_stopped")]
    fn stopped(code: &mut ExitCode) -> Outcome<State> {
        let _ = code;
        Handled
    }

    #[action]
    fn enter_stopped(&mut self, code: &mut ExitCode, fx: &mut Effects) {
        tell_state(fx, "Stopped");
        for job in self.job_refs() {
            fx.cancel(TimerKind::JobTimeout(job));
        }
        // The runtime waits for it (bounded by its timeout) before the process exits.
        self.run_hook(
            fx,
            HookCall::OnStopped {
                exit_code: code.code(),
            },
        );
        fx.push(Effect::Exit { code: *code });
    }
}

/// The service manager hears each new lifecycle state.
fn tell_state(fx: &mut Effects, state: &str) {
    fx.tell_manager(ManagerNotice::Status {
        state: state.to_owned(),
    });
}

impl Runner {
    /// Undo the install. Past registration (the service step) the API holds a runner
    /// this install made: it is told to forget it, so no ghost stays behind.
    fn roll_back_install(step: InstallStep, fx: &mut Effects) -> Outcome<State> {
        fx.push(Effect::RollbackInstall);
        if step == InstallStep::InstallService {
            fx.push(Effect::Farewell);
        }
        Transition(State::stopped(ExitCode::RegistrationFailed))
    }

    /// How long a drain in `mode` may still take, at most: its deadline (graceful), the
    /// longest cancel grace and the flush, and a margin to exit.
    fn stop_bound_secs(&self, mode: DrainMode) -> u64 {
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

    fn registration_failed(
        &mut self,
        fx: &mut Effects,
        close: CloseReason,
        reason: Option<String>,
    ) -> Outcome<State> {
        self.registration_ended(fx, close, reason, ExitCode::RegistrationFailed)
    }

    /// Registration failed for good: report, close, roll back, stop with `code`.
    fn registration_ended(
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

    fn begin_hardware_sync(&mut self, fx: &mut Effects) -> Outcome<State> {
        fx.push(Effect::CollectHardware);
        self.arm_handshake_timer(fx);
        Transition(State::hardware_sync(SyncStep::Collecting))
    }

    fn enter_ready(&mut self, fx: &mut Effects) -> Outcome<State> {
        fx.send(Outbound::Ready {
            slots_free: self.slots_free(),
        });
        self.arm_handshake_timer(fx);
        Transition(State::ready())
    }

    /// Stop at once: jobs are abandoned (the exit kills their process groups).
    fn stop_now(&mut self, fx: &mut Effects, code: ExitCode) -> Outcome<State> {
        self.cancel_all_jobs(fx, CancelReason::Abandoned);
        Transition(State::stopped(code))
    }

    fn force_jobs(&mut self, fx: &mut Effects) {
        self.cancel_all_jobs(fx, CancelReason::Shutdown);
        let secs = self.max_grace_secs() + self.config.flush_grace_secs;
        fx.start(
            TimerKind::DrainDeadline,
            Delay::Millis(secs.saturating_mul(1000)),
        );
    }

    /// Enter the drain; when there is nothing to wait for, stop right away.
    fn begin_drain(&mut self, fx: &mut Effects, mode: DrainMode) -> Outcome<State> {
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

    fn link_lost_while_draining(&mut self, fx: &mut Effects, mode: DrainMode) -> Outcome<State> {
        fx.cancel(TimerKind::Heartbeat);
        fx.cancel(TimerKind::Ack);
        self.finish_if_drained(fx, mode)
    }

    fn finish_if_drained(&mut self, fx: &mut Effects, mode: DrainMode) -> Outcome<State> {
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

    fn stop_draining(&mut self, fx: &mut Effects, code: ExitCode) -> Outcome<State> {
        if self.link_up() {
            self.close(fx, CloseReason::Normal);
        }
        Transition(State::stopped(self.unless_undelivered(code)))
    }

    /// A stop that leaves events the API has not acknowledged must not look like a
    /// clean one (or a forced one, which a service manager counts as a success): it
    /// exits `Undelivered`, and the events wait in the store for the next start.
    fn unless_undelivered(&self, code: ExitCode) -> ExitCode {
        if self.outbox_empty() {
            code
        } else {
            ExitCode::Undelivered
        }
    }

    fn send_register(&mut self, fx: &mut Effects, public_key: String) {
        fx.send(Outbound::Register {
            public_key,
            slots: self.config.slots,
        });
        self.arm_handshake_timer(fx);
    }

    /// Registration failed for now, not for good: back off, then try again with the
    /// token this process still holds (and the key it kept).
    fn retry_registration(&mut self, fx: &mut Effects, step: &mut RegisterStep) -> Outcome<State> {
        self.schedule_backoff(fx);
        *step = RegisterStep::Waiting;
        Handled
    }

    /// The next reconnect attempt's delay, drawn here (full jitter below the ceiling
    /// of this attempt) so the effect carries the exact delay.
    fn schedule_backoff(&mut self, fx: &mut Effects) {
        self.reconnect_attempt = self.reconnect_attempt.saturating_add(1);
        let delay = self
            .jitter
            .delay_ms(&self.config.backoff, self.reconnect_attempt);
        fx.start(TimerKind::Backoff, Delay::Millis(delay));
    }

    /// Job-process reports: persisted as outbox events, sent when the session allows.
    /// A report about a job we do not run (or a stale attempt) is logged and dropped.
    fn record_job_event(&mut self, event: &Event, fx: &mut Effects) {
        use crate::protocol::RunnerEvent;
        let Some((job, what)) = job_of(event) else {
            return;
        };
        if !self.check_job(fx, job, what) {
            return;
        }
        match event {
            Event::JobStarted { pid, .. } => self.emit(
                fx,
                RunnerEvent::JobStarted {
                    job: job.clone(),
                    pid: *pid,
                },
            ),
            Event::JobOutput {
                stream,
                offset,
                data,
                ..
            } => {
                let data = base64_encode(data);
                self.emit(
                    fx,
                    RunnerEvent::JobOutput {
                        job: job.clone(),
                        stream: *stream,
                        offset: *offset,
                        data,
                    },
                );
            }
            Event::JobProgressed {
                fraction, message, ..
            } => self.emit(
                fx,
                RunnerEvent::JobProgress {
                    job: job.clone(),
                    fraction: *fraction,
                    message: message.clone(),
                },
            ),
            Event::JobKvWritten { key, value, .. } => self.emit(
                fx,
                RunnerEvent::JobKvPut {
                    job: job.clone(),
                    key: key.clone(),
                    value: value.clone(),
                },
            ),
            Event::JobOutputTruncated { stream, offset, .. } => {
                self.emit(
                    fx,
                    RunnerEvent::JobOutputTruncated {
                        job: job.clone(),
                        stream: *stream,
                        offset: *offset,
                    },
                );
            }
            Event::JobExited {
                status,
                duration_ms,
                stdout_bytes,
                stderr_bytes,
                cancel,
                usage,
                ..
            } => {
                let end = JobFinish {
                    job,
                    status: *status,
                    duration_ms: *duration_ms,
                    output_bytes: (*stdout_bytes, *stderr_bytes),
                    spawn_error: None,
                    recorded_cancel: *cancel,
                    usage: *usage,
                };
                // With outputs, the job ends once they are uploaded.
                if !self.begin_uploads(fx, &end) {
                    self.job_finished(fx, end);
                }
            }
            Event::JobSpawnFailed { error, .. } => {
                let end = JobFinish {
                    job,
                    status: crate::protocol::ExitStatus::Unknown,
                    duration_ms: 0,
                    output_bytes: (0, 0),
                    spawn_error: Some(error),
                    recorded_cancel: None,
                    usage: JobUsage::default(),
                };
                self.job_finished(fx, end);
            }
            _ => {}
        }
    }
}

/// The error an event carries, if any.
fn error_of(event: &Event) -> Option<&str> {
    match event {
        Event::StepFailed { error }
        | Event::HardwareFailed { error }
        | Event::StoreFailed { error }
        | Event::SocketFailed { error }
        | Event::BadFrame { error, .. } => Some(error),
        _ => None,
    }
}

/// The job a job-process event is about, and its name for the log.
fn job_of(event: &Event) -> Option<(&crate::protocol::JobRef, &'static str)> {
    match event {
        Event::JobStarted { job, .. } => Some((job, "job_started")),
        Event::JobOutput { job, .. } => Some((job, "job_output")),
        Event::JobOutputTruncated { job, .. } => Some((job, "job_output_truncated")),
        Event::JobExited { job, .. } => Some((job, "job_exited")),
        Event::JobSpawnFailed { job, .. } => Some((job, "job_spawn_failed")),
        Event::JobProgressed { job, .. } => Some((job, "job_progress")),
        Event::JobKvWritten { job, .. } => Some((job, "job_kv_put")),
        _ => None,
    }
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}
