//! Lifecycle and job hooks: the operator's executables run at the lifecycle's turning
//! points (`on_connected`, `on_disconnected`, `on_drain`, `on_stopped`: Rivet's runner
//! callbacks) and around each job (`pre_job`, `post_job`: GitLab's and Buildkite's job
//! hooks).
//!
//! Owns: which hook runs when (the core emits `RunHook`, the runtime reports
//! `HookFinished`), and what a hook's end means. A lifecycle hook's end changes
//! nothing; a failed `pre_job` fails its job before any process starts; `post_job`
//! runs after the job's end is persisted and cannot change its outcome. Must not:
//! know what a hook is on disk, how it runs or how long it may take (the runtime).

use serde::{Deserialize, Serialize};
use strum::{IntoStaticStr, VariantArray};

use crate::protocol::{ExitStatus, JobOutcome, JobRef};

use super::effect::{Effect, Effects, Notice};
use super::runner::{BootMode, Runner};

/// Where a hook runs. The name (`name()`) is the spec table's, the config key's
/// (`hook_<name>`) and the trace's.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum HookPoint {
    /// A session reached Active.
    OnConnected,
    /// A session that had reached Active was lost; the runner reconnects.
    OnDisconnected,
    /// A drain began.
    OnDrain,
    /// The runner stopped; it exits once the hook ends.
    OnStopped,
    /// A job was accepted; its process starts once the hook succeeds.
    PreJob,
    /// A job's end was recorded.
    PostJob,
}

impl HookPoint {
    pub const ALL: &'static [HookPoint] = <Self as VariantArray>::VARIANTS;

    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| p.name() == name)
    }
}

/// A hook to run, with what it is told (the runtime adds the runner's id and state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "hook", rename_all = "snake_case")]
pub enum HookCall {
    OnConnected,
    OnDisconnected,
    OnDrain,
    OnStopped {
        exit_code: i32,
    },
    PreJob {
        job: JobRef,
    },
    PostJob {
        job: JobRef,
        outcome: JobOutcome,
        status: ExitStatus,
    },
}

impl HookCall {
    pub fn point(&self) -> HookPoint {
        match self {
            Self::OnConnected => HookPoint::OnConnected,
            Self::OnDisconnected => HookPoint::OnDisconnected,
            Self::OnDrain => HookPoint::OnDrain,
            Self::OnStopped { .. } => HookPoint::OnStopped,
            Self::PreJob { .. } => HookPoint::PreJob,
            Self::PostJob { .. } => HookPoint::PostJob,
        }
    }

    /// The job the hook is about, for the job hooks.
    pub fn job(&self) -> Option<&JobRef> {
        match self {
            Self::PreJob { job } | Self::PostJob { job, .. } => Some(job),
            _ => None,
        }
    }
}

/// How a hook ended, as the runtime saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HookOutcome {
    /// It exited 0 within its timeout.
    Passed,
    /// It exited non-zero, was killed, timed out, or could not be started; `reason`
    /// says which, in words for the operator and the API.
    Failed { reason: String },
}

impl HookOutcome {
    pub fn passed(&self) -> bool {
        matches!(self, Self::Passed)
    }
}

impl Runner {
    /// Whether the operator configured this hook. Only `run` runs hooks: an install
    /// and a farewell are short tools of their own, not the runner's lifecycle.
    pub(crate) fn hooked(&self, point: HookPoint) -> bool {
        matches!(self.boot, BootMode::Register | BootMode::Resume)
            && self.config.hooks.contains(&point)
    }

    /// Run the hook when it is configured.
    pub(crate) fn run_hook(&self, fx: &mut Effects, call: HookCall) {
        if self.hooked(call.point()) {
            fx.push(Effect::RunHook(call));
        }
    }

    /// The `post_job` call for a job that ended so, when the hook is configured. Asked
    /// before the end is emitted (the event moves into the outbox) and run after it,
    /// so the hook starts once the end is persisted.
    pub(crate) fn post_job_call(
        &self,
        job: &JobRef,
        outcome: JobOutcome,
        status: ExitStatus,
    ) -> Option<HookCall> {
        self.hooked(HookPoint::PostJob).then(|| HookCall::PostJob {
            job: job.clone(),
            outcome,
            status,
        })
    }

    /// A `pre_job` hook ended: the job's process starts, unless the hook failed or the
    /// job was asked to stop meanwhile; then the job ends here, never started (and no
    /// `post_job` runs for it). Returns whether the job ended.
    pub(crate) fn pre_job_finished(
        &mut self,
        fx: &mut Effects,
        job: &JobRef,
        outcome: &HookOutcome,
    ) -> bool {
        let awaiting = self
            .awaiting_pre_job
            .get(&job.job_id)
            .is_some_and(|spec| spec.attempt == job.attempt);
        if !awaiting || !self.is_known(job) {
            fx.notify(Notice::StaleJob {
                job: job.clone(),
                what: "pre_job hook_finished".to_owned(),
            });
            return false;
        }
        let stopping = self.jobs.get(&job.job_id).and_then(|entry| entry.cancel);
        match (outcome, stopping) {
            (HookOutcome::Passed, None) => {
                if let Some(spec) = self.awaiting_pre_job.remove(&job.job_id) {
                    self.start_or_fetch(fx, spec);
                }
                false
            }
            (_, Some(_)) => {
                self.awaiting_pre_job.remove(&job.job_id);
                self.job_ended_unstarted(fx, job, None);
                true
            }
            (HookOutcome::Failed { reason }, None) => {
                self.awaiting_pre_job.remove(&job.job_id);
                let detail = format!("the pre_job hook failed: {reason}; the job was not started");
                self.job_ended_unstarted(fx, job, Some(detail));
                true
            }
        }
    }
}
