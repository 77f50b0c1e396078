//! The dev-server holding and serving a job with 1 GiB of output: its resident memory
//! (peak and after) while a hand-driven runner streams the output in, while the job is
//! shown, and while the whole output is read back through the admin API in bounded
//! ranges (by `fyn-runner ctl logs`, and range by range). The dev-server is the real
//! binary with `--db`; its memory is read from /proc. `cargo bench --bench
//! devserver_output` (`FYN_BENCH_OUTPUT_MIB` changes the size).
#![allow(clippy::disallowed_methods)] // a bench measures time

#[cfg(target_os = "linux")]
mod linux_bench {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use ed25519_dalek::{Signer, SigningKey};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    use fyn_runner::ctl::{Client, parse_server};
    use fyn_runner::devserver::{JobCreated, JobInfo, JobRequest, OutputPage};
    use fyn_runner::protocol::{
        Command as ApiCommand, ExitStatus, JobOutcome, JobRef, RunnerMessage, SUBPROTOCOL,
        ServerMessage, auth_message, decode_server, encode,
    };

    /// Bytes per `job_output` event: far below the frame limit once in base64.
    const CHUNK: usize = 512 * 1024;

    struct Server {
        child: Child,
        runner_url: String,
        admin_url: String,
        admin_token: String,
        token: String,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn spawn_server(dir: &std::path::Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
            .args([
                "dev-server",
                "--listen",
                "127.0.0.1:0",
                "--print-token",
                "--db",
            ])
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
        let mut field = |name: &str| {
            let line = lines.next().expect("a line").expect("readable");
            line.strip_prefix(name)
                .unwrap_or_else(|| panic!("expected {name}, got {line:?}"))
                .to_owned()
        };
        let runner_url = field("runner-url: ");
        let admin_url = field("admin-url: ");
        let admin_token = field("admin-token: ");
        let token = field("token: ");
        Server {
            child,
            runner_url,
            admin_url,
            admin_token,
            token,
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

    fn mib(kib: u64) -> f64 {
        kib as f64 / 1024.0
    }

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn recv(ws: &mut Socket) -> ServerMessage {
        loop {
            match ws.next().await.expect("open").expect("works") {
                Message::Text(text) => return decode_server(text.as_str()).expect("decodes"),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn send(ws: &mut Socket, message: &RunnerMessage) {
        ws.send(Message::text(encode(message))).await.expect("sent");
    }

    /// Register, authenticate and become Active, as a runner would.
    async fn connect_runner(server: &Server) -> Socket {
        let mut request = format!("{}/runner/v1", server.runner_url)
            .into_client_request()
            .expect("url");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("upgrade");
        let ServerMessage::Hello { nonce, .. } = recv(&mut ws).await else {
            panic!("no hello");
        };
        let token = server.token.clone();
        send(&mut ws, &RunnerMessage::ValidateToken { token }).await;
        recv(&mut ws).await;
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public_key = STANDARD.encode(key.verifying_key().to_bytes());
        let register = RunnerMessage::Register {
            public_key,
            name: "bench".into(),
            version: "0".into(),
            slots: 1,
        };
        send(&mut ws, &register).await;
        let ServerMessage::Registered { runner_id } = recv(&mut ws).await else {
            panic!("not registered");
        };
        let signature = STANDARD.encode(key.sign(&auth_message(&nonce, &runner_id)).to_bytes());
        let authenticate = RunnerMessage::Authenticate {
            runner_id,
            signature,
            name: "bench".into(),
            version: "0".into(),
            slots: 1,
            last_command_index: 0,
        };
        send(&mut ws, &authenticate).await;
        recv(&mut ws).await;
        let startup = RunnerMessage::Startup {
            version: "0".into(),
            jobs: Vec::new(),
        };
        send(&mut ws, &startup).await;
        recv(&mut ws).await;
        send(&mut ws, &RunnerMessage::HardwareUnchanged {}).await;
        recv(&mut ws).await;
        send(&mut ws, &RunnerMessage::Ready { slots_free: 1 }).await;
        recv(&mut ws).await;
        ws
    }

    pub async fn run() {
        let total_mib: usize = std::env::var("FYN_BENCH_OUTPUT_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        let chunks = total_mib * 1024 * 1024 / CHUNK;
        let dir = tempfile::tempdir().expect("tempdir");
        let server = spawn_server(dir.path());
        let pid = server.child.id();
        let client = Client::new(
            parse_server(&server.admin_url).expect("url"),
            server.admin_token.clone(),
            None,
        )
        .expect("client");
        let mut ws = connect_runner(&server).await;
        let idle = status_kib(pid, "VmRSS");

        let request = JobRequest {
            command: vec!["big-output".into()],
            env: Default::default(),
            workdir: None,
            timeout_secs: 3600,
            output_limit_bytes: Some(4 << 30),
            cancel_grace_secs: None,
            inputs: Default::default(),
            outputs: Default::default(),
            kv: Default::default(),
        };
        let created: JobCreated = client
            .post("/admin/v1/jobs", Some(&request))
            .await
            .expect("submitted");
        let ServerMessage::Command { index, command } = recv(&mut ws).await else {
            panic!("no command");
        };
        assert!(matches!(command, ApiCommand::StartJob { .. }));
        send(&mut ws, &RunnerMessage::CommandAck { index }).await;
        let job = JobRef {
            job_id: created.id.clone(),
            attempt: 1,
        };

        // Ingest: 1 GiB of stdout in 512 KiB events, each acknowledged before the next.
        let data = STANDARD.encode(vec![b'x'; CHUNK]);
        let started = Instant::now();
        let mut peak_ingest_rss = 0;
        for n in 0..chunks {
            let offset = (n * CHUNK) as u64;
            let frame = format!(
                r#"{{"type":"event","index":{},"event":{{"kind":"job_output","job":{{"job_id":"{}","attempt":1}},"stream":"stdout","offset":{offset},"data":"{data}"}}}}"#,
                n + 1,
                job.job_id
            );
            ws.send(Message::text(frame)).await.expect("sent");
            recv(&mut ws).await;
            if n % 64 == 0 {
                peak_ingest_rss = peak_ingest_rss.max(status_kib(pid, "VmRSS"));
            }
        }
        let finished = RunnerMessage::Event {
            index: chunks as u64 + 1,
            event: fyn_runner::protocol::RunnerEvent::JobFinished {
                job: job.clone(),
                outcome: JobOutcome::Succeeded,
                status: ExitStatus::Exited { code: 0 },
                duration_ms: 1,
                stdout_bytes: (chunks * CHUNK) as u64,
                stderr_bytes: 0,
                detail: None,
                cpu_user_ms: None,
                cpu_system_ms: None,
                peak_rss_bytes: None,
                wall_ms: None,
                gpu_memory_peak_bytes: None,
            }
            .into(),
        };
        send(&mut ws, &finished).await;
        recv(&mut ws).await;
        let ingest = started.elapsed();
        let hwm_ingest = status_kib(pid, "VmHWM");

        // Show the job: no output inline, whatever it printed.
        let shown = Instant::now();
        let info: JobInfo = client
            .get(&format!("/admin/v1/jobs/{}", job.job_id))
            .await
            .expect("job");
        let show = shown.elapsed();
        assert_eq!(info.stdout_bytes, (chunks * CHUNK) as u64);

        // Read it all back, 1 MiB at a time, through the API.
        let read_started = Instant::now();
        let mut offset = 0;
        let mut read = 0u64;
        let mut peak_serve_rss = 0;
        loop {
            let path = format!(
                "/admin/v1/jobs/{}/output?offset={offset}&limit=1048576",
                job.job_id
            );
            let chunk: OutputPage = client.get(&path).await.expect("range");
            read += chunk.bytes().expect("base64").len() as u64;
            offset = chunk.next_offset;
            peak_serve_rss = peak_serve_rss.max(status_kib(pid, "VmRSS"));
            if chunk.complete {
                break;
            }
        }
        let ranges = read_started.elapsed();
        assert_eq!(read, (chunks * CHUNK) as u64);

        // And as an operator would: `fyn-runner ctl logs ID > /dev/null`.
        let ctl_started = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
            .args(["ctl", "--server", &server.admin_url, "--admin-token-file"])
            .arg(dir.path().join("admin-token"))
            .args(["logs", &job.job_id, "--stream", "stdout"])
            .stdout(Stdio::null())
            .status()
            .expect("ctl runs");
        assert!(status.success());
        let ctl = ctl_started.elapsed();
        let hwm_all = status_kib(pid, "VmHWM");
        let after = status_kib(pid, "VmRSS");

        let gib = (chunks * CHUNK) as f64 / f64::from(1u32 << 30);
        let build = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        println!("dev-server with {gib:.2} GiB of job output (--db, {build} build)");
        println!(
            "  idle, runner connected:        VmRSS {:6.1} MiB",
            mib(idle)
        );
        println!(
            "  ingest ({chunks} events):       {:6.1} s, VmRSS peak sampled {:.1} MiB, VmHWM {:.1} MiB",
            ingest.as_secs_f64(),
            mib(peak_ingest_rss),
            mib(hwm_ingest)
        );
        println!(
            "  GET job:                       {:6.1} ms",
            show.as_secs_f64() * 1e3
        );
        println!(
            "  read back in 1 MiB ranges:     {:6.1} s ({:.0} MiB/s), VmRSS peak sampled {:.1} MiB",
            ranges.as_secs_f64(),
            gib * 1024.0 / ranges.as_secs_f64(),
            mib(peak_serve_rss)
        );
        println!(
            "  ctl logs > /dev/null:          {:6.1} s ({:.0} MiB/s)",
            ctl.as_secs_f64(),
            gib * 1024.0 / ctl.as_secs_f64()
        );
        println!(
            "  overall VmHWM {:.1} MiB, VmRSS after {:.1} MiB (limit: 64 MiB)",
            mib(hwm_all),
            mib(after)
        );
        assert!(
            mib(hwm_all) < 64.0,
            "the dev-server's peak must stay under 64 MiB"
        );
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(linux_bench::run());
    }
    #[cfg(not(target_os = "linux"))]
    println!("devserver_output: reads /proc; Linux only");
}
