//! The fetches of jobs' inputs in flight (`Effect::FetchInputs`), each a task of its
//! own whose end comes back to the loop as `InputsFetched`.
//!
//! Owns: the transfers (made at the first fetch, so an install or a farewell never
//! opens the input cache), one task per fetching job, and stopping it when the core
//! asks the job to stop. Must not: decide what a fetch's end means for the job (the
//! core's `inputs_fetched`).

use std::collections::HashMap;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::core::{Event, FetchOutcome};
use crate::protocol::{JobRef, JobSpec};
use crate::runtime::jobs::PreparedFolder;
use crate::runtime::transfer::{TransferSettings, Transfers};

use super::input::Input;

pub(super) struct Fetches {
    settings: TransferSettings,
    transfers: Option<Transfers>,
    /// In flight: its task (`None`: it failed before one began; its end is queued).
    running: HashMap<JobRef, Option<AbortHandle>>,
}

impl Fetches {
    pub fn new(settings: TransferSettings) -> Self {
        Self {
            settings,
            transfers: None,
            running: HashMap::new(),
        }
    }

    /// Fetch `spec`'s inputs into the folder made for it (or report why there is
    /// none); the end arrives through `inputs` as `InputsFetched`.
    pub fn start(
        &mut self,
        spec: JobSpec,
        folder: Result<PreparedFolder, String>,
        inputs: &UnboundedSender<Input>,
    ) {
        let job = spec.job_ref();
        let transfers = match (&self.transfers, folder) {
            (_, Err(reason)) => {
                self.running.insert(job.clone(), None);
                return report_now(inputs, job, "(the job's folder)", reason);
            }
            (Some(transfers), Ok(folder)) => (transfers.clone(), folder),
            (None, Ok(folder)) => match Transfers::new(&self.settings) {
                Ok(made) => {
                    self.transfers = Some(made.clone());
                    (made, folder)
                }
                Err(error) => {
                    self.running.insert(job.clone(), None);
                    return report_now(inputs, job, "(the input cache)", error.to_string());
                }
            },
        };
        let (transfers, folder) = transfers;
        info!(job = %job.job_id, attempt = job.attempt, inputs = spec.inputs.len(), "fetching the job's inputs");
        let tx = inputs.clone();
        let reported = job.clone();
        let task = tokio::spawn(async move {
            let mut outcome = FetchOutcome::Fetched;
            for input in &spec.inputs {
                if let Err(error) = transfers
                    .fetch_input(input, &folder.work, folder.account.as_ref())
                    .await
                {
                    warn!(job = %reported.job_id, input = %input.path, %error, "input not fetched");
                    outcome = FetchOutcome::Failed {
                        input: input.path.clone(),
                        reason: error.to_string(),
                    };
                    break;
                }
            }
            let _ = tx.send(Input::Event(Event::InputsFetched {
                job: reported,
                outcome,
            }));
        });
        self.running.insert(job, Some(task.abort_handle()));
    }

    /// A fetch's end arrived: whether it was still in flight (one stopped meanwhile
    /// was reported stopped already, and its late end is dropped).
    pub fn finished(&mut self, job: &JobRef) -> bool {
        self.running.remove(job).is_some()
    }

    /// Stop the job's fetch, if it has one in flight; returns whether it had.
    pub fn stop(&mut self, job: &JobRef) -> bool {
        match self.running.remove(job) {
            Some(task) => {
                if let Some(task) = task {
                    task.abort();
                }
                info!(job = %job.job_id, attempt = job.attempt, "fetching the job's inputs stopped");
                true
            }
            None => false,
        }
    }

    /// The runner stops: every fetch ends with it (its job is reported lost at the
    /// next start, as one that never started).
    pub fn stop_all(&mut self) {
        for task in self.running.drain().filter_map(|(_, task)| task) {
            task.abort();
        }
    }
}

/// A fetch that could not even begin: its end, through the same channel.
fn report_now(inputs: &UnboundedSender<Input>, job: JobRef, input: &str, reason: String) {
    let _ = inputs.send(Input::Event(Event::InputsFetched {
        job,
        outcome: FetchOutcome::Failed {
            input: input.to_owned(),
            reason,
        },
    }));
}
