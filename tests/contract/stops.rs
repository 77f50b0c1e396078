//! The answers after which a runner stops for good (§13: it does not retry in a loop),
//! with the exit code the CLI documents for each: `auth_rejected` 5, `evicted` 4, a
//! `hello` of another protocol version 6. And a binary frame, after which it does not
//! stop: 1007 and a reconnect.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::api::{FakeApi, Handshake, STEP};
use crate::runner::Runner;

/// Long enough for a runner with the default backoff (0.5 s first step) to come back.
const QUIET: Duration = Duration::from_secs(2);

#[tokio::test]
async fn auth_rejected_stops_the_runner_with_exit_code_5() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary(api.url(), "r-rejected");
    let mut conn = api.accept().await;
    conn.hello();
    conn.expect_authenticate(runner.runner_id(), &runner.public_key())
        .await;
    conn.send(json!({"type": "auth_rejected", "reason": "unknown runner"}));
    conn.send_close(1000, "bye");
    assert_eq!(runner.exit_code(STEP).await, Some(5), "{}", runner.log());
    api.no_connection_within(QUIET).await;
}

#[tokio::test]
async fn evicted_stops_the_runner_with_exit_code_4() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary(api.url(), "r-evicted");
    let mut conn = api.accept().await;
    conn.handshake(&runner, &Handshake::default()).await;
    conn.send(json!({"type": "evicted", "reason": "a newer session"}));
    conn.send_close(1000, "evicted");
    assert_eq!(runner.exit_code(STEP).await, Some(4), "{}", runner.log());
    api.no_connection_within(QUIET).await;
}

#[tokio::test]
async fn a_hello_of_another_version_stops_the_runner_with_exit_code_6() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary(api.url(), "r-version");
    let conn = api.accept().await;
    conn.send(json!({"type": "hello", "protocol": 2, "nonce": "n"}));
    assert_eq!(runner.exit_code(STEP).await, Some(6), "{}", runner.log());
    api.no_connection_within(QUIET).await;
}

#[tokio::test]
async fn a_binary_frame_is_closed_with_1007_and_the_runner_reconnects() {
    let mut api = FakeApi::start().await;
    let runner = Runner::in_process(api.url(), "r-binary", Duration::from_secs(5));
    let mut conn = api.accept().await;
    conn.handshake(&runner, &Handshake::default()).await;
    conn.send_message(Message::binary(vec![0u8, 1, 2]));
    conn.expect_close(1007).await;
    let mut again = api.accept().await;
    again.handshake(&runner, &Handshake::default()).await;
    assert_eq!(runner.stop().await, 0);
}
