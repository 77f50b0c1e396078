//! systemd: the unit file and `systemctl`. Each directive's reason is in
//! `docs/operations.md`; the short version is in the unit's own comments.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::command::{CommandRunner, args, run_checked};
use super::{
    Host, InstalledService, Manager, Scope, ServiceError, ServiceManager, ServiceSpec,
    ServiceState, ServiceStatus, files,
};

pub const UNIT_NAME: &str = "fyn-runner.service";
pub const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

/// The state directory `StateDirectory=fyn-runner` stands for in system scope; the
/// directive is only written when the spec's state directory is exactly this one.
const SYSTEM_STATE_DIR: &str = "/var/lib/fyn-runner";

/// Exit codes (see `core::ExitCode`) after which a restart cannot help or was not
/// asked for: registration failed, evicted by a newer session, identity rejected,
/// incompatible protocol, and a stop that left results undelivered (7: someone asked
/// for the stop; the unit ends `failed` so it shows, and the next start delivers them).
const NO_RESTART_EXIT_CODES: &str = "3 4 5 6 7";

/// A forced stop (a second signal, or the drain deadline passed and jobs were
/// cancelled) is still a stop the operator or the control plane asked for.
const FORCED_STOP_EXIT_CODE: &str = "2";

/// Where the unit file goes: `/etc/systemd/system` or the user's
/// `$XDG_CONFIG_HOME/systemd/user` (`~/.config/systemd/user`).
pub fn unit_path(scope: Scope, host: &Host) -> Result<PathBuf, ServiceError> {
    let folder = match scope {
        Scope::System => PathBuf::from(SYSTEM_UNIT_DIR),
        Scope::User => match &host.xdg_config_home {
            Some(config) => config.join("systemd/user"),
            None => host.require_home()?.join(".config/systemd/user"),
        },
    };
    Ok(folder.join(UNIT_NAME))
}

/// The unit file for `spec`.
pub fn render(spec: &ServiceSpec) -> String {
    let mut unit = String::new();
    let mut line = |text: &str| {
        unit.push_str(text);
        unit.push('\n');
    };
    line("# fyn-runner, written by `fyn-runner install` (docs/operations.md).");
    line(&format!(
        "# Settings belong in {}; overrides in `systemctl edit fyn-runner`.",
        single_line(&spec.config_path.to_string_lossy())
    ));
    line("[Unit]");
    // Description= expands % specifiers.
    line(&format!(
        "Description={}",
        single_line(&spec.description).replace('%', "%%")
    ));
    if spec.scope == Scope::System {
        // The user manager has no network targets; there the runner's own reconnect
        // with backoff is what copes with a network that is not up yet.
        line("After=network-online.target");
        line("Wants=network-online.target");
    }
    line("");
    line("[Service]");
    for text in service_section(spec) {
        line(&text);
    }
    line("");
    line("[Install]");
    line(match spec.scope {
        Scope::System => "WantedBy=multi-user.target",
        Scope::User => "WantedBy=default.target",
    });
    unit
}

fn service_section(spec: &ServiceSpec) -> Vec<String> {
    let mut lines = vec![
        "# READY=1 comes when the runner reaches Active, STATUS= on every transition.".to_owned(),
        "Type=notify".to_owned(),
        format!(
            "ExecStart={} run --config {}",
            exec_program(spec.binary.as_os_str()),
            exec_arg(spec.config_path.as_os_str())
        ),
    ];
    if let (Scope::System, Some(user)) = (spec.scope, &spec.user) {
        lines.push(format!("User={}", user.replace('%', "%%")));
    }
    lines.extend(
        [
            "Environment=RUST_LOG=info",
            "# Reaching Active can wait on the network or the control plane; the runner",
            "# retries by itself, so the start job must not time out and kill it.",
            "TimeoutStartSec=infinity",
            "# A stop or restart signals the runner alone: it exits, and its jobs run on under",
            "# their supervisors (in this unit's cgroup); the next start reattaches them.",
            "# Draining ends jobs (`fyn-runner drain`, the API's drain, uninstall).",
            "KillSignal=SIGTERM",
            "KillMode=process",
        ]
        .map(str::to_owned),
    );
    lines.push(format!("TimeoutStopSec={}", spec.stop_timeout_secs()));
    lines.extend(
        [
            "# Restart after a crash or a store failure; not after a stop that was asked for",
            "# (0, or 2 when the deadline cancelled jobs, or 7 when results are left",
            "# undelivered: a failure, so it shows), nor where a restart cannot help.",
            "Restart=on-failure",
            "RestartSec=5",
        ]
        .map(str::to_owned),
    );
    lines.push(format!("SuccessExitStatus={FORCED_STOP_EXIT_CODE}"));
    lines.push(format!("RestartPreventExitStatus={NO_RESTART_EXIT_CODES}"));
    lines.push("# A job killed by the OOM killer is that job's failure, not the runner's.".into());
    lines.push("OOMPolicy=continue".into());
    if spec.scope == Scope::System && spec.state_dir == Path::new(SYSTEM_STATE_DIR) {
        lines.push("StateDirectory=fyn-runner".into());
        lines.push("StateDirectoryMode=0700".into());
    }
    lines.extend(hardening(spec.scope).iter().map(|s| (*s).to_owned()));
    lines
}

/// Sandboxing that leaves jobs their GPUs, devices, /tmp and home folders. The
/// namespace-based options need the system manager (in the user manager they would
/// turn on PrivateUsers=, which needs unprivileged user namespaces and changes what
/// jobs see), so a user unit keeps only the seccomp-based ones.
fn hardening(scope: Scope) -> &'static [&'static str] {
    const ANY_SCOPE: &[&str] = &[
        "# Hardening that leaves jobs their GPUs, devices, /tmp and /home (docs/operations.md).",
        "NoNewPrivileges=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
    ];
    const SYSTEM_SCOPE: &[&str] = &[
        "# Hardening that leaves jobs their GPUs, devices, /tmp and /home (docs/operations.md).",
        "NoNewPrivileges=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "ProtectSystem=full",
        "ProtectControlGroups=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelTunables=yes",
    ];
    match scope {
        Scope::System => SYSTEM_SCOPE,
        Scope::User => ANY_SCOPE,
    }
}

/// Text that stays on its line: control characters (a newline would start a new
/// directive) become spaces, and a trailing backslash (a line continuation) goes.
fn single_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim_end_matches('\\')
        .to_owned()
}

/// The program of an `ExecStart=` line: quoted like an argument, but `$` stays as
/// it is, since systemd does not expand variables in the executable path.
pub fn exec_program(path: &OsStr) -> String {
    exec_word(path, false)
}

/// One `ExecStart=` argument: bare when it is plainly safe, otherwise double-quoted
/// with C escapes. `%` (specifiers) is doubled in both forms and `$` (variable
/// expansion) too; bytes that are not UTF-8 become `\xNN`, which systemd decodes back.
pub fn exec_arg(word: &OsStr) -> String {
    exec_word(word, true)
}

fn exec_word(word: &OsStr, expands_dollars: bool) -> String {
    // The bytes of the path as the OS holds it (on Windows, WTF-8).
    let bytes = word.as_encoded_bytes();
    // A leading '-', '@', ':', '+' or '!' would be read as an ExecStart= prefix.
    let plain = bytes.first().is_some_and(|b| !b"-@:+!".contains(b))
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@,=%".contains(b));
    if plain {
        return String::from_utf8_lossy(bytes).replace('%', "%%");
    }
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '%' => out.push_str("%%"),
                '$' if expands_dollars => out.push_str("$$"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    out
}

/// `systemctl` for one scope.
pub struct Systemd<R> {
    scope: Scope,
    host: Host,
    runner: R,
}

impl<R: CommandRunner> Systemd<R> {
    pub fn new(scope: Scope, host: Host, runner: R) -> Self {
        Self {
            scope,
            host,
            runner,
        }
    }

    pub fn runner(&self) -> &R {
        &self.runner
    }

    fn unit_path(&self) -> Result<PathBuf, ServiceError> {
        unit_path(self.scope, &self.host)
    }

    /// `systemctl [--user] <words...>`.
    fn systemctl(&self, words: &[&str]) -> Result<std::process::Output, ServiceError> {
        let mut argv: Vec<OsString> = Vec::with_capacity(words.len() + 1);
        if self.scope == Scope::User {
            argv.push("--user".into());
        }
        argv.extend(words.iter().map(OsString::from));
        run_checked(&self.runner, "systemctl", &argv)
    }

    fn require_installed(&self) -> Result<PathBuf, ServiceError> {
        let path = self.unit_path()?;
        if files::exists(&self.host, &path) {
            Ok(path)
        } else {
            Err(ServiceError::NotInstalled { path })
        }
    }

    /// After the unit is written: register and start it, as one step that succeeds or
    /// is undone.
    fn activate(&self, progress: &mut Progress) -> Result<(), ServiceError> {
        self.systemctl(&["daemon-reload"])?;
        progress.reloaded = true;
        self.systemctl(&["enable", UNIT_NAME])?;
        progress.enabled = true;
        if self.scope == Scope::User {
            // Without lingering the user manager, and the runner with it, only runs
            // while the user is logged in. Lingering is left on at uninstall: it may
            // have been on before and other services may rely on it.
            let uid = self.host.require_uid()?.to_string();
            run_checked(
                &self.runner,
                "loginctl",
                &args([OsStr::new("enable-linger"), OsStr::new(&uid)]),
            )?;
        }
        // --no-block: READY=1 only comes at Active, which can take as long as the
        // control plane is unreachable; install must not hang on it.
        self.systemctl(&["start", "--no-block", UNIT_NAME])?;
        Ok(())
    }

    /// Undo what `activate` did, in reverse; report each step that fails.
    fn roll_back(&self, path: &Path, progress: &Progress, error: ServiceError) -> ServiceError {
        let mut problems = Vec::new();
        if progress.enabled
            && let Err(e) = self.systemctl(&["disable", UNIT_NAME])
        {
            problems.push(e.to_string());
        }
        if let Err(e) = files::remove(&self.host, path) {
            problems.push(e.to_string());
        }
        if progress.reloaded
            && let Err(e) = self.systemctl(&["daemon-reload"])
        {
            problems.push(e.to_string());
        }
        ServiceError::RolledBack {
            error: Box::new(error),
            problems,
        }
    }
}

#[derive(Default)]
struct Progress {
    reloaded: bool,
    enabled: bool,
}

impl<R: CommandRunner> ServiceManager for Systemd<R> {
    fn install(&self, spec: &ServiceSpec) -> Result<InstalledService, ServiceError> {
        spec.validate()?;
        if spec.scope != self.scope {
            return Err(ServiceError::ScopeMismatch {
                spec: spec.scope,
                manager: self.scope,
            });
        }
        let path = self.unit_path()?;
        if files::exists(&self.host, &path) {
            return Err(ServiceError::AlreadyInstalled { path });
        }
        files::write(&self.host, &path, &render(spec), files::DEFINITION_ACCESS)?;
        let mut progress = Progress::default();
        if let Err(error) = self.activate(&mut progress) {
            return Err(self.roll_back(&path, &progress, error));
        }
        let user_flag = if self.scope == Scope::User {
            "--user "
        } else {
            ""
        };
        Ok(InstalledService {
            manager: Manager::Systemd,
            scope: self.scope,
            definition: path,
            logs: format!("journalctl {user_flag}-u {UNIT_NAME}"),
        })
    }

    fn uninstall(&self) -> Result<(), ServiceError> {
        let path = self.require_installed()?;
        // stop returns once the runner has drained and exited; only then is the unit
        // taken away.
        self.systemctl(&["stop", UNIT_NAME])?;
        self.systemctl(&["disable", UNIT_NAME])?;
        files::remove(&self.host, &path)?;
        self.systemctl(&["daemon-reload"])?;
        Ok(())
    }

    fn start(&self) -> Result<(), ServiceError> {
        self.require_installed()?;
        self.systemctl(&["start", "--no-block", UNIT_NAME])
            .map(drop)
    }

    fn stop(&self) -> Result<(), ServiceError> {
        self.require_installed()?;
        self.systemctl(&["stop", UNIT_NAME]).map(drop)
    }

    fn restart(&self) -> Result<(), ServiceError> {
        self.require_installed()?;
        self.systemctl(&["restart", "--no-block", UNIT_NAME])
            .map(drop)
    }

    fn status(&self) -> Result<ServiceStatus, ServiceError> {
        let installed = files::exists(&self.host, &self.unit_path()?);
        let output = self.systemctl(&[
            "show",
            UNIT_NAME,
            "--property=LoadState,ActiveState,SubState,UnitFileState,MainPID,ExecMainStatus,StatusText",
        ])?;
        Ok(parse_show(
            &String::from_utf8_lossy(&output.stdout),
            installed,
        ))
    }
}

/// Read `systemctl show` output (`Key=value` lines).
pub fn parse_show(text: &str, installed: bool) -> ServiceStatus {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
            .unwrap_or("")
    };
    let state = if get("LoadState") == "not-found" {
        ServiceState::NotLoaded
    } else {
        match get("ActiveState") {
            "active" | "reloading" => ServiceState::Running,
            "activating" => ServiceState::Starting,
            "deactivating" => ServiceState::Stopping,
            "inactive" => ServiceState::Stopped,
            "failed" => ServiceState::Failed,
            other => ServiceState::Other(other.to_owned()),
        }
    };
    let enabled = match get("UnitFileState") {
        "" => None,
        s => Some(s == "enabled" || s == "enabled-runtime"),
    };
    let detail = Some(get("StatusText"))
        .filter(|s| !s.is_empty())
        .or(Some(get("SubState")).filter(|s| !s.is_empty()))
        .map(str::to_owned);
    ServiceStatus {
        installed,
        state,
        pid: get("MainPID").parse().ok().filter(|&pid: &u32| pid != 0),
        enabled,
        last_exit: get("ExecMainStatus").parse().ok(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_words_are_quoted_only_when_needed() {
        assert_eq!(
            exec_arg(OsStr::new("/usr/bin/fyn-runner")),
            "/usr/bin/fyn-runner"
        );
        assert_eq!(exec_arg(OsStr::new("/a/100%")), "/a/100%%");
        assert_eq!(
            exec_arg(OsStr::new("/opt/my runner/bin")),
            "\"/opt/my runner/bin\""
        );
        assert_eq!(
            exec_arg(OsStr::new("/a/$HOME\\\"x")),
            "\"/a/$$HOME\\\\\\\"x\""
        );
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            assert_eq!(
                exec_arg(OsStr::from_bytes(b"/a/\xff\n")),
                "\"/a/\\xff\\x0a\""
            );
        }
        assert_eq!(exec_arg(OsStr::new("/a/\n")), "\"/a/\\x0a\"");
        assert_eq!(exec_arg(OsStr::new("")), "\"\"");
        assert_eq!(exec_arg(OsStr::new("-x")), "\"-x\"");
        assert_eq!(exec_program(OsStr::new("/a/$b c")), "\"/a/$b c\"");
    }

    #[test]
    fn free_text_cannot_leave_its_line() {
        let spec = ServiceSpec {
            description: "evil\nExecStartPre=/bin/false 100% \\".into(),
            config_path: "/etc/a\nUser=root/config.toml".into(),
            ..ServiceSpec::new(
                "/bin/fyn-runner".into(),
                "/etc/c.toml".into(),
                "/var/lib/fyn-runner".into(),
                Scope::System,
                1,
            )
        };
        let unit = render(&spec);
        assert!(
            unit.contains("Description=evil ExecStartPre=/bin/false 100%% \n"),
            "{unit}"
        );
        assert!(
            !unit
                .lines()
                .any(|l| l.starts_with("ExecStartPre") || l.starts_with("User="))
        );
        assert!(
            unit.contains("--config \"/etc/a\\x0aUser=root/config.toml\""),
            "{unit}"
        );
    }

    #[test]
    fn show_output_maps_to_a_status() {
        let text = "LoadState=loaded\nActiveState=active\nSubState=running\n\
                    UnitFileState=enabled\nMainPID=4242\nExecMainStatus=0\nStatusText=Active\n";
        let status = parse_show(text, true);
        assert_eq!(status.state, ServiceState::Running);
        assert_eq!(status.pid, Some(4242));
        assert_eq!(status.enabled, Some(true));
        assert_eq!(status.detail.as_deref(), Some("Active"));
        let gone = parse_show(
            "LoadState=not-found\nActiveState=inactive\nMainPID=0\n",
            false,
        );
        assert_eq!(gone.state, ServiceState::NotLoaded);
        assert_eq!(gone.pid, None);
        assert_eq!(gone.detail, None);
    }
}
