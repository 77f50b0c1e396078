//! Seed 000's hardware sync end to end against the dev-server: no cache → the full
//! record; the same hardware → "unchanged"; changed hardware → only the changes; and in
//! Active, a change found by the periodic re-check → a `hardware_changed` event. The
//! hardware itself is a stand-in so the test controls what "changed" means.
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fyn_runner::core::CoreConfig;
use fyn_runner::devserver::{DevServer, DevServerConfig};
use fyn_runner::hardware::{self, HardwareReport};
use fyn_runner::protocol::SessionParams;
use fyn_runner::runtime::{self, HardwareSource, RunnerHandle, RunnerSettings, Secret};

const WAIT: Duration = Duration::from_secs(20);

fn settings(
    server: &DevServer,
    dir: &Path,
    token: Option<String>,
    machine: &Arc<Mutex<HardwareReport>>,
    recheck_ms: u64,
) -> RunnerSettings {
    let machine = machine.clone();
    let probe = move |_: &Path| machine.lock().map(|r| r.clone()).map_err(|e| e.to_string());
    RunnerSettings {
        token: token.map(Secret::new),
        name: "hw-runner".into(),
        core: CoreConfig {
            hardware_recheck_ms: recheck_ms,
            ..CoreConfig::default()
        },
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        hardware: HardwareSource::Custom(Arc::new(probe)),
        ..RunnerSettings::new(
            runtime::settings::endpoint(&server.url(), false).expect("url"),
            dir.to_path_buf(),
        )
    }
}

async fn active(handle: &mut RunnerHandle) {
    let status = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active"))
        .await
        .expect("in time");
    assert_eq!(status.state, "Active", "{status:?}");
}

async fn stop(handle: RunnerHandle) {
    handle.shutdown();
    assert_eq!(
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("stops")
            .code(),
        0
    );
}

fn server_record(server: &DevServer, id: &str) -> serde_json::Value {
    server
        .runner(id)
        .expect("query")
        .expect("known")
        .hardware
        .expect("a hardware record")
}

/// What the runner sent on its last start, from the dev-server's own event-free view:
/// the stored record must equal what the runner's cache now holds.
fn cached(dir: &Path) -> serde_json::Value {
    let report = hardware::load_cache(dir)
        .expect("readable cache")
        .expect("a cache");
    serde_json::to_value(report).expect("json")
}

#[tokio::test]
async fn no_cache_then_unchanged_then_changed_then_a_recheck_in_active() {
    let server = DevServer::start(DevServerConfig {
        session: SessionParams {
            heartbeat_interval_ms: 5_000,
            ack_timeout_ms: 2_000,
            runner_lost_threshold_ms: 60_000,
        },
        ..DevServerConfig::ephemeral()
    })
    .await
    .expect("dev-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let real = hardware::collect(dir.path()).expect("this machine's hardware");
    let machine = Arc::new(Mutex::new(real.clone()));

    // 1. No cache: the full record; the cache is written once the API confirms.
    assert!(
        hardware::load_cache(dir.path())
            .expect("readable")
            .is_none()
    );
    let token = server.mint_token().expect("token");
    let mut handle = runtime::start(settings(
        &server,
        dir.path(),
        Some(token),
        &machine,
        600_000,
    ))
    .expect("starts");
    active(&mut handle).await;
    let id = handle.status.borrow().runner_id.clone().expect("id");
    assert_eq!(
        server_record(&server, &id),
        serde_json::to_value(&real).expect("json")
    );
    assert_eq!(cached(dir.path()), server_record(&server, &id));
    stop(handle).await;

    // 2. Same hardware, new process: "unchanged"; the record stays as it was.
    let mut handle =
        runtime::start(settings(&server, dir.path(), None, &machine, 600_000)).expect("restarts");
    active(&mut handle).await;
    assert_eq!(
        server_record(&server, &id),
        serde_json::to_value(&real).expect("json")
    );
    stop(handle).await;

    // 3. Changed hardware (more memory, another host name): only the changes are sent,
    //    and the API's record, with the changes applied, equals the new hardware.
    let mut upgraded = real.clone();
    upgraded.memory.total_bytes += 1 << 30;
    upgraded.os.hostname = format!("{}-upgraded", upgraded.os.hostname);
    *machine.lock().expect("lock") = upgraded.clone();
    let mut handle =
        runtime::start(settings(&server, dir.path(), None, &machine, 200)).expect("restarts");
    active(&mut handle).await;
    assert_eq!(
        server_record(&server, &id),
        serde_json::to_value(&upgraded).expect("json")
    );
    assert_eq!(
        cached(dir.path()),
        serde_json::to_value(&upgraded).expect("json")
    );

    // 4. In Active the re-check (every 200 ms here) finds a change and sends it as an
    //    event; the API applies it.
    let mut regraded = upgraded.clone();
    regraded.memory.total_bytes -= 1 << 29;
    *machine.lock().expect("lock") = regraded.clone();
    let want = serde_json::to_value(&regraded).expect("json");
    let deadline = tokio::time::Instant::now() + WAIT;
    while server_record(&server, &id) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the re-check's change never reached the API"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop(handle).await;
    server.shutdown().await;
}
