//! The statig machine: states, superstates, entry and exit actions. Routing only; the
//! logic lives in `Runner` (`runner.rs`), the moves several states share in
//! `transitions`, the steps within states in `steps`, a job's reports as outbox events
//! in `job_reports`. Each handler's doc names the `fsm-spec/` rows
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

use crate::protocol::{CloseReason, Command, PROTOCOL_VERSION, ServerMessage};

use super::effect::{
    CancelReason, Delay, Effect, Effects, ExitCode, InstallStep, ManagerNotice, Notice, Outbound,
    TimerKind,
};
use super::event::{Event, HardwareCache, StopOrigin};
use super::hooks::{HookCall, HookPoint};
use super::job_files::FileEnd;
use super::runner::{BootMode, Link, Runner};

mod job_reports;
mod steps;
mod transitions;

pub use steps::{DrainMode, ReconnectStep, RegisterStep, SyncStep, ValidateStep};

/// How often a drain reports what it still waits for.
pub const DRAIN_PROGRESS_MS: u64 = 5_000;

/// `stopping.reason` when the API's `drain` command asked (protocol §11).
const DRAIN_COMMAND_REASON: &str = "the control plane's drain command";

/// `stopping.reason` for a forced stop (a second stop signal, `fyn-runner drain --force`).
const FORCED_STOP_REASON: &str = "forced stop (a second stop signal or fyn-runner drain --force)";

/// `stopping.reason` when the origin is not known (a trace recorded before it was).
const UNKNOWN_STOP_REASON: &str = "runner shutdown";

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
