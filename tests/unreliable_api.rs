//! The runner against the reference control plane behind a relay that fails the way
//! networks, proxies and other control planes do (issue 14): HTTP 503 instead of the
//! upgrade, a connection cut right after the server committed a registration, a runner
//! killed at that moment, a command the runner cannot read, and a hundred of the same
//! failure in paused time (refusals; cuts right after each handshake), retried within
//! the documented backoff. End to end: the real runtime (or the real binary) and the
//! real dev-server; the relay only passes frames on, drops them, or rewrites one.
#![allow(clippy::disallowed_methods)] // the relay stamps failures with tokio's (paused) clock

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use fyn_runner::core::{CoreConfig, ExitCode};
use fyn_runner::devserver::{DevServer, DevServerConfig, JobRequest, JobState};
use fyn_runner::runtime::install::InstallPlan;
use fyn_runner::runtime::{self, RunnerHandle, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(60);

/// What the relay does to the next connections; each fault is used up once it struck.
#[derive(Default)]
struct Script {
    /// Connections still to answer with HTTP 503 instead of the upgrade.
    refuse: u32,
    /// Cut the connection when the server's `registered` reaches the relay (it is not
    /// passed on): the server has committed, the runner never hears it.
    cut_at_registered: bool,
    /// Hold back the server's `registered` and keep the connection open (the case then
    /// kills the runner).
    hold_registered: bool,
    /// Rewrite the next `start_job` into a command of a kind no runner knows.
    garble_start_job: bool,
    /// Cut the connection right after passing on the runner's next `command_ack`.
    cut_after_command_ack: bool,
    /// Sessions still to cut right after passing on the server's `ready_ack`: the
    /// runner is Active, and no heartbeat has been acknowledged yet.
    cut_after_ready_ack: u32,
}

#[derive(Default)]
struct Seen {
    refused: u32,
    /// When each refused connection arrived (tokio's clock: paused time in a test
    /// that pauses it).
    refused_at: Vec<tokio::time::Instant>,
    /// When each session cut after its `ready_ack` was cut.
    cut_at: Vec<tokio::time::Instant>,
    registered_held: bool,
    /// Every text frame passed on or dropped: who sent it, and its JSON.
    frames: Vec<(&'static str, Value)>,
}

struct Relay {
    url: String,
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Seen>>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        let script = Arc::new(Mutex::new(Script::default()));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (script_in, seen_in) = (script.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let refuse = {
                    let mut script = script_in.lock().expect("lock");
                    let refuse = script.refuse > 0;
                    script.refuse = script.refuse.saturating_sub(1);
                    refuse
                };
                if refuse {
                    let mut seen = seen_in.lock().expect("lock");
                    seen.refused += 1;
                    seen.refused_at.push(tokio::time::Instant::now());
                    drop(seen);
                    tokio::spawn(answer_503(tcp));
                } else {
                    tokio::spawn(relay_one(tcp, upstream, script_in.clone(), seen_in.clone()));
                }
            }
        });
        Self { url, script, seen }
    }

    fn script(&self, change: impl FnOnce(&mut Script)) {
        change(&mut self.script.lock().expect("lock"));
    }

    fn frames(&self, from: &str, kind: &str) -> Vec<Value> {
        self.seen
            .lock()
            .expect("lock")
            .frames
            .iter()
            .filter(|(who, frame)| *who == from && frame["type"] == kind)
            .map(|(_, frame)| frame.clone())
            .collect()
    }
}

/// An API down behind its proxy: the upgrade request is read and answered with 503.
async fn answer_503(mut tcp: TcpStream) {
    let mut request = vec![0u8; 4096];
    let _ = tcp.read(&mut request).await;
    let answer =
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let _ = tcp.write_all(answer.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn select_subprotocol(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    response.headers_mut().insert(
        "sec-websocket-protocol",
        "fyn-runner.v1".parse().expect("header value"),
    );
    Ok(response)
}

/// One runner connection, passed on to the dev-server frame by frame, with the faults
/// the script asks for. Dropping both sides is a cut (no Close frame).
async fn relay_one(
    tcp: TcpStream,
    upstream: std::net::SocketAddr,
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Seen>>,
) {
    let Ok(runner) = tokio_tungstenite::accept_hdr_async(tcp, select_subprotocol).await else {
        return;
    };
    let mut request = format!("ws://{upstream}/runner/v1")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "fyn-runner.v1".parse().expect("header value"),
    );
    let Ok((server, _)) = tokio_tungstenite::connect_async(request).await else {
        return;
    };
    let (mut to_runner, mut from_runner) = runner.split();
    let (mut to_server, mut from_server) = server.split();
    let record = |who, text: &str| {
        let frame = serde_json::from_str(text).unwrap_or(Value::Null);
        seen.lock().expect("lock").frames.push((who, frame));
    };
    loop {
        tokio::select! {
            message = from_runner.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    record("runner", text.as_str());
                    let ack = text.as_str().contains(r#""type":"command_ack""#);
                    if to_server.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                    let cut = ack && std::mem::take(&mut script.lock().expect("lock").cut_after_command_ack);
                    if cut {
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let _ = to_server.send(Message::Close(frame)).await;
                    return;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            },
            message = from_server.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let mut text = text.as_str().to_owned();
                    record("server", &text);
                    let registered = text.contains(r#""type":"registered""#);
                    let ready_ack = text.contains(r#""type":"ready_ack""#);
                    {
                        let mut script = script.lock().expect("lock");
                        if registered && std::mem::take(&mut script.cut_at_registered) {
                            return;
                        }
                        if registered && std::mem::take(&mut script.hold_registered) {
                            seen.lock().expect("lock").registered_held = true;
                            continue;
                        }
                        if text.contains(r#""kind":"start_job""#)
                            && std::mem::take(&mut script.garble_start_job)
                        {
                            text = text.replace(r#""kind":"start_job""#, r#""kind":"start_job_v9""#);
                        }
                    }
                    if to_runner.send(Message::text(text)).await.is_err() {
                        return;
                    }
                    if ready_ack {
                        let mut script = script.lock().expect("lock");
                        if script.cut_after_ready_ack > 0 {
                            script.cut_after_ready_ack -= 1;
                            seen.lock().expect("lock").cut_at.push(tokio::time::Instant::now());
                            return;
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let _ = to_runner.send(Message::Close(frame)).await;
                    return;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            },
        }
    }
}

fn settings(relay: &Relay, state_dir: &Path, token: &str) -> RunnerSettings {
    RunnerSettings {
        token: Some(Secret::new(token)),
        name: "unreliable".into(),
        core: CoreConfig::default(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        ..RunnerSettings::new(
            runtime::settings::endpoint(&relay.url, false).expect("url"),
            state_dir.to_path_buf(),
        )
    }
}

async fn active(handle: &mut RunnerHandle) {
    tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("the runner reaches Active in time");
}

/// The runner ID in the state folder's saved identity.
fn saved_runner_id(state_dir: &Path) -> String {
    let text =
        std::fs::read_to_string(state_dir.join("identity/runner.json")).expect("runner.json");
    let value: Value = serde_json::from_str(&text).expect("json");
    value["runner_id"].as_str().expect("runner_id").to_owned()
}

/// Every `register` the runner sent carried the same public key; returns how many.
fn registers_with_one_key(relay: &Relay) -> usize {
    let registers = relay.frames("runner", "register");
    let keys: std::collections::BTreeSet<String> = registers
        .iter()
        .map(|r| r["public_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(keys.len(), 1, "one key for every register: {registers:?}");
    registers.len()
}

/// Thirty 503s in a row (with the operator's default backoff, 0.5 s doubling to a 60 s
/// cap, more than twenty minutes of them; here the cap is 100 ms), then a cut right
/// after the server committed the registration: one runner at the API, with the id
/// the runner saved, registered once with one key and one token.
#[tokio::test]
async fn registration_survives_503s_and_a_cut_after_the_commit() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let relay = Relay::start(server.local_addr()).await;
    relay.script(|s| {
        s.refuse = 30;
        s.cut_at_registered = true;
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut handle = runtime::start(settings(&relay, dir.path(), &token)).expect("starts");
    active(&mut handle).await;
    assert_eq!(relay.seen.lock().expect("lock").refused, 30);
    let runners = server.runners().expect("runners");
    assert_eq!(runners.len(), 1, "one runner at the API: {runners:?}");
    assert_eq!(saved_runner_id(dir.path()), runners[0].id, "the same id");
    let registered: Vec<Value> = relay.frames("server", "registered");
    assert_eq!(
        registered.len(),
        2,
        "registered twice, the first answer lost"
    );
    assert!(
        registered
            .iter()
            .all(|r| r["runner_id"] == runners[0].id.as_str())
    );
    assert_eq!(registers_with_one_key(&relay), 2);
    stop_cleanly(handle, server).await;
}

/// The runner stops when asked, exiting clean; then the server.
async fn stop_cleanly(handle: RunnerHandle, server: DevServer) {
    handle.shutdown();
    let code = tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("stops");
    assert_eq!(code, ExitCode::Clean);
    server.shutdown().await;
}

/// The operator's default backoff: 0.5 s, doubling to a 60 s cap.
const BASE: Duration = Duration::from_millis(500);
const CAP: Duration = Duration::from_secs(60);
/// Long enough in paused time for a hundred waits of up to `CAP`.
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A runner that got through its failures.
struct Survived {
    server: DevServer,
    relay: Relay,
    handle: RunnerHandle,
    /// When each failure struck.
    at: Vec<tokio::time::Instant>,
    _state: tempfile::TempDir,
}

/// A new runner with the default backoff, registering through a relay that fails as
/// `fault` says; when that has happened `failures` times (`stamps` reads the
/// moments), the runner Active. Paused time: hours of waits pass in a moment.
async fn failing_then_active(
    fault: impl FnOnce(&mut Script),
    stamps: impl Fn(&Seen) -> &Vec<tokio::time::Instant>,
    failures: usize,
) -> Survived {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let relay = Relay::start(server.local_addr()).await;
    relay.script(fault);
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut settings = settings(&relay, dir.path(), &token);
    (settings.backoff_min, settings.backoff_max) = (BASE, CAP);
    let mut handle = runtime::start(settings).expect("starts");
    let all_failed = async {
        while stamps(&relay.seen.lock().expect("lock")).len() < failures {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(DAY, all_failed)
        .await
        .expect("every failure happened");
    tokio::time::timeout(DAY, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("Active after the failures");
    let at = stamps(&relay.seen.lock().expect("lock")).clone();
    Survived {
        server,
        relay,
        handle,
        at,
        _state: dir,
    }
}

/// A hundred 503s in a row with the operator's default backoff (each wait a uniform
/// draw below its ceiling: §15), nearly an hour of refusals: every wait is within its
/// attempt's ceiling, they add up to what the rule makes likely, and there is no tight
/// loop. Then the API answers and the runner registers, once.
#[tokio::test(start_paused = true)]
async fn a_hundred_refusals_are_retried_within_the_documented_backoff() {
    let run = failing_then_active(|s| s.refuse = 100, |seen| &seen.refused_at, 100).await;
    assert_eq!(run.at.len(), 100);
    assert_within_backoff(&run.at, BASE, CAP);
    assert_eq!(run.server.runners().expect("runners").len(), 1);
    stop_cleanly(run.handle, run.server).await;
}

/// The same failure a hundred times right after the handshake: every session reaches
/// Active and is cut before a heartbeat is acknowledged, so none proved healthy and the
/// attempt count never starts again (§15): the waits still grow to the cap.
#[tokio::test(start_paused = true)]
async fn a_hundred_cuts_right_after_the_handshake_back_off_to_the_cap() {
    let run = failing_then_active(|s| s.cut_after_ready_ack = 100, |seen| &seen.cut_at, 100).await;
    assert_within_backoff(&run.at, BASE, CAP);
    assert_eq!(run.relay.frames("runner", "register").len(), 1);
    assert_eq!(run.server.runners().expect("runners").len(), 1);
    stop_cleanly(run.handle, run.server).await;
}

/// Failures at `at` (tokio's clock), one attempt each, were retried as §15 says: the
/// wait after failure n is at most min(cap, base * 2^(n-1)) (plus the moment a
/// connection and a handshake take), the waits add up to what uniform draws make
/// near certain (those below a 60 s ceiling average 30 s: a quarter of the cap each is
/// far below the sum with any seed), and almost none is a quick retry.
fn assert_within_backoff(at: &[tokio::time::Instant], base: Duration, cap: Duration) {
    let waits: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    let slack = Duration::from_millis(100);
    for (i, wait) in waits.iter().enumerate() {
        let ceiling = base.saturating_mul(1 << i.min(20)).min(cap);
        assert!(
            *wait <= ceiling + slack,
            "wait {} was {wait:?}, above its ceiling {ceiling:?}",
            i + 1
        );
    }
    let total: Duration = waits.iter().sum();
    let failures = u32::try_from(at.len()).unwrap_or(u32::MAX);
    assert!(
        total >= cap * failures / 4,
        "{failures} failures in {total:?}"
    );
    let quick = waits
        .iter()
        .skip(10)
        .filter(|w| **w < Duration::from_millis(100))
        .count();
    assert!(
        quick <= 3,
        "{quick} retries within 100 ms of a failure: {waits:?}"
    );
}

/// `fyn-runner install` registers the same way: it retries, and installs once.
#[tokio::test]
async fn install_registers_through_503s_and_a_cut_after_the_commit() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let relay = Relay::start(server.local_addr()).await;
    relay.script(|s| {
        s.refuse = 10;
        s.cut_at_registered = true;
    });
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("var/lib/fyn-runner");
    let config = root.path().join("etc/fyn-runner/config.toml");
    let plan = InstallPlan {
        config_path: config.clone(),
        config_text: format!("server = \"{}\"\n", relay.url),
        service: None,
        jobs_dir: None,
        created_jobs_dir: None,
    };
    let token = server.mint_token().expect("token");
    let handle = runtime::start_install(settings(&relay, &state, &token), plan).expect("starts");
    let code = tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("ends");
    assert_eq!(code, ExitCode::Clean);
    let runners = server.runners().expect("runners");
    assert_eq!(runners.len(), 1, "{runners:?}");
    assert_eq!(saved_runner_id(&state), runners[0].id);
    assert_eq!(registers_with_one_key(&relay), 2);
    assert!(config.exists(), "installed");
    server.shutdown().await;
}

/// The runner is killed after the server committed its `register` and before
/// `registered` reached it. Started again with the same token, it registers with the
/// key it kept and the API answers with the same runner: one runner, no token wasted.
#[tokio::test]
async fn a_runner_killed_after_the_commit_registers_as_the_same_runner() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let relay = Relay::start(server.local_addr()).await;
    relay.script(|s| s.hold_registered = true);
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let run = |dir: &Path| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
            .args([
                "run", "--server", &relay.url, "--token", &token, "--name", "killed",
            ])
            .arg("--state-dir")
            .arg(dir)
            .env_remove("FYN_RUNNER_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts")
    };
    let mut first = run(dir.path());
    tokio::time::timeout(WAIT, async {
        while !relay.seen.lock().expect("lock").registered_held {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server committed the registration");
    first.kill().await.expect("killed");
    assert_eq!(server.runners().expect("runners").len(), 1, "committed");

    let mut second = run(dir.path());
    let id = server.runners().expect("runners")[0].id.clone();
    tokio::time::timeout(WAIT, async {
        loop {
            let ready = relay.frames("server", "ready_ack").len();
            if ready > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the second process reaches Active");
    let runners = server.runners().expect("runners");
    assert_eq!(runners.len(), 1, "one runner at the API: {runners:?}");
    assert_eq!(runners[0].id, id);
    assert_eq!(saved_runner_id(dir.path()), id, "the same id");
    assert_eq!(registers_with_one_key(&relay), 2, "the kept key, twice");
    second.kill().await.expect("killed");
    server.shutdown().await;
}

/// A stored command the runner cannot read (here one rewritten on its way, as a newer
/// or foreign control plane would send it) is rejected under its index and retired by
/// the API after one session: its job fails with the runner's reason, and after a
/// reconnect it is not sent again.
#[tokio::test]
async fn an_unreadable_command_is_retired_after_one_session() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let relay = Relay::start(server.local_addr()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = server.mint_token().expect("token");
    let mut handle = runtime::start(settings(&relay, dir.path(), &token)).expect("starts");
    active(&mut handle).await;
    relay.script(|s| {
        s.garble_start_job = true;
        s.cut_after_command_ack = true;
    });
    let request = JobRequest {
        command: vec!["true".into()],
        env: Default::default(),
        workdir: None,
        timeout_secs: 60,
        output_limit_bytes: None,
        cancel_grace_secs: None,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    };
    let id = server.submit_job(request).expect("submit");
    let failed = tokio::time::timeout(WAIT, async {
        loop {
            let job = server.job(&id).expect("query").expect("job");
            if job.state == JobState::Failed {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the job fails");
    let detail = failed.detail.unwrap_or_default();
    assert!(
        detail.contains("start_job_v9"),
        "the runner's reason: {detail}"
    );
    let rejected: Vec<Value> = relay
        .frames("runner", "event")
        .into_iter()
        .filter(|e| e["event"]["kind"] == "command_rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    // The relay cut the session after the ack: the runner comes back, and the command
    // is not resent.
    tokio::time::timeout(WAIT, async {
        while relay.frames("server", "ready_ack").len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a second session");
    assert_eq!(server.runners().expect("runners")[0].unacked_commands, 0);
    let commands = relay.frames("server", "command");
    assert_eq!(commands.len(), 1, "sent once, never again: {commands:?}");
    stop_cleanly(handle, server).await;
}
