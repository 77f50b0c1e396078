//! The verification at the end: every submitted job asked of the admin API (finished
//! exactly once, succeeded, printed its own line), and the helpers the summary
//! reads it with (`spread` of the samples, `list_some` of the jobs found wrong).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use fyn_runner::ctl::Client;
use fyn_runner::devserver::{JobInfo, JobState, OutputPage};
use fyn_runner::protocol::JobOutcome;

use crate::events::EventTail;
use crate::load::{job_command, list_jobs};

/// Output checks at once at the end: a few, so the check takes seconds, not minutes.
const CHECKERS: usize = 4;

/// What the final check found wrong with each job, by kind.
#[derive(Default)]
pub(crate) struct Verdict {
    /// Submitted jobs with no `job_finished` stored, or not in a terminal state.
    pub(crate) unfinished: Vec<String>,
    /// Finished, but not succeeded.
    pub(crate) not_succeeded: Vec<String>,
    /// Succeeded with some other output than its own line.
    pub(crate) wrong_output: Vec<String>,
    /// More than one `job_finished`, or more than one attempt.
    pub(crate) doubled_runs: Vec<String>,
    /// More than one job stored for one submission.
    pub(crate) doubled_submits: Vec<String>,
    /// Jobs the API holds that this soak never submitted.
    pub(crate) strangers: Vec<String>,
    /// Jobs that finished exactly once, succeeded, with their own line.
    pub(crate) good: u64,
}

impl Verdict {
    pub(crate) fn lost(&self) -> usize {
        self.unfinished.len() + self.not_succeeded.len() + self.wrong_output.len()
    }

    pub(crate) fn doubled(&self) -> usize {
        self.doubled_runs.len() + self.doubled_submits.len() + self.strangers.len()
    }
}

async fn job_stdout(admin: &Client, id: &str) -> Result<Vec<u8>, String> {
    let path = format!("/admin/v1/jobs/{id}/output?stream=stdout&limit=4096");
    let mut last = String::new();
    // Patient: tens of thousands of short connections in a row may meet a moment
    // without a free local port.
    for _ in 0..300 {
        match admin.get::<OutputPage>(&path).await {
            Ok(page) => return page.bytes().map_err(|e| e.to_string()),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

pub(crate) async fn verify(admin: Arc<Client>, ids: &[String], tail: &EventTail) -> Verdict {
    let mut verdict = Verdict::default();
    let jobs = list_jobs(&admin).await;
    let mut by_command: HashMap<String, Vec<&JobInfo>> = HashMap::new();
    for job in &jobs {
        by_command
            .entry(job.command.join(" "))
            .or_default()
            .push(job);
    }
    let by_id: HashMap<&str, &JobInfo> = jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    let ours: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    verdict.strangers = jobs
        .iter()
        .filter(|j| !ours.contains(j.id.as_str()))
        .map(|j| format!("{} ({})", j.id, j.command.join(" ")))
        .collect();

    let mut to_read = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let name = format!("soak-{n} ({id})");
        let command = job_command(n as u64).join(" ");
        if by_command.get(&command).map_or(0, Vec::len) > 1 {
            verdict.doubled_submits.push(name.clone());
        }
        let Some(job) = by_id.get(id.as_str()) else {
            verdict
                .unfinished
                .push(format!("{name}: not in the job list"));
            continue;
        };
        let finished = tail.finished.get(id).copied().unwrap_or(0);
        if finished > 1 || job.attempt > 1 {
            verdict.doubled_runs.push(format!(
                "{name}: {finished} job_finished events, attempt {}",
                job.attempt
            ));
        }
        if finished == 0 || !job.state.is_terminal() {
            verdict.unfinished.push(format!(
                "{name}: {:?}, {finished} job_finished events",
                job.state
            ));
            continue;
        }
        if job.state != JobState::Finished || job.outcome != Some(JobOutcome::Succeeded) {
            verdict.not_succeeded.push(format!(
                "{name}: {:?} {:?} {:?} {:?}",
                job.state, job.outcome, job.exit_status, job.detail
            ));
            continue;
        }
        to_read.push((n, id.clone(), name, finished == 1 && job.attempt == 1));
    }

    // Each job's own line, read back through the API, a few at a time.
    let chunk = to_read.len().div_ceil(CHECKERS).max(1);
    let mut checkers = Vec::new();
    for part in to_read.chunks(chunk) {
        let part = part.to_vec();
        let admin = admin.clone();
        checkers.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            let mut good = 0u64;
            for (n, id, name, once) in part {
                let expected = format!("soak-{n}\n");
                match job_stdout(&admin, &id).await {
                    Ok(bytes) if bytes == expected.as_bytes() => good += u64::from(once),
                    Ok(bytes) => wrong.push(format!(
                        "{name}: printed {:?}",
                        String::from_utf8_lossy(&bytes)
                    )),
                    Err(error) => wrong.push(format!("{name}: output unreadable: {error}")),
                }
            }
            (wrong, good)
        }));
    }
    for checker in checkers {
        let (wrong, good) = checker.await.expect("an output checker ran");
        verdict.wrong_output.extend(wrong);
        verdict.good += good;
    }
    verdict
}

pub(crate) struct Spread {
    pub(crate) min: u64,
    pub(crate) max: u64,
    /// Least-squares slope, KiB an hour.
    pub(crate) slope_kib_per_hour: f64,
}

pub(crate) fn spread(points: &[(f64, u64)]) -> Option<Spread> {
    let min = points.iter().map(|p| p.1).min()?;
    let max = points.iter().map(|p| p.1).max()?;
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (t, v)| {
        (
            num + (t - mean_t) * (*v as f64 - mean_v),
            den + (t - mean_t).powi(2),
        )
    });
    let slope = if den > 0.0 { num / den * 3600.0 } else { 0.0 };
    Some(Spread {
        min,
        max,
        slope_kib_per_hour: slope,
    })
}

pub(crate) fn list_some(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n      ");
    if items.len() > 10 {
        let _ = write!(text, "\n      ... and {} more", items.len() - 10);
    }
    text
}
