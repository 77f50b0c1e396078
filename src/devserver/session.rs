//! One runner connection, message by message: registration, authentication, and the
//! messages of an authenticated session. The socket itself is `ws.rs`'s business;
//! everything here is synchronous and runs under the hub's lock.

use tokio::sync::mpsc::UnboundedSender;

use super::api::RunnerState;
use super::control::release_absent_holds;
use super::events::{Received, apply_hardware_changes};
use super::hub::{Hub, Inner, Live, Outgoing, Post};
use super::store::{RunnerRow, Store, StoreError, TokenStatus};
use super::util::{now_ms, random_hex};
use crate::protocol::{CloseReason, RunnerMessage, ServerMessage, verify_signature};

/// Where a connection is in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `hello` sent; `validate_token` or `authenticate` may come.
    AwaitFirst,
    /// `token_accepted` sent; `register` must come.
    AwaitRegister {
        token: String,
    },
    /// `registered` sent; `authenticate` must come.
    AwaitAuthenticate,
    Authenticated {
        runner_id: String,
    },
    /// A refusal and a close are queued; anything else is ignored.
    Closing,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Self::AwaitFirst => "await_first",
            Self::AwaitRegister { .. } => "await_register",
            Self::AwaitAuthenticate => "await_authenticate",
            Self::Authenticated { .. } => "authenticated",
            Self::Closing => "closing",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("{got} is not allowed in phase {phase}")]
    Violation {
        phase: &'static str,
        got: &'static str,
    },
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("no randomness available: {0}")]
    Random(getrandom::Error),
}

impl SessionError {
    pub fn close_reason(&self) -> CloseReason {
        match self {
            Self::Violation { .. } => CloseReason::Violation,
            Self::Store(_) | Self::Random(_) => CloseReason::Internal,
        }
    }
}

/// The per-connection state a session task keeps.
pub(crate) struct Conn {
    pub session: u64,
    pub nonce: String,
    pub tx: UnboundedSender<Outgoing>,
    pub phase: Phase,
}

impl Conn {
    pub fn new(session: u64, nonce: String, tx: UnboundedSender<Outgoing>) -> Self {
        Self {
            session,
            nonce,
            tx,
            phase: Phase::AwaitFirst,
        }
    }

    pub fn runner_id(&self) -> Option<&str> {
        match &self.phase {
            Phase::Authenticated { runner_id } => Some(runner_id),
            _ => None,
        }
    }
}

/// Handle one decoded message; the replies are queued on the connection in order.
pub(crate) fn handle(
    hub: &Hub,
    conn: &mut Conn,
    message: RunnerMessage,
) -> Result<(), SessionError> {
    hub.with(|inner, post| match conn.phase.clone() {
        Phase::AwaitFirst => match message {
            RunnerMessage::ValidateToken { token } => validate_token(inner, conn, post, token),
            RunnerMessage::Authenticate { .. } => authenticate(inner, conn, post, message),
            other => Err(violation(&conn.phase, &other)),
        },
        Phase::AwaitRegister { token } => match message {
            RunnerMessage::Register { .. } => register(inner, conn, post, &token, message),
            other => Err(violation(&conn.phase, &other)),
        },
        Phase::AwaitAuthenticate => match message {
            RunnerMessage::Authenticate { .. } => authenticate(inner, conn, post, message),
            other => Err(violation(&conn.phase, &other)),
        },
        Phase::Authenticated { runner_id } => {
            session_message(inner, conn, post, &runner_id, message)
        }
        Phase::Closing => Ok(()),
    })
}

/// The connection ended: the runner is disconnected from now on (unless a newer
/// session already took it over), and the runner-lost clock starts.
pub(crate) fn closed(hub: &Hub, conn: &Conn) {
    let Some(runner_id) = conn.runner_id() else {
        return;
    };
    let result = hub.with(|inner, _| {
        let ours = inner
            .live
            .get(runner_id)
            .is_some_and(|live| live.session == conn.session);
        if ours {
            inner.live.remove(runner_id);
            inner
                .store
                .softly(|store| store.set_last_seen(runner_id, now_ms()))?;
        }
        Ok::<_, StoreError>(())
    });
    if let Err(error) = result {
        tracing::error!(runner_id, %error, "could not record the disconnect");
    }
}

fn violation(phase: &Phase, got: &RunnerMessage) -> SessionError {
    SessionError::Violation {
        phase: phase.name(),
        got: message_name(got),
    }
}

fn message_name(message: &RunnerMessage) -> &'static str {
    match message {
        RunnerMessage::ValidateToken { .. } => "validate_token",
        RunnerMessage::Register { .. } => "register",
        RunnerMessage::Authenticate { .. } => "authenticate",
        RunnerMessage::Startup { .. } => "startup",
        RunnerMessage::HardwareFull { .. } => "hardware_full",
        RunnerMessage::HardwareChanges { .. } => "hardware_changes",
        RunnerMessage::HardwareUnchanged {} => "hardware_unchanged",
        RunnerMessage::Ready { .. } => "ready",
        RunnerMessage::Heartbeat { .. } => "heartbeat",
        RunnerMessage::CommandAck { .. } => "command_ack",
        RunnerMessage::Event { .. } => "event",
        RunnerMessage::Stopping { .. } => "stopping",
        RunnerMessage::Leaving { .. } => "leaving",
    }
}

/// Answer with a refusal and close normally: the runner stops on its own, so there
/// is nothing abnormal about the connection itself.
fn refuse(conn: &mut Conn, post: &mut Post, message: ServerMessage, text: &str) {
    post.message(&conn.tx, message);
    post.close(&conn.tx, CloseReason::Normal, text);
    conn.phase = Phase::Closing;
}

// ---------------------------------------------------------------- registration

fn validate_token(
    inner: &mut Inner,
    conn: &mut Conn,
    post: &mut Post,
    token: String,
) -> Result<(), SessionError> {
    let reason = match inner.store.token_status(&token)? {
        TokenStatus::Valid => None,
        // A runner whose registration was cut off after we committed it retries with
        // the same token: it may go on, and `register` tells it apart by its key.
        TokenStatus::Used { runner_id } if inner.store.runner(&runner_id)?.is_some() => None,
        TokenStatus::Used { .. } => Some("registration token was already used"),
        TokenStatus::Unknown => Some("unknown registration token"),
    };
    if let Some(reason) = reason {
        tracing::info!(reason, "registration token rejected");
        let rejected = ServerMessage::TokenRejected {
            reason: reason.to_owned(),
        };
        refuse(conn, post, rejected, "token rejected");
        return Ok(());
    }
    post.message(&conn.tx, ServerMessage::TokenAccepted {});
    conn.phase = Phase::AwaitRegister { token };
    Ok(())
}

fn register(
    inner: &mut Inner,
    conn: &mut Conn,
    post: &mut Post,
    token: &str,
    message: RunnerMessage,
) -> Result<(), SessionError> {
    let RunnerMessage::Register {
        public_key,
        name,
        version,
        slots,
    } = message
    else {
        return Err(violation(&conn.phase, &message));
    };
    if !is_public_key(&public_key) {
        let rejected = ServerMessage::TokenRejected {
            reason: "public_key is not a base64 Ed25519 public key".to_owned(),
        };
        refuse(conn, post, rejected, "bad public key");
        return Ok(());
    }
    let runner = RunnerRow {
        id: format!("r-{}", random_hex(6).map_err(SessionError::Random)?),
        name,
        public_key,
        version,
        slots,
        hardware: None,
        hardware_known: false,
        last_event_index: 0,
        next_command_index: 1,
        last_seen_ms: None,
    };
    let now = now_ms();
    // The token is spent in the same transaction that creates the runner, so of two
    // connections that validated the same token only one can register; the other is
    // the same runner retrying only if it holds the same key.
    let registered = inner.store.atomically(|store| {
        if store.consume_token(token, &runner.id, now)? {
            store.insert_runner(&runner, now)?;
            return Ok::<_, StoreError>(Some(runner.id.clone()));
        }
        retried_registration(store, token, &runner.public_key)
    })?;
    let Some(runner_id) = registered else {
        let rejected = ServerMessage::TokenRejected {
            reason: "registration token was already used".to_owned(),
        };
        refuse(conn, post, rejected, "token rejected");
        return Ok(());
    };
    if runner_id == runner.id {
        tracing::info!(%runner_id, name = %runner.name, "runner registered");
    } else {
        tracing::info!(%runner_id, "registration retried with the same key: same runner");
    }
    post.message(&conn.tx, ServerMessage::Registered { runner_id });
    conn.phase = Phase::AwaitAuthenticate;
    Ok(())
}

/// The runner a spent token registered, if it holds `public_key`: a `register` the
/// runner repeats because it never saw our `registered` gets the same answer again.
fn retried_registration(
    store: &Store,
    token: &str,
    public_key: &str,
) -> Result<Option<String>, StoreError> {
    let TokenStatus::Used { runner_id } = store.token_status(token)? else {
        return Ok(None);
    };
    let same_key = store
        .runner(&runner_id)?
        .is_some_and(|runner| runner.public_key == public_key);
    Ok(same_key.then_some(runner_id))
}

fn is_public_key(b64: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .is_some_and(|bytes| ed25519_dalek::VerifyingKey::from_bytes(&bytes).is_ok())
}

// ---------------------------------------------------------------- authentication

fn authenticate(
    inner: &mut Inner,
    conn: &mut Conn,
    post: &mut Post,
    message: RunnerMessage,
) -> Result<(), SessionError> {
    let RunnerMessage::Authenticate {
        runner_id,
        signature,
        name,
        version,
        slots,
        last_command_index,
    } = message
    else {
        return Err(violation(&conn.phase, &message));
    };
    let Some(runner) = inner.store.runner(&runner_id)? else {
        reject_auth(conn, post, &runner_id, "unknown runner");
        return Ok(());
    };
    if let Err(error) = verify_signature(&runner.public_key, &conn.nonce, &runner_id, &signature) {
        reject_auth(conn, post, &runner_id, &error.to_string());
        return Ok(());
    }
    let now = now_ms();
    // Soft: everything this writes, the runner says again at every authentication,
    // and after a power cut every runner authenticates again before the server sends
    // it anything. So it need not wait for the disk (a fleet reconnecting queued one
    // sync per runner here, behind the store's lock).
    inner.store.softly(|store| {
        store.update_runner_identity(&runner_id, &name, &version, slots)?;
        store.reset_acks(&runner_id, last_command_index)?;
        store.raise_next_command_index(&runner_id, last_command_index)?;
        store.set_last_seen(&runner_id, now)
    })?;
    evict(inner, post, &runner_id);
    inner.live.insert(
        runner_id.clone(),
        Live {
            session: conn.session,
            tx: conn.tx.clone(),
            state: RunnerState::Validating,
            active: false,
            draining: false,
            last_seen_ms: now,
        },
    );
    tracing::info!(%runner_id, last_command_index, "runner authenticated");
    post.message(
        &conn.tx,
        ServerMessage::Authenticated {
            runner_id: runner_id.clone(),
            last_event_index: runner.last_event_index,
            session: inner.params,
            hardware_known: runner.hardware_known && runner.hardware.is_some(),
        },
    );
    conn.phase = Phase::Authenticated { runner_id };
    Ok(())
}

fn reject_auth(conn: &mut Conn, post: &mut Post, runner_id: &str, reason: &str) {
    tracing::info!(runner_id, reason, "authentication rejected");
    let rejected = ServerMessage::AuthRejected {
        reason: reason.to_owned(),
    };
    refuse(conn, post, rejected, "authentication rejected");
}

/// A newer session takes over: the older one is told why and closed, and must stop
/// rather than reconnect.
fn evict(inner: &mut Inner, post: &mut Post, runner_id: &str) {
    if let Some(old) = inner.live.remove(runner_id) {
        tracing::info!(
            runner_id,
            session = old.session,
            "evicting the older session"
        );
        let evicted = ServerMessage::Evicted {
            reason: "a newer session of this runner authenticated".to_owned(),
        };
        post.message(&old.tx, evicted);
        post.close(&old.tx, CloseReason::Normal, "evicted");
    }
}

// ---------------------------------------------------------------- the session

fn session_message(
    inner: &mut Inner,
    conn: &mut Conn,
    post: &mut Post,
    runner_id: &str,
    message: RunnerMessage,
) -> Result<(), SessionError> {
    let now = now_ms();
    let Some(live) = inner
        .live
        .get_mut(runner_id)
        .filter(|l| l.session == conn.session)
    else {
        // Evicted: its close is queued; what it still says belongs to no session.
        return Ok(());
    };
    live.last_seen_ms = now;
    let tx = &conn.tx;
    match message {
        RunnerMessage::Startup { version, jobs } => {
            tracing::info!(runner_id, %version, jobs = jobs.len(), "runner started up");
            live.state = RunnerState::HardwareSync;
            inner
                .store
                .softly(|store| store.set_runner_version(runner_id, &version))?;
            release_absent_holds(&inner.store, runner_id, &jobs)?;
            post.message(tx, ServerMessage::StartupAck {});
        }
        RunnerMessage::HardwareFull { report } => {
            live.state = RunnerState::Ready;
            inner.store.set_hardware(runner_id, &report, true)?;
            post.message(tx, ServerMessage::HardwareConfirmed {});
        }
        RunnerMessage::HardwareChanges { changes } => {
            live.state = RunnerState::Ready;
            apply_hardware_changes(&inner.store, runner_id, &changes)?;
            post.message(tx, ServerMessage::HardwareConfirmed {});
        }
        RunnerMessage::HardwareUnchanged {} => {
            live.state = RunnerState::Ready;
            post.message(tx, ServerMessage::HardwareConfirmed {});
        }
        RunnerMessage::Ready { slots_free } => {
            tracing::info!(runner_id, slots_free, "runner ready");
            live.active = true;
            if live.state != RunnerState::Draining {
                live.state = RunnerState::Active;
            }
            post.message(tx, ServerMessage::ReadyAck {});
            inner.resend_unacked(runner_id, post)?;
            inner.try_assign(post)?;
        }
        RunnerMessage::Heartbeat { seq, .. } => {
            inner
                .store
                .softly(|store| store.set_last_seen(runner_id, now))?;
            post.message(tx, ServerMessage::HeartbeatAck { seq });
        }
        // Soft, as the authentication's: the next one recomputes every ack from the
        // runner's last applied index.
        RunnerMessage::CommandAck { index } => inner
            .store
            .softly(|store| store.ack_command(runner_id, index))?,
        RunnerMessage::Event { index, event } => {
            let received = inner.receive_event(runner_id, index, &event)?;
            post.message(tx, ServerMessage::EventsAck { up_to: index });
            if received == (Received::Stored { frees_slot: true }) {
                inner.try_assign(post)?;
            }
        }
        RunnerMessage::Stopping {
            reason,
            deadline_secs,
        } => {
            tracing::info!(runner_id, %reason, deadline_secs, "runner is stopping");
            live.state = RunnerState::Draining;
            live.draining = true;
        }
        RunnerMessage::Leaving { reason } => {
            tracing::info!(runner_id, %reason, "runner is leaving for good");
            inner.retire_runner(runner_id, post)?;
            post.message(tx, ServerMessage::Left {});
            post.close(tx, CloseReason::Normal, "runner left");
            conn.phase = Phase::Closing;
        }
        other @ (RunnerMessage::ValidateToken { .. }
        | RunnerMessage::Register { .. }
        | RunnerMessage::Authenticate { .. }) => return Err(violation(&conn.phase, &other)),
    }
    Ok(())
}
