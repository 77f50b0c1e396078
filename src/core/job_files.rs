//! A job's files around its process (issue 19): its inputs fetched before the process
//! starts (phase `fetching`), its outputs uploaded after it ended (phase `uploading`).
//!
//! Owns: when a job enters each phase (the `job_phase` event, persisted and sent like
//! every event), the `FetchInputs` effect, and what a fetch's end means for the job: it
//! starts, or it ends unstarted (a final failure, or a stop asked for meanwhile). Must
//! not: know HTTP, the cache or the job's folder (the runtime's `transfer`), or read
//! the clock (the job's timeout counts from acceptance, on the core's own timer).

use serde::{Deserialize, Serialize};

use crate::protocol::{JobPhase, JobRef, JobSpec, RunnerEvent};

use super::effect::{Effect, Effects, Notice};
use super::runner::Runner;

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
    pub(crate) fn start_or_fetch(&mut self, fx: &mut Effects, job: JobSpec) {
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
        self.fetching.insert(job.job_id.clone(), job.clone());
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
