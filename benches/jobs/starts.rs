//! Concurrent starts: jobs per second end to end (submitted -> every `job_finished`
//! stored) for a queue of `true` jobs, fyn-runner with 8 slots against the floor with
//! duties with 8 in flight (the bare client doing the durable records and the job
//! folder for each start, as in the dispatch-latency figures), and fyn-runner with one
//! slot, all in the same run.

use std::time::{Duration, Instant};

use fyn_runner::devserver::{DevServer, DevServerConfig};

use super::{bare_runner_on_its_own_server, request, spawn_runner, until_ready};

/// Submit `jobs` jobs of `true` at once and wait until all have ended; jobs per second.
async fn jobs_per_second(server: &DevServer, jobs: usize) -> f64 {
    let started = Instant::now();
    let mut remaining: std::collections::VecDeque<String> = (0..jobs)
        .map(|_| server.submit_job(request(&["true"])).expect("submit"))
        .collect();
    // Jobs are handed out in order and end nearly in order: waiting on the oldest
    // one left is cheap, and the count is complete when the last one has ended.
    while let Some(oldest) = remaining.front() {
        let job = server.job(oldest).expect("query").expect("job");
        if job.outcome.is_some() {
            remaining.pop_front();
            continue;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    jobs as f64 / started.elapsed().as_secs_f64()
}

async fn runner_rate(jobs: usize, slots: u32) -> f64 {
    let server = DevServer::start(DevServerConfig::ephemeral())
        .await
        .expect("dev-server");
    let state = tempfile::tempdir().expect("tempdir");
    let mut runner = spawn_runner(
        &server.url(),
        state.path(),
        &server.mint_token().expect("token"),
        slots,
    );
    until_ready(&server).await;
    let rate = jobs_per_second(&server, jobs).await;
    let _ = runner.kill();
    let _ = runner.wait();
    server.shutdown().await;
    rate
}

async fn floor_rate(jobs: usize, slots: u32) -> f64 {
    let duty_dir = tempfile::tempdir().expect("tempdir");
    let (server, mut client) = bare_runner_on_its_own_server(Some(duty_dir.path()), slots).await;
    let rate = jobs_per_second(&server, jobs).await;
    let _ = client.kill();
    let _ = client.wait();
    server.shutdown().await;
    rate
}

/// The section of `cargo bench --bench jobs`.
pub async fn section(jobs: usize) {
    println!("concurrent starts ({jobs} queued jobs of `true`; submitted -> all ended)");
    let floor = floor_rate(jobs, 8).await;
    super::pause_between_fs_heavy_runs().await;
    let eight = runner_rate(jobs, 8).await;
    super::pause_between_fs_heavy_runs().await;
    let one = runner_rate(jobs, 1).await;
    println!("  floor with duties, 8 in flight   {floor:7.1} jobs/s");
    println!(
        "  fyn-runner, 8 slots              {eight:7.1} jobs/s; {:.2}x the floor, {:.2}x one slot",
        eight / floor,
        eight / one
    );
    println!("  fyn-runner, 1 slot               {one:7.1} jobs/s");
}
