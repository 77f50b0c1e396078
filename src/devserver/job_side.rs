//! The admin API's JSON types for a job's side of things (issue 19): the inputs and
//! outputs a job is submitted with, what the runner reported while it ran (phase,
//! progress, key-value pairs, accounting) and the results it uploaded. `JobInfo` and
//! `JobRequest` (`api.rs`) carry them; `fyn-runner ctl` decodes them.

use serde::{Deserialize, Serialize};

use crate::protocol::JobPhase;
/// The accounting of an ended attempt, as `job_finished` carried it.
pub use crate::protocol::JobUsage;

/// An input of a submitted job: a file stored with `PUT /admin/v1/blobs` (named by its
/// SHA-256), placed at `path` below the job's `work/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRequest {
    pub sha256: String,
    pub path: String,
    #[serde(default)]
    pub executable: bool,
}

/// An output of a submitted job: one file (`path`) or every file a glob matches
/// (`glob`), below the job's `work/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
}

/// `{"sha256": ..., "size": ...}`: a stored blob (`PUT /admin/v1/blobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStored {
    pub sha256: String,
    pub size: u64,
}

/// Where the current attempt stands, as its runner last said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    /// The last `job_phase`; `None` before the first (or once the process started,
    /// when `state` says `running`, until `uploading`).
    pub phase: Option<JobPhase>,
    /// The last `job_progress`.
    pub fraction: Option<f64>,
    pub message: Option<String>,
}

/// One result file of the current attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultFile {
    /// Below the job's `work/`.
    pub path: String,
    /// Of the stored upload; `None` when nothing arrived.
    pub sha256: Option<String>,
    pub size: Option<u64>,
    /// The runner confirmed the upload (`job_output_file`).
    pub reported: bool,
    /// Why the runner gave up on it (`job_output_failed`), or why the report and the
    /// upload disagree.
    pub failure: Option<String>,
}

/// `GET /admin/v1/jobs/{id}/results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResults {
    pub job_id: String,
    pub attempt: u32,
    pub files: Vec<ResultFile>,
    /// The runner's summary (`job_outputs`) has arrived: `files` is complete.
    pub complete: bool,
    /// Declared outputs that were not there (from the summary).
    pub missing: Vec<String>,
}
