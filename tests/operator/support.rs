//! What the operator's tests share: the dev-server, the real binary started as an
//! operator would (`run --metrics-listen ...`, hooks in a config file), a plain HTTP
//! GET, and finding `promtool`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fyn_runner::devserver::{DevServer, DevServerConfig, JobInfo, RunnerState};
use fyn_runner::protocol::SessionParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BIN: &str = env!("CARGO_BIN_EXE_fyn-runner");
pub const WAIT: Duration = Duration::from_secs(30);

/// Heartbeats every second, acknowledged within half of one.
pub fn session() -> SessionParams {
    SessionParams {
        heartbeat_interval_ms: 1_000,
        ack_timeout_ms: 500,
        runner_lost_threshold_ms: 30_000,
    }
}

pub async fn dev_server(db: &Path, listen: Option<std::net::SocketAddr>) -> DevServer {
    let mut config = DevServerConfig::ephemeral();
    config.session = session();
    config.db = Some(db.to_path_buf());
    if let Some(addr) = listen {
        config.listen = addr;
    }
    DevServer::start(config).await.expect("dev-server")
}

/// The runner's process, killed when dropped.
pub struct Runner {
    pub child: Child,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Runner {
    /// `fyn-runner run` registering with a fresh token, with `args` added.
    pub fn spawn(server: &DevServer, dir: &Path, args: &[&str]) -> Self {
        let token = server.mint_token().expect("token");
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{token}\n")).expect("token file");
        let state_dir = dir.join("state");
        let log = dir.join("runner.log");
        let child = Command::new(BIN)
            .args(["run", "--server", &server.url(), "--name", "operator"])
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--token-file")
            .arg(&token_file)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("FYN_RUNNER_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("the binary starts");
        Self {
            child,
            state_dir,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `fyn-runner status --json`, once it answers.
    pub async fn status(&mut self) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = Command::new(BIN)
                .args(["status", "--json", "--state-dir"])
                .arg(&self.state_dir)
                .output()
                .expect("status runs");
            if out.status.success() {
                return serde_json::from_slice(&out.stdout).expect("status JSON");
            }
            self.assert_running();
            assert!(Instant::now() < deadline, "status never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("the runner exited ({status}); log:\n{}", self.log_text());
        }
    }

    /// `fyn-runner drain` (running jobs finish, results are delivered), then the exit
    /// code. (SIGTERM would stop it at once and leave jobs to their supervisors.)
    pub async fn stop(mut self) -> i32 {
        let drained = Command::new(BIN)
            .args(["drain", "--state-dir"])
            .arg(&self.state_dir)
            .env_remove("FYN_RUNNER_CONFIG")
            .output()
            .expect("drain runs");
        assert!(
            drained.status.success(),
            "fyn-runner drain failed: {}",
            String::from_utf8_lossy(&drained.stderr)
        );
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "the runner did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Wait until the dev-server sees a runner Active.
pub async fn runner_active(server: &DevServer, runner: &mut Runner) {
    let deadline = Instant::now() + WAIT;
    while !server
        .runners()
        .expect("runners")
        .iter()
        .any(|r| r.connected && r.state == RunnerState::Active)
    {
        runner.assert_running();
        assert!(Instant::now() < deadline, "the runner never became Active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn finished(server: &DevServer, id: &str) -> JobInfo {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = server.job(id).expect("query").expect("the job exists");
        if job.outcome.is_some() {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} stuck in {:?}",
            job.state
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain HTTP/1.1 GET: the status code and the body.
pub async fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("read");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels as written, `a{b="c"}`), if any.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
}

/// `promtool`: `$PROMTOOL`, else on `PATH`, else where `.ci/run` unpacks it
/// (`target/tools/prometheus/usr/bin/promtool`). None when none is there.
pub fn promtool() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PROMTOOL") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let unpacked =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/prometheus/usr/bin/promtool");
        unpacked.is_file().then_some(unpacked)
    })
}

/// `promtool check metrics` on `text`: Ok, or what it complained about. Skips loudly
/// (and passes) when promtool is not installed, as `.ci/run` installs it.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let Some(promtool) = promtool() else {
        eprintln!(
            "!! SKIPPED promtool check metrics: promtool is not installed (.ci/run unpacks it \
             from Debian's prometheus package into target/tools/)"
        );
        return Ok(());
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool ends");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics ({}): {said}", out.status))
    }
}
