//! The single output type of the lifecycle machine, and the context it fills.
//!
//! An `Effect` says what must happen; the runtime decides how. Effects never name a
//! runtime type. The runtime performs one batch in this order: persist (one
//! transaction for the whole batch), send, close, connect, timers, processes, local
//! steps, notices, exit.
//! That order is what makes "persist before send" hold by construction.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr};

use crate::protocol::{
    CloseReason, HardwareChanges, HardwareReport, JobRef, JobSpec, OutputFile, RunnerEvent,
};

use super::hooks::HookCall;

/// Every timer the core can arm. Arming one that is armed replaces it; the runtime
/// never delivers a timer that was cancelled or replaced. The name (`name()`) is the
/// spec table's; the serde name is the trace's.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum TimerKind {
    Heartbeat,
    /// Waiting for the reply the current phase expects (handshake step or heartbeat).
    Ack,
    Backoff,
    RunnerLost,
    DrainDeadline,
    #[strum(serialize = "hw_recheck")]
    HardwareRecheck,
    /// While draining: report what is left, to the log and the service manager.
    DrainProgress,
    JobTimeout(JobRef),
}

impl TimerKind {
    pub fn name(&self) -> &'static str {
        self.into()
    }
}

/// How long a timer runs, in milliseconds. Every delay is decided by the core, the
/// reconnect backoff's jitter included (`super::backoff`), so the trace records the
/// exact delay of every timer and replay checks it. (An enum, so the trace reads
/// `{"millis": 1500}` and another unit can be added without changing that form.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delay {
    Millis(u64),
}

/// What must be sent. The runtime adds what the core must not hold: the one-time
/// token, the signature, the runner's name and version, the farewell's reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, IntoStaticStr)]
#[serde(tag = "message", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Outbound {
    ValidateToken,
    Register {
        public_key: String,
        slots: u32,
    },
    Authenticate {
        /// A boxed `str`, not a `String`: it keeps `Outbound` within 56 bytes, so
        /// `Effect` within 64.
        nonce: Box<str>,
        runner_id: String,
        slots: u32,
        last_command_index: u64,
    },
    Startup {
        jobs: Vec<JobRef>,
    },
    /// Boxed: a record is large, and most effects are small.
    HardwareFull {
        report: Box<HardwareReport>,
    },
    HardwareChanges {
        changes: HardwareChanges,
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
    /// Shared with the `OutboxAppend` that persists it: an event is both stored and
    /// sent, and a deep copy of each (job output is most of them) was a fifth of the
    /// core's time.
    Event {
        index: u64,
        event: Arc<RunnerEvent>,
    },
    Stopping {
        reason: String,
        deadline_secs: u64,
    },
    /// The runner goes away for good (`fyn-runner uninstall`, or an install rolling
    /// back its registration); the runtime adds the reason it was started with.
    Leaving,
}

impl Outbound {
    pub fn name(&self) -> &'static str {
        self.into()
    }
}

/// What must become durable. All `Persist` effects of one batch commit together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, IntoStaticStr)]
#[serde(tag = "write", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Durable {
    Identity {
        runner_id: String,
    },
    LastApplied {
        index: u64,
    },
    #[strum(serialize = "outbox")]
    OutboxAppend {
        index: u64,
        event: Arc<RunnerEvent>,
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
    /// Shared with the `SpawnJob` (or `FetchInputs`) of the same batch, as an event is
    /// with its send.
    JobAdded {
        job: Arc<JobSpec>,
    },
    /// The job ended: it leaves the table of running jobs and joins the ended attempts
    /// the store remembers (the last `ENDED_ATTEMPTS_KEPT`), so a later `start_job` for
    /// it is refused (`already_run`).
    JobRemoved {
        job: JobRef,
    },
    /// One output file's upload is over (uploaded, or failed for good): recorded with
    /// its event, so a restarted runner neither uploads nor reports it again. Removed
    /// with the job. (Boxed: see `Effect`'s size.)
    OutputDone {
        done: Box<super::runner::OutputDone>,
    },
    #[strum(serialize = "hw_cache")]
    HardwareCache {
        report: Box<HardwareReport>,
    },
}

impl Durable {
    pub fn name(&self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum InstallStep {
    #[strum(serialize = "create_dirs")]
    CreateDirectories,
    WriteConfig,
    InstallService,
}

impl InstallStep {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Why the core asks for a job to be stopped; it decides the reported outcome. A job's
/// supervisor records the name with the job's end, so a runner restarted meanwhile
/// still reports the outcome the cancel called for (`FoundJob`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr, EnumString)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CancelReason {
    /// The API cancelled it.
    Cancelled,
    #[strum(serialize = "timeout")]
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
        self.into()
    }

    /// The reason a name stands for (`name()`'s inverse).
    pub fn from_name(name: &str) -> Option<Self> {
        name.parse().ok()
    }
}

/// Something the operator must be told, beyond the transition log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, IntoStaticStr)]
#[serde(tag = "notice", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Notice {
    Registered {
        runner_id: String,
    },
    /// The API confirmed the farewell: it forgot this runner.
    Left {
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
    #[strum(serialize = "violation")]
    ProtocolViolation {
        phase: String,
        got: String,
    },
    BadFrame {
        error: String,
    },
    /// A command that can never be applied was refused under its index
    /// (`command_rejected`), so the API retires it.
    CommandRejected {
        index: u64,
        reason: String,
    },
    /// The API's claim of the last event it holds leaves no room in the protocol's
    /// index range (`docs/protocol.md` §6.4) to number this runner's events.
    NoIndexRoom {
        api_last: u64,
        needed: u64,
    },
    /// An event could not be numbered within the protocol's index range: it stays in
    /// the outbox, unsent (only an API that claimed the top of the range gets here).
    IndexRangeExhausted {
        index: u64,
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
    /// At start, a job of the previous process was found running (reattached), ended
    /// while no runner was there, or lost (`FoundJob::name`).
    JobFound {
        job: JobRef,
        found: String,
    },
    /// An event no state of the machine expects where it arrived (a local step's
    /// failure in Active, a timer that belongs to another phase, ...). It changes
    /// nothing, but it is never dropped without a word.
    Unexpected {
        /// The event kind, as the spec table names it.
        event: String,
        /// What the event said, when it carried an error.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        detail: String,
    },
}

impl Notice {
    pub fn name(&self) -> &'static str {
        self.into()
    }
}

/// What the service manager is told (systemd's `sd_notify`; nothing where there is
/// none). Decided here, so the spec table lists it and the trace records it; the
/// runtime only delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(tag = "notice", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ManagerNotice {
    /// Start-up is finished (`READY=1`): once per process, at the first Active.
    Ready,
    /// The lifecycle state changed (`STATUS=`).
    Status { state: String },
    /// A drain began (`STOPPING=1`): the stop takes at most `within_secs`, which the
    /// service manager is asked to allow (`EXTEND_TIMEOUT_USEC`).
    Stopping { within_secs: u64 },
    /// While draining, every few seconds: what is left (`STATUS=`), and the stop's
    /// bound again from now (`EXTEND_TIMEOUT_USEC`).
    DrainProgress {
        jobs_left: u32,
        undelivered: u64,
        within_secs: u64,
    },
}

impl ManagerNotice {
    pub fn name(&self) -> &'static str {
        self.into()
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
    /// A stop (a drain, a signal with nothing to wait for) left events the API has not
    /// acknowledged: they are kept in the store and sent on the next start.
    Undelivered,
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
            Self::Undelivered => 7,
        }
    }
}

/// What `Effect::UploadOutputs` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputUploads {
    pub job: JobRef,
    pub outputs: Vec<OutputFile>,
    /// Recorded by an earlier process: not uploaded again.
    pub done: Vec<String>,
}

/// What one event asks the runtime to do.
///
/// At most 64 bytes (checked below, when the crate builds): a batch is a `Vec<Effect>`
/// and every push moves a whole `Effect`. The release build is optimised for size,
/// and there a move of up to 64 bytes is four register moves while one of 65 to 128
/// is a `rep movsq`, slow to start: an 80-byte `Effect` made the core 14 % slower
/// (`benches/core_throughput.rs`). Large payloads are shared (`Arc`: the job spec, the
/// event) or, when rare, boxed.
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
    /// The spec the same batch persists (`Durable::JobAdded`), shared: one copy of it
    /// per start, not two, and the effect within 64 bytes.
    SpawnJob {
        job: Arc<JobSpec>,
    },
    /// Fetch the job's inputs into its `work/` (through the cache, with the job
    /// account's rights); the end comes back as `InputsFetched`. A `CancelJob` for the
    /// job stops the fetch.
    FetchInputs {
        job: Arc<JobSpec>,
    },
    /// Upload the files the job's outputs name in its `work/`, but for those in `done`
    /// (recorded by an earlier process); each file's end comes back as
    /// `OutputUploaded` or `OutputFailed`, then `UploadsDone`. A `CancelJob` for the
    /// job abandons what is left. (Boxed: once per job, and larger than 64 bytes.)
    UploadOutputs(Box<OutputUploads>),
    /// SIGTERM to the job's process group, `grace_secs`, then SIGKILL.
    CancelJob {
        job: JobRef,
        reason: CancelReason,
        grace_secs: u64,
    },
    /// The session is alive now: every job's supervisor may go on running it for
    /// `within_ms` more (the API's runner-lost threshold). A supervisor that hears
    /// nothing for that long ends its job itself, because the API has given it away
    /// by then.
    RenewLeases {
        within_ms: u64,
    },
    Persist(Durable),
    RunInstallStep {
        step: InstallStep,
    },
    /// Undo every install step that ran: folders, files, identity, service.
    RollbackInstall,
    /// Forget the key kept for registration (the token was refused, so no runner was
    /// registered with it under this token). Every other end keeps it: the API may have
    /// committed a `register` with it, and the next registration sends it again.
    ForgetKey,
    /// Tell the API to forget the registration this install made and rolled back: a
    /// short farewell session of its own (`BootMode::Leave`), bounded in time.
    Farewell,
    /// Make the registration's key pair and keep it (the private half on disk, private
    /// to the runner, before `register` is sent), so a retried `register`, in this
    /// process or the next, carries the same public key.
    GenerateKey,
    CollectHardware,
    /// Boxed: notices are rare, and the largest would take `Effect` past 64 bytes.
    Notify(Box<Notice>),
    TellManager(ManagerNotice),
    /// Run the operator's hook (off the loop; its end comes back as `HookFinished`).
    RunHook(HookCall),
    /// Exit with this code. Jobs the core asked to stop are killed now; the others
    /// stay with their supervisors (a stop that leaves jobs running).
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
            Self::FetchInputs { .. } => "fetch".into(),
            Self::UploadOutputs(_) => "upload".into(),
            Self::CancelJob { reason, .. } => format!("kill({})", reason.name()),
            Self::RenewLeases { .. } => "renew".into(),
            Self::Persist(write) => format!("persist({})", write.name()),
            Self::RunInstallStep { step } => format!("step({})", step.name()),
            Self::RollbackInstall => "rollback".into(),
            Self::ForgetKey => "forget_key".into(),
            Self::Farewell => "farewell".into(),
            Self::GenerateKey => "keygen".into(),
            Self::CollectHardware => "collect_hw".into(),
            Self::Notify(notice) => format!("notify({})", notice.name()),
            Self::TellManager(notice) => format!("tell({})", notice.name()),
            Self::RunHook(call) => format!("hook({})", call.point().name()),
            Self::Exit { code } => format!("exit({})", code.code()),
        }
    }
}

// A variant that outgrows this belongs behind an `Arc` or a `Box` (see `Effect`).
const _: () = assert!(std::mem::size_of::<Effect>() <= 64);

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
        self.push(Effect::Notify(Box::new(notice)));
    }

    pub fn tell_manager(&mut self, notice: ManagerNotice) {
        self.push(Effect::TellManager(notice));
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
