//! `install`, `uninstall` and `service`: putting the runner on a machine and taking it
//! off again. The install itself runs through the lifecycle machine (Installing →
//! Registering → Installing → Stopped); this module chooses paths, renders the config
//! and the service definition, and reports each step as it happens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::{RunArgs, block_on, drain, is_root, resolve_run, write_stdout};
use crate::config::{FileConfig, RunSettings};
use crate::runtime::install::{InstallPlan, ServiceStep};
use crate::service::account::{DEFAULT_JOB_USER, create_job_account, remove_job_account};
use crate::service::{Manager, Scope, ServiceManager, ServiceSpec};

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Install for the whole machine (root; /etc and /var/lib) or for this user
    /// [default: system as root, user otherwise].
    #[arg(long, value_enum)]
    pub scope: Option<Scope>,
    /// Register and write the config, but install no OS service (for operators who
    /// manage units with their own tools; see `fyn-runner service render`).
    #[arg(long)]
    pub no_service: bool,
    /// Where to write config.toml [default: /etc/fyn-runner (system) or
    /// $XDG_CONFIG_HOME/fyn-runner (user)].
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// System scope: the account the service runs as [default: root]. With another
    /// account than root, jobs run as that account too (--job-user needs root).
    #[arg(long)]
    pub user: Option<String>,
    /// Replace an existing installation (its service, identity, state and config).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Keep the state directory (identity, outbox, job folders, traces).
    #[arg(long)]
    pub keep_state: bool,
    #[arg(long, value_enum)]
    pub scope: Option<Scope>,
    /// The folder holding config.toml [default: as for install].
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// The state directory [default: from the config, else as for install].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// How long to wait for the control plane to confirm the runner left.
    #[arg(long, default_value_t = 10)]
    pub leave_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Print the service definition without installing it.
    Render {
        /// The service manager to render for [default: this machine's, else systemd].
        #[arg(long, value_enum)]
        manager: Option<Manager>,
        #[arg(long, value_enum)]
        scope: Option<Scope>,
        /// The config file the service will run with [default: the scope's].
        #[arg(long)]
        config_path: Option<PathBuf>,
        /// The state directory [default: the scope's].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The runner's drain deadline, 0 to 2592000 (30 days); the stop timeout is
        /// derived from it.
        #[arg(long, default_value = "120", value_parser = crate::config::value::arg_parser(crate::config::value::drain_deadline))]
        drain_deadline: u64,
        /// System scope: the account the service runs as.
        #[arg(long)]
        user: Option<String>,
        /// The executable the service runs [default: this one]; a package renders its
        /// unit for the path it installs to (/usr/bin/fyn-runner).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Start the installed service.
    Start(ScopeArg),
    /// Stop the service: the runner exits, its running jobs go on under their
    /// supervisors until it starts again (Windows: it drains first). `fyn-runner drain`
    /// ends jobs.
    Stop(ScopeArg),
    /// Restart the service: running jobs go on and the new runner reattaches them
    /// (Windows: it drains first).
    Restart(ScopeArg),
    /// The service manager's view of the runner.
    Status(ScopeArg),
}

#[derive(Debug, Args)]
pub struct ScopeArg {
    #[arg(long, value_enum)]
    pub scope: Option<Scope>,
}

fn scope_or_default(scope: Option<Scope>) -> Scope {
    scope.unwrap_or(if is_root() {
        Scope::System
    } else {
        Scope::User
    })
}

fn config_path_for(scope: Scope, config_dir: Option<&Path>) -> PathBuf {
    match config_dir {
        Some(dir) => dir.join("config.toml"),
        None => crate::config::default_config_path(scope == Scope::System),
    }
}

fn state_dir_for(scope: Scope) -> PathBuf {
    super::default_state_dir_for(scope == Scope::System)
}

fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path);
    }
    Ok(std::env::current_dir()
        .context("reading the current folder")?
        .join(path))
}

/// Install: paths, config, registration through the machine, then the service.
/// An install states its own settings (flags and environment); an old config file is
/// what it replaces, not a source.
pub fn install(args: InstallArgs, matches: &clap::ArgMatches) -> anyhow::Result<i32> {
    let scope = scope_or_default(args.scope);
    if scope == Scope::System && !is_root() {
        bail!(
            "a system install needs root (on Windows: an elevated Administrator prompt); run it \
             with sudo, or pass --scope user"
        );
    }
    let config_path = absolute(config_path_for(scope, args.config_dir.as_deref()))?;
    let mut run = args.run;
    let state_dir = absolute(
        run.settings
            .state_dir
            .clone()
            .unwrap_or_else(|| state_dir_for(scope)),
    )?;
    run.settings.state_dir = Some(state_dir.clone());
    if let Some(jobs_dir) = run.settings.jobs_dir.take() {
        run.settings.jobs_dir = Some(absolute(jobs_dir)?);
    }
    if !run.token.is_given() {
        bail!(
            "install needs a one-time registration token: pass --token-file PATH or --token - \
             (standard input); --token VALUE and FYN_RUNNER_TOKEN work too"
        );
    }
    run.settings.job_user = job_user_for(scope, args.user.as_deref(), &run.settings)?;
    let manager = if args.no_service {
        None
    } else {
        Some(crate::service::detect_or_explain()?)
    };
    if existing_installation(&config_path, &state_dir) {
        if !args.force {
            bail!(
                "fyn-runner is already installed here (config {}, state {}); run `fyn-runner uninstall` first, or pass --force to replace it",
                config_path.display(),
                state_dir.display()
            );
        }
        replace_existing(manager, scope, &config_path, &state_dir)?;
    }
    let created_account = ensure_job_account(run.settings.job_user.as_deref())?;
    let installed = install_with(&run, matches, scope, manager, &config_path, args.user);
    let failed = !matches!(installed, Ok(0));
    if let (true, Some(name)) = (failed, created_account) {
        match remove_job_account(&crate::service::SystemRunner, &name) {
            Ok(()) => write_stdout(&format!("  ✓ removed the job account {name} it created\n"))?,
            Err(e) => write_stdout(&format!(
                "  ! could not remove the job account {name}: {e}\n"
            ))?,
        }
    }
    installed
}

/// The account jobs run as: as given, else — for a system service running as root on
/// Linux — a dedicated one ([`DEFAULT_JOB_USER`]).
fn job_user_for(
    scope: Scope,
    service_user: Option<&str>,
    settings: &RunSettings,
) -> anyhow::Result<Option<String>> {
    let service_as_root = service_user.is_none_or(|user| user == "root");
    match (&settings.job_user, service_as_root) {
        (Some(job_user), false) if job_user != "root" => bail!(
            "--job-user {job_user} needs the runner to run as root, but --user runs it as {}; \
             drop one of them (with --user, jobs run as that account)",
            service_user.unwrap_or_default()
        ),
        (Some(job_user), _) => Ok(Some(job_user.clone())),
        // Where install can create the account (Linux); elsewhere the operator names one.
        (None, true) if scope == Scope::System && is_root() && cfg!(target_os = "linux") => {
            Ok(Some(DEFAULT_JOB_USER.to_owned()))
        }
        (None, _) => Ok(None),
    }
}

/// Creates the job account when it does not exist; returns its name if it did.
fn ensure_job_account(job_user: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(name) = job_user.filter(|name| *name != "root") else {
        return Ok(None);
    };
    let exists = crate::platform::lookup_account(name)
        .with_context(|| format!("looking up the job account {name}"))?
        .is_some();
    if exists {
        write_stdout(&format!("  ✓ jobs run as the existing account {name}\n"))?;
        return Ok(None);
    }
    create_job_account(&crate::service::SystemRunner, name)?;
    write_stdout(&format!(
        "  ✓ created the account {name} for jobs (system account, no login)\n"
    ))?;
    Ok(Some(name.to_owned()))
}

/// Register through the machine, write the config, install the service.
fn install_with(
    run: &RunArgs,
    matches: &clap::ArgMatches,
    scope: Scope,
    manager: Option<Manager>,
    config_path: &Path,
    service_user: Option<String>,
) -> anyhow::Result<i32> {
    let settings = resolve_run(run, matches)?;
    let state_dir = settings.state_dir.clone();
    let jobs_dir = settings.jobs_root();
    let mut file = FileConfig::default();
    run.settings.write_into(&mut file);
    let config_text = crate::config::render(&file).context("rendering the config file")?;
    let service = manager.map(|manager| {
        let binary =
            std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/local/bin/fyn-runner"));
        let mut spec = ServiceSpec::new(
            binary,
            config_path.to_path_buf(),
            state_dir.clone(),
            scope,
            run.settings.drain_deadline,
        );
        spec.user = service_user;
        Box::new(ServiceInstall { manager, spec }) as Box<dyn ServiceStep>
    });
    let plan = InstallPlan {
        config_path: config_path.to_path_buf(),
        config_text,
        service,
        created_jobs_dir: crate::runtime::install::outermost_missing(&jobs_dir),
        jobs_dir: Some(jobs_dir),
    };
    write_stdout(&format!("Installing fyn-runner ({scope:?} scope)\n"))?;
    let config_path = config_path.to_path_buf();
    block_on(async move {
        let mut handle = crate::runtime::start_install(settings, plan)?;
        let mut steps = handle.transitions();
        let mut status = handle.status.clone();
        let narrate = tokio::spawn(async move {
            while let Ok(t) = steps.recv().await {
                if let Some(line) = install_step_line(&t.from, t.event) {
                    let _ = write_stdout(&format!("{line}\n"));
                }
            }
        });
        let code = handle.wait().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), narrate).await;
        if code.code() == 0 {
            write_stdout(&format!("Installed. Config: {}\n", config_path.display()))?;
        } else {
            let problem = status
                .borrow_and_update()
                .problem
                .clone()
                .unwrap_or_else(|| "see the log above".into());
            write_stdout(&format!(
                "Installation failed: {problem}\nEverything this install created was removed.\n"
            ))?;
        }
        Ok(code.code())
    })
}

/// What a finished step of the install looks like to the operator: done, or failed.
/// (A registration the API refuses ends in other events; the summary line says why.)
fn install_step_line(from: &str, event: &str) -> Option<String> {
    let (done, doing) = match from {
        "Installing.create_dirs" => ("folders created", "creating the folders"),
        "Installing.write_config" => ("config written", "writing the config"),
        "Registering.saving" => (
            "registered with the control plane",
            "saving the runner's identity",
        ),
        "Installing.install_service" => (
            "service installed and started (or skipped with --no-service)",
            "installing the service",
        ),
        _ => return None,
    };
    match event {
        "StepDone" => Some(format!("  ✓ {done}")),
        "StepFailed" => Some(format!("  ✗ {doing} failed")),
        _ => None,
    }
}

fn existing_installation(config_path: &Path, state_dir: &Path) -> bool {
    config_path.exists() || crate::runtime::identity::identity_dir(state_dir).exists()
}

/// `--force`: take the old installation away first, service included.
fn replace_existing(
    manager: Option<Manager>,
    scope: Scope,
    config_path: &Path,
    state_dir: &Path,
) -> anyhow::Result<()> {
    if let Some(manager) = manager {
        let service = crate::service::manager_for(manager, scope)?;
        if service.status().is_ok_and(|s| s.installed) {
            service
                .uninstall()
                .context("removing the existing service")?;
        }
    }
    remove_if_present(config_path)?;
    if state_dir.exists() {
        std::fs::remove_dir_all(state_dir)
            .with_context(|| format!("removing {}", state_dir.display()))?;
    }
    write_stdout("  ✓ previous installation removed (--force)\n")?;
    Ok(())
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

struct ServiceInstall {
    manager: Manager,
    spec: ServiceSpec,
}

impl ServiceInstall {
    fn service(&self) -> Result<Box<dyn ServiceManager>, crate::service::ServiceError> {
        crate::service::manager_for(self.manager, self.spec.scope)
    }
}

impl ServiceStep for ServiceInstall {
    fn install(&mut self) -> Result<String, String> {
        let installed = self
            .service()
            .and_then(|service| service.install(&self.spec))
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "{} service at {}; logs: {}",
            installed.manager.name(),
            installed.definition.display(),
            installed.logs
        ))
    }

    fn remove(&mut self) -> Result<(), String> {
        self.service()
            .and_then(|service| service.uninstall())
            .map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------- uninstall

pub fn uninstall(args: UninstallArgs, config: Option<&Path>) -> anyhow::Result<i32> {
    let scope = scope_or_default(args.scope);
    let config_path = match config {
        Some(path) => path.to_path_buf(),
        None => config_path_for(scope, args.config_dir.as_deref()),
    };
    let file = crate::config::load(&config_path)?;
    let mut settings = RunSettings::default();
    if let Some(file) = &file {
        settings.overlay(file);
    }
    let state_dir = args
        .state_dir
        .or(settings.state_dir.clone())
        .unwrap_or_else(|| state_dir_for(scope));
    settings.state_dir = Some(state_dir.clone());
    let job_user = settings.job_user.clone().filter(|user| user != "root");
    // Job folders live beside the state folder when jobs run as their own account.
    let jobs_dir = settings.jobs_dir.clone().or_else(|| {
        job_user
            .as_ref()
            .map(|_| crate::config::default_jobs_dir(&state_dir, true))
    });

    // Stopping the service leaves running jobs to their supervisors; a drain is what
    // ends them, so a running runner drains first.
    if crate::runtime::control::ensure_unused(&state_dir).is_err() {
        // Drained through the control socket, so the runner's `stopping` tells the API
        // why; running jobs end within its drain deadline, and the service's stop below
        // finds it stopped.
        write_stdout(
            "  … draining the runner (it tells the control plane it is being removed; running jobs end within its drain deadline)\n",
        )?;
        let state = state_dir.clone();
        block_on(async move { drain(&state, None, false, true, true).await })
            .context("draining the runner")?;
    }
    if let Some(manager) = crate::service::detect() {
        let service = crate::service::manager_for(manager, scope)?;
        if service.status().is_ok_and(|s| s.installed) {
            write_stdout("  … stopping the service\n")?;
            service.uninstall().context("removing the service")?;
            write_stdout("  ✓ service stopped and removed\n")?;
        }
    }
    // Jobs a stopped runner left running, which nothing will report any more.
    #[cfg(unix)]
    {
        let jobs_root = jobs_dir
            .clone()
            .unwrap_or_else(|| crate::config::default_jobs_dir(&state_dir, job_user.is_some()));
        let ended = crate::runtime::jobs::end_supervised_jobs(&jobs_root);
        if ended > 0 {
            write_stdout(&format!(
                "  ✓ ended {ended} job(s) a stopped runner had left running\n"
            ))?;
        }
    }
    if crate::runtime::control::ensure_unused(&state_dir).is_err() {
        bail!(
            "a runner is still running with state directory {}; stop it first (`fyn-runner drain --wait --state-dir {}`)",
            state_dir.display(),
            state_dir.display()
        );
    }
    match (
        settings.server.is_some(),
        // Registered: an identity with its runner ID (a key alone is a registration
        // that never finished; the API holds no runner to forget).
        crate::runtime::identity::identity_dir(&state_dir)
            .join(crate::runtime::identity::RUNNER_FILE)
            .exists(),
    ) {
        (true, true) => tell_the_api(settings, Duration::from_secs(args.leave_timeout))?,
        (false, true) => write_stdout(
            "  ! no server in the config: the control plane was not told; it will count the runner as lost\n",
        )?,
        _ => write_stdout("  ✓ not registered: nothing to tell the control plane\n")?,
    }
    remove_if_present(&config_path)?;
    if let Some(dir) = config_path.parent() {
        // Only an empty folder goes: it may hold other files of the operator's.
        let _ = std::fs::remove_dir(dir);
    }
    write_stdout(&format!("  ✓ removed {}\n", config_path.display()))?;
    for dir in std::iter::once(&state_dir).chain(jobs_dir.as_ref()) {
        if args.keep_state {
            write_stdout(&format!("  ✓ kept {} (--keep-state)\n", dir.display()))?;
        } else if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            write_stdout(&format!("  ✓ removed {}\n", dir.display()))?;
        }
    }
    if let Some(user) = job_user {
        write_stdout(&format!(
            "  ! left the account {user} that jobs ran as (files of theirs outside the runner's \
             folders may still belong to it); remove it with `userdel {user}` when nothing \
             needs it\n"
        ))?;
    }
    write_stdout("Uninstalled.\n")?;
    Ok(0)
}

fn tell_the_api(mut settings: RunSettings, within: Duration) -> anyhow::Result<()> {
    // Only the endpoint and the identity matter here: not the jobs' account, which may
    // be gone already.
    settings.job_user = None;
    settings.jobs_dir = None;
    let resolved = crate::config::resolve(settings, None)?;
    let settings = crate::runtime::RunnerSettings::from_config(resolved);
    let outcome = block_on(async move {
        match crate::runtime::leave::leave(&settings, within).await {
            Ok(id) => Ok(format!("  ✓ the control plane forgot runner {id}\n")),
            Err(e) => Ok(format!(
                "  ! could not tell the control plane ({e}); it will count the runner as lost\n"
            )),
        }
        .map(|line| {
            let _ = write_stdout(&line);
            0
        })
    });
    outcome.map(|_| ())
}

// ---------------------------------------------------------------- service

pub fn service(action: ServiceAction, config: Option<&Path>) -> anyhow::Result<i32> {
    match action {
        ServiceAction::Render {
            manager,
            scope,
            config_path,
            state_dir,
            drain_deadline,
            user,
            binary,
        } => {
            let manager = manager
                .or_else(crate::service::detect)
                .unwrap_or(Manager::Systemd);
            // A Windows service is machine-wide whoever renders it.
            let scope = match (scope, manager) {
                (None, Manager::Windows) => Scope::System,
                (scope, _) => scope_or_default(scope),
            };
            let config_path = absolute(
                config_path
                    .or(config.map(Path::to_path_buf))
                    .unwrap_or_else(|| config_path_for(scope, None)),
            )?;
            let state_dir = absolute(state_dir.unwrap_or_else(|| state_dir_for(scope)))?;
            let binary = binary.unwrap_or_else(|| {
                std::env::current_exe()
                    .unwrap_or_else(|_| PathBuf::from("/usr/local/bin/fyn-runner"))
            });
            let mut spec = ServiceSpec::new(binary, config_path, state_dir, scope, drain_deadline);
            spec.user = user;
            spec.validate()?;
            let text =
                crate::service::render_for(manager, &spec, &crate::service::Host::current())?;
            write_stdout(&text)?;
            Ok(0)
        }
        ServiceAction::Start(s) => control(s.scope, |m| m.start().map(|()| "started".to_owned())),
        ServiceAction::Stop(s) => control(s.scope, |m| m.stop().map(|()| "stopped".to_owned())),
        ServiceAction::Restart(s) => {
            control(s.scope, |m| m.restart().map(|()| "restarted".to_owned()))
        }
        ServiceAction::Status(s) => control(s.scope, |m| {
            m.status().map(|status| describe_service(&status))
        }),
    }
}

fn control(
    scope: Option<Scope>,
    act: impl FnOnce(&dyn ServiceManager) -> Result<String, crate::service::ServiceError>,
) -> anyhow::Result<i32> {
    let manager = crate::service::detect_or_explain()?;
    let service = crate::service::manager_for(manager, scope_or_default(scope))?;
    let said = act(service.as_ref())?;
    write_stdout(&format!("{said}\n"))?;
    Ok(0)
}

pub fn describe_service(status: &crate::service::ServiceStatus) -> String {
    let mut parts = vec![format!("service: {:?}", status.state)];
    if !status.installed {
        parts.push("not installed".into());
    }
    if let Some(pid) = status.pid {
        parts.push(format!("pid {pid}"));
    }
    if let Some(enabled) = status.enabled {
        parts.push(if enabled {
            "starts at boot".into()
        } else {
            "does not start at boot".into()
        });
    }
    if let Some(code) = status.last_exit {
        parts.push(format!("last exit {code}"));
    }
    if let Some(detail) = &status.detail {
        parts.push(detail.clone());
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::install_step_line;

    #[test]
    fn a_failed_step_is_never_shown_as_done() {
        let done = install_step_line("Installing.install_service", "StepDone");
        assert_eq!(
            done.as_deref(),
            Some("  ✓ service installed and started (or skipped with --no-service)")
        );
        let failed = install_step_line("Installing.install_service", "StepFailed");
        assert_eq!(failed.as_deref(), Some("  ✗ installing the service failed"));
        let saved = install_step_line("Registering.saving", "StepDone");
        assert_eq!(
            saved.as_deref(),
            Some("  ✓ registered with the control plane")
        );
        assert_eq!(
            install_step_line("Registering.await_token", "TokenRejected"),
            None
        );
    }
}
