//! What the runner reports about itself: the status behind `fyn-runner status`, the
//! demo's narration and the tests' waits. Derived from the core's getters after every
//! dispatch; it never feeds back into the core.

use crate::core::{Core, Event, FoundJob, Lifecycle, State};

/// What the runner is doing, for `status`, the demo and tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunnerStatus {
    pub state: String,
    /// `state`, typed, for what acts on it in this process (a status read back from
    /// the control socket has none).
    #[serde(skip)]
    pub lifecycle: Option<Lifecycle>,
    pub phase: String,
    pub runner_id: Option<String>,
    pub server: String,
    pub pid: u32,
    /// Unix milliseconds when the current state was entered.
    pub state_since_ms: u64,
    /// Unix milliseconds when the current session reached Active (none while not).
    pub session_since_ms: Option<u64>,
    /// Unix milliseconds of the last heartbeat acknowledgement.
    pub last_heartbeat_ack_ms: Option<u64>,
    pub slots: u32,
    pub jobs_running: usize,
    pub jobs: Vec<String>,
    /// The running jobs with their age, and which this process reattached (jobs its
    /// predecessor started, which their supervisors kept running).
    #[serde(default)]
    pub running: Vec<JobStatus>,
    pub outbox_depth: u64,
    /// The drain deadline in seconds, while draining.
    pub drain_deadline_secs: Option<u64>,
    /// The last failure the runner reported (registration refused, install step
    /// failed, identity rejected, ...), for the operator.
    pub problem: Option<String>,
    pub transitions: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`--metrics-listen`), with
    /// the port the system chose for port 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

/// One running job, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobStatus {
    /// `<job id>#<attempt>`.
    pub job: String,
    /// Unix milliseconds when it started (for a job of this process, when it was taken).
    pub since_ms: u64,
    /// Started by the previous runner process and kept by its supervisor.
    pub reattached: bool,
}

/// The running jobs, carried over from the previous status: a job found running at
/// start dates from its own start, one taken now from now.
fn running_jobs(
    core: &Core,
    previous: Option<&RunnerStatus>,
    event: Option<&Event>,
    now: u64,
) -> Vec<JobStatus> {
    let name = |job: &crate::protocol::JobRef| format!("{}#{}", job.job_id, job.attempt);
    let found = match event {
        Some(Event::JobFound {
            job,
            found: FoundJob::Running { elapsed_ms, .. },
        }) => Some((name(job), now.saturating_sub(*elapsed_ms))),
        _ => None,
    };
    core.running_jobs()
        .iter()
        .map(|job| {
            let job = name(job);
            if let Some((_, since_ms)) = found.as_ref().filter(|(id, _)| *id == job) {
                return JobStatus {
                    job,
                    since_ms: *since_ms,
                    reattached: true,
                };
            }
            previous
                .and_then(|p| p.running.iter().find(|s| s.job == job).cloned())
                .unwrap_or(JobStatus {
                    job,
                    since_ms: now,
                    reattached: false,
                })
        })
        .collect()
}

pub(crate) fn status_of(
    core: &Core,
    previous: Option<&RunnerStatus>,
    server: &str,
    event: Option<&Event>,
) -> RunnerStatus {
    let now = unix_ms();
    let state = core.state_name();
    let changed = previous.is_none_or(|p| p.state != state);
    let state = state.to_owned();
    let jobs = core.running_jobs();
    let draining = matches!(core.state(), State::Draining { .. });
    let session_since_ms = match (core.state(), previous) {
        (State::Active {} | State::Draining { .. }, Some(p)) if p.session_since_ms.is_some() => {
            p.session_since_ms
        }
        (State::Active {}, _) => Some(now),
        _ => None,
    };
    let heartbeat_acked = matches!(
        event,
        Some(Event::Message(
            crate::protocol::ServerMessage::HeartbeatAck { .. }
        ))
    );
    RunnerStatus {
        state,
        lifecycle: Some(core.lifecycle()),
        phase: core.phase(),
        runner_id: core.runner_id().map(str::to_owned),
        server: server.to_owned(),
        pid: std::process::id(),
        state_since_ms: if changed {
            now
        } else {
            previous.map_or(now, |p| p.state_since_ms)
        },
        session_since_ms,
        last_heartbeat_ack_ms: if heartbeat_acked {
            Some(now)
        } else {
            previous.and_then(|p| p.last_heartbeat_ack_ms)
        },
        slots: core.slots(),
        jobs_running: jobs.len(),
        jobs: jobs
            .iter()
            .map(|j| format!("{}#{}", j.job_id, j.attempt))
            .collect(),
        running: running_jobs(core, previous, event, now),
        outbox_depth: core.outbox_depth(),
        drain_deadline_secs: draining.then(|| core.drain_deadline_secs()),
        problem: previous.and_then(|p| p.problem.clone()),
        transitions: previous.map_or(0, |p| p.transitions)
            + u64::from(previous.is_some_and(|p| p.phase != core.phase())),
        metrics_listen: previous.and_then(|p| p.metrics_listen.clone()),
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
