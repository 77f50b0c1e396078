//! Windows: a real Windows service, created and driven through the service control
//! manager (SCM) with the `windows-service` crate, and the service entry point the
//! SCM starts.
//!
//! - What to create ([`definition`]: name, command line, start type, failure actions,
//!   preshutdown timeout) and what to tell the SCM while the runner runs
//!   ([`Progress`]) are pure, and tested on every platform.
//! - Every call to the SCM goes through [`Scm`] ([`RecordingScm`] in tests,
//!   `SystemScm` on Windows), so [`WindowsService`]'s call sequences are tested like
//!   systemd's and launchd's.
//! - `dispatch` (Windows only) is the entry point: the SCM starts
//!   `fyn-runner.exe service-main --config <file> --log-file <file>`, which hands the
//!   process to `StartServiceCtrlDispatcherW`; STOP and PRESHUTDOWN start the drain,
//!   the same path SIGTERM takes on Unix.
//!
//! A Windows service is machine-wide: only the system scope exists, and it runs as
//! LocalSystem. Its logs go to a file, `logs\runner.log` beside the config file.

#[cfg(windows)]
mod dispatch;
mod scm;
#[cfg(windows)]
mod system;

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::Lifecycle;

#[cfg(windows)]
pub use dispatch::{ServiceReporter, StopReason, run as run_dispatcher};
pub use scm::{RecordingScm, Scm, ScmExit, ScmState, ScmStatus};
#[cfg(windows)]
pub use system::SystemScm;

use super::{
    InstalledService, Manager, Scope, ServiceError, ServiceManager, ServiceSpec, ServiceState,
    ServiceStatus,
};

/// The service's name (what `sc.exe` and `Get-Service` take).
pub const SERVICE_NAME: &str = "fyn-runner";
pub const DISPLAY_NAME: &str = "fyn-runner";

/// The hidden subcommand the SCM runs; it must hand the process to the dispatcher.
pub const SERVICE_MAIN_COMMAND: &str = "service-main";

/// Where the SCM keeps the service (for messages; nothing reads or writes it directly).
pub const REGISTRY_KEY: &str = r"HKLM\SYSTEM\CurrentControlSet\Services\fyn-runner";

/// After a crash the SCM restarts the runner after this delay, every time (the
/// failure count resets after a day without one).
pub const RESTART_DELAY: Duration = Duration::from_secs(5);
pub const FAILURE_RESET_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// How long a StartPending or StopPending step may take before the next report; the
/// service reports far more often (every [`REPORT_INTERVAL`]).
pub const WAIT_HINT: Duration = Duration::from_secs(10);
pub const REPORT_INTERVAL: Duration = Duration::from_secs(3);

/// How long the service stays StartPending waiting for the runner to reach Active.
/// The SCM refuses STOP to a StartPending service, and holds back other services
/// starting at boot behind it, so after this the service reports Running even while
/// the runner is still connecting (`fyn-runner status` shows its phase).
pub const START_PENDING_LIMIT: Duration = Duration::from_secs(30);

/// Everything `fyn-runner install` creates in the SCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub executable: PathBuf,
    /// The arguments after the executable: `service-main --config <file> --log-file <file>`.
    pub arguments: Vec<OsString>,
    /// Auto start, delayed (so the network is up), as LocalSystem.
    pub delayed_auto_start: bool,
    /// Restart delays after the first, second and later failures.
    pub restart_delays: Vec<Duration>,
    pub failure_reset_period: Duration,
    /// Whether a stop with a non-zero exit code counts as a failure. It does not: like
    /// launchd's `KeepAlive = { Crashed }`, only a crash restarts the runner, because
    /// every deliberate exit (0, 2: a drain; 3-6: a restart cannot help; 4 would evict
    /// the newer session in turn) must stay down, and the SCM cannot tell codes apart.
    pub failure_actions_on_non_crash_failures: bool,
    /// How long Windows waits at shutdown for the runner to drain: the stop timeout.
    pub preshutdown_timeout: Duration,
    /// Where the runner writes its log (the service has no console to write to).
    pub log_file: PathBuf,
}

/// `<config folder>\logs\runner.log`.
pub fn log_file(spec: &ServiceSpec) -> PathBuf {
    spec.config_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("logs")
        .join("runner.log")
}

/// What to create for `spec`; refuses what a Windows service cannot be.
pub fn definition(spec: &ServiceSpec) -> Result<Definition, ServiceError> {
    spec.validate()?;
    if spec.scope != Scope::System {
        return Err(ServiceError::Unsupported(
            "a Windows service is machine-wide: install with --scope system from an elevated \
             (Administrator) prompt, or pass --no-service and run `fyn-runner run` yourself"
                .into(),
        ));
    }
    if let Some(user) = &spec.user {
        return Err(ServiceError::InvalidSpec(format!(
            "the Windows service runs as LocalSystem; --user {user:?} is not supported (an \
             account would need its password stored with the service)"
        )));
    }
    let log_file = log_file(spec);
    let arguments = vec![
        OsString::from(SERVICE_MAIN_COMMAND),
        "--config".into(),
        spec.config_path.clone().into_os_string(),
        "--log-file".into(),
        log_file.clone().into_os_string(),
    ];
    Ok(Definition {
        name: SERVICE_NAME.to_owned(),
        display_name: DISPLAY_NAME.to_owned(),
        description: spec.description.clone(),
        executable: spec.binary.clone(),
        arguments,
        delayed_auto_start: true,
        restart_delays: vec![RESTART_DELAY; 3],
        failure_reset_period: FAILURE_RESET_PERIOD,
        failure_actions_on_non_crash_failures: false,
        preshutdown_timeout: Duration::from_secs(spec.stop_timeout_secs()),
        log_file,
    })
}

/// One argument as `CommandLineToArgvW` reads it back: bare when it has no space, tab
/// or quote, else quoted, with backslashes doubled only before a quote.
pub fn quote_arg(arg: &OsStr) -> String {
    let text = arg.to_string_lossy();
    if !text.is_empty() && !text.contains([' ', '\t', '\n', '"']) {
        return text.into_owned();
    }
    let mut out = String::from("\"");
    let mut backslashes = 0usize;
    for c in text.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.push_str(&"\\".repeat(backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            c => {
                out.push_str(&"\\".repeat(backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.push_str(&"\\".repeat(backslashes * 2));
    out.push('"');
    out
}

/// The command line the SCM runs (its `ImagePath`).
pub fn command_line(definition: &Definition) -> String {
    std::iter::once(quote_arg(definition.executable.as_os_str()))
        .chain(definition.arguments.iter().map(|a| quote_arg(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value for `sc.exe` on a `cmd` prompt: quoted, inner quotes escaped.
fn sc_value(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\\\""))
}

/// What `fyn-runner install` creates, as the `sc.exe` commands that would do the same
/// (for review; install itself talks to the SCM directly).
pub fn render(spec: &ServiceSpec) -> Result<String, ServiceError> {
    let def = definition(spec)?;
    let mut out = String::new();
    let ms = |d: Duration| d.as_millis();
    let _ = writeln!(
        out,
        "REM fyn-runner as a Windows service, as `fyn-runner install` creates it through the"
    );
    let _ = writeln!(
        out,
        "REM service control manager (docs/operations.md). The same with sc.exe, elevated:"
    );
    let _ = writeln!(
        out,
        "sc.exe create {} binPath= {} start= delayed-auto obj= LocalSystem DisplayName= {}",
        def.name,
        sc_value(&command_line(&def)),
        sc_value(&def.display_name)
    );
    let _ = writeln!(
        out,
        "sc.exe description {} {}",
        def.name,
        sc_value(&def.description)
    );
    let actions: Vec<String> = def
        .restart_delays
        .iter()
        .map(|d| format!("restart/{}", ms(*d)))
        .collect();
    let _ = writeln!(
        out,
        "REM Restart after a crash only (exit codes 0 and 2-7 are deliberate stops; see the docs)."
    );
    let _ = writeln!(
        out,
        "sc.exe failure {} reset= {} actions= {}",
        def.name,
        def.failure_reset_period.as_secs(),
        actions.join("/")
    );
    let _ = writeln!(
        out,
        "sc.exe failureflag {} {}",
        def.name,
        u8::from(def.failure_actions_on_non_crash_failures)
    );
    let _ = writeln!(
        out,
        "REM Preshutdown timeout {} ms (drain deadline {} s + {} s), set with",
        ms(def.preshutdown_timeout),
        spec.drain_deadline_secs,
        super::STOP_MARGIN_SECS
    );
    let _ = writeln!(
        out,
        "REM ChangeServiceConfig2(SERVICE_CONFIG_PRESHUTDOWN_INFO); sc.exe has no option for it."
    );
    let _ = writeln!(
        out,
        "REM The runner accepts STOP and PRESHUTDOWN (both drain it) and logs to {}",
        def.log_file.display()
    );
    let _ = writeln!(out, "sc.exe start {}", def.name);
    Ok(out)
}

/// The Windows service through an [`Scm`].
pub struct WindowsService<S> {
    scope: Scope,
    scm: S,
    /// How to wait between status queries (tests pass one that returns at once).
    sleep: fn(Duration),
}

impl<S: Scm> WindowsService<S> {
    pub fn new(scope: Scope, scm: S) -> Self {
        Self::with_sleep(scope, scm, std::thread::sleep)
    }

    pub fn with_sleep(scope: Scope, scm: S, sleep: fn(Duration)) -> Self {
        Self { scope, scm, sleep }
    }

    pub fn scm(&self) -> &S {
        &self.scm
    }

    fn not_installed() -> ServiceError {
        ServiceError::NotInstalled {
            path: PathBuf::from(REGISTRY_KEY),
        }
    }

    fn require_installed(&self) -> Result<ScmStatus, ServiceError> {
        self.scm
            .query(SERVICE_NAME)?
            .ok_or_else(Self::not_installed)
    }

    fn require_system_scope(&self) -> Result<(), ServiceError> {
        if self.scope == Scope::System {
            Ok(())
        } else {
            Err(ServiceError::ScopeMismatch {
                spec: self.scope,
                manager: Scope::System,
            })
        }
    }

    /// Send STOP and wait until it has stopped. The SCM refuses STOP to a service in
    /// the middle of a change (`ERROR_SERVICE_CANNOT_ACCEPT_CTRL`), so: stopped already,
    /// nothing to do; stopping already (a drain, a second `stop`), only wait; still
    /// starting, wait until it runs, then stop it.
    fn stop_and_wait(&self, status: &ScmStatus) -> Result<(), ServiceError> {
        let status = match status.state {
            ScmState::Stopped => return Ok(()),
            ScmState::StopPending => return self.wait_until_stopped(),
            ScmState::StartPending => self.wait_while_starting()?,
            _ => status.clone(),
        };
        if status.state == ScmState::Stopped {
            return Ok(());
        }
        self.scm.stop(SERVICE_NAME)?;
        self.wait_until_stopped()
    }

    /// Until the service leaves StartPending. The runner reports Running at the latest
    /// [`START_PENDING_LIMIT`] after it starts, so this is bounded.
    fn wait_while_starting(&self) -> Result<ScmStatus, ServiceError> {
        let mut waited = Duration::ZERO;
        loop {
            let status = self.require_installed()?;
            if status.state != ScmState::StartPending {
                return Ok(status);
            }
            if waited > START_PENDING_LIMIT + WAIT_HINT {
                return Err(ServiceError::StopTimedOut {
                    state: format!("{:?}", status.state),
                    waited_secs: waited.as_secs(),
                });
            }
            let pause = Duration::from_millis(500);
            (self.sleep)(pause);
            waited += pause;
        }
    }

    /// Wait, as the SCM's own clients do, for as long as the service shows progress:
    /// a new state or a rising checkpoint within its wait hint. The runner keeps its
    /// checkpoint rising for the whole stop timeout (drain deadline + margin), and no
    /// longer, so a runner that hangs is reported instead of waited on forever.
    fn wait_until_stopped(&self) -> Result<(), ServiceError> {
        let mut seen: Option<(ScmState, u32)> = None;
        let mut quiet = Duration::ZERO;
        loop {
            let status = self.require_installed()?;
            if status.state == ScmState::Stopped {
                return Ok(());
            }
            let now = (status.state, status.checkpoint);
            if seen != Some(now) {
                seen = Some(now);
                quiet = Duration::ZERO;
            }
            let allowed = status.wait_hint.max(WAIT_HINT);
            if quiet > allowed {
                return Err(ServiceError::StopTimedOut {
                    state: format!("{:?}", status.state),
                    waited_secs: quiet.as_secs(),
                });
            }
            let pause =
                (status.wait_hint / 10).clamp(Duration::from_millis(200), Duration::from_secs(2));
            (self.sleep)(pause);
            quiet += pause;
        }
    }
}

impl<S: Scm> ServiceManager for WindowsService<S> {
    fn install(&self, spec: &ServiceSpec) -> Result<InstalledService, ServiceError> {
        self.require_system_scope()?;
        let def = definition(spec)?;
        if self.scm.query(SERVICE_NAME)?.is_some() {
            return Err(ServiceError::AlreadyInstalled {
                path: PathBuf::from(REGISTRY_KEY),
            });
        }
        self.scm.create(&def)?;
        if let Err(error) = self.scm.start(SERVICE_NAME) {
            let undo = self.scm.delete(SERVICE_NAME);
            return Err(ServiceError::undone_by(error, undo));
        }
        Ok(InstalledService {
            manager: Manager::Windows,
            scope: Scope::System,
            definition: PathBuf::from(REGISTRY_KEY),
            logs: def.log_file.display().to_string(),
        })
    }

    fn uninstall(&self) -> Result<(), ServiceError> {
        let status = self.require_installed()?;
        // The stop returns once the runner has drained and exited; only then is the
        // service deleted.
        self.stop_and_wait(&status)?;
        self.scm.delete(SERVICE_NAME)
    }

    fn start(&self) -> Result<(), ServiceError> {
        self.require_installed()?;
        self.scm.start(SERVICE_NAME)
    }

    fn stop(&self) -> Result<(), ServiceError> {
        let status = self.require_installed()?;
        self.stop_and_wait(&status)
    }

    fn restart(&self) -> Result<(), ServiceError> {
        let status = self.require_installed()?;
        self.stop_and_wait(&status)?;
        self.scm.start(SERVICE_NAME)
    }

    fn status(&self) -> Result<ServiceStatus, ServiceError> {
        Ok(match self.scm.query(SERVICE_NAME)? {
            Some(status) => service_status(&status),
            None => ServiceStatus::not_loaded(false),
        })
    }
}

/// The SCM's view in the words the other managers use.
pub fn service_status(status: &ScmStatus) -> ServiceStatus {
    let last_exit = match status.exit {
        ScmExit::ServiceSpecific(code) => i32::try_from(code).ok(),
        ScmExit::Win32(code) => i32::try_from(code).ok(),
    };
    let failed = status.exit != ScmExit::Win32(0);
    let state = match status.state {
        ScmState::Running => ServiceState::Running,
        ScmState::StartPending => ServiceState::Starting,
        ScmState::StopPending => ServiceState::Stopping,
        ScmState::Stopped if failed => ServiceState::Failed,
        ScmState::Stopped => ServiceState::Stopped,
        other => ServiceState::Other(format!("{other:?}")),
    };
    let detail = match status.exit {
        ScmExit::Win32(code) if code != 0 => Some(format!("Windows error {code}")),
        _ => None,
    };
    ServiceStatus {
        installed: true,
        state,
        pid: status.pid,
        enabled: Some(status.auto_start),
        last_exit: (status.state == ScmState::Stopped)
            .then_some(last_exit)
            .flatten(),
        detail,
    }
}

/// What the running service tells the SCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    StartPending {
        checkpoint: u32,
    },
    Running,
    StopPending {
        checkpoint: u32,
    },
    /// `exit_code` 0 is reported as success, anything else as a service-specific code.
    Stopped {
        exit_code: i32,
    },
}

/// The service side of the runner's lifecycle, as the SCM must see it: StartPending
/// until the runner reaches Active (at most [`START_PENDING_LIMIT`]), Running, then
/// StopPending with a rising checkpoint while it drains — for at most `stop_budget`
/// (drain deadline + margin), after which the checkpoint stops rising and the SCM may
/// judge the service hung — and Stopped with the runner's exit code. Times are
/// offsets from the service's start; no clock is read here.
#[derive(Debug, Clone)]
pub struct Progress {
    phase: Phase,
    checkpoint: u32,
    stop_budget: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Stopping { since: Duration },
    Stopped,
}

impl Progress {
    pub fn new(stop_budget: Duration) -> Self {
        Self {
            phase: Phase::Starting,
            checkpoint: 0,
            stop_budget,
        }
    }

    /// The first report, before the runner starts.
    pub fn first(&mut self) -> Report {
        self.checkpoint = 1;
        Report::StartPending { checkpoint: 1 }
    }

    /// The runner entered `state` (none: not known yet).
    pub fn runner_state(&mut self, state: Option<Lifecycle>, now: Duration) -> Option<Report> {
        match (self.phase, state?) {
            (Phase::Starting, Lifecycle::Active) => self.enter(Phase::Running),
            (Phase::Starting | Phase::Running, Lifecycle::Draining | Lifecycle::Stopped) => {
                self.enter(Phase::Stopping { since: now })
            }
            _ => None,
        }
    }

    /// The SCM asked the service to stop (STOP or PRESHUTDOWN).
    pub fn stop_requested(&mut self, now: Duration) -> Option<Report> {
        match self.phase {
            Phase::Starting | Phase::Running => self.enter(Phase::Stopping { since: now }),
            _ => None,
        }
    }

    /// Time passed: keep a pending state alive, or leave StartPending at its limit.
    pub fn tick(&mut self, now: Duration) -> Option<Report> {
        match self.phase {
            Phase::Starting if now >= START_PENDING_LIMIT => self.enter(Phase::Running),
            Phase::Starting => {
                self.checkpoint += 1;
                Some(Report::StartPending {
                    checkpoint: self.checkpoint,
                })
            }
            Phase::Stopping { since } if now.saturating_sub(since) <= self.stop_budget => {
                self.checkpoint += 1;
                Some(Report::StopPending {
                    checkpoint: self.checkpoint,
                })
            }
            _ => None,
        }
    }

    /// The runner exited with `code`.
    pub fn exited(&mut self, code: i32) -> Report {
        self.phase = Phase::Stopped;
        self.checkpoint = 0;
        Report::Stopped { exit_code: code }
    }

    fn enter(&mut self, phase: Phase) -> Option<Report> {
        self.phase = phase;
        Some(match phase {
            Phase::Running => {
                self.checkpoint = 0;
                Report::Running
            }
            Phase::Stopping { .. } => {
                self.checkpoint = 1;
                Report::StopPending { checkpoint: 1 }
            }
            Phase::Starting => Report::StartPending {
                checkpoint: self.checkpoint,
            },
            Phase::Stopped => Report::Stopped { exit_code: 0 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_the_way_commandlinetoargvw_reads_them() {
        assert_eq!(quote_arg(OsStr::new("service-main")), "service-main");
        assert_eq!(
            quote_arg(OsStr::new(r"C:\Program Files\fyn-runner\fyn-runner.exe")),
            r#""C:\Program Files\fyn-runner\fyn-runner.exe""#
        );
        assert_eq!(quote_arg(OsStr::new(r"C:\a b\")), r#""C:\a b\\""#);
        assert_eq!(quote_arg(OsStr::new(r#"say "hi""#)), r#""say \"hi\"""#);
        assert_eq!(quote_arg(OsStr::new(r#"a\"b"#)), r#""a\\\"b""#);
        assert_eq!(quote_arg(OsStr::new("")), r#""""#);
    }

    #[test]
    fn starting_waits_for_active_but_not_forever() {
        let mut p = Progress::new(Duration::from_secs(180));
        assert_eq!(p.first(), Report::StartPending { checkpoint: 1 });
        assert_eq!(
            p.tick(Duration::from_secs(3)),
            Some(Report::StartPending { checkpoint: 2 })
        );
        assert_eq!(
            p.runner_state(Some(Lifecycle::Reconnecting), Duration::from_secs(4)),
            None
        );
        assert_eq!(
            p.runner_state(Some(Lifecycle::Active), Duration::from_secs(5)),
            Some(Report::Running)
        );
        assert_eq!(p.tick(Duration::from_secs(8)), None);

        let mut slow = Progress::new(Duration::from_secs(180));
        slow.first();
        assert_eq!(slow.tick(START_PENDING_LIMIT), Some(Report::Running));
        assert_eq!(
            slow.runner_state(Some(Lifecycle::Active), START_PENDING_LIMIT),
            None
        );
    }

    #[test]
    fn stopping_rises_for_the_stop_budget_then_stays_quiet() {
        let mut p = Progress::new(Duration::from_secs(10));
        p.first();
        p.runner_state(Some(Lifecycle::Active), Duration::from_secs(1));
        assert_eq!(
            p.stop_requested(Duration::from_secs(100)),
            Some(Report::StopPending { checkpoint: 1 })
        );
        // The runner then reports Draining itself: no second transition.
        assert_eq!(
            p.runner_state(Some(Lifecycle::Draining), Duration::from_secs(100)),
            None
        );
        assert_eq!(p.stop_requested(Duration::from_secs(101)), None);
        assert_eq!(
            p.tick(Duration::from_secs(105)),
            Some(Report::StopPending { checkpoint: 2 })
        );
        assert_eq!(
            p.tick(Duration::from_secs(110)),
            Some(Report::StopPending { checkpoint: 3 })
        );
        assert_eq!(p.tick(Duration::from_secs(111)), None);
        assert_eq!(p.exited(2), Report::Stopped { exit_code: 2 });
        assert_eq!(p.tick(Duration::from_secs(112)), None);
    }

    #[test]
    fn a_drain_from_the_control_plane_is_a_stop_too() {
        let mut p = Progress::new(Duration::from_secs(10));
        p.first();
        p.runner_state(Some(Lifecycle::Active), Duration::from_secs(1));
        assert_eq!(
            p.runner_state(Some(Lifecycle::Draining), Duration::from_secs(50)),
            Some(Report::StopPending { checkpoint: 1 })
        );
    }
}
