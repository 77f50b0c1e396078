//! §6.4 at the runner: an index or position outside its range is a bad frame (1007) and
//! a reconnect, never a store failure (exit 1, then a crash loop), never applied, and
//! never a reason to number events at or below what the API claims to hold (§4.2,
//! rule 4). The same for session parameters that cannot detect a dead link (§7).

use std::time::Duration;

use serde_json::{Value, json};

use crate::api::{FakeApi, Handshake};
use crate::doc::MAX_INDEX;
use crate::runner::Runner;

fn cancel(index: Value) -> Value {
    json!({"type": "command", "index": index,
           "command": {"kind": "cancel_job", "job_id": "j-none", "attempt": 1}})
}

#[tokio::test]
async fn an_index_outside_the_range_closes_1007_and_the_runner_reconnects() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary(api.url(), "r-index");
    let bad = [
        cancel(json!(1u64 << 63)),
        cancel(json!(u64::MAX)),
        cancel(json!(MAX_INDEX + 1)),
        cancel(json!(0)),
        json!({"type": "events_ack", "up_to": 1u64 << 63}),
        json!({"type": "heartbeat_ack", "seq": MAX_INDEX + 1}),
    ];
    for frame in bad {
        let mut conn = api.accept().await;
        let authenticate = conn.handshake(&runner, &Handshake::default()).await;
        assert_eq!(
            authenticate["last_command_index"], 0,
            "no out-of-range command was applied"
        );
        conn.send(frame.clone());
        conn.expect_close(1007).await;
        runner.assert_running();
    }
    // The top of the range is an ordinary index.
    let mut conn = api.accept().await;
    conn.handshake(&runner, &Handshake::default()).await;
    conn.send(cancel(json!(MAX_INDEX)));
    let ack = conn.expect("command_ack").await;
    assert_eq!(ack["index"], MAX_INDEX);
    assert_eq!(runner.stop().await, 0);
}

#[tokio::test]
async fn the_runner_never_numbers_events_at_or_below_the_apis_claim() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-claim");

    // A claim beyond the range: refused, not clamped below itself.
    let mut conn = api.accept().await;
    conn.hello();
    conn.expect_authenticate(runner.runner_id(), &runner.public_key())
        .await;
    let session = Handshake::default().session;
    conn.send(
        json!({"type": "authenticated", "runner_id": runner.runner_id(),
                     "last_event_index": 1u64 << 62, "session": session, "hardware_known": true}),
    );
    conn.expect_close(1007).await;

    // A session whose ack timeout is not below its interval: refused (§7).
    let mut conn = api.accept().await;
    let script = Handshake {
        session: json!({"heartbeat_interval_ms": 1000, "ack_timeout_ms": 1000,
                        "runner_lost_threshold_ms": 60000}),
        ..Handshake::default()
    };
    conn.hello();
    conn.expect_authenticate(runner.runner_id(), &runner.public_key())
        .await;
    conn.send(
        json!({"type": "authenticated", "runner_id": runner.runner_id(),
                     "last_event_index": 0, "session": script.session, "hardware_known": true}),
    );
    conn.expect_close(1007).await;

    // A claim in range but above anything this runner sent: new events follow it.
    let claim = 1_000_000u64;
    let mut conn = api.accept().await;
    let script = Handshake {
        last_event_index: json!(claim),
        ..Handshake::default()
    };
    conn.handshake(&runner, &script).await;
    conn.send(
        json!({"type": "command", "index": 1, "command": {"kind": "start_job", "job": {
        "job_id": ".not-a-valid-id", "attempt": 1, "command": ["true"], "timeout_secs": 5}}}),
    );
    let frames = conn.expect_all(&["event", "command_ack"]).await;
    let event = frames
        .iter()
        .find(|f| f["type"] == "event")
        .expect("an event");
    assert_eq!(event["event"]["kind"], "job_rejected");
    assert_eq!(event["event"]["reason"], "invalid_spec");
    assert_eq!(event["index"], claim + 1, "numbered right after the claim");
    conn.send(json!({"type": "events_ack", "up_to": claim + 1}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runner.stop().await, 0);
}

/// §6.4: a claim that leaves the runner fewer than 2^32 indexes below the top of the
/// range is refused (4002, reconnect), never numbered past: the runner never sends an
/// index above 2^53 − 1 (the harness fails the case if it does). A claim just inside
/// the bound is an ordinary one.
#[tokio::test]
async fn a_claim_near_the_top_of_the_range_is_refused_with_4002() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-top");
    let headroom = 1u64 << 32;
    for claim in [MAX_INDEX, MAX_INDEX - headroom + 1] {
        let mut conn = api.accept().await;
        conn.hello();
        conn.expect_authenticate(runner.runner_id(), &runner.public_key())
            .await;
        let session = Handshake::default().session;
        conn.send(
            json!({"type": "authenticated", "runner_id": runner.runner_id(),
                         "last_event_index": claim, "session": session,
                         "hardware_known": true}),
        );
        conn.expect_close(4002).await;
    }
    let claim = MAX_INDEX - headroom;
    let mut conn = api.accept().await;
    let script = Handshake {
        last_event_index: json!(claim),
        ..Handshake::default()
    };
    conn.handshake(&runner, &script).await;
    conn.send(
        json!({"type": "command", "index": 1, "command": {"kind": "start_job", "job": {
        "job_id": ".not-a-valid-id", "attempt": 1, "command": ["true"], "timeout_secs": 5}}}),
    );
    let frames = conn.expect_all(&["event", "command_ack"]).await;
    let event = frames.iter().find(|f| f["type"] == "event").expect("event");
    assert_eq!(event["index"], claim + 1);
    conn.send(json!({"type": "events_ack", "up_to": claim + 1}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runner.stop().await, 0);
}
