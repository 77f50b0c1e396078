/*!
The lifecycle core: a pure, synchronous statig machine.

Owns: the nine lifecycle states and their transitions, the `Event` it takes and the
`Effect`s it gives back, the job table, command indexes and outbox indexes as far as
deciding is concerned. `Core::dispatch` is its only input.

Must not touch: I/O of any kind, the clock, randomness, tokio, rusqlite, sockets or
processes. `clippy.toml` forbids the clock and randomness crate-wide outside the modules
that own the world (the runtime first), and `tests/core_purity.rs` fails if this folder
names a forbidden crate. The one random input, the backoff's jitter seed, arrives in
`CoreConfig::rng_seed`. Imports: std, serde, statig, strum (names), thiserror, and
`crate::protocol` only.
*/

mod backoff;
mod effect;
mod ended;
mod event;
mod hooks;
mod job_files;
mod machine;
mod runner;

pub use backoff::{BackoffPolicy, Jitter};
pub use effect::{
    CancelReason, Delay, Durable, Effect, Effects, ExitCode, InstallStep, ManagerNotice, Notice,
    Outbound, OutputUploads, TimerKind,
};
pub use event::{Event, EventKind, FoundJob, HardwareCache, StopOrigin};
pub use hooks::{HookCall, HookOutcome, HookPoint};
pub use job_files::FetchOutcome;
pub use machine::{DrainMode, ReconnectStep, RegisterStep, State, SyncStep, ValidateStep};
pub use runner::{
    BootMode, CoreConfig, DurableState, ENDED_ATTEMPTS_KEPT, EVENT_INDEX_HEADROOM, JobEntry, Link,
    OutputDone, outcome_of,
};

use statig::blocking::{InitializedStateMachine, IntoStateMachineExt};

use crate::protocol::JobRef;
use runner::Runner;

/// The lifecycle machine with its shared data. One event in, one batch of effects out.
pub struct Core {
    machine: InitializedStateMachine<Runner>,
}

impl Core {
    /// Build the machine in the state the boot mode calls for and return the effects of
    /// entering it (open the connection, run the first install step, ...).
    pub fn boot(config: CoreConfig, mode: BootMode, durable: DurableState) -> (Self, Effects) {
        let mut uninit = Runner::new(config, mode, durable).uninitialized_state_machine();
        *uninit.state_mut() = match mode {
            BootMode::Install => State::Installing {
                step: InstallStep::CreateDirectories,
            },
            BootMode::Register => State::Registering {
                step: RegisterStep::Connecting,
            },
            BootMode::Resume | BootMode::Leave => State::Validating {
                step: ValidateStep::Connecting,
            },
        };
        let mut effects = Effects::default();
        let machine = uninit.init_with_context(&mut effects);
        (Self { machine }, effects)
    }

    /// Feed one event; the returned batch must be performed before the next dispatch.
    pub fn dispatch(&mut self, event: &Event) -> Effects {
        let mut effects = Effects::default();
        self.dispatch_into(event, &mut effects);
        effects
    }

    /// As `dispatch`, into a batch the caller reuses (cleared first), so a long-running
    /// runtime does not allocate a fresh list for every event.
    pub fn dispatch_into(&mut self, event: &Event, effects: &mut Effects) {
        effects.clear();
        self.machine.handle_with_context(event, effects);
    }

    pub fn state(&self) -> &State {
        self.machine.state()
    }

    /// The state's name (one of the nine lifecycle states).
    pub fn state_name(&self) -> &'static str {
        state_name(self.machine.state())
    }

    /// Which of the nine lifecycle states the machine is in, typed: what the runtime
    /// acts on (metrics, a service manager's report) instead of comparing names.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::of(self.machine.state())
    }

    /// The state with its step, as the spec table names it: `Validating.await_auth`.
    pub fn phase(&self) -> String {
        phase_name(self.machine.state())
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.machine.state(), State::Stopped { .. })
    }

    pub fn runner_id(&self) -> Option<&str> {
        self.machine.inner().runner_id.as_deref()
    }

    pub fn link(&self) -> Link {
        self.machine.inner().link
    }

    pub fn running_jobs(&self) -> Vec<JobRef> {
        self.machine.inner().job_refs()
    }

    pub fn slots(&self) -> u32 {
        self.machine.inner().config.slots
    }

    pub fn last_applied_command(&self) -> u64 {
        self.machine.inner().last_applied
    }

    /// Events persisted but not yet acknowledged by the API.
    pub fn outbox_depth(&self) -> u64 {
        let runner = self.machine.inner();
        runner
            .last_event_index
            .saturating_sub(runner.acked_event_index)
    }

    pub fn drain_deadline_secs(&self) -> u64 {
        self.machine.inner().drain_deadline_secs
    }
}

/// The nine lifecycle states: the top level of the spec table, without their steps.
/// Their names (`Active`, `HardwareSync`, ...) are the table's, in status and metrics.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
pub enum Lifecycle {
    Installing,
    Registering,
    Validating,
    HardwareSync,
    Ready,
    Active,
    Reconnecting,
    Draining,
    Stopped,
}

impl Lifecycle {
    pub fn of(state: &State) -> Self {
        match state {
            State::Installing { .. } => Self::Installing,
            State::Registering { .. } => Self::Registering,
            State::Validating { .. } => Self::Validating,
            State::HardwareSync { .. } => Self::HardwareSync,
            State::Ready {} => Self::Ready,
            State::Active {} => Self::Active,
            State::Reconnecting { .. } => Self::Reconnecting,
            State::Draining { .. } => Self::Draining,
            State::Stopped { .. } => Self::Stopped,
        }
    }

    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The state a name (as status shows it) or a phase (`Validating.await_auth`, as
    /// the trace records it) is in; `None` for a name the table does not have.
    pub fn from_phase(phase: &str) -> Option<Self> {
        let state = phase.split('.').next().unwrap_or(phase);
        state.parse().ok()
    }
}

pub fn state_name(state: &State) -> &'static str {
    Lifecycle::of(state).name()
}

pub fn phase_name(state: &State) -> String {
    let step = match state {
        State::Installing { step } => Some(step.name()),
        State::Registering { step } => Some(step.name()),
        State::Validating { step } => Some(step.name()),
        State::HardwareSync { step } => Some(step.name()),
        State::Reconnecting { step } => Some(step.name()),
        State::Draining { mode } => Some(mode.name()),
        State::Ready {} | State::Active {} | State::Stopped { .. } => None,
    };
    match step {
        Some(step) => format!("{}.{step}", state_name(state)),
        None => state_name(state).to_owned(),
    }
}
