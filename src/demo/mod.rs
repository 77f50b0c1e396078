/*!
`fyn-runner demo`: the whole lifecycle in one process, against the reference control
plane on a loopback port, in temporary folders.

Owns: the demo's script and its printed narration. Must not touch: lifecycle decisions
(it drives the real runtime and the real dev-server through their public APIs only).
*/
#![allow(clippy::disallowed_methods)] // the narration is timed

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::core::{CoreConfig, Lifecycle};
use crate::devserver::{DevServer, DevServerConfig};
use crate::protocol::{OutputStream, SessionParams};
use crate::runtime::{self, RunnerHandle, RunnerSettings, Secret};

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Run the demo; returns the runner's exit code.
pub async fn run() -> anyhow::Result<i32> {
    let started = Instant::now();
    let work = tempfile_dir()?;
    let db = work.join("dev-server.db");
    let state_dir = work.join("runner");
    say(&format!(
        "fyn-runner demo — scratch folder {}",
        work.display()
    ));

    let server = start_server(&db, None).await?;
    let addr = server.local_addr();
    say(&format!(
        "[{:>5} ms] dev-server listening on {}",
        ms(started),
        server.url()
    ));
    let token = server
        .mint_token()
        .context("minting a registration token")?;
    say(&format!(
        "[{:>5} ms] minted a one-time registration token",
        ms(started)
    ));

    let settings = settings(&server.url(), &state_dir, token)?;
    let mut handle = runtime::start(settings).context("starting the runner")?;
    let trace = handle.trace_path().map(Path::to_path_buf);
    say(&format!(
        "[{:>5} ms]   runner: {}",
        ms(started),
        handle.status.borrow().phase
    ));
    let narrator = tokio::spawn(narrate(handle.transitions(), started));

    wait_for(&mut handle, Lifecycle::Active, 0).await?;
    let runner_id = handle.status.borrow().runner_id.clone().unwrap_or_default();
    if let Some(info) = server.runner(&runner_id).context("asking the dev-server")? {
        let hardware = info
            .hardware
            .as_ref()
            .map(summarise_hardware)
            .unwrap_or_default();
        say(&format!(
            "[{:>5} ms] the API lists {} ({}): {:?}, {} slots, {hardware}",
            ms(started),
            info.id,
            info.name,
            info.state,
            info.slots
        ));
    }

    say(&format!(
        "[{:>5} ms] restarting the dev-server to show reconnect and resync",
        ms(started)
    ));
    let before = handle.status.borrow().transitions;
    server.shutdown().await;
    let server = start_server(&db, Some(addr)).await?;
    wait_for(&mut handle, Lifecycle::Active, before + 2).await?;
    say(&format!(
        "[{:>5} ms] back in Active after the restart; the API still knows {runner_id}",
        ms(started)
    ));

    run_jobs(&server, started).await?;

    say(&format!(
        "[{:>5} ms] asking the runner to drain (as `fyn-runner drain` would)",
        ms(started)
    ));
    handle.shutdown();
    let code = tokio::time::timeout(STEP_TIMEOUT, handle.wait())
        .await
        .context("the runner did not stop in time")?;
    // The runner is gone, so the narration ends once it has printed what is left.
    let _ = tokio::time::timeout(Duration::from_secs(1), narrator).await;
    server.shutdown().await;
    say(&format!(
        "[{:>5} ms] runner exited with code {} — done in {:.1} s",
        ms(started),
        code.code(),
        started.elapsed().as_secs_f64()
    ));
    if let Some(trace) = trace {
        say(&format!("\nThe session trace is {}", trace.display()));
        say(&format!(
            "Replay it step by step:  cargo run --release -- replay {}",
            trace.display()
        ));
        say(&format!(
            "Or see it at a glance:   cargo run --release -- replay {} --timeline",
            trace.display()
        ));
        say(&format!(
            "(the scratch folder {} is left for you to look at)",
            work.display()
        ));
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(code.code())
}

/// Four jobs, one per outcome: succeeded, failed, cancelled, timed out.
async fn run_jobs(server: &DevServer, started: Instant) -> anyhow::Result<()> {
    use crate::devserver::JobRequest;
    let job = |command: &[&str], timeout_secs| JobRequest {
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: [("GREETING".to_owned(), "hello from the demo".to_owned())].into(),
        workdir: None,
        timeout_secs,
        output_limit_bytes: None,
        cancel_grace_secs: Some(2),
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    };
    let submit = |name: &str, request| -> anyhow::Result<String> {
        let id = server.submit_job(request).context("submitting a job")?;
        say(&format!("[{:>5} ms] submitted {id}: {name}", ms(started)));
        Ok(id)
    };
    let ok = submit(
        "prints a greeting and succeeds",
        job(&["sh", "-c", "echo \"$GREETING\"; echo step 2 of 2"], 60),
    )?;
    let failing = submit(
        "writes to stderr and exits 3",
        job(&["sh", "-c", "echo 'something broke' >&2; exit 3"], 60),
    )?;
    wait_job(server, &ok, started).await?;
    wait_job(server, &failing, started).await?;
    let cancelled = submit(
        "sleeps; cancelled through the admin API",
        job(&["sleep", "300"], 60),
    )?;
    let slow = submit("sleeps past its 1 s timeout", job(&["sleep", "300"], 1))?;
    wait_running(server, &cancelled).await?;
    server.cancel_job(&cancelled).context("cancelling a job")?;
    say(&format!(
        "[{:>5} ms] cancel requested for {cancelled}",
        ms(started)
    ));
    wait_job(server, &cancelled, started).await?;
    wait_job(server, &slow, started).await?;
    Ok(())
}

/// Poll the dev-server until the job satisfies `done`, within the step timeout.
async fn wait_until(
    server: &DevServer,
    id: &str,
    what: &str,
    done: impl Fn(&crate::devserver::JobInfo) -> bool,
) -> anyhow::Result<crate::devserver::JobInfo> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let job = server
            .job(id)
            .context("reading a job")?
            .context("the job vanished")?;
        if done(&job) {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!("job {id} did not {what} in time ({:?})", job.state);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_running(server: &DevServer, id: &str) -> anyhow::Result<()> {
    wait_until(server, id, "start", |job| {
        job.state == crate::devserver::JobState::Running
    })
    .await?;
    Ok(())
}

async fn wait_job(server: &DevServer, id: &str, started: Instant) -> anyhow::Result<()> {
    let job = wait_until(server, id, "finish", |job| job.outcome.is_some()).await?;
    let outcome = job.outcome.map(|o| format!("{o:?}")).unwrap_or_default();
    let status = job
        .exit_status
        .map(|s| format!("{s:?}"))
        .unwrap_or_default();
    say(&format!(
        "[{:>5} ms] {id} finished: {outcome} ({status}, {} ms)",
        ms(started),
        job.duration_ms.unwrap_or(0)
    ));
    for stream in [OutputStream::Stdout, OutputStream::Stderr] {
        let name = if stream == OutputStream::Stdout {
            "stdout"
        } else {
            "stderr"
        };
        // The demo's jobs print a line or two; read a bounded head of each stream.
        let chunk = server
            .job_output(id, stream, 0, 64 * 1024)
            .context("reading the job's output")?;
        let bytes = chunk.bytes().context("decoding the job's output")?;
        for line in String::from_utf8_lossy(&bytes).lines() {
            say(&format!("            {name}| {line}"));
        }
    }
    Ok(())
}

async fn start_server(
    db: &Path,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<DevServer> {
    let mut config = DevServerConfig::ephemeral();
    config.db = Some(db.to_path_buf());
    config.session = SessionParams {
        heartbeat_interval_ms: 1_000,
        ack_timeout_ms: 500,
        runner_lost_threshold_ms: 10_000,
    };
    if let Some(addr) = listen {
        config.listen = addr;
    }
    DevServer::start(config)
        .await
        .context("starting the dev-server")
}

fn settings(url: &str, state_dir: &Path, token: String) -> anyhow::Result<RunnerSettings> {
    Ok(RunnerSettings {
        token: Some(Secret::new(token)),
        name: "demo-runner".into(),
        core: CoreConfig {
            slots: 2,
            drain_deadline_secs: 10,
            ..CoreConfig::default()
        },
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..RunnerSettings::new(
            runtime::settings::endpoint(url, false)?,
            state_dir.to_path_buf(),
        )
    })
}

/// Print every phase change as it happens, with the event that caused it.
async fn narrate(
    mut transitions: tokio::sync::broadcast::Receiver<runtime::Transition>,
    started: Instant,
) {
    while let Ok(t) = transitions.recv().await {
        say(&format!(
            "[{:>5} ms]   runner: {:<30} → {:<30} on {}",
            ms(started),
            t.from,
            t.to,
            t.event
        ));
    }
}

async fn wait_for(
    handle: &mut RunnerHandle,
    state: Lifecycle,
    after_transitions: u64,
) -> anyhow::Result<()> {
    let name = state.name();
    let reached = tokio::time::timeout(
        STEP_TIMEOUT,
        handle.wait_for(|s| s.lifecycle == Some(state) && s.transitions > after_transitions),
    )
    .await
    .with_context(|| format!("the runner did not reach {name} within {STEP_TIMEOUT:?}"))?;
    if reached.lifecycle != Some(state) {
        bail!(
            "the runner stopped in {} instead of reaching {name}",
            reached.phase
        );
    }
    Ok(())
}

fn summarise_hardware(report: &serde_json::Value) -> String {
    let cores = report
        .pointer("/cpu/logical_cores")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let memory = report
        .pointer("/memory/total_bytes")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let gpus = report
        .pointer("/gpus/kind")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown");
    format!(
        "{cores} cores, {:.1} GiB, GPUs: {gpus}",
        memory as f64 / f64::from(1u32 << 30)
    )
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for a scratch folder name: {e}"))?;
    let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("fyn-runner-demo-{name}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn ms(started: Instant) -> u128 {
    started.elapsed().as_millis()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
