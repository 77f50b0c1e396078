//! Idle memory: fyn-runner's resident memory in Active with nothing to do, beside
//! `node -e 'setInterval(()=>{},1e9)'` idling in the same run (skipped, and said so,
//! when there is no `node`).

use std::process::{Command, Stdio};
use std::time::Duration;

use fyn_runner::devserver::{DevServer, DevServerConfig};

use super::{spawn_runner, status_kib, until_ready};

/// How long each idles before it is measured: past the start's allocations, and
/// through ten heartbeats (one a second here), each with its acknowledgement and store
/// commit, so what idling itself touches is counted.
const SETTLE: Duration = Duration::from_secs(10);
const HEARTBEAT_MS: u64 = 1_000;

pub async fn section() {
    let mut config = DevServerConfig::ephemeral();
    config.session.heartbeat_interval_ms = HEARTBEAT_MS;
    config.session.ack_timeout_ms = HEARTBEAT_MS / 2;
    let server = DevServer::start(config).await.expect("dev-server");
    let state = tempfile::tempdir().expect("tempdir");
    let mut runner = spawn_runner(
        &server.url(),
        state.path(),
        &server.mint_token().expect("token"),
        4,
    );
    until_ready(&server).await;
    tokio::time::sleep(SETTLE).await;
    let pid = runner.id();
    let (rss, anon, file) = (
        status_kib(pid, "VmRSS"),
        status_kib(pid, "RssAnon"),
        status_kib(pid, "RssFile"),
    );
    let _ = runner.kill();
    let _ = runner.wait();
    server.shutdown().await;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "idle memory (resident, {} s in Active, a heartbeat every {} ms)",
        SETTLE.as_secs(),
        HEARTBEAT_MS
    );
    println!(
        "  fyn-runner   {:5.1} MiB ({:.1} MiB anonymous, {:.1} MiB file-backed)",
        mib(rss),
        mib(anon),
        mib(file)
    );
    let node = Command::new("node")
        .args(["-e", "setInterval(()=>{},1e9)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match node {
        Ok(mut node) => {
            tokio::time::sleep(SETTLE).await;
            let node_rss = status_kib(node.id(), "VmRSS");
            let _ = node.kill();
            let _ = node.wait();
            println!(
                "  node idling  {:5.1} MiB; fyn-runner is {:.1}x smaller",
                mib(node_rss),
                node_rss as f64 / rss.max(1) as f64
            );
        }
        Err(error) => println!("  node: not measured ({error})"),
    }
}
