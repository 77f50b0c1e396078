//! §11 at the runner: `stopping.reason` says who asked for the drain (the API's
//! command, a signal, `fyn-runner drain`, `fyn-runner uninstall`); a drain that ends
//! with events the API has not acknowledged exits 7 (undelivered), never 0; and the
//! last frame of a stop, the Close, reaches the API before the process exits.

#[cfg(unix)]
use std::time::Duration;

use serde_json::json;

use crate::api::{FakeApi, Handshake, STEP};
#[cfg(unix)]
use crate::api::{Got, TcpEnd};
use crate::runner::Runner;

/// The job ends on its own before the drain; only its events wait for an
/// acknowledgement that never comes. At the deadline the runner stops with exit 7.
#[cfg(unix)]
#[tokio::test]
async fn a_drain_that_ends_with_events_unacknowledged_exits_7() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary(api.url(), "r-unacked");
    let mut conn = api.accept().await;
    let script = Handshake {
        ack_events: false,
        ..Handshake::default()
    };
    conn.handshake(&runner, &script).await;
    conn.send(
        json!({"type": "command", "index": 1, "command": {"kind": "start_job", "job": {
        "job_id": "j-quick", "attempt": 1, "command": ["true"], "timeout_secs": 60}}}),
    );
    loop {
        let frame = conn.expect_all(&["event"]).await.pop().expect("frame");
        if frame["event"]["kind"] == "job_finished" {
            break;
        }
    }
    conn.send(json!({"type": "command", "index": 2,
                     "command": {"kind": "drain", "deadline_secs": 1}}));
    // Events are never acknowledged; heartbeats are.
    let code = loop {
        if let Some(code) = runner.exit_code(Duration::from_millis(100)).await {
            break code;
        }
        if let Got::Frame(frame) = conn.recv().await
            && frame["type"] == "heartbeat"
        {
            conn.send(json!({"type": "heartbeat_ack", "seq": frame["seq"]}));
        }
    };
    assert_eq!(code, 7, "{}", runner.log());
}

#[tokio::test]
async fn stopping_says_the_drain_command_asked() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary(api.url(), "r-why");
    let mut conn = api.accept().await;
    conn.handshake(&runner, &Handshake::default()).await;
    conn.send(json!({"type": "command", "index": 1, "command": {"kind": "drain"}}));
    let frames = conn.expect_all(&["command_ack", "stopping"]).await;
    let stopping = frames
        .iter()
        .find(|f| f["type"] == "stopping")
        .expect("stopping");
    let reason = stopping["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("drain command"), "{reason:?}");
    assert_eq!(runner.exit_code(STEP).await, Some(0));
}

/// A stop signal: the Close (1000) is written and the TCP connection ends in order
/// before the process is gone, exit 0.
#[cfg(unix)]
#[tokio::test]
async fn a_stop_signal_ends_the_session_with_a_close_and_no_stopping() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary(api.url(), "r-signal");
    let mut conn = api.accept().await;
    conn.handshake(&runner, &Handshake::default()).await;
    // §11: SIGTERM on Unix is a service manager's stop or restart, not a drain: jobs
    // stay with their supervisors, so the runner sends no `stopping`, only a close.
    runner.ask_to_stop();
    conn.expect_close(1000).await;
    assert_eq!(conn.end(Duration::from_secs(5)).await, TcpEnd::Eof);
    assert_eq!(runner.exit_code(STEP).await, Some(0), "{}", runner.log());
    // Its log went to a file, not a terminal: no colour codes in it.
    let log = runner.log();
    assert!(log.contains("runner stopped"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in the log file: {log:?}"
    );
}

/// `fyn-runner drain` on the runner's machine, and `fyn-runner uninstall`'s drain
/// through the same control socket: each is named in `stopping`.
#[cfg(unix)]
#[tokio::test]
async fn stopping_names_fyn_runner_drain_and_uninstall() {
    use fyn_runner::runtime::control::{ControlRequest, ControlResponse, request};
    for uninstall in [false, true] {
        let mut api = FakeApi::start().await;
        let mut runner = Runner::binary(api.url(), "r-local");
        let mut conn = api.accept().await;
        conn.handshake(&runner, &Handshake::default()).await;
        let drain = ControlRequest::Drain {
            deadline_secs: None,
            force: false,
            uninstall,
        };
        let answer = request(runner.state_dir(), &drain)
            .await
            .expect("an answer");
        assert!(
            matches!(answer, ControlResponse::Draining { .. }),
            "{answer:?}"
        );
        let stopping = conn.expect("stopping").await;
        let reason = stopping["reason"].as_str().unwrap_or_default();
        let named = if uninstall {
            "fyn-runner uninstall"
        } else {
            "fyn-runner drain"
        };
        assert!(reason.contains(named), "{reason:?}");
        assert_eq!(runner.exit_code(STEP).await, Some(0), "{}", runner.log());
    }
}
