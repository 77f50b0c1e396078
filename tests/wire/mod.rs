//! A hand-driven runner connection (the protocol spoken frame by frame from the
//! document, not through the runner's runtime) and a minimal HTTP client for the admin
//! API: what the dev-server's end-to-end tests drive it with.

#![allow(dead_code)] // each test crate uses the helpers it needs
#![allow(clippy::disallowed_methods)] // a test client draws its own keys and keeps its own time

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use fyn_runner::devserver::{DevServer, DevServerConfig, JobInfo, JobRequest};
use fyn_runner::protocol::{
    Command, JobRef, OutputStream, PROTOCOL_VERSION, RunnerEvent, RunnerMessage, SUBPROTOCOL,
    ServerMessage, auth_message, decode_server, encode,
};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- helpers

pub async fn start() -> DevServer {
    start_with(DevServerConfig::ephemeral()).await
}

pub async fn start_with(config: DevServerConfig) -> DevServer {
    DevServer::start(config)
        .await
        .expect("the dev-server starts")
}

/// A runner's identity: its key pair and the ID the server gave it.
pub struct Identity {
    pub key: SigningKey,
    pub runner_id: String,
}

pub fn new_key() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("randomness");
    SigningKey::from_bytes(&seed)
}

pub fn public_key(key: &SigningKey) -> String {
    STANDARD.encode(key.verifying_key().to_bytes())
}

impl Identity {
    pub fn authenticate(&self, nonce: &str, last_command_index: u64) -> RunnerMessage {
        let signature = self.key.sign(&auth_message(nonce, &self.runner_id));
        RunnerMessage::Authenticate {
            runner_id: self.runner_id.clone(),
            signature: STANDARD.encode(signature.to_bytes()),
            name: "test-runner".to_owned(),
            version: "0.1.0".to_owned(),
            slots: 2,
            last_command_index,
        }
    }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A hand-driven runner connection.
pub struct Client {
    pub ws: Socket,
    pub nonce: String,
}

impl Client {
    pub async fn connect(server: &DevServer) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(runner_request(server))
            .await
            .expect("the WebSocket upgrade succeeds");
        Client::after_upgrade(ws).await
    }

    pub async fn after_upgrade(ws: Socket) -> Client {
        let mut client = Client {
            ws,
            nonce: String::new(),
        };
        match client.recv().await {
            ServerMessage::Hello { protocol, nonce } => {
                assert_eq!(protocol, PROTOCOL_VERSION);
                assert!(nonce.len() >= 16, "nonce {nonce:?} is too short");
                client.nonce = nonce;
            }
            other => panic!("expected hello, got {other:?}"),
        }
        client
    }

    pub async fn send(&mut self, message: &RunnerMessage) {
        self.send_text(encode(message)).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("the frame is sent");
    }

    pub async fn recv(&mut self) -> ServerMessage {
        loop {
            let frame = timeout(WAIT, self.ws.next())
                .await
                .expect("a frame arrives in time")
                .expect("the socket is open")
                .expect("the socket works");
            match frame {
                Message::Text(text) => {
                    return decode_server(text.as_str()).expect("the server's frame decodes");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Nothing arrives within `quiet`.
    pub async fn recv_nothing(&mut self, quiet: Duration) {
        if let Ok(frame) = timeout(quiet, self.ws.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// The close code the server closes with.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            let frame = timeout(WAIT, self.ws.next())
                .await
                .expect("the close arrives in time");
            match frame {
                Some(Ok(Message::Close(Some(close)))) => return close.code.into(),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected a close frame, got {other:?}"),
                Some(Err(error)) => panic!("expected a close frame, got error {error}"),
                None => panic!("the socket ended without a close frame"),
            }
        }
    }
}

pub fn runner_request(server: &DevServer) -> tungstenite::handshake::client::Request {
    let mut request = server
        .runner_url()
        .into_client_request()
        .expect("the runner URL is valid");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    request
}

/// Token, register, authenticate: a new runner with an authenticated session.
pub async fn register(server: &DevServer) -> (Identity, Client) {
    let token = server.mint_token().expect("a token is minted");
    let mut client = Client::connect(server).await;
    client.send(&RunnerMessage::ValidateToken { token }).await;
    assert_eq!(client.recv().await, ServerMessage::TokenAccepted {});
    let key = new_key();
    client
        .send(&RunnerMessage::Register {
            public_key: public_key(&key),
            name: "test-runner".to_owned(),
            version: "0.1.0".to_owned(),
            slots: 2,
        })
        .await;
    let runner_id = match client.recv().await {
        ServerMessage::Registered { runner_id } => runner_id,
        other => panic!("expected registered, got {other:?}"),
    };
    let identity = Identity { key, runner_id };
    let auth = identity.authenticate(&client.nonce, 0);
    client.send(&auth).await;
    match client.recv().await {
        ServerMessage::Authenticated { runner_id, .. } => assert_eq!(runner_id, identity.runner_id),
        other => panic!("expected authenticated, got {other:?}"),
    }
    (identity, client)
}

/// A fresh connection for a known runner, authenticated; returns what the server said.
pub async fn reconnect(
    server: &DevServer,
    identity: &Identity,
    last_command: u64,
) -> (Client, ServerMessage) {
    let mut client = Client::connect(server).await;
    let auth = identity.authenticate(&client.nonce, last_command);
    client.send(&auth).await;
    let answer = client.recv().await;
    (client, answer)
}

/// Startup, full hardware report, ready: the session becomes Active.
pub async fn activate(client: &mut Client) {
    client
        .send(&RunnerMessage::Startup {
            version: "0.1.0".to_owned(),
            jobs: Vec::new(),
        })
        .await;
    assert_eq!(client.recv().await, ServerMessage::StartupAck {});
    client
        .send(&RunnerMessage::HardwareFull {
            report: Box::new(hardware_report(4)),
        })
        .await;
    assert_eq!(client.recv().await, ServerMessage::HardwareConfirmed {});
    ready(client).await;
}

pub async fn ready(client: &mut Client) {
    client.send(&RunnerMessage::Ready { slots_free: 2 }).await;
    assert_eq!(client.recv().await, ServerMessage::ReadyAck {});
}

pub fn job_request(command: &[&str]) -> JobRequest {
    JobRequest {
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: Default::default(),
        workdir: None,
        timeout_secs: 60,
        output_limit_bytes: None,
        cancel_grace_secs: None,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

/// The next frame must be a `start_job` command; returns its index and job.
pub async fn expect_start_job(client: &mut Client) -> (u64, fyn_runner::protocol::JobSpec) {
    match client.recv().await {
        ServerMessage::Command {
            index,
            command: Command::StartJob { job },
        } => (index, job),
        other => panic!("expected start_job, got {other:?}"),
    }
}

pub async fn send_event(client: &mut Client, index: u64, event: RunnerEvent) {
    client
        .send(&RunnerMessage::Event {
            index,
            event: event.into(),
        })
        .await;
    assert_eq!(
        client.recv().await,
        ServerMessage::EventsAck { up_to: index }
    );
}

pub fn job_ref(id: &str, attempt: u32) -> JobRef {
    JobRef {
        job_id: id.to_owned(),
        attempt,
    }
}

/// A stream of a job's output as text, read through the in-process accessor.
pub fn stream_text(server: &DevServer, id: &str, stream: OutputStream) -> String {
    let bytes = server.output_bytes(id, stream).expect("the output");
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn job(server: &DevServer, id: &str) -> JobInfo {
    server
        .job(id)
        .expect("the store answers")
        .expect("the job exists")
}

/// One admin request as a well-behaved client sends it: this server's Host, the admin
/// token, a JSON body.
pub async fn http(
    server: &DevServer,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let headers = format!(
        "Host: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n",
        server.local_addr(),
        server.admin_token()
    );
    let (status, _, json) = raw_http(
        server.local_addr(),
        method,
        path,
        &headers,
        body.unwrap_or(""),
    )
    .await;
    (status, json)
}

/// One HTTP/1.1 request with `Connection: close` and exactly the `headers` given
/// (each ending in CRLF); returns the status, the header block and the JSON body.
pub async fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(addr).await.expect("the server accepts");
    let request = format!(
        "{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    let mut response = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the response arrives in time")
        .expect("the response is read");
    parse_response(&response)
}

pub fn parse_response(response: &[u8]) -> (u16, String, Value) {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("a JSON body ({e}): {body:?}"))
    };
    (status, head.to_owned(), json)
}

/// A small but complete hardware record, `cores` logical cores.
pub fn hardware_report(cores: u32) -> fyn_runner::protocol::HardwareReport {
    serde_json::from_value(serde_json::json!({
        "os": {"name": "Linux", "kernel": "6.8.0", "arch": "x86_64", "hostname": "test"},
        "cpu": {"model": "Test CPU", "vendor": "GenuineIntel", "logical_cores": cores},
        "memory": {"total_bytes": 1u64 << 30},
        "job_disk": {"mount_point": "/", "total_bytes": 1u64 << 40, "available_bytes": 1u64 << 39},
        "gpus": {"kind": "none"}
    }))
    .expect("a valid hardware record")
}
