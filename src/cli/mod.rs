/*!
The command line: clap definitions and the thin glue from a subcommand to the library.

Owns: flags, `--help` text, exit codes of the CLI itself, and turning library errors
into messages (`anyhow` lives here and nowhere else).

Must not touch: lifecycle decisions (those are `core`'s) or protocol details.
*/

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::spec;

pub mod admin;
pub mod ctl;
mod service_main;

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
    /// Log format: readable lines, or JSON for journald and log pipelines. The usual
    /// RUST_LOG filter applies (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FYN_RUNNER_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How to reach the control plane and where to keep local state.
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// The control plane, e.g. wss://api.example.com (the runner path /runner/v1 is
    /// added when the URL has no path).
    #[arg(long, env = "FYN_RUNNER_SERVER")]
    pub server: Option<String>,
    /// One-time registration token, needed only while this runner has no identity.
    /// It is used once and never written to disk.
    #[arg(long, env = "FYN_RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the identity, the outbox and the job area live.
    #[arg(long, env = "FYN_RUNNER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The name the control plane shows for this runner [default: the host name].
    #[arg(long, env = "FYN_RUNNER_NAME")]
    pub name: Option<String>,
    /// How many jobs may run at once.
    #[arg(long, env = "FYN_RUNNER_SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub slots: u32,
    /// PEM file of the CA that signed the control plane's certificate; it replaces the
    /// public web roots.
    #[arg(long, env = "FYN_RUNNER_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow plain ws:// to a host that is not loopback. Tokens and job output then
    /// cross the network unencrypted.
    #[arg(long, env = "FYN_RUNNER_ALLOW_INSECURE_TRANSPORT")]
    pub allow_insecure_transport: bool,
    /// Seconds running jobs get to finish after a stop is requested.
    #[arg(long, env = "FYN_RUNNER_DRAIN_DEADLINE", default_value_t = 120)]
    pub drain_deadline: u64,
    /// How often, in seconds, the hardware is re-checked while Active; changes are
    /// sent as events.
    #[arg(long, env = "FYN_RUNNER_HARDWARE_RECHECK", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub hardware_recheck: u64,
    /// Hours an ended job's folder (its output logs and work/) is kept before it is
    /// removed; 0 removes it as soon as the job ends. Folders left by an earlier run are
    /// judged by when their job last wrote output or ended.
    #[arg(long, env = "FYN_RUNNER_JOB_RETENTION_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u64).range(0..=crate::config::MAX_JOB_RETENTION_HOURS))]
    pub job_retention_hours: u64,
    /// Size in bytes at which the session trace (<state-dir>/traces) rotates.
    #[arg(long, env = "FYN_RUNNER_TRACE_MAX_BYTES", default_value_t = 64 << 20)]
    pub trace_max_bytes: u64,
    /// How many trace files to keep.
    #[arg(long, env = "FYN_RUNNER_TRACE_KEEP", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub trace_keep: u64,
    /// Do not record a session trace.
    #[arg(long, env = "FYN_RUNNER_NO_TRACE")]
    pub no_trace: bool,
    /// Print the settings `run` would use — after flags, environment and the config
    /// file — and exit without connecting.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the runner: register when needed, connect, sync, take jobs until stopped.
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
    /// the deadline), deliver their results, then stop.
    Drain {
        /// Seconds running jobs may take before they are cancelled [default: the
        /// runner's --drain-deadline].
        #[arg(long)]
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
    /// Remove the runner: stop and remove the service (the runner drains), tell the
    /// control plane it is leaving, remove its config and state.
    Uninstall(admin::UninstallArgs),
    /// The OS service: render its definition, or start/stop/restart/show it.
    #[command(subcommand)]
    Service(admin::ServiceAction),
    /// Run the reference control plane (a development tool, not a production API).
    DevServer(crate::devserver::DevServerArgs),
    /// Use the dev-server's admin API: runners, tokens, jobs, their output.
    Ctl(ctl::CtlArgs),
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

/// Run the parsed command; the returned code becomes the process exit status.
pub fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<i32> {
    // The demo narrates on stdout; its logs stay quiet unless RUST_LOG asks.
    let default_filter = if matches!(cli.command, Command::Demo | Command::Ctl(_)) {
        "warn"
    } else {
        "info"
    };
    // A service has no console: what goes wrong before it runs must still reach the
    // service manager (as its exit code) rather than a stderr nobody reads.
    let mut logging_failed = None;
    match &cli.command {
        Command::ServiceMain(ServiceMainArgs {
            log_file: Some(file),
            ..
        }) => {
            if let Err(error) = init_file_logging(cli.log_format, default_filter, file) {
                init_logging(cli.log_format, default_filter);
                logging_failed = Some(error);
            }
        }
        _ => init_logging(cli.log_format, default_filter),
    }
    match cli.command {
        Command::Run(mut args) => {
            let sub = matches.subcommand_matches("run").unwrap_or(matches);
            apply_config_file(&mut args, sub, cli.config.as_deref())?;
            if args.print_config {
                let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
                let text = crate::config::render(&admin::file_config(&args, &state_dir))?;
                write_stdout(&text)?;
                return Ok(0);
            }
            run_runner(args)
        }
        Command::ServiceMain(mut args) => {
            let sub = matches
                .subcommand_matches("service-main")
                .unwrap_or(matches);
            let prepared = match logging_failed {
                Some(error) => Err(error),
                None => apply_config_file(&mut args.run, sub, cli.config.as_deref())
                    .and_then(|()| settings_from(&args.run)),
            };
            service_main::run(&args.run, prepared)
        }
        Command::Install(args) => admin::install(*args),
        Command::Uninstall(args) => admin::uninstall(args, cli.config.as_deref()),
        Command::Service(action) => admin::service(action, cli.config.as_deref()),
        Command::DevServer(args) => {
            block_on(async move { crate::devserver::run(args).await.map(|()| 0) })
        }
        Command::Demo => block_on(crate::demo::run()),
        Command::Ctl(args) => ctl::run(args),
        Command::Replay {
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
        Command::Status { json, state_dir } => {
            let state_dir = resolve_state_dir(state_dir, cli.config.as_deref())?;
            block_on(async move { show_status(&state_dir, json).await })
        }
        Command::Drain {
            deadline,
            force,
            wait,
            state_dir,
        } => {
            let state_dir = resolve_state_dir(state_dir, cli.config.as_deref())?;
            block_on(async move { drain(&state_dir, deadline, force, wait).await })
        }
        Command::Spec { format } => print_spec(format),
        Command::Hardware { json, job_area } => print_hardware(json, &job_area),
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

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests calling in) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Log to `file` (appending, created with its folder): for the Windows service, which
/// has no console.
fn init_file_logging(
    format: LogFormat,
    default_filter: &str,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    use crate::platform::{self, Access};
    if let Some(folder) = file.parent().filter(|f| !f.as_os_str().is_empty()) {
        platform::create_dir_all(folder, Access::Readable)
            .with_context(|| format!("creating the log folder {}", folder.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("opening the log file {}", file.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
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

pub fn settings_from(args: &RunArgs) -> anyhow::Result<crate::runtime::RunnerSettings> {
    let server = args
        .server
        .as_deref()
        .context("no control plane given: pass --server, set FYN_RUNNER_SERVER, or put `server` in the config file")?;
    let endpoint = crate::runtime::settings::endpoint(server, args.allow_insecure_transport)?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => sysinfo::System::host_name().unwrap_or_else(|_| "fyn-runner".to_owned()),
    };
    let core = crate::core::CoreConfig {
        slots: args.slots,
        drain_deadline_secs: args.drain_deadline,
        hardware_recheck_ms: args.hardware_recheck.saturating_mul(1000),
        ..crate::core::CoreConfig::default()
    };
    Ok(crate::runtime::RunnerSettings {
        endpoint,
        state_dir: args.state_dir.clone().unwrap_or_else(default_state_dir),
        token: args.token.clone().map(crate::runtime::Secret::new),
        name,
        ca_file: args.ca_file.clone(),
        core,
        backoff_min: std::time::Duration::from_millis(500),
        backoff_max: std::time::Duration::from_secs(60),
        connect_timeout: std::time::Duration::from_secs(15),
        hardware: crate::runtime::HardwareSource::System,
        job_retention: std::time::Duration::from_secs(
            args.job_retention_hours.saturating_mul(3600),
        ),
        trace: (!args.no_trace).then_some(crate::runtime::TraceLimits {
            max_bytes: args.trace_max_bytes,
            keep: usize::try_from(args.trace_keep).unwrap_or(8),
        }),
        // Set by systemd for Type=notify units; read once, here, at the edge.
        notify_socket: std::env::var("NOTIFY_SOCKET").ok(),
    })
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

fn run_runner(args: RunArgs) -> anyhow::Result<i32> {
    let settings = settings_from(&args)?;
    // One thread is plenty for a runner: it waits on a socket, timers and pipes; the
    // blocking work (hardware probes, SQLite) is short. It also keeps memory small.
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
    use crate::runtime::control::{ControlError, Request, Response, request};
    let status = match request(state_dir, &Request::Status).await {
        Ok(Response::Status { status }) => status,
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

fn render_status(status: &crate::runtime::RunnerStatus) -> String {
    let now = crate::runtime::status::unix_ms();
    let ago = |ms: u64| format_duration(now.saturating_sub(ms));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "state:          {} ({}), for {}",
        status.state,
        status.phase,
        ago(status.state_since_ms)
    );
    let _ = writeln!(out, "server:         {}", status.server);
    let _ = writeln!(
        out,
        "runner id:      {}",
        status.runner_id.as_deref().unwrap_or("(not registered)")
    );
    let _ = writeln!(out, "pid:            {}", status.pid);
    let session = status
        .session_since_ms
        .map_or("no active session".to_owned(), ago);
    let _ = writeln!(out, "session uptime: {session}");
    let heartbeat = status
        .last_heartbeat_ack_ms
        .map_or("none yet".to_owned(), |ms| format!("{} ago", ago(ms)));
    let _ = writeln!(out, "last heartbeat: {heartbeat}");
    let _ = writeln!(
        out,
        "slots:          {} of {} in use",
        status.jobs_running, status.slots
    );
    if !status.jobs.is_empty() {
        let _ = writeln!(out, "running jobs:   {}", status.jobs.join(", "));
    }
    let _ = writeln!(
        out,
        "outbox:         {} event(s) awaiting acknowledgement",
        status.outbox_depth
    );
    if let Some(deadline) = status.drain_deadline_secs {
        let elapsed = now.saturating_sub(status.state_since_ms) / 1000;
        let left = deadline.saturating_sub(elapsed);
        let _ = writeln!(
            out,
            "draining:       {} job(s) left; running jobs are cancelled in {left} s (deadline {deadline} s)",
            status.jobs_running
        );
    }
    out
}

fn format_duration(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

async fn drain(
    state_dir: &std::path::Path,
    deadline: Option<u64>,
    force: bool,
    wait: bool,
) -> anyhow::Result<i32> {
    use crate::runtime::control::{ControlError, Request, Response, request};
    match request(
        state_dir,
        &Request::Drain {
            deadline_secs: deadline,
            force,
        },
    )
    .await?
    {
        Response::Draining { status } => {
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
        match request(state_dir, &Request::Status).await {
            Ok(Response::Status { status }) => {
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

/// Fill in from the config file what neither a flag nor the environment gave:
/// precedence flags > env > file > defaults. An explicit `--config` must exist; the
/// default one may be absent.
pub fn apply_config_file(
    args: &mut RunArgs,
    matches: &clap::ArgMatches,
    explicit: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use crate::config::apply_file;
    let file = match explicit {
        Some(path) => Some(crate::config::load_required(path)?),
        None => crate::config::load(&default_config_path())?,
    };
    let Some(file) = file else { return Ok(()) };
    apply_file(matches, "server", &mut args.server, file.server);
    apply_file(matches, "name", &mut args.name, file.name);
    apply_file(matches, "slots", &mut args.slots, file.slots);
    apply_file(matches, "state_dir", &mut args.state_dir, file.state_dir);
    apply_file(matches, "ca_file", &mut args.ca_file, file.ca_file);
    apply_file(
        matches,
        "allow_insecure_transport",
        &mut args.allow_insecure_transport,
        file.allow_insecure_transport,
    );
    apply_file(
        matches,
        "drain_deadline",
        &mut args.drain_deadline,
        file.drain_deadline,
    );
    apply_file(
        matches,
        "hardware_recheck",
        &mut args.hardware_recheck,
        file.hardware_recheck,
    );
    apply_file(
        matches,
        "job_retention_hours",
        &mut args.job_retention_hours,
        file.job_retention_hours,
    );
    apply_file(
        matches,
        "trace_max_bytes",
        &mut args.trace_max_bytes,
        file.trace_max_bytes,
    );
    apply_file(matches, "trace_keep", &mut args.trace_keep, file.trace_keep);
    apply_file(matches, "no_trace", &mut args.no_trace, file.no_trace);
    Ok(())
}

/// Whether this process runs as root, or elevated on Windows (system paths and the
/// system service).
pub fn is_root() -> bool {
    crate::platform::is_privileged()
}

pub fn default_config_path() -> PathBuf {
    crate::config::default_config_path(is_root())
}

impl RunArgs {
    /// Every setting at its default, for commands that read them from the config file.
    pub fn empty() -> Self {
        Self {
            slots: 1,
            drain_deadline: 120,
            hardware_recheck: 600,
            job_retention_hours: 168,
            trace_max_bytes: 64 << 20,
            trace_keep: 8,
            ..Self::default()
        }
    }
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
    let file = match config {
        Some(path) => Some(crate::config::load_required(path)?),
        None => crate::config::load(&default_config_path())?,
    };
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
