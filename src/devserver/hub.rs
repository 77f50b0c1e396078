//! The shared state of the control plane: the database and the live sessions, behind
//! one std `Mutex` that is never held across an `.await`.
//!
//! Every change happens in one locked call: read and write the store, then hand the
//! resulting messages to the sessions' queues before the lock is released. So the
//! order in which two changes reach a runner is the order in which they were stored,
//! and a command is always stored before it is queued for sending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::api::RunnerState;
use super::blobs::BlobUrls;
use super::grants::GrantKey;
use super::store::Store;
use crate::protocol::{CloseReason, ServerMessage, SessionParams};

/// What a session task is asked to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outgoing {
    Message(ServerMessage),
    /// Close the connection with this code and reason after everything queued before.
    Close {
        reason: CloseReason,
        text: String,
    },
}

/// The in-memory view of a runner with an authenticated session.
#[derive(Debug)]
pub(crate) struct Live {
    /// Which connection holds the runner; a newer one evicts it.
    pub session: u64,
    pub tx: UnboundedSender<Outgoing>,
    pub state: RunnerState,
    /// `ready_ack` was sent: commands may flow (the runner takes them only from then).
    pub active: bool,
    /// No new job goes to it.
    pub draining: bool,
    pub last_seen_ms: u64,
}

/// Messages gathered during one locked change, delivered only if it succeeded.
#[derive(Debug, Default)]
pub(crate) struct Post {
    items: Vec<(UnboundedSender<Outgoing>, Outgoing)>,
}

impl Post {
    pub fn message(&mut self, tx: &UnboundedSender<Outgoing>, message: ServerMessage) {
        self.items.push((tx.clone(), Outgoing::Message(message)));
    }

    pub fn close(&mut self, tx: &UnboundedSender<Outgoing>, reason: CloseReason, text: &str) {
        self.items.push((
            tx.clone(),
            Outgoing::Close {
                reason,
                text: text.to_owned(),
            },
        ));
    }

    fn deliver(self) {
        for (tx, outgoing) in self.items {
            // A closed queue means the session ended; stored commands wait for the
            // runner's next session, so nothing is lost here.
            let _ = tx.send(outgoing);
        }
    }
}

pub(crate) struct Inner {
    pub store: Store,
    pub live: HashMap<String, Live>,
    pub params: SessionParams,
    /// How many runner events were stored (and jobs changed otherwise: cancelled while
    /// queued, re-queued) so far; see `DevServer::events_stored`.
    pub stored: tokio::sync::watch::Sender<u64>,
    /// The URLs a job's attempt is handed for its inputs and outputs.
    pub urls: BlobUrls,
    /// What the tokens in those URLs are derived with.
    pub grant_key: GrantKey,
}

impl Inner {
    /// Wake whoever waits for news of jobs (a follower of a job's output, a test).
    pub fn changed(&self) {
        self.stored.send_modify(|count| *count += 1);
    }
}

pub(crate) struct Hub {
    inner: Mutex<Inner>,
    next_session: AtomicU64,
    params: SessionParams,
    handshake_timeout: Duration,
}

impl Hub {
    pub fn new(
        store: Store,
        params: SessionParams,
        handshake_timeout: Duration,
        (urls, grant_key): (BlobUrls, GrantKey),
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                store,
                live: HashMap::new(),
                params,
                stored: tokio::sync::watch::Sender::new(0),
                urls,
                grant_key,
            }),
            next_session: AtomicU64::new(1),
            params,
            handshake_timeout,
        }
    }

    pub fn params(&self) -> SessionParams {
        self.params
    }

    /// How long a connection may take from its upgrade to `authenticated`.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    pub fn new_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Run one change under the lock and deliver its messages if it succeeded.
    pub fn with<T, E>(
        &self,
        f: impl FnOnce(&mut Inner, &mut Post) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut inner = self.lock();
        let mut post = Post::default();
        let value = f(&mut inner, &mut post)?;
        post.deliver();
        Ok(value)
    }

    pub fn events_stored(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lock().stored.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while locked cannot leave the database half-written (changes are
        // transactions), so the data behind a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
