//! Job descriptions and results as they travel on the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the API asks a runner to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub job_id: String,
    pub attempt: u32,
    /// argv; the first element is the program. Never run through a shell.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A sub-directory of the job's own directory to start in, or the job directory.
    #[serde(default)]
    pub workdir: Option<String>,
    pub timeout_secs: u64,
    #[serde(default = "default_output_limit")]
    pub output_limit_bytes: u64,
    #[serde(default = "default_cancel_grace")]
    pub cancel_grace_secs: u64,
}

fn default_output_limit() -> u64 {
    1 << 30
}

fn default_cancel_grace() -> u64 {
    10
}

/// Why a job spec cannot be run at all (as opposed to "not now").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobSpecError {
    #[error(
        "job id {0:?} is not valid: use 1-128 characters from [A-Za-z0-9._-], not starting with '.'"
    )]
    BadJobId(String),
    #[error("attempt must be at least 1")]
    BadAttempt,
    #[error("command is empty")]
    EmptyCommand,
    #[error("timeout_secs must be at least 1")]
    NoTimeout,
    #[error("workdir {0:?} must be a relative path inside the job directory")]
    BadWorkdir(String),
}

/// A job ID names a directory under the runner's state dir, so it must never be able
/// to climb out of it: no separators, no `..`, no leading dot.
pub fn validate_job_id(id: &str) -> Result<(), JobSpecError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(JobSpecError::BadJobId(id.to_owned()))
    }
}

impl JobSpec {
    pub fn validate(&self) -> Result<(), JobSpecError> {
        validate_job_id(&self.job_id)?;
        if self.attempt == 0 {
            return Err(JobSpecError::BadAttempt);
        }
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(JobSpecError::EmptyCommand);
        }
        if self.timeout_secs == 0 {
            return Err(JobSpecError::NoTimeout);
        }
        if let Some(dir) = &self.workdir {
            let escapes = dir.starts_with('/')
                || dir.split(['/', '\\']).any(|part| part == "..")
                || dir.contains('\0');
            if escapes {
                return Err(JobSpecError::BadWorkdir(dir.clone()));
            }
        }
        Ok(())
    }

    pub fn job_ref(&self) -> JobRef {
        JobRef {
            job_id: self.job_id.clone(),
            attempt: self.attempt,
        }
    }
}

/// A job attempt: the unit that results are reported against.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobRef {
    pub job_id: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    Draining,
    NoFreeSlot,
    InvalidSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    /// The job's process died with (or was abandoned by) the runner; its real end is unknown.
    Lost,
}

/// How a job's process ended, as seen by the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum ExitStatus {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// The process could not be observed to the end (runner crash, spawn lost).
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}
