//! The relay: a TCP relay in this bench between the runner and the dev-server, whose
//! `cut` ends every connection through it at once and refuses new ones for a while.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the relay's tasks share.
#[derive(Default)]
struct RelayState {
    /// The link is down: connections are closed as soon as they are accepted.
    down: AtomicBool,
    connections: Mutex<Vec<JoinHandle<()>>>,
    accepted: AtomicU64,
}

/// A TCP relay in front of the dev-server's fixed port: every connection of the
/// runner goes through it, and `cut` ends them all. The upstream address never
/// changes, so it keeps working across restarts; while the dev-server is down, a
/// connection it accepts is closed when the upstream refuses.
pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    state: Arc<RelayState>,
    accept: JoinHandle<()>,
}

impl Relay {
    pub(crate) fn start(listener: TcpListener, upstream: SocketAddr) -> Self {
        let addr = listener.local_addr().expect("the relay's address");
        let state = Arc::new(RelayState::default());
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // Out of descriptors or the like: try again shortly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                if shared.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(relay_one(client, upstream));
                let mut connections = shared.connections.lock().expect("relay lock");
                connections.retain(|t| !t.is_finished());
                connections.push(task);
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// Every open connection ended, new ones refused for `down`; how many were cut.
    pub(crate) fn cut(&self, down: Duration) -> usize {
        self.state.down.store(true, Ordering::SeqCst);
        let cut = {
            let mut connections = self.state.connections.lock().expect("relay lock");
            let open = connections.iter().filter(|t| !t.is_finished()).count();
            for task in connections.drain(..) {
                task.abort();
            }
            open
        };
        let state = self.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(down).await;
            state.down.store(false, Ordering::SeqCst);
        });
        cut
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut connections) = self.state.connections.lock() {
            for task in connections.drain(..) {
                task.abort();
            }
        }
    }
}

/// Bytes both ways until either side ends; aborted (both sockets dropped) by a cut.
async fn relay_one(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
