//! launchd: the property list and `launchctl`. The plist is loaded into launchd
//! (`bootstrap`), not just written: a plist on disk does nothing until the next boot.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::command::{CommandRunner, args, command_line, run_checked};
use super::{
    Host, InstalledService, Manager, Scope, ServiceError, ServiceManager, ServiceSpec,
    ServiceState, ServiceStatus, files,
};

pub const LABEL: &str = "dev.fyn-runner.runner";
pub const SYSTEM_PLIST_DIR: &str = "/Library/LaunchDaemons";

/// launchd's default PATH is /usr/bin:/bin:/usr/sbin:/sbin; jobs commonly need the
/// Homebrew and /usr/local tools as well (systemd's default already has /usr/local).
const PATH: &str = "/usr/local/bin:/opt/homebrew/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// `/Library/LaunchDaemons/<label>.plist` or `~/Library/LaunchAgents/<label>.plist`.
pub fn plist_path(scope: Scope, host: &Host) -> Result<PathBuf, ServiceError> {
    let folder = match scope {
        Scope::System => PathBuf::from(SYSTEM_PLIST_DIR),
        Scope::User => host.require_home()?.join("Library/LaunchAgents"),
    };
    Ok(folder.join(format!("{LABEL}.plist")))
}

/// Where launchd writes the runner's stdout and stderr (its logs): the macOS log
/// folders, which Console.app shows.
pub fn log_file(scope: Scope, host: &Host) -> Result<PathBuf, ServiceError> {
    let folder = match scope {
        Scope::System => PathBuf::from("/Library/Logs/fyn-runner"),
        Scope::User => host.require_home()?.join("Library/Logs/fyn-runner"),
    };
    Ok(folder.join("runner.log"))
}

/// The launchd domain: the system's, or the logged-in user's GUI session.
pub fn domain(scope: Scope, uid: u32) -> String {
    match scope {
        Scope::System => "system".to_owned(),
        Scope::User => format!("gui/{uid}"),
    }
}

/// The property list for `spec`, logging to `log_file`.
pub fn render(spec: &ServiceSpec, log_file: &Path) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
         \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <plist version=\"1.0\">\n<dict>\n",
    );
    let mut key = |name: &str, value: String| {
        out.push_str(&format!("\t<key>{name}</key>\n{value}"));
    };
    key("Label", string(1, LABEL));
    key(
        "ProgramArguments",
        array(
            1,
            &[
                &spec.binary.to_string_lossy(),
                "run",
                "--config",
                &spec.config_path.to_string_lossy(),
            ],
        ),
    );
    if let (Scope::System, Some(user)) = (spec.scope, &spec.user) {
        key("UserName", string(1, user));
    }
    key("RunAtLoad", "\t<true/>\n".to_owned());
    // Restart only after a crash. launchd cannot tell exit codes apart, and every
    // deliberate exit must stay down: 0, 2 and 7 are drains the control plane or the
    // operator asked for (7 left results undelivered: the next start sends them), 3 to
    // 6 cannot be fixed by a restart (and 4, evicted by a newer session, would evict
    // that session in turn).
    key(
        "KeepAlive",
        "\t<dict>\n\t\t<key>Crashed</key>\n\t\t<true/>\n\t</dict>\n".to_owned(),
    );
    // A stop signals the runner alone, which exits; its jobs run on under their
    // supervisors, which left its process group, and the next start reattaches them.
    // Said outright, so launchd never kills what is left of the group.
    key("AbandonProcessGroup", "\t<true/>\n".to_owned());
    // launchd's stop timeout: SIGTERM (the runner stops), then SIGKILL after this long.
    key(
        "ExitTimeOut",
        format!("\t<integer>{}</integer>\n", spec.stop_timeout_secs()),
    );
    // Without it launchd applies background resource limits (CPU and I/O throttling),
    // which a machine running simulations must not have.
    key("ProcessType", string(1, "Interactive"));
    key(
        "EnvironmentVariables",
        format!(
            "\t<dict>\n\t\t<key>RUST_LOG</key>\n{}\t\t<key>PATH</key>\n{}\t</dict>\n",
            string(2, "info"),
            string(2, PATH)
        ),
    );
    let log = log_file.to_string_lossy();
    key("StandardOutPath", string(1, &log));
    key("StandardErrorPath", string(1, &log));
    out.push_str("</dict>\n</plist>\n");
    out
}

fn string(indent: usize, text: &str) -> String {
    format!("{}<string>{}</string>\n", "\t".repeat(indent), escape(text))
}

fn array(indent: usize, items: &[&str]) -> String {
    let tabs = "\t".repeat(indent);
    let mut out = format!("{tabs}<array>\n");
    for item in items {
        out.push_str(&string(indent + 1, item));
    }
    out.push_str(&format!("{tabs}</array>\n"));
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `launchctl` for one scope.
pub struct Launchd<R> {
    scope: Scope,
    host: Host,
    runner: R,
}

impl<R: CommandRunner> Launchd<R> {
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

    fn plist_path(&self) -> Result<PathBuf, ServiceError> {
        plist_path(self.scope, &self.host)
    }

    fn domain(&self) -> Result<String, ServiceError> {
        Ok(domain(self.scope, self.host.require_uid()?))
    }

    /// `<domain>/<label>`, the service target of `print`, `bootout`, `kickstart`.
    fn target(&self) -> Result<String, ServiceError> {
        Ok(format!("{}/{LABEL}", self.domain()?))
    }

    fn launchctl(&self, words: &[&OsStr]) -> Result<std::process::Output, ServiceError> {
        let argv: Vec<OsString> = words.iter().map(|w| w.to_os_string()).collect();
        run_checked(&self.runner, "launchctl", &argv)
    }

    /// Whether launchd has the service loaded (`print` fails for an unknown one).
    fn loaded(&self) -> Result<bool, ServiceError> {
        Ok(self.print()?.status.success())
    }

    /// `launchctl print <target>`, whose failure is an answer ("not loaded").
    fn print(&self) -> Result<std::process::Output, ServiceError> {
        let target = self.target()?;
        let argv = args([OsStr::new("print"), OsStr::new(&target)]);
        self.runner
            .run("launchctl", &argv)
            .map_err(|source| ServiceError::Spawn {
                command: command_line("launchctl", &argv),
                source,
            })
    }

    fn require_installed(&self) -> Result<PathBuf, ServiceError> {
        let path = self.plist_path()?;
        if files::exists(&self.host, &path) {
            Ok(path)
        } else {
            Err(ServiceError::NotInstalled { path })
        }
    }

    /// Load the plist; RunAtLoad starts the runner. `bootstrap` is the current
    /// interface; `load -w` is the one older systems (and some sessions) still take.
    fn bootstrap(&self, plist: &Path) -> Result<(), ServiceError> {
        let domain = self.domain()?;
        let first = self.launchctl(&[
            OsStr::new("bootstrap"),
            OsStr::new(&domain),
            plist.as_os_str(),
        ]);
        let Err(first) = first else {
            return Ok(());
        };
        match self.launchctl(&[OsStr::new("load"), OsStr::new("-w"), plist.as_os_str()]) {
            Ok(_) => Ok(()),
            Err(fallback) => Err(match first {
                ServiceError::CommandFailed {
                    command,
                    status,
                    stderr,
                } => ServiceError::CommandFailed {
                    command,
                    status,
                    stderr: format!("{stderr}; the fallback also failed: {fallback}"),
                },
                other => other,
            }),
        }
    }

    fn activate(&self, plist: &Path) -> Result<(), ServiceError> {
        // Clears a disabled override left by an earlier `launchctl disable` or
        // `unload -w`, which would make bootstrap refuse the service.
        let target = self.target()?;
        self.launchctl(&[OsStr::new("enable"), OsStr::new(&target)])?;
        self.bootstrap(plist)
    }
}

impl<R: CommandRunner> ServiceManager for Launchd<R> {
    fn install(&self, spec: &ServiceSpec) -> Result<InstalledService, ServiceError> {
        spec.validate()?;
        if spec.scope != self.scope {
            return Err(ServiceError::ScopeMismatch {
                spec: spec.scope,
                manager: self.scope,
            });
        }
        let path = self.plist_path()?;
        if files::exists(&self.host, &path) {
            return Err(ServiceError::AlreadyInstalled { path });
        }
        let log = log_file(self.scope, &self.host)?;
        if let Some(folder) = log.parent() {
            // launchd opens the log file but does not create its folder.
            files::create_dir_all(&self.host, folder)?;
        }
        files::write(
            &self.host,
            &path,
            &render(spec, &log),
            files::DEFINITION_ACCESS,
        )?;
        if let Err(error) = self.activate(&path) {
            let undo = files::remove(&self.host, &path);
            return Err(ServiceError::undone_by(error, undo));
        }
        Ok(InstalledService {
            manager: Manager::Launchd,
            scope: self.scope,
            definition: path,
            logs: log.display().to_string(),
        })
    }

    fn uninstall(&self) -> Result<(), ServiceError> {
        let path = self.require_installed()?;
        if self.loaded()? {
            // bootout sends SIGTERM (the runner stops) and waits up to ExitTimeOut.
            let target = self.target()?;
            self.launchctl(&[OsStr::new("bootout"), OsStr::new(&target)])?;
        }
        files::remove(&self.host, &path)
    }

    fn start(&self) -> Result<(), ServiceError> {
        let path = self.require_installed()?;
        if self.loaded()? {
            let target = self.target()?;
            self.launchctl(&[OsStr::new("kickstart"), OsStr::new(&target)])
                .map(drop)
        } else {
            self.bootstrap(&path)
        }
    }

    /// Unloads the service: with KeepAlive, a plain SIGTERM could be followed by a
    /// restart, and an unloaded service stays down until `start` (or the next boot).
    fn stop(&self) -> Result<(), ServiceError> {
        self.require_installed()?;
        if !self.loaded()? {
            return Ok(());
        }
        let target = self.target()?;
        self.launchctl(&[OsStr::new("bootout"), OsStr::new(&target)])
            .map(drop)
    }

    fn restart(&self) -> Result<(), ServiceError> {
        let path = self.require_installed()?;
        if self.loaded()? {
            // -k: SIGTERM the running instance (it stops, its jobs run on), then start it
            // again (it reattaches them).
            let target = self.target()?;
            self.launchctl(&[
                OsStr::new("kickstart"),
                OsStr::new("-k"),
                OsStr::new(&target),
            ])
            .map(drop)
        } else {
            self.bootstrap(&path)
        }
    }

    fn status(&self) -> Result<ServiceStatus, ServiceError> {
        let installed = files::exists(&self.host, &self.plist_path()?);
        let output = self.print()?;
        if !output.status.success() {
            return Ok(ServiceStatus::not_loaded(installed));
        }
        Ok(parse_print(
            &String::from_utf8_lossy(&output.stdout),
            installed,
        ))
    }
}

/// Read the top level of `launchctl print <target>` (one tab deep; nested blocks,
/// which repeat some of the same words, are deeper).
pub fn parse_print(text: &str, installed: bool) -> ServiceStatus {
    let get = |key: &str| {
        text.lines()
            .filter(|l| l.starts_with('\t') && !l.starts_with("\t\t"))
            .find_map(|l| l.trim().strip_prefix(key)?.trim_start().strip_prefix('='))
            .map(str::trim)
    };
    let last_exit = get("last exit code").and_then(|s| s.parse().ok());
    let word = get("state").unwrap_or("");
    let state = match word {
        "running" => ServiceState::Running,
        "spawn scheduled" | "spawning" => ServiceState::Starting,
        "exiting" | "stopping" => ServiceState::Stopping,
        "waiting" | "not running" | "exited" => match last_exit {
            Some(code) if code != 0 => ServiceState::Failed,
            _ => ServiceState::Stopped,
        },
        other => ServiceState::Other(other.to_owned()),
    };
    ServiceStatus {
        installed,
        state,
        pid: get("pid").and_then(|s| s.parse().ok()),
        // Loaded with RunAtLoad: it starts at boot (or login) while the plist is there.
        enabled: Some(installed),
        last_exit,
        detail: Some(word.to_owned()).filter(|s| !s.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_output_maps_to_a_status() {
        let text = "gui/501/dev.fyn-runner.runner = {\n\
                    \tactive count = 1\n\
                    \tpath = /Users/ada/Library/LaunchAgents/dev.fyn-runner.runner.plist\n\
                    \tstate = running\n\
                    \tprogram = /usr/local/bin/fyn-runner\n\
                    \tendpoints = {\n\t\tstate = active\n\t}\n\
                    \tpid = 812\n\
                    \tlast exit code = (never exited)\n}\n";
        let status = parse_print(text, true);
        assert_eq!(status.state, ServiceState::Running);
        assert_eq!(status.pid, Some(812));
        assert_eq!(status.last_exit, None);
        let stopped = parse_print(
            "x = {\n\tstate = not running\n\tlast exit code = 5\n}\n",
            true,
        );
        assert_eq!(stopped.state, ServiceState::Failed);
        assert_eq!(stopped.last_exit, Some(5));
    }

    #[test]
    fn text_is_escaped_for_xml() {
        assert_eq!(escape("a<b>&\"c"), "a&lt;b&gt;&amp;&quot;c");
    }
}
