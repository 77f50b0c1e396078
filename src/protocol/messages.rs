//! The messages themselves. Field names are the wire names; keep them stable.
//!
//! Fields whose JSON type does not say all are read through `fields` (indexes, base64,
//! hardware payloads); optional fields are read through an `…OnWire` twin so omitted
//! and `null` mean the same.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::fields;
use super::hardware::{HardwareChanges, HardwareReport};
use super::job::{
    ExitStatus, JobOutcome, JobPhase, JobRef, JobSpec, JobUsage, OutputStream, RejectReason,
};

/// The longest `job_progress.message` a runner sends, in bytes of UTF-8.
pub const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;

/// Session parameters the API hands the runner when it authenticates. Every field is
/// optional (omitted or `null` means the default); the values must describe a session
/// that can detect a dead link: all of them at least 1, and `ack_timeout_ms` below
/// `heartbeat_interval_ms` (otherwise each heartbeat would re-arm the reply timer
/// before it could fire). A session that breaks this is a bad frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SessionParamsOnWire")]
pub struct SessionParams {
    /// How often the runner sends `heartbeat` while Active or Draining.
    pub heartbeat_interval_ms: u64,
    /// How long the runner waits for a `heartbeat_ack` before it declares the link dead.
    /// Must be below the interval. Handshake steps use the runner's own timeout.
    pub ack_timeout_ms: u64,
    /// How long the API keeps a disconnected runner's jobs before it declares them lost.
    /// The runner uses the same figure to cancel them locally, so no job runs twice.
    pub runner_lost_threshold_ms: u64,
}

impl Default for SessionParams {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 15_000,
            ack_timeout_ms: 10_000,
            runner_lost_threshold_ms: 120_000,
        }
    }
}

/// `SessionParams` as read from a frame: optional fields as `Option`s.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionParamsOnWire {
    heartbeat_interval_ms: Option<u64>,
    ack_timeout_ms: Option<u64>,
    runner_lost_threshold_ms: Option<u64>,
}

impl TryFrom<SessionParamsOnWire> for SessionParams {
    type Error = String;

    fn try_from(wire: SessionParamsOnWire) -> Result<Self, String> {
        let default = Self::default();
        let params = Self {
            heartbeat_interval_ms: wire
                .heartbeat_interval_ms
                .unwrap_or(default.heartbeat_interval_ms),
            ack_timeout_ms: wire.ack_timeout_ms.unwrap_or(default.ack_timeout_ms),
            runner_lost_threshold_ms: wire
                .runner_lost_threshold_ms
                .unwrap_or(default.runner_lost_threshold_ms),
        };
        if params.heartbeat_interval_ms == 0
            || params.ack_timeout_ms == 0
            || params.runner_lost_threshold_ms == 0
        {
            return Err("session times must be at least 1 ms".into());
        }
        if params.ack_timeout_ms >= params.heartbeat_interval_ms {
            return Err(format!(
                "ack_timeout_ms ({}) must be below heartbeat_interval_ms ({})",
                params.ack_timeout_ms, params.heartbeat_interval_ms
            ));
        }
        Ok(params)
    }
}

/// Everything the API may send to a runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// First frame on every connection: the version and a fresh challenge.
    Hello {
        protocol: u32,
        nonce: String,
    },
    TokenAccepted {},
    TokenRejected {
        reason: String,
    },
    Registered {
        runner_id: String,
    },
    Authenticated {
        runner_id: String,
        /// The highest event index the API holds for this runner.
        #[serde(deserialize_with = "fields::position")]
        last_event_index: u64,
        session: SessionParams,
        /// Whether the API holds a hardware record for this runner.
        hardware_known: bool,
    },
    AuthRejected {
        reason: String,
    },
    StartupAck {},
    HardwareConfirmed {},
    ReadyAck {},
    HeartbeatAck {
        #[serde(deserialize_with = "fields::index")]
        seq: u64,
    },
    /// A command with its monotonic index; resent after reconnect until acknowledged.
    Command {
        #[serde(deserialize_with = "fields::index")]
        index: u64,
        command: Command,
    },
    /// All events up to and including `up_to` are stored by the API.
    EventsAck {
        #[serde(deserialize_with = "fields::position")]
        up_to: u64,
    },
    /// A newer session of the same runner took over; this one must stop, not reconnect.
    Evicted {
        reason: String,
    },
    /// The answer to `leaving`: the API has forgotten this runner.
    Left {},
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    StartJob { job: JobSpec },
    CancelJob { job_id: String, attempt: u32 },
    Drain { deadline_secs: Option<u64> },
}

/// Everything a runner may send to the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunnerMessage {
    ValidateToken {
        token: String,
    },
    Register {
        public_key: String,
        name: String,
        version: String,
        slots: u32,
    },
    Authenticate {
        runner_id: String,
        /// Base64 Ed25519 signature over `fyn-runner-auth:v1:{nonce}:{runner_id}`.
        signature: String,
        name: String,
        version: String,
        slots: u32,
        #[serde(deserialize_with = "fields::position")]
        last_command_index: u64,
    },
    Startup {
        version: String,
        jobs: Vec<JobRef>,
    },
    /// Boxed: a record is large, and most messages are small.
    HardwareFull {
        report: Box<HardwareReport>,
    },
    HardwareChanges {
        changes: HardwareChanges,
    },
    HardwareUnchanged {},
    Ready {
        slots_free: u32,
    },
    Heartbeat {
        #[serde(deserialize_with = "fields::index")]
        seq: u64,
        jobs_running: u32,
    },
    CommandAck {
        #[serde(deserialize_with = "fields::index")]
        index: u64,
    },
    Event {
        #[serde(deserialize_with = "fields::index")]
        index: u64,
        /// Shared, not copied: the runner sends the event its outbox stored. The JSON
        /// is the event's own.
        event: Arc<RunnerEvent>,
    },
    Stopping {
        reason: String,
        deadline_secs: u64,
    },
    /// Sent by `fyn-runner uninstall` after authenticating: this runner is going away
    /// for good; the API gives its unfinished jobs to others and forgets its identity.
    Leaving {
        reason: String,
    },
}

/// Events a runner reports; each carries an index in its `event` envelope and stays in
/// the runner's outbox until an `events_ack` covers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
pub enum RunnerEvent {
    JobAccepted {
        job: JobRef,
    },
    JobRejected {
        job: JobRef,
        reason: RejectReason,
        detail: String,
    },
    JobStarted {
        job: JobRef,
        pid: u32,
    },
    JobOutput {
        job: JobRef,
        stream: OutputStream,
        /// Byte offset of `data` within the stream.
        offset: u64,
        /// Base64 of the raw bytes, so binary output survives a JSON text frame.
        #[serde(deserialize_with = "fields::base64")]
        data: String,
    },
    /// The stream passed the job's output limit; nothing after `offset` is sent.
    JobOutputTruncated {
        job: JobRef,
        stream: OutputStream,
        offset: u64,
    },
    JobFinished {
        job: JobRef,
        outcome: JobOutcome,
        status: ExitStatus,
        duration_ms: u64,
        stdout_bytes: u64,
        stderr_bytes: u64,
        /// Optional: why the attempt failed when the runner knows more than the exit
        /// status says (its process could not be started: no such program, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// Accounting, each optional (absent when not measured): CPU time of the job's
        /// processes in user and kernel mode, the peak resident memory of the largest
        /// of them, the time from `job_accepted` to the end (all phases), and the
        /// peak GPU memory its processes held together.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_user_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_system_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peak_rss_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wall_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gpu_memory_peak_bytes: Option<u64>,
    },
    /// The job entered a step no other event marks (fetching its inputs, uploading its
    /// outputs, ...).
    JobPhase {
        job: JobRef,
        phase: JobPhase,
    },
    /// What the job says of its progress: the latest of a burst (the runner coalesces).
    JobProgress {
        job: JobRef,
        /// How far along, 0 to 1.
        #[serde(
            default,
            deserialize_with = "fields::fraction",
            skip_serializing_if = "Option::is_none"
        )]
        fraction: Option<f64>,
        /// At most 1,024 bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The job wrote a key-value pair; writes arrive in the order the job made them.
    JobKvPut {
        job: JobRef,
        key: String,
        value: String,
    },
    /// One output file is uploaded, complete, with this checksum and size.
    JobOutputFile {
        job: JobRef,
        /// Below `work/`.
        path: String,
        url: String,
        sha256: String,
        size: u64,
    },
    /// One output file could not be uploaded, for good (the store refused it, or it
    /// could not be read).
    JobOutputFailed {
        job: JobRef,
        path: String,
        reason: String,
    },
    /// The uploads are over: how many files went up, how many failed, and the
    /// declared outputs that were not there (a path missing, a glob matching nothing).
    JobOutputs {
        job: JobRef,
        uploaded: u32,
        failed: u32,
        missing: Vec<String>,
    },
    HardwareChanged {
        changes: HardwareChanges,
    },
    /// The runner read the index of command `index` but cannot decode or apply the
    /// command, and never will: it says why here (durably, like every event), then
    /// acknowledges the index. The server retires the command and resends it no more.
    CommandRejected {
        #[serde(deserialize_with = "fields::index")]
        index: u64,
        reason: String,
    },
}

impl RunnerEvent {
    /// The accounting a `job_finished` carries.
    pub fn usage(&self) -> Option<JobUsage> {
        match self {
            Self::JobFinished {
                cpu_user_ms,
                cpu_system_ms,
                peak_rss_bytes,
                wall_ms,
                gpu_memory_peak_bytes,
                ..
            } => Some(JobUsage {
                cpu_user_ms: *cpu_user_ms,
                cpu_system_ms: *cpu_system_ms,
                peak_rss_bytes: *peak_rss_bytes,
                wall_ms: *wall_ms,
                gpu_memory_peak_bytes: *gpu_memory_peak_bytes,
            }),
            _ => None,
        }
    }

    /// The job attempt an event is about, for the events that are about one.
    pub fn job(&self) -> Option<&JobRef> {
        match self {
            Self::JobAccepted { job }
            | Self::JobRejected { job, .. }
            | Self::JobStarted { job, .. }
            | Self::JobOutput { job, .. }
            | Self::JobOutputTruncated { job, .. }
            | Self::JobFinished { job, .. }
            | Self::JobPhase { job, .. }
            | Self::JobProgress { job, .. }
            | Self::JobKvPut { job, .. }
            | Self::JobOutputFile { job, .. }
            | Self::JobOutputFailed { job, .. }
            | Self::JobOutputs { job, .. } => Some(job),
            Self::HardwareChanged { .. } | Self::CommandRejected { .. } => None,
        }
    }

    /// The wire name of the event kind, for logs and traces: serde's tag, by the same
    /// snake_case rule.
    pub fn kind(&self) -> &'static str {
        self.into()
    }
}
