//! Reading a job's output through `GET /admin/v1/jobs/{id}/output`: a bounded range at
//! a time, and, when following, with a long poll (`wait_ms`) at the end, so bytes show
//! up as the runner reports them and memory stays bounded whatever the job printed.
//! Both streams are followed side by side, each on its own connection.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Client, CtlError, stream_name};
use crate::devserver::{MAX_OUTPUT_READ, OutputPage};
use crate::protocol::OutputStream;

/// How long one poll asks the server to wait for new bytes.
const POLL_WAIT_MS: u64 = 10_000;

/// Which of a job's streams to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    One(OutputStream),
    Both,
}

/// Where the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// stdout's bytes to our stdout, stderr's to our stderr, as they are.
    Terminal,
    /// Each chunk as the API's JSON, one per line, on stdout.
    JsonLines,
    /// Nowhere: only wait for the end.
    Discard,
}

/// Read `streams` of job `id` until what is held is read, or (`follow`) until the job
/// has ended and everything was read.
pub async fn follow(
    client: &Client,
    id: &str,
    streams: Streams,
    follow: bool,
    sink: Sink,
) -> Result<(), CtlError> {
    match streams {
        Streams::One(stream) => follow_one(client, id, stream, follow, sink).await,
        Streams::Both => {
            let (out, err) = tokio::join!(
                follow_one(client, id, OutputStream::Stdout, follow, sink),
                follow_one(client, id, OutputStream::Stderr, follow, sink)
            );
            out.and(err)
        }
    }
}

async fn follow_one(
    client: &Client,
    id: &str,
    stream: OutputStream,
    follow: bool,
    sink: Sink,
) -> Result<(), CtlError> {
    let id_segment: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let mut offset = 0;
    let mut attempt = None;
    loop {
        let wait = if follow { POLL_WAIT_MS } else { 0 };
        let path = format!(
            "/admin/v1/jobs/{id_segment}/output?stream={}&offset={offset}&limit={MAX_OUTPUT_READ}&wait_ms={wait}",
            stream_name(stream)
        );
        let chunk: OutputPage = client.get(&path).await?;
        if attempt.is_some_and(|seen| seen != chunk.attempt) {
            // Re-queued after its runner was lost: the new attempt's output starts over.
            eprintln!(
                "fyn-runner ctl: {id} was started again (attempt {}); its {} follows from the start",
                chunk.attempt,
                stream_name(stream)
            );
            attempt = Some(chunk.attempt);
            offset = 0;
            continue;
        }
        attempt = Some(chunk.attempt);
        if !write_chunk(&chunk, stream, sink)? {
            return Ok(());
        }
        offset = chunk.next_offset;
        let all_read = chunk.next_offset >= chunk.held_bytes;
        if chunk.complete || (!follow && all_read) {
            return Ok(());
        }
    }
}

/// Write one chunk; false when nobody reads any more (`| head` closed the pipe).
fn write_chunk(chunk: &OutputPage, stream: OutputStream, sink: Sink) -> Result<bool, CtlError> {
    let result = match sink {
        Sink::Discard => Ok(()),
        Sink::JsonLines if chunk.data.is_empty() => Ok(()),
        Sink::JsonLines => {
            let line = serde_json::to_string(chunk).unwrap_or_default();
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").and_then(|()| out.flush())
        }
        Sink::Terminal => {
            let bytes = STANDARD
                .decode(&chunk.data)
                .map_err(|e| CtlError::BadAnswer(format!("output is not base64: {e}")))?;
            if bytes.is_empty() {
                return Ok(true);
            }
            match stream {
                OutputStream::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes).and_then(|()| out.flush())
                }
                OutputStream::Stderr => {
                    let mut err = std::io::stderr().lock();
                    err.write_all(&bytes).and_then(|()| err.flush())
                }
            }
        }
    };
    match result {
        // `| head` closed the pipe: what was wanted was printed.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        other => other.map(|()| true).map_err(CtlError::Output),
    }
}
