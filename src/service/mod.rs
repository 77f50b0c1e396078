/*!
Running the runner as an OS service: the systemd unit, the launchd property list and
the Windows service, and installing, starting, stopping and querying them through
`systemctl`/`launchctl` or the Windows service control manager.

Owns: the text of the service definitions (which must agree with the runner: SIGTERM
stops the runner alone and leaves its jobs to their supervisors, so only the runner's
process is signalled; the stop timeout is the drain deadline plus a margin), where they
live, and the exact sequence of service-manager commands for each operation —
including undoing a half-done install.

Must not: import `core` or the runtime. Every external command goes through
[`CommandRunner`], every file through a [`Host`] root and every call to the Windows
service control manager through [`windows::Scm`], so the sequences are tested without
a service manager. (The Windows service's entry point runs the runner through a
closure the CLI hands it, for the same reason.)
*/

pub mod account;
mod command;
mod files;
pub mod launchd;
pub mod systemd;
pub mod windows;

use std::io;
use std::path::{Path, PathBuf};

pub use command::{CommandRunner, Recorded, RecordingRunner, SystemRunner};
pub use launchd::Launchd;
pub use systemd::Systemd;
pub use windows::WindowsService;

/// Seconds added to the drain deadline for the service manager's stop timeout: the
/// runner's own forced stop (each job's kill grace, then the outbox flush) has to fit
/// in it, or the manager would SIGKILL a runner that is still doing the right thing.
pub const STOP_MARGIN_SECS: u64 = 60;

/// The longest drain deadline a service accepts: the setting's own bound.
pub use crate::config::MAX_DRAIN_DEADLINE_SECS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// Started at boot by the system manager, as root or as `user`.
    System,
    /// Run by the user's own manager, as that user (with lingering, without a login).
    User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    Systemd,
    Launchd,
    /// The Windows service control manager.
    Windows,
}

impl Manager {
    pub fn name(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Launchd => "launchd",
            Self::Windows => "windows",
        }
    }
}

/// What a service definition says about the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The absolute path of the fyn-runner executable.
    pub binary: PathBuf,
    /// The config file the service passes with `--config`.
    pub config_path: PathBuf,
    /// The runner's state directory (as resolved from the config).
    pub state_dir: PathBuf,
    pub scope: Scope,
    /// System scope only: the account the runner runs as (`None`: root).
    pub user: Option<String>,
    /// The runner's drain deadline; the stop timeout is derived from it.
    pub drain_deadline_secs: u64,
    pub description: String,
}

impl ServiceSpec {
    /// A spec with the usual description.
    pub fn new(
        binary: PathBuf,
        config_path: PathBuf,
        state_dir: PathBuf,
        scope: Scope,
        drain_deadline_secs: u64,
    ) -> Self {
        Self {
            binary,
            config_path,
            state_dir,
            scope,
            user: None,
            drain_deadline_secs,
            description: "fyn-runner: joins this machine to a job control plane".to_owned(),
        }
    }

    /// How long the service manager waits after SIGTERM before it SIGKILLs: the drain
    /// deadline plus [`STOP_MARGIN_SECS`].
    pub fn stop_timeout_secs(&self) -> u64 {
        self.drain_deadline_secs.saturating_add(STOP_MARGIN_SECS)
    }

    /// Refuse a spec a service manager would misread: relative paths (a service has
    /// no useful working folder), `User=` in user scope, odd user names.
    pub fn validate(&self) -> Result<(), ServiceError> {
        for (what, path) in [
            ("binary", &self.binary),
            ("config_path", &self.config_path),
            ("state_dir", &self.state_dir),
        ] {
            if !path.is_absolute() {
                return Err(ServiceError::InvalidSpec(format!(
                    "{what} must be an absolute path, not {}",
                    path.display()
                )));
            }
        }
        // Neither a unit file nor a plist can carry control characters faithfully.
        let texts = [
            self.binary.to_string_lossy(),
            self.config_path.to_string_lossy(),
            self.state_dir.to_string_lossy(),
            std::borrow::Cow::Borrowed(self.description.as_str()),
        ];
        if texts.iter().any(|t| t.chars().any(char::is_control)) {
            return Err(ServiceError::InvalidSpec(
                "paths and the description must not contain control characters".into(),
            ));
        }
        if self.drain_deadline_secs > MAX_DRAIN_DEADLINE_SECS {
            return Err(ServiceError::InvalidSpec(format!(
                "the drain deadline ({} s) is longer than {MAX_DRAIN_DEADLINE_SECS} s",
                self.drain_deadline_secs
            )));
        }
        match (&self.user, self.scope) {
            (Some(_), Scope::User) => Err(ServiceError::InvalidSpec(
                "a user service always runs as its owner; `user` is for system scope".into(),
            )),
            (Some(user), Scope::System) if !valid_user_name(user) => {
                Err(ServiceError::InvalidSpec(format!(
                    "{user:?} is not a valid user name (letters, digits, '.', '_', '-'; \
                     not starting with '-')"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The portable user-name set, which both `User=` and launchd's `UserName` take as is.
fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Where a service definition was put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledService {
    pub manager: Manager,
    pub scope: Scope,
    /// The unit file or property list.
    pub definition: PathBuf,
    /// Where the runner's logs go, in words (`journalctl -u ...` or a file).
    pub logs: String,
}

/// The service manager's view of the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// Whether the definition file is in place.
    pub installed: bool,
    pub state: ServiceState,
    pub pid: Option<u32>,
    /// Whether it starts at boot (systemd's unit-file state; launchd: loaded).
    pub enabled: Option<bool>,
    /// The exit status of the last run, when the manager reports one.
    pub last_exit: Option<i32>,
    /// What the runner said about itself (systemd's `STATUS=`, e.g. "Active"), or the
    /// manager's own state word.
    pub detail: Option<String>,
}

impl ServiceStatus {
    /// Known to the manager only as a definition (`installed`) or not at all.
    pub fn not_loaded(installed: bool) -> Self {
        Self {
            installed,
            state: ServiceState::NotLoaded,
            pid: None,
            enabled: None,
            last_exit: None,
            detail: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// Running (for systemd: READY=1 sent, i.e. the runner reached Active).
    Running,
    /// Started but not yet Active (still registering or connecting).
    Starting,
    /// Draining after a stop request.
    Stopping,
    Stopped,
    /// The last run ended in a failure the manager recorded.
    Failed,
    /// The manager does not know the service (not installed, or not loaded).
    NotLoaded,
    /// A state word this code does not map, kept as the manager said it.
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} {}: {source}", path.display())]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} already exists: the service is installed. Uninstall it first \
         (fyn-runner service uninstall) to replace it",
        path.display()
    )]
    AlreadyInstalled { path: PathBuf },
    #[error("the service is not installed ({} does not exist)", path.display())]
    NotInstalled { path: PathBuf },
    #[error("invalid service spec: {0}")]
    InvalidSpec(String),
    #[error("the spec is for {spec:?} scope but this manager handles {manager:?} scope")]
    ScopeMismatch { spec: Scope, manager: Scope },
    #[error("{0}")]
    Environment(String),
    #[error("{error}; the install was rolled back{}", rollback_note(problems))]
    RolledBack {
        error: Box<ServiceError>,
        /// Rollback steps that failed too (the operator has to clean those up).
        problems: Vec<String>,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("the Windows service control manager could not {op} service {name}: {detail}")]
    Scm {
        op: &'static str,
        name: String,
        detail: String,
    },
    #[error(
        "the service made no progress for {waited_secs} s while stopping (still {state}); \
         see its log, or end it with `fyn-runner drain --force`"
    )]
    StopTimedOut { state: String, waited_secs: u64 },
}

impl ServiceError {
    /// The install failed with `error` and was undone by one step, `undo`.
    fn undone_by<E: std::fmt::Display>(error: ServiceError, undo: Result<(), E>) -> Self {
        ServiceError::RolledBack {
            error: Box::new(error),
            problems: undo.err().map(|e| e.to_string()).into_iter().collect(),
        }
    }
}

fn rollback_note(problems: &[String]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!(" except: {}", problems.join("; "))
    }
}

/// Install, remove and control the runner's service.
pub trait ServiceManager {
    /// Write the definition, register it to start at boot, and start it now.
    /// On failure, whatever this call did is undone.
    fn install(&self, spec: &ServiceSpec) -> Result<InstalledService, ServiceError>;
    /// Stop, unregister and remove the definition. (`uninstall` drains the runner before,
    /// through its control socket: a stop leaves running jobs to their supervisors.)
    fn uninstall(&self) -> Result<(), ServiceError>;
    fn start(&self) -> Result<(), ServiceError>;
    /// Stop the runner: SIGTERM, so it exits and leaves running jobs to their
    /// supervisors (Windows: it drains); returns once it has stopped.
    fn stop(&self) -> Result<(), ServiceError>;
    fn restart(&self) -> Result<(), ServiceError>;
    fn status(&self) -> Result<ServiceStatus, ServiceError>;
}

/// The machine as the managers see it: where files go and whose service it is. Tests
/// point `root` at a temporary folder; the commands still name the real paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Prefix for every file read or written (`/` on a real system).
    pub root: PathBuf,
    /// The installing user's home folder (user scope, launchd paths).
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`, which moves systemd's user unit folder.
    pub xdg_config_home: Option<PathBuf>,
    /// The installing user's uid (launchd's `gui/<uid>` domain, lingering); `None`
    /// where the OS has none (Windows).
    pub uid: Option<u32>,
}

impl Host {
    /// This machine, as the current process sees it.
    pub fn current() -> Self {
        Self {
            root: PathBuf::from("/"),
            home: std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            xdg_config_home: std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            uid: crate::platform::user_id(),
        }
    }

    /// The home folder, which user-scope paths need.
    pub fn require_home(&self) -> Result<&Path, ServiceError> {
        self.home.as_deref().ok_or_else(|| {
            ServiceError::Environment(
                "HOME is not set (or not absolute); a user service needs it to find its \
                 definition folder"
                    .into(),
            )
        })
    }

    /// The user ID, which the Unix managers' user scope needs.
    pub fn require_uid(&self) -> Result<u32, ServiceError> {
        self.uid.ok_or_else(|| {
            ServiceError::Environment(
                "this system has no numeric user IDs, which systemd and launchd need".into(),
            )
        })
    }

    /// Where a real path lies under `root`.
    pub fn path(&self, real: &Path) -> PathBuf {
        self.root.join(real.strip_prefix("/").unwrap_or(real))
    }
}

/// The service manager of this machine: systemd when it is running (it creates
/// `/run/systemd/system` at boot), launchd on macOS, the service control manager on
/// Windows, otherwise none — see [`explain_missing`].
pub fn detect() -> Option<Manager> {
    if cfg!(windows) {
        return Some(Manager::Windows);
    }
    if cfg!(target_os = "macos") {
        return Some(Manager::Launchd);
    }
    if cfg!(target_os = "linux") && Path::new("/run/systemd/system").is_dir() {
        return Some(Manager::Systemd);
    }
    None
}

/// Why [`detect`] found nothing, and what to do instead.
pub fn explain_missing() -> &'static str {
    if cfg!(target_os = "linux") {
        "systemd is not running here (/run/systemd/system is missing): run \
         `fyn-runner run --config <file>` under your init system or container supervisor, \
         or use `fyn-runner service render --manager systemd` as a starting point"
    } else {
        "no supported service manager on this system (systemd and launchd are); run \
         `fyn-runner run --config <file>` under your own supervisor"
    }
}

/// [`detect`], or an error that explains why there is nothing to install into.
pub fn detect_or_explain() -> Result<Manager, ServiceError> {
    detect().ok_or_else(|| ServiceError::Unsupported(explain_missing().to_owned()))
}

/// The definition text for `manager` (for `fyn-runner service render`). `host`
/// places launchd's log file for a user agent (`~/Library/Logs`).
pub fn render_for(
    manager: Manager,
    spec: &ServiceSpec,
    host: &Host,
) -> Result<String, ServiceError> {
    Ok(match manager {
        Manager::Systemd => systemd::render(spec),
        Manager::Launchd => launchd::render(spec, &launchd::log_file(spec.scope, host)?),
        Manager::Windows => windows::render(spec)?,
    })
}

/// Where `manager` keeps the definition for `scope` on `host` (a real path).
pub fn definition_path(
    manager: Manager,
    scope: Scope,
    host: &Host,
) -> Result<PathBuf, ServiceError> {
    match manager {
        Manager::Systemd => systemd::unit_path(scope, host),
        Manager::Launchd => launchd::plist_path(scope, host),
        // The SCM keeps the definition in the registry.
        Manager::Windows => Ok(PathBuf::from(windows::REGISTRY_KEY)),
    }
}

/// The manager for this machine, talking to the real `systemctl`/`launchctl` or the
/// Windows service control manager (which exists only on Windows).
pub fn manager_for(
    manager: Manager,
    scope: Scope,
) -> Result<Box<dyn ServiceManager>, ServiceError> {
    let host = Host::current();
    Ok(match manager {
        Manager::Systemd => Box::new(Systemd::new(scope, host, SystemRunner)),
        Manager::Launchd => Box::new(Launchd::new(scope, host, SystemRunner)),
        Manager::Windows => windows_manager(scope)?,
    })
}

#[cfg(windows)]
fn windows_manager(scope: Scope) -> Result<Box<dyn ServiceManager>, ServiceError> {
    Ok(Box::new(WindowsService::new(scope, windows::SystemScm)))
}

#[cfg(not(windows))]
fn windows_manager(_scope: Scope) -> Result<Box<dyn ServiceManager>, ServiceError> {
    Err(ServiceError::Unsupported(
        "the Windows service control manager exists only on Windows (`fyn-runner service \
         render --manager windows` shows what install would create)"
            .into(),
    ))
}
