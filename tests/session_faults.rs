//! The runtime facing a misbehaving or untrusted control plane: garbage frames, unknown
//! types, oversized frames, and TLS with the right and the wrong CA.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use fyn_runner::core::CoreConfig;
use fyn_runner::devserver::{DevServer, DevServerConfig, TlsFiles};
use fyn_runner::protocol::{PROTOCOL_VERSION, ServerMessage, encode};
use fyn_runner::runtime::identity::Identity;
use fyn_runner::runtime::{self, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(20);

fn settings(
    url: &str,
    state_dir: &Path,
    token: Option<String>,
    ca_file: Option<&Path>,
) -> RunnerSettings {
    RunnerSettings {
        token: token.map(Secret::new),
        name: "fault-runner".into(),
        ca_file: ca_file.map(Path::to_path_buf),
        core: CoreConfig {
            handshake_timeout_ms: 5_000,
            ..CoreConfig::default()
        },
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        ..RunnerSettings::new(
            runtime::settings::endpoint(url, false).expect("loopback url"),
            state_dir.to_path_buf(),
        )
    }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature, not ours
fn accept_subprotocol(
    _req: &tokio_tungstenite::tungstenite::handshake::server::Request,
    mut resp: tokio_tungstenite::tungstenite::handshake::server::Response,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::server::Response,
    tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
> {
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        "fyn-runner.v1".parse().expect("header"),
    );
    Ok(resp)
}

/// A fake control plane: on connection N it says hello, waits for `authenticate`, then
/// sends `bad[N]` and reports the close code the runner answered with.
async fn hostile_server(
    bad: Vec<Message>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<Option<u16>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let (codes_tx, codes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for frame in bad {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, accept_subprotocol).await
            else {
                continue;
            };
            let hello = ServerMessage::Hello {
                protocol: PROTOCOL_VERSION,
                nonce: "n".into(),
            };
            let _ = ws.send(Message::text(encode(&hello))).await;
            // The runner authenticates; whatever it says, answer with the bad frame.
            let _ = ws.next().await;
            let _ = ws.send(frame).await;
            let mut code = None;
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Close(frame) = message {
                    code = frame.map(|f| u16::from(f.code));
                    break;
                }
            }
            let _ = codes_tx.send(code);
        }
    });
    (url, codes)
}

#[tokio::test]
async fn garbage_unknown_and_oversized_frames_are_refused_and_the_runner_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Identity::generate_key().expect("key");
    // A registered runner: its store comes first (the runner refuses an identity
    // without one).
    drop(fyn_runner::runtime::store::Store::open(dir.path()).expect("store"));
    Identity::save(dir.path(), "r-fault", &key).expect("identity");
    let oversized = format!(
        "{{\"type\":\"heartbeat_ack\",\"seq\":1,\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let bad = vec![
        Message::text("{this is not json"),
        Message::text(r#"{"type":"launch_missiles"}"#),
        Message::text(r#"{"type":"events_ack"}"#),
        Message::text(oversized),
        Message::binary(vec![0u8, 1, 2]),
    ];
    let expected = [Some(1007), Some(1007), Some(1007), Some(1009), Some(1007)];
    let (url, mut codes) = hostile_server(bad).await;
    let handle = runtime::start(settings(&url, dir.path(), None, None)).expect("starts");
    for (i, want) in expected.iter().enumerate() {
        let got = tokio::time::timeout(WAIT, codes.recv())
            .await
            .expect("the runner answers")
            .expect("server alive");
        assert_eq!(got, *want, "connection {i}: close code");
    }
    // Still alive and trying: it never panicked and never gave up.
    let status = handle.status.borrow().clone();
    assert_ne!(status.state, "Stopped", "{status:?}");
    handle.shutdown();
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops")
            .code(),
        0
    );
}

struct Certs {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn self_signed() -> Certs {
    let dir = tempfile::tempdir().expect("tempdir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    Certs {
        _dir: dir,
        cert,
        key,
    }
}

#[tokio::test]
async fn wss_with_the_operators_ca_works_and_a_wrong_ca_is_a_clear_tls_error() {
    let certs = self_signed();
    let config = DevServerConfig {
        tls: Some(TlsFiles {
            cert: certs.cert.clone(),
            key: certs.key.clone(),
        }),
        ..DevServerConfig::ephemeral()
    };
    let server = DevServer::start(config).await.expect("dev-server with TLS");
    assert!(server.url().starts_with("wss://"));

    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut handle = runtime::start(settings(
        &server.url(),
        dir.path(),
        Some(token),
        Some(&certs.cert),
    ))
    .expect("starts");
    let status = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("in time");
    assert_eq!(status.state, "Active");
    handle.shutdown();
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops")
            .code(),
        0
    );

    // A CA that did not sign the server's certificate: the handshake fails and says why.
    let wrong = self_signed();
    let tls = runtime::ws::tls_config(Some(&wrong.cert)).expect("a valid CA file");
    let url = runtime::settings::endpoint(&server.url(), false).expect("url");
    let error = runtime::ws::connect(&url, tls, Duration::from_secs(5))
        .await
        .expect_err("must be refused");
    assert!(
        error.contains("TLS handshake failed") && error.contains("certificate"),
        "{error}"
    );

    // And the public roots alone do not trust a private CA either.
    let tls = runtime::ws::tls_config(None).expect("web roots");
    let error = runtime::ws::connect(&url, tls, Duration::from_secs(5))
        .await
        .expect_err("must be refused");
    assert!(error.contains("TLS handshake failed"), "{error}");
    server.shutdown().await;
}

#[test]
fn a_ca_file_that_is_not_pem_is_refused_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "hello").expect("write");
    let error = runtime::ws::tls_config(Some(&path))
        .expect_err("no certificate")
        .to_string();
    assert!(
        error.contains("ca.pem") && error.contains("no PEM certificate"),
        "{error}"
    );
    let missing = runtime::ws::tls_config(Some(&dir.path().join("absent.pem")))
        .expect_err("missing")
        .to_string();
    assert!(missing.contains("absent.pem"), "{missing}");
}
