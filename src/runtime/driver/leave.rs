//! Leaving for good: `fyn-runner uninstall` telling the API to forget this runner, and
//! an install forgetting the registration it rolled back. Either is the runner booted
//! into `BootMode::Leave` (hello, authenticate with the stored identity and the real
//! last applied command index, `leaving`, `left`), through the same machine, dispatch
//! and trace as any run, and bounded in time by the caller.
//!
//! Owns: `LeaveError`, and reading the outcome off the farewell's exit. Must not speak
//! the protocol itself.

use std::time::Duration;

use crate::core::ExitCode;
use crate::runtime::identity::Identity;
use crate::runtime::settings::RunnerSettings;

use super::handle::RunnerHandle;
use super::launch::{Purpose, StartError, launch};

#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    #[error(
        "no identity in {0}: this runner was never registered, so there is nothing to tell the API"
    )]
    NoIdentity(String),
    #[error(transparent)]
    Start(StartError),
    #[error("the API refused: {0}")]
    Refused(String),
    #[error("the API did not confirm within {0:?}")]
    Timeout(Duration),
}

impl From<StartError> for LeaveError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::NoIdentity { state_dir } => Self::NoIdentity(state_dir),
            other => Self::Start(other),
        }
    }
}

/// Tell the API this runner is gone, within `within`; returns the runner ID it forgot.
pub async fn leave(settings: &RunnerSettings, within: Duration) -> Result<String, LeaveError> {
    let purpose = Purpose::Leave {
        identity: None,
        reason: "uninstalled",
    };
    let handle = launch(settings.clone(), purpose)?;
    outcome(handle, within).await
}

/// The same with an identity in hand whose files are gone already (an install rolling
/// back): nothing of the state folder is touched, and nothing is traced.
pub(super) async fn leave_with(
    settings: RunnerSettings,
    identity: Identity,
    reason: &'static str,
    within: Duration,
) -> Result<String, LeaveError> {
    let purpose = Purpose::Leave {
        identity: Some(identity),
        reason,
    };
    let handle = launch(settings, purpose)?;
    outcome(handle, within).await
}

async fn outcome(handle: RunnerHandle, within: Duration) -> Result<String, LeaveError> {
    let status = handle.status.clone();
    let (code, in_time) = handle.wait_within(within).await;
    let last = status.borrow().clone();
    match code {
        _ if !in_time => Err(LeaveError::Timeout(within)),
        ExitCode::Clean => Ok(last.runner_id.unwrap_or_default()),
        other => Err(LeaveError::Refused(last.problem.unwrap_or_else(|| {
            format!("the farewell ended with exit code {}", other.code())
        }))),
    }
}
