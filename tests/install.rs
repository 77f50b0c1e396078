//! Installing through the lifecycle machine (seed 000's installation): folders, config,
//! registration, service — and a rollback of exactly what was created when any step
//! fails. The service step here is a stand-in; the systemd/launchd call sequences are
//! tested against a fake command runner in `tests/service.rs`.

#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fyn_runner::core::{CoreConfig, ExitCode};
use fyn_runner::devserver::{DevServer, DevServerConfig};
use fyn_runner::runtime::install::{InstallPlan, ServiceStep};
use fyn_runner::runtime::{self, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(20);

fn settings(server: &DevServer, state_dir: &Path, token: &str) -> RunnerSettings {
    RunnerSettings {
        token: Some(Secret::new(token)),
        name: "installed".into(),
        core: CoreConfig::default(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        ..RunnerSettings::new(
            runtime::settings::endpoint(&server.url(), false).expect("url"),
            state_dir.to_path_buf(),
        )
    }
}

/// A service step that records what it was asked to do and can be told to fail.
#[derive(Clone, Default)]
struct FakeService {
    calls: Arc<Mutex<Vec<&'static str>>>,
    fail: bool,
}

impl ServiceStep for FakeService {
    fn install(&mut self) -> Result<String, String> {
        self.calls.lock().expect("lock").push("install");
        if self.fail {
            Err("systemctl enable failed: unit masked".into())
        } else {
            Ok("service started".into())
        }
    }

    fn remove(&mut self) -> Result<(), String> {
        self.calls.lock().expect("lock").push("remove");
        Ok(())
    }
}

fn plan(config: &Path, service: Option<FakeService>) -> InstallPlan {
    InstallPlan {
        config_path: config.to_path_buf(),
        config_text: "server = \"ws://127.0.0.1\"\n".into(),
        service: service.map(|s| Box::new(s) as Box<dyn ServiceStep>),
        jobs_dir: None,
        created_jobs_dir: None,
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn install_without_a_service_creates_folders_config_and_identity() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("var/lib/fyn-runner");
    let config = root.path().join("etc/fyn-runner/config.toml");
    let token = server.mint_token().expect("token");
    let handle = runtime::start_install(settings(&server, &state, &token), plan(&config, None))
        .expect("starts");
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("ends"),
        ExitCode::Clean
    );

    #[cfg(unix)]
    {
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("identity")), 0o700);
        assert_eq!(mode(&state.join("identity/key")), 0o600);
        assert_eq!(mode(&state.join("jobs")), 0o700);
        assert_eq!(mode(&config), 0o640);
    }
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(!text.contains(&token), "the token is never written");
    assert_eq!(server.runners().expect("runners").len(), 1, "registered");

    // A second install over it refuses.
    let again = runtime::start_install(
        settings(&server, &state, &server.mint_token().expect("token")),
        plan(&config, None),
    );
    let error = match again {
        Ok(_) => panic!("installing twice must refuse"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("already holds a registered runner") && error.contains("--force"),
        "{error}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_failing_registration_leaves_nothing_behind() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("var/lib/fyn-runner");
    let config = root.path().join("etc/fyn-runner/config.toml");
    let service = FakeService::default();
    let handle = runtime::start_install(
        settings(&server, &state, "not-a-token"),
        plan(&config, Some(service.clone())),
    )
    .expect("starts");
    let mut status = handle.status.clone();
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("ends"),
        ExitCode::RegistrationFailed
    );
    let problem = status
        .borrow_and_update()
        .problem
        .clone()
        .unwrap_or_default();
    assert!(problem.contains("registration failed"), "{problem}");
    assert!(!root.path().join("var").exists(), "state folders removed");
    assert!(!root.path().join("etc").exists(), "config folders removed");
    assert!(
        service.calls.lock().expect("lock").is_empty(),
        "the service was never touched"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_failing_service_step_rolls_back_service_identity_config_and_folders() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("state");
    let config = root.path().join("etc/config.toml");
    let service = FakeService {
        fail: true,
        ..FakeService::default()
    };
    let token = server.mint_token().expect("token");
    let handle = runtime::start_install(
        settings(&server, &state, &token),
        plan(&config, Some(service.clone())),
    )
    .expect("starts");
    let mut status = handle.status.clone();
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("ends"),
        ExitCode::RegistrationFailed
    );
    let problem = status
        .borrow_and_update()
        .problem
        .clone()
        .unwrap_or_default();
    assert!(
        problem.contains("unit masked"),
        "says which step failed and why: {problem}"
    );
    assert_eq!(
        *service.calls.lock().expect("lock"),
        ["install"],
        "a failed install has nothing to remove"
    );
    assert!(
        !state.exists() && !root.path().join("etc").exists(),
        "everything the install created is gone"
    );
    assert_eq!(
        server.runners().expect("runners").len(),
        0,
        "the API forgot the registration the install rolled back"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_existing_state_folder_survives_a_failed_install() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).expect("pre-existing");
    std::fs::write(state.join("operator-notes.txt"), "mine").expect("write");
    let config = root.path().join("config.toml");
    let handle = runtime::start_install(settings(&server, &state, "wrong"), plan(&config, None))
        .expect("starts");
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("ends"),
        ExitCode::RegistrationFailed
    );
    assert!(
        state.join("operator-notes.txt").exists(),
        "only what the install created is removed"
    );
    assert!(!config.exists());
    server.shutdown().await;
}
