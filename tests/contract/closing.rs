//! Closing the connection as §13/§14 and RFC 6455 §5.5.1 say: a text frame that is not
//! UTF-8 is a bad frame (1007, logged with what was wrong); the server's Close is
//! echoed; after a Close of its own (1009 here, the case where bytes are still in
//! flight) the runner lets the peer read it: the TCP connection ends with an end of
//! stream, not a reset. Each time the runner reconnects.

use std::time::Duration;

use serde_json::json;

use crate::api::{FakeApi, Handshake, TcpEnd};
use crate::runner::Runner;

const LINGER: Duration = Duration::from_secs(5);

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_is_closed_with_1007_and_logged() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-utf8");
    let mut conn = api.accept().await;
    conn.hello();
    conn.expect_authenticate(runner.runner_id(), &runner.public_key())
        .await;
    conn.send_text_bytes(b"{\"type\":\"auth_rejected\",\"reason\":\"\xff\xfe\"}");
    conn.expect_close(1007).await;
    assert_eq!(conn.end(LINGER).await, TcpEnd::Eof);

    let mut again = api.accept().await;
    again.hello();
    again
        .expect_authenticate(runner.runner_id(), &runner.public_key())
        .await;
    let log = runner.log();
    assert!(
        log.lines()
            .any(|line| line.contains("WARN") && line.contains("not valid UTF-8")),
        "§14: a warning that says what was wrong; log:\n{log}"
    );
    assert_eq!(runner.stop().await, 0);
}

#[tokio::test]
async fn the_servers_close_is_echoed_and_the_runner_reconnects() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-echo");
    for code in [1000, 4000] {
        let mut conn = api.accept().await;
        conn.handshake(&runner, &Handshake::default()).await;
        conn.send_close(code, "the server closes");
        let echoed = conn.expect_close(code).await;
        assert!(
            echoed.len() <= 123,
            "§13: a close reason of at most 123 bytes"
        );
        assert_eq!(conn.end(LINGER).await, TcpEnd::Eof, "after close {code}");
    }
    api.accept().await;
    assert_eq!(runner.stop().await, 0);
}

#[tokio::test]
async fn after_its_own_1009_the_runner_lets_the_peer_read_the_close() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-too-large");
    let mut conn = api.accept().await;
    conn.handshake(&runner, &Handshake::default()).await;
    // §2: over 1 MiB; far more than the socket buffers hold, so most of it is still
    // in flight when the runner refuses it.
    let pad = "x".repeat(4 << 20);
    conn.send(json!({"type": "heartbeat_ack", "seq": 1, "pad": pad}));
    conn.expect_close(1009).await;
    assert_eq!(
        conn.end(LINGER).await,
        TcpEnd::Eof,
        "the runner reset the connection after its Close frame"
    );
    api.accept().await;
    assert_eq!(runner.stop().await, 0);
}
