//! Job descriptions and results as they travel on the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::job_files::{InputFile, OutputFile, validate_files};

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
    // The three below are left out of the JSON when empty (which is what omitted means
    // on the wire): a spec without them reads, stores and traces as it did before.
    /// Files fetched into `work/` before the process starts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputFile>,
    /// Files uploaded after the process ended.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputFile>,
    /// Key-value pairs the job can read (`fyn-runner job kv get`) from its start.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub kv: BTreeMap<String, String>,
}

/// Per stream, when the API does not say.
pub const DEFAULT_OUTPUT_LIMIT_BYTES: u64 = 1 << 30;

/// Between TERM and KILL on cancel, when the API does not say.
pub const DEFAULT_CANCEL_GRACE_SECS: u64 = 10;

/// The longest `timeout_secs`: 2^32 − 1 seconds (136 years, so "no timeout" in
/// practice). The runner adds it to its clock in milliseconds; with this bound that sum
/// stays exact in 64 bits and in a JSON number a JavaScript API reads.
pub const MAX_TIMEOUT_SECS: u64 = u32::MAX as u64;

/// The longest `cancel_grace_secs`: one day. A stop waits for the longest grace of the
/// jobs it cancels (and asks the service manager to wait that long), so the grace bounds
/// how long a forced stop can take.
pub const MAX_CANCEL_GRACE_SECS: u64 = 86_400;

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
    inputs: Option<Vec<InputFile>>,
    outputs: Option<Vec<OutputFile>>,
    kv: Option<BTreeMap<String, String>>,
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
            inputs: wire.inputs.unwrap_or_default(),
            outputs: wire.outputs.unwrap_or_default(),
            kv: wire.kv.unwrap_or_default(),
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
    #[error("command[{index}] contains a NUL byte, which no program argument can hold")]
    NulInCommand { index: usize },
    #[error("env name {name:?} is not valid: {why}")]
    BadEnvName { name: String, why: &'static str },
    #[error("env value of {name:?} contains a NUL byte, which no environment value can hold")]
    NulInEnvValue { name: String },
    #[error("timeout_secs must be at least 1")]
    NoTimeout,
    #[error("timeout_secs {0} is above the limit of {MAX_TIMEOUT_SECS} (2^32 - 1)")]
    TimeoutTooLong(u64),
    #[error("cancel_grace_secs {0} is above the limit of {MAX_CANCEL_GRACE_SECS} (one day)")]
    GraceTooLong(u64),
    #[error("workdir {0:?} must be a relative path inside the job directory")]
    BadWorkdir(String),
    #[error("inputs[{index}]: {why}")]
    BadInput { index: usize, why: String },
    #[error("outputs[{index}]: {why}")]
    BadOutput { index: usize, why: String },
    #[error("kv: {why}")]
    BadKv { key: String, why: String },
}

impl JobSpecError {
    /// The `JobSpec` field the error is about, for an API that names it apart from the
    /// message (the dev-server's `{"error": ..., "field": ...}`).
    pub fn field(&self) -> &'static str {
        match self {
            Self::BadJobId(_) => "job_id",
            Self::BadAttempt => "attempt",
            Self::EmptyCommand | Self::NulInCommand { .. } => "command",
            Self::BadEnvName { .. } | Self::NulInEnvValue { .. } => "env",
            Self::NoTimeout | Self::TimeoutTooLong(_) => "timeout_secs",
            Self::GraceTooLong(_) => "cancel_grace_secs",
            Self::BadWorkdir(_) => "workdir",
            Self::BadInput { .. } => "inputs",
            Self::BadOutput { .. } => "outputs",
            Self::BadKv { .. } => "kv",
        }
    }
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

/// argv: a program, and no element with a NUL byte (the OS takes C strings).
fn validate_command(command: &[String]) -> Result<(), JobSpecError> {
    if command.first().is_none_or(String::is_empty) {
        return Err(JobSpecError::EmptyCommand);
    }
    match command.iter().position(|arg| arg.contains('\0')) {
        Some(index) => Err(JobSpecError::NulInCommand { index }),
        None => Ok(()),
    }
}

/// An environment entry the OS can hold: a name that is not empty and has neither `=`
/// (it ends the name) nor NUL, and a value without NUL.
pub fn validate_env(name: &str, value: &str) -> Result<(), JobSpecError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.contains('=') {
        Some("it contains '='")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(JobSpecError::BadEnvName {
            name: name.to_owned(),
            why,
        });
    }
    if value.contains('\0') {
        return Err(JobSpecError::NulInEnvValue {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A relative path that stays inside the job's folder on every platform: no root
/// (`/x`, `\x`), no drive (`C:x`), no `..` component with either separator, no NUL.
/// (A symbolic link planted inside the folder is the runner's to catch when it
/// resolves the path.)
fn validate_workdir(dir: &str) -> Result<(), JobSpecError> {
    let rooted = dir.starts_with(['/', '\\']);
    let drive = dir.as_bytes().get(1) == Some(&b':');
    let climbs = dir.split(['/', '\\']).any(|part| part == "..");
    if rooted || drive || climbs || dir.contains('\0') {
        return Err(JobSpecError::BadWorkdir(dir.to_owned()));
    }
    Ok(())
}

impl JobSpec {
    /// Every rule of `docs/protocol.md` §5.5. The runner checks a `start_job` with it
    /// (and rejects a spec that breaks one with `invalid_spec`); a control plane checks
    /// a job with it before it accepts the job, so nothing is accepted that can only
    /// fail later.
    pub fn validate(&self) -> Result<(), JobSpecError> {
        validate_job_id(&self.job_id)?;
        if self.attempt == 0 {
            return Err(JobSpecError::BadAttempt);
        }
        validate_command(&self.command)?;
        for (name, value) in &self.env {
            validate_env(name, value)?;
        }
        if self.timeout_secs == 0 {
            return Err(JobSpecError::NoTimeout);
        }
        if self.timeout_secs > MAX_TIMEOUT_SECS {
            return Err(JobSpecError::TimeoutTooLong(self.timeout_secs));
        }
        if self.cancel_grace_secs > MAX_CANCEL_GRACE_SECS {
            return Err(JobSpecError::GraceTooLong(self.cancel_grace_secs));
        }
        if let Some(dir) = &self.workdir {
            validate_workdir(dir)?;
        }
        validate_files(&self.inputs, &self.outputs, &self.kv)
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
    /// This attempt already ended on this runner; it is never run again (its logs and
    /// result stay as they were). The server's answer is a new attempt.
    AlreadyRun,
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

/// What a job's processes used, as `job_finished` reports it (each figure absent when
/// not measured): CPU time in user and kernel mode, the peak resident memory of the
/// largest process, the time from acceptance to the end, and the peak GPU memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUsage {
    pub cpu_user_ms: Option<u64>,
    pub cpu_system_ms: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    pub wall_ms: Option<u64>,
    pub gpu_memory_peak_bytes: Option<u64>,
}

impl JobUsage {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The steps of a job that no other event marks (`job_phase`): `job_started` marks
/// running, `job_finished` the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// The job's folder is being made ready (and the operator's pre-job step runs).
    Preparing,
    /// The inputs are being fetched.
    Fetching,
    /// The process ended; its outputs are being uploaded.
    Uploading,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            job_id: "j-1".to_owned(),
            attempt: 1,
            command: vec!["true".to_owned()],
            env: BTreeMap::new(),
            workdir: None,
            timeout_secs: 1,
            output_limit_bytes: DEFAULT_OUTPUT_LIMIT_BYTES,
            cancel_grace_secs: DEFAULT_CANCEL_GRACE_SECS,
            inputs: Vec::new(),
            outputs: Vec::new(),
            kv: BTreeMap::new(),
        }
    }

    fn field_of(change: impl FnOnce(&mut JobSpec)) -> Option<&'static str> {
        let mut spec = spec();
        change(&mut spec);
        spec.validate().err().map(|error| error.field())
    }

    #[test]
    fn what_the_os_cannot_hold_is_refused_naming_the_field() {
        assert_eq!(field_of(|_| {}), None);
        assert_eq!(field_of(|s| s.command.push("a\0b".into())), Some("command"));
        assert_eq!(
            field_of(|s| s.command = vec![String::new()]),
            Some("command")
        );
        for name in ["", "A=B", "A\0B"] {
            let env = |s: &mut JobSpec| {
                s.env.insert(name.to_owned(), "v".to_owned());
            };
            assert_eq!(field_of(env), Some("env"), "name {name:?}");
        }
        let nul_value = |s: &mut JobSpec| {
            s.env.insert("A".to_owned(), "x\0y".to_owned());
        };
        assert_eq!(field_of(nul_value), Some("env"));
        let fine = |s: &mut JobSpec| {
            s.env.insert("A_1".to_owned(), "a=b c".to_owned());
        };
        assert_eq!(field_of(fine), None);
    }

    #[test]
    fn timeout_and_grace_are_bounded() {
        assert_eq!(field_of(|s| s.timeout_secs = MAX_TIMEOUT_SECS), None);
        let long = |s: &mut JobSpec| s.timeout_secs = MAX_TIMEOUT_SECS + 1;
        assert_eq!(field_of(long), Some("timeout_secs"));
        assert_eq!(
            field_of(|s| s.timeout_secs = u64::MAX),
            Some("timeout_secs")
        );
        assert_eq!(field_of(|s| s.cancel_grace_secs = 0), None);
        assert_eq!(
            field_of(|s| s.cancel_grace_secs = MAX_CANCEL_GRACE_SECS),
            None
        );
        let long = |s: &mut JobSpec| s.cancel_grace_secs = MAX_CANCEL_GRACE_SECS + 1;
        assert_eq!(field_of(long), Some("cancel_grace_secs"));
    }

    #[test]
    fn a_workdir_stays_inside_the_job_folder() {
        for dir in [
            "/etc", "\\x", "C:x", "c:\\x", "..", "a/../..", "a\\..\\b", "a\0",
        ] {
            let bad = |s: &mut JobSpec| s.workdir = Some(dir.to_owned());
            assert_eq!(field_of(bad), Some("workdir"), "{dir:?}");
        }
        for dir in ["", ".", "a/b", "./a", "a..b", "..a"] {
            let good = |s: &mut JobSpec| s.workdir = Some(dir.to_owned());
            assert_eq!(field_of(good), None, "{dir:?}");
        }
    }
}
