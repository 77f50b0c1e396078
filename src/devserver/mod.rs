/*!
The reference control plane (`fyn-runner dev-server`): a development tool that speaks
the runner protocol from the server side, so the runner can be run and tested end to
end without a production control plane.

Owns: the runner endpoint (`/runner/v1`: registration, authentication, the session,
commands and events with their indexes and acknowledgements, eviction, runner-lost),
a small admin HTTP API (`/admin/v1/...`) to mint tokens, submit and cancel jobs and
look at runners, and SQLite storage so a restart keeps runners, keys, indexes and jobs.

Must not import: `core`, the runner's runtime or `hardware`. It builds on
`crate::protocol` alone (the hardware record and its change applier included), exactly
as a third-party control plane would; `docs/protocol.md` is the contract it implements
and `docs/dev-server.md` its manual.

Not for production: the admin API has no authentication (it listens on loopback by
default) and registration tokens are stored in clear text.
*/
#![allow(clippy::disallowed_methods)] // the control plane keeps its own clock and draws nonces

mod admin;
mod api;
mod args;
mod control;
mod error;
mod events;
mod hub;
mod server;
mod session;
mod store;
mod tls;
mod util;
mod ws;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use api::{
    CommandIssued, DrainRequest, ErrorBody, EventRecord, JobCreated, JobInfo, JobRequest, JobState,
    RunnerInfo, RunnerState, TokenCreated,
};
pub use args::DevServerArgs;
pub use error::DevServerError;
pub use store::StoreError;
pub use tls::TlsError;

use crate::protocol::{RUNNER_PATH, SessionParams};
use hub::Hub;
use server::AppState;
use store::Store;

/// How long `shutdown` waits for open connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Certificate chain and private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevServerConfig {
    /// Port 0 picks a free port; `DevServer::local_addr` tells which.
    pub listen: SocketAddr,
    /// SQLite file; `None` keeps everything in memory.
    pub db: Option<PathBuf>,
    /// Serve `wss://` and `https://` instead of `ws://` and `http://`.
    pub tls: Option<TlsFiles>,
    /// Handed to every runner in `authenticated`; `runner_lost_threshold_ms` is also
    /// the server's own runner-lost threshold.
    pub session: SessionParams,
}

impl Default for DevServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7480),
            db: None,
            tls: None,
            session: SessionParams::default(),
        }
    }
}

impl DevServerConfig {
    /// Loopback, a free port, in memory: what tests and the in-process demo want.
    pub fn ephemeral() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), DevServerError> {
        let s = &self.session;
        if s.heartbeat_interval_ms == 0 || s.ack_timeout_ms == 0 || s.runner_lost_threshold_ms == 0
        {
            return Err(DevServerError::Config(
                "heartbeat, ack timeout and runner-lost threshold must be above 0".to_owned(),
            ));
        }
        if s.ack_timeout_ms >= s.heartbeat_interval_ms {
            return Err(DevServerError::Config(format!(
                "the ack timeout ({} ms) must be below the heartbeat interval ({} ms)",
                s.ack_timeout_ms, s.heartbeat_interval_ms
            )));
        }
        Ok(())
    }
}

/// A running dev-server. Dropping it stops it too; `shutdown` also waits for the
/// connections to close.
pub struct DevServer {
    hub: Arc<Hub>,
    local_addr: SocketAddr,
    tls: bool,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    ticker: JoinHandle<()>,
    done: mpsc::Receiver<()>,
}

impl DevServer {
    /// Open the database, bind the listener and start serving.
    pub async fn start(config: DevServerConfig) -> Result<DevServer, DevServerError> {
        config.validate()?;
        let tls = config
            .tls
            .as_ref()
            .map(|files| tls::acceptor(&files.cert, &files.key))
            .transpose()?;
        let store = Store::open(config.db.as_deref())?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| DevServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| DevServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let hub = Arc::new(Hub::new(store, config.session));
        let (stop, shutdown) = watch::channel(false);
        let (guard, done) = mpsc::channel(1);
        let state = AppState {
            hub: Arc::clone(&hub),
            shutdown,
            guard,
        };
        let router = admin::router(state.clone());
        let accept = tokio::spawn(server::accept_loop(listener, tls.clone(), router, state));
        let ticker = tokio::spawn(tick_loop(Arc::clone(&hub), tick_period(&config.session)));
        tracing::info!(%local_addr, tls = tls.is_some(), db = ?config.db, "dev-server started");
        Ok(DevServer {
            hub,
            local_addr,
            tls: tls.is_some(),
            stop,
            accept,
            ticker,
            done,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL runners are given: `ws://127.0.0.1:PORT` or `wss://localhost:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.authority())
    }

    /// The full runner endpoint: `url()` followed by `/runner/v1`.
    pub fn runner_url(&self) -> String {
        format!("{}{RUNNER_PATH}", self.url())
    }

    /// The base URL of the admin API: `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub fn admin_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    /// Host and port to reach the server at. With TLS on loopback the host is
    /// `localhost`, the name a development certificate is made for.
    fn authority(&self) -> String {
        let ip = self.local_addr.ip();
        let port = self.local_addr.port();
        let loopback = ip.is_loopback() || ip.is_unspecified();
        match ip {
            _ if loopback && self.tls => format!("localhost:{port}"),
            _ if ip.is_unspecified() => format!("127.0.0.1:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            IpAddr::V4(v4) => format!("{v4}:{port}"),
        }
    }

    /// A fresh single-use registration token.
    pub fn mint_token(&self) -> Result<String, DevServerError> {
        self.hub.mint_token()
    }

    pub fn runners(&self) -> Result<Vec<RunnerInfo>, DevServerError> {
        self.hub.runners()
    }

    pub fn runner(&self, id: &str) -> Result<Option<RunnerInfo>, DevServerError> {
        self.hub.runner(id)
    }

    /// The events stored for a runner, in index order.
    pub fn events(&self, runner_id: &str) -> Result<Vec<EventRecord>, DevServerError> {
        self.hub.events(runner_id)
    }

    pub fn jobs(&self) -> Result<Vec<JobInfo>, DevServerError> {
        self.hub.jobs()
    }

    pub fn job(&self, id: &str) -> Result<Option<JobInfo>, DevServerError> {
        self.hub.job(id)
    }

    /// Counts the runner events stored so far (a job accepted, started, its output,
    /// its end, ...): await `changed()` on it instead of polling `job` in a loop.
    pub fn events_stored(&self) -> tokio::sync::watch::Receiver<u64> {
        self.hub.events_stored()
    }

    /// Queue a job (as `POST /admin/v1/jobs`); returns its ID.
    pub fn submit_job(&self, request: JobRequest) -> Result<String, DevServerError> {
        self.hub.submit_job(request)
    }

    /// As `POST /admin/v1/jobs/{id}/cancel`.
    pub fn cancel_job(&self, id: &str) -> Result<JobInfo, DevServerError> {
        self.hub.cancel_job(id)
    }

    /// As `POST /admin/v1/runners/{id}/drain`; returns the command index.
    pub fn drain_runner(
        &self,
        id: &str,
        deadline_secs: Option<u64>,
    ) -> Result<u64, DevServerError> {
        self.hub.drain_runner(id, deadline_secs)
    }

    /// Stop accepting (the port is free when this returns), close every runner socket
    /// with 1000, and wait a bounded time for the connections to end.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        self.ticker.abort();
        if let Err(error) = (&mut self.accept).await {
            tracing::warn!(%error, "accept loop ended abnormally");
        }
        // `recv` yields `None` once every connection task dropped its guard.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.done.recv())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the shutdown grace period");
        }
        tracing::info!(local_addr = %self.local_addr, "dev-server stopped");
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.ticker.abort();
    }
}

/// Often enough that runner-lost fires close to its threshold, rarely enough to cost
/// nothing at the default threshold.
fn tick_period(session: &SessionParams) -> Duration {
    Duration::from_millis((session.runner_lost_threshold_ms / 4).clamp(10, 1_000))
}

async fn tick_loop(hub: Arc<Hub>, period: Duration) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = hub.tick() {
            tracing::error!(%error, "periodic runner-lost / assignment pass failed");
        }
    }
}

/// `fyn-runner dev-server`: serve until Ctrl-C.
pub async fn run(args: DevServerArgs) -> anyhow::Result<()> {
    let server = DevServer::start(DevServerConfig::from(&args))
        .await
        .context("starting the dev-server")?;
    tracing::info!(runner_url = %server.runner_url(), admin_url = %server.admin_url(), "dev-server listening");
    if args.print_token {
        let token = server
            .mint_token()
            .context("minting a registration token")?;
        // One line on stdout, so a script can read it; logs go to stderr.
        println!("token: {token}");
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.shutdown().await;
    Ok(())
}
