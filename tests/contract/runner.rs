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
    /// The binary, and the arguments it was started with (a restart uses them again).
    Binary(Box<tokio::process::Child>, Vec<String>),
    InProcess(Option<RunnerHandle>),
}

pub struct Runner {
    process: Process,
    runner_id: String,
    key: SigningKey,
    log: PathBuf,
    /// The state folder, removed when the runner is dropped.
    state_dir: tempfile::TempDir,
}

/// `fyn-runner run ARGS --state-dir DIR` with `RUST_LOG=info`, its stderr appended to
/// `log`.
fn spawn_binary(
    args: &[String],
    state_dir: &std::path::Path,
    log: &std::path::Path,
) -> tokio::process::Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .env("RUST_LOG", "info")
        .env_remove("FYN_RUNNER_CONFIG")
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts")
}

fn run_args(url: &str, token: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["run", "--server", url, "--name", "contract-runner"]
        .map(str::to_owned)
        .into();
    if let Some(token) = token {
        args.extend(["--token".to_owned(), token.to_owned()]);
    }
    args
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
        let args = run_args(url, None);
        let child = Box::new(spawn_binary(&args, dir.path(), &log));
        Self {
            process: Process::Binary(child, args),
            runner_id: runner_id.to_owned(),
            key,
            log,
            state_dir: dir,
        }
    }

    /// `fyn-runner run` with a registration token and no identity yet (§4.1). The
    /// runner ID is the one the fake API will hand out in `registered`.
    pub fn binary_registering(url: &str, token: &str, runner_id: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().with_extension("log");
        let args = run_args(url, Some(token));
        let child = Box::new(spawn_binary(&args, dir.path(), &log));
        Self {
            process: Process::Binary(child, args),
            runner_id: runner_id.to_owned(),
            // Unknown until `register`: the case reads it from that frame.
            key: SigningKey::from_bytes(&[0; 32]),
            log,
            state_dir: dir,
        }
    }

    /// The binary killed at once (SIGKILL: no drain, no close) and started again with
    /// the same arguments and state folder, as after a crash.
    pub async fn kill_and_restart(&mut self) {
        let Process::Binary(child, args) = &mut self.process else {
            panic!("only the binary restarts");
        };
        child.kill().await.expect("killed");
        **child = spawn_binary(args, self.state_dir.path(), &self.log);
    }

    /// The runner's state folder.
    pub fn state_dir(&self) -> &std::path::Path {
        self.state_dir.path()
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
            state_dir: dir,
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
            Process::Binary(child, _) => tokio::time::timeout(within, child.wait())
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
            Process::Binary(child, _) => {
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

    /// Drain the runner (through its control socket, as `fyn-runner drain` does; a
    /// shutdown for one in process) and return its exit code.
    pub async fn stop(mut self) -> i32 {
        #[cfg(unix)]
        if let Process::Binary(..) = &self.process {
            use fyn_runner::runtime::control::{ControlRequest, ControlResponse, request};
            let drain = ControlRequest::Drain {
                deadline_secs: None,
                force: false,
                uninstall: false,
            };
            let answer = request(self.state_dir(), &drain).await.expect("an answer");
            assert!(
                matches!(answer, ControlResponse::Draining { .. }),
                "{answer:?}"
            );
            return self.exit_code(STEP).await.expect("stops in time");
        }
        self.ask_to_stop();
        self.exit_code(STEP).await.expect("stops in time")
    }

    /// Ask the runner to stop, without waiting: SIGTERM for the binary on Unix (a stop
    /// that leaves running jobs to their supervisors), a drain elsewhere.
    pub fn ask_to_stop(&mut self) {
        match &mut self.process {
            #[cfg(unix)]
            Process::Binary(child, _) => {
                let pid = child.id().expect("running");
                // SAFETY: plain kill(2) on the child this test started.
                unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGTERM) };
            }
            #[cfg(not(unix))]
            Process::Binary(child, _) => child.start_kill().expect("kill"),
            Process::InProcess(handle) => handle.as_ref().expect("running").shutdown(),
        }
    }
}
