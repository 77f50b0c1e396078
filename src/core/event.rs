//! The single input type of the lifecycle machine.
//!
//! Every way the world can affect the runner arrives as one `Event`: the socket, a
//! decoded API message, a timer, a job process, an OS signal, or a local step the
//! runtime finished. Times and random choices never appear here implicitly; what the
//! core needs to know travels as data.

use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr, VariantArray};

use crate::protocol::{
    CloseReason, ExitStatus, HardwareChanges, HardwareReport, JobRef, JobUsage, OutputStream,
    ServerMessage,
};

use super::effect::{CancelReason, TimerKind};
use super::hooks::{HookOutcome, HookPoint};
use super::job_files::FetchOutcome;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    // --- local steps the runtime performed for the core ---
    /// The install step or persistence step the core asked for finished.
    StepDone,
    StepFailed {
        error: String,
    },
    /// A new identity key pair exists; the public half travels with `register`.
    KeyGenerated {
        public_key: String,
    },
    /// Boxed: a record is large, and most events are small.
    HardwareCollected {
        report: Box<HardwareReport>,
        cache: HardwareCache,
    },
    HardwareFailed {
        error: String,
    },
    /// The durable store refused a write (disk full, permissions, corruption).
    StoreFailed {
        error: String,
    },

    // --- the socket ---
    SocketOpened,
    SocketClosed {
        code: Option<u16>,
        reason: String,
    },
    SocketFailed {
        error: String,
    },
    /// A frame arrived that could not be decoded; `close` is how to answer it.
    BadFrame {
        close: CloseReason,
        error: String,
    },
    /// A decoded message from the API.
    Message(ServerMessage),
    /// A `command` frame whose index could be read but whose command could not (an
    /// unknown kind, a field of the wrong type, a spec that cannot be read): it is
    /// answered under its index (`command_rejected`), not closed on.
    UnreadableCommand {
        index: u64,
        error: String,
    },

    // --- timers (the runtime only delivers timers that are still armed) ---
    TimerFired {
        timer: TimerKind,
    },

    // --- job processes ---
    JobStarted {
        job: JobRef,
        pid: u32,
    },
    JobOutput {
        job: JobRef,
        stream: OutputStream,
        offset: u64,
        data: Vec<u8>,
    },
    JobOutputTruncated {
        job: JobRef,
        stream: OutputStream,
        offset: u64,
    },
    JobExited {
        job: JobRef,
        status: ExitStatus,
        duration_ms: u64,
        stdout_bytes: u64,
        stderr_bytes: u64,
        /// The reason of a cancel the job's supervisor recorded with its end that this
        /// process did not ask for: one it carried out on its own (its lease ran out,
        /// it was itself told to stop) or one an earlier runner process asked for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cancel: Option<CancelReason>,
        /// What the job's processes used (`job_finished`'s accounting), as far as the
        /// runtime measured it; empty when it could not.
        #[serde(default, skip_serializing_if = "JobUsage::is_empty")]
        usage: JobUsage,
    },
    JobSpawnFailed {
        job: JobRef,
        error: String,
    },
    /// At start, what became of a job the store holds from the previous process: its
    /// supervisor still runs it, it ended while no runner was there, or neither (its
    /// supervisor is gone without a record). The runtime only reports what it found;
    /// the job's output and `JobExited` follow as for any job.
    JobFound {
        job: JobRef,
        found: FoundJob,
    },

    /// The job reported its progress through its endpoint (the latest of a window: the
    /// endpoint coalesces, it has the clock).
    JobProgressed {
        job: JobRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fraction: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The job wrote a key-value pair through its endpoint (its `put` waits until the
    /// batch this event's effects belong to is durable).
    JobKvWritten {
        job: JobRef,
        key: String,
        value: String,
    },
    /// Fetching a job's inputs ended (`Effect::FetchInputs`).
    InputsFetched {
        job: JobRef,
        outcome: FetchOutcome,
    },

    /// One output file is uploaded, complete (`Effect::UploadOutputs`).
    OutputUploaded {
        job: JobRef,
        /// Below `work/`.
        path: String,
        /// Where it went, without the query.
        url: String,
        sha256: String,
        size: u64,
    },
    /// One output file could not be uploaded, for good (or was refused: a link).
    OutputFailed {
        job: JobRef,
        path: String,
        reason: String,
    },
    /// The uploads are over (or were abandoned because the core stopped the job);
    /// `missing`: the declared paths and globs that named no file.
    UploadsDone {
        job: JobRef,
        missing: Vec<String>,
        /// The job's wall time so far (from its acceptance), as the runtime measured
        /// it: `job_finished`'s `wall_ms`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wall_ms: Option<u64>,
    },

    // --- the operator's hooks ---
    /// A hook the core asked for ended (`job`: the job of a `pre_job` or `post_job`).
    HookFinished {
        hook: HookPoint,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobRef>,
        outcome: HookOutcome,
    },

    // --- the operator ---
    /// SIGTERM, Ctrl-C, `fyn-runner drain` or the service manager: drain and stop.
    ShutdownRequested {
        deadline_secs: Option<u64>,
        /// Who asked; `stopping.reason` says it. `None` only in traces recorded before
        /// the origin was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<StopOrigin>,
    },
    /// A second signal, or `drain --force`: stop now, cancelling running jobs.
    ForceShutdown,
    /// SIGTERM or SIGINT (a service manager's stop or restart): stop now and leave
    /// running jobs to their supervisors, which keep running them; the next start
    /// reattaches them.
    StopRequested,
}

/// What the runtime found of a job at start (`Event::JobFound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "found", rename_all = "snake_case")]
pub enum FoundJob {
    /// Its supervisor runs it: the runner reattached it. `elapsed_ms` is the time since
    /// the job started, so its timeout still counts from then. `cancel` is the reason a
    /// cancel the previous process asked for was given, if any.
    Running {
        elapsed_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cancel: Option<CancelReason>,
    },
    /// It ended while no runner was there; its supervisor recorded how.
    Ended {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cancel: Option<CancelReason>,
    },
    /// Neither: no supervisor and no record of its end (what a job started before
    /// supervisors, or one whose supervisor was killed, leaves).
    Lost,
}

impl FoundJob {
    pub fn name(self) -> &'static str {
        match self {
            Self::Running { .. } => "running",
            Self::Ended { .. } => "ended",
            Self::Lost => "lost",
        }
    }

    /// The cancel the previous process asked for, as the supervisor recorded it.
    pub fn cancel(self) -> Option<CancelReason> {
        match self {
            Self::Running { cancel, .. } | Self::Ended { cancel } => cancel,
            Self::Lost => None,
        }
    }
}

/// Who asked the runner to stop (a drain), as `stopping.reason` tells the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOrigin {
    /// SIGTERM or SIGINT (Ctrl-C; on Windows a console event): an operator, or a
    /// service manager that stops its services with a signal (systemd, launchd).
    Signal,
    /// The Windows service control manager's stop.
    ServiceManager,
    /// `fyn-runner drain`, through the control socket.
    DrainCommand,
    /// `fyn-runner uninstall`, through the control socket.
    Uninstall,
    /// The program that runs the runner in its own process (the demo, a test).
    Embedder,
}

impl StopOrigin {
    /// `stopping.reason`: text for people (protocol §11 lists them).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Signal => "stop signal (SIGTERM or Ctrl-C)",
            Self::ServiceManager => "the service manager stopped the runner",
            Self::DrainCommand => "fyn-runner drain on the runner's machine",
            Self::Uninstall => "fyn-runner uninstall: the runner is being removed",
            Self::Embedder => "the program running the runner asked it to stop",
        }
    }
}

/// What the runtime found when it compared the collected hardware with its cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cache", rename_all = "snake_case")]
pub enum HardwareCache {
    Missing,
    Unchanged,
    Changed { changes: HardwareChanges },
}

/// The fieldless name of every event kind: the vocabulary of the spec table, which
/// names each kind exactly as the variant is written (`HeartbeatDue`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    IntoStaticStr,
    EnumString,
    VariantArray,
)]
pub enum EventKind {
    StepDone,
    StepFailed,
    KeyGenerated,
    HardwareCollected,
    HardwareFailed,
    StoreFailed,
    SocketOpened,
    SocketClosed,
    SocketFailed,
    BadFrame,
    UnreadableCommand,
    Hello,
    TokenAccepted,
    TokenRejected,
    Registered,
    Authenticated,
    AuthRejected,
    StartupAck,
    HardwareConfirmed,
    ReadyAck,
    HeartbeatAck,
    StartJob,
    CancelJob,
    DrainCommand,
    EventsAck,
    Evicted,
    Left,
    HeartbeatDue,
    AckOverdue,
    BackoffElapsed,
    RunnerLostElapsed,
    DrainDeadline,
    HardwareRecheckDue,
    DrainProgressDue,
    JobTimeout,
    JobStarted,
    JobOutput,
    JobOutputTruncated,
    JobExited,
    JobSpawnFailed,
    JobProgressed,
    JobKvWritten,
    InputsFetched,
    OutputUploaded,
    OutputFailed,
    UploadsDone,
    HookFinished,
    JobFound,
    ShutdownRequested,
    ForceShutdown,
    StopRequested,
}

impl EventKind {
    pub const ALL: &'static [EventKind] = <Self as VariantArray>::VARIANTS;

    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<Self> {
        name.parse().ok()
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        use crate::protocol::Command;
        match self {
            Self::StepDone => EventKind::StepDone,
            Self::StepFailed { .. } => EventKind::StepFailed,
            Self::KeyGenerated { .. } => EventKind::KeyGenerated,
            Self::HardwareCollected { .. } => EventKind::HardwareCollected,
            Self::HardwareFailed { .. } => EventKind::HardwareFailed,
            Self::StoreFailed { .. } => EventKind::StoreFailed,
            Self::SocketOpened => EventKind::SocketOpened,
            Self::SocketClosed { .. } => EventKind::SocketClosed,
            Self::SocketFailed { .. } => EventKind::SocketFailed,
            Self::BadFrame { .. } => EventKind::BadFrame,
            Self::UnreadableCommand { .. } => EventKind::UnreadableCommand,
            Self::Message(message) => match message {
                ServerMessage::Hello { .. } => EventKind::Hello,
                ServerMessage::TokenAccepted {} => EventKind::TokenAccepted,
                ServerMessage::TokenRejected { .. } => EventKind::TokenRejected,
                ServerMessage::Registered { .. } => EventKind::Registered,
                ServerMessage::Authenticated { .. } => EventKind::Authenticated,
                ServerMessage::AuthRejected { .. } => EventKind::AuthRejected,
                ServerMessage::StartupAck {} => EventKind::StartupAck,
                ServerMessage::HardwareConfirmed {} => EventKind::HardwareConfirmed,
                ServerMessage::ReadyAck {} => EventKind::ReadyAck,
                ServerMessage::HeartbeatAck { .. } => EventKind::HeartbeatAck,
                ServerMessage::Command { command, .. } => match command {
                    Command::StartJob { .. } => EventKind::StartJob,
                    Command::CancelJob { .. } => EventKind::CancelJob,
                    Command::Drain { .. } => EventKind::DrainCommand,
                },
                ServerMessage::EventsAck { .. } => EventKind::EventsAck,
                ServerMessage::Evicted { .. } => EventKind::Evicted,
                ServerMessage::Left {} => EventKind::Left,
            },
            Self::TimerFired { timer } => match timer {
                TimerKind::Heartbeat => EventKind::HeartbeatDue,
                TimerKind::Ack => EventKind::AckOverdue,
                TimerKind::Backoff => EventKind::BackoffElapsed,
                TimerKind::RunnerLost => EventKind::RunnerLostElapsed,
                TimerKind::DrainDeadline => EventKind::DrainDeadline,
                TimerKind::HardwareRecheck => EventKind::HardwareRecheckDue,
                TimerKind::DrainProgress => EventKind::DrainProgressDue,
                TimerKind::JobTimeout(_) => EventKind::JobTimeout,
            },
            Self::JobStarted { .. } => EventKind::JobStarted,
            Self::JobOutput { .. } => EventKind::JobOutput,
            Self::JobOutputTruncated { .. } => EventKind::JobOutputTruncated,
            Self::JobExited { .. } => EventKind::JobExited,
            Self::JobSpawnFailed { .. } => EventKind::JobSpawnFailed,
            Self::JobProgressed { .. } => EventKind::JobProgressed,
            Self::JobKvWritten { .. } => EventKind::JobKvWritten,
            Self::InputsFetched { .. } => EventKind::InputsFetched,
            Self::OutputUploaded { .. } => EventKind::OutputUploaded,
            Self::OutputFailed { .. } => EventKind::OutputFailed,
            Self::UploadsDone { .. } => EventKind::UploadsDone,
            Self::HookFinished { .. } => EventKind::HookFinished,
            Self::JobFound { .. } => EventKind::JobFound,
            Self::ShutdownRequested { .. } => EventKind::ShutdownRequested,
            Self::ForceShutdown => EventKind::ForceShutdown,
            Self::StopRequested => EventKind::StopRequested,
        }
    }
}
