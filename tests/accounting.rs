//! Accounting against `/usr/bin/time -v`: the same `sh -c` job run under both, CPU time
//! and peak memory from our `wait4` close to what `time` reports (it reads the same
//! rusage, so the figures differ only by what differs between two runs of one job).
//! And GPU memory end to end: the runner binary with a stand-in `nvidia-smi` on its
//! `PATH` reports the memory attributed to the job's processes on `job_finished`.
#![cfg(target_os = "linux")]
#![allow(clippy::disallowed_methods)] // waiting on a real runner

use std::process::Command;

use fyn_runner::runtime::accounting::wait_with_usage;

/// About 60 MB held by the shell (a command substitution keeps it in memory) and a few
/// hundred milliseconds of CPU in a loop.
const JOB: &str = r#"x=$(head -c 60000000 /dev/zero | tr '\0' a); i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo ${#x}"#;

/// `User time`, `System time` (ms) and `Maximum resident set size` (bytes) from
/// `/usr/bin/time -v`'s report.
fn time_report(text: &str) -> Option<(u64, u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(name))
            .map(str::trim)
    };
    let seconds = |name: &str| -> Option<u64> {
        let value: f64 = field(name)?.parse().ok()?;
        Some((value * 1000.0).round() as u64)
    };
    let kib: u64 = field("Maximum resident set size (kbytes):")?.parse().ok()?;
    Some((
        seconds("User time (seconds):")?,
        seconds("System time (seconds):")?,
        kib * 1024,
    ))
}

#[test]
fn cpu_time_and_peak_memory_are_what_time_reports() -> Result<(), Box<dyn std::error::Error>> {
    if !std::path::Path::new("/usr/bin/time").exists() {
        eprintln!("skipped: /usr/bin/time is not installed (apt-get install time)");
        return Ok(());
    }
    let ours = Command::new("sh")
        .args(["-c", JOB])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let (status, usage) = wait_with_usage(ours.id())?;
    assert_eq!(status, 0);
    let theirs = Command::new("/usr/bin/time")
        .args(["-v", "sh", "-c", JOB])
        .output()?;
    assert!(theirs.status.success());
    let report = String::from_utf8_lossy(&theirs.stderr);
    let (user, system, rss) = time_report(&report).ok_or("time -v printed no report")?;
    let our_cpu = usage.cpu_user_ms.unwrap_or(0) + usage.cpu_system_ms.unwrap_or(0);
    let their_cpu = user + system;
    eprintln!(
        "ours: {our_cpu} ms CPU, {} bytes peak; time -v: {their_cpu} ms CPU, {rss} bytes peak",
        usage.peak_rss_bytes.unwrap_or(0)
    );
    // Two runs of one job: CPU time within a factor of two (or 150 ms for a quick one),
    // peak memory within 15 %.
    let (low, high) = (their_cpu.min(our_cpu), their_cpu.max(our_cpu));
    assert!(
        high <= low * 2 || high - low <= 150,
        "CPU: ours {our_cpu} ms, time's {their_cpu} ms"
    );
    let our_rss = usage.peak_rss_bytes.unwrap_or(0);
    assert!(
        our_rss > 50_000_000,
        "the job held ~60 MB, measured {our_rss}"
    );
    let diff = our_rss.abs_diff(rss) as f64 / rss as f64;
    assert!(diff < 0.15, "peak memory: ours {our_rss}, time's {rss}");
    Ok(())
}

#[test]
fn the_report_parser_reads_times_format() {
    let report = "\tUser time (seconds): 0.42\n\tSystem time (seconds): 0.05\n\tMaximum resident set size (kbytes): 61404\n";
    assert_eq!(time_report(report), Some((420, 50, 61404 * 1024)));
}

/// A stand-in `nvidia-smi` that lists every process of the machine with 100 MiB (and
/// fails the hardware probe's other queries, as on a machine whose GPU is gone): what
/// the runner reports is the sum over the job's own processes only.
#[tokio::test]
async fn gpu_memory_attributed_to_the_jobs_processes_is_on_job_finished()
-> Result<(), Box<dyn std::error::Error>> {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    use fyn_runner::devserver::{DevServer, DevServerConfig, JobRequest};
    use fyn_runner::protocol::JobOutcome;

    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir()?;
    let tools = dir.path().join("bin");
    std::fs::create_dir(&tools)?;
    let fake = tools.join("nvidia-smi");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncase \"$1\" in\n--query-compute-apps=*)\n  echo 'pid, used_gpu_memory [MiB]'\n  for p in /proc/[0-9]*; do echo \"${p#/proc/}, 100 MiB\"; done ;;\n*) exit 9 ;;\nesac\n",
    )?;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let server = DevServer::start(DevServerConfig::ephemeral()).await?;
    let mut runner = Command::new(env!("CARGO_BIN_EXE_fyn-runner"))
        .args(["run", "--server", &server.url(), "--no-trace", "--token"])
        .arg(server.mint_token()?)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("PATH", &path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let id = server.submit_job(JobRequest {
        command: vec!["sh".into(), "-c".into(), "sleep 1; true".into()],
        env: Default::default(),
        workdir: None,
        timeout_secs: 60,
        output_limit_bytes: None,
        cancel_grace_secs: Some(1),
        inputs: Vec::new(),
        outputs: Vec::new(),
        kv: Default::default(),
    })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let job = server.job(&id)?.ok_or("the job")?;
        if job.outcome.is_some() {
            break job;
        }
        assert!(Instant::now() < deadline, "the job never ended: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = runner.kill();
    let _ = runner.wait();
    assert_eq!(job.outcome, Some(JobOutcome::Succeeded), "{job:?}");
    let gpu = job
        .usage
        .and_then(|usage| usage.gpu_memory_peak_bytes)
        .ok_or("no GPU figure")?;
    // The shell and its sleep: one or two processes, 100 MiB each; never the runner's
    // or anyone else's.
    assert!(
        gpu == 100 * MIB || gpu == 200 * MIB,
        "{} MiB attributed",
        gpu / MIB
    );
    Ok(())
}
