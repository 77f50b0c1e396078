//! Accepting connections: TCP, optional TLS, then HTTP/1.1 with upgrades on hyper,
//! routed by axum. Every task holds a clone of a guard sender, so shutdown can wait
//! until the last connection is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::api::ErrorBody;
use super::hub::Hub;

/// A TLS handshake that takes longer than this is dropped.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// How long an HTTP connection may take to finish its request after shutdown began.
const HTTP_GRACE: Duration = Duration::from_secs(1);

/// What every handler and connection task gets.
#[derive(Clone)]
pub(crate) struct AppState {
    pub hub: Arc<Hub>,
    /// The blob folder: job inputs and results.
    pub blobs: Arc<super::blobs::BlobStore>,
    pub shutdown: watch::Receiver<bool>,
    /// Dropped by the last task to finish; `DevServer::shutdown` waits for that.
    pub guard: mpsc::Sender<()>,
}

/// Resolves once shutdown was asked for (or the `DevServer` is gone).
pub(crate) async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped with the DevServer: stop as well.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// `{"error": ...}` with a status; every error answer of the server looks like this.
pub(crate) fn error_response(status: StatusCode, error: &str) -> Response {
    let body = ErrorBody {
        error: error.to_owned(),
        field: None,
    };
    (status, Json(body)).into_response()
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    state: AppState,
) {
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let task = serve_connection(tcp, peer, tls.clone(), router.clone(), state.clone());
                    tokio::spawn(task);
                }
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = wait_shutdown(&mut shutdown) => break,
        }
    }
    // The listener is dropped here, so a restarted server can bind the same port.
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    state: AppState,
) {
    // Protocol messages are small and latency matters more than batching.
    let _ = tcp.set_nodelay(true);
    let Some(acceptor) = tls else {
        return serve_http(tcp, router, state).await;
    };
    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => serve_http(stream, router, state).await,
        Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
    }
}

async fn serve_http<IO>(io: IO, router: Router, state: AppState)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let AppState {
        mut shutdown,
        guard: _guard,
        ..
    } = state;
    let service = TowerToHyperService::new(router);
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        }
        () = wait_shutdown(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HTTP_GRACE, connection).await;
        }
    }
}
