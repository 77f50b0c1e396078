//! A fleet on one API, with real processes: `FYN_BENCH_RUNNERS` runners (default
//! 1,000) started against one dev-server (the binary, `--db`), then the dev-server
//! killed and started again on the same port and database. Prints the time until all
//! runners are Active, the time until all are Active again after the restart, the
//! spread of the first reconnects (p50/p90 after the new server listens), and the
//! resident memory of a runner (mean) and of the dev-server.
//!
//! `cargo bench --bench fleet`. The runners' state folders are in a temporary folder;
//! every process is killed at the end (`Fleet`'s `Drop`), also when the bench panics.
#![allow(clippy::disallowed_methods)] // a bench measures time

#[cfg(target_os = "linux")]
mod linux_bench {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use fyn_runner::ctl::{Client, parse_server};
    use fyn_runner::devserver::{RunnerInfo, RunnerState, TokenCreated};

    /// How often the admin API is asked which runners are Active: the resolution of
    /// the figures, and little load for the dev-server.
    const POLL: Duration = Duration::from_millis(100);
    /// Runners started at once before the next group: a burst of thousands of process
    /// starts would measure the kernel's fork, not the control plane.
    const START_BURST: usize = 50;

    struct Server {
        child: Child,
        runner_url: String,
        admin: Client,
    }

    fn spawn_server(dir: &Path, listen: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
            .args(["dev-server", "--listen", listen, "--db"])
            .arg(dir.join("dev.db"))
            .arg("--admin-token-file")
            .arg(dir.join("admin-token"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the dev-server starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut field = |name: &str| loop {
            let line = lines.next().expect("a line").expect("readable");
            if let Some(value) = line.strip_prefix(name) {
                return value.to_owned();
            }
        };
        let runner_url = field("runner-url: ");
        let admin_url = field("admin-url: ");
        let admin_token = field("admin-token: ");
        let base = parse_server(&admin_url).expect("admin URL");
        let admin = Client::new(base, admin_token, None).expect("client");
        Server {
            child,
            runner_url,
            admin,
        }
    }

    /// Every process of the bench, killed when it ends however it ends.
    struct Fleet {
        server: Option<Server>,
        runners: Vec<Child>,
    }

    impl Drop for Fleet {
        fn drop(&mut self) {
            for child in &mut self.runners {
                let _ = child.kill();
            }
            for child in &mut self.runners {
                let _ = child.wait();
            }
            if let Some(server) = &mut self.server {
                let _ = server.child.kill();
                let _ = server.child.wait();
            }
        }
    }

    fn status_kib(pid: u32, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn active(runner: &RunnerInfo) -> bool {
        runner.connected && runner.state == RunnerState::Active
    }

    /// Polls until `count` runners are Active; for each runner, when it was first seen
    /// Active (after `since`).
    async fn until_all_active(
        admin: &Client,
        count: usize,
        since: Instant,
    ) -> HashMap<String, Duration> {
        let mut first_seen = HashMap::new();
        loop {
            // Refused while the server starts: try again at the next poll.
            if let Ok(runners) = admin.get::<Vec<RunnerInfo>>("/admin/v1/runners").await {
                for runner in runners.iter().filter(|r| active(r)) {
                    first_seen
                        .entry(runner.id.clone())
                        .or_insert_with(|| since.elapsed());
                }
                if runners.iter().filter(|r| active(r)).count() >= count {
                    return first_seen;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
    }

    pub async fn bench() {
        let count: usize = std::env::var("FYN_BENCH_RUNNERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let dir = tempfile::tempdir().expect("tempdir");
        let server = spawn_server(dir.path(), "127.0.0.1:0");
        let listen = server
            .runner_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port")
            .to_owned();
        let mut fleet = Fleet {
            server: Some(server),
            runners: Vec::with_capacity(count),
        };
        let admin = &fleet.server.as_ref().expect("server").admin;
        let mut tokens = Vec::with_capacity(count);
        for _ in 0..count {
            let created: TokenCreated = admin
                .post("/admin/v1/registration-tokens", None::<&()>)
                .await
                .expect("a registration token");
            tokens.push(created.token);
        }
        let runner_url = fleet.server.as_ref().expect("server").runner_url.clone();

        let started = Instant::now();
        for (i, token) in tokens.iter().enumerate() {
            let state = dir.path().join(format!("r{i}"));
            let child = Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
                .args(["run", "--server", &runner_url, "--slots", "1"])
                .args(["--name", &format!("fleet-{i}"), "--token", token])
                .arg("--state-dir")
                .arg(&state)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("a runner starts");
            fleet.runners.push(child);
            if (i + 1) % START_BURST == 0 {
                tokio::task::yield_now().await;
            }
        }
        let admin = &fleet.server.as_ref().expect("server").admin;
        until_all_active(admin, count, started).await;
        let all_active = started.elapsed();
        // A moment in Active, then the memory of each.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let runner_kib: u64 = fleet
            .runners
            .iter()
            .map(|c| status_kib(c.id(), "VmRSS"))
            .sum();
        let server_kib = status_kib(fleet.server.as_ref().expect("server").child.id(), "VmRSS");

        // The API restarts: killed, and started again on the same port and database.
        if let Some(mut old) = fleet.server.take() {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
        let restarted = Instant::now();
        fleet.server = Some(spawn_server(dir.path(), &listen));
        let listening = restarted.elapsed();
        let admin = &fleet.server.as_ref().expect("server").admin;
        let back = until_all_active(admin, count, restarted).await;
        let all_back = restarted.elapsed();
        let mut reconnects: Vec<Duration> = back.into_values().collect();
        reconnects.sort();
        let server_after_kib =
            status_kib(fleet.server.as_ref().expect("server").child.id(), "VmRSS");

        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "fleet of {count} runners against one dev-server (figures of this run only: the machine is shared)"
        );
        println!(
            "  all Active after start:        {:.1} s",
            all_active.as_secs_f64()
        );
        println!(
            "  dev-server restart: listening after {:.2} s; all Active again after {:.1} s",
            listening.as_secs_f64(),
            all_back.as_secs_f64()
        );
        println!(
            "  first reconnects (Active again, from the restart): p50 {:.2} s, p90 {:.2} s \
             (polled every {} ms)",
            percentile(&reconnects, 0.5).as_secs_f64(),
            percentile(&reconnects, 0.9).as_secs_f64(),
            POLL.as_millis()
        );
        println!(
            "  resident memory: runner {:.1} MiB (mean), dev-server {:.1} MiB (after the \
             restart {:.1} MiB)",
            mib(runner_kib) / count as f64,
            mib(server_kib),
            mib(server_after_kib)
        );
        drop(fleet);
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(linux_bench::bench());
}
