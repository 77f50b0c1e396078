//! The WebSocket pump: connect (rustls with the ring provider, chosen explicitly),
//! read frames into events, write what the driver hands over, close with a code.
//! It knows frames and close codes, not what the messages mean.
//!
//! Must not import the driver: what a connection reports travels as its own small
//! type ([`LinkReport`]) down whatever channel it was given.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, UnboundedSender};
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
    sink: &mut futures_util::stream::SplitSink<WsStream, Message>,
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
        let (mut sink, mut source) = stream.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer_queued = queued.clone();
        let writer_inputs = inputs.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(WRITE_BATCH);
            while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
                let written = batch.len();
                let closing = batch.iter().any(|m| matches!(m, Message::Close(_)));
                if let Err(e) = write_all(&mut sink, &mut batch).await {
                    let event = Event::SocketFailed {
                        error: format!("write failed: {e}"),
                    };
                    let _ = writer_inputs.send(T::from(LinkReport::Event { conn: id, event }));
                    return;
                }
                let before = writer_queued.fetch_sub(written, Ordering::AcqRel);
                if before > LOW_WATER && before - written <= LOW_WATER {
                    let _ = writer_inputs.send(T::from(LinkReport::BelowLowWater { conn: id }));
                }
                if closing {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let event = loop {
                let Some(frame) = source.next().await else {
                    break Event::SocketClosed {
                        code: None,
                        reason: "connection ended".into(),
                    };
                };
                match frame_to_event(frame) {
                    Some(event @ (Event::SocketClosed { .. } | Event::SocketFailed { .. })) => {
                        break event;
                    }
                    Some(event) => {
                        let _ = inputs.send(T::from(LinkReport::Event { conn: id, event }));
                    }
                    None => {}
                }
            };
            let _ = inputs.send(T::from(LinkReport::Event { conn: id, event }));
        });
        Self {
            id,
            outgoing,
            queued,
        }
    }

    pub fn send_text(&self, text: String) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.outgoing.send(Message::text(text));
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Send a close frame with the reason's code; the reader ends when the peer answers.
    pub fn close(self, reason: CloseReason, text: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: text.to_owned().into(),
        };
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.outgoing.send(Message::Close(Some(frame)));
    }
}

/// One incoming frame as a core event; pings, pongs and raw frames are transport noise.
fn frame_to_event(frame: Result<Message, tungstenite::Error>) -> Option<Event> {
    let bad = |error: FrameError| Event::BadFrame {
        close: error.close_reason(),
        error: error.to_string(),
    };
    match frame {
        Ok(Message::Text(text)) => Some(match decode_server(text.as_str()) {
            Ok(message) => Event::Message(message),
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
