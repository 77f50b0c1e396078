//! The runner under test: the real `fyn-runner` binary (real exit codes, its log on
//! stderr, the operator's defaults: backoff from 0.5 s, 30 s handshake timeout), or the
//! same runtime in this process with short timers for cases that wait on them. Either
//! starts with an identity already saved (`runner_id`, `public_key`) so a case begins
//! at `hello`; a case that registers passes a token instead.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use fyn_runner::core::CoreConfig;
use fyn_runner::runtime::identity::Identity;
use fyn_runner::runtime::{self, RunnerHandle, RunnerSettings};

use crate::api::STEP;

enum Process {
    Binary(tokio::process::Child),
    InProcess(Option<RunnerHandle>),
}

pub struct Runner {
    process: Process,
    runner_id: String,
    key: SigningKey,
    log: PathBuf,
    /// The state folder, removed when the runner is dropped.
    _state_dir: tempfile::TempDir,
}

/// A state directory holding a saved identity.
fn with_identity(runner_id: &str) -> (tempfile::TempDir, SigningKey) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = Identity::generate_key().expect("key");
    // A registered runner has its store beside its identity (an identity alone is a
    // lost store, which the runner refuses to start with).
    drop(fyn_runner::runtime::store::Store::open(dir.path()).expect("store"));
    Identity::save(dir.path(), runner_id, &key).expect("identity saved");
    (dir, key)
}

impl Runner {
    /// `fyn-runner run --server URL --state-dir DIR` with `RUST_LOG=info`.
    pub fn binary(url: &str, runner_id: &str) -> Self {
        let (dir, key) = with_identity(runner_id);
        let log = dir.path().with_extension("log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
            .args(["run", "--server", url, "--name", "contract-runner"])
            .arg("--state-dir")
            .arg(dir.path())
            .env("RUST_LOG", "info")
            .env_remove("FYN_RUNNER_CONFIG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        Self {
            process: Process::Binary(child),
            runner_id: runner_id.to_owned(),
            key,
            log,
            _state_dir: dir,
        }
    }

    /// The runtime in this process: backoff 20–100 ms, `handshake_timeout` for each
    /// handshake step.
    pub fn in_process(url: &str, runner_id: &str, handshake_timeout: Duration) -> Self {
        let (dir, key) = with_identity(runner_id);
        let settings = RunnerSettings {
            name: "contract-runner".into(),
            core: CoreConfig {
                handshake_timeout_ms: u64::try_from(handshake_timeout.as_millis())
                    .expect("a short timeout"),
                ..CoreConfig::default()
            },
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(2),
            ..RunnerSettings::new(
                runtime::settings::endpoint(url, false).expect("loopback url"),
                dir.path().to_path_buf(),
            )
        };
        let handle = runtime::start(settings).expect("the runtime starts");
        Self {
            process: Process::InProcess(Some(handle)),
            runner_id: runner_id.to_owned(),
            key,
            log: dir.path().with_extension("log"),
            _state_dir: dir,
        }
    }

    pub fn runner_id(&self) -> &str {
        &self.runner_id
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// What the binary logged so far (empty for an in-process runner).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit code, waiting at most `within`; `None` if it is still running.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        match &mut self.process {
            Process::Binary(child) => tokio::time::timeout(within, child.wait())
                .await
                .ok()
                .map(|status| status.expect("wait").code().unwrap_or(-1)),
            Process::InProcess(slot) => {
                let handle = slot.as_mut().expect("not waited for yet");
                let stopped = handle.wait_for(|s| s.state == "Stopped");
                tokio::time::timeout(within, stopped).await.ok()?;
                let handle = slot.take().expect("not waited for yet");
                Some(handle.wait().await.code())
            }
        }
    }

    /// Asserts the runner is still running (has not exited) right now.
    pub fn assert_running(&mut self) {
        match &mut self.process {
            Process::Binary(child) => {
                let status = child.try_wait().expect("try_wait");
                assert!(
                    status.is_none(),
                    "the runner exited ({status:?}); log:\n{}",
                    self.log()
                );
            }
            Process::InProcess(handle) => {
                let handle = handle.as_ref().expect("not waited for");
                let status = handle.status.borrow().clone();
                assert_ne!(status.state, "Stopped", "{status:?}");
            }
        }
    }

    /// Ask the runner to stop (SIGTERM for the binary) and return its exit code.
    pub async fn stop(mut self) -> i32 {
        match &mut self.process {
            #[cfg(unix)]
            Process::Binary(child) => {
                let pid = child.id().expect("running");
                // SAFETY: plain kill(2) on the child this test started.
                unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGTERM) };
            }
            #[cfg(not(unix))]
            Process::Binary(child) => child.start_kill().expect("kill"),
            Process::InProcess(handle) => handle.as_ref().expect("running").shutdown(),
        }
        self.exit_code(STEP).await.expect("stops in time")
    }
}
