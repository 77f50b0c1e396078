//! §2's rule for optional fields at the runner, end to end: a session whose fields are
//! all `null`, a `start_job` whose optional fields are all `null` and a `drain` whose
//! deadline is `null` are the same as if the fields were omitted: the session starts
//! with the defaults, the job runs, the drain happens. (Field by field, through both
//! decoders: `decoding.rs`.) Unix: the job is `sh`.
#![cfg(unix)]

use serde_json::json;

use crate::api::{FakeApi, Handshake};
use crate::runner::Runner;

#[tokio::test]
async fn null_optional_fields_are_the_defaults_end_to_end() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary(api.url(), "r-nulls");
    let mut conn = api.accept().await;
    let script = Handshake {
        session: json!({"heartbeat_interval_ms": null, "ack_timeout_ms": null,
                        "runner_lost_threshold_ms": null}),
        ..Handshake::default()
    };
    conn.handshake(&runner, &script).await;
    conn.send(
        json!({"type": "command", "index": 1, "command": {"kind": "start_job", "job": {
        "job_id": "j-nulls", "attempt": 1, "command": ["sh", "-c", "printf hi"],
        "env": null, "workdir": null, "timeout_secs": 60,
        "output_limit_bytes": null, "cancel_grace_secs": null}}}),
    );
    let mut kinds = Vec::new();
    let mut output = String::new();
    while !kinds.contains(&"job_finished".to_owned()) {
        let frame = conn.expect_all(&["event"]).await.pop().expect("one frame");
        if frame["type"] != "event" {
            assert_eq!(frame, json!({"type": "command_ack", "index": 1}));
            continue;
        }
        let event = &frame["event"];
        kinds.push(event["kind"].as_str().unwrap_or_default().to_owned());
        if event["kind"] == "job_output" {
            output.push_str(event["data"].as_str().unwrap_or_default());
        }
        if event["kind"] == "job_finished" {
            assert_eq!(event["outcome"], "succeeded", "{event}");
        }
        conn.send(json!({"type": "events_ack", "up_to": frame["index"]}));
    }
    assert_eq!(kinds.first().map(String::as_str), Some("job_accepted"));
    assert_eq!(output, "aGk=", "the job printed \"hi\"");

    conn.send(json!({"type": "command", "index": 2,
                     "command": {"kind": "drain", "deadline_secs": null}}));
    let frames = conn.expect_all(&["command_ack", "stopping"]).await;
    assert!(frames.contains(&json!({"type": "command_ack", "index": 2})));
    assert_eq!(
        runner.exit_code(crate::api::STEP).await,
        Some(0),
        "{}",
        runner.log()
    );
}
