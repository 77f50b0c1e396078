//! The WebSocket pump: connect (rustls with the ring provider, chosen explicitly),
//! read frames into events, write what the driver hands over, close with a code, and
//! finish every close as RFC 6455 §5.5.1 and §7 ask: the peer's `Close` is echoed, ours
//! is followed by reading until the peer's end (bounded by `LINGER`), so neither side's
//! `Close` is lost to a reset. It knows frames and close codes, not what the messages
//! mean.
//!
//! Must not import the driver: what a connection reports travels as its own small
//! type ([`LinkReport`]) down whatever channel it was given.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::core::Event;
use crate::protocol::{CloseReason, FrameError, MAX_FRAME_BYTES, SUBPROTOCOL, decode_server};

/// What a live connection reports, tagged with its id so the driver can drop the
/// reports of a connection that is no longer current.
// An event is a few hundred bytes (a `start_job` carries its spec) and nearly every
// report is one; boxing it would cost an allocation per frame to save bytes on the
// rare low-water report.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum LinkReport {
    /// A frame, the close or a failure, as the core event it is.
    Event { conn: u64, event: Event },
    /// The writer's queue fell below [`LOW_WATER`]: the driver may send again.
    BelowLowWater { conn: u64 },
}

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read --ca-file {path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("--ca-file {path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("--ca-file {path}: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client TLS configuration: the public web roots, or only the operator's CA.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => add_ca_file(&mut roots, path)?,
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), TlsSetupError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::ReadCa {
        path: shown.clone(),
        source,
    })?;
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| TlsSetupError::BadCertificate {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsSetupError::BadCertificate {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(TlsSetupError::NoCertificate { path: shown });
    }
    Ok(())
}

/// Open one connection, offering the protocol's subprotocol, within `timeout`.
pub async fn connect(
    url: &Url,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<WsStream, String> {
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let attempt = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(Connector::Rustls(tls)),
    );
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok((stream, _response))) => Ok(stream),
        Ok(Err(e)) => Err(describe_connect_error(&e)),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

fn describe_connect_error(error: &tungstenite::Error) -> String {
    match error {
        tungstenite::Error::Tls(tls) => format!("TLS handshake failed: {tls}"),
        tungstenite::Error::Io(io) => {
            // rustls reports certificate problems as I/O errors carrying a rustls::Error.
            match io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => format!("TLS handshake failed: {tls}"),
                None => format!("connection failed: {io}"),
            }
        }
        other => format!("connection failed: {other}"),
    }
}

/// A live connection: frames go out through the writer task, come in as events tagged
/// with this connection's id so late events of a dead connection can be told apart.
pub struct Connection {
    pub id: u64,
    outgoing: UnboundedSender<Message>,
    /// Frames handed to the writer and not yet written: the driver's measure of how
    /// far the API is behind, and the brake on job output when it is.
    queued: Arc<AtomicUsize>,
    /// The reader, which ends once the connection is over on the wire too.
    reader: tokio::task::JoinHandle<()>,
}

/// Above this many queued frames the driver stops taking job output and pauses a
/// resend; below `LOW_WATER` it resumes. 64 frames of at most 64 KiB of output each
/// (base64: ~88 KiB) bound the queue to a few MiB however slow the API is.
pub const HIGH_WATER: usize = 64;
pub const LOW_WATER: usize = 16;

/// Frames the writer takes from its queue at once and sends with one flush: what one
/// batch of effects queues (an event, a command ack, the next event) leaves in one
/// write instead of one each. Bounded so a resend does not buffer the whole queue.
const WRITE_BATCH: usize = 16;

/// Every frame of `batch` (emptied), then one flush; nothing after a `Close`.
async fn write_all(
    sink: &mut SplitSink<WsStream, Message>,
    batch: &mut Vec<Message>,
) -> Result<(), tungstenite::Error> {
    for message in batch.drain(..) {
        let closing = matches!(message, Message::Close(_));
        sink.feed(message).await?;
        if closing {
            break;
        }
    }
    sink.flush().await
}

impl Connection {
    pub fn spawn<T: From<LinkReport> + Send + 'static>(
        id: u64,
        stream: WsStream,
        inputs: UnboundedSender<T>,
    ) -> Self {
        let (sink, source) = stream.split();
        let (outgoing, queue) = mpsc::unbounded_channel::<Message>();
        let (sink_back, sink_returned) = oneshot::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_frames(
            id,
            sink,
            queue,
            queued.clone(),
            inputs.clone(),
            sink_back,
        ));
        let reader = tokio::spawn(async move {
            let stream = read_frames(id, source, inputs, sink_returned).await;
            if let Some((stream, until)) = stream {
                finish_close(stream, until).await;
            }
        });
        Self {
            id,
            outgoing,
            queued,
            reader,
        }
    }

    pub fn send_text(&self, text: String) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.outgoing.send(Message::text(text));
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Send a close frame with the reason's code; the reader then finishes the closing
    /// handshake (the peer's answer or end of stream, within `LINGER`) on its own. The
    /// handle ends when it has: a process about to exit waits for it (bounded), so the
    /// `Close` is not dropped with the runtime.
    pub fn close(self, reason: CloseReason, text: &str) -> tokio::task::JoinHandle<()> {
        let frame = CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: text.to_owned().into(),
        };
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.outgoing.send(Message::Close(Some(frame)));
        self.reader
    }
}

/// The writer: frames from the driver's queue, in batches, until a `Close` is written,
/// a write fails or the driver lets go of the connection. Then the sink goes back to
/// the reader, which finishes the closing handshake.
async fn write_frames<T: From<LinkReport>>(
    id: u64,
    mut sink: SplitSink<WsStream, Message>,
    mut queue: mpsc::UnboundedReceiver<Message>,
    queued: Arc<AtomicUsize>,
    inputs: UnboundedSender<T>,
    sink_back: oneshot::Sender<SplitSink<WsStream, Message>>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let written = batch.len();
        let closing = batch.iter().any(|m| matches!(m, Message::Close(_)));
        if let Err(e) = write_all(&mut sink, &mut batch).await {
            let event = Event::SocketFailed {
                error: format!("write failed: {e}"),
            };
            let _ = inputs.send(T::from(LinkReport::Event { conn: id, event }));
            break;
        }
        let before = queued.fetch_sub(written, Ordering::AcqRel);
        if before > LOW_WATER && before - written <= LOW_WATER {
            let _ = inputs.send(T::from(LinkReport::BelowLowWater { conn: id }));
        }
        if closing {
            break;
        }
    }
    let _ = sink_back.send(sink);
}

/// The reader: frames as events until the connection is over for the driver, then on
/// until it is over on the wire too. It keeps reading after the peer's `Close` (each
/// read flushes the echo tungstenite owes the peer, RFC 6455 §5.5.1) and after our own
/// (so the peer's answer is read, not reset), for at most `LINGER` from the moment the
/// close began. Returns the reunited stream and the deadline when a close is still to
/// be finished: the writer gave its half back, and the WebSocket layer stopped short of
/// the peer's end of the stream.
async fn read_frames<T: From<LinkReport>>(
    id: u64,
    mut source: SplitStream<WsStream>,
    inputs: UnboundedSender<T>,
    mut sink_returned: oneshot::Receiver<SplitSink<WsStream, Message>>,
) -> Option<(WsStream, Instant)> {
    let mut sink = None;
    let mut sink_pending = true;
    let mut reported_end = false;
    let mut source_done = false;
    let mut deadline: Option<Instant> = None;
    let report_end = |reported: &mut bool, event: Event| {
        if !std::mem::replace(reported, true) {
            let _ = inputs.send(T::from(LinkReport::Event { conn: id, event }));
        }
    };
    while !source_done || sink_pending {
        let until = deadline.unwrap_or_else(Instant::now);
        tokio::select! {
            frame = source.next(), if !source_done => {
                let event = match frame {
                    None => {
                        source_done = true;
                        Some(Event::SocketClosed {
                            code: None,
                            reason: "connection ended".into(),
                        })
                    }
                    Some(frame) => frame_to_event(frame),
                };
                match event {
                    Some(event @ (Event::SocketClosed { .. } | Event::SocketFailed { .. })) => {
                        report_end(&mut reported_end, event);
                        deadline.get_or_insert_with(|| Instant::now() + LINGER);
                    }
                    Some(event) => {
                        let _ = inputs.send(T::from(LinkReport::Event { conn: id, event }));
                    }
                    None => {}
                }
            }
            returned = &mut sink_returned, if sink_pending => {
                sink_pending = false;
                sink = returned.ok();
                deadline.get_or_insert_with(|| Instant::now() + LINGER);
            }
            () = tokio::time::sleep_until(until), if deadline.is_some() => break,
        }
    }
    let stream = source.reunite(sink?).ok()?;
    Some((stream, deadline.unwrap_or_else(Instant::now)))
}

/// End a connection whose WebSocket layer stopped before the peer's end of the stream
/// (a frame over the limit, invalid UTF-8): send our `Close` if none went out, then
/// read and discard whatever the peer still sends until it closes, by `until`. A socket
/// closed with unread bytes is reset, and a reset can destroy our `Close` frame before
/// the peer reads it.
async fn finish_close(mut stream: WsStream, until: Instant) {
    let finish = async {
        let _ = stream.close(None).await;
        let raw = stream.get_mut();
        let mut scratch = vec![0u8; 16 * 1024];
        while matches!(raw.read(&mut scratch).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout_at(until, finish).await;
}

/// How long a closing connection is kept for the closing handshake: the peer reads our
/// `Close` and answers, or we read its end of the stream. Bounded, so a peer that never
/// answers costs a socket for this long and no more.
pub const LINGER: Duration = Duration::from_secs(2);

/// One incoming frame as a core event; pings, pongs and raw frames are transport noise.
fn frame_to_event(frame: Result<Message, tungstenite::Error>) -> Option<Event> {
    let bad = |error: FrameError| Event::BadFrame {
        close: error.close_reason(),
        error: error.to_string(),
    };
    match frame {
        Ok(Message::Text(text)) => Some(match decode_server(text.as_str()) {
            Ok(message) => Event::Message(message),
            // A command under a readable index: answered under it, not closed on.
            Err(FrameError::UnreadableCommand { index, detail }) => Event::UnreadableCommand {
                index,
                error: detail,
            },
            Err(error) => bad(error),
        }),
        Ok(Message::Binary(_)) => Some(bad(FrameError::Binary)),
        Ok(Message::Close(frame)) => Some(Event::SocketClosed {
            code: frame.as_ref().map(|f| u16::from(f.code)),
            reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
        }),
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => None,
        Err(tungstenite::Error::Capacity(e)) => Some(Event::BadFrame {
            close: CloseReason::TooLarge,
            error: format!("frame over the {MAX_FRAME_BYTES}-byte limit: {e}"),
        }),
        Err(tungstenite::Error::Utf8(e)) => Some(Event::BadFrame {
            close: CloseReason::BadFrame,
            error: format!("text frame is not valid UTF-8: {e}"),
        }),
        Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
            Some(Event::SocketClosed {
                code: None,
                reason: "connection closed".into(),
            })
        }
        Err(e) => Some(Event::SocketFailed {
            error: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair over loopback: the runner's side as the driver gets it, and
    /// the server's side.
    async fn pair() -> (WsStream, WebSocketStream<TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            tokio_tungstenite::accept_async(tcp).await.expect("upgrade")
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (client, _) =
            tokio_tungstenite::client_async(format!("ws://{addr}/"), MaybeTlsStream::Plain(tcp))
                .await
                .expect("handshake");
        (client, server.await.expect("server task"))
    }

    #[tokio::test]
    async fn a_close_ends_once_it_is_answered_and_no_later() {
        let (client, mut server) = pair().await;
        let (inputs, _events) = mpsc::unbounded_channel::<LinkReport>();
        let connection = Connection::spawn(1, client, inputs);
        let closed = connection.close(CloseReason::Normal, "bye");
        // The server reads the Close, answers it, and ends the stream.
        let closing = tokio::spawn(async move {
            let mut code = None;
            while let Some(Ok(message)) = server.next().await {
                if let Message::Close(frame) = message {
                    code = frame.map(|f| u16::from(f.code));
                }
            }
            code
        });
        let started = std::time::Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(30), closed).await;
        assert!(
            started.elapsed() < LINGER + Duration::from_secs(1),
            "closed in {:?}",
            started.elapsed()
        );
        // Closed means the runner's side is gone: the server sees its end of stream.
        let code = tokio::time::timeout(Duration::from_millis(500), closing)
            .await
            .expect("the runner's side was closed when the handle ended");
        assert_eq!(code.expect("server task"), Some(1000));
    }

    #[tokio::test]
    async fn a_text_frame_that_is_not_utf8_is_a_bad_frame_with_1007() {
        let (client, server) = pair().await;
        let (inputs, mut events) = mpsc::unbounded_channel::<LinkReport>();
        let _connection = Connection::spawn(1, client, inputs);
        let (mut sink, _source) = server.split();
        let frame = tungstenite::protocol::frame::Frame::message(
            vec![b'{', 0xff, b'}'],
            tungstenite::protocol::frame::coding::OpCode::Data(
                tungstenite::protocol::frame::coding::Data::Text,
            ),
            true,
        );
        sink.send(Message::Frame(frame)).await.expect("send");
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("in time");
        match event {
            Some(LinkReport::Event {
                event: Event::BadFrame { close, error },
                ..
            }) => {
                assert_eq!(close, CloseReason::BadFrame);
                assert!(error.contains("not valid UTF-8"), "{error}");
            }
            _ => panic!("expected a bad frame"),
        }
    }
}
