//! The metrics listener: `GET /metrics` (OpenMetrics text when asked for, else
//! Prometheus's text format), `GET /healthz` (the
//! process and its loop are alive: the driver's loop itself answers), `GET /readyz`
//! (Active, and the API has authenticated this runner). 200 for yes, 503 for no, as
//! load balancers and Kubernetes probes expect.
//!
//! Owns: the listener task, the probe's round trip to the loop and its bound. Must
//! not: read the core (the loop answers a probe with what the core's getters say),
//! or serve anything that is not a metric or a probe. Nothing here carries a secret:
//! no ids, no tokens, no job data. On a loopback address, a request whose `Host` is
//! not a loopback name is refused, so a web page in a local browser cannot read it
//! through a rebound DNS name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use super::{Exposition, RunnerMetrics};

/// How long the loop gets to answer a probe before the runner counts as unhealthy.
/// The loop answers between two dispatches; one dispatch is microseconds to a few
/// milliseconds (a store commit), so a second is far beyond a healthy loop.
pub const PROBE_WITHIN: Duration = Duration::from_secs(1);

/// Probes waiting for the loop at once; beyond, a probe is answered 503 at once
/// (the loop is not keeping up) instead of queueing without bound.
const PROBES_IN_FLIGHT: usize = 16;

/// A health probe on its way to the driver's loop, which answers it.
#[derive(Debug)]
pub struct Probe {
    reply: oneshot::Sender<ProbeAnswer>,
}

impl Probe {
    pub fn answer(self, answer: ProbeAnswer) {
        let _ = self.reply.send(answer);
    }
}

/// What the loop says: its state, and whether the runner is ready for jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub state: &'static str,
    /// Active, and the API has authenticated this runner on an open connection.
    pub ready: bool,
}

/// Hands a probe to the loop; false when the loop is gone.
pub type ProbeSender = Arc<dyn Fn(Probe) -> bool + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The running listener.
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl MetricsServer {
    /// The address bound (the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening; requests in flight are cut off.
    pub fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<RunnerMetrics>,
    probes: ProbeSender,
    in_flight: Arc<Semaphore>,
    loopback_only: bool,
}

/// Bind `addr` (synchronously, so a taken port is an error at start, not a log line
/// later) and serve on the current tokio runtime.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<RunnerMetrics>,
    probes: ProbeSender,
) -> Result<MetricsServer, MetricsServerError> {
    let bind = |source| MetricsServerError::Bind { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    std_listener.set_nonblocking(true).map_err(bind)?;
    let local = std_listener.local_addr().map_err(bind)?;
    let listener = tokio::net::TcpListener::from_std(std_listener).map_err(bind)?;
    let shared = Shared {
        metrics,
        probes,
        in_flight: Arc::new(Semaphore::new(PROBES_IN_FLIGHT)),
        loopback_only: local.ip().is_loopback(),
    };
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(error) = served.await {
            tracing::warn!(%error, "the metrics listener stopped");
        }
    });
    Ok(MetricsServer {
        addr: local,
        task,
        stop: Some(stop),
    })
}

async fn metrics_page(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_foreign_host(&shared, &headers) {
        return refused;
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Exposition::negotiate(accept);
    let text = shared.metrics.render(std::time::Instant::now(), format);
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}

async fn healthz(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_foreign_host(&shared, &headers) {
        return refused;
    }
    match ask_loop(&shared).await {
        Some(answer) => plain(StatusCode::OK, format!("ok: {}\n", answer.state)),
        None => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the runner's loop did not answer\n".to_owned(),
        ),
    }
}

async fn readyz(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_foreign_host(&shared, &headers) {
        return refused;
    }
    match ask_loop(&shared).await {
        Some(answer) if answer.ready => plain(StatusCode::OK, "ready\n".to_owned()),
        Some(answer) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", answer.state),
        ),
        None => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the runner's loop did not answer\n".to_owned(),
        ),
    }
}

/// The loop's answer, or None when it is gone, too busy or too slow.
async fn ask_loop(shared: &Shared) -> Option<ProbeAnswer> {
    let _permit = shared.in_flight.try_acquire().ok()?;
    let (reply, answer) = oneshot::channel();
    if !(shared.probes)(Probe { reply }) {
        return None;
    }
    tokio::time::timeout(PROBE_WITHIN, answer).await.ok()?.ok()
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// On loopback, only a loopback `Host` (or none, as HTTP/1.0 allows) is served.
fn refuse_foreign_host(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    if !shared.loopback_only {
        return None;
    }
    let host = headers.get(header::HOST)?.to_str().unwrap_or("");
    if is_loopback_host(host) {
        return None;
    }
    Some(plain(
        StatusCode::MISDIRECTED_REQUEST,
        "this listener serves loopback names only\n".to_owned(),
    ))
}

/// `localhost`, `127.0.0.1:9464`, `[::1]:9464`: a name that can only mean this machine.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:9464",
            "127.0.0.1:1",
            "[::1]:80",
            "127.8.9.1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "evil.localhost.example:80",
            "10.0.0.1:9464",
            "[fe80::1]:1",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
