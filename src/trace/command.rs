//! `fyn-runner replay TRACE [--from N] [--until N] [--verbose] [--timeline] [--svg FILE]`
//! as a library call: the CLI parses the flags and hands them over.

use std::io::Write;
use std::path::PathBuf;

use super::format::TraceEntry;
use super::replay::{ReplayError, ReplayOutcome, replay};
use super::timeline::{render_svg, render_text};

/// The flags of the replay command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    pub trace: PathBuf,
    /// Print steps from this seq on (the core is still driven from the start).
    pub from: Option<u64>,
    /// Stop after this seq.
    pub until: Option<u64>,
    /// Print each step's recorded event and effects as JSON.
    pub verbose: bool,
    /// Print the text timeline of the printed range after the steps.
    pub timeline: bool,
    /// Write the SVG timeline of the printed range to this file.
    pub svg: Option<PathBuf>,
    /// Columns of the text timeline.
    pub width: usize,
}

impl ReplayOptions {
    /// The defaults of the command line: everything printed, no timelines.
    pub fn new(trace: impl Into<PathBuf>) -> Self {
        Self {
            trace: trace.into(),
            width: DEFAULT_TIMELINE_WIDTH,
            ..Self::default()
        }
    }
}

/// Columns of the text timeline when the caller has no terminal width to offer.
pub const DEFAULT_TIMELINE_WIDTH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ReplayCommandError {
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("cannot write the replay output: {0}")]
    Output(#[source] std::io::Error),
    #[error("cannot write the SVG timeline to {path}: {source}")]
    Svg {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Exit status when the replay matched the recording.
pub const EXIT_MATCHED: i32 = 0;
/// Exit status when the core did something else than the recording says.
pub const EXIT_DIVERGED: i32 = 1;

/// Replay, print every step in range, then the outcome, warnings and timelines.
/// Returns the exit status: 0 matched, 1 diverged. Errors (unreadable or foreign
/// traces) are for the caller to report.
pub fn run_replay_command(
    options: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<i32, ReplayCommandError> {
    let keep_entries = options.timeline || options.svg.is_some();
    let mut entries: Vec<TraceEntry> = Vec::new();
    // `on_step` cannot return an error, so the first write failure is kept for later
    // and further printing is skipped.
    let mut write_error: Option<std::io::Error> = None;
    let outcome = replay(&options.trace, options.from, options.until, |step| {
        if keep_entries {
            entries.push(step.entry.clone());
        }
        if write_error.is_none()
            && let Err(e) = writeln!(out, "{}", step.render(options.verbose))
        {
            write_error = Some(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(ReplayCommandError::Output(e));
    }
    let mut report = String::new();
    let status = match &outcome {
        ReplayOutcome::Matched(summary) => {
            report.push_str(&format!(
                "replay matched: {} events, final phase {}{}\n",
                summary.steps,
                summary.final_phase,
                if summary.stopped_at_until {
                    " (stopped at --until)"
                } else {
                    ""
                }
            ));
            EXIT_MATCHED
        }
        ReplayOutcome::Diverged(divergence) => {
            report.push_str(&divergence.render(options.verbose));
            EXIT_DIVERGED
        }
    };
    for warning in outcome.warnings() {
        report.push_str(&format!("warning: {warning}\n"));
    }
    if options.timeline {
        report.push('\n');
        report.push_str(&render_text(&entries, options.width));
    }
    out.write_all(report.as_bytes())
        .map_err(ReplayCommandError::Output)?;
    if let Some(path) = &options.svg {
        std::fs::write(path, render_svg(&entries)).map_err(|source| ReplayCommandError::Svg {
            path: path.clone(),
            source,
        })?;
    }
    Ok(status)
}
