//! The Windows service, checked without Windows: what install creates (the
//! definition and its `sc.exe` rendering) and the exact calls each operation makes to
//! the service control manager, through the recording fake.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use fyn_runner::service::windows::{
    self, Definition, RecordingScm, ScmExit, ScmState, ScmStatus, WindowsService,
};
use fyn_runner::service::{
    Manager, STOP_MARGIN_SECS, Scope, ServiceError, ServiceManager, ServiceSpec, ServiceState,
};

fn spec() -> ServiceSpec {
    let base = std::env::temp_dir().join("ProgramData").join("fyn-runner");
    ServiceSpec::new(
        std::env::temp_dir()
            .join("Program Files")
            .join("fyn-runner.exe"),
        base.join("config.toml"),
        base.join("state"),
        Scope::System,
        120,
    )
}

fn status(state: ScmState, checkpoint: u32) -> Option<ScmStatus> {
    Some(ScmStatus {
        state,
        pid: (state != ScmState::Stopped).then_some(4242),
        exit: ScmExit::Win32(0),
        checkpoint,
        wait_hint: Duration::from_secs(10),
        auto_start: true,
    })
}

fn manager(scm: &RecordingScm) -> WindowsService<&RecordingScm> {
    WindowsService::with_sleep(Scope::System, scm, |_| {})
}

#[test]
fn the_definition_drains_on_stop_and_restarts_only_after_a_crash() {
    let spec = spec();
    let def = windows::definition(&spec).expect("definition");
    assert_eq!(def.name, "fyn-runner");
    assert_eq!(def.executable, spec.binary);
    let config: OsString = spec.config_path.clone().into();
    let log: OsString = spec
        .config_path
        .parent()
        .expect("folder")
        .join("logs")
        .join("runner.log")
        .into();
    assert_eq!(
        def.arguments,
        vec![
            OsString::from("service-main"),
            "--config".into(),
            config,
            "--log-file".into(),
            log
        ]
    );
    assert!(def.delayed_auto_start);
    assert_eq!(def.restart_delays, vec![Duration::from_secs(5); 3]);
    assert!(!def.failure_actions_on_non_crash_failures);
    assert_eq!(
        def.preshutdown_timeout,
        Duration::from_secs(120 + STOP_MARGIN_SECS)
    );
}

#[test]
fn a_windows_service_is_machine_wide_and_runs_as_local_system() {
    let user_scope = ServiceSpec {
        scope: Scope::User,
        ..spec()
    };
    let err = windows::definition(&user_scope).expect_err("user scope");
    assert!(err.to_string().contains("machine-wide"), "{err}");
    let with_user = ServiceSpec {
        user: Some("runner".into()),
        ..spec()
    };
    let err = windows::definition(&with_user).expect_err("--user");
    assert!(err.to_string().contains("LocalSystem"), "{err}");
}

#[test]
fn render_prints_the_sc_exe_equivalent() {
    let text = windows::render(&spec()).expect("render");
    let def: Definition = windows::definition(&spec()).expect("definition");
    let create = text
        .lines()
        .find(|l| l.starts_with("sc.exe create fyn-runner binPath= "))
        .expect("create line");
    assert!(
        create.ends_with("start= delayed-auto obj= LocalSystem DisplayName= \"fyn-runner\""),
        "{create}"
    );
    // The executable's folder has a space: it is quoted inside the quoted binPath.
    assert!(
        create.contains(&format!(
            "\\\"{}\\\" service-main --config",
            def.executable.display()
        )),
        "{create}"
    );
    assert!(text.contains("sc.exe failure fyn-runner reset= 86400 actions= restart/5000/restart/5000/restart/5000\n"), "{text}");
    assert!(text.contains("sc.exe failureflag fyn-runner 0\n"), "{text}");
    assert!(text.contains("Preshutdown timeout 180000 ms"), "{text}");
    assert!(text.ends_with("sc.exe start fyn-runner\n"), "{text}");
}

#[test]
fn install_creates_then_starts() {
    let scm = RecordingScm::new();
    let installed = manager(&scm).install(&spec()).expect("install");
    assert_eq!(
        scm.calls(),
        ["query fyn-runner", "create fyn-runner", "start fyn-runner"]
    );
    assert_eq!(installed.manager, Manager::Windows);
    assert_eq!(installed.definition, PathBuf::from(windows::REGISTRY_KEY));
    assert!(installed.logs.ends_with("runner.log"), "{}", installed.logs);
    assert_eq!(
        scm.created().expect("created"),
        windows::definition(&spec()).expect("definition")
    );
}

#[test]
fn install_refuses_an_existing_service_and_rolls_back_a_failed_start() {
    let scm = RecordingScm::new();
    scm.answer([status(ScmState::Running, 0)]);
    let err = manager(&scm).install(&spec()).expect_err("exists");
    assert!(
        matches!(err, ServiceError::AlreadyInstalled { .. }),
        "{err}"
    );
    assert_eq!(scm.calls(), ["query fyn-runner"]);

    let scm = RecordingScm::new();
    scm.fail("start", "the service did not respond");
    let err = manager(&scm).install(&spec()).expect_err("start fails");
    assert!(matches!(err, ServiceError::RolledBack { .. }), "{err}");
    assert!(err.to_string().contains("did not respond"), "{err}");
    assert_eq!(
        scm.calls(),
        [
            "query fyn-runner",
            "create fyn-runner",
            "start fyn-runner",
            "delete fyn-runner"
        ]
    );
}

#[test]
fn uninstall_waits_for_the_drain_then_deletes() {
    let scm = RecordingScm::new();
    scm.answer([
        status(ScmState::Running, 0),
        status(ScmState::StopPending, 1),
        status(ScmState::StopPending, 2),
        status(ScmState::Stopped, 0),
    ]);
    manager(&scm).uninstall().expect("uninstall");
    assert_eq!(
        scm.calls(),
        [
            "query fyn-runner",
            "stop fyn-runner",
            "query fyn-runner",
            "query fyn-runner",
            "query fyn-runner",
            "delete fyn-runner"
        ]
    );
}

#[test]
fn a_stop_without_progress_is_reported_not_waited_on_forever() {
    let scm = RecordingScm::new();
    scm.answer([
        status(ScmState::Running, 0),
        status(ScmState::StopPending, 7),
    ]);
    let err = manager(&scm).stop().expect_err("hung");
    assert!(matches!(err, ServiceError::StopTimedOut { .. }), "{err}");
    assert!(err.to_string().contains("StopPending"), "{err}");
}

#[test]
fn stop_of_a_stopped_service_sends_nothing_and_restart_starts_it() {
    let scm = RecordingScm::new();
    scm.answer([status(ScmState::Stopped, 0)]);
    manager(&scm).stop().expect("stop");
    assert_eq!(scm.calls(), ["query fyn-runner"]);
    manager(&scm).restart().expect("restart");
    assert_eq!(
        scm.calls(),
        ["query fyn-runner", "query fyn-runner", "start fyn-runner"]
    );
}

#[test]
fn operations_on_a_missing_service_say_so() {
    let scm = RecordingScm::new();
    for result in [
        manager(&scm).start(),
        manager(&scm).stop(),
        manager(&scm).uninstall(),
    ] {
        let err = result.expect_err("not installed");
        assert!(matches!(err, ServiceError::NotInstalled { .. }), "{err}");
    }
    let status = manager(&scm).status().expect("status");
    assert!(!status.installed);
    assert_eq!(status.state, ServiceState::NotLoaded);
}

#[test]
fn status_maps_the_scm_view() {
    let scm = RecordingScm::new();
    scm.answer([Some(ScmStatus {
        state: ScmState::Stopped,
        pid: None,
        exit: ScmExit::ServiceSpecific(4),
        checkpoint: 0,
        wait_hint: Duration::ZERO,
        auto_start: true,
    })]);
    let status = manager(&scm).status().expect("status");
    assert!(status.installed);
    assert_eq!(status.state, ServiceState::Failed);
    assert_eq!(status.last_exit, Some(4));
    assert_eq!(status.enabled, Some(true));

    let running = windows::service_status(&status_of(ScmState::Running));
    assert_eq!(running.state, ServiceState::Running);
    assert_eq!(running.pid, Some(4242));
    assert_eq!(running.last_exit, None);
}

fn status_of(state: ScmState) -> ScmStatus {
    status(state, 0).expect("status")
}

#[test]
fn a_user_scope_manager_refuses_to_install() {
    let scm = RecordingScm::new();
    let err = WindowsService::with_sleep(Scope::User, &scm, |_| {})
        .install(&spec())
        .expect_err("user scope");
    assert!(matches!(err, ServiceError::ScopeMismatch { .. }), "{err}");
    assert!(scm.calls().is_empty());
}

/// The SCM refuses STOP in the middle of a change: a service already stopping (a drain,
/// a second `stop`) is only waited for; one still starting is stopped once it runs.
#[test]
fn stop_during_a_change_waits_instead_of_sending_a_refused_stop() {
    let scm = RecordingScm::new();
    scm.answer([
        status(ScmState::StopPending, 3),
        status(ScmState::StopPending, 4),
        status(ScmState::Stopped, 0),
    ]);
    manager(&scm).stop().expect("stop");
    assert_eq!(
        scm.calls(),
        ["query fyn-runner", "query fyn-runner", "query fyn-runner"]
    );

    let scm = RecordingScm::new();
    scm.answer([
        status(ScmState::StartPending, 1),
        status(ScmState::StartPending, 2),
        status(ScmState::Running, 0),
        status(ScmState::StopPending, 1),
        status(ScmState::Stopped, 0),
    ]);
    manager(&scm).stop().expect("stop");
    assert_eq!(
        scm.calls(),
        [
            "query fyn-runner",
            "query fyn-runner",
            "query fyn-runner",
            "stop fyn-runner",
            "query fyn-runner",
            "query fyn-runner"
        ]
    );
}
