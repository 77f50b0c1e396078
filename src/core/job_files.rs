//! A job's files around its process (issue 19): its inputs fetched before the process
//! starts (phase `fetching`), its outputs uploaded after it ended (phase `uploading`).
//!
//! Owns: when a job enters each phase (the `job_phase` event, persisted and sent like
//! every event), the `FetchInputs` effect, and what a fetch's end means for the job: it
//! starts, or it ends unstarted (a final failure, or a stop asked for meanwhile). Must
//! not: know HTTP, the cache or the job's folder (the runtime's `transfer`), or read
//! the clock (the job's timeout counts from acceptance, on the core's own timer).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::protocol::{ExitStatus, JobOutcome, JobPhase, JobRef, JobSpec, JobUsage, RunnerEvent};

use super::effect::{CancelReason, Durable, Effect, Effects, Notice, OutputUploads, TimerKind};
use super::runner::{JobFinish, OutputDone, Runner, outcome_of};

/// How fetching a job's inputs ended, as the runtime saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum FetchOutcome {
    /// Every input is in place in `work/`, its checksum checked.
    Fetched,
    /// An input failed for good (a checksum that does not match, a status that is not
    /// transient, a URL or path the runner refuses, retries spent): `input` is its path
    /// below `work/`, `reason` the cause in words.
    Failed { input: String, reason: String },
    /// The fetch was stopped because the core asked the job to stop.
    Stopped,
}

impl FetchOutcome {
    pub fn fetched(&self) -> bool {
        matches!(self, Self::Fetched)
    }
}

impl Runner {
    /// The job's process can start: with inputs, they are fetched first (phase
    /// `fetching`, the process starts when `InputsFetched` says so); without, now.
    pub(crate) fn start_or_fetch(&mut self, fx: &mut Effects, job: Arc<JobSpec>) {
        if job.inputs.is_empty() {
            fx.push(Effect::SpawnJob { job });
            return;
        }
        self.emit(
            fx,
            RunnerEvent::JobPhase {
                job: job.job_ref(),
                phase: JobPhase::Fetching,
            },
        );
        self.fetching.insert(job.job_id.clone(), Arc::clone(&job));
        fx.push(Effect::FetchInputs { job });
    }

    /// Whether this attempt waits for its inputs.
    pub(crate) fn is_fetching(&self, job: &JobRef) -> bool {
        self.fetching
            .get(&job.job_id)
            .is_some_and(|spec| spec.attempt == job.attempt)
    }

    /// A fetch ended: the process starts, unless an input failed or the job was asked
    /// to stop meanwhile; then the job ends here, never started (no process, no
    /// `post_job`). Returns whether the job ended.
    pub(crate) fn inputs_fetched(
        &mut self,
        fx: &mut Effects,
        job: &JobRef,
        outcome: &FetchOutcome,
    ) -> bool {
        if !self.is_fetching(job) || !self.is_known(job) {
            fx.notify(Notice::StaleJob {
                job: job.clone(),
                what: "inputs_fetched".to_owned(),
            });
            return false;
        }
        let Some(spec) = self.fetching.remove(&job.job_id) else {
            return false;
        };
        let stopping = self.jobs.get(&job.job_id).and_then(|entry| entry.cancel);
        match (outcome, stopping) {
            (FetchOutcome::Fetched, None) => {
                fx.push(Effect::SpawnJob { job: spec });
                false
            }
            (FetchOutcome::Failed { input, reason }, None) => {
                let detail = format!(
                    "input {input} could not be fetched: {reason}; the job was not started"
                );
                self.job_ended_unstarted(fx, job, Some(detail));
                true
            }
            (FetchOutcome::Stopped, None) => {
                let detail = "the fetch of its inputs was stopped; the job was not started";
                self.job_ended_unstarted(fx, job, Some(detail.to_owned()));
                true
            }
            // Asked to stop meanwhile: the stop's outcome, whatever the fetch did.
            (_, Some(_)) => {
                self.job_ended_unstarted(fx, job, None);
                true
            }
        }
    }
}

/// A job whose process ended and whose outputs are being uploaded: how it ended, kept
/// for its `job_finished`, which follows the uploads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Uploading {
    pub attempt: u32,
    pub status: ExitStatus,
    pub duration_ms: u64,
    pub output_bytes: (u64, u64),
    /// The cancel that decided the outcome at the exit: a stop asked for during the
    /// uploads abandons them but does not change how the process ended.
    pub cancel: Option<CancelReason>,
    pub usage: JobUsage,
}

/// What an upload's end says about one file.
pub(crate) enum FileEnd<'a> {
    Uploaded {
        url: &'a str,
        sha256: &'a str,
        size: u64,
    },
    Failed {
        reason: &'a str,
    },
}

impl Runner {
    /// The process ended: a job with outputs whose end calls for them (it exited or
    /// timed out; not cancelled, not lost) enters `uploading` instead of ending now.
    /// Returns whether it did.
    pub(crate) fn begin_uploads(&mut self, fx: &mut Effects, end: &JobFinish<'_>) -> bool {
        let Some(entry) = self.jobs.get(&end.job.job_id) else {
            return false;
        };
        let cancel = entry.cancel.or(end.recorded_cancel);
        let uploads = !entry.outputs.is_empty()
            && matches!(
                outcome_of(cancel, end.status),
                JobOutcome::Succeeded | JobOutcome::Failed | JobOutcome::TimedOut
            );
        if !uploads {
            return false;
        }
        let outputs = entry.outputs.clone();
        let job = end.job.clone();
        // The uploads are not bounded by the process's timeout.
        fx.cancel(TimerKind::JobTimeout(job.clone()));
        self.emit(
            fx,
            RunnerEvent::JobPhase {
                job: job.clone(),
                phase: JobPhase::Uploading,
            },
        );
        let done = self
            .recorded_outputs(&job)
            .map(|d| d.path.clone())
            .collect();
        self.uploading.insert(
            job.job_id.clone(),
            Uploading {
                attempt: job.attempt,
                status: end.status,
                duration_ms: end.duration_ms,
                output_bytes: end.output_bytes,
                cancel,
                usage: end.usage,
            },
        );
        fx.push(Effect::UploadOutputs(Box::new(OutputUploads {
            job,
            outputs,
            done,
        })));
        true
    }

    /// Whether this attempt's outputs are being uploaded.
    pub(crate) fn is_uploading(&self, job: &JobRef) -> bool {
        self.uploading
            .get(&job.job_id)
            .is_some_and(|u| u.attempt == job.attempt)
    }

    fn recorded_outputs<'a>(&'a self, job: &'a JobRef) -> impl Iterator<Item = &'a OutputDone> {
        self.outputs_done
            .get(&job.job_id)
            .into_iter()
            .flatten()
            .filter(move |d| d.job.attempt == job.attempt)
    }

    /// One file's upload is over: recorded and reported in one batch, once.
    pub(crate) fn output_done(
        &mut self,
        fx: &mut Effects,
        job: &JobRef,
        path: &str,
        end: FileEnd<'_>,
    ) {
        let again = self.recorded_outputs(job).any(|d| d.path == path);
        if !self.is_uploading(job) || again {
            fx.notify(Notice::StaleJob {
                job: job.clone(),
                what: format!("the end of the upload of {path}"),
            });
            return;
        }
        let done = OutputDone {
            job: job.clone(),
            path: path.to_owned(),
            uploaded: matches!(end, FileEnd::Uploaded { .. }),
        };
        fx.persist(Durable::OutputDone {
            done: Box::new(done.clone()),
        });
        self.outputs_done
            .entry(job.job_id.clone())
            .or_default()
            .push(done);
        let event = match end {
            FileEnd::Uploaded { url, sha256, size } => RunnerEvent::JobOutputFile {
                job: job.clone(),
                path: path.to_owned(),
                url: url.to_owned(),
                sha256: sha256.to_owned(),
                size,
            },
            FileEnd::Failed { reason } => RunnerEvent::JobOutputFailed {
                job: job.clone(),
                path: path.to_owned(),
                reason: reason.to_owned(),
            },
        };
        self.emit(fx, event);
    }

    /// The uploads are over: the summary, then the job's end as its process ended,
    /// with its wall time up to now. Returns whether the job ended.
    pub(crate) fn uploads_done(
        &mut self,
        fx: &mut Effects,
        job: &JobRef,
        missing: &[String],
        wall_ms: Option<u64>,
    ) -> bool {
        if !self.is_uploading(job) {
            fx.notify(Notice::StaleJob {
                job: job.clone(),
                what: "uploads_done".to_owned(),
            });
            return false;
        }
        let Some(up) = self.uploading.remove(&job.job_id) else {
            return false;
        };
        let (uploaded, failed) = self.recorded_outputs(job).fold((0u32, 0u32), |(u, f), d| {
            if d.uploaded { (u + 1, f) } else { (u, f + 1) }
        });
        self.emit(
            fx,
            RunnerEvent::JobOutputs {
                job: job.clone(),
                uploaded,
                failed,
                missing: missing.to_vec(),
            },
        );
        // The outcome is the exit's, whatever stopped the uploads.
        if let Some(entry) = self.jobs.get_mut(&job.job_id) {
            entry.cancel = up.cancel;
        }
        self.job_finished(
            fx,
            JobFinish {
                job,
                status: up.status,
                duration_ms: up.duration_ms,
                output_bytes: up.output_bytes,
                spawn_error: None,
                recorded_cancel: None,
                usage: JobUsage {
                    wall_ms: wall_ms.or(up.usage.wall_ms),
                    ..up.usage
                },
            },
        );
        true
    }
}
