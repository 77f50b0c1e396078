//! The admin API's JSON types. `DevServer`'s read accessors return the same types, so
//! a test sees exactly what an HTTP client would; `fyn-runner ctl` decodes them too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::job_side::{InputRequest, JobProgress, JobUsage, OutputRequest};
use crate::protocol::{ExitStatus, JobOutcome, OutputStream};

/// Where a job stands as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a runner with a free slot.
    Queued,
    /// `start_job` is persisted for a runner; no answer yet.
    Assigned,
    /// The runner took the job (`job_accepted`).
    Accepted,
    /// The process runs (`job_started`).
    Running,
    /// `job_finished` with outcome succeeded, failed or timed_out.
    Finished,
    /// Cancelled while queued, or `job_finished` with outcome cancelled.
    Cancelled,
    /// `job_finished` with outcome lost: the runner could not see the process end.
    Lost,
    /// The runner refused the spec as invalid; retrying cannot help.
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Accepted => "accepted",
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Assigned,
            Self::Accepted,
            Self::Running,
            Self::Finished,
            Self::Cancelled,
            Self::Lost,
            Self::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }

    /// Handed to a runner and not ended: the job holds one of that runner's slots.
    pub fn on_runner(self) -> bool {
        matches!(self, Self::Assigned | Self::Accepted | Self::Running)
    }

    /// Nothing will change the job any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Finished | Self::Cancelled | Self::Lost | Self::Failed
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The runner's lifecycle state as far as the control plane can tell from the
/// messages it received; `Disconnected` when no session is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunnerState {
    Validating,
    HardwareSync,
    Ready,
    Active,
    Draining,
    Disconnected,
}

/// One runner, as `GET /admin/v1/runners` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerInfo {
    pub id: String,
    pub name: String,
    pub version: String,
    pub state: RunnerState,
    pub connected: bool,
    /// Unix milliseconds of the last message received from the runner.
    pub last_seen: Option<u64>,
    pub slots: u32,
    /// Slots not taken by a job this control plane assigned to the runner.
    pub slots_free: u32,
    /// No job is assigned to it: it said `stopping`, or was told to drain.
    pub draining: bool,
    /// The stored hardware report, with every change applied.
    pub hardware: Option<serde_json::Value>,
    /// Whether the next `authenticated` says `hardware_known: true`.
    pub hardware_known: bool,
    /// Highest event index stored for this runner.
    pub last_event_index: u64,
    /// Highest command index issued to this runner (0: none yet).
    pub last_command_index: u64,
    /// Commands issued and not acknowledged yet.
    pub unacked_commands: u64,
}

/// The body of `POST /admin/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// argv; the first element is the program. Never run through a shell.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A relative folder inside the job's folder to start in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    pub timeout_secs: u64,
    #[serde(default)]
    pub output_limit_bytes: Option<u64>,
    #[serde(default)]
    pub cancel_grace_secs: Option<u64>,
    /// Files placed in the job's `work/` before it starts (each a stored blob).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputRequest>,
    /// Files uploaded from `work/` after the process ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputRequest>,
    /// Key-value pairs the job can read from its start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kv: BTreeMap<String, String>,
}

/// One job, as `GET /admin/v1/jobs/{id}` shows it. Its output is not in it (a job may
/// print gigabytes): `stdout_bytes`/`stderr_bytes` say how much is held, and
/// `GET /admin/v1/jobs/{id}/output` reads it ([`OutputPage`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: String,
    pub state: JobState,
    /// The current attempt; a runner-lost re-queue starts the next one.
    pub attempt: u32,
    /// The runner the current attempt is assigned to.
    pub runner: Option<String>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub timeout_secs: u64,
    pub output_limit_bytes: u64,
    pub cancel_grace_secs: u64,
    pub cancel_requested: bool,
    pub outcome: Option<JobOutcome>,
    pub exit_status: Option<ExitStatus>,
    pub duration_ms: Option<u64>,
    /// Bytes of output held for the current attempt.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// The runner reported that a stream passed the output limit.
    pub truncated: bool,
    /// Why the job failed to start, was rejected or re-queued, when it did.
    pub detail: Option<String>,
    /// Unix milliseconds.
    pub created: u64,
    pub inputs: Vec<InputRequest>,
    pub outputs: Vec<OutputRequest>,
    /// The pairs given at submission with every write of the job applied.
    pub kv: BTreeMap<String, String>,
    /// What the current attempt's runner last said of its phase and progress.
    pub progress: Option<JobProgress>,
    /// The accounting of the ended attempt.
    pub usage: Option<JobUsage>,
}

/// A range of a job's output (`GET /admin/v1/jobs/{id}/output`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputPage {
    pub job_id: String,
    /// The attempt the bytes belong to. A re-queued job starts its output again: a
    /// reader that sees the attempt change starts again from offset 0.
    pub attempt: u32,
    pub stream: OutputStream,
    /// Where `data` starts in the stream.
    pub offset: u64,
    /// The bytes, standard base64 (output need not be text).
    pub data: String,
    /// The offset to ask for next: `offset` plus the length of `data`.
    pub next_offset: u64,
    /// How many bytes of the stream are held now.
    pub held_bytes: u64,
    /// The job has ended and every held byte up to here was read: no more will come.
    pub complete: bool,
    pub state: JobState,
}

impl OutputPage {
    /// The bytes of `data`.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(&self.data)
    }
}

/// One stored event (`GET /admin/v1/runners/{id}/events`). The bytes of `job_output`
/// live with the job; its stored body keeps only their length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub index: u64,
    pub kind: String,
    pub body: serde_json::Value,
    /// Unix milliseconds.
    pub received: u64,
}

/// `{"token": ...}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
}

/// `{"id": ...}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCreated {
    pub id: String,
}

/// The body of `POST /admin/v1/runners/{id}/drain` (optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

/// `{"command_index": n}`: the index the command was issued under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandIssued {
    pub command_index: u64,
}

/// Every error response: `{"error": "..."}`, with `"field"` naming the job field at
/// fault when a job is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
