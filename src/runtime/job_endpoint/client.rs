//! The job's side of the endpoint, for `fyn-runner job ...`: connect to the socket
//! `FYN_JOB_SOCKET` names, send one request, read its answer. Blocking: a command line
//! makes one request and exits.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SOCKET_VARIABLE;
use super::wire::{Answer, MAX_LINE_BYTES, Request};

/// How long an answer may take: a write waits until the runner has made it durable.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "{SOCKET_VARIABLE} is not set: this is not a job run by fyn-runner (or its runner gives jobs no endpoint)"
    )]
    NoSocket,
    #[error("cannot reach the runner at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the runner's answer is not understood: {0}")]
    BadAnswer(String),
    #[error("the runner refused: {0}")]
    Refused(String),
}

/// The socket named in the environment.
pub fn socket_from_env() -> Result<PathBuf, ClientError> {
    std::env::var_os(SOCKET_VARIABLE)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .ok_or(ClientError::NoSocket)
}

/// Send `request` to the endpoint at `socket`; the answer if the runner took it.
pub fn ask(socket: &Path, request: &Request) -> Result<Answer, ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(unreachable)?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut reader = BufReader::new(stream.take(MAX_LINE_BYTES as u64 + 1));
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(unreachable)?;
    if answer.is_empty() {
        return Err(ClientError::BadAnswer(
            "the runner closed the connection".into(),
        ));
    }
    let answer: Answer =
        serde_json::from_str(&answer).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
    if answer.ok {
        Ok(answer)
    } else {
        Err(ClientError::Refused(
            answer.error.unwrap_or_else(|| "no reason given".to_owned()),
        ))
    }
}
