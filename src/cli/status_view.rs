//! `fyn-runner status` as a person reads it: the runner's status file rendered as
//! aligned lines, durations as ages. Must not: read the status; `run` hands it over.

use std::fmt::Write as _;

pub(super) fn render_status(status: &crate::runtime::RunnerStatus) -> String {
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
    if !status.running.is_empty() {
        let jobs: Vec<String> = status
            .running
            .iter()
            .map(|job| {
                let kept = if job.reattached { "reattached, " } else { "" };
                format!("{} ({kept}{})", job.job, ago(job.since_ms))
            })
            .collect();
        let _ = writeln!(out, "running jobs:   {}", jobs.join(", "));
    } else if !status.jobs.is_empty() {
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
    if let Some(addr) = &status.metrics_listen {
        let _ = writeln!(
            out,
            "metrics:        http://{addr}/metrics (/healthz, /readyz)"
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
