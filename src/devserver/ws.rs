//! The runner endpoint's socket: the HTTP upgrade (done by hand on hyper, so the
//! crate carries one tungstenite), and the pump that feeds frames to `session` and
//! writes what the session queues, closing with the code each failure calls for.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use super::hub::{Hub, Outgoing};
use super::server::{AppState, error_response, wait_shutdown};
use super::session::{self, Conn, Phase};
use super::util::random_hex;
use crate::protocol::{
    CloseReason, FrameError, MAX_FRAME_BYTES, PROTOCOL_VERSION, SUBPROTOCOL, ServerMessage,
    decode_runner, encode,
};

/// How long a closing connection keeps reading (and discarding) what the peer still
/// sends, so unread data does not make the kernel reset the socket before the peer
/// has read our close frame.
const LINGER: Duration = Duration::from_secs(2);
/// The same during shutdown, which should not wait on slow peers.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(300);
/// The most a lingering close reads before it gives up: an oversized frame's rest.
const LINGER_BYTES: usize = 4 * MAX_FRAME_BYTES;
/// How long writing the close frame may take.
const CLOSE_WRITE: Duration = Duration::from_secs(2);
/// The longest close reason a close frame carries (RFC 6455: 125 bytes of payload).
const MAX_CLOSE_REASON: usize = 123;

/// `GET /runner/v1`: check the upgrade request, answer 101, and run the session on
/// the upgraded connection.
pub(crate) async fn runner_endpoint(State(app): State<AppState>, mut request: Request) -> Response {
    let key = match check_upgrade(request.method(), request.headers()) {
        Ok(key) => key,
        Err(problem) => return error_response(StatusCode::BAD_REQUEST, problem),
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return error_response(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key");
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        // The guard keeps `DevServer::shutdown` waiting until this session has closed.
        let _guard = app.guard;
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws =
                    WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
                pump(app.hub, ws, app.shutdown).await;
            }
            Err(error) => tracing::warn!(%error, "WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    response.into_response()
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// The key of a valid upgrade request that offers our subprotocol.
fn check_upgrade<'a>(method: &Method, headers: &'a HeaderMap) -> Result<&'a str, &'static str> {
    if method != Method::GET {
        return Err("the runner endpoint takes a GET WebSocket upgrade");
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return Err("expected a WebSocket upgrade (Connection: upgrade, Upgrade: websocket)");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("Sec-WebSocket-Version must be 13");
    }
    if !header_has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        return Err("the subprotocol fyn-runner.v1 must be offered");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .ok_or("Sec-WebSocket-Key is missing")
}

/// Whether a comma-separated header (any of its occurrences) lists `token`.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// How a session ended, which decides how the socket is closed.
enum Ending {
    /// We close with this code and reason.
    Close(CloseReason, String),
    /// The server is shutting down.
    Shutdown,
    /// The peer sent a close frame; answer it.
    PeerClosed,
    /// The socket is gone; nothing to say.
    Gone,
}

async fn pump<S>(hub: Arc<Hub>, mut ws: WebSocketStream<S>, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let nonce = match random_hex(16) {
        Ok(nonce) => nonce,
        Err(error) => {
            let text = format!("no randomness for a nonce: {error}");
            tracing::error!(%text);
            close(&mut ws, CloseReason::Internal, &text, LINGER).await;
            return;
        }
    };
    let hello = ServerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        nonce: nonce.clone(),
    };
    let mut conn = Conn::new(hub.new_session_id(), nonce, tx);
    let _ = conn.tx.send(Outgoing::Message(hello));
    let params = hub.params();
    let idle = Duration::from_millis(params.heartbeat_interval_ms + params.ack_timeout_ms);
    let send_limit = Duration::from_millis(params.ack_timeout_ms);
    let mut deadline = Instant::now() + idle;
    // The handshake must end within this however busy the peer keeps the socket.
    let handshake_deadline = Instant::now() + hub.handshake_timeout();
    let ending = loop {
        let handshaking = matches!(
            conn.phase,
            Phase::AwaitFirst | Phase::AwaitRegister { .. } | Phase::AwaitAuthenticate
        );
        tokio::select! {
            incoming = ws.next() => {
                // Liveness is the protocol's own traffic: WebSocket pings and pongs
                // (which anyone can send) do not keep a connection open.
                if matches!(incoming, Some(Ok(Message::Text(_)))) {
                    deadline = Instant::now() + idle;
                }
                if let Some(ending) = on_frame(&hub, &mut conn, incoming) {
                    break ending;
                }
            }
            Some(outgoing) = rx.recv() => match outgoing {
                Outgoing::Message(message) => {
                    let text = encode(&message);
                    if text.len() > MAX_FRAME_BYTES {
                        // Commands are checked long before this; nothing is ever sent
                        // that the peer must refuse.
                        tracing::error!(session = conn.session, size = text.len(),
                            "not sending a frame over the protocol's size limit");
                        continue;
                    }
                    // A peer that stops reading must not pin this task (and shutdown).
                    let sent = timeout(send_limit, ws.send(Message::text(text))).await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "send failed");
                            break Ending::Gone;
                        }
                        Err(_) => {
                            tracing::warn!(session = conn.session, "peer stopped reading; dropping it");
                            break Ending::Gone;
                        }
                    }
                }
                Outgoing::Close { reason, text } => break Ending::Close(reason, text),
            },
            () = wait_shutdown(&mut shutdown) => break Ending::Shutdown,
            () = sleep_until(deadline) => {
                let text = "nothing received within heartbeat interval + ack timeout";
                break Ending::Close(CloseReason::AckTimeout, text.to_owned());
            }
            () = sleep_until(handshake_deadline), if handshaking => {
                let text = "not authenticated within the handshake timeout";
                break Ending::Close(CloseReason::AckTimeout, text.to_owned());
            }
        }
    };
    session::closed(&hub, &conn);
    match ending {
        Ending::Close(reason, text) => {
            log_close(&conn, reason, &text);
            close(&mut ws, reason, &text, LINGER).await;
        }
        Ending::Shutdown => {
            let text = "server shutting down";
            close(&mut ws, CloseReason::Normal, text, SHUTDOWN_LINGER).await;
        }
        Ending::PeerClosed => {
            // Sends tungstenite's queued reply to the peer's close frame.
            let _ = timeout(CLOSE_WRITE, ws.close(None)).await;
        }
        Ending::Gone => {}
    }
}

/// One read result: `Some` when the session must end.
fn on_frame(
    hub: &Hub,
    conn: &mut Conn,
    incoming: Option<Result<Message, tungstenite::Error>>,
) -> Option<Ending> {
    let text = match incoming? {
        Ok(Message::Text(text)) => text,
        Ok(Message::Binary(_)) => return Some(frame_error(&FrameError::Binary)),
        Ok(Message::Close(_)) => return Some(Ending::PeerClosed),
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => return None,
        Err(tungstenite::Error::Capacity(error)) => {
            let size = match error {
                tungstenite::error::CapacityError::MessageTooLong { size, .. } => size,
                tungstenite::error::CapacityError::TooManyHeaders => 0,
            };
            let too_large = FrameError::TooLarge {
                size,
                limit: MAX_FRAME_BYTES,
            };
            return Some(frame_error(&too_large));
        }
        Err(tungstenite::Error::Utf8(detail)) => {
            return Some(frame_error(&FrameError::NotJson(format!(
                "invalid UTF-8: {detail}"
            ))));
        }
        Err(error) => {
            tracing::debug!(session = conn.session, %error, "runner socket failed");
            return Some(Ending::Gone);
        }
    };
    let message = match decode_runner(text.as_str()) {
        Ok(message) => message,
        Err(error) => return Some(frame_error(&error)),
    };
    match session::handle(hub, conn, message) {
        Ok(()) => None,
        Err(error) => Some(Ending::Close(error.close_reason(), error.to_string())),
    }
}

fn frame_error(error: &FrameError) -> Ending {
    Ending::Close(error.close_reason(), error.to_string())
}

fn log_close(conn: &Conn, reason: CloseReason, text: &str) {
    let runner_id = conn.runner_id().unwrap_or("-");
    match reason {
        CloseReason::Normal => {
            tracing::info!(
                runner_id,
                session = conn.session,
                code = reason.code(),
                text,
                "closing"
            );
        }
        _ => tracing::warn!(
            runner_id,
            session = conn.session,
            code = reason.code(),
            reason = reason.name(),
            text,
            "closing the runner connection"
        ),
    }
}

/// Send a close frame, then linger: read and discard until the peer closes, a time
/// limit or a byte limit, so our close frame reaches the peer intact.
async fn close<S>(ws: &mut WebSocketStream<S>, reason: CloseReason, text: &str, linger: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: truncate(text, MAX_CLOSE_REASON).into(),
    };
    if timeout(CLOSE_WRITE, ws.close(Some(frame))).await.is_err() {
        return;
    }
    if reason == CloseReason::TooLarge {
        // Read below tungstenite: after an oversized frame its reader would try to
        // buffer the whole frame, which is exactly what the limit is there to prevent.
        let _ = timeout(linger, discard(ws.get_mut())).await;
    } else {
        // Until the peer's close reply, which ends the close handshake.
        let _ = timeout(linger, async {
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
            }
        })
        .await;
    }
}

async fn discard<R: AsyncRead + Unpin>(io: &mut R) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    while total < LINGER_BYTES {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_headers(protocol: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        if let Ok(value) = HeaderValue::from_str(protocol) {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        headers
    }

    #[test]
    fn upgrade_needs_the_subprotocol() {
        let ok = upgrade_headers("other, fyn-runner.v1");
        assert_eq!(
            check_upgrade(&Method::GET, &ok),
            Ok("dGhlIHNhbXBsZSBub25jZQ==")
        );
        let missing = upgrade_headers("other");
        assert!(check_upgrade(&Method::GET, &missing).is_err());
        assert!(check_upgrade(&Method::POST, &ok).is_err());
    }

    #[test]
    fn close_reasons_are_cut_on_a_char_boundary() {
        let text = "é".repeat(100);
        let cut = truncate(&text, MAX_CLOSE_REASON);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
