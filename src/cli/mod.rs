/*!
The command line: clap definitions and the thin glue from a subcommand to the library.

Owns: flags, `--help` text, exit codes of the CLI itself, and turning library errors
into messages (`anyhow` lives here and nowhere else).

Must not touch: lifecycle decisions (those are `core`'s) or protocol details.
*/

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{GlobalSettings, RunSettings, Secret, TokenSource};
use crate::spec;

pub mod admin;
pub mod ctl;
mod generate;
pub mod job;
mod logging;
mod service_main;
mod status_view;

use logging::{init_file_logging, init_logging};
use status_view::render_status;

#[derive(Debug, Parser)]
#[command(
    propagate_version = true,
    name = "fyn-runner",
    version,
    about = "Joins this machine to a job control plane and runs the jobs it is handed.",
    long_about = "fyn-runner keeps an authenticated WebSocket session with a control plane, \
                  reports this machine's hardware, and runs jobs as local processes. Its \
                  lifecycle is an explicit state machine held to the table in fsm-spec/."
)]
pub struct Cli {
    /// The config file [default: /etc/fyn-runner/config.toml as root, else
    /// $XDG_CONFIG_HOME/fyn-runner/config.toml, when it exists]. Flags and FYN_RUNNER_*
    /// variables override what it says.
    #[arg(long, global = true, env = "FYN_RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub global: GlobalSettings,
    #[command(subcommand)]
    pub command: Verb,
}

/// How to reach the control plane and where to keep local state: every setting (see
/// `crate::config`), the one-time token, and `--print-config`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub settings: RunSettings,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Print the settings `run` would use — after flags, environment and the config
    /// file — and exit without connecting.
    #[arg(long)]
    pub print_config: bool,
}

/// The one-time registration token: not a setting, never written to disk.
#[derive(Debug, Default, clap::Args)]
pub struct TokenArgs {
    /// One-time registration token, needed only while this runner has no identity; `-`
    /// reads it from standard input. A value given here is visible to every local user
    /// (in /proc/<pid>/cmdline) while the runner runs: prefer --token-file or --token -.
    #[arg(long, env = "FYN_RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the one-time registration token (its first line). Wins over
    /// --token.
    #[arg(long, env = "FYN_RUNNER_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    pub fn is_given(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// Read the token from where it was given. `matches` tells whether a value came
    /// from the command line, where every local user can read it: that gets a warning.
    pub fn read(&self, matches: &clap::ArgMatches) -> anyhow::Result<Option<Secret>> {
        let Some(source) = TokenSource::from_flags(self.token.clone(), self.token_file.clone())
        else {
            return Ok(None);
        };
        let on_command_line = matches!(source, TokenSource::Value(_))
            && matches.try_get_raw("token").is_ok()
            && matches.value_source("token") == Some(clap::parser::ValueSource::CommandLine);
        if on_command_line {
            tracing::warn!(
                "the token was given on the command line, where every local user can read it \
                 while this process runs; prefer --token-file PATH or --token - (standard input)"
            );
        }
        let mut stdin = std::io::stdin().lock();
        Ok(Some(crate::config::read_token(&source, &mut stdin)?))
    }
}

/// The word after `fyn-runner`: what the user asks for. (Not `Command`: that is what a
/// control plane sends, `protocol::Command`.)
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Run the runner: register when needed, connect, sync, take jobs until stopped.
    ///
    /// SIGTERM or SIGINT stops it at once and leaves running jobs to their supervisors,
    /// which keep them running; the next start reattaches them (Unix; on Windows a stop
    /// drains). `fyn-runner drain` ends jobs first. A signal during a drain forces it.
    ///
    /// Exit codes: 0 stopped cleanly; 1 store failure or bad setup; 2 forced stop;
    /// 3 registration failed; 4 evicted by a newer session; 5 identity rejected;
    /// 6 incompatible protocol.
    Run(RunArgs),
    /// Show what the running runner is doing (through its local control socket).
    ///
    /// Exit codes: 0 a runner is running; 3 no runner is running for this state
    /// directory; 1 the socket could not be used.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        /// The running runner's state directory.
        #[arg(long, env = "FYN_RUNNER_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Ask the running runner to drain: take no new jobs, let running ones finish (up to
    /// the deadline), deliver their results, then stop. (A stop by SIGTERM, as a service
    /// manager sends, leaves running jobs to their supervisors instead.)
    Drain {
        /// Seconds running jobs may take before they are cancelled, 0 to 2592000 (30
        /// days) [default: the runner's --drain-deadline].
        #[arg(long, value_parser = crate::config::value::arg_parser(crate::config::value::drain_deadline))]
        deadline: Option<u64>,
        /// Cancel running jobs now instead of waiting for them.
        #[arg(long)]
        force: bool,
        /// Wait until the runner has stopped, showing progress.
        #[arg(long)]
        wait: bool,
        /// The running runner's state directory.
        #[arg(long, env = "FYN_RUNNER_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Replay a recorded session trace against this build's lifecycle machine, step
    /// by step; stops at the first step where state or effects differ.
    ///
    /// Exit codes: 0 the trace replays exactly; 1 it diverges (both sides are shown);
    /// 2 the trace cannot be read (the message names the line).
    Replay {
        /// The trace file (`<state-dir>/traces/trace-*.jsonl`; the first part of a
        /// rotated chain).
        trace: PathBuf,
        /// Print steps from this sequence number on (the machine still runs from the
        /// start).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this sequence number.
        #[arg(long)]
        until: Option<u64>,
        /// Print each step's recorded event and effects in full.
        #[arg(long)]
        verbose: bool,
        /// Draw the session as a timeline: states as bands, reconnects, missed
        /// heartbeats, jobs per slot.
        #[arg(long)]
        timeline: bool,
        /// Write the timeline as an SVG picture to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Columns of the text timeline.
        #[arg(long, default_value_t = 100)]
        width: usize,
    },
    /// Install the runner on this machine: create its folders, write its config,
    /// register with a one-time token, and install and start the OS service. Every step
    /// is reported; a failure rolls back everything the install created.
    Install(Box<admin::InstallArgs>),
    /// Remove the runner: drain it (running jobs end within its drain deadline), stop
    /// and remove the service, end jobs a stopped runner left running, tell the control
    /// plane it is leaving, remove its config and state.
    Uninstall(admin::UninstallArgs),
    /// The OS service: render its definition, or start/stop/restart/show it.
    #[command(subcommand)]
    Service(admin::ServiceAction),
    /// Run the reference control plane (a development tool, not a production API).
    DevServer(crate::devserver::DevServerArgs),
    /// Use the dev-server's admin API: runners, tokens, jobs, their output.
    Ctl(ctl::CtlArgs),
    /// For jobs: report progress and read or write key-value pairs through the runner
    /// that runs the job (`fyn-runner job progress 0.42 "iteration 420"`,
    /// `fyn-runner job kv put KEY VALUE`, `fyn-runner job kv get KEY`).
    Job(job::JobArgs),
    /// The whole lifecycle in one process against an embedded dev-server: register,
    /// sync, Active, a dev-server restart (reconnect and resync), four jobs (succeeded,
    /// failed, cancelled, timed out), a clean stop, and where to replay its trace.
    Demo,
    /// Render the lifecycle spec table (the source of truth for the state machine).
    Spec {
        /// table: the rows; mermaid/dot: state diagrams; json: the parsed table;
        /// markdown: docs/lifecycle.md as generated from the table.
        #[arg(long, value_enum, default_value_t = SpecFormat::Table)]
        format: SpecFormat,
    },
    /// The Windows service's entry point, started by the service control manager.
    #[command(name = "service-main", hide = true)]
    ServiceMain(ServiceMainArgs),
    /// Print shell completions (for packages: `fyn-runner completions bash`).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one per subcommand into a folder (for packages).
    #[command(hide = true)]
    Man {
        /// Write fyn-runner.1 and fyn-runner-<command>.1 here instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print the hardware inventory this runner would report to the control plane.
    Hardware {
        /// Print the report as JSON, exactly as it is sent.
        #[arg(long)]
        json: bool,
        /// The folder whose disk is reported as the job area.
        #[arg(long, default_value = ".")]
        job_area: PathBuf,
    },
}

/// `service-main`: the runner's settings, and where its log goes (a service has no
/// console).
#[derive(Debug, clap::Args)]
pub struct ServiceMainArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Append the log to this file [default: standard error].
    #[arg(long)]
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpecFormat {
    Table,
    Mermaid,
    Dot,
    Json,
    Markdown,
}

/// An error as the operator reads it: each cause once. The library's errors name their
/// cause in their own message (so a log line with one `%error` is whole) and also
/// give it as their `source()`, and `anyhow`'s `{:#}` would print it again after a
/// colon — `Permission denied (os error 13): Permission denied (os error 13)`. Here a
/// cause already said is left out.
pub fn describe_error(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

/// Run the parsed command; the returned code becomes the process exit status.
pub fn run(mut cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<i32> {
    // The demo narrates on stdout; its logs stay quiet unless RUST_LOG asks.
    let default_filter = if matches!(cli.command, Verb::Demo | Verb::Ctl(_) | Verb::Job(_)) {
        "warn"
    } else {
        "info"
    };
    // `run` and the service read the config file before logging starts: it may say
    // how to log. (A file that cannot be read is reported once logging is up.)
    let sub = matches.subcommand().map_or(matches, |(_, sub)| sub);
    let file = match &cli.command {
        Verb::Run(_) | Verb::ServiceMain(_) => crate::config::load_chosen(cli.config.as_deref()),
        _ => Ok(None),
    };
    if let Ok(Some(file)) = &file {
        cli.global.apply_file(sub, file);
    }
    let log_format = cli.global.log_format;
    // A service has no console: what goes wrong before it runs must still reach the
    // service manager (as its exit code) rather than a stderr nobody reads.
    let mut logging_failed = None;
    match &cli.command {
        Verb::ServiceMain(ServiceMainArgs {
            log_file: Some(file),
            ..
        }) => {
            if let Err(error) = init_file_logging(log_format, default_filter, file) {
                init_logging(log_format, default_filter);
                logging_failed = Some(error);
            }
        }
        _ => init_logging(log_format, default_filter),
    }
    match cli.command {
        Verb::Run(mut args) => {
            if let Some(file) = file? {
                args.settings.apply_file(sub, &file);
            }
            if args.print_config {
                crate::config::check(&args.settings)?;
                let mut shown = args.settings.clone();
                shown.state_dir = Some(shown.state_dir.unwrap_or_else(default_state_dir));
                let mut file = crate::config::FileConfig::default();
                shown.write_into(&mut file);
                cli.global.write_into(&mut file);
                write_stdout(&crate::config::render(&file)?)?;
                return Ok(0);
            }
            run_runner(resolve_run(&args, sub)?)
        }
        Verb::ServiceMain(mut args) => {
            let prepared = match (logging_failed, file) {
                (Some(error), _) => Err(error),
                (None, Err(error)) => Err(error.into()),
                (None, Ok(file)) => {
                    if let Some(file) = file {
                        args.run.settings.apply_file(sub, &file);
                    }
                    resolve_run(&args.run, sub)
                }
            };
            service_main::run(args.run.settings.drain_deadline, prepared)
        }
        Verb::Install(args) => admin::install(*args, sub),
        Verb::Uninstall(args) => admin::uninstall(args, cli.config.as_deref()),
        Verb::Service(action) => admin::service(action, cli.config.as_deref()),
        Verb::DevServer(args) => {
            block_on(async move { crate::devserver::run(args).await.map(|()| 0) })
        }
        Verb::Demo => block_on(crate::demo::run()),
        Verb::Ctl(args) => ctl::run(args),
        Verb::Job(args) => job::run(args),
        Verb::Replay {
            trace,
            from,
            until,
            verbose,
            timeline,
            svg,
            width,
        } => {
            let mut options = crate::trace::ReplayOptions::new(trace);
            options.from = from;
            options.until = until;
            options.verbose = verbose;
            options.timeline = timeline;
            options.svg = svg;
            options.width = width;
            let mut out = std::io::stdout().lock();
            match crate::trace::run_replay_command(&options, &mut out) {
                Ok(code) => Ok(code),
                Err(error) => {
                    drop(out);
                    eprintln!("fyn-runner: {error}");
                    Ok(2)
                }
            }
        }
        Verb::Status { json, state_dir } => {
            let state_dir = resolve_state_dir(state_dir, cli.config.as_deref())?;
            block_on(async move { show_status(&state_dir, json).await })
        }
        Verb::Drain {
            deadline,
            force,
            wait,
            state_dir,
        } => {
            let state_dir = resolve_state_dir(state_dir, cli.config.as_deref())?;
            block_on(async move { drain(&state_dir, deadline, force, wait, false).await })
        }
        Verb::Spec { format } => print_spec(format),
        Verb::Hardware { json, job_area } => print_hardware(json, &job_area),
        Verb::Completions { shell } => generate::completions(shell),
        Verb::Man { out_dir } => generate::man(out_dir.as_deref()),
    }
}

fn print_spec(format: SpecFormat) -> anyhow::Result<i32> {
    let table = spec::embedded().context("the embedded fsm-spec table does not parse")?;
    let text = match format {
        SpecFormat::Table => spec::render_table(&table),
        SpecFormat::Mermaid => spec::render_mermaid(&table),
        SpecFormat::Dot => spec::render_dot(&table),
        SpecFormat::Json => spec::render_json(&table) + "\n",
        SpecFormat::Markdown => spec::render_lifecycle_doc(&table),
    };
    write_stdout(&text)?;
    Ok(0)
}

fn print_hardware(json: bool, job_area: &std::path::Path) -> anyhow::Result<i32> {
    let report =
        crate::hardware::collect(job_area).context("collecting the hardware inventory failed")?;
    let text = if json {
        serde_json::to_string_pretty(&report).context("encoding the report")? + "\n"
    } else {
        crate::hardware::render_text(&report)
    };
    write_stdout(&text)?;
    Ok(0)
}

/// Write to stdout, treating a closed pipe (`| head`) as a normal end, not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// The state directory when none is given: the system location for root, the XDG
/// state directory for everyone else.
pub fn default_state_dir() -> PathBuf {
    default_state_dir_for(is_root())
}

/// The system location, or this user's (see `config::default_state_dir`).
pub fn default_state_dir_for(system: bool) -> PathBuf {
    crate::config::default_state_dir(system)
}

/// The settings `run` starts with: the merged settings resolved against the system
/// (`crate::config::resolve`), and the token read from where it was given.
pub fn resolve_run(
    args: &RunArgs,
    matches: &clap::ArgMatches,
) -> anyhow::Result<crate::runtime::RunnerSettings> {
    let token = args.token.read(matches)?;
    let resolved = crate::config::resolve(args.settings.clone(), token)?;
    if resolved.job_account.is_none() && resolved.settings.job_user.is_none() && is_root() {
        tracing::warn!(
            "jobs run as root: every job can read this runner's key and store. Set job_user \
             (install creates fyn-runner-job) to run them as an unprivileged account"
        );
    }
    Ok(crate::runtime::RunnerSettings::from_config(resolved))
}

fn block_on<F: std::future::Future<Output = anyhow::Result<i32>>>(
    future: F,
) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(future)
}

fn run_runner(settings: crate::runtime::RunnerSettings) -> anyhow::Result<i32> {
    // One thread is plenty for a runner: it waits on a socket, timers and pipes; the
    // blocking work (hardware probes, SQLite) is short. It also keeps memory small.
    if let Err(error) = crate::platform::prefer_short_slices() {
        tracing::debug!(%error, "cannot ask for short scheduler slices; the default is kept");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let handle = crate::runtime::start(settings)?;
        crate::runtime::signals::forward_signals(handle.control())
            .context("installing signal handlers")?;
        Ok(handle.wait().await.code())
    })
}

async fn show_status(state_dir: &std::path::Path, json: bool) -> anyhow::Result<i32> {
    use crate::runtime::control::{ControlError, ControlRequest, ControlResponse, request};
    let status = match request(state_dir, &ControlRequest::Status).await {
        Ok(ControlResponse::Status { status }) => status,
        Ok(other) => anyhow::bail!("unexpected answer from the runner: {other:?}"),
        Err(ControlError::NotRunning { state_dir, .. }) => {
            let service = service_view();
            if json {
                let view = serde_json::json!({"running": false, "state_dir": state_dir, "service": service});
                write_stdout(&format!("{view}\n"))?;
            } else {
                write_stdout(&format!(
                    "fyn-runner: not running (state directory {state_dir})\n"
                ))?;
                write_stdout(&format!(
                    "{}\n",
                    service.unwrap_or_else(|| "no service manager here".into())
                ))?;
            }
            return Ok(3);
        }
        Err(e) => return Err(e.into()),
    };
    let text = if json {
        serde_json::to_string_pretty(&status).context("encoding the status")? + "\n"
    } else {
        render_status(&status)
    };
    write_stdout(&text)?;
    Ok(0)
}

/// Ask the runner of `state_dir` to drain (`uninstall`: for `fyn-runner uninstall`,
/// which the runner tells the API), and with `wait` follow it until it has stopped.
pub(super) async fn drain(
    state_dir: &std::path::Path,
    deadline: Option<u64>,
    force: bool,
    wait: bool,
    uninstall: bool,
) -> anyhow::Result<i32> {
    use crate::runtime::control::{ControlError, ControlRequest, ControlResponse, request};
    match request(
        state_dir,
        &ControlRequest::Drain {
            deadline_secs: deadline,
            force,
            uninstall,
        },
    )
    .await?
    {
        ControlResponse::Draining { status } => {
            let what = if force {
                "stopping now (running jobs are cancelled)"
            } else {
                "draining"
            };
            write_stdout(&format!(
                "fyn-runner: {what}; {} job(s) running\n",
                status.jobs_running
            ))?;
        }
        other => anyhow::bail!("unexpected answer from the runner: {other:?}"),
    }
    if !wait {
        return Ok(0);
    }
    let mut hiccups = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        match request(state_dir, &ControlRequest::Status).await {
            Ok(ControlResponse::Status { status }) => {
                hiccups = 0;
                write_stdout(&format!(
                    "  {}: {} job(s) left, {} event(s) undelivered\n",
                    status.phase, status.jobs_running, status.outbox_depth
                ))?;
            }
            Err(ControlError::NotRunning { .. }) => {
                write_stdout("fyn-runner: stopped\n")?;
                return Ok(0);
            }
            Ok(other) => anyhow::bail!("unexpected answer from the runner: {other:?}"),
            // The runner closes its socket as it exits; a request caught in between is
            // cut off. Ask again before calling it an error.
            Err(e) if hiccups < 10 => {
                hiccups += 1;
                tracing::debug!(error = %e, "control socket hiccup while waiting");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether this process runs as root, or elevated on Windows (system paths and the
/// system service).
pub fn is_root() -> bool {
    crate::platform::is_privileged()
}

/// The state directory a command talks to: the flag, else the config file's, else the
/// default for this user.
fn resolve_state_dir(
    explicit: Option<PathBuf>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    let file = crate::config::load_chosen(config)?;
    Ok(file
        .and_then(|f| f.state_dir)
        .unwrap_or_else(default_state_dir))
}

/// What the service manager says about the runner's service, when there is one.
fn service_view() -> Option<String> {
    let manager = crate::service::detect()?;
    let scope = if is_root() {
        crate::service::Scope::System
    } else {
        crate::service::Scope::User
    };
    let status = crate::service::manager_for(manager, scope)
        .ok()?
        .status()
        .ok()?;
    Some(admin::describe_service(&status))
}

#[cfg(test)]
mod tests {
    use super::describe_error;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot create {path}: {source}")]
    struct Create {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_named_once() {
        let io = std::io::Error::from_raw_os_error(13);
        let error = anyhow::Error::from(Create {
            path: "/x",
            source: io,
        })
        .context("cannot create the state directory /x");
        let text = describe_error(&error);
        assert_eq!(text.matches("os error 13").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot create the state directory /x: cannot create /x: "),
            "{text}"
        );
    }
}
