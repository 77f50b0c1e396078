/*!
A job's local endpoint: a Unix socket in the job's folder (mode 0600, made with the job
account's rights so it is the account's), named to the job in `FYN_JOB_SOCKET`, through
which the job reports progress and reads and writes key-value pairs (`wire.rs`: one
JSON line each way; `fyn-runner job ...` is the client for shell jobs).

What the job says reaches the driver as data on the channel it gave
([`EndpointReport`]), never as an event of the endpoint's own making:

- progress is coalesced: at most one report per `progress_every` (default 1 s), the
  latest of the window; the last one is handed over when the endpoint closes, so a
  burst of a thousand costs a handful of events and the final word is never lost;
- a key-value write is handed over with a [`Taken`] the driver confirms once the write
  is durable (or refuses); the job's `put` returns only then, so a write the job saw
  succeed survives a runner crash. Writes are handled one at a time, in the order they
  arrive, and bounded per job ([`KvLimits`]): past a bound the job gets a clear error;
- reads are answered here, from the spec's pairs and the job's confirmed writes
  ([`KvView`]), offline too.

A job that talks too much waits: the channel to the driver is bounded, and at most
`MAX_CONNECTIONS` connections are served at once.

Must not import: `core`, the driver or `jobs`. Unix only (job sockets need Unix
sockets; on Windows a job has no endpoint and `FYN_JOB_SOCKET` is not set).
*/

pub mod client;
mod kv;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::platform::Account;
use crate::protocol::{JobRef, MAX_PROGRESS_MESSAGE_BYTES};
use crate::runtime::account_fs::with_account_access;

pub use kv::{KvLimits, KvView};

use crate::runtime::jobs::BoundSocket;
use wire::{Answer, MAX_LINE_BYTES, Request};

/// The socket's name in the job's folder.
pub const SOCKET_NAME: &str = "job.sock";
/// The variable that names the socket to the job.
pub const SOCKET_VARIABLE: &str = "FYN_JOB_SOCKET";
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 16;
/// The longest path a Unix socket can have (`sun_path`, its NUL included): 108 bytes
/// on Linux, 104 on the BSDs and macOS.
#[cfg(target_os = "linux")]
const MAX_SOCKET_PATH: usize = 107;
#[cfg(not(target_os = "linux"))]
const MAX_SOCKET_PATH: usize = 103;

/// What a job said, for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum JobSays {
    /// The latest progress of its window.
    Progress {
        fraction: Option<f64>,
        message: Option<String>,
    },
    /// A key-value write, checked against the job's bounds.
    KvPut { key: String, value: String },
}

/// One thing a job said, and for a write the confirmation its `put` waits for.
#[derive(Debug)]
pub struct EndpointReport {
    pub job: JobRef,
    pub says: JobSays,
    /// For a write: confirm once it is durable, or refuse (the job's `put` fails with
    /// the reason). Dropped unconfirmed, the job is told the runner could not take it.
    pub taken: Option<Taken>,
}

/// The driver's answer to a write.
#[derive(Debug)]
pub struct Taken(oneshot::Sender<Result<(), String>>);

impl Taken {
    pub fn confirm(self) {
        let _ = self.0.send(Ok(()));
    }

    pub fn refuse(self, why: impl Into<String>) {
        let _ = self.0.send(Err(why.into()));
    }
}

/// How one job's endpoint is set up.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub job: JobRef,
    /// Where the socket goes: `<job folder>/job.sock` (see [`SOCKET_NAME`]).
    pub path: PathBuf,
    /// The account jobs run as, which then owns the socket.
    pub account: Option<Account>,
    /// What the job reads: its spec's pairs (and, after a restart, its writes so far).
    pub kv: KvView,
    pub limits: KvLimits,
    /// At most one progress report per this long.
    pub progress_every: Duration,
}

impl EndpointConfig {
    pub fn new(job: JobRef, job_dir: &Path, kv: KvView) -> Self {
        Self {
            job,
            path: job_dir.join(SOCKET_NAME),
            account: None,
            kv,
            limits: KvLimits::default(),
            progress_every: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "job socket {path}: {len} bytes is longer than a Unix socket path may be ({MAX_SOCKET_PATH}); use a shorter jobs_dir"
    )]
    PathTooLong { path: String, len: usize },
    #[error("job socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
}

/// A job's endpoint, serving until closed.
#[derive(Debug)]
pub struct JobEndpoint {
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl JobEndpoint {
    /// Make the socket (replacing one an earlier runner left), or take `bound` when it
    /// is the one at the endpoint's path (made ahead with a spare folder), and serve
    /// it; what the job says goes down `reports`.
    pub async fn bind(
        config: EndpointConfig,
        reports: mpsc::Sender<EndpointReport>,
        bound: Option<BoundSocket>,
    ) -> Result<Self, EndpointError> {
        let path = config.path.clone();
        // Checked for a socket made ahead too: the job connects by this path.
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(EndpointError::PathTooLong {
                path: path.display().to_string(),
                len,
            });
        }
        if let Some(listener) = bound
            .filter(|bound| bound.path() == path)
            .and_then(BoundSocket::into_listener)
        {
            return Self::serve_on(listener, config, reports);
        }
        let failed = |source| bind_failed(&path, source);
        let listener = match config.account.clone() {
            // One bind, here: the job's start waits for it, and a hop to a blocking
            // thread and back cost more than the bind itself.
            None => make_socket(&path).map_err(failed)?,
            // As the job's account, on a thread of its own (`account_fs`).
            Some(account) => {
                let target = path.clone();
                tokio::task::spawn_blocking(move || {
                    with_account_access(Some(&account), move || make_socket(&target))
                })
                .await
                .map_err(|e| failed(std::io::Error::other(e)))?
                .map_err(failed)?
            }
        };
        Self::serve_on(listener, config, reports)
    }

    fn serve_on(
        listener: std::os::unix::net::UnixListener,
        config: EndpointConfig,
        reports: mpsc::Sender<EndpointReport>,
    ) -> Result<Self, EndpointError> {
        let path = config.path.clone();
        let listener =
            UnixListener::from_std(listener).map_err(|source| bind_failed(&path, source))?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, Serving::new(config, reports), stopped));
        Ok(Self {
            path,
            stop: Some(stop),
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop serving: the pending progress is handed over, the socket removed.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(error) = (&mut self.task).await {
            warn!(%error, "job endpoint ended abnormally");
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for JobEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The socket, made 0600 by whoever runs this (the job account, on its thread).
fn make_socket(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    listen_at(path)
}

fn bind_failed(path: &Path, source: std::io::Error) -> EndpointError {
    EndpointError::Bind {
        path: path.display().to_string(),
        source,
    }
}

/// An endpoint's socket bound and listening at `path` (which must be free), mode 0600,
/// not blocking: here on a start's path, or ahead with a spare job folder (`spare_dir`).
pub(crate) fn listen_at(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A request from a connection, and where its answer goes.
type Asked = (Request, oneshot::Sender<Answer>);

/// The endpoint's state: the job's view, and the progress waiting for its window.
struct Serving {
    job: JobRef,
    reports: mpsc::Sender<EndpointReport>,
    kv: KvView,
    limits: KvLimits,
    progress_every: Duration,
    /// When the next progress may go.
    next_progress: Instant,
    pending: Option<JobSays>,
}

impl Serving {
    fn new(config: EndpointConfig, reports: mpsc::Sender<EndpointReport>) -> Self {
        Self {
            job: config.job,
            reports,
            kv: config.kv,
            limits: config.limits,
            progress_every: config.progress_every,
            next_progress: Instant::now(),
            pending: None,
        }
    }

    async fn answer(&mut self, request: Request) -> Answer {
        match request {
            Request::Progress { fraction, message } => {
                if let Err(why) = check_progress(fraction, message.as_deref()) {
                    return Answer::refused(why);
                }
                self.pending = Some(JobSays::Progress { fraction, message });
                if Instant::now() >= self.next_progress {
                    self.flush().await;
                }
                Answer::done()
            }
            Request::KvGet { key } => Answer::value(self.kv.get(&key).map(str::to_owned)),
            Request::KvPut { key, value } => {
                if let Err(why) = self.kv.check(&key, &value, &self.limits) {
                    return Answer::refused(why);
                }
                let (taken, confirmed) = oneshot::channel();
                let report = EndpointReport {
                    job: self.job.clone(),
                    says: JobSays::KvPut {
                        key: key.clone(),
                        value: value.clone(),
                    },
                    taken: Some(Taken(taken)),
                };
                if self.reports.send(report).await.is_err() {
                    return Answer::refused("the runner is shutting down");
                }
                match confirmed.await {
                    Ok(Ok(())) => {
                        self.kv.apply(key, value);
                        Answer::done()
                    }
                    Ok(Err(why)) => Answer::refused(why),
                    Err(_) => Answer::refused("the runner could not record the write"),
                }
            }
        }
    }

    /// Hand the pending progress over, and start its window.
    async fn flush(&mut self) {
        let Some(says) = self.pending.take() else {
            return;
        };
        self.next_progress = Instant::now() + self.progress_every;
        let report = EndpointReport {
            job: self.job.clone(),
            says,
            taken: None,
        };
        if self.reports.send(report).await.is_err() {
            debug!("progress not handed over: the runner is shutting down");
        }
    }
}

/// Progress a job may report: a fraction from 0 to 1, a message within the bound.
fn check_progress(fraction: Option<f64>, message: Option<&str>) -> Result<(), String> {
    if let Some(f) = fraction
        && !(0.0..=1.0).contains(&f)
    {
        return Err(format!("fraction {f} is not between 0 and 1"));
    }
    if let Some(text) = message
        && text.len() > MAX_PROGRESS_MESSAGE_BYTES
    {
        return Err(format!(
            "message of {} bytes is over the {MAX_PROGRESS_MESSAGE_BYTES}-byte limit",
            text.len()
        ));
    }
    Ok(())
}

async fn serve(listener: UnixListener, mut serving: Serving, mut stop: oneshot::Receiver<()>) {
    let (asks, mut asked) = mpsc::channel::<Asked>(MAX_CONNECTIONS);
    let live = std::sync::Arc::new(());
    loop {
        let window = serving.next_progress;
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Each connection holds a clone of `live`; the count says how many run.
                    if std::sync::Arc::strong_count(&live) > MAX_CONNECTIONS {
                        refuse(stream, "too many connections at once").await;
                    } else {
                        tokio::spawn(connection(stream, asks.clone(), std::sync::Arc::clone(&live)));
                    }
                }
                Err(error) => {
                    warn!(%error, "job endpoint cannot accept; stopping it");
                    break;
                }
            },
            Some((request, reply)) = asked.recv() => {
                let answer = serving.answer(request).await;
                let _ = reply.send(answer);
            }
            () = tokio::time::sleep_until(window), if serving.pending.is_some() => {
                serving.flush().await;
            }
            _ = &mut stop => break,
        }
    }
    serving.flush().await;
}

async fn refuse(mut stream: UnixStream, why: &str) {
    let _ = stream
        .write_all(Answer::refused(why).line().as_bytes())
        .await;
}

/// One connection: a line in, its answer out, until the job hangs up.
async fn connection(stream: UnixStream, asks: mpsc::Sender<Asked>, _live: std::sync::Arc<()>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        let answer = match read {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE_BYTES => {
                let too_long = Answer::refused(format!("a line over {MAX_LINE_BYTES} bytes"));
                let _ = writer.write_all(too_long.line().as_bytes()).await;
                return;
            }
            Ok(_) => match serde_json::from_slice::<Request>(&line) {
                Ok(request) => {
                    let (reply, answered) = oneshot::channel();
                    if asks.send((request, reply)).await.is_err() {
                        return;
                    }
                    answered
                        .await
                        .unwrap_or_else(|_| Answer::refused("the endpoint closed"))
                }
                Err(error) => Answer::refused(format!("not a request: {error}")),
            },
        };
        if writer.write_all(answer.line().as_bytes()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_a_fraction_and_a_bounded_message() {
        assert!(check_progress(Some(0.0), Some("x")).is_ok());
        assert!(check_progress(Some(1.0), None).is_ok());
        assert!(check_progress(None, None).is_ok());
        assert!(check_progress(Some(1.5), None).is_err());
        assert!(check_progress(Some(f64::NAN), None).is_err());
        let long = "x".repeat(MAX_PROGRESS_MESSAGE_BYTES + 1);
        assert!(check_progress(None, Some(&long)).is_err());
    }
}
