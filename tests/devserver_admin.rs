//! The dev-server's admin API as its neighbours meet it: a web page in a browser on
//! the same machine (a cross-origin "simple" request, a DNS-rebinding page), a client
//! without the token, and a well-behaved client reading jobs and their output. The
//! first tests run the real binary; the rest an in-process server over raw HTTP.

mod wire;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use fyn_runner::devserver::{DevServer, DevServerConfig, JobState};
use fyn_runner::protocol::{
    JobOutcome, MAX_FRAME_BYTES, OutputStream, RunnerEvent, RunnerMessage, SUBPROTOCOL,
};
use wire::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------- the binary

/// `fyn-runner dev-server` on a free loopback port; killed when dropped.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    token: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_dev_server(args: &[&str], envs: &[(&str, &Path)]) -> ServerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
    command
        .args(["dev-server", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("FYN_RUNNER_ADMIN_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the dev-server starts");
    let stdout = child.stdout.take().expect("its stdout");
    let mut addr = None;
    let mut token = None;
    // It prints its URLs and its admin token, one line each, once it listens.
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line of stdout");
        if let Some(url) = line.strip_prefix("admin-url: http://") {
            addr = url.parse().ok();
        }
        if let Some(value) = line.strip_prefix("admin-token: ") {
            token = Some(value.to_owned());
            break;
        }
    }
    ServerProcess {
        child,
        addr: addr.expect("the admin URL is printed"),
        token: token.expect("the admin token is printed"),
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a browser sends for `fetch(url, {method: "POST", body: "..."})` from another
/// site: no preflight, `text/plain`, its own Origin, and no way to add a token.
fn cross_origin_simple_post(host: &str) -> String {
    format!(
        "Host: {host}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain;charset=UTF-8\r\n"
    )
}

#[tokio::test]
async fn a_web_page_cannot_use_the_admin_api_of_the_binary() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("private").join("admin-token");
    let db = dir.path().join("dev.db");
    let server = spawn_dev_server(
        &[
            "--admin-token-file",
            token_file.to_str().ok_or("path")?,
            "--db",
            db.to_str().ok_or("path")?,
        ],
        &[],
    );
    let addr = server.addr;
    let host = addr.to_string();
    let job = r#"{"command": ["sh", "-c", "echo pwned"], "timeout_secs": 60}"#;

    // A page of another site posts a job, as browsers do without asking.
    let (status, _, body) = raw_http(
        addr,
        "POST",
        "/admin/v1/jobs",
        &cross_origin_simple_post(&host),
        job,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("origin")));

    // A DNS-rebinding page: same-origin to the browser, so it could read answers, but
    // the Host is its own name.
    let rebinding = format!("Host: evil.example:{}\r\n", addr.port());
    let (status, _, body) = raw_http(
        addr,
        "POST",
        "/admin/v1/registration-tokens",
        &rebinding,
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = raw_http(addr, "GET", "/admin/v1/jobs", &rebinding, "").await;
    assert_eq!(status, 403);

    // Without the token (or with another), nothing at all: 401, in JSON.
    let plain = format!("Host: {host}\r\n");
    for path in [
        "/admin/v1/jobs",
        "/admin/v1/runners",
        "/admin/v1/nothing-here",
    ] {
        let (status, head, body) = raw_http(addr, "GET", path, &plain, "").await;
        assert_eq!(status, 401, "{path}");
        assert!(body["error"].is_string(), "{path}: {body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer")
        );
    }
    let wrong = format!(
        "Host: {host}\r\nAuthorization: Bearer {}x\r\n",
        server.token
    );
    assert_eq!(
        raw_http(addr, "GET", "/admin/v1/jobs", &wrong, "").await.0,
        401
    );
    // Even with the token, a body that is not JSON is refused.
    let text_body = format!(
        "Host: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\n",
        server.token
    );
    assert_eq!(
        raw_http(addr, "POST", "/admin/v1/jobs", &text_body, job)
            .await
            .0,
        415
    );

    // The operator's client: this server's Host, the token, JSON. Nothing above ran.
    let good = format!(
        "Host: localhost:{}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n",
        addr.port(),
        server.token
    );
    let (status, _, jobs) = raw_http(addr, "GET", "/admin/v1/jobs", &good, "").await;
    assert_eq!((status, jobs), (200, json!([])));

    // A browser's WebSocket to the runner endpoint carries its page's Origin.
    let upgrade = format!(
        "Host: {host}\r\nOrigin: http://evil.example\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
    );
    assert_eq!(
        raw_http(addr, "GET", "/runner/v1", &upgrade, "").await.0,
        403
    );

    // Where the token and the clear-text registration tokens live: private.
    let written = std::fs::read_to_string(&token_file)?;
    assert_eq!(written.trim(), server.token);
    #[cfg(unix)]
    {
        assert_eq!(mode(&token_file), 0o600);
        assert_eq!(mode(token_file.parent().ok_or("parent")?), 0o700);
        assert_eq!(mode(&db), 0o600);
    }
    Ok(())
}

/// Without `--admin-token-file`: a fresh token per start, written where `ctl` looks
/// (under `$XDG_RUNTIME_DIR`), removed when the server stops.
#[cfg(unix)]
#[tokio::test]
async fn the_default_token_file_lives_as_long_as_the_server() -> TestResult {
    let runtime = tempfile::tempdir()?;
    let mut server = spawn_dev_server(&[], &[("XDG_RUNTIME_DIR", runtime.path())]);
    let expected: std::path::PathBuf = runtime
        .path()
        .join("fyn-runner-dev-server")
        .join(format!("admin-token-{}", server.addr.port()));
    assert_eq!(
        fyn_runner::devserver::default_token_path(server.addr.port())
            .ok()
            .map(|p| p.file_name().map(ToOwned::to_owned)),
        Some(expected.file_name().map(ToOwned::to_owned))
    );
    assert_eq!(std::fs::read_to_string(&expected)?.trim(), server.token);
    assert_eq!(mode(&expected), 0o600);
    assert_eq!(mode(expected.parent().ok_or("parent")?), 0o700);

    // Ctrl-C: a clean stop takes the file along.
    let pid = i32::try_from(server.child.id())?;
    // SAFETY: signalling our own child by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = server.child.wait()?;
    assert!(status.success(), "{status}");
    assert!(!expected.exists(), "the stale token file is gone");
    Ok(())
}

// ---------------------------------------------------------------- in process

async fn start() -> DevServer {
    DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("the dev-server starts")
}

#[tokio::test]
async fn every_error_is_json() -> TestResult {
    let server = start().await;
    let cases = [
        ("GET", "/admin/v1/nothing-here", None, 404),
        ("DELETE", "/admin/v1/jobs", None, 405),
        ("POST", "/admin/v1/jobs", Some("{"), 400),
        ("GET", "/admin/v1/jobs/j-x/output?stream=stdin", None, 400),
        ("GET", "/admin/v1/jobs/j-x/output?bogus=1", None, 400),
        ("GET", "/admin/v1/jobs/j-x/output", None, 404),
    ];
    for (method, path, body, code) in cases {
        let (status, json) = http(&server, method, path, body).await;
        assert_eq!(status, code, "{method} {path}");
        assert!(json["error"].is_string(), "{method} {path}: {json}");
    }

    // 10 MiB: refused (413) in JSON, without reading it all.
    let addr = server.local_addr();
    let mut stream = TcpStream::connect(addr).await?;
    let size = 10 << 20;
    let head = format!(
        "POST /admin/v1/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nConnection: close\r\nContent-Length: {size}\r\n\r\n",
        server.admin_token()
    );
    stream.write_all(head.as_bytes()).await?;
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..(size / chunk.len()) {
            if writer.write_all(&chunk).await.is_err() {
                break; // the server stopped reading, as it should
            }
        }
    });
    let mut response = Vec::new();
    timeout(Duration::from_secs(10), reader.read_to_end(&mut response)).await??;
    sender.abort();
    let (status, _, json) = parse_response(&response);
    assert_eq!(status, 413);
    assert!(json["error"].is_string(), "{json}");
    Ok(())
}

#[tokio::test]
async fn inputs_a_runner_would_refuse_are_refused_at_submission_naming_the_field() -> TestResult {
    let server = start().await;
    let cases = [
        (
            json!({"command": ["true"], "env": {"A=B": "x"}, "timeout_secs": 5}),
            "env",
        ),
        (
            json!({"command": ["true"], "env": {"A\u{0}B": "x"}, "timeout_secs": 5}),
            "env",
        ),
        (
            json!({"command": ["true"], "env": {"": "x"}, "timeout_secs": 5}),
            "env",
        ),
        (
            json!({"command": ["true"], "env": {"A": "x\u{0}"}, "timeout_secs": 5}),
            "env",
        ),
        (
            json!({"command": ["echo", "a\u{0}b"], "timeout_secs": 5}),
            "command",
        ),
        (
            json!({"command": ["true"], "workdir": "../..", "timeout_secs": 5}),
            "workdir",
        ),
        (
            json!({"command": ["true"], "workdir": "/etc", "timeout_secs": 5}),
            "workdir",
        ),
        (json!({"command": [], "timeout_secs": 5}), "command"),
        (
            json!({"command": ["true"], "timeout_secs": 0}),
            "timeout_secs",
        ),
        (
            json!({"command": ["true"], "timeout_secs": 1u64 << 32}),
            "timeout_secs",
        ),
        (
            json!({"command": ["true"], "timeout_secs": 5, "cancel_grace_secs": 86_401}),
            "cancel_grace_secs",
        ),
    ];
    for (job, field) in cases {
        let (status, body) = http(&server, "POST", "/admin/v1/jobs", Some(&job.to_string())).await;
        assert_eq!(status, 400, "{job}");
        assert_eq!(body["field"], json!(field), "{job}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("invalid job"))
        );
    }
    let fine = json!({"command": ["true"], "workdir": "sub/dir", "timeout_secs": 5});
    let (status, body) = http(&server, "POST", "/admin/v1/jobs", Some(&fine.to_string())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.jobs()?.len(), 1, "only the valid job was accepted");
    Ok(())
}

#[tokio::test]
async fn a_job_that_cannot_fit_a_frame_is_refused_at_submission() -> TestResult {
    let server = start().await;
    // Under the 2 MiB body limit, over the 1 MiB frame limit once in a start_job.
    let big = "x".repeat(MAX_FRAME_BYTES);
    let job = json!({"command": ["echo", big], "timeout_secs": 5});
    let (status, body) = http(&server, "POST", "/admin/v1/jobs", Some(&job.to_string())).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("frame limit"))
    );
    // Just under the limit fits.
    let fits = "x".repeat(MAX_FRAME_BYTES - 1024);
    let job = json!({"command": ["echo", fits], "timeout_secs": 5});
    let (status, _) = http(&server, "POST", "/admin/v1/jobs", Some(&job.to_string())).await;
    assert_eq!(status, 201);
    Ok(())
}

/// Output is read a bounded range at a time, and a reader can wait for more.
#[tokio::test]
async fn job_output_is_read_in_ranges_and_followed() -> TestResult {
    let server = start().await;
    let (_identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let id = server.submit_job(job_request(&["sh", "-c", "..."]))?;
    let (index, _) = expect_start_job(&mut client).await;
    client.send(&RunnerMessage::CommandAck { index }).await;
    let r = job_ref(&id, 1);
    let output = |offset: u64, data: &[u8]| RunnerEvent::JobOutput {
        job: r.clone(),
        stream: OutputStream::Stdout,
        offset,
        data: STANDARD.encode(data),
    };
    send_event(&mut client, 1, output(0, b"hello ")).await;

    let read = |query: String| {
        let server = &server;
        let id = id.clone();
        async move {
            let path = format!("/admin/v1/jobs/{id}/output?{query}");
            let (status, body) = http(server, "GET", &path, None).await;
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    let bytes = |body: &Value| {
        STANDARD
            .decode(body["data"].as_str().unwrap_or(""))
            .unwrap_or_default()
    };
    let first = read("offset=2&limit=3".to_owned()).await;
    assert_eq!(bytes(&first), b"llo");
    assert_eq!(
        (
            &first["next_offset"],
            &first["held_bytes"],
            &first["complete"]
        ),
        (&json!(5), &json!(6), &json!(false))
    );

    // A follower waits at the end for what comes next.
    let follower = tokio::spawn({
        let server_addr = server.local_addr();
        let token = server.admin_token().to_owned();
        let path = format!("/admin/v1/jobs/{id}/output?offset=6&wait_ms=5000");
        async move {
            let headers = format!("Host: {server_addr}\r\nAuthorization: Bearer {token}\r\n");
            raw_http(server_addr, "GET", &path, &headers, "").await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!follower.is_finished(), "it waits for new bytes");
    send_event(&mut client, 2, output(6, b"world\n")).await;
    let (status, _, next) = timeout(Duration::from_secs(2), follower).await??;
    assert_eq!(status, 200);
    assert_eq!(bytes(&next), b"world\n");

    send_event(
        &mut client,
        3,
        RunnerEvent::JobFinished {
            job: r.clone(),
            outcome: JobOutcome::Succeeded,
            status: fyn_runner::protocol::ExitStatus::Exited { code: 0 },
            duration_ms: 1,
            stdout_bytes: 12,
            stderr_bytes: 0,
            detail: None,
            cpu_user_ms: None,
            cpu_system_ms: None,
            peak_rss_bytes: None,
            wall_ms: None,
            gpu_memory_peak_bytes: None,
        },
    )
    .await;
    // At the end of an ended job: complete at once, however long it may wait.
    let end = timeout(
        Duration::from_secs(2),
        read("offset=12&wait_ms=30000".to_owned()),
    )
    .await?;
    assert_eq!((&end["data"], &end["complete"]), (&json!(""), &json!(true)));
    assert_eq!(end["state"], json!("finished"));
    assert_eq!(job(&server, &id).state, JobState::Finished);
    Ok(())
}

/// A runner's events are listed in pages (`after`, `limit`), never all at once: a runner
/// that sent millions of events cannot make one answer unbounded.
#[tokio::test]
async fn a_runners_events_are_listed_in_pages() -> TestResult {
    let server = start().await;
    let (identity, mut client) = register(&server).await;
    activate(&mut client).await;
    let id = server.submit_job(job_request(&["true"]))?;
    let (index, _) = expect_start_job(&mut client).await;
    client.send(&RunnerMessage::CommandAck { index }).await;
    let r = job_ref(&id, 1);
    for index in 1..=5 {
        let event = RunnerEvent::JobOutput {
            job: r.clone(),
            stream: OutputStream::Stdout,
            offset: index - 1,
            data: STANDARD.encode(b"x"),
        };
        send_event(&mut client, index, event).await;
    }
    let page = |query: &str| {
        let server = &server;
        let path = format!("/admin/v1/runners/{}/events?{query}", identity.runner_id);
        async move {
            let (status, body) = http(server, "GET", &path, None).await;
            assert_eq!(status, 200, "{path}: {body}");
            body.as_array()
                .expect("a list")
                .iter()
                .map(|event| event["index"].as_u64().expect("an index"))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page("limit=2").await, [1, 2]);
    assert_eq!(page("after=2&limit=2").await, [3, 4]);
    assert_eq!(page("after=4").await, [5]);
    assert!(page("after=5").await.is_empty());
    // A limit past the largest page is taken as the largest page.
    assert_eq!(page("limit=99999999").await, [1, 2, 3, 4, 5]);
    for bad in ["limit=-1", "after=x", "bogus=1"] {
        let path = format!("/admin/v1/runners/{}/events?{bad}", identity.runner_id);
        let (status, body) = http(&server, "GET", &path, None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    Ok(())
}
