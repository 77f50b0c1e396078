//! The link to the API: connection attempts, the live connection and its writer's
//! queue, the resend cursor, and `wire()`, which turns the core's outbound intents into
//! protocol messages.
//!
//! Owns: which connection is current (`next_conn`), so the reports of an abandoned one
//! never reach the core; the resend cursor. Must not: decide what to send or when;
//! it adds only what the core must not hold (the token, the signature, the name and
//! version, the farewell's reason).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};
use url::Url;

use crate::core::{Event, Outbound};
use crate::protocol::{CloseReason, RunnerMessage, encode};
use crate::runtime::identity::Identity;
use crate::runtime::settings::Secret;
use crate::runtime::store::{Store, StoreError};
use crate::runtime::ws::{self, Connection, LinkReport, WsStream};

use super::input::Input;

/// Events read from the outbox per resend step.
const RESEND_PAGE: u32 = 32;

/// What the runtime adds to the core's intents.
pub(super) struct Credentials {
    pub(super) name: String,
    pub(super) token: Option<Secret>,
    /// Why a farewell says `leaving`.
    pub(super) leaving_reason: &'static str,
}

pub(super) struct Link {
    connection: Option<Connection>,
    /// The id of the newest connection attempt; a report of any other is stale.
    next_conn: u64,
    /// The resend cursor: events after this index still wait to be resent.
    resend_after: Option<u64>,
    tls: Arc<rustls::ClientConfig>,
    endpoint: Url,
    connect_timeout: Duration,
    credentials: Credentials,
    /// Connections closed and still finishing their closing handshake.
    closing: Vec<tokio::task::JoinHandle<()>>,
}

impl Link {
    pub(super) fn new(
        tls: Arc<rustls::ClientConfig>,
        endpoint: Url,
        connect_timeout: Duration,
        credentials: Credentials,
    ) -> Self {
        Self {
            connection: None,
            next_conn: 0,
            resend_after: None,
            tls,
            endpoint,
            connect_timeout,
            credentials,
            closing: Vec::new(),
        }
    }

    /// Start a connection attempt; its result comes back as an input.
    pub(super) fn open(&mut self, inputs: &UnboundedSender<Input>) {
        self.next_conn += 1;
        let conn = self.next_conn;
        let url = self.endpoint.clone();
        let tls = self.tls.clone();
        let timeout = self.connect_timeout;
        let inputs = inputs.clone();
        debug!(%url, conn, "connecting");
        tokio::spawn(async move {
            let input = match ws::connect(&url, tls, timeout).await {
                Ok(stream) => Input::Connected {
                    conn,
                    stream: Box::new(stream),
                },
                Err(error) => {
                    warn!(%url, %error, "connection attempt failed");
                    Input::ConnectFailed { conn, error }
                }
            };
            let _ = inputs.send(input);
        });
    }

    /// What a connection reported, if it is the current one's; a lost link forgets
    /// the connection and the resend.
    pub(super) fn accept_report(&mut self, report: LinkReport) -> Option<Event> {
        let current = self.connection.as_ref().map(|c| c.id);
        match report {
            // Only a wake-up: the loop re-checks the brake and the resend.
            LinkReport::BelowLowWater { .. } => None,
            LinkReport::Event { conn, event } => {
                if Some(conn) != current {
                    return None;
                }
                if matches!(
                    event,
                    Event::SocketClosed { .. } | Event::SocketFailed { .. }
                ) {
                    self.connection = None;
                    self.resend_after = None;
                }
                Some(event)
            }
        }
    }

    /// A connection attempt succeeded; only the newest one counts.
    pub(super) fn accept_connected(
        &mut self,
        conn: u64,
        stream: WsStream,
        inputs: &UnboundedSender<Input>,
    ) -> Option<Event> {
        if conn != self.next_conn {
            return None;
        }
        self.connection = Some(Connection::spawn(conn, stream, inputs.clone()));
        Some(Event::SocketOpened)
    }

    pub(super) fn accept_connect_failed(&self, conn: u64, error: String) -> Option<Event> {
        (conn == self.next_conn).then_some(Event::SocketFailed { error })
    }

    /// Close the connection; an attempt still in flight is abandoned with it.
    pub(super) fn close(&mut self, reason: CloseReason) {
        if let Some(connection) = self.connection.take() {
            self.closing.retain(|closing| !closing.is_finished());
            self.closing.push(connection.close(reason, reason.name()));
        }
        self.next_conn += 1;
        self.resend_after = None;
    }

    /// Wait, at most `within`, until every connection closed so far has finished its
    /// closing handshake: the last `Close` is written and answered before the process
    /// (and its sockets) goes away.
    pub(super) async fn settle(&mut self, within: Duration) {
        let closing = std::mem::take(&mut self.closing);
        let all = async {
            for handle in closing {
                let _ = handle.await;
            }
        };
        let _ = tokio::time::timeout(within, all).await;
    }

    /// Send one message. `Err` when it needs a token or identity this runner lacks.
    pub(super) fn send(
        &mut self,
        message: Outbound,
        identity: Option<&Identity>,
    ) -> Result<(), String> {
        if self.resend_after.is_some() && matches!(message, Outbound::Event { .. }) {
            // Persisted already; the resend cursor delivers it in order.
            return Ok(());
        }
        let Some(connection) = &self.connection else {
            warn!(
                message = message.name(),
                "no connection to send on; dropped (the outbox keeps events)"
            );
            return Ok(());
        };
        match self.wire(message, identity) {
            Some(wire) => {
                connection.send_text(encode(&wire));
                Ok(())
            }
            None => Err("a message needed a token or identity this runner does not hold".into()),
        }
    }

    /// Resend every outbox event after `after`, as the writer drains.
    pub(super) fn start_resend(&mut self, after: u64) {
        self.resend_after = Some(after);
    }

    /// Whether frames wait for the writer (a `job_started` just queued, say).
    pub(super) fn writing(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.queued() > 0)
    }

    /// Whether the writer's queue is above the high-water mark.
    pub(super) fn backpressured(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| c.queued() >= ws::HIGH_WATER)
    }

    /// Resend the outbox page by page as the writer drains. Events emitted meanwhile
    /// are not sent directly: they are in the outbox, so the cursor reaches them in
    /// index order (the API drops anything at or below the highest index it holds, so
    /// order matters).
    pub(super) fn pump_resend(
        &mut self,
        store: &Store,
        identity: Option<&Identity>,
    ) -> Result<usize, StoreError> {
        let mut resent = 0;
        while let Some(after) = self.resend_after {
            let Some(connection) = &self.connection else {
                self.resend_after = None;
                return Ok(resent);
            };
            if connection.queued() >= ws::HIGH_WATER {
                return Ok(resent);
            }
            let page = store.outbox_page(after, RESEND_PAGE).inspect_err(|_| {
                self.resend_after = None;
            })?;
            let Some(&(last, _)) = page.last() else {
                self.resend_after = None;
                return Ok(resent);
            };
            debug!(count = page.len(), after, "resending unacknowledged events");
            for (index, event) in page {
                let event = event.into();
                if let Some(wire) = self.wire(Outbound::Event { index, event }, identity)
                    && let Some(connection) = &self.connection
                {
                    connection.send_text(encode(&wire));
                    resent += 1;
                }
            }
            self.resend_after = Some(last);
        }
        Ok(resent)
    }

    /// The wire message for an outbound intent: the runtime adds the token, the
    /// signature, the name, the version and the farewell's reason, which the core
    /// never holds.
    fn wire(&self, message: Outbound, identity: Option<&Identity>) -> Option<RunnerMessage> {
        let version = env!("CARGO_PKG_VERSION").to_owned();
        let name = self.credentials.name.clone();
        Some(match message {
            Outbound::ValidateToken => RunnerMessage::ValidateToken {
                token: self.credentials.token.as_ref()?.expose().to_owned(),
            },
            Outbound::Register { public_key, slots } => RunnerMessage::Register {
                public_key,
                name,
                version,
                slots,
            },
            Outbound::Authenticate {
                nonce,
                runner_id,
                slots,
                last_command_index,
            } => RunnerMessage::Authenticate {
                signature: identity?.sign(&nonce),
                runner_id,
                name,
                version,
                slots,
                last_command_index,
            },
            Outbound::Startup { jobs } => RunnerMessage::Startup { version, jobs },
            Outbound::HardwareFull { report } => RunnerMessage::HardwareFull { report },
            Outbound::HardwareChanges { changes } => RunnerMessage::HardwareChanges { changes },
            Outbound::HardwareUnchanged => RunnerMessage::HardwareUnchanged {},
            Outbound::Ready { slots_free } => RunnerMessage::Ready { slots_free },
            Outbound::Heartbeat { seq, jobs_running } => {
                RunnerMessage::Heartbeat { seq, jobs_running }
            }
            Outbound::CommandAck { index } => RunnerMessage::CommandAck { index },
            Outbound::Event { index, event } => RunnerMessage::Event { index, event },
            Outbound::Stopping {
                reason,
                deadline_secs,
            } => RunnerMessage::Stopping {
                reason,
                deadline_secs,
            },
            Outbound::Leaving => RunnerMessage::Leaving {
                reason: self.credentials.leaving_reason.to_owned(),
            },
        })
    }
}
