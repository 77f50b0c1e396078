//! End-to-end tests of the reference control plane, driven by a raw WebSocket client
//! that speaks the protocol by hand (not the runner runtime), plus a minimal HTTP
//! client for the admin API (`wire/`). Everything runs on loopback with port 0.
#![allow(clippy::disallowed_methods)] // measuring time is what this does

mod wire;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::{self, Message};

use fyn_runner::devserver::{DevServer, DevServerConfig, JobState, RunnerState, TlsFiles};
use fyn_runner::protocol::{
    Command, JobOutcome, MAX_FRAME_BYTES, OutputStream, RejectReason, RunnerEvent, RunnerMessage,
    ServerMessage, SessionParams, encode,
};
use wire::*;
// ---------------------------------------------------------------- registration and auth

#[tokio::test]
async fn registration_end_to_end() -> TestResult {
    let server = start().await;
    let token = server.mint_token()?;
    let mut client = Client::connect(&server).await;
    client.send(&RunnerMessage::ValidateToken { token }).await;
    assert_eq!(client.recv().await, ServerMessage::TokenAccepted {});
    let key = new_key();
    client
        .send(&RunnerMessage::Register {
            public_key: public_key(&key),
            name: "box-1".to_owned(),
            version: "0.1.0".to_owned(),
            slots: 3,
        })
        .await;
    let ServerMessage::Registered { runner_id } = client.recv().await else {
        panic!("expected registered");
    };
    assert!(
        runner_id.starts_with("r-") && runner_id.len() == 14,
        "{runner_id}"
    );
    let identity = Identity { key, runner_id };
    let auth = identity.authenticate(&client.nonce, 0);
    client.send(&auth).await;
    assert_eq!(
        client.recv().await,
        ServerMessage::Authenticated {
            runner_id: identity.runner_id.clone(),
            last_event_index: 0,
            session: SessionParams::default(),
            hardware_known: false,
        }
    );
    activate(&mut client).await;

    let (status, runners) = http(&server, "GET", "/admin/v1/runners", None).await;
    assert_eq!(status, 200);
    let runner = &runners[0];
    assert_eq!(runner["id"], json!(identity.runner_id));
    assert_eq!(runner["state"], json!("Active"));
    assert_eq!(runner["connected"], json!(true));
    assert_eq!(runner["slots"], json!(2), "authenticate updates the slots");
    assert_eq!(runner["hardware"]["cpu"]["logical_cores"], json!(4));
    assert!(runner["last_seen"].is_u64());

    // The next connect finds the hardware known.
    drop(client);
    let (_client, answer) = reconnect(&server, &identity, 0).await;
    assert!(matches!(
        answer,
        ServerMessage::Authenticated {
            hardware_known: true,
            ..
        }
    ));
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn registration_token_via_admin_api() -> TestResult {
    let server = start().await;
    let (status, body) = http(&server, "POST", "/admin/v1/registration-tokens", None).await;
    assert_eq!(status, 201);
    let token = body["token"].as_str().ok_or("no token")?.to_owned();
    let mut client = Client::connect(&server).await;
    client.send(&RunnerMessage::ValidateToken { token }).await;
    assert_eq!(client.recv().await, ServerMessage::TokenAccepted {});
    Ok(())
}

fn register_message(key: &SigningKey) -> RunnerMessage {
    RunnerMessage::Register {
        public_key: public_key(key),
        name: "a".to_owned(),
        version: "0.1.0".to_owned(),
        slots: 1,
    }
}

/// Validate `token` and register `key` on a fresh connection; what `register` got.
async fn validate_and_register(
    server: &DevServer,
    token: &str,
    key: &SigningKey,
) -> (Client, ServerMessage) {
    let mut client = Client::connect(server).await;
    client
        .send(&RunnerMessage::ValidateToken {
            token: token.to_owned(),
        })
        .await;
    assert_eq!(client.recv().await, ServerMessage::TokenAccepted {});
    client.send(&register_message(key)).await;
    let answer = client.recv().await;
    (client, answer)
}

/// Section 4.1: a `register` retried with the spent token and the same key (the first
/// answer was lost) gets the same runner; another key is refused.
#[tokio::test]
async fn a_spent_token_registers_the_same_key_again_and_no_other() -> TestResult {
    let server = start().await;
    let token = server.mint_token()?;
    let key = new_key();
    // Committed by the server, but the runner never reads the answer.
    let (first, answer) = validate_and_register(&server, &token, &key).await;
    let ServerMessage::Registered { runner_id } = answer else {
        panic!("expected registered, got {answer:?}");
    };
    drop(first);

    let (mut retry, answer) = validate_and_register(&server, &token, &key).await;
    assert_eq!(
        answer,
        ServerMessage::Registered {
            runner_id: runner_id.clone()
        }
    );
    let identity = Identity { key, runner_id };
    retry.send(&identity.authenticate(&retry.nonce, 0)).await;
    assert!(matches!(
        retry.recv().await,
        ServerMessage::Authenticated { .. }
    ));
    assert_eq!(server.runners()?.len(), 1, "one runner, no token wasted");

    let (mut other, answer) = validate_and_register(&server, &token, &new_key()).await;
    assert_eq!(
        answer,
        ServerMessage::TokenRejected {
            reason: "registration token was already used".to_owned()
        }
    );
    assert_eq!(other.close_code().await, 1000);

    // Once the runner has left for good, its token is simply spent.
    retry
        .send(&RunnerMessage::Leaving {
            reason: "test".to_owned(),
        })
        .await;
    assert_eq!(retry.recv().await, ServerMessage::Left {});
    let mut late = Client::connect(&server).await;
    late.send(&RunnerMessage::ValidateToken { token }).await;
    assert_eq!(
        late.recv().await,
        ServerMessage::TokenRejected {
            reason: "registration token was already used".to_owned()
        }
    );
    assert_eq!(late.close_code().await, 1000);
    Ok(())
}

#[tokio::test]
async fn wrong_token_is_refused() -> TestResult {
    let server = start().await;
    let mut client = Client::connect(&server).await;
    client
        .send(&RunnerMessage::ValidateToken {
            token: "not-a-token".to_owned(),
        })
        .await;
    assert!(matches!(
        client.recv().await,
        ServerMessage::TokenRejected { .. }
    ));
    assert_eq!(client.close_code().await, 1000);
    Ok(())
}

#[tokio::test]
async fn token_validated_twice_registers_once() -> TestResult {
    let server = start().await;
    let token = server.mint_token()?;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    for client in [&mut a, &mut b] {
        client
            .send(&RunnerMessage::ValidateToken {
                token: token.clone(),
            })
            .await;
        assert_eq!(client.recv().await, ServerMessage::TokenAccepted {});
    }
    a.send(&register_message(&new_key())).await;
    assert!(matches!(a.recv().await, ServerMessage::Registered { .. }));
    b.send(&register_message(&new_key())).await;
    assert!(matches!(
        b.recv().await,
        ServerMessage::TokenRejected { .. }
    ));
    assert_eq!(b.close_code().await, 1000);
    assert_eq!(server.runners()?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn wrong_signature_is_rejected() -> TestResult {
    let server = start().await;
    let (identity, first) = register(&server).await;
    drop(first);

    // Signed over another connection's nonce: a replay.
    let mut client = Client::connect(&server).await;
    let replay = identity.authenticate("some-other-nonce", 0);
    client.send(&replay).await;
    assert!(matches!(
        client.recv().await,
        ServerMessage::AuthRejected { .. }
    ));
    assert_eq!(client.close_code().await, 1000);

    // Signed with another key.
    let impostor = Identity {
        key: new_key(),
        runner_id: identity.runner_id.clone(),
    };
    let (mut client, answer) = reconnect(&server, &impostor, 0).await;
    assert!(matches!(answer, ServerMessage::AuthRejected { .. }));
    assert_eq!(client.close_code().await, 1000);

    // An unknown runner.
    let stranger = Identity {
        key: new_key(),
        runner_id: "r-000000000000".to_owned(),
    };
    let (mut client, answer) = reconnect(&server, &stranger, 0).await;
    assert_eq!(
        answer,
        ServerMessage::AuthRejected {
            reason: "unknown runner".to_owned()
        }
    );
    assert_eq!(client.close_code().await, 1000);

    // The real key still works.
    let (_client, answer) = reconnect(&server, &identity, 0).await;
    assert!(matches!(answer, ServerMessage::Authenticated { .. }));
    Ok(())
}

#[tokio::test]
async fn a_second_session_evicts_the_first() -> TestResult {
    let server = start().await;
    let (identity, mut older) = register(&server).await;
    activate(&mut older).await;

    let (mut newer, answer) = reconnect(&server, &identity, 0).await;
    assert!(matches!(answer, ServerMessage::Authenticated { .. }));
    assert!(matches!(older.recv().await, ServerMessage::Evicted { .. }));
    assert_eq!(older.close_code().await, 1000);

    // The newer session is the live one and works.
    ready(&mut newer).await;
    newer
        .send(&RunnerMessage::Heartbeat {
            seq: 7,
            jobs_running: 0,
        })
        .await;
    assert_eq!(newer.recv().await, ServerMessage::HeartbeatAck { seq: 7 });
    let runner = server.runner(&identity.runner_id)?.ok_or("runner")?;
    assert!(runner.connected);
    assert_eq!(runner.state, RunnerState::Active);
    Ok(())
}

// ---------------------------------------------------------------- events and commands

#[tokio::test]
async fn a_job_runs_end_to_end() -> TestResult {
    let server = start().await;
    let (_identity, mut client) = register(&server).await;
    activate(&mut client).await;

    let body = r#"{"command": ["echo", "hi"], "env": {"A": "1"}, "timeout_secs": 30}"#;
    let (status, created) = http(&server, "POST", "/admin/v1/jobs", Some(body)).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().ok_or("no id")?.to_owned();
    assert!(id.starts_with("j-"));

    let (index, spec) = expect_start_job(&mut client).await;
    assert_eq!(index, 1);
    assert_eq!(spec.job_id, id);
    assert_eq!(spec.attempt, 1);
    assert_eq!(spec.command, vec!["echo", "hi"]);
    assert_eq!(spec.output_limit_bytes, 1 << 30);
    assert_eq!(spec.cancel_grace_secs, 10);
    assert_eq!(job(&server, &id).state, JobState::Assigned);
    client.send(&RunnerMessage::CommandAck { index }).await;

    let r = job_ref(&id, 1);
    send_event(&mut client, 1, RunnerEvent::JobAccepted { job: r.clone() }).await;
    assert_eq!(job(&server, &id).state, JobState::Accepted);
    send_event(
        &mut client,
        2,
        RunnerEvent::JobStarted {
            job: r.clone(),
            pid: 42,
        },
    )
    .await;
    assert_eq!(job(&server, &id).state, JobState::Running);
    let output = |offset: u64, data: &[u8]| RunnerEvent::JobOutput {
        job: r.clone(),
        stream: OutputStream::Stdout,
        offset,
        data: STANDARD.encode(data),
    };
    send_event(&mut client, 3, output(0, b"hello ")).await;
    // Overlaps what is held: only the new bytes count.
    send_event(&mut client, 4, output(3, b"lo world\n")).await;
    send_event(
        &mut client,
        5,
        RunnerEvent::JobFinished {
            job: r.clone(),
            outcome: JobOutcome::Succeeded,
            status: fyn_runner::protocol::ExitStatus::Exited { code: 0 },
            duration_ms: 12,
            stdout_bytes: 12,
            stderr_bytes: 0,
            detail: None,
            cpu_user_ms: None,
            cpu_system_ms: None,
            peak_rss_bytes: None,
            wall_ms: None,
            gpu_memory_peak_bytes: None,
        },
    )
    .await;

    let (status, done) = http(&server, "GET", &format!("/admin/v1/jobs/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(done["state"], json!("finished"));
    assert_eq!(done["outcome"], json!("succeeded"));
    assert_eq!(done["exit_status"], json!({"how": "exited", "code": 0}));
    assert_eq!(done["duration_ms"], json!(12));
    assert_eq!(done["stdout_bytes"], json!(12));
    assert_eq!(done["stderr_bytes"], json!(0));
    assert!(
        done.get("stdout").is_none(),
        "the job view carries no output"
    );
    let (status, out) = http(
        &server,
        "GET",
        &format!("/admin/v1/jobs/{id}/output?stream=stdout"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(out["data"], json!(STANDARD.encode(b"hello world\n")));
    assert_eq!(
        (&out["next_offset"], &out["complete"]),
        (&json!(12), &json!(true))
    );
    let runner = &server.runners()?[0];
    assert_eq!(runner.unacked_commands, 0);
    assert_eq!(runner.slots_free, 2);
    assert_eq!(runner.last_event_index, 5);
    Ok(())
}

#[tokio::test]
async fn a_duplicate_event_is_stored_once_and_acked_twice() -> TestResult {
    let server = start().await;
    let (identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let id = server.submit_job(job_request(&["cat"]))?;
    let (index, _) = expect_start_job(&mut client).await;
    client.send(&RunnerMessage::CommandAck { index }).await;

    let chunk = RunnerEvent::JobOutput {
        job: job_ref(&id, 1),
        stream: OutputStream::Stderr,
        offset: 0,
        data: STANDARD.encode(b"once"),
    };
    send_event(&mut client, 1, chunk.clone()).await;
    send_event(&mut client, 1, chunk).await;

    let events = server.events(&identity.runner_id)?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "job_output");
    assert_eq!(events[0].body["data_bytes"], json!(4));
    assert_eq!(stream_text(&server, &id, OutputStream::Stderr), "once");

    // An event about an attempt the job is not on is stored (and acked) but ignored.
    send_event(
        &mut client,
        2,
        RunnerEvent::JobStarted {
            job: job_ref(&id, 9),
            pid: 1,
        },
    )
    .await;
    assert_eq!(job(&server, &id).state, JobState::Assigned);
    assert_eq!(server.events(&identity.runner_id)?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn unacked_commands_are_resent_after_reconnect() -> TestResult {
    let server = start().await;
    let (identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let (status, created) = http(
        &server,
        "POST",
        "/admin/v1/jobs",
        Some(r#"{"command": ["sleep", "1"], "timeout_secs": 5}"#),
    )
    .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().ok_or("no id")?.to_owned();
    let (index, first) = expect_start_job(&mut client).await;
    // Held and unacknowledged, in the list as for the one runner.
    let listed = server.runners()?.remove(0);
    assert_eq!((listed.unacked_commands, listed.slots_free), (1, 1));
    assert_eq!(server.runner(&listed.id)?, Some(listed));
    drop(client); // without acknowledging

    // The runner resumes: authenticate, then straight to ready (hardware known).
    let (mut client, answer) = reconnect(&server, &identity, 0).await;
    assert!(matches!(answer, ServerMessage::Authenticated { .. }));
    ready(&mut client).await;
    let (again, spec) = expect_start_job(&mut client).await;
    assert_eq!(again, index);
    assert_eq!(spec, first);
    assert_eq!(spec.job_id, id);
    client.send(&RunnerMessage::CommandAck { index }).await;
    client.recv_nothing(Duration::from_millis(200)).await;

    // Once acknowledged, a later session gets nothing again.
    drop(client);
    let (mut client, _) = reconnect(&server, &identity, index).await;
    ready(&mut client).await;
    client.recv_nothing(Duration::from_millis(200)).await;
    assert_eq!(server.runners()?[0].unacked_commands, 0);
    Ok(())
}

#[tokio::test]
async fn last_command_index_in_authenticate_acknowledges() -> TestResult {
    let server = start().await;
    let (identity, mut client) = register(&server).await;
    activate(&mut client).await;
    server.submit_job(job_request(&["true"]))?;
    let (index, _) = expect_start_job(&mut client).await;
    drop(client); // the runner applied it, but its ack was lost with the link

    let (mut client, _) = reconnect(&server, &identity, index).await;
    ready(&mut client).await;
    client.recv_nothing(Duration::from_millis(200)).await;
    assert_eq!(server.runners()?[0].unacked_commands, 0);
    Ok(())
}

#[tokio::test]
async fn cancel_and_drain_send_commands() -> TestResult {
    let server = start().await;
    let (identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let id = server.submit_job(job_request(&["sleep", "100"]))?;
    let (index, _) = expect_start_job(&mut client).await;
    client.send(&RunnerMessage::CommandAck { index }).await;

    let (status, body) = http(
        &server,
        "POST",
        &format!("/admin/v1/jobs/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["cancel_requested"], json!(true));
    assert_eq!(
        client.recv().await,
        ServerMessage::Command {
            index: 2,
            command: Command::CancelJob {
                job_id: id.clone(),
                attempt: 1
            }
        }
    );
    send_event(
        &mut client,
        1,
        RunnerEvent::JobFinished {
            job: job_ref(&id, 1),
            outcome: JobOutcome::Cancelled,
            status: fyn_runner::protocol::ExitStatus::Signaled { signal: 15 },
            duration_ms: 5,
            stdout_bytes: 0,
            stderr_bytes: 0,
            detail: None,
            cpu_user_ms: None,
            cpu_system_ms: None,
            peak_rss_bytes: None,
            wall_ms: None,
            gpu_memory_peak_bytes: None,
        },
    )
    .await;
    assert_eq!(job(&server, &id).state, JobState::Cancelled);
    let (status, _) = http(
        &server,
        "POST",
        &format!("/admin/v1/jobs/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 409);

    let path = format!("/admin/v1/runners/{}/drain", identity.runner_id);
    let (status, body) = http(&server, "POST", &path, Some(r#"{"deadline_secs": 30}"#)).await;
    assert_eq!(status, 202);
    assert_eq!(body["command_index"], json!(3));
    assert_eq!(
        client.recv().await,
        ServerMessage::Command {
            index: 3,
            command: Command::Drain {
                deadline_secs: Some(30)
            }
        }
    );
    client
        .send(&RunnerMessage::Stopping {
            reason: "drain".to_owned(),
            deadline_secs: 30,
        })
        .await;
    // A draining runner gets no new job.
    let queued = server.submit_job(job_request(&["true"]))?;
    client.recv_nothing(Duration::from_millis(200)).await;
    assert_eq!(job(&server, &queued).state, JobState::Queued);
    let runner = server.runner(&identity.runner_id)?.ok_or("runner")?;
    assert_eq!(runner.state, RunnerState::Draining);
    assert!(runner.draining);

    // A queued job is cancelled at once.
    let (status, body) = http(
        &server,
        "POST",
        &format!("/admin/v1/jobs/{queued}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], json!("cancelled"));
    Ok(())
}

#[tokio::test]
async fn rejected_jobs_are_queued_again_or_failed() -> TestResult {
    let server = start().await;
    let (_identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let id = server.submit_job(job_request(&["true"]))?;
    let (first, _) = expect_start_job(&mut client).await;
    client
        .send(&RunnerMessage::CommandAck { index: first })
        .await;
    let rejected = |reason| RunnerEvent::JobRejected {
        job: job_ref(&id, 1),
        reason,
        detail: "test".to_owned(),
    };
    // "Not now": queued again, and handed out again by the periodic pass.
    send_event(&mut client, 1, rejected(RejectReason::NoFreeSlot)).await;
    let (second, spec) = expect_start_job(&mut client).await;
    assert_eq!((second, spec.attempt), (first + 1, 1));
    // "Never": the job fails.
    send_event(&mut client, 2, rejected(RejectReason::InvalidSpec)).await;
    let failed = job(&server, &id);
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(
        failed.detail.as_deref(),
        Some("rejected (invalid_spec): test")
    );
    Ok(())
}

/// `already_run`: the attempt ended on the runner and its result never reached the
/// job; it counts as lost, and the job goes out again as the next attempt.
#[tokio::test]
async fn a_job_rejected_as_already_run_is_queued_again_as_the_next_attempt() -> TestResult {
    let server = start().await;
    let (_identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let id = server.submit_job(job_request(&["true"]))?;
    let (first, _) = expect_start_job(&mut client).await;
    client
        .send(&RunnerMessage::CommandAck { index: first })
        .await;
    let already_run = RunnerEvent::JobRejected {
        job: job_ref(&id, 1),
        reason: RejectReason::AlreadyRun,
        detail: "attempt 1 already ran here".to_owned(),
    };
    send_event(&mut client, 1, already_run).await;
    let (_, spec) = expect_start_job(&mut client).await;
    assert_eq!(spec.attempt, 2, "a new attempt");
    assert!(
        job(&server, &id)
            .detail
            .unwrap_or_default()
            .contains("already_run")
    );
    Ok(())
}

#[tokio::test]
async fn hardware_changes_are_applied_or_a_full_report_is_asked_for() -> TestResult {
    let server = start().await;
    let (identity, mut client) = register(&server).await;
    activate(&mut client).await;
    drop(client);

    let (mut client, _) = reconnect(&server, &identity, 0).await;
    client
        .send(&RunnerMessage::HardwareChanges {
            changes: serde_json::from_value(
                json!([{"path": "cpu.logical_cores", "old": 4, "new": 8}]),
            )?,
        })
        .await;
    assert_eq!(client.recv().await, ServerMessage::HardwareConfirmed {});
    let runner = server.runner(&identity.runner_id)?.ok_or("runner")?;
    assert_eq!(
        runner.hardware.ok_or("hardware")?["cpu"]["logical_cores"],
        json!(8)
    );
    assert!(runner.hardware_known);

    // A change that does not fit the stored record: confirmed, but asked for in full.
    client
        .send(&RunnerMessage::HardwareChanges {
            changes: serde_json::from_value(
                json!([{"path": "cpu.logical_cores", "old": 2, "new": 16}]),
            )?,
        })
        .await;
    assert_eq!(client.recv().await, ServerMessage::HardwareConfirmed {});
    drop(client);
    let (_client, answer) = reconnect(&server, &identity, 0).await;
    assert!(matches!(
        answer,
        ServerMessage::Authenticated {
            hardware_known: false,
            ..
        }
    ));
    Ok(())
}

// ---------------------------------------------------------------- restart and runner-lost

#[tokio::test]
async fn a_restart_on_the_same_db_keeps_the_runner() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = DevServerConfig {
        db: Some(dir.path().join("dev.db")),
        ..DevServerConfig::ephemeral()
    };
    let server = start_with(config.clone()).await;
    let (identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let id = server.submit_job(job_request(&["true"]))?;
    let (index, _) = expect_start_job(&mut client).await;
    client.send(&RunnerMessage::CommandAck { index }).await;
    send_event(
        &mut client,
        1,
        RunnerEvent::JobAccepted {
            job: job_ref(&id, 1),
        },
    )
    .await;
    send_event(
        &mut client,
        2,
        RunnerEvent::JobStarted {
            job: job_ref(&id, 1),
            pid: 9,
        },
    )
    .await;
    let addr = server.local_addr();
    server.shutdown().await;
    // The server closed the runner's socket on the way out.
    assert_eq!(client.close_code().await, 1000);

    let restarted = start_with(DevServerConfig {
        listen: addr,
        ..config
    })
    .await;
    assert_eq!(restarted.local_addr(), addr);
    let (mut client, answer) = reconnect(&restarted, &identity, index).await;
    assert_eq!(
        answer,
        ServerMessage::Authenticated {
            runner_id: identity.runner_id.clone(),
            last_event_index: 2,
            session: SessionParams::default(),
            hardware_known: true,
        }
    );
    assert_eq!(job(&restarted, &id).state, JobState::Running);
    ready(&mut client).await;
    // Event indexes go on where they were; a resend of an old one is a duplicate.
    send_event(
        &mut client,
        2,
        RunnerEvent::JobStarted {
            job: job_ref(&id, 1),
            pid: 9,
        },
    )
    .await;
    send_event(
        &mut client,
        3,
        RunnerEvent::JobAccepted {
            job: job_ref(&id, 1),
        },
    )
    .await;
    assert_eq!(restarted.events(&identity.runner_id)?.len(), 3);
    // Command indexes too.
    let next = restarted.drain_runner(&identity.runner_id, None)?;
    assert_eq!(next, index + 1);
    restarted.shutdown().await;
    Ok(())
}

fn lost_after_200ms() -> DevServerConfig {
    DevServerConfig {
        session: SessionParams {
            runner_lost_threshold_ms: 200,
            ..SessionParams::default()
        },
        ..DevServerConfig::ephemeral()
    }
}

/// An Active runner with one started job; returns the job ID and start_job's index.
async fn runner_with_a_started_job(server: &DevServer) -> (Identity, Client, String, u64) {
    let (identity, mut client) = register(server).await;
    activate(&mut client).await;
    let id = server
        .submit_job(job_request(&["sleep", "100"]))
        .expect("the job is queued");
    let (index, _) = expect_start_job(&mut client).await;
    client.send(&RunnerMessage::CommandAck { index }).await;
    send_event(
        &mut client,
        1,
        RunnerEvent::JobStarted {
            job: job_ref(&id, 1),
            pid: 3,
        },
    )
    .await;
    (identity, client, id, index)
}

/// Poll the admin API until the job is on `attempt`, for at most five seconds.
async fn wait_for_attempt(server: &DevServer, id: &str, attempt: u32) -> Value {
    let path = format!("/admin/v1/jobs/{id}");
    for _ in 0..100 {
        let (_, body) = http(server, "GET", &path, None).await;
        if body["attempt"] == json!(attempt) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never reached attempt {attempt}");
}

#[tokio::test]
async fn a_lost_runner_gives_its_jobs_away() -> TestResult {
    let server = start_with(lost_after_200ms()).await;
    let (identity, client, id, index) = runner_with_a_started_job(&server).await;
    drop(client);

    let requeued = wait_for_attempt(&server, &id, 2).await;
    assert_eq!(requeued["state"], json!("queued"), "{requeued}");
    assert_eq!(requeued["runner"], Value::Null);
    let runner = server.runner(&identity.runner_id)?.ok_or("runner")?;
    assert!(!runner.connected);
    assert_eq!(runner.state, RunnerState::Disconnected);

    // The runner comes back before its own runner-lost clock stopped the job: it is
    // told to cancel the old attempt, and gets the new one only once that ended.
    let (mut client, _) = reconnect(&server, &identity, index).await;
    ready(&mut client).await;
    assert_eq!(
        client.recv().await,
        ServerMessage::Command {
            index: index + 1,
            command: Command::CancelJob {
                job_id: id.clone(),
                attempt: 1
            }
        }
    );
    client.recv_nothing(Duration::from_millis(300)).await;
    client
        .send(&RunnerMessage::CommandAck { index: index + 1 })
        .await;
    send_event(
        &mut client,
        2,
        RunnerEvent::JobFinished {
            job: job_ref(&id, 1),
            outcome: JobOutcome::Cancelled,
            status: fyn_runner::protocol::ExitStatus::Signaled { signal: 15 },
            duration_ms: 1,
            stdout_bytes: 0,
            stderr_bytes: 0,
            detail: None,
            cpu_user_ms: None,
            cpu_system_ms: None,
            peak_rss_bytes: None,
            wall_ms: None,
            gpu_memory_peak_bytes: None,
        },
    )
    .await;
    let (next, spec) = expect_start_job(&mut client).await;
    assert_eq!(next, index + 2);
    assert_eq!((spec.job_id.as_str(), spec.attempt), (id.as_str(), 2));
    let current = job(&server, &id);
    assert_eq!((current.state, current.attempt), (JobState::Assigned, 2));
    Ok(())
}

#[tokio::test]
async fn a_lost_runners_job_goes_to_another_runner() -> TestResult {
    let server = start_with(lost_after_200ms()).await;
    let (_lost, client, id, _) = runner_with_a_started_job(&server).await;
    let (_other, mut other) = register(&server).await;
    activate(&mut other).await;
    drop(client);

    let (_, spec) = expect_start_job(&mut other).await;
    assert_eq!((spec.job_id.as_str(), spec.attempt), (id.as_str(), 2));
    let body = wait_for_attempt(&server, &id, 2).await;
    assert_eq!(body["state"], json!("assigned"));
    Ok(())
}

#[tokio::test]
async fn a_lost_runner_still_gets_a_pending_cancel() -> TestResult {
    let server = start_with(lost_after_200ms()).await;
    let (identity, mut client, id, index) = runner_with_a_started_job(&server).await;
    server.cancel_job(&id)?;
    assert!(matches!(
        client.recv().await,
        ServerMessage::Command {
            command: Command::CancelJob { .. },
            ..
        }
    ));
    drop(client); // before acknowledging the cancel

    let mut cancelled = false;
    for _ in 0..100 {
        if job(&server, &id).state == JobState::Cancelled {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cancelled,
        "the job of a lost runner with a cancel pending is cancelled"
    );

    // Back before its own clock stopped the job: the cancel still reaches it.
    let (mut client, _) = reconnect(&server, &identity, index).await;
    ready(&mut client).await;
    assert_eq!(
        client.recv().await,
        ServerMessage::Command {
            index: index + 1,
            command: Command::CancelJob {
                job_id: id.clone(),
                attempt: 1
            }
        }
    );
    Ok(())
}

// ---------------------------------------------------------------- retiring commands

/// Section 5.4/6.1: the runner says, by event, that it can never apply a command; the
/// server retires it (no resend, in this session or the next) and fails its job.
#[tokio::test]
async fn a_command_the_runner_rejects_is_retired_and_its_job_fails() -> TestResult {
    let server = start().await;
    let (identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let id = server.submit_job(job_request(&["true"]))?;
    let (index, _) = expect_start_job(&mut client).await;
    // Sent by hand, exactly as the document writes it, then the acknowledgement.
    let rejected = format!(
        r#"{{"type": "event", "index": 1, "event": {{"kind": "command_rejected", "index": {index}, "reason": "field `job` is malformed"}}}}"#
    );
    client.send_text(rejected).await;
    assert_eq!(client.recv().await, ServerMessage::EventsAck { up_to: 1 });
    client.send(&RunnerMessage::CommandAck { index }).await;

    let failed = job(&server, &id);
    assert_eq!(failed.state, JobState::Failed);
    let detail = failed.detail.unwrap_or_default();
    assert!(detail.contains("field `job` is malformed"), "{detail}");
    assert_eq!(server.runners()?[0].slots_free, 2, "the slot is free again");

    // Not resent, even to a runner that says it applied nothing.
    drop(client);
    let (mut client, _) = reconnect(&server, &identity, 0).await;
    ready(&mut client).await;
    client.recv_nothing(Duration::from_millis(200)).await;
    assert_eq!(server.runners()?[0].unacked_commands, 0);

    // An index never issued is logged and otherwise ignored (still acknowledged).
    send_event(
        &mut client,
        2,
        RunnerEvent::CommandRejected {
            index: 999,
            reason: "what?".to_owned(),
        },
    )
    .await;
    Ok(())
}

/// A database from before the frame check can hold a `start_job` over the limit, and
/// one from another build a body this one cannot read: both are retired with a log
/// line at the next resend, never sent, and the session goes on.
#[tokio::test]
async fn stored_commands_that_cannot_be_sent_are_retired() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("dev.db");
    let config = DevServerConfig {
        db: Some(db.clone()),
        ..DevServerConfig::ephemeral()
    };
    let server = start_with(config.clone()).await;
    let (identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let big = server.submit_job(job_request(&["true"]))?;
    let (big_index, _) = expect_start_job(&mut client).await;
    let bad = server.submit_job(job_request(&["true"]))?;
    let (bad_index, _) = expect_start_job(&mut client).await;
    drop(client);
    server.shutdown().await;

    // Tamper with the stored commands, as an older or other build would have left them.
    {
        let (big_index, bad_index) = (i64::try_from(big_index)?, i64::try_from(bad_index)?);
        let conn = rusqlite::Connection::open(&db)?;
        let body: String = conn.query_row(
            "SELECT body FROM commands WHERE idx = ?1",
            [big_index],
            |row| row.get(0),
        )?;
        let huge = body.replacen(
            r#""command":["true"]"#,
            &format!(r#""command":["true","{}"]"#, "x".repeat(MAX_FRAME_BYTES)),
            1,
        );
        assert_ne!(huge, body);
        conn.execute(
            "UPDATE commands SET body = ?1 WHERE idx = ?2",
            rusqlite::params![huge, big_index],
        )?;
        let unreadable = format!(
            r#"{{"kind": "start_job", "job": {{"job_id": "{bad}", "attempt": 1, "command": "not a list"}}}}"#
        );
        conn.execute(
            "UPDATE commands SET body = ?1 WHERE idx = ?2",
            rusqlite::params![unreadable, bad_index],
        )?;
    }

    let server = start_with(config).await;
    let (mut client, _) = reconnect(&server, &identity, 0).await;
    ready(&mut client).await;
    client.recv_nothing(Duration::from_millis(300)).await;
    assert_eq!(server.runners()?[0].unacked_commands, 0);
    let big_job = job(&server, &big);
    assert_eq!(big_job.state, JobState::Failed);
    assert!(big_job.detail.unwrap_or_default().contains("limit"));
    let bad_job = job(&server, &bad);
    assert_eq!(bad_job.state, JobState::Failed);
    assert!(bad_job.detail.unwrap_or_default().contains("cannot read"));
    assert_eq!(server.runners()?[0].slots_free, 2);
    // Nothing was sent, and the session is alive.
    client
        .send(&RunnerMessage::Heartbeat {
            seq: 1,
            jobs_running: 0,
        })
        .await;
    assert_eq!(client.recv().await, ServerMessage::HeartbeatAck { seq: 1 });
    server.shutdown().await;
    Ok(())
}

/// The runner's reason for a job that could not start reaches the API's job view.
#[tokio::test]
async fn a_job_finished_detail_is_shown_with_the_job() -> TestResult {
    let server = start().await;
    let (_identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let id = server.submit_job(job_request(&["no-such-program"]))?;
    let (index, _) = expect_start_job(&mut client).await;
    client.send(&RunnerMessage::CommandAck { index }).await;
    // As the document writes it: `detail` is an optional field of job_finished.
    let finished = format!(
        r#"{{"type": "event", "index": 1, "event": {{"kind": "job_finished", "job": {{"job_id": "{id}", "attempt": 1}}, "outcome": "failed", "status": {{"how": "unknown"}}, "duration_ms": 0, "stdout_bytes": 0, "stderr_bytes": 0, "detail": "cannot start no-such-program: No such file or directory"}}}}"#
    );
    client.send_text(finished).await;
    assert_eq!(client.recv().await, ServerMessage::EventsAck { up_to: 1 });
    let (status, body) = http(&server, "GET", &format!("/admin/v1/jobs/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["outcome"], json!("failed"));
    assert_eq!(
        body["detail"],
        json!("cannot start no-such-program: No such file or directory")
    );
    Ok(())
}

// ---------------------------------------------------------------- handshake timeout

/// An unauthenticated connection is closed after the handshake timeout whatever it
/// sends: WebSocket pings every few milliseconds do not keep it open.
#[tokio::test]
async fn pings_do_not_keep_an_unauthenticated_connection_open() -> TestResult {
    let server = start_with(DevServerConfig {
        handshake_timeout_ms: 300,
        ..DevServerConfig::ephemeral()
    })
    .await;
    for frame in [Message::Ping(vec![1].into()), Message::Pong(vec![1].into())] {
        let mut client = Client::connect(&server).await;
        let started = std::time::Instant::now();
        let pinger = async {
            loop {
                if client.ws.send(frame.clone()).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // The pinger stops when the server closes the socket; the close frame was read
        // by its sends' flushes, so look at the time instead.
        let _ = tokio::time::timeout(Duration::from_secs(5), pinger).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "closed after {took:?}"
        );
    }
    // A registration that completes in time is not cut.
    let (_identity, mut client) = register(&server).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    client
        .send(&RunnerMessage::Startup {
            version: "0.1.0".to_owned(),
            jobs: Vec::new(),
        })
        .await;
    assert_eq!(client.recv().await, ServerMessage::StartupAck {});
    Ok(())
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn bad_frames_close_with_the_mapped_code() -> TestResult {
    let server = start().await;
    let cases: Vec<(&str, Message, u16)> = vec![
        ("garbage", Message::text("{not json"), 1007),
        ("no type", Message::text(r#"{"token": "x"}"#), 1007),
        ("unknown type", Message::text(r#"{"type": "bogus"}"#), 1007),
        (
            "malformed",
            Message::text(r#"{"type": "heartbeat", "seq": "x"}"#),
            1007,
        ),
        ("binary", Message::binary(vec![1u8, 2, 3]), 1007),
        (
            "oversized",
            Message::text("x".repeat(MAX_FRAME_BYTES + 1)),
            1009,
        ),
        (
            "out of phase",
            Message::text(encode(&RunnerMessage::Ready { slots_free: 1 })),
            4002,
        ),
    ];
    for (name, frame, code) in cases {
        let mut client = Client::connect(&server).await;
        client.ws.send(frame).await?;
        assert_eq!(client.close_code().await, code, "case {name}");
    }
    // Still serving.
    let (identity, mut client) = register(&server).await;
    client.send_text(r#"{"type": "startup"}"#.to_owned()).await;
    assert_eq!(client.close_code().await, 1007);
    let (_client, answer) = reconnect(&server, &identity, 0).await;
    assert!(matches!(answer, ServerMessage::Authenticated { .. }));
    Ok(())
}

#[tokio::test]
async fn the_upgrade_requires_the_subprotocol() -> TestResult {
    let server = start().await;
    let result = tokio_tungstenite::connect_async(server.runner_url()).await;
    match result {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected an HTTP 400, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn admin_api_errors_are_json() -> TestResult {
    let server = start().await;
    let cases = [
        ("GET", "/admin/v1/jobs/j-missing", None, 404),
        ("POST", "/admin/v1/jobs/j-missing/cancel", None, 404),
        ("GET", "/admin/v1/runners/r-missing", None, 404),
        ("POST", "/admin/v1/runners/r-missing/drain", None, 404),
        ("GET", "/admin/v1/nothing-here", None, 404),
        ("DELETE", "/admin/v1/jobs", None, 405),
        ("POST", "/admin/v1/jobs", Some("{"), 400),
        (
            "POST",
            "/admin/v1/jobs",
            Some(r#"{"command": [], "timeout_secs": 5}"#),
            400,
        ),
        (
            "POST",
            "/admin/v1/jobs",
            Some(r#"{"command": ["true"], "timeout_secs": 0}"#),
            400,
        ),
        (
            "POST",
            "/admin/v1/jobs",
            Some(r#"{"command": ["true"], "timeout_secs": 5, "shell": true}"#),
            400,
        ),
    ];
    for (method, path, body, code) in cases {
        let (status, json) = http(&server, method, path, body).await;
        assert_eq!(status, code, "{method} {path}");
        assert!(json["error"].is_string(), "{method} {path}: {json}");
    }
    let (status, jobs) = http(&server, "GET", "/admin/v1/jobs", None).await;
    assert_eq!((status, jobs), (200, json!([])));
    Ok(())
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn serves_wss_with_a_self_signed_certificate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let server = start_with(DevServerConfig {
        tls: Some(TlsFiles { cert, key }),
        ..DevServerConfig::ephemeral()
    })
    .await;
    assert!(server.url().starts_with("wss://localhost:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = Connector::Rustls(Arc::new(tls));
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        runner_request(&server),
        None,
        false,
        Some(connector),
    )
    .await?;
    let mut client = Client::after_upgrade(ws).await;
    client
        .send(&RunnerMessage::ValidateToken {
            token: server.mint_token()?,
        })
        .await;
    assert_eq!(client.recv().await, ServerMessage::TokenAccepted {});
    server.shutdown().await;
    Ok(())
}
