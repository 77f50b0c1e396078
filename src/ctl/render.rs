//! Tables and detail views for people. Scripts use `--json`, which prints the API's
//! own JSON; nothing here is meant to be parsed.

use std::fmt::Write as _;

use crate::devserver::{JobInfo, JobResults, RunnerInfo};
use crate::protocol::{ExitStatus, JobOutcome};

/// Columns padded to their widest cell, two spaces apart; the last is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// "3s ago", "5m12s ago", "2h03m ago".
fn ago(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m{:02}s ago", secs / 60, secs % 60),
        _ => format!("{}h{:02}m ago", secs / 3600, (secs % 3600) / 60),
    }
}

/// argv as a shell would need it typed, cut to `max` characters.
fn command_line(argv: &[String], max: usize) -> String {
    let quoted: Vec<String> = argv
        .iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect();
    let line = quoted.join(" ");
    if line.chars().count() > max {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        line
    }
}

fn state_of(runner: &RunnerInfo) -> String {
    format!("{:?}", runner.state)
}

pub fn runners(runners: &[RunnerInfo], now_ms: u64) -> String {
    if runners.is_empty() {
        return "no runners registered (mint a token with `fyn-runner ctl tokens create`)\n"
            .to_owned();
    }
    let rows: Vec<Vec<String>> = runners
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.name.clone(),
                state_of(r),
                format!("{}/{}", r.slots_free, r.slots),
                r.last_seen.map_or("never".to_owned(), |t| ago(now_ms, t)),
                r.version.clone(),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "STATE", "FREE", "LAST SEEN", "VERSION"],
        &rows,
    )
}

pub fn runner(r: &RunnerInfo, now_ms: u64) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<18}{value}");
    };
    line("id:", r.id.clone());
    line("name:", r.name.clone());
    line("version:", r.version.clone());
    line(
        "state:",
        format!(
            "{}{}",
            state_of(r),
            if r.draining { " (draining)" } else { "" }
        ),
    );
    line(
        "connected:",
        if r.connected { "yes" } else { "no" }.to_owned(),
    );
    line(
        "last seen:",
        r.last_seen.map_or("never".to_owned(), |t| ago(now_ms, t)),
    );
    line("slots:", format!("{} free of {}", r.slots_free, r.slots));
    line("last event:", r.last_event_index.to_string());
    line(
        "last command:",
        format!(
            "{} ({} unacknowledged)",
            r.last_command_index, r.unacked_commands
        ),
    );
    let hardware = match &r.hardware {
        None => "not reported yet".to_owned(),
        Some(report) => hardware_summary(report),
    };
    line("hardware:", hardware);
    out
}

fn hardware_summary(report: &serde_json::Value) -> String {
    let text = |path: &[&str]| {
        path.iter()
            .try_fold(report, |v, key| v.get(key))
            .and_then(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            })
    };
    let mut parts = Vec::new();
    if let Some(os) = text(&["os", "name"]) {
        parts.push(os);
    }
    if let Some(cores) = text(&["cpu", "logical_cores"]).or_else(|| text(&["cpu", "cores"])) {
        parts.push(format!("{cores} CPUs"));
    }
    if let Some(bytes) = report
        .get("memory")
        .and_then(|m| m.get("total_bytes"))
        .and_then(serde_json::Value::as_u64)
    {
        parts.push(format!(
            "{:.1} GiB memory",
            bytes as f64 / f64::from(1u32 << 30)
        ));
    }
    if let Some(gpus) = report
        .get("gpus")
        .and_then(|g| g.get("devices"))
        .and_then(serde_json::Value::as_array)
    {
        parts.push(format!("{} GPU(s)", gpus.len()));
    }
    if parts.is_empty() {
        "reported (see --json)".to_owned()
    } else {
        parts.join(", ")
    }
}

fn exit_text(job: &JobInfo) -> String {
    match job.exit_status {
        Some(ExitStatus::Exited { code }) => code.to_string(),
        Some(ExitStatus::Signaled { signal }) => format!("signal {signal}"),
        Some(ExitStatus::Unknown) | None => "-".to_owned(),
    }
}

fn outcome_text(outcome: Option<JobOutcome>) -> String {
    outcome.map_or("-".to_owned(), |o| {
        serde_json::to_value(o)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    })
}

pub fn jobs(jobs: &[JobInfo], now_ms: u64) -> String {
    if jobs.is_empty() {
        return "no jobs (submit one with `fyn-runner ctl submit -- CMD ARGS...`)\n".to_owned();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.state.to_string(),
                j.attempt.to_string(),
                j.runner.clone().unwrap_or_else(|| "-".to_owned()),
                outcome_text(j.outcome),
                exit_text(j),
                ago(now_ms, j.created),
                command_line(&j.command, 40),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATE", "ATTEMPT", "RUNNER", "OUTCOME", "EXIT", "CREATED", "COMMAND",
        ],
        &rows,
    )
}

pub fn job(j: &JobInfo, now_ms: u64) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<18}{value}");
    };
    line("id:", j.id.clone());
    line("state:", j.state.to_string());
    line("attempt:", j.attempt.to_string());
    line(
        "runner:",
        j.runner.clone().unwrap_or_else(|| "-".to_owned()),
    );
    line("command:", command_line(&j.command, usize::MAX));
    if !j.env.is_empty() {
        let names: Vec<&str> = j.env.keys().map(String::as_str).collect();
        line("env:", names.join(", "));
    }
    if let Some(dir) = &j.workdir {
        line("workdir:", dir.clone());
    }
    line("timeout:", format!("{} s", j.timeout_secs));
    line("outcome:", outcome_text(j.outcome));
    line("exit:", exit_text(j));
    if let Some(ms) = j.duration_ms {
        line("duration:", format!("{:.3} s", ms as f64 / 1000.0));
    }
    line(
        "output:",
        format!(
            "{} bytes stdout, {} bytes stderr{} (fyn-runner ctl logs {})",
            j.stdout_bytes,
            j.stderr_bytes,
            if j.truncated { ", truncated" } else { "" },
            j.id
        ),
    );
    for input in &j.inputs {
        let exec = if input.executable {
            " (executable)"
        } else {
            ""
        };
        line(
            "input:",
            format!("{} <- sha256 {}{exec}", input.path, input.sha256),
        );
    }
    for output in &j.outputs {
        let named = output
            .path
            .as_deref()
            .or(output.glob.as_deref())
            .unwrap_or("");
        line(
            "output:",
            format!("{named} (fyn-runner ctl results {})", j.id),
        );
    }
    if let Some(progress) = &j.progress {
        if let Some(phase) = progress.phase {
            let name = serde_json::to_value(phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            line("phase:", name);
        }
        let fraction = progress.fraction.map(|f| format!("{:.1} %", f * 100.0));
        let said = [fraction, progress.message.clone()];
        let said: Vec<String> = said.into_iter().flatten().collect();
        if !said.is_empty() {
            line("progress:", said.join(", "));
        }
    }
    for (key, value) in &j.kv {
        let shown: String = value.chars().take(60).collect();
        let cut = if shown.len() < value.len() { "…" } else { "" };
        line("kv:", format!("{key} = {shown}{cut}"));
    }
    if let Some(usage) = &j.usage {
        let mut parts = Vec::new();
        if let (Some(user), Some(system)) = (usage.cpu_user_ms, usage.cpu_system_ms) {
            parts.push(format!(
                "cpu {:.3} s user + {:.3} s system",
                user as f64 / 1000.0,
                system as f64 / 1000.0
            ));
        }
        if let Some(rss) = usage.peak_rss_bytes {
            parts.push(format!("peak memory {:.1} MiB", rss as f64 / 1048576.0));
        }
        if let Some(gpu) = usage.gpu_memory_peak_bytes {
            parts.push(format!("peak GPU memory {:.1} MiB", gpu as f64 / 1048576.0));
        }
        if let Some(wall) = usage.wall_ms {
            parts.push(format!("{:.3} s in all", wall as f64 / 1000.0));
        }
        if !parts.is_empty() {
            line("usage:", parts.join(", "));
        }
    }
    if j.cancel_requested {
        line("cancel:", "requested".to_owned());
    }
    if let Some(detail) = &j.detail {
        line("detail:", detail.clone());
    }
    line("created:", ago(now_ms, j.created));
    out
}

/// One line on how a waited-for job ended.
pub fn ending(j: &JobInfo) -> String {
    let mut text = format!("{} {}", j.id, j.state);
    if j.outcome.is_some() {
        let _ = write!(
            text,
            ": {} (exit {})",
            outcome_text(j.outcome),
            exit_text(j)
        );
    }
    if let Some(detail) = &j.detail {
        let _ = write!(text, "; {detail}");
    }
    text
}

/// The result files of an attempt, then what is missing; a note while uploads go on.
pub fn results(r: &JobResults) -> String {
    let rows: Vec<Vec<String>> = r
        .files
        .iter()
        .map(|file| {
            let status = match (&file.failure, file.reported) {
                (Some(why), _) => format!("failed: {why}"),
                (None, true) => "uploaded".to_owned(),
                (None, false) => "arriving".to_owned(),
            };
            vec![
                file.path.clone(),
                file.size.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                file.sha256.clone().unwrap_or_else(|| "-".to_owned()),
                status,
            ]
        })
        .collect();
    let mut out = table(&["PATH", "SIZE", "SHA256", "STATUS"], &rows);
    for missing in &r.missing {
        let _ = writeln!(out, "missing: {missing}");
    }
    if !r.complete {
        let _ = writeln!(
            out,
            "(attempt {}: the runner has not reported the end of its uploads yet)",
            r.attempt
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up() {
        let rows = vec![
            vec!["a".to_owned(), "long value".to_owned(), "x".to_owned()],
            vec!["bbb".to_owned(), "v".to_owned(), "y y".to_owned()],
        ];
        assert_eq!(
            table(&["K", "V", "LAST"], &rows),
            "K    V           LAST\na    long value  x\nbbb  v           y y\n"
        );
    }

    #[test]
    fn commands_are_quoted_and_cut() {
        let argv = |args: &[&str]| args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            command_line(&argv(&["sh", "-c", "echo it's"]), 100),
            r"sh -c 'echo it'\''s'"
        );
        assert_eq!(command_line(&argv(&["echo", "abcdefgh"]), 8), "echo ab…");
        assert_eq!(ago(10_000, 4_000), "6s ago");
        assert_eq!(ago(4_000_000, 0), "1h06m ago");
    }
}
