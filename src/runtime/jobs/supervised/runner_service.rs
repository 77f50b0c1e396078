//! The supervisor's socket, as its runners see it: each runner that connects is told
//! `hello` and then how far the logs got, as they grow; what it asks (cancel, kill,
//! renew the lease) goes to the supervisor's loop. Must not: act on what is asked; the
//! loop (`program`) does.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::protocol::JobRef;

use super::wire::{RunnerAsks, Sizes, SupervisorSays, WIRE_VERSION, line};

/// Serve runners on the socket: each gets `hello`, then the logs' sizes as they grow;
/// what each asks goes to the supervisor's loop.
pub(super) async fn accept(
    listener: std::os::unix::net::UnixListener,
    job: JobRef,
    pid: u32,
    reason: Arc<Mutex<Option<String>>>,
    sizes: watch::Receiver<Sizes>,
    asks: mpsc::UnboundedSender<RunnerAsks>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(error) => {
            warn!(%error, "cannot serve the socket; no runner can reach this job");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "accepting a runner failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let hello = SupervisorSays::Hello {
            version: WIRE_VERSION,
            job: job.clone(),
            pid,
            cancel: reason
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        };
        tokio::spawn(serve(stream, hello, sizes.clone(), asks.clone()));
    }
}

async fn serve(
    stream: tokio::net::UnixStream,
    hello: SupervisorSays,
    mut sizes: watch::Receiver<Sizes>,
    asks: mpsc::UnboundedSender<RunnerAsks>,
) {
    let (read, mut write) = stream.into_split();
    let now = *sizes.borrow_and_update();
    if write.write_all(&line(&hello)).await.is_err()
        || write
            .write_all(&line(&SupervisorSays::Sizes(now)))
            .await
            .is_err()
    {
        return;
    }
    let mut lines = BufReader::new(read).lines();
    loop {
        tokio::select! {
            changed = sizes.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *sizes.borrow_and_update();
                if write.write_all(&line(&SupervisorSays::Sizes(now))).await.is_err() {
                    return;
                }
            }
            read = lines.next_line() => match read {
                Ok(Some(text)) => match serde_json::from_str::<RunnerAsks>(&text) {
                    Ok(ask) => {
                        let _ = asks.send(ask);
                    }
                    Err(error) => warn!(%error, "a runner asked something this supervisor does not know"),
                },
                _ => return,
            },
        }
    }
}
