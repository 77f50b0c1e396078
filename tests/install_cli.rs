//! `fyn-runner install --no-service`, `run --config`, `uninstall`, as an operator types
//! them, against the dev-server, into temporary folders.
#![allow(clippy::disallowed_methods)] // measuring time is what this does

#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fyn_runner::devserver::{DevServer, DevServerConfig, RunnerState};

fn fyn(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fyn-runner"));
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("FYN_RUNNER_TOKEN")
        .env_remove("FYN_RUNNER_CONFIG");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("fyn-runner runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

fn install(
    server: &DevServer,
    token: &str,
    state: &Path,
    config_dir: &Path,
    extra: &[&str],
) -> Output {
    let url = server.url();
    let mut args = vec![
        "install",
        "--scope",
        "user",
        "--no-service",
        "--server",
        &url,
        "--token",
        token,
        "--slots",
        "3",
    ];
    args.extend_from_slice(extra);
    run(fyn(&args)
        .arg("--state-dir")
        .arg(state)
        .arg("--config-dir")
        .arg(config_dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_run_and_uninstall_as_an_operator_would() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("state");
    let config_dir = root.path().join("config");
    let token = server.mint_token().expect("token");

    let out = install(&server, &token, &state, &config_dir, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for step in [
        "folders created",
        "config written",
        "registered",
        "Installed",
    ] {
        assert!(said.contains(step), "install reports `{step}`: {said}");
    }
    let config = config_dir.join("config.toml");
    #[cfg(unix)]
    {
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("identity/key")), 0o600);
        assert_eq!(mode(&config), 0o640);
    }
    let config_text = std::fs::read_to_string(&config).expect("config");
    assert!(
        config_text.contains("slots = 3") && !config_text.contains(&token),
        "{config_text}"
    );

    // A second install refuses and says how to proceed.
    let again = install(
        &server,
        &server.mint_token().expect("token"),
        &state,
        &config_dir,
        &[],
    );
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already installed") && text(&again).contains("--force"),
        "{}",
        text(&again)
    );

    // The service would run `fyn-runner run --config`: everything comes from the file.
    let mut runner = fyn(&["run"])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server
        .runners()
        .expect("runners")
        .iter()
        .any(|r| r.connected && r.state == RunnerState::Active && r.slots == 3)
    {
        assert!(
            Instant::now() < deadline,
            "the configured runner never became Active"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = run(fyn(&["status", "--json"]).arg("--config").arg(&config));
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains("\"state\": \"Active\""),
        "{}",
        text(&status)
    );
    let drained = run(fyn(&["drain", "--wait"]).arg("--config").arg(&config));
    assert!(drained.status.success(), "{}", text(&drained));
    assert_eq!(runner.wait().expect("exits").code(), Some(0));

    let runner_id = server.runners().expect("runners")[0].id.clone();
    let out = run(fyn(&["uninstall", "--scope", "user"])
        .arg("--config")
        .arg(&config));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("forgot runner"), "{}", text(&out));
    assert!(
        server.runner(&runner_id).expect("query").is_none(),
        "the API forgot the runner"
    );
    assert!(
        !config.exists() && !state.exists(),
        "config and state removed"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_registration_leaves_nothing_and_force_replaces() {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("deep/state");
    let config_dir = root.path().join("etc/fyn");
    let out = install(&server, "wrong-token", &state, &config_dir, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("registration failed"), "{}", text(&out));
    assert!(
        !root.path().join("deep").exists() && !root.path().join("etc").exists(),
        "nothing left behind"
    );

    let first = install(
        &server,
        &server.mint_token().expect("token"),
        &state,
        &config_dir,
        &[],
    );
    assert!(first.status.success(), "{}", text(&first));
    let forced = install(
        &server,
        &server.mint_token().expect("token"),
        &state,
        &config_dir,
        &["--force"],
    );
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(
        text(&forced).contains("previous installation removed"),
        "{}",
        text(&forced)
    );
    assert_eq!(
        server.runners().expect("runners").len(),
        2,
        "a new registration"
    );
    server.shutdown().await;
}

#[test]
fn a_config_file_with_an_unknown_key_is_an_error_naming_key_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "server = \"ws://127.0.0.1:1\"\nslotz = 2\n").expect("write");
    let out = run(fyn(&["run"]).arg("--config").arg(&config));
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out);
    assert!(
        said.contains("slotz") && said.contains("config.toml"),
        "{said}"
    );
}

#[test]
fn service_render_prints_a_unit_that_agrees_with_the_drain_deadline() {
    // A user unit's paths come from HOME, which Windows does not set.
    let home = tempfile::tempdir().expect("tempdir");
    let out = run(fyn(&[
        "service",
        "render",
        "--manager",
        "systemd",
        "--scope",
        "user",
        "--drain-deadline",
        "300",
    ])
    .env("HOME", home.path()));
    assert!(out.status.success(), "{}", text(&out));
    let unit = String::from_utf8_lossy(&out.stdout);
    assert!(
        unit.contains("Type=notify") && unit.contains("TimeoutStopSec=360"),
        "{unit}"
    );
    let plist = run(fyn(&[
        "service",
        "render",
        "--manager",
        "launchd",
        "--scope",
        "user",
    ])
    .env("HOME", home.path()));
    assert!(
        String::from_utf8_lossy(&plist.stdout).contains("<key>RunAtLoad</key>"),
        "{}",
        text(&plist)
    );
}

#[test]
fn precedence_is_flags_then_environment_then_file_then_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "server = \"ws://127.0.0.1:1\"\nslots = 5\nname = \"from-file\"\ndrain_deadline = 30\n",
    )
    .expect("write");
    let effective = |extra: &[&str], env: &[(&str, &str)]| {
        let mut command = fyn(&["run", "--print-config"]);
        command.arg("--config").arg(&config).args(extra);
        for (key, value) in env {
            command.env(key, value);
        }
        let out = run(&mut command);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let file_only = effective(&[], &[]);
    assert!(
        file_only.contains("slots = 5") && file_only.contains("name = \"from-file\""),
        "{file_only}"
    );
    assert!(
        file_only.contains("hardware_recheck = 600"),
        "defaults fill the rest: {file_only}"
    );
    let env = effective(&[], &[("FYN_RUNNER_SLOTS", "2")]);
    assert!(
        env.contains("slots = 2") && env.contains("drain_deadline = 30"),
        "env beats the file: {env}"
    );
    let flag = effective(&["--slots", "7"], &[("FYN_RUNNER_SLOTS", "2")]);
    assert!(flag.contains("slots = 7"), "a flag beats env: {flag}");
}
