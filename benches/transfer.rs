//! A 1 GiB input and a 1 GiB output, twice, each time with the peak resident memory
//! (VmHWM) of the process that moves them as the figure:
//!
//! 1. through the runner's transfer module, in a process of its own: the input fetched
//!    into a job's `work/` (checked against its SHA-256), then the same file uploaded
//!    by `PUT` (hashed, then streamed). The HTTP server is this bench's parent process
//!    (bytes generated and hashed on the fly, never held), so it does not count;
//! 2. end to end, the real binaries: a dev-server with a database file, a runner, and
//!    `fyn-runner ctl submit --wait -i in.bin -o out.bin -- sh -c 'cp in.bin out.bin'`;
//!    the figure is the runner's, and the result's SHA-256 is checked.
//!
//! `cargo bench --bench transfer` (`FYN_BENCH_TRANSFER_MIB` changes the size). The goal
//! for the whole runner is 32 MiB.
#![allow(clippy::disallowed_methods)] // a bench measures time

#[cfg(target_os = "linux")]
mod linux_bench {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::extract::{Request, State};
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use futures_util::StreamExt;
    use sha2::{Digest, Sha256};

    use fyn_runner::protocol::{InputFile, OutputFile, parse_content_digest, to_hex};
    use fyn_runner::runtime::transfer::{RetryPolicy, Timeouts, TransferSettings, Transfers};

    const CHUNK: usize = 256 * 1024;
    const CHILD: &str = "FYN_BENCH_TRANSFER_CHILD";

    fn size() -> u64 {
        std::env::var("FYN_BENCH_TRANSFER_MIB")
            .ok()
            .and_then(|mib| mib.parse::<u64>().ok())
            .unwrap_or(1024)
            << 20
    }

    /// The input's bytes, chunk `n` of a file of `size` bytes.
    pub(super) fn chunk(n: u64, size: u64) -> Bytes {
        let start = n * CHUNK as u64;
        let len = (size - start).min(CHUNK as u64) as usize;
        Bytes::from(
            (0..len)
                .map(|i| ((start + i as u64) % 251) as u8)
                .collect::<Vec<u8>>(),
        )
    }

    pub(super) fn chunks(size: u64) -> u64 {
        size.div_ceil(CHUNK as u64)
    }

    fn input_sha256(size: u64) -> String {
        let mut hasher = Sha256::new();
        for n in 0..chunks(size) {
            hasher.update(chunk(n, size));
        }
        to_hex(&hasher.finalize())
    }

    async fn serve(State(size): State<u64>, request: Request) -> Response {
        if request.method() == "GET" {
            let stream = futures_util::stream::iter(0..chunks(size))
                .map(move |n| Ok::<_, std::io::Error>(chunk(n, size)));
            let mut response = Body::from_stream(stream).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, size.into());
            return response;
        }
        let declared = request
            .headers()
            .get("content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_digest);
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut body = request.into_body().into_data_stream();
        while let Some(Ok(bytes)) = body.next().await {
            got += bytes.len() as u64;
            hasher.update(&bytes);
        }
        let sha = to_hex(&hasher.finalize());
        if got == size && declared.as_deref() == Some(sha.as_str()) {
            StatusCode::CREATED.into_response()
        } else {
            StatusCode::BAD_REQUEST.into_response()
        }
    }

    fn status_kib(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The measured process: fetch, then upload; prints its figures as one line.
    fn child(addr: &str, sha256: &str) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let transfers = Transfers::new(&TransferSettings {
                ca_file: None,
                allow_insecure: false,
                cache_dir: dir.path().join("cache"),
                cache_max_bytes: 0,
                timeouts: Timeouts::default(),
                retry: RetryPolicy::default(),
            })
            .expect("transfers");
            let work = dir.path().join("work");
            std::fs::create_dir(&work).expect("work");
            let before = status_kib("VmHWM:");
            let started = Instant::now();
            let input = InputFile {
                url: format!("http://{addr}/input"),
                sha256: sha256.to_owned(),
                path: "mesh.bin".into(),
                executable: false,
            };
            transfers
                .fetch_input(&input, &work, None)
                .await
                .expect("the input arrives");
            let fetched = started.elapsed();
            let outputs = [OutputFile {
                path: Some("mesh.bin".into()),
                glob: None,
                url: format!("http://{addr}/output"),
            }];
            let plan = transfers
                .plan_outputs(&work, &outputs, None)
                .await
                .expect("a plan");
            let started = Instant::now();
            transfers
                .upload(&work, &plan.uploads[0], None)
                .await
                .expect("the output is taken");
            let uploaded = started.elapsed();
            println!(
                "{} {} {} {}",
                before,
                status_kib("VmHWM:"),
                fetched.as_millis(),
                uploaded.as_millis()
            );
        });
    }

    pub fn main() {
        if let (Ok(addr), Some(sha)) = (std::env::var(CHILD), std::env::args().nth(1)) {
            return child(&addr, &sha);
        }
        let size = size();
        let sha256 = input_sha256(size);
        let expected = sha256.clone();
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let addr: SocketAddr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let app = Router::new().fallback(serve).with_state(size);
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            addr
        });
        let exe = std::env::current_exe().expect("this bench");
        let output = runtime.block_on(async {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(exe)
                    .arg(&sha256)
                    .env(CHILD, addr.to_string())
                    .output()
            })
            .await
            .expect("joined")
            .expect("the child runs")
        });
        let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            output.status.success(),
            "the transfer failed: {line} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let figures: Vec<u64> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let [before, peak, fetch_ms, upload_ms] = figures[..] else {
            panic!("the child printed {line:?}");
        };
        let mib = size as f64 / 1048576.0;
        let rate = |ms: u64| mib / Duration::from_millis(ms.max(1)).as_secs_f64();
        println!("transfer of a {mib:.0} MiB input and a {mib:.0} MiB output (one process):");
        println!(
            "  fetch  (through the cache into work/): {fetch_ms:6} ms, {:7.1} MiB/s",
            rate(fetch_ms)
        );
        println!(
            "  upload (hash, then PUT):               {upload_ms:6} ms, {:7.1} MiB/s",
            rate(upload_ms)
        );
        println!(
            "  VmHWM {:.1} MiB at start, {:.1} MiB peak (goal for the whole runner: 32 MiB)",
            before as f64 / 1024.0,
            peak as f64 / 1024.0
        );
        super::end_to_end::run(size, &expected);
    }
}

/// The second part: the real binaries, the runner's memory.
#[cfg(target_os = "linux")]
mod end_to_end {
    use std::io::{BufRead, BufReader, Write};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    const BIN: &str = env!("CARGO_BIN_EXE_fyn-runner");

    /// Killed when dropped, so a failing bench leaves no process behind.
    struct Killed(Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn vm_hwm_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn ctl(admin_url: &str, token_file: &Path) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["ctl", "--server", admin_url, "--admin-token-file"])
            .arg(token_file);
        command
    }

    pub fn run(size: u64, sha256: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.bin");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&input).expect("in.bin"));
        for n in 0..super::linux_bench::chunks(size) {
            file.write_all(&super::linux_bench::chunk(n, size))
                .expect("written");
        }
        file.flush().expect("flushed");
        drop(file);

        let token_file = dir.path().join("admin-token");
        let mut server = Command::new(BIN)
            .args([
                "dev-server",
                "--listen",
                "127.0.0.1:0",
                "--print-token",
                "--db",
            ])
            .arg(dir.path().join("dev.db"))
            .arg("--admin-token-file")
            .arg(&token_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map(Killed)
            .expect("the dev-server starts");
        let stdout = server.0.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut field = |name: &str| loop {
            let line = lines.next().expect("a line").expect("readable");
            if let Some(value) = line.strip_prefix(name) {
                return value.to_owned();
            }
        };
        let runner_url = field("runner-url: ");
        let admin_url = field("admin-url: ");
        let token = field("token: ");
        let runner = Command::new(BIN)
            .args([
                "run",
                "--server",
                &runner_url,
                "--token",
                &token,
                "--no-trace",
            ])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Killed)
            .expect("the runner starts");

        let started = Instant::now();
        let submitted = ctl(&admin_url, &token_file)
            .args(["submit", "--wait", "-i"])
            .arg(format!("{}:in.bin", input.display()))
            .args(["-o", "out.bin", "--", "sh", "-c", "cp in.bin out.bin"])
            .output()
            .expect("ctl runs");
        let took = started.elapsed();
        let peak = vm_hwm_kib(runner.0.id());
        let said = String::from_utf8_lossy(&submitted.stderr).into_owned();
        assert!(submitted.status.success(), "the job failed: {said}");
        let job = said
            .split_whitespace()
            .find(|word| word.starts_with("j-"))
            .map(|word| word.trim_end_matches([':', ';']).to_owned())
            .expect("the job's id");
        let results = ctl(&admin_url, &token_file)
            .args(["results", &job])
            .output()
            .expect("ctl runs");
        let listed = String::from_utf8_lossy(&results.stdout);
        assert!(
            listed.contains(sha256) && listed.contains("uploaded"),
            "the result is not the input: {listed}"
        );
        println!(
            "the same end to end (ctl submit -i/-o, dev-server with --db, the runner binary):"
        );
        println!(
            "  {:.1} s from submit to the job's end, result checked; runner VmHWM {:.1} MiB peak",
            took.as_secs_f64(),
            peak as f64 / 1024.0
        );
        drop((runner, server));
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    linux_bench::main();
    #[cfg(not(target_os = "linux"))]
    eprintln!("the transfer bench reads /proc and runs on Linux only");
}
