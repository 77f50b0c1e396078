//! §4.1 at the runner: registration retries what is transient (a refused connection, a
//! 5xx at the upgrade, a cut before `registered`) with the backoff while it holds the token in memory, keeps
//! its key pair (on disk, before `register` is sent) so every `register` carries the
//! same public key — in the same process and after a crash — and stops only on what is
//! final: `token_rejected` (exit 3), a `hello` of another version (exit 6).

use std::time::Duration;

use serde_json::json;

use crate::api::{FakeApi, STEP};
use crate::runner::Runner;

/// A control plane that is not up yet (the connection refused, again and again) is
/// waited for: the runner backs off and registers once it answers.
#[tokio::test]
async fn registration_waits_for_a_control_plane_that_refuses_connections() {
    let addr = FakeApi::address_not_yet_listening();
    let mut runner = Runner::binary_registering(&format!("ws://{addr}"), "tok-0", "r-late");
    // A few refused attempts (the first backoff steps are under a second each).
    tokio::time::sleep(Duration::from_secs(2)).await;
    runner.assert_running();
    let mut api = FakeApi::start_at(addr).await;
    let mut conn = api.accept().await;
    conn.hello();
    let validate = conn.expect("validate_token").await;
    assert_eq!(validate["token"], "tok-0", "the token is held in memory");
    conn.send(json!({"type": "token_accepted"}));
    conn.expect("register").await;
    conn.send(json!({"type": "registered", "runner_id": "r-late"}));
    conn.expect("authenticate").await;
    runner.assert_running();
    let log = runner.log();
    assert!(log.contains("connection attempt failed"), "{log}");
}

#[tokio::test]
async fn registration_survives_503s_and_a_cut_after_register_with_the_same_key() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary_registering(api.url(), "tok-1", "r-registered");
    for _ in 0..3 {
        api.refuse_upgrade(503).await;
    }
    let mut conn = api.accept().await;
    conn.hello();
    conn.expect("validate_token").await;
    conn.send(json!({"type": "token_accepted"}));
    let first = conn.expect("register").await;
    // Persist before send: the key is on disk, private, before `register` is sent.
    let identity = runner.state_dir().join("identity");
    assert!(
        identity.join("key").exists(),
        "the key is kept before register"
    );
    assert!(!identity.join("runner.json").exists(), "not registered yet");
    drop(conn); // a cut right after the server's commit
    let mut conn = api.accept().await;
    conn.hello();
    let validate = conn.expect("validate_token").await;
    assert_eq!(validate["token"], "tok-1", "the token is held in memory");
    conn.send(json!({"type": "token_accepted"}));
    let again = conn.expect("register").await;
    assert_eq!(first["public_key"], again["public_key"], "the key is kept");
    conn.send(json!({"type": "registered", "runner_id": "r-registered"}));
    let authenticate = conn.expect("authenticate").await;
    assert_eq!(authenticate["runner_id"], "r-registered");
    runner.assert_running();
    assert!(
        identity.join("runner.json").exists(),
        "the identity is saved"
    );
}

/// A runner killed after the server committed its `register` (before `registered`
/// reached it) registers again with the key it kept: an idempotent server answers
/// with the same runner ID (§4.1).
#[tokio::test]
async fn a_runner_killed_after_register_registers_again_with_the_same_key() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary_registering(api.url(), "tok-2", "r-again");
    let mut conn = api.accept().await;
    conn.hello();
    conn.expect("validate_token").await;
    conn.send(json!({"type": "token_accepted"}));
    let first = conn.expect("register").await;
    runner.kill_and_restart().await;
    drop(conn);
    let mut conn = api.accept().await;
    conn.hello();
    conn.expect("validate_token").await;
    conn.send(json!({"type": "token_accepted"}));
    let again = conn.expect("register").await;
    assert_eq!(first["public_key"], again["public_key"], "the kept key");
    conn.send(json!({"type": "registered", "runner_id": "r-again"}));
    conn.expect("authenticate").await;
    runner.assert_running();
}

/// `token_rejected` after `register` (a spent token, another key): final, and the key
/// kept for it is removed, since no runner holds it under this token.
#[tokio::test]
async fn token_rejected_after_register_is_final_and_forgets_the_key() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary_registering(api.url(), "tok-spent", "r-none");
    let mut conn = api.accept().await;
    conn.hello();
    conn.expect("validate_token").await;
    conn.send(json!({"type": "token_accepted"}));
    conn.expect("register").await;
    conn.send(json!({"type": "token_rejected", "reason": "token spent by another key"}));
    conn.send_close(1000, "bye");
    assert_eq!(runner.exit_code(STEP).await, Some(3), "{}", runner.log());
    assert!(
        !runner.state_dir().join("identity").exists(),
        "the key is gone"
    );
    api.no_connection_within(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn token_rejected_is_final_exit_3() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary_registering(api.url(), "tok-used", "r-none");
    let mut conn = api.accept().await;
    conn.hello();
    conn.expect("validate_token").await;
    conn.send(json!({"type": "token_rejected", "reason": "unknown or used token"}));
    conn.send_close(1000, "bye");
    assert_eq!(runner.exit_code(STEP).await, Some(3), "{}", runner.log());
    api.no_connection_within(Duration::from_secs(2)).await;
}

/// §3: a `hello` of another protocol version during registration stops the runner
/// with exit code 6 (incompatible), as it does after authentication, not 3.
#[tokio::test]
async fn a_foreign_hello_during_registration_exits_6() {
    let mut api = FakeApi::start().await;
    let mut runner = Runner::binary_registering(api.url(), "tok-3", "r-new");
    let conn = api.accept().await;
    conn.send(json!({"type": "hello", "protocol": 2, "nonce": "n"}));
    assert_eq!(runner.exit_code(STEP).await, Some(6), "{}", runner.log());
    api.no_connection_within(Duration::from_secs(2)).await;
}
