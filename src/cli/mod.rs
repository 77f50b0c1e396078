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

use crate::spec;

#[derive(Debug, Parser)]
#[command(
    name = "fyn-runner",
    version,
    about = "Joins this machine to a job control plane and runs the jobs it is handed.",
    long_about = "fyn-runner keeps an authenticated WebSocket session with a control plane, \
                  reports this machine's hardware, and runs jobs as local processes. Its \
                  lifecycle is an explicit state machine held to the table in fsm-spec/."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render the lifecycle spec table (the source of truth for the state machine).
    Spec {
        /// table: the rows; mermaid/dot: state diagrams; json: the parsed table;
        /// markdown: docs/lifecycle.md as generated from the table.
        #[arg(long, value_enum, default_value_t = SpecFormat::Table)]
        format: SpecFormat,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpecFormat {
    Table,
    Mermaid,
    Dot,
    Json,
    Markdown,
}

/// Run the parsed command; the returned code becomes the process exit status.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
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
