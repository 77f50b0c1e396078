//! The session end to end: the real runtime against the reference control plane, on
//! loopback with port 0. Timing uses short session parameters and bounded waits; the
//! backoff arithmetic itself is tested under paused time in `runtime::timers`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fyn_runner::core::{CoreConfig, ExitCode};
use fyn_runner::devserver::{DevServer, DevServerConfig};
use fyn_runner::protocol::SessionParams;
use fyn_runner::runtime::{self, RunnerHandle, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(20);

fn session() -> SessionParams {
    SessionParams {
        heartbeat_interval_ms: 400,
        ack_timeout_ms: 300,
        runner_lost_threshold_ms: 5_000,
    }
}

async fn dev_server(db: Option<&Path>, listen: Option<SocketAddr>) -> DevServer {
    let mut config = DevServerConfig::ephemeral();
    config.session = session();
    config.db = db.map(Path::to_path_buf);
    if let Some(addr) = listen {
        config.listen = addr;
    }
    DevServer::start(config).await.expect("dev-server starts")
}

fn settings(server: &DevServer, state_dir: &Path, token: Option<String>) -> RunnerSettings {
    RunnerSettings {
        token: token.map(Secret::new),
        name: "test-runner".into(),
        core: CoreConfig {
            slots: 2,
            handshake_timeout_ms: 5_000,
            ..CoreConfig::default()
        },
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(2),
        ..RunnerSettings::new(
            runtime::settings::endpoint(&server.url(), false).expect("loopback url"),
            state_dir.to_path_buf(),
        )
    }
}

async fn until_active(handle: &mut RunnerHandle) {
    let status = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("reaches Active in time");
    assert_eq!(status.state, "Active", "ended in {status:?}");
}

async fn stop(handle: RunnerHandle) -> ExitCode {
    handle.shutdown();
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops in time")
}

#[tokio::test]
async fn fresh_registration_reaches_active_and_restarts_with_its_identity() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut handle =
        runtime::start(settings(&server, dir.path(), Some(token.clone()))).expect("starts");
    until_active(&mut handle).await;
    let runner_id = handle
        .status
        .borrow()
        .runner_id
        .clone()
        .expect("registered");

    let runners = server.runners().expect("runners");
    let me = runners
        .iter()
        .find(|r| r.id == runner_id)
        .expect("the API knows the runner");
    assert!(me.connected);
    assert!(me.hardware.is_some(), "the full hardware record was sent");

    // The identity is private; the token is nowhere on disk.
    let identity = dir.path().join("identity");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&identity)
                .expect("identity dir")
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(identity.join("key"))
                .expect("key")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    #[cfg(windows)]
    for private in [
        dir.path().join("identity"),
        dir.path().join("identity").join("key"),
    ] {
        fyn_runner::runtime::secure_fs::check_private(&private).expect("private");
    }
    assert_no_file_contains(dir.path(), &token);
    // Nor is the private key anywhere but its own file: not in the store, not in the
    // session trace (which records every event and effect of the registration).
    let key_text = std::fs::read_to_string(identity.join("key")).expect("key");
    let trace = handle.trace_path().expect("tracing is on").to_path_buf();
    let trace_text = std::fs::read_to_string(&trace).expect("trace");
    assert!(
        trace_text.contains("KeyGenerated") || trace_text.contains("key_generated"),
        "the trace covers registration"
    );
    assert!(
        !trace_text.contains(key_text.trim()),
        "the trace holds the private key"
    );
    assert!(!trace_text.contains(&token), "the trace holds the token");
    assert!(
        !std::fs::read(dir.path().join("runner.db"))
            .expect("db")
            .windows(key_text.trim().len())
            .any(|w| w == key_text.trim().as_bytes())
    );

    assert_eq!(stop(handle).await, ExitCode::Clean);

    // A restart uses the stored identity: no token needed, same runner.
    let mut handle = runtime::start(settings(&server, dir.path(), None)).expect("restarts");
    until_active(&mut handle).await;
    assert_eq!(
        handle.status.borrow().runner_id.as_deref(),
        Some(runner_id.as_str())
    );
    assert_eq!(stop(handle).await, ExitCode::Clean);
    server.shutdown().await;
}

#[tokio::test]
async fn a_wrong_or_reused_token_is_refused_and_nothing_is_written() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let handle =
        runtime::start(settings(&server, dir.path(), Some("not-a-token".into()))).expect("starts");
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("ends"),
        ExitCode::RegistrationFailed
    );
    assert!(
        !dir.path().join("identity").exists(),
        "no identity after a refused token"
    );

    let token = server.mint_token().expect("token");
    let first = tempfile::tempdir().expect("tempdir");
    let mut handle =
        runtime::start(settings(&server, first.path(), Some(token.clone()))).expect("starts");
    until_active(&mut handle).await;
    let second = tempfile::tempdir().expect("tempdir");
    let reused = runtime::start(settings(&server, second.path(), Some(token))).expect("starts");
    assert_eq!(
        tokio::time::timeout(WAIT, reused.wait())
            .await
            .expect("ends"),
        ExitCode::RegistrationFailed
    );
    assert!(!second.path().join("identity").exists());
    assert_eq!(stop(handle).await, ExitCode::Clean);
    server.shutdown().await;
}

#[tokio::test]
async fn a_dev_server_restart_with_its_database_brings_the_runner_back_to_active() {
    let db_dir = tempfile::tempdir().expect("tempdir");
    let db = db_dir.path().join("dev.db");
    let server = dev_server(Some(&db), None).await;
    let addr = server.local_addr();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut handle = runtime::start(settings(&server, dir.path(), Some(token))).expect("starts");
    until_active(&mut handle).await;
    let runner_id = handle
        .status
        .borrow()
        .runner_id
        .clone()
        .expect("registered");
    let transitions = handle.status.borrow().transitions;

    server.shutdown().await;
    tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Reconnecting"))
        .await
        .expect("notices the loss");
    let server = dev_server(Some(&db), Some(addr)).await;
    let status = tokio::time::timeout(
        WAIT,
        handle.wait_for(|s| s.state == "Active" && s.transitions > transitions + 1),
    )
    .await
    .expect("back to Active");
    assert_eq!(status.state, "Active");
    let me = server
        .runner(&runner_id)
        .expect("query")
        .expect("the restarted API still knows the runner");
    assert!(
        me.connected && me.hardware.is_some(),
        "in sync after the restart: {me:?}"
    );
    assert_eq!(stop(handle).await, ExitCode::Clean);
    server.shutdown().await;
}

#[tokio::test]
async fn a_second_instance_with_the_same_identity_evicts_the_first() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut first = runtime::start(settings(&server, dir.path(), Some(token))).expect("starts");
    until_active(&mut first).await;
    stop_nothing_but_copy(dir.path(), &dir.path().with_extension("copy"));
    let copy = dir.path().with_extension("copy");
    let mut second = runtime::start(settings(&server, &copy, None)).expect("starts");
    until_active(&mut second).await;
    assert_eq!(
        tokio::time::timeout(WAIT, first.wait())
            .await
            .expect("the first stops"),
        ExitCode::Evicted
    );
    assert_eq!(stop(second).await, ExitCode::Clean);
    let _ = std::fs::remove_dir_all(&copy);
    server.shutdown().await;
}

/// Copy a state directory (identity and store), permissions included, as an operator
/// cloning a VM would.
fn stop_nothing_but_copy(from: &Path, to: &Path) {
    std::fs::create_dir(to).expect("the copy's folder");
    for entry in std::fs::read_dir(from).expect("readable") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("a type");
        if kind.is_dir() {
            stop_nothing_but_copy(&entry.path(), &target);
        } else if kind.is_file() {
            // Copies the permission bits too.
            std::fs::copy(entry.path(), &target).expect("copied");
        }
        // The running runner's control socket is its own; the copy makes its own.
    }
    let permissions = std::fs::metadata(from).expect("metadata").permissions();
    std::fs::set_permissions(to, permissions).expect("the folder's permissions");
}

fn assert_no_file_contains(dir: &Path, needle: &str) {
    for entry in std::fs::read_dir(dir).expect("readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            assert_no_file_contains(&path, needle);
        } else if path.is_file() {
            let bytes = std::fs::read(&path).expect("readable file");
            let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!found, "{} contains the registration token", path.display());
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_key_readable_by_others_is_refused_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut handle = runtime::start(settings(&server, dir.path(), Some(token))).expect("starts");
    until_active(&mut handle).await;
    assert_eq!(stop(handle).await, ExitCode::Clean);

    let key = dir.path().join("identity").join("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let error = match runtime::start(settings(&server, dir.path(), None)) {
        Ok(_) => panic!("a group/other-readable key must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("key") && error.contains("0644") && error.contains("chmod 600"),
        "{error}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn status_and_drain_through_the_control_socket() {
    use fyn_runner::runtime::control::{ControlError, ControlRequest, ControlResponse, request};
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut handle = runtime::start(settings(&server, dir.path(), Some(token))).expect("starts");
    until_active(&mut handle).await;

    let ControlResponse::Status { status } = request(dir.path(), &ControlRequest::Status)
        .await
        .expect("answers")
    else {
        panic!("a status answer")
    };
    assert_eq!(status.state, "Active");
    assert_eq!(status.runner_id, handle.status.borrow().runner_id);
    assert!(status.session_since_ms.is_some());

    // A second runner on the same state directory is refused while this one runs.
    let error = match runtime::start(settings(&server, dir.path(), None)) {
        Ok(_) => panic!("two runners on one state directory"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("already using"), "{error}");

    let reply = request(
        dir.path(),
        &ControlRequest::Drain {
            deadline_secs: Some(5),
            force: false,
            uninstall: false,
        },
    )
    .await
    .expect("answers");
    assert!(matches!(reply, ControlResponse::Draining { .. }));
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops"),
        ExitCode::Clean
    );
    // Gone with the runner: the socket is removed.
    assert!(matches!(
        request(dir.path(), &ControlRequest::Status).await,
        Err(ControlError::NotRunning { .. })
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn a_runner_that_leaves_is_forgotten_by_the_api() {
    let server = dev_server(None, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut handle = runtime::start(settings(&server, dir.path(), Some(token))).expect("starts");
    until_active(&mut handle).await;
    let runner_id = handle
        .status
        .borrow()
        .runner_id
        .clone()
        .expect("registered");
    assert_eq!(stop(handle).await, ExitCode::Clean);

    let left = runtime::leave::leave(&settings(&server, dir.path(), None), Duration::from_secs(5))
        .await
        .expect("the API confirms");
    assert_eq!(left, runner_id);
    assert!(
        server.runner(&runner_id).expect("query").is_none(),
        "forgotten"
    );
    // Its identity no longer opens a session.
    let handle = runtime::start(settings(&server, dir.path(), None)).expect("starts");
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("ends"),
        ExitCode::AuthRejected
    );
    server.shutdown().await;
}
