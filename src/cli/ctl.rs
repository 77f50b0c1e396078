//! `fyn-runner ctl`: the clap definitions, and the glue from them to `crate::ctl`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::ctl::{self, Client, CtlError, Format, Streams, Submission};
use crate::protocol::OutputStream;

const EXIT_CODES: &str = "\
Exit codes: 0 done; 1 the API refused or failed (bad request, conflict, server error);
2 bad usage; 3 no such job or runner; 4 not authorized (no or wrong admin token, Host or
Origin refused); 5 the server cannot be reached.

`submit --wait` exits with the job's code instead: its exit code; 128+N if signal N
killed it; 122 cancelled; 123 lost with its runner; 124 timed out; 125 ctl itself
failed; 126 the job never ran a process (refused by the runner, or could not start).";

/// Talk to the dev-server's admin API: runners, tokens, jobs and their output.
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES)]
pub struct CtlArgs {
    /// The dev-server's admin URL (the `admin-url:` it prints); a `ws://` runner URL
    /// works too.
    #[arg(long, global = true, env = "FYN_RUNNER_ADMIN_URL", default_value = ctl::DEFAULT_SERVER)]
    pub server: String,
    /// File holding the admin token [default: the one the dev-server writes for this
    /// port, $XDG_RUNTIME_DIR/fyn-runner-dev-server/admin-token-PORT (else under
    /// $XDG_STATE_HOME or ~/.local/state)]. The token itself can be given in
    /// FYN_RUNNER_ADMIN_TOKEN instead; never on the command line, where other users of
    /// the machine could read it.
    #[arg(
        long,
        global = true,
        env = "FYN_RUNNER_ADMIN_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// PEM file of the CA that signed an https:// server's certificate.
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: CtlAction,
}

#[derive(Debug, Subcommand)]
pub enum CtlAction {
    /// List the runners.
    Runners,
    /// Show one runner.
    Runner {
        /// The runner ID (`r-...`).
        id: String,
    },
    /// Registration tokens for runners.
    #[command(subcommand)]
    Tokens(TokenAction),
    /// List the jobs, oldest first.
    Jobs,
    /// Show one job (its output: `logs`).
    Job {
        /// The job ID (`j-...`).
        id: String,
    },
    /// Submit a job: `fyn-runner ctl submit [OPTIONS] -- CMD ARGS...`. Prints its ID, or
    /// with --wait follows its output and exits with its exit code.
    #[command(after_long_help = EXIT_CODES)]
    Submit(SubmitArgs),
    /// Print a job's output (both streams, each to its own; or one with --stream).
    Logs {
        /// The job ID.
        id: String,
        /// Keep printing as the job writes, until it ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only this stream.
        #[arg(long, value_enum)]
        stream: Option<StreamArg>,
    },
    /// List the result files of a job's current attempt: uploaded, failed, missing.
    Results {
        /// The job ID.
        id: String,
    },
    /// Download one result file of a job (checked against its sha256).
    Fetch {
        /// The job ID.
        id: String,
        /// The file's path below the job's `work/`, as `results` lists it.
        path: String,
        /// Where to write it; `-` for standard output [default: its file name in the
        /// current folder, which must not exist yet].
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Cancel a job: at once when queued, else the runner stops it (TERM, then KILL).
    Cancel {
        /// The job ID.
        id: String,
    },
    /// Drain a runner: it takes no new job and stops once its jobs are done.
    Drain {
        /// The runner ID.
        runner: String,
        /// Seconds its running jobs get before they are cancelled [default: the
        /// runner's own drain deadline].
        #[arg(long, value_name = "SECS")]
        deadline: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Mint a single-use registration token and print it.
    Create,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// An environment variable for the job, NAME=VALUE; repeat for more.
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Seconds the job may run before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// A folder inside the job's own folder to start in.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Bytes of each output stream kept [default: the runner's, 1 GiB].
    #[arg(long, value_name = "BYTES")]
    pub output_limit: Option<u64>,
    /// Seconds between TERM and KILL when the job is cancelled [default: 10].
    #[arg(long, value_name = "SECS")]
    pub cancel_grace: Option<u64>,
    /// A local file the job gets in its `work/` before it starts, FILE or FILE:PATH
    /// (default PATH: the file's name); executable there if it is here. Repeat for more.
    #[arg(long = "input", short = 'i', value_name = "FILE[:PATH]", value_parser = ctl::parse_input)]
    pub inputs: Vec<(PathBuf, String)>,
    /// A file (or a glob: `*`, `?`, `[...]`, `**`) below the job's `work/` uploaded
    /// when its process has ended; read back with `results` and `fetch`. Repeat for more.
    #[arg(long = "output", short = 'o', value_name = "PATH|GLOB")]
    pub outputs: Vec<String>,
    /// A key-value pair the job can read from its start (`fyn-runner job kv get`),
    /// KEY=VALUE; repeat for more.
    #[arg(long = "kv", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub kv: Vec<(String, String)>,
    /// Follow the job's output until it ends, then exit with its exit code.
    #[arg(long)]
    pub wait: bool,
    /// The program and its arguments (after `--`). Never run through a shell.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamArg {
    Stdout,
    Stderr,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// Run one `ctl` command; its exit code (errors are printed here, with theirs).
pub fn run(args: CtlArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(dispatch(args));
    Ok(result.unwrap_or_else(|(error, code)| {
        eprintln!("fyn-runner ctl: {error}");
        code
    }))
}

async fn dispatch(args: CtlArgs) -> Result<i32, (CtlError, i32)> {
    // `submit --wait` reserves the small codes for the job: its own failures are 125.
    let waiting = matches!(&args.action, CtlAction::Submit(submit) if submit.wait);
    let fail = |error: CtlError| {
        let code = if waiting {
            ctl::EXIT_CTL_FAILED
        } else {
            error.exit_code()
        };
        (error, code)
    };
    let server = ctl::parse_server(&args.server).map_err(fail)?;
    let from_env = std::env::var("FYN_RUNNER_ADMIN_TOKEN").ok();
    let token =
        ctl::find_token(from_env, args.admin_token_file.as_deref(), &server).map_err(fail)?;
    let client = Client::new(server, token, args.ca_file.as_deref()).map_err(fail)?;
    let format = if args.json {
        Format::Json
    } else {
        Format::Human
    };
    let done = match args.action {
        CtlAction::Runners => ctl::runners(&client, format).await,
        CtlAction::Runner { id } => ctl::runner(&client, &id, format).await,
        CtlAction::Tokens(TokenAction::Create) => ctl::create_token(&client, format).await,
        CtlAction::Jobs => ctl::jobs(&client, format).await,
        CtlAction::Job { id } => ctl::job(&client, &id, format).await,
        CtlAction::Submit(submit) => {
            let submission = Submission {
                command: submit.command,
                env: submit.env.into_iter().collect::<BTreeMap<_, _>>(),
                workdir: submit.workdir,
                timeout_secs: submit.timeout,
                output_limit_bytes: submit.output_limit,
                cancel_grace_secs: submit.cancel_grace,
                inputs: submit.inputs,
                outputs: submit.outputs,
                kv: submit.kv.into_iter().collect(),
            };
            ctl::submit(&client, submission, submit.wait, format).await
        }
        CtlAction::Logs { id, follow, stream } => {
            let streams = match stream {
                None => Streams::Both,
                Some(StreamArg::Stdout) => Streams::One(OutputStream::Stdout),
                Some(StreamArg::Stderr) => Streams::One(OutputStream::Stderr),
            };
            ctl::logs(&client, &id, streams, follow, format).await
        }
        CtlAction::Results { id } => ctl::results(&client, &id, format).await,
        CtlAction::Fetch { id, path, output } => {
            ctl::fetch(&client, &id, &path, output.as_deref(), format).await
        }
        CtlAction::Cancel { id } => ctl::cancel(&client, &id, format).await,
        CtlAction::Drain { runner, deadline } => {
            ctl::drain(&client, &runner, deadline, format).await
        }
    };
    done.map_err(fail)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CtlArgs,
    }

    #[test]
    fn submit_takes_the_command_after_the_double_dash() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from([
            "ctl",
            "submit",
            "--env",
            "A=b=c",
            "-e",
            "X=",
            "--timeout",
            "5",
            "--wait",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])?;
        let CtlAction::Submit(submit) = cli.args.action else {
            panic!("not submit");
        };
        assert_eq!(submit.command, ["sh", "-c", "exit 3"]);
        assert_eq!(
            submit.env,
            [("A".into(), "b=c".into()), ("X".into(), String::new())]
        );
        assert_eq!((submit.timeout, submit.wait), (5, true));
        assert!(Cli::try_parse_from(["ctl", "submit", "--env", "=x", "--", "true"]).is_err());
        assert!(Cli::try_parse_from(["ctl", "submit", "--timeout", "0", "--", "true"]).is_err());
        assert!(Cli::try_parse_from(["ctl", "submit"]).is_err());
        Ok(())
    }
}
