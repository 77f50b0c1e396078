//! §9 at the runner: a `heartbeat_ack` answers the heartbeat whose `seq` it echoes. A
//! late answer to an older heartbeat does not stand in for the latest: the latest's
//! reply timer keeps running, and a silent link is still noticed within
//! `ack_timeout_ms`.

use serde_json::json;

use crate::api::{FakeApi, Got, Handshake};
use crate::runner::Runner;

#[tokio::test]
async fn a_late_ack_of_an_older_heartbeat_does_not_answer_the_latest() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-late-ack");
    let mut conn = api.accept().await;
    // Heartbeats every 3 s, each answered within 1 s: the reply timer of a heartbeat
    // fires 2 s before the next heartbeat is due.
    let script = Handshake {
        session: json!({"heartbeat_interval_ms": 3000, "ack_timeout_ms": 1000,
                        "runner_lost_threshold_ms": 60000}),
        ..Handshake::default()
    };
    conn.handshake(&runner, &script).await;
    let Got::Frame(first) = conn.recv().await else {
        panic!("expected a heartbeat");
    };
    assert_eq!(first["type"], "heartbeat");
    let seq = first["seq"].as_u64().expect("seq");
    conn.send(json!({"type": "heartbeat_ack", "seq": seq}));
    let Got::Frame(second) = conn.recv().await else {
        panic!("expected the next heartbeat");
    };
    assert_eq!(second["type"], "heartbeat");
    assert_eq!(second["seq"], seq + 1);
    // The answer to the first heartbeat again (late, or duplicated by a proxy); the
    // second is never answered.
    conn.send(json!({"type": "heartbeat_ack", "seq": seq}));
    match conn.recv().await {
        Got::Close(code, _) => assert_eq!(code, Some(4000), "the link is declared dead"),
        other => panic!("expected close 4000 within ack_timeout_ms, got {other:?}"),
    }
    // It reconnects with backoff (§9, §15).
    let mut again = api.accept().await;
    again.handshake(&runner, &script).await;
    assert_eq!(runner.stop().await, 0);
}
