//! Hooks on the real binary: each fires at its point with its variables (small shell
//! scripts write their environment to files), a failing or timed-out `pre_job` fails
//! its job without starting it, and (in-process, paused time) a slow hook does not
//! hold up heartbeats.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fyn_runner::devserver::JobRequest;
use fyn_runner::protocol::JobOutcome;

use crate::support::{Runner, WAIT, dev_server, finished, runner_active};

/// An executable shell script.
fn script(path: &Path, body: &str) -> PathBuf {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write the script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_path_buf()
}

/// A hook that records its environment as `<out>/<start time in ns>-<hook>.env`.
fn recorder(dir: &Path, out: &Path) -> PathBuf {
    std::fs::create_dir_all(out).expect("out folder");
    script(
        &dir.join("record-hook"),
        &format!(
            "n=$(date +%s%N)\nenv > \"{out}/tmp.$$\"\nmv \"{out}/tmp.$$\" \"{out}/$n-$FYN_HOOK.env\"\necho \"hook $FYN_HOOK says hello\"",
            out = out.display()
        ),
    )
}

/// The hooks that ran so far, in order, with their variables.
fn recorded(out: &Path) -> Vec<(String, BTreeMap<String, String>)> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .expect("out folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".env"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(out.join(&name)).expect("env file");
            let vars = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let hook = name
                .trim_end_matches(".env")
                .split_once('-')
                .map(|(_, hook)| hook.to_owned())
                .unwrap_or_default();
            (hook, vars)
        })
        .collect()
}

async fn wait_for_hooks(out: &Path, count: usize) -> Vec<(String, BTreeMap<String, String>)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let hooks = recorded(out);
        if hooks.len() >= count {
            return hooks;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {count} hooks ran: {:?}",
            hooks.len(),
            hooks.iter().map(|(h, _)| h).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn job(command: &[&str]) -> JobRequest {
    JobRequest {
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::from([("JOB_SECRET".to_owned(), "job-only".to_owned())]),
        workdir: None,
        timeout_secs: 60,
        output_limit_bytes: None,
        cancel_grace_secs: Some(1),
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

fn hook_flags(hook: &Path) -> Vec<String> {
    let hook = hook.to_str().expect("utf-8").to_owned();
    [
        "--hook-on-connected",
        "--hook-on-disconnected",
        "--hook-on-drain",
        "--hook-on-stopped",
        "--hook-pre-job",
        "--hook-post-job",
    ]
    .into_iter()
    .flat_map(|flag| [flag.to_owned(), hook.clone()])
    .collect()
}

#[tokio::test]
async fn each_hook_fires_at_its_point_with_its_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("hooks");
    let hook = recorder(dir.path(), &out);
    let db = dir.path().join("api.sqlite");
    let server = dev_server(&db, None).await;
    let flags = hook_flags(&hook);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut runner = Runner::spawn(&server, dir.path(), &args);
    runner_active(&server, &mut runner).await;
    let runner_id = server.runners().expect("runners")[0].id.clone();

    // Active: on_connected, told the runner's id, name and state.
    let hooks = wait_for_hooks(&out, 1).await;
    let (name, vars) = &hooks[0];
    assert_eq!(name, "on_connected");
    assert_eq!(vars["FYN_HOOK"], "on_connected");
    assert_eq!(vars["FYN_RUNNER_ID"], runner_id);
    assert_eq!(vars["FYN_RUNNER_NAME"], "operator");
    assert_eq!(vars["FYN_RUNNER_STATE"], "Active");

    // A job: pre_job before it starts, post_job after its end, with its outcome.
    let id = server
        .submit_job(job(&["sh", "-c", "exit 7"]))
        .expect("submit");
    let done = finished(&server, &id).await;
    assert_eq!(done.outcome, Some(JobOutcome::Failed));
    let hooks = wait_for_hooks(&out, 3).await;
    assert_eq!(hooks[1].0, "pre_job");
    assert_eq!(hooks[1].1["FYN_JOB_ID"], id);
    assert_eq!(hooks[1].1["FYN_JOB_ATTEMPT"], "1");
    assert!(hooks[1].1["FYN_JOB_DIR"].ends_with(&format!("{id}-1")));
    assert_eq!(hooks[2].0, "post_job");
    assert_eq!(hooks[2].1["FYN_JOB_ID"], id);
    assert_eq!(hooks[2].1["FYN_JOB_OUTCOME"], "failed");
    assert_eq!(hooks[2].1["FYN_JOB_EXIT_CODE"], "7");

    // The link drops: on_disconnected. It comes back: on_connected again.
    let api = server.local_addr();
    server.shutdown().await;
    let hooks = wait_for_hooks(&out, 4).await;
    assert_eq!(hooks[3].0, "on_disconnected");
    assert_eq!(hooks[3].1["FYN_RUNNER_STATE"], "Reconnecting");
    let server = dev_server(&db, Some(api)).await;
    let hooks = wait_for_hooks(&out, 5).await;
    assert_eq!(hooks[4].0, "on_connected");

    // A stop while a job runs: on_drain, then the job's post_job, then on_stopped
    // with the exit code, before the process exits.
    let long = server
        .submit_job(job(&["sh", "-c", "sleep 1"]))
        .expect("submit");
    let deadline = Instant::now() + WAIT;
    while server
        .job(&long)
        .expect("job")
        .and_then(|j| j.runner)
        .is_none()
        || recorded(&out).len() < 6
    {
        assert!(Instant::now() < deadline, "the long job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let code = runner.stop().await;
    assert_eq!(code, 0);
    // The last two may run at once (post_job is started first; the stop follows as
    // soon as the API acknowledges the job's end), so they are compared as a set.
    let mut hooks = recorded(&out);
    let mut names: Vec<&str> = hooks.iter().map(|(n, _)| n.as_str()).collect();
    names[7..].sort_unstable();
    assert_eq!(
        names,
        [
            "on_connected",
            "pre_job",
            "post_job",
            "on_disconnected",
            "on_connected",
            "pre_job",
            "on_drain",
            "on_stopped",
            "post_job"
        ]
    );
    hooks[7..].sort_by(|a, b| a.0.cmp(&b.0));
    let (_, stopped) = &hooks[7];
    assert_eq!(stopped["FYN_EXIT_CODE"], "0");
    assert_eq!(stopped["FYN_RUNNER_STATE"], "Stopped");
    assert_eq!(hooks[8].1["FYN_JOB_OUTCOME"], "succeeded");
    let log = std::fs::read_to_string(dir.path().join("runner.log")).expect("log");
    let started = |hook: &str| {
        log.lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| l.contains("running hook") && l.contains(&format!("\"{hook}\"")))
    };
    assert!(started("post_job") < started("on_stopped"), "{log}");

    // Nothing of the runner's own environment, nor the job's, reaches a hook.
    for (name, vars) in &hooks {
        for key in vars.keys() {
            let allowed = [
                "PATH", "HOME", "LANG", "PWD", "SHLVL", "_", "USER", "LOGNAME",
            ]
            .contains(&key.as_str())
                || key.starts_with("FYN_") && !key.starts_with("FYN_RUNNER_TOKEN");
            assert!(allowed, "{name} saw {key}");
        }
        assert!(!vars.contains_key("JOB_SECRET"), "{name}");
    }
    // The hooks' output is in the runner's log.
    assert!(log.contains("hook on_drain says hello"), "{log}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_failing_or_slow_pre_job_fails_the_job_without_starting_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("job-ran");
    let verdict = dir.path().join("verdict");
    // Fails the first job, hangs on the second, passes the third.
    let hook = script(
        &dir.path().join("pre-job"),
        &format!(
            "n=$(cat '{v}' 2>/dev/null || echo 0)\necho $((n+1)) > '{v}'\necho \"checking $FYN_JOB_ID\" >&2\ncase $n in 0) exit 3;; 1) exec sleep 60;; esac\nexit 0",
            v = verdict.display()
        ),
    );
    let server = dev_server(&dir.path().join("api.sqlite"), None).await;
    let mut runner = Runner::spawn(
        &server,
        dir.path(),
        &[
            "--hook-pre-job",
            hook.to_str().expect("utf-8"),
            "--hook-timeout",
            "1",
        ],
    );
    runner_active(&server, &mut runner).await;
    let touch = format!("touch '{}'", marker.display());

    let failed = server
        .submit_job(job(&["sh", "-c", &touch]))
        .expect("submit");
    let failed = finished(&server, &failed).await;
    assert_eq!(failed.outcome, Some(JobOutcome::Failed));
    let detail = failed.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("pre_job hook failed: exited with 3"),
        "{failed:?}"
    );
    assert!(!marker.exists(), "the job's process must not start");

    let slow = server
        .submit_job(job(&["sh", "-c", &touch]))
        .expect("submit");
    let slow = finished(&server, &slow).await;
    assert_eq!(slow.outcome, Some(JobOutcome::Failed));
    assert!(
        slow.detail
            .clone()
            .unwrap_or_default()
            .contains("timed out after 1 s"),
        "{slow:?}"
    );
    assert!(!marker.exists(), "the job's process must not start");

    let passed = server
        .submit_job(job(&["sh", "-c", &touch]))
        .expect("submit");
    let passed = finished(&server, &passed).await;
    assert_eq!(passed.outcome, Some(JobOutcome::Succeeded), "{passed:?}");
    assert!(marker.exists(), "a passing pre_job lets the job run");
    assert!(
        runner.log_text().contains("checking"),
        "the hook's stderr is logged"
    );
    assert_eq!(runner.stop().await, 0);
    server.shutdown().await;
}

/// A hook that takes its time (here: one still running after ten heartbeat intervals)
/// holds up nothing: hooks run off the loop. Paused time: the runtime's clock jumps
/// from timer to timer while the hook's process sleeps in real time.
#[tokio::test(start_paused = true)]
async fn a_slow_hook_does_not_delay_heartbeats() {
    use fyn_runner::core::HookPoint;
    use fyn_runner::runtime::hooks::HookSettings;
    use fyn_runner::runtime::{self, RunnerSettings, Secret};

    let dir = tempfile::tempdir().expect("tempdir");
    let done = dir.path().join("hook-done");
    let hook = script(
        &dir.path().join("slow"),
        &format!("sleep 20\ntouch '{}'", done.display()),
    );
    let server = dev_server(&dir.path().join("api.sqlite"), None).await;
    let mut settings = RunnerSettings {
        token: Some(Secret::new(server.mint_token().expect("token"))),
        name: "slow-hook".into(),
        metrics_listen: Some("127.0.0.1:0".parse().expect("address")),
        ..RunnerSettings::new(
            runtime::settings::endpoint(&server.url(), false).expect("url"),
            dir.path().join("state"),
        )
    };
    settings.set_hooks(HookSettings {
        executables: BTreeMap::from([(HookPoint::OnConnected, hook)]),
        timeout: Duration::from_secs(3600),
    });
    let mut handle = runtime::start(settings).expect("starts");
    let active = tokio::time::timeout(WAIT, handle.wait_for(|s| s.state == "Active")).await;
    assert!(active.is_ok(), "never Active");
    let addr = handle
        .status
        .borrow()
        .metrics_listen
        .clone()
        .expect("metrics address");
    // Ten heartbeat intervals pass while the hook still runs.
    tokio::time::sleep(Duration::from_millis(
        10 * crate::support::session().heartbeat_interval_ms,
    ))
    .await;
    let (_, text) = crate::support::get(&addr, "/metrics", &[]).await;
    let acked = crate::support::sample(&text, "fyn_runner_heartbeat_rtt_seconds_count")
        .expect("heartbeats");
    assert!(acked >= 9.0, "{acked} heartbeats acknowledged:\n{text}");
    assert!(!done.exists(), "the hook is still running");
    assert!(
        !text.contains("fyn_runner_hooks_total{"),
        "no hook ended yet:\n{text}"
    );
    assert_eq!(handle.status.borrow().state, "Active");
    handle.shutdown();
    let code = tokio::time::timeout(Duration::from_secs(7200), handle.wait())
        .await
        .expect("stops");
    assert_eq!(code.code(), 0);
    server.shutdown().await;
}
