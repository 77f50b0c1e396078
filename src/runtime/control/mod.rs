//! The local control socket: how `fyn-runner status` and `fyn-runner drain` reach the
//! running daemon. One JSON request line, one JSON response line.
//!
//! The endpoint is the platform's ([`unix`], [`windows`]): on Unix a socket in the
//! state directory (0700), itself 0600; on Windows a local named pipe named after the
//! state directory, whose access list lets in only the runner's account, `SYSTEM` and
//! Administrators. Either way only the runner's user and the administrators can use it.
//!
//! It also guards the state directory: a second runner on the same directory finds a
//! live endpoint and refuses to start.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::status::RunnerStatus;
use crate::core::StopOrigin;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as endpoint;
#[cfg(unix)]
pub use unix::{SOCKET_NAME, socket_path};
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as endpoint;
#[cfg(windows)]
pub use windows::pipe_name;

/// Where the runner of `state_dir` listens, in words (a socket path or a pipe name).
pub fn endpoint_name(state_dir: &Path) -> String {
    endpoint::name(state_dir)
}

/// What the operator asks of a running runner, from the control socket, a signal, the
/// Windows service control manager or a test. The driver turns it into a core event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Drain, asked for by `by`; with this deadline when given (`fyn-runner drain
    /// --deadline`).
    Drain {
        deadline_secs: Option<u64>,
        by: StopOrigin,
    },
    Force,
    /// Stop now and leave running jobs to their supervisors (SIGTERM, SIGINT: a
    /// service manager's stop or restart).
    Stop,
}

impl Control {
    /// A drain with the configured deadline.
    pub fn drain(by: StopOrigin) -> Self {
        Self::Drain {
            deadline_secs: None,
            by,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Drain {
        deadline_secs: Option<u64>,
        force: bool,
        /// Asked by `fyn-runner uninstall` (the runner says so in `stopping.reason`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        uninstall: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ControlResponse {
    Status { status: Box<RunnerStatus> },
    Draining { status: Box<RunnerStatus> },
    Error { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another runner is already using {path} (its control socket answers); stop it first")]
    InUse { path: String },
    #[error("cannot create the control socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("no runner is running with state directory {state_dir} (no control socket at {path})")]
    NotRunning { state_dir: String, path: String },
    #[error("cannot reach the runner's control socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("the runner's control socket gave no valid answer: {0}")]
    Protocol(String),
}

/// The socket, removed when the runner stops.
pub struct ControlSocket {
    endpoint: endpoint::Bound,
    task: tokio::task::JoinHandle<()>,
}

impl ControlSocket {
    pub fn close(self) {
        self.task.abort();
        self.endpoint.remove();
    }
}

/// Refuse early when another runner owns the state directory.
pub fn ensure_unused(state_dir: &Path) -> Result<(), ControlError> {
    if endpoint::answers(state_dir) {
        return Err(ControlError::InUse {
            path: state_dir.display().to_string(),
        });
    }
    Ok(())
}

/// How long the control endpoint waits after a failed accept before the next.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

pub fn serve(
    state_dir: &Path,
    status: watch::Receiver<RunnerStatus>,
    control: mpsc::UnboundedSender<Control>,
) -> Result<ControlSocket, ControlError> {
    ensure_unused(state_dir)?;
    let (mut listener, bound) = endpoint::bind(state_dir)?;
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of file handles, say: `status` and `drain` must come back
                    // when that passes, not stay gone until a restart.
                    warn!(error = %e, "control socket: accepting failed; trying again");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let status = status.clone();
            let control = control.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, status, control).await {
                    warn!(error = %e, "control socket request failed");
                }
            });
        }
    });
    Ok(ControlSocket {
        endpoint: bound,
        task,
    })
}

async fn answer(
    stream: impl AsyncRead + AsyncWrite,
    status: watch::Receiver<RunnerStatus>,
    control: mpsc::UnboundedSender<Control>,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut line = String::new();
    // A request is a short line; a client that sends more is cut off, not buffered.
    let mut reader = BufReader::new(read.take(64 * 1024));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<ControlRequest>(&line) {
        Ok(ControlRequest::Status) => ControlResponse::Status {
            status: Box::new(status.borrow().clone()),
        },
        Ok(ControlRequest::Drain {
            deadline_secs,
            force,
            uninstall,
        }) => match deadline_secs.map(checked_deadline).transpose() {
            Err(message) => ControlResponse::Error { message },
            Ok(deadline_secs) => {
                let by = if uninstall {
                    StopOrigin::Uninstall
                } else {
                    StopOrigin::DrainCommand
                };
                let request = if force {
                    Control::Force
                } else {
                    Control::Drain { deadline_secs, by }
                };
                let _ = control.send(request);
                ControlResponse::Draining {
                    status: Box::new(status.borrow().clone()),
                }
            }
        },
        Err(e) => ControlResponse::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// A drain deadline held to the setting's own check: the runner takes none that `run`
/// would refuse (nor one that would overflow what it tells the service manager).
fn checked_deadline(secs: u64) -> Result<u64, String> {
    i64::try_from(secs)
        .map_err(|_| format!("too large: {secs}"))
        .and_then(crate::config::value::drain_deadline)
        .map_err(|reason| format!("bad drain deadline {secs}: {reason}"))
}

/// Ask the runner that owns `state_dir`.
pub async fn request(
    state_dir: &Path,
    request: &ControlRequest,
) -> Result<ControlResponse, ControlError> {
    let shown = endpoint::name(state_dir);
    let stream = match endpoint::connect(state_dir).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning {
                state_dir: state_dir.display().to_string(),
                path: shown,
            });
        }
        Err(source) => {
            return Err(ControlError::Connect {
                path: shown,
                source,
            });
        }
    };
    let exchange = async {
        let (read, mut write) = tokio::io::split(stream);
        let mut text =
            serde_json::to_string(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
        text.push('\n');
        write
            .write_all(text.as_bytes())
            .await
            .map_err(|source| ControlError::Connect {
                path: shown.clone(),
                source,
            })?;
        let mut line = String::new();
        BufReader::new(read)
            .read_line(&mut line)
            .await
            .map_err(|source| ControlError::Connect {
                path: shown.clone(),
                source,
            })?;
        serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| ControlError::Protocol("no answer within 5 s".into()))?
}
