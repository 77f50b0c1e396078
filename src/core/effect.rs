//! The single output type of the lifecycle machine, and the context it fills.
//!
//! An `Effect` says what must happen; the runtime decides how. Effects never name a
//! runtime type. The runtime performs one batch in this order: persist (one
//! transaction for the whole batch), send, close, timers, processes, notices, exit.
//! That order is what makes "persist before send" hold by construction.

use serde::{Deserialize, Serialize};

use crate::protocol::{CloseReason, JobRef, JobSpec, RunnerEvent};

/// Every timer the core can arm. Arming one that is armed replaces it; the runtime
/// never delivers a timer that was cancelled or replaced.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    Heartbeat,
    /// Waiting for the reply the current phase expects (handshake step or heartbeat).
    Ack,
    Backoff,
    RunnerLost,
    DrainDeadline,
    HardwareRecheck,
    JobTimeout(JobRef),
}

impl TimerKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::Ack => "ack",
            Self::Backoff => "backoff",
            Self::RunnerLost => "runner_lost",
            Self::DrainDeadline => "drain_deadline",
            Self::HardwareRecheck => "hw_recheck",
            Self::JobTimeout(_) => "job_timeout",
        }
    }
}

/// How long a timer runs. Backoff delays are left to the runtime, which draws the
/// jitter and records the delay it chose in the trace, so the core stays deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delay {
    Millis(u64),
    /// Exponential backoff with full jitter for this attempt (1 = first retry).
    Backoff {
        attempt: u32,
    },
}

/// What must be sent. The runtime adds what the core must not hold: the one-time
/// token, the signature, the runner's name and version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "snake_case")]
pub enum Outbound {
    ValidateToken,
    Register {
        public_key: String,
        slots: u32,
    },
    Authenticate {
        nonce: String,
        runner_id: String,
        slots: u32,
        last_command_index: u64,
    },
    Startup {
        jobs: Vec<JobRef>,
    },
    HardwareFull {
        report: serde_json::Value,
    },
    HardwareChanges {
        changes: serde_json::Value,
    },
    HardwareUnchanged,
    Ready {
        slots_free: u32,
    },
    Heartbeat {
        seq: u64,
        jobs_running: u32,
    },
    CommandAck {
        index: u64,
    },
    Event {
        index: u64,
        event: RunnerEvent,
    },
    Stopping {
        reason: String,
        deadline_secs: u64,
    },
}

impl Outbound {
    pub fn name(&self) -> &'static str {
        match self {
            Self::ValidateToken => "validate_token",
            Self::Register { .. } => "register",
            Self::Authenticate { .. } => "authenticate",
            Self::Startup { .. } => "startup",
            Self::HardwareFull { .. } => "hardware_full",
            Self::HardwareChanges { .. } => "hardware_changes",
            Self::HardwareUnchanged => "hardware_unchanged",
            Self::Ready { .. } => "ready",
            Self::Heartbeat { .. } => "heartbeat",
            Self::CommandAck { .. } => "command_ack",
            Self::Event { .. } => "event",
            Self::Stopping { .. } => "stopping",
        }
    }
}

/// What must become durable. All `Persist` effects of one batch commit together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "write", rename_all = "snake_case")]
pub enum Durable {
    Identity {
        runner_id: String,
    },
    LastApplied {
        index: u64,
    },
    OutboxAppend {
        index: u64,
        event: RunnerEvent,
    },
    OutboxAcked {
        up_to: u64,
    },
    /// The API holds events up to `api_last`, past any this runner's store has sent
    /// (`sent_up_to`): the store went back in time (restored from an older copy).
    /// Events after `sent_up_to`, made since and never sent, move up to follow
    /// `api_last`, in order, and numbering goes on after them.
    OutboxRenumbered {
        sent_up_to: u64,
        api_last: u64,
    },
    JobAdded {
        job: JobSpec,
    },
    JobRemoved {
        job: JobRef,
    },
    HardwareCache {
        report: serde_json::Value,
    },
}

impl Durable {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Identity { .. } => "identity",
            Self::LastApplied { .. } => "last_applied",
            Self::OutboxAppend { .. } => "outbox",
            Self::OutboxAcked { .. } => "outbox_acked",
            Self::OutboxRenumbered { .. } => "outbox_renumbered",
            Self::JobAdded { .. } => "job_added",
            Self::JobRemoved { .. } => "job_removed",
            Self::HardwareCache { .. } => "hw_cache",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallStep {
    CreateDirectories,
    WriteConfig,
    InstallService,
}

impl InstallStep {
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateDirectories => "create_dirs",
            Self::WriteConfig => "write_config",
            Self::InstallService => "install_service",
        }
    }
}

/// Why the core asks for a job to be stopped; it decides the reported outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The API cancelled it.
    Cancelled,
    TimedOut,
    /// The link stayed down past the runner-lost threshold; the API has given it away.
    RunnerLost,
    /// A forced shutdown (second signal or drain deadline).
    Shutdown,
    /// The runner must stop at once (eviction, rejected identity, store failure).
    Abandoned,
}

impl CancelReason {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timeout",
            Self::RunnerLost => "runner_lost",
            Self::Shutdown => "shutdown",
            Self::Abandoned => "abandoned",
        }
    }
}

/// Something the operator must be told, beyond the transition log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    Registered {
        runner_id: String,
    },
    InstallFailed {
        error: String,
    },
    RegistrationFailed {
        reason: String,
    },
    AuthRejected {
        reason: String,
    },
    Incompatible {
        server_protocol: u32,
    },
    Evicted {
        reason: String,
    },
    ProtocolViolation {
        phase: String,
        got: String,
    },
    BadFrame {
        error: String,
    },
    HardwareFailed {
        error: String,
    },
    RunnerLost,
    StoreFailed {
        error: String,
    },
    /// A command or job event about a job this runner does not run (or a stale attempt).
    StaleJob {
        job: JobRef,
        what: String,
    },
}

impl Notice {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "registered",
            Self::InstallFailed { .. } => "install_failed",
            Self::RegistrationFailed { .. } => "registration_failed",
            Self::AuthRejected { .. } => "auth_rejected",
            Self::Incompatible { .. } => "incompatible",
            Self::Evicted { .. } => "evicted",
            Self::ProtocolViolation { .. } => "violation",
            Self::BadFrame { .. } => "bad_frame",
            Self::HardwareFailed { .. } => "hardware_failed",
            Self::RunnerLost => "runner_lost",
            Self::StoreFailed { .. } => "store_failed",
            Self::StaleJob { .. } => "stale_job",
        }
    }
}

/// Process exit codes, documented in `docs/operations.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitCode {
    /// Clean stop: drained, installed, or stopped with nothing running.
    Clean,
    /// The durable store failed.
    StoreFailure,
    /// Forced stop: a second signal or the drain deadline cancelled running jobs.
    Forced,
    /// Installation or registration failed (or was interrupted) and was rolled back.
    RegistrationFailed,
    /// A newer session of the same runner took over.
    Evicted,
    /// The API refused this runner's identity.
    AuthRejected,
    /// The API speaks another protocol version.
    Incompatible,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        match self {
            Self::Clean => 0,
            Self::StoreFailure => 1,
            Self::Forced => 2,
            Self::RegistrationFailed => 3,
            Self::Evicted => 4,
            Self::AuthRejected => 5,
            Self::Incompatible => 6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    OpenConnection,
    Send(Outbound),
    /// Send every outbox event with an index above `after`, in order.
    ResendOutbox {
        after: u64,
    },
    Close {
        reason: CloseReason,
    },
    StartTimer {
        timer: TimerKind,
        delay: Delay,
    },
    CancelTimer {
        timer: TimerKind,
    },
    SpawnJob {
        job: JobSpec,
    },
    /// SIGTERM to the job's process group, `grace_secs`, then SIGKILL.
    CancelJob {
        job: JobRef,
        reason: CancelReason,
        grace_secs: u64,
    },
    Persist(Durable),
    RunInstallStep {
        step: InstallStep,
    },
    /// Undo every install step that ran: folders, files, identity, service.
    RollbackInstall,
    GenerateKey,
    CollectHardware,
    Notify(Notice),
    /// Kill what is left of any job process group, then exit with this code.
    Exit {
        code: ExitCode,
    },
}

impl Effect {
    /// The effect as the spec table writes it, e.g. `send(ready)` or `start(backoff)`.
    pub fn spec_token(&self) -> String {
        match self {
            Self::OpenConnection => "open".into(),
            Self::Send(message) => format!("send({})", message.name()),
            Self::ResendOutbox { .. } => "resend".into(),
            Self::Close { reason } => format!("close({})", reason.name()),
            Self::StartTimer { timer, .. } => format!("start({})", timer.name()),
            Self::CancelTimer { timer } => format!("cancel({})", timer.name()),
            Self::SpawnJob { .. } => "spawn".into(),
            Self::CancelJob { reason, .. } => format!("kill({})", reason.name()),
            Self::Persist(write) => format!("persist({})", write.name()),
            Self::RunInstallStep { step } => format!("step({})", step.name()),
            Self::RollbackInstall => "rollback".into(),
            Self::GenerateKey => "keygen".into(),
            Self::CollectHardware => "collect_hw".into(),
            Self::Notify(notice) => format!("notify({})", notice.name()),
            Self::Exit { code } => format!("exit({})", code.code()),
        }
    }
}

/// The statig context: the batch of effects one dispatch produces.
#[derive(Debug, Default, Clone, PartialEq)]
#[must_use = "effects must be performed by the runtime"]
pub struct Effects {
    pub list: Vec<Effect>,
}

impl Effects {
    pub fn push(&mut self, effect: Effect) {
        self.list.push(effect);
    }

    pub fn send(&mut self, message: Outbound) {
        self.push(Effect::Send(message));
    }

    pub fn start(&mut self, timer: TimerKind, delay: Delay) {
        self.push(Effect::StartTimer { timer, delay });
    }

    pub fn cancel(&mut self, timer: TimerKind) {
        self.push(Effect::CancelTimer { timer });
    }

    pub fn persist(&mut self, write: Durable) {
        self.push(Effect::Persist(write));
    }

    pub fn notify(&mut self, notice: Notice) {
        self.push(Effect::Notify(notice));
    }

    pub fn close(&mut self, reason: CloseReason) {
        self.push(Effect::Close { reason });
    }

    pub fn spec_tokens(&self) -> Vec<String> {
        self.list.iter().map(Effect::spec_token).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn clear(&mut self) {
        self.list.clear();
    }
}
