//! Session figures, measured on the real binary: time from `fyn-runner run` starting to
//! the control plane seeing the runner Active (fresh registration and restart with a
//! stored identity), and the runner's resident memory while it idles in Active.
//! `cargo bench --bench session`.
#![allow(clippy::disallowed_methods)] // measuring time is what this does

// The bench stops the runner with SIGTERM and reads its memory from /proc: Unix only.
#[cfg(unix)]
mod unix_bench {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use fyn_runner::devserver::{DevServer, DevServerConfig, RunnerState};

    const RUNS: usize = 20;

    fn spawn_runner(url: &str, state_dir: &std::path::Path, token: Option<&str>) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
        command
            .args(["run", "--server", url, "--name", "bench"])
            .arg("--state-dir")
            .arg(state_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        command.spawn().expect("the fyn-runner binary starts")
    }

    async fn until_active(server: &DevServer) -> Duration {
        let started = Instant::now();
        loop {
            let active = server
                .runners()
                .expect("runners")
                .iter()
                .filter(|r| r.connected && r.state == RunnerState::Active)
                .count();
            if active >= 1 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "runner never became Active"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    fn stop(mut child: Child) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }

    fn rss_kib(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
    }

    #[tokio::main]
    pub async fn main() {
        let server = DevServer::start(DevServerConfig::ephemeral())
            .await
            .expect("dev-server");
        let url = server.url();
        let mut fresh = Vec::new();
        let mut resumed = Vec::new();
        for _ in 0..RUNS {
            let dir = tempfile::tempdir().expect("tempdir");
            let token = server.mint_token().expect("token");
            let spawned = Instant::now();
            let child = spawn_runner(&url, dir.path(), Some(&token));
            until_active(&server).await;
            fresh.push(spawned.elapsed());
            stop(child);
            wait_disconnected(&server).await;
            let spawned = Instant::now();
            let child = spawn_runner(&url, dir.path(), None);
            until_active(&server).await;
            resumed.push(spawned.elapsed());
            stop(child);
            wait_disconnected(&server).await;
        }
        fresh.sort();
        resumed.sort();
        println!(
            "time to Active, fresh registration: p50 {:?}, max {:?} ({RUNS} runs)",
            percentile(&fresh, 0.5),
            fresh[RUNS - 1]
        );
        println!(
            "time to Active, stored identity:    p50 {:?}, max {:?} ({RUNS} runs)",
            percentile(&resumed, 0.5),
            resumed[RUNS - 1]
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let token = server.mint_token().expect("token");
        let child = spawn_runner(&url, dir.path(), Some(&token));
        until_active(&server).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle = rss_kib(child.id());
        println!(
            "resident memory idling in Active: {:.1} MiB (VmRSS {idle} KiB)",
            idle as f64 / 1024.0
        );
        stop(child);
        server.shutdown().await;
    }

    async fn wait_disconnected(server: &DevServer) {
        let started = Instant::now();
        while server
            .runners()
            .expect("runners")
            .iter()
            .any(|r| r.connected)
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "runner never disconnected"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(unix)]
fn main() {
    unix_bench::main();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the session bench stops the runner with SIGTERM and reads /proc: Unix only");
}
