//! §6.1 and §5.3 at the runner: a command it can read the index of but never apply is
//! answered under that index (`command_rejected`, then `command_ack`), durably, so the
//! API retires it instead of resending it after every reconnect; one whose index cannot
//! be read stays a bad frame (1007); a command before `ready_ack` stays a violation
//! (4002). And §5.5: a `start_job` for an attempt that already ended on this runner is
//! refused (`already_run`), and the spec's bounds are the runner's.

use serde_json::{Value, json};

use crate::api::{Conn, FakeApi, Got, Handshake};
use crate::runner::Runner;

fn start_job(index: u64, job: Value) -> Value {
    json!({"type": "command", "index": index, "command": {"kind": "start_job", "job": job}})
}

/// The runner's answer to a command it is sent: its event (if any) and its ack, with
/// the event acknowledged so the runner's outbox stays empty.
async fn answer(conn: &mut Conn, index: u64) -> Option<Value> {
    let mut event = None;
    loop {
        match conn.recv().await {
            Got::Frame(frame) if frame["type"] == "heartbeat" => {
                conn.send(json!({"type": "heartbeat_ack", "seq": frame["seq"]}));
            }
            Got::Frame(frame) if frame["type"] == "event" => {
                conn.send(json!({"type": "events_ack", "up_to": frame["index"]}));
                event = Some(frame);
            }
            Got::Frame(frame) if frame["type"] == "command_ack" => {
                assert_eq!(frame["index"], index, "the ack names the command");
                return event;
            }
            other => panic!("expected the answer to command {index}, got {other:?}"),
        }
    }
}

/// Frames until `job_finished`, every event acknowledged, acks and heartbeats passed.
#[cfg(unix)]
async fn until_finished(conn: &mut Conn) {
    loop {
        let Got::Frame(frame) = conn.recv().await else {
            panic!("the connection ended before job_finished");
        };
        match frame["type"].as_str() {
            Some("heartbeat") => conn.send(json!({"type": "heartbeat_ack", "seq": frame["seq"]})),
            Some("event") => {
                conn.send(json!({"type": "events_ack", "up_to": frame["index"]}));
                if frame["event"]["kind"] == "job_finished" {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// Commands whose index is an index (§6.4) but whose body the document refuses.
fn unreadable(index: u64) -> Vec<Value> {
    vec![
        // A field of the wrong type inside the spec.
        start_job(
            index,
            json!({"job_id": "j-bad", "attempt": 1, "command": ["true"], "timeout_secs": "soon"}),
        ),
        // A kind the document does not list.
        json!({"type": "command", "index": index + 1, "command": {"kind": "reboot"}}),
        // A spec that cannot even be read.
        start_job(index + 2, json!("not a spec")),
        // No command at all.
        json!({"type": "command", "index": index + 3}),
        // A number where the kind is named.
        json!({"type": "command", "index": index + 4, "command": {"kind": 0}}),
        // An unknown field beside the index.
        json!({"type": "command", "index": index + 5, "command": {"kind": "drain"}, "why": 1}),
    ]
}

#[tokio::test]
async fn an_unreadable_command_is_rejected_under_its_index_and_not_applied_again() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-unreadable");
    let mut conn = api.accept().await;
    conn.handshake(&runner, &Handshake::default()).await;
    let frames = unreadable(1);
    for (offset, frame) in frames.iter().enumerate() {
        let index = 1 + offset as u64;
        conn.send(frame.clone());
        let event = answer(&mut conn, index)
            .await
            .expect("an event before the ack");
        assert_eq!(event["event"]["kind"], "command_rejected", "{frame}");
        assert_eq!(event["event"]["index"], index);
        let reason = event["event"]["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "the reason says what was wrong");
    }
    // The session is alive, and each index counts as applied: after a reconnect
    // `authenticate` says so, and a resend is only acknowledged again (§6.1).
    conn.send_close(1000, "restarting");
    conn.expect_close(1000).await;
    let mut again = api.accept().await;
    let authenticate = again.handshake(&runner, &Handshake::default()).await;
    assert_eq!(authenticate["last_command_index"], frames.len());
    again.send(frames[0].clone());
    assert_eq!(
        answer(&mut again, 1).await,
        None,
        "a resend gets no second event"
    );
    assert_eq!(runner.stop().await, 0);
}

#[tokio::test]
async fn a_command_whose_index_cannot_be_read_is_a_bad_frame() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-no-index");
    let body = json!({"kind": "reboot"});
    for frame in [
        json!({"type": "command", "index": "1", "command": body}),
        json!({"type": "command", "index": null, "command": body}),
        json!({"type": "command", "command": body}),
        json!({"type": "command", "index": 0, "command": body}),
        json!({"type": "command", "index": -1, "command": body}),
    ] {
        let mut conn = api.accept().await;
        conn.handshake(&runner, &Handshake::default()).await;
        conn.send(frame);
        conn.expect_close(1007).await;
    }
    api.accept().await;
    assert_eq!(runner.stop().await, 0);
}

#[tokio::test]
async fn an_unreadable_command_before_ready_ack_is_a_violation() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-early");
    let mut conn = api.accept().await;
    conn.hello();
    conn.expect_authenticate(runner.runner_id(), &runner.public_key())
        .await;
    let script = Handshake::default();
    conn.send(
        json!({"type": "authenticated", "runner_id": runner.runner_id(),
                     "last_event_index": 0, "session": script.session, "hardware_known": true}),
    );
    conn.expect("startup").await;
    conn.send(json!({"type": "command", "index": 1, "command": {"kind": "reboot"}}));
    conn.expect_close(4002).await;
    // Nothing was applied: the next `authenticate` says so.
    let mut again = api.accept().await;
    let authenticate = again.handshake(&runner, &Handshake::default()).await;
    assert_eq!(authenticate["last_command_index"], 0);
    assert_eq!(runner.stop().await, 0);
}

/// §5.5: an attempt that ended here is never run again, under any index.
#[cfg(unix)]
#[tokio::test]
async fn a_start_job_for_an_attempt_already_run_is_rejected_with_already_run() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-twice");
    let mut conn = api.accept().await;
    conn.handshake(&runner, &Handshake::default()).await;
    let job = json!({"job_id": "j-once", "attempt": 1, "command": ["true"], "timeout_secs": 60});
    conn.send(start_job(1, job.clone()));
    until_finished(&mut conn).await;
    conn.send(start_job(2, job));
    let event = answer(&mut conn, 2).await.expect("an event");
    assert_eq!(event["event"]["kind"], "job_rejected");
    assert_eq!(event["event"]["reason"], "already_run");
    assert_eq!(
        event["event"]["job"],
        json!({"job_id": "j-once", "attempt": 1})
    );
    // The next attempt of the same job is a new attempt: it runs.
    let next = json!({"job_id": "j-once", "attempt": 2, "command": ["true"], "timeout_secs": 60});
    conn.send(start_job(3, next));
    let event = answer(&mut conn, 3).await.expect("an event");
    assert_eq!(event["event"]["kind"], "job_accepted");
    until_finished(&mut conn).await;
    assert_eq!(runner.stop().await, 0);
}

/// §5.5: `timeout_secs` at most 2^32 − 1 and `cancel_grace_secs` at most a day; beyond,
/// the spec is invalid (`invalid_spec`, naming the field), not a frame error.
#[tokio::test]
async fn timeout_and_grace_beyond_their_bounds_are_invalid_specs() {
    let mut api = FakeApi::start().await;
    let runner = Runner::binary(api.url(), "r-bounds");
    let mut conn = api.accept().await;
    conn.handshake(&runner, &Handshake::default()).await;
    let specs = [
        (
            json!({"job_id": "j-t", "attempt": 1, "command": ["true"],
                "timeout_secs": 1u64 << 32}),
            "timeout_secs",
        ),
        (
            json!({"job_id": "j-g", "attempt": 1, "command": ["true"], "timeout_secs": 5,
                "cancel_grace_secs": 86_401}),
            "cancel_grace_secs",
        ),
        (
            json!({"job_id": "j-max", "attempt": 1, "command": ["true"],
                "timeout_secs": u64::MAX}),
            "timeout_secs",
        ),
    ];
    for (offset, (spec, field)) in specs.into_iter().enumerate() {
        let index = 1 + offset as u64;
        conn.send(start_job(index, spec));
        let event = answer(&mut conn, index).await.expect("an event");
        assert_eq!(event["event"]["kind"], "job_rejected");
        assert_eq!(event["event"]["reason"], "invalid_spec");
        let detail = event["event"]["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(field), "{detail}");
    }
    assert_eq!(runner.stop().await, 0);
}
