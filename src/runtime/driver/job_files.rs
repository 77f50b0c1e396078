//! A job's files in flight: its inputs being fetched (`Effect::FetchInputs`, whose end
//! comes back as `InputsFetched`) and its outputs being uploaded
//! (`Effect::UploadOutputs`: `OutputUploaded`/`OutputFailed` per file, then
//! `UploadsDone`), each a task of its own.
//!
//! Owns: the transfers (made at the first use, so an install or a farewell never opens
//! the input cache), one task per job, and stopping it when the core asks the job to
//! stop. Must not: decide what an end means for the job (the core's `job_files`).

use std::collections::HashMap;

use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::core::{Event, FetchOutcome};
use crate::protocol::{JobRef, JobSpec, OutputFile};
use crate::runtime::jobs::PreparedFolder;
use crate::runtime::transfer::{TransferSettings, Transfers};

use super::input::Input;

pub(super) struct JobFiles {
    settings: TransferSettings,
    transfers: Option<Transfers>,
    /// Uploads in flight, one task per job.
    uploads: HashMap<JobRef, AbortHandle>,
    /// In flight: its task (`None`: it failed before one began; its end is queued).
    running: HashMap<JobRef, Option<AbortHandle>>,
}

impl JobFiles {
    pub fn new(settings: TransferSettings) -> Self {
        Self {
            settings,
            transfers: None,
            uploads: HashMap::new(),
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
        let folder = match folder {
            Ok(folder) => folder,
            Err(reason) => {
                self.running.insert(job.clone(), None);
                return report_now(inputs, job, "(the job's folder)", reason);
            }
        };
        let transfers = match self.transfers() {
            Ok(transfers) => transfers,
            Err(reason) => {
                self.running.insert(job.clone(), None);
                return report_now(inputs, job, "(the input cache)", reason);
            }
        };
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

    fn transfers(&mut self) -> Result<Transfers, String> {
        if let Some(transfers) = &self.transfers {
            return Ok(transfers.clone());
        }
        let made = Transfers::new(&self.settings).map_err(|e| e.to_string())?;
        self.transfers = Some(made.clone());
        Ok(made)
    }

    /// Upload the job's outputs but for `done`; each file's end, then `UploadsDone`,
    /// arrive through `inputs`.
    pub fn upload(
        &mut self,
        job: JobRef,
        outputs: Vec<OutputFile>,
        done: Vec<String>,
        folder: Result<PreparedFolder, String>,
        inputs: &UnboundedSender<Input>,
    ) {
        let tx = inputs.clone();
        let transfers = self.transfers();
        info!(job = %job.job_id, attempt = job.attempt, outputs = outputs.len(), done = done.len(), "uploading the job's outputs");
        let reported = job.clone();
        let task = tokio::spawn(async move {
            let send = |event| {
                let _ = tx.send(Input::Event(event));
            };
            let failed = |path: String, reason: String| Event::OutputFailed {
                job: reported.clone(),
                path,
                reason,
            };
            let (transfers, folder) = match (transfers, folder) {
                (Ok(transfers), Ok(folder)) => (transfers, folder),
                (Err(reason), _) | (_, Err(reason)) => {
                    for output in outputs
                        .iter()
                        .filter(|o| !done.contains(&o.declared().to_owned()))
                    {
                        send(failed(output.declared().to_owned(), reason.clone()));
                    }
                    send(Event::UploadsDone {
                        job: reported.clone(),
                        missing: Vec::new(),
                        wall_ms: None,
                    });
                    return;
                }
            };
            let account = folder.account.as_ref();
            let plan = match transfers
                .plan_outputs(&folder.work, &outputs, account)
                .await
            {
                Ok(plan) => plan,
                Err(error) => {
                    for output in outputs
                        .iter()
                        .filter(|o| !done.contains(&o.declared().to_owned()))
                    {
                        send(failed(output.declared().to_owned(), error.to_string()));
                    }
                    send(Event::UploadsDone {
                        job: reported.clone(),
                        missing: Vec::new(),
                        wall_ms: None,
                    });
                    return;
                }
            };
            for refused in plan.refused.iter().filter(|r| !done.contains(&r.path)) {
                send(failed(refused.path.clone(), refused.reason.clone()));
            }
            for planned in plan.uploads.iter().filter(|p| !done.contains(&p.path)) {
                match transfers.upload(&folder.work, planned, account).await {
                    Ok(file) => send(Event::OutputUploaded {
                        job: reported.clone(),
                        path: file.path,
                        url: file.url,
                        sha256: file.sha256,
                        size: file.size,
                    }),
                    Err(error) => {
                        warn!(job = %reported.job_id, path = %planned.path, %error, "output not uploaded");
                        send(failed(planned.path.clone(), error.to_string()));
                    }
                }
            }
            send(Event::UploadsDone {
                job: reported.clone(),
                missing: plan.missing,
                wall_ms: None,
            });
        });
        self.uploads.insert(job, task.abort_handle());
    }

    /// The uploads' end arrived: whether they were still in flight (ones abandoned
    /// meanwhile were reported done already).
    pub fn uploads_over(&mut self, job: &JobRef) -> bool {
        self.uploads.remove(job).is_some()
    }

    /// Whether reports of this job's uploads are still awaited.
    pub fn uploading(&self, job: &JobRef) -> bool {
        self.uploads.contains_key(job)
    }

    /// Abandon the job's uploads, if it has some in flight; returns whether it had.
    pub fn abandon_uploads(&mut self, job: &JobRef) -> bool {
        match self.uploads.remove(job) {
            Some(task) => {
                task.abort();
                warn!(job = %job.job_id, attempt = job.attempt, "the job's uploads were abandoned: it was asked to stop");
                true
            }
            None => false,
        }
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
        // What was not recorded is uploaded by the next start (the job's end waits
        // with its supervisor).
        for (_, task) in self.uploads.drain() {
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
