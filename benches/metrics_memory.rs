//! Memory stays flat with metrics on: the real binary with `--metrics-listen`, its
//! resident memory after 100 jobs and after 10,000 (each scrape of `/metrics` taken
//! too), which must be within 1 MiB of each other (issue 18: no label per job, no
//! bookkeeping that grows with jobs). `cargo bench --bench metrics_memory`;
//! `METRICS_BENCH_JOBS=N` changes the 10,000, `METRICS_BENCH_RUNNER=PATH` measures
//! another build's binary.
#![allow(clippy::disallowed_methods)] // measuring time is what this does

#[cfg(unix)]
mod unix_bench {
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use fyn_runner::devserver::{DevServer, DevServerConfig, JobRequest, RunnerState};

    const WARM_UP: usize = 100;
    const WAVE: usize = 200;
    const LIMIT_KIB: i64 = 1024;

    fn runner_binary() -> String {
        std::env::var("METRICS_BENCH_RUNNER")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_fyn-runner").to_owned())
    }

    fn status_kib(pid: u32, key: &str) -> i64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// One scrape, as Prometheus would make it, so its allocations are in the figure.
    fn scrape(addr: &str) -> String {
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect to /metrics");
        write!(
            tcp,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut text = String::new();
        tcp.read_to_string(&mut text).expect("response");
        text
    }

    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    }

    fn request() -> JobRequest {
        JobRequest {
            command: vec!["true".into()],
            env: BTreeMap::new(),
            workdir: None,
            timeout_secs: 60,
            output_limit_bytes: None,
            cancel_grace_secs: None,
            inputs: Default::default(),
            outputs: Default::default(),
            kv: Default::default(),
        }
    }

    /// Submit `count` jobs in waves and wait for every one to end.
    async fn run_jobs(server: &DevServer, count: usize) {
        let mut left = count;
        while left > 0 {
            let wave = left.min(WAVE);
            let ids: Vec<String> = (0..wave)
                .map(|_| server.submit_job(request()).expect("submit"))
                .collect();
            let started = Instant::now();
            for id in &ids {
                loop {
                    let job = server.job(id).expect("job").expect("exists");
                    if job.outcome.is_some() {
                        break;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(120),
                        "job {id} stuck in {:?}",
                        job.state
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            left -= wave;
        }
    }

    fn stop(mut child: Child) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }

    #[tokio::main]
    pub async fn main() {
        let jobs: usize = std::env::var("METRICS_BENCH_JOBS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let server = DevServer::start(DevServerConfig::ephemeral())
            .await
            .expect("dev-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let token = server.mint_token().expect("token");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).expect("token file");
        let child = Command::new(runner_binary())
            .args(["run", "--server", &server.url(), "--name", "bench"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--token-file")
            .arg(&token_file)
            .args(["--slots", "4", "--job-retention-hours", "0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the fyn-runner binary starts");
        let started = Instant::now();
        while !server
            .runners()
            .expect("runners")
            .iter()
            .any(|r| r.connected && r.state == RunnerState::Active)
        {
            assert!(started.elapsed() < Duration::from_secs(30), "never Active");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = Command::new(runner_binary())
            .args(["status", "--json", "--state-dir"])
            .arg(dir.path().join("state"))
            .output()
            .expect("status");
        let status: serde_json::Value =
            serde_json::from_slice(&status.stdout).expect("status JSON");
        let addr = status["metrics_listen"]
            .as_str()
            .expect("metrics address")
            .to_owned();
        let pid = child.id();

        run_jobs(&server, WARM_UP).await;
        let text = scrape(&addr);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after_warm_up = status_kib(pid, "VmRSS");
        let timer = Instant::now();
        run_jobs(&server, jobs - WARM_UP).await;
        let took = timer.elapsed();
        let last = scrape(&addr);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after_all = status_kib(pid, "VmRSS");
        let peak = status_kib(pid, "VmHWM");
        let growth = after_all - after_warm_up;
        println!(
            "metrics_memory: {jobs} jobs of `true`, 4 slots, /metrics scraped after 100 and at the end"
        );
        println!(
            "  VmRSS after {WARM_UP} jobs:   {:7.2} MiB ({} jobs counted)",
            after_warm_up as f64 / 1024.0,
            sample(&text, "fyn_runner_jobs_started_total")
        );
        println!(
            "  VmRSS after {jobs} jobs: {:7.2} MiB ({} jobs counted; {:.1} jobs/s)",
            after_all as f64 / 1024.0,
            sample(&last, "fyn_runner_jobs_started_total"),
            (jobs - WARM_UP) as f64 / took.as_secs_f64()
        );
        println!(
            "  growth {:+.2} MiB (limit: within 1 MiB), VmHWM {:.2} MiB, exposition {} bytes",
            growth as f64 / 1024.0,
            peak as f64 / 1024.0,
            last.len()
        );
        stop(child);
        server.shutdown().await;
        if growth.abs() > LIMIT_KIB {
            eprintln!(
                "FAIL: resident memory moved by {growth} KiB between {WARM_UP} and {jobs} jobs"
            );
            std::process::exit(1);
        }
    }
}

#[cfg(unix)]
fn main() {
    unix_bench::main();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the metrics memory bench reads /proc: Unix only");
}
