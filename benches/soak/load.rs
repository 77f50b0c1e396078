//! The load: jobs submitted through the admin API on a steady schedule, each one
//! exactly once (the note **No job submitted twice** in `soak.rs`), and what the
//! submitter counted on the way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use fyn_runner::ctl::Client;
use fyn_runner::devserver::{JobCreated, JobInfo, JobRequest};

pub(crate) fn job_command(n: u64) -> Vec<String> {
    vec!["sh".into(), "-c".into(), format!("echo soak-{n}")]
}

fn job_request(n: u64) -> JobRequest {
    JobRequest {
        command: job_command(n),
        env: Default::default(),
        workdir: None,
        timeout_secs: 120,
        output_limit_bytes: None,
        cancel_grace_secs: Some(1),
        inputs: Vec::new(),
        outputs: Vec::new(),
        kv: Default::default(),
    }
}

/// What the submitter has done so far, read by the samples.
#[derive(Default)]
pub(crate) struct LoadCounters {
    pub(crate) submitted: AtomicU64,
    /// Submits retried because the connection was refused (nothing was sent).
    pub(crate) refused: AtomicU64,
    /// Submits whose outcome was unknown, and of those, the ones found stored.
    pub(crate) unknown: AtomicU64,
    pub(crate) found_stored: AtomicU64,
    /// How far behind its schedule the submitter fell at worst, in milliseconds.
    pub(crate) worst_lag_ms: AtomicU64,
}

/// The connection was never made: nothing of the request reached the server.
fn never_sent(error: &fyn_runner::ctl::CtlError) -> bool {
    match error {
        fyn_runner::ctl::CtlError::Unreachable { why, .. } => {
            why.contains("Connection refused")
                || why.contains("os error 111")
                || why == "timed out connecting"
        }
        _ => false,
    }
}

/// All jobs, asked until the server answers (it may be restarting).
pub(crate) async fn list_jobs(admin: &Client) -> Vec<JobInfo> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match admin.get::<Vec<JobInfo>>("/admin/v1/jobs").await {
            Ok(jobs) => return jobs,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "the job list was not answered for 2 minutes: {error}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Submits job `n` once: see the module's note on double submission.
async fn submit_once(admin: &Client, n: u64, counters: &LoadCounters) -> String {
    let request = job_request(n);
    let mut other_failures = 0u32;
    loop {
        match admin
            .post::<JobCreated>("/admin/v1/jobs", Some(&request))
            .await
        {
            Ok(created) => return created.id,
            Err(error) if never_sent(&error) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => {
                counters.unknown.fetch_add(1, Ordering::Relaxed);
                println!("  submit of soak-{n}: outcome unknown ({error}); checking the list");
                other_failures += 1;
                assert!(
                    other_failures <= 20,
                    "submitting soak-{n} failed 20 times: {error}"
                );
                // A live server has stored it by now; a killed one never will.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let command = job_command(n);
                if let Some(job) = list_jobs(admin)
                    .await
                    .into_iter()
                    .find(|job| job.command == command)
                {
                    counters.found_stored.fetch_add(1, Ordering::Relaxed);
                    println!("  soak-{n} was stored as {}: not submitted again", job.id);
                    return job.id;
                }
                println!("  soak-{n} was not stored: submitting it again");
            }
        }
    }
}

/// Submits jobs `0..total`, job `n` at `start + n / rate`, one at a time (a late
/// one catches up); the job IDs go to `ids` by `n`, so a soak stopped early still
/// knows what it submitted.
pub(crate) async fn submit_all(
    admin: Arc<Client>,
    total: u64,
    rate: f64,
    start: Instant,
    counters: Arc<LoadCounters>,
    ids: Arc<Mutex<Vec<String>>>,
) {
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due).await;
        let lag = Instant::now().saturating_duration_since(due).as_millis();
        counters
            .worst_lag_ms
            .fetch_max(u64::try_from(lag).unwrap_or(u64::MAX), Ordering::Relaxed);
        let id = submit_once(&admin, n, &counters).await;
        ids.lock().expect("the ID list").push(id);
        counters.submitted.fetch_add(1, Ordering::Relaxed);
    }
}
