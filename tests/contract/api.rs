//! A fake control plane for contract cases. It speaks WebSocket (tokio-tungstenite,
//! the transport) and JSON frames written by hand from `docs/protocol.md`: it never
//! uses `fyn_runner::protocol` or the dev-server, so what the runner is tested against
//! is the document. Every frame the runner sends is checked against the document's
//! tables (`doc::check`) as it arrives.
//!
//! Steps a case scripts: `accept` the runner's next connection; `send` a frame (JSON,
//! raw text, raw bytes, a close); `expect` the runner's next frame of a type;
//! `handshake` through to Active; `expect_close` a close code; `end` to see how the TCP
//! connection ended (the peer's end of stream, or a reset).

use std::time::Duration;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, Utf8Bytes};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::doc::{self, Direction};

/// How long any single step waits before the case fails.
pub const STEP: Duration = Duration::from_secs(20);

pub struct FakeApi {
    listener: TcpListener,
    url: String,
    connections: u32,
}

impl FakeApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        Self {
            listener,
            url,
            connections: 0,
        }
    }

    /// A fake control plane that starts listening only later, at `start_at`'s address:
    /// until then a runner's connection attempts are refused. The address is taken
    /// from a listener bound and dropped here (port 0, then reused).
    pub fn address_not_yet_listening() -> std::net::SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr")
    }

    /// Start listening at `addr` (see `address_not_yet_listening`).
    pub async fn start_at(addr: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the same address");
        Self {
            listener,
            url: format!("ws://{addr}"),
            connections: 0,
        }
    }

    /// The URL to give the runner (`--server`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The runner's next connection, upgraded at `/runner/v1` with the subprotocol
    /// `fyn-runner.v1` selected (§1).
    pub async fn accept(&mut self) -> Conn {
        let (tcp, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("the runner connects in time")
            .expect("accept");
        let ws = tokio_tungstenite::accept_hdr_async(tcp, select_subprotocol)
            .await
            .expect("WebSocket upgrade");
        self.connections += 1;
        Conn::new(ws, self.connections)
    }

    /// Answers the runner's next connection attempt with an HTTP error instead of the
    /// upgrade (an API that is down behind its proxy: 503).
    pub async fn refuse_upgrade(&mut self, status: u16) {
        let (mut tcp, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("the runner connects in time")
            .expect("accept");
        let mut request = vec![0u8; 4096];
        let _ = tcp.read(&mut request).await;
        let answer = format!(
            "HTTP/1.1 {status} Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let _ = tcp.write_all(answer.as_bytes()).await;
        let _ = tcp.shutdown().await;
    }

    /// Asserts that the runner does not connect again within `quiet`.
    pub async fn no_connection_within(&mut self, quiet: Duration) {
        if let Ok(Ok((_, from))) = tokio::time::timeout(quiet, self.listener.accept()).await {
            panic!("the runner connected again (from {from})");
        }
    }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn select_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    assert_eq!(request.uri().path(), "/runner/v1", "§1: the runner path");
    let offered = request
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        offered.split(',').any(|p| p.trim() == "fyn-runner.v1"),
        "§1: the runner offers fyn-runner.v1, got {offered:?}"
    );
    response.headers_mut().insert(
        "sec-websocket-protocol",
        "fyn-runner.v1".parse().expect("header value"),
    );
    Ok(response)
}

/// What the runner did next.
#[derive(Debug)]
pub enum Got {
    /// A JSON text frame that obeys the document (checked before it is returned).
    Frame(Value),
    /// A Close frame: its code (none when the frame had no body) and reason.
    Close(Option<u16>, String),
    /// The connection ended without a Close frame; what the transport said.
    Ended(String),
}

/// How the runner's TCP connection ended after the closing handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum TcpEnd {
    /// An orderly end of stream (FIN) after everything it sent was read.
    Eof,
    /// A reset: anything still in flight to us (a Close frame) may have been lost.
    Reset,
    /// Still open after the wait.
    Open,
}

type ServerWs = WebSocketStream<TcpStream>;

/// One runner connection, from the server's side. Frames go out through a writer task,
/// so a case can send a frame larger than the socket buffers while it reads.
pub struct Conn {
    pub number: u32,
    out: mpsc::UnboundedSender<Message>,
    writer: JoinHandle<(SplitSink<ServerWs, Message>, Option<tungstenite::Error>)>,
    incoming: SplitStream<ServerWs>,
    /// Every frame the runner sent on this connection, in order.
    pub seen: Vec<Value>,
    nonce: String,
}

impl Conn {
    fn new(ws: ServerWs, number: u32) -> Self {
        let (mut sink, incoming) = ws.split();
        let (out, mut queue) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if let Err(error) = sink.send(message).await {
                    return (sink, Some(error));
                }
            }
            (sink, None)
        });
        Self {
            number,
            out,
            writer,
            incoming,
            seen: Vec::new(),
            nonce: format!("nonce-{number}-{}", std::process::id()),
        }
    }

    // ---- sending ----

    /// A JSON frame, as text.
    pub fn send(&self, frame: Value) {
        self.send_text(&frame.to_string());
    }

    pub fn send_text(&self, text: &str) {
        let _ = self.out.send(Message::text(text.to_owned()));
    }

    /// A text frame whose payload is `bytes` as they are, valid UTF-8 or not.
    pub fn send_text_bytes(&self, bytes: &[u8]) {
        let frame = Frame::message(bytes.to_vec(), OpCode::Data(Data::Text), true);
        let _ = self.out.send(Message::Frame(frame));
    }

    pub fn send_message(&self, message: Message) {
        let _ = self.out.send(message);
    }

    /// A Close frame with this code (the server starts the closing handshake).
    pub fn send_close(&self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(reason.to_owned()),
        };
        let _ = self.out.send(Message::Close(Some(frame)));
    }

    // ---- receiving ----

    /// The runner's next frame, close or end; pings and pongs are skipped. A text frame
    /// that breaks the document fails the case here.
    pub async fn recv(&mut self) -> Got {
        loop {
            let next = tokio::time::timeout(STEP, self.incoming.next())
                .await
                .unwrap_or_else(|_| panic!("connection {}: the runner said nothing", self.number));
            let message = match next {
                None => return Got::Ended("end of stream".into()),
                Some(Err(e)) => return Got::Ended(e.to_string()),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Text(text) => {
                    doc::check_text(Direction::ToServer, text.as_str()).unwrap_or_else(|e| {
                        panic!("the runner sent a frame the document refuses ({e}): {text}")
                    });
                    let value: Value = serde_json::from_str(text.as_str()).expect("checked");
                    self.seen.push(value.clone());
                    return Got::Frame(value);
                }
                Message::Close(frame) => {
                    return Got::Close(
                        frame.as_ref().map(|f| u16::from(f.code)),
                        frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    );
                }
                Message::Binary(_) => panic!("§2: the runner sent a binary frame"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// The runner's next frame, which must be of type `kind`; heartbeats before it are
    /// answered (a live session) and skipped.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            match self.recv().await {
                Got::Frame(frame) if frame["type"] == kind => return frame,
                Got::Frame(frame) if frame["type"] == "heartbeat" => {
                    self.send(json!({"type": "heartbeat_ack", "seq": frame["seq"]}));
                }
                other => panic!("connection {}: expected {kind}, got {other:?}", self.number),
            }
        }
    }

    /// Frames until one of each of `kinds` has arrived (heartbeats answered, events not
    /// acknowledged); returns them all, in order.
    pub async fn expect_all(&mut self, kinds: &[&str]) -> Vec<Value> {
        let mut got = Vec::new();
        while !kinds
            .iter()
            .all(|k| got.iter().any(|f: &Value| f["type"] == *k))
        {
            match self.recv().await {
                Got::Frame(frame) if frame["type"] == "heartbeat" => {
                    self.send(json!({"type": "heartbeat_ack", "seq": frame["seq"]}));
                }
                Got::Frame(frame) => got.push(frame),
                other => panic!(
                    "connection {}: expected {kinds:?}, got {other:?} after {got:?}",
                    self.number
                ),
            }
        }
        got
    }

    /// Read on until the runner closes; frames before the close are kept in `seen`.
    /// Returns the close code and asserts it is `code`.
    pub async fn expect_close(&mut self, code: u16) -> String {
        loop {
            match self.recv().await {
                Got::Frame(_) => {}
                Got::Close(got, reason) => {
                    assert_eq!(
                        got,
                        Some(code),
                        "connection {}: close code (reason {reason:?})",
                        self.number
                    );
                    return reason;
                }
                Got::Ended(how) => panic!(
                    "connection {}: ended without a Close frame ({how}); expected {code}",
                    self.number
                ),
            }
        }
    }

    /// After the closing handshake: how the runner's TCP connection ends (read and
    /// discard until the end of stream, a reset, or `within`).
    pub async fn end(self, within: Duration) -> TcpEnd {
        drop(self.out);
        let (sink, failed) = self.writer.await.expect("writer task");
        // A reset can surface on a write still in progress (a large frame) rather than
        // on the next read.
        if let Some(tungstenite::Error::Io(e)) = &failed
            && matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        {
            return TcpEnd::Reset;
        }
        let mut ws = self.incoming.reunite(sink).expect("halves of one stream");
        // Answer the runner's close if it started one; then, as the server, end our side
        // of the TCP stream first (RFC 6455 §7.1.1) and read the bare socket to its end.
        let _ = tokio::time::timeout(within, ws.flush()).await;
        let raw = ws.get_mut();
        let _ = raw.shutdown().await;
        let mut scratch = vec![0u8; 64 * 1024];
        let read_to_end = async {
            loop {
                match raw.read(&mut scratch).await {
                    Ok(0) => return TcpEnd::Eof,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        return TcpEnd::Reset;
                    }
                    Err(e) => panic!("reading the runner's connection: {e}"),
                }
            }
        };
        tokio::time::timeout(within, read_to_end)
            .await
            .unwrap_or(TcpEnd::Open)
    }

    // ---- scripted steps ----

    /// §4.2 step 1: `hello` with a fresh nonce.
    pub fn hello(&self) {
        self.send(json!({"type": "hello", "protocol": 1, "nonce": self.nonce}));
    }

    /// Expects `authenticate` and checks its signature (§8) against `key`.
    pub async fn expect_authenticate(&mut self, runner_id: &str, key: &VerifyingKey) -> Value {
        let frame = self.expect("authenticate").await;
        assert_eq!(frame["runner_id"], runner_id);
        let signature = frame["signature"].as_str().expect("string");
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, signature)
            .expect("§8: standard base64");
        let signature = Signature::from_slice(&bytes).expect("§8: 64 bytes");
        let message = format!("fyn-runner-auth:v1:{}:{runner_id}", self.nonce);
        key.verify(message.as_bytes(), &signature)
            .expect("§8: the signature verifies");
        frame
    }

    /// From `hello` to `ready_ack` (§4.2), answering whatever the runner sends on the
    /// way: events are acknowledged, `startup` and the hardware messages answered.
    /// Returns `authenticate` and every frame until `ready`.
    pub async fn handshake(&mut self, runner: &crate::runner::Runner, script: &Handshake) -> Value {
        self.hello();
        let authenticate = self
            .expect_authenticate(runner.runner_id(), &runner.public_key())
            .await;
        self.send(json!({
            "type": "authenticated",
            "runner_id": runner.runner_id(),
            "last_event_index": script.last_event_index,
            "session": script.session,
            "hardware_known": script.hardware_known,
        }));
        loop {
            let Got::Frame(frame) = self.recv().await else {
                panic!("connection {}: the handshake ended", self.number);
            };
            match frame["type"].as_str().unwrap_or_default() {
                "event" => {
                    if script.ack_events {
                        self.send(json!({"type": "events_ack", "up_to": frame["index"]}));
                    }
                }
                "startup" => self.send(json!({"type": "startup_ack"})),
                "hardware_full" | "hardware_changes" | "hardware_unchanged" => {
                    self.send(json!({"type": "hardware_confirmed"}));
                }
                "ready" => {
                    self.send(json!({"type": "ready_ack"}));
                    return authenticate;
                }
                other => panic!("connection {}: {other} during the handshake", self.number),
            }
        }
    }
}

/// What the server says in `authenticated`, and how it treats events during the
/// handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub last_event_index: Value,
    pub session: Value,
    pub hardware_known: bool,
    pub ack_events: bool,
}

impl Default for Handshake {
    fn default() -> Self {
        Self {
            last_event_index: json!(0),
            // Short enough for tests, valid by §7.
            session: json!({"heartbeat_interval_ms": 2000, "ack_timeout_ms": 1500,
                            "runner_lost_threshold_ms": 60000}),
            hardware_known: false,
            ack_events: true,
        }
    }
}
