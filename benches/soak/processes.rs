//! The soak's processes: the dev-server and the runner binaries started (their logs
//! appended to files), stopped or killed, and what `/proc` and their logs tell of them.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Every process of the soak, killed when it ends however it ends.
#[derive(Default)]
pub(crate) struct Processes {
    pub(crate) server: Option<Child>,
    pub(crate) runner: Option<Child>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in [&mut self.runner, &mut self.server].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Asks a process to stop (SIGTERM) and waits up to `grace` for it; `true` if it did.
pub(crate) fn stop(child: &mut Child, grace: Duration) -> bool {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return false;
    };
    // SAFETY: a plain signal to our own child, which has not been reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub(crate) struct ServerLines {
    pub(crate) runner_url: String,
    pub(crate) admin_url: String,
    pub(crate) admin_token: String,
}

/// The dev-server binary on `listen`, its database and admin token file in `dir`
/// (the same at every restart), its log appended to `log`.
pub(crate) fn spawn_server(
    dir: &Path,
    listen: &str,
    public_url: &str,
    log: &Path,
    rust_log: &str,
) -> (Child, ServerLines) {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the dev-server's log file opens");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
        .args(["dev-server", "--listen", listen, "--public-url", public_url])
        .arg("--db")
        .arg(dir.join("dev.db"))
        .arg("--admin-token-file")
        .arg(dir.join("admin-token"))
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .expect("the dev-server starts");
    let stdout = child.stdout.take().expect("the dev-server's stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut field = |name: &str| loop {
        let line = lines
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "the dev-server ended before printing {name:?}; its log: {}",
                    log.display()
                )
            })
            .expect("the dev-server's stdout reads");
        if let Some(value) = line.strip_prefix(name) {
            return value.to_owned();
        }
    };
    let lines = ServerLines {
        runner_url: field("runner-url: "),
        admin_url: field("admin-url: "),
        admin_token: field("admin-token: "),
    };
    (child, lines)
}

pub(crate) fn spawn_runner(
    url: &str,
    state: &Path,
    token: &str,
    slots: u32,
    log: &Path,
    rust_log: &str,
) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the runner's log file opens");
    // In a file, as an operator would give it: on the command line every local user
    // could read it (and the runner warns so).
    let token_file = state.with_file_name("registration-token");
    std::fs::write(&token_file, token).expect("the token file is written");
    Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
        .args(["run", "--server", url, "--name", "soak", "--token-file"])
        .arg(&token_file)
        .args(["--slots", &slots.to_string()])
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("the runner starts")
}

pub(crate) fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

pub(crate) fn count_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

pub(crate) fn last_lines(path: &Path, count: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}
