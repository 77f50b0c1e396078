//! Job descriptions and results as they travel on the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the API asks a runner to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "JobSpecOnWire")]
pub struct JobSpec {
    pub job_id: String,
    pub attempt: u32,
    /// argv; the first element is the program. Never run through a shell.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// A sub-directory of the job's own directory to start in, or the job directory.
    pub workdir: Option<String>,
    pub timeout_secs: u64,
    pub output_limit_bytes: u64,
    pub cancel_grace_secs: u64,
}

/// Per stream, when the API does not say.
pub const DEFAULT_OUTPUT_LIMIT_BYTES: u64 = 1 << 30;

/// Between TERM and KILL on cancel, when the API does not say.
pub const DEFAULT_CANCEL_GRACE_SECS: u64 = 10;

/// `JobSpec` as read from a frame (or the runner's store): every optional field an
/// `Option`, which serde reads alike whether the field is omitted or `null` (the
/// protocol's rule); the defaults are applied in `From` below and nowhere else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSpecOnWire {
    job_id: String,
    attempt: u32,
    command: Vec<String>,
    env: Option<BTreeMap<String, String>>,
    workdir: Option<String>,
    timeout_secs: u64,
    output_limit_bytes: Option<u64>,
    cancel_grace_secs: Option<u64>,
}

impl From<JobSpecOnWire> for JobSpec {
    fn from(wire: JobSpecOnWire) -> Self {
        Self {
            job_id: wire.job_id,
            attempt: wire.attempt,
            command: wire.command,
            env: wire.env.unwrap_or_default(),
            workdir: wire.workdir,
            timeout_secs: wire.timeout_secs,
            output_limit_bytes: wire
                .output_limit_bytes
                .unwrap_or(DEFAULT_OUTPUT_LIMIT_BYTES),
            cancel_grace_secs: wire.cancel_grace_secs.unwrap_or(DEFAULT_CANCEL_GRACE_SECS),
        }
    }
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
#[serde(deny_unknown_fields)]
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
#[serde(tag = "how", rename_all = "snake_case", from = "ExitStatusOnWire")]
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

/// `ExitStatus` as read: `unknown` as a variant with no fields, because serde lets a
/// unit variant of an internally tagged enum carry any fields at all, and the protocol
/// refuses unknown fields everywhere.
#[derive(Deserialize)]
#[serde(tag = "how", rename_all = "snake_case", deny_unknown_fields)]
enum ExitStatusOnWire {
    Exited { code: i32 },
    Signaled { signal: i32 },
    Unknown {},
}

impl From<ExitStatusOnWire> for ExitStatus {
    fn from(wire: ExitStatusOnWire) -> Self {
        match wire {
            ExitStatusOnWire::Exited { code } => Self::Exited { code },
            ExitStatusOnWire::Signaled { signal } => Self::Signaled { signal },
            ExitStatusOnWire::Unknown {} => Self::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}
