/*!
The reference control plane (`fyn-runner dev-server`): a development tool that speaks
the runner protocol from the server side, so the runner can be run and tested end to
end without a production control plane.

Owns: the runner endpoint (`/runner/v1`: registration, authentication, the session,
commands and events with their indexes and acknowledgements, eviction, runner-lost),
a small admin HTTP API (`/admin/v1/...`) to mint tokens, submit and cancel jobs, read
their output and look at runners, the admin token that guards it, and SQLite storage
so a restart keeps runners, keys, indexes and jobs.

Must not import: `core`, the runner's runtime or `hardware`. It builds on
`crate::protocol` alone (the hardware record and its change applier included), exactly
as a third-party control plane would; `docs/protocol.md` is the contract it implements
and `docs/dev-server.md` its manual.

Not for production: one admin token stands for every user, and registration tokens are
stored in clear text (in a private file). `docs/dev-server.md` has the security model.
*/
#![allow(clippy::disallowed_methods)] // the control plane keeps its own clock and draws nonces

mod access;
mod admin;
mod admin_token;
mod api;
mod args;
mod blob_routes;
mod blobs;
mod commands;
mod control;
mod error;
mod events;
mod grants;
mod hub;
mod job_side;
mod metrics;
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

pub use admin_token::{AdminToken, AdminTokenError, default_token_path};
pub use api::{
    CommandIssued, DrainRequest, ErrorBody, EventRecord, JobCreated, JobInfo, JobRequest, JobState,
    OutputPage, RunnerInfo, RunnerState, TokenCreated,
};
pub use args::DevServerArgs;
pub use blobs::BlobError;
pub use control::MAX_OUTPUT_READ;
pub use error::DevServerError;
pub use job_side::{
    BlobStored, InputRequest, JobProgress, JobResults, JobUsage, OutputRequest, ResultFile,
};
pub use store::StoreError;
pub use tls::TlsError;

use crate::protocol::{OutputStream, RUNNER_PATH, SessionParams};
use access::AccessPolicy;
use blobs::{BlobStore, BlobUrls};
use grants::GrantKey;
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
    /// The admin token's file: read when it exists, else minted and written there
    /// (0600). `None`: minted and kept in memory (`DevServer::admin_token`).
    pub admin_token_file: Option<PathBuf>,
    /// Host names (besides this server's addresses) the admin API answers to: names a
    /// proxy or the network reaches it by. Lowercase, no port.
    pub allowed_hosts: Vec<String>,
    /// How long a runner connection may take from its upgrade to `authenticated`,
    /// whatever it sends meanwhile.
    pub handshake_timeout_ms: u64,
    /// Where job inputs and results are kept as files. `None`: `<db>-blobs` beside the
    /// database, or a private temporary folder removed at exit when it lives in memory.
    pub blob_dir: Option<PathBuf>,
    /// The largest input or result accepted, in bytes.
    pub max_blob_bytes: u64,
    /// The base URL runners reach this server at, for the input and result URLs it
    /// hands them (`None`: its own address, `admin_url()`).
    pub public_url: Option<String>,
}

/// The default of `DevServerConfig::max_blob_bytes`: 16 GiB.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 16 << 30;

/// The default of `DevServerConfig::handshake_timeout_ms`: the runner's own
/// handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 30_000;

impl Default for DevServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7480),
            db: None,
            tls: None,
            session: SessionParams::default(),
            admin_token_file: None,
            allowed_hosts: Vec::new(),
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            blob_dir: None,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            public_url: None,
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
        if let Some(url) = &self.public_url {
            let fine = url::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !fine {
                return Err(DevServerError::Config(format!(
                    "--public-url {url:?} is not an http:// or https:// URL"
                )));
            }
        }
        if self.handshake_timeout_ms == 0 {
            return Err(DevServerError::Config(
                "the handshake timeout must be above 0".to_owned(),
            ));
        }
        for host in &self.allowed_hosts {
            let plain = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !plain {
                return Err(DevServerError::Config(format!(
                    "--allow-host {host:?} is not a host name (give the name alone, without scheme or port)"
                )));
            }
        }
        Ok(())
    }

    /// `--public-url`'s host (lowercase, without brackets or a trailing dot) and port.
    fn public_authority(&self) -> Option<(String, u16)> {
        let url = url::Url::parse(self.public_url.as_deref()?).ok()?;
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        Some((host, url.port_or_known_default()?))
    }

    fn allowed_hosts(&self) -> Vec<String> {
        self.allowed_hosts
            .iter()
            .map(|host| host.trim_end_matches('.').to_ascii_lowercase())
            .collect()
    }
}

/// A running dev-server. Dropping it stops it too; `shutdown` also waits for the
/// connections to close.
pub struct DevServer {
    hub: Arc<Hub>,
    blobs: Arc<BlobStore>,
    local_addr: SocketAddr,
    tls: bool,
    admin_token: AdminToken,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    ticker: JoinHandle<()>,
    done: mpsc::Receiver<()>,
}

impl DevServer {
    /// Open the database, bind the listener and start serving.
    pub async fn start(config: DevServerConfig) -> Result<DevServer, DevServerError> {
        config.validate()?;
        let admin_token = match &config.admin_token_file {
            Some(path) => AdminToken::read_or_mint(path)?.0,
            None => AdminToken::mint()?,
        };
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
        let handshake = Duration::from_millis(config.handshake_timeout_ms);
        let blobs = BlobStore::open(
            config.blob_dir.as_deref(),
            config.db.as_deref(),
            config.max_blob_bytes,
        )
        .map_err(DevServerError::BlobFolder)?;
        let public_url = match &config.public_url {
            Some(url) => url.clone(),
            None => admin_url(tls.is_some(), local_addr),
        };
        let grants = (BlobUrls::new(&public_url), GrantKey::draw()?);
        let hub = Arc::new(Hub::new(store, config.session, handshake, grants));
        let (stop, shutdown) = watch::channel(false);
        let (guard, done) = mpsc::channel(1);
        let state = AppState {
            hub: Arc::clone(&hub),
            blobs: Arc::new(blobs),
            shutdown,
            guard,
        };
        let policy = Arc::new(AccessPolicy {
            token: admin_token.clone(),
            local: local_addr,
            tls: tls.is_some(),
            allowed_hosts: config.allowed_hosts(),
            public_authority: config.public_authority(),
        });
        let state_blobs = Arc::clone(&state.blobs);
        let router = admin::router(state.clone(), policy);
        let accept = tokio::spawn(server::accept_loop(listener, tls.clone(), router, state));
        let ticker = tokio::spawn(tick_loop(Arc::clone(&hub), tick_period(&config.session)));
        tracing::info!(%local_addr, tls = tls.is_some(), db = ?config.db, "dev-server started");
        Ok(DevServer {
            hub,
            blobs: Arc::clone(&state_blobs),
            local_addr,
            tls: tls.is_some(),
            admin_token,
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
        admin_url(self.tls, self.local_addr)
    }

    fn authority(&self) -> String {
        authority(self.tls, self.local_addr)
    }

    /// The admin API's bearer token (`Authorization: Bearer <token>`).
    pub fn admin_token(&self) -> &str {
        self.admin_token.as_str()
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

    /// As `GET /admin/v1/jobs/{id}/output`: at most `limit` bytes from `offset` on.
    pub fn job_output(
        &self,
        id: &str,
        stream: OutputStream,
        offset: u64,
        limit: u64,
    ) -> Result<OutputPage, DevServerError> {
        self.hub.output(id, stream, offset, limit)
    }

    /// Every byte of a stream held for the job's current attempt (for tests and the
    /// demo; the admin API only reads bounded ranges).
    pub fn output_bytes(&self, id: &str, stream: OutputStream) -> Result<Vec<u8>, DevServerError> {
        self.hub.output_bytes(id, stream)
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

    /// As `GET /admin/v1/jobs/{id}/results`.
    pub fn job_results(&self, id: &str) -> Result<JobResults, DevServerError> {
        self.hub.results(id)
    }

    /// As `PUT /admin/v1/blobs`: store `bytes` as a blob; returns its SHA-256 (hex).
    pub async fn store_blob(&self, bytes: Vec<u8>) -> Result<String, DevServerError> {
        let length = bytes.len() as u64;
        let sha256 = self
            .blobs
            .receive(axum::body::Body::from(bytes), length, None)
            .await?;
        self.hub.record_blob(&sha256, length)?;
        Ok(sha256)
    }

    /// Every byte of result `path` of the job's current attempt (in-process callers;
    /// `GET /admin/v1/jobs/{id}/results/{path}` streams it).
    pub fn result_bytes(&self, id: &str, path: &str) -> Result<Vec<u8>, DevServerError> {
        let (sha256, _) = self.hub.result_blob(id, path)?;
        std::fs::read(self.blobs.path(&sha256)).map_err(DevServerError::BlobFolder)
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

fn admin_url(tls: bool, local_addr: SocketAddr) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", authority(tls, local_addr))
}

/// Host and port to reach the server at. With TLS on loopback the host is
/// `localhost`, the name a development certificate is made for.
fn authority(tls: bool, local_addr: SocketAddr) -> String {
    let ip = local_addr.ip();
    let port = local_addr.port();
    let loopback = ip.is_loopback() || ip.is_unspecified();
    match ip {
        _ if loopback && tls => format!("localhost:{port}"),
        _ if ip.is_unspecified() => format!("127.0.0.1:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
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

/// `fyn-runner dev-server`: serve until Ctrl-C (or, on Unix, SIGTERM).
pub async fn run(args: DevServerArgs) -> anyhow::Result<()> {
    // Listening for the stop before anything is printed: a script that reads the
    // token and stops the server at once must get the clean stop.
    let stop = stop_requested().context("installing the signal handlers")?;
    let server = DevServer::start(DevServerConfig::from(&args))
        .await
        .context("starting the dev-server")?;
    tracing::info!(runner_url = %server.runner_url(), admin_url = %server.admin_url(), "dev-server listening");
    let minted_file = match &args.admin_token_file {
        Some(path) => {
            tracing::info!(path = %path.display(), "admin token file");
            None
        }
        None => write_default_token(&server),
    };
    // One line each on stdout, so a script can read them; logs go to stderr.
    println!("runner-url: {}", server.url());
    println!("admin-url: {}", server.admin_url());
    println!("admin-token: {}", server.admin_token());
    if args.print_token {
        let token = server
            .mint_token()
            .context("minting a registration token")?;
        println!("token: {token}");
    }
    stop.await;
    server.shutdown().await;
    if let Some(path) = minted_file {
        // This start's token is worthless now; a stale file would only mislead `ctl`.
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Resolves at the first Ctrl-C or SIGTERM; the handlers are in place on return.
#[cfg(unix)]
fn stop_requested() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn stop_requested() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot wait for Ctrl-C; stopping");
        }
    })
}

/// Write this start's token where `fyn-runner ctl` looks for it by default. A server
/// that cannot still serves: its token is on stdout.
fn write_default_token(server: &DevServer) -> Option<PathBuf> {
    let written = default_token_path(server.local_addr().port()).and_then(|path| {
        server.admin_token.write(&path)?;
        Ok(path)
    });
    match written {
        Ok(path) => {
            tracing::info!(path = %path.display(), "admin token written (fyn-runner ctl reads it from there)");
            Some(path)
        }
        Err(error) => {
            tracing::warn!(%error, "admin token not written to a file; pass --admin-token-file to choose one");
            None
        }
    }
}
