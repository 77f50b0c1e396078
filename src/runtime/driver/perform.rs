//! Performing a batch: persist before send (`phase_of`), rows in one transaction and
//! files before them, then each effect handed to the part that owns it; and starting
//! the jobs a batch asked for once its frames are written. Mechanics only: every
//! effect is the core's, performed in the core's order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::core::{Durable, Effect, Event, OutputUploads};

use super::Driver;
use super::input::Input;
use crate::runtime::jobs::JobReport;

/// At exit, how long launches in flight may take to end: a supervisor answers within
/// its bound (`jobs::supervised`), a start without one within this.
const LAUNCHES_WITHIN: Duration = Duration::from_secs(35);

impl Driver {
    /// Batches in dispatch order: the rows of all of them in one transaction, then
    /// each batch's other effects in the written order.
    pub(super) fn perform(&mut self, batches: Vec<Vec<Effect>>) {
        let mut writes = Vec::new();
        let mut rests = Vec::with_capacity(batches.len());
        for mut list in batches {
            // The written order; within a phase, the core's order.
            list.sort_by_key(phase_of);
            let (batch_writes, rest): (Vec<Effect>, Vec<Effect>) = list
                .into_iter()
                .partition(|e| matches!(e, Effect::Persist(_)));
            writes.extend(batch_writes);
            rests.push(rest);
        }
        if let Err(error) = self.persist(writes) {
            error!(%error, "persisting failed; nothing of this batch is sent");
            self.local.push_back(Event::StoreFailed { error });
            // Only what cannot leak unpersisted state goes ahead: closing and exiting.
            for effect in rests.into_iter().flatten() {
                if matches!(effect, Effect::Exit { .. } | Effect::Close { .. }) {
                    self.perform_one(effect);
                }
            }
            return;
        }
        for effect in rests.into_iter().flatten() {
            self.perform_one(effect);
        }
    }

    /// Files first (identity, hardware cache), then one SQLite transaction.
    fn persist(&mut self, writes: Vec<Effect>) -> Result<(), String> {
        let mut rows = Vec::new();
        for effect in writes {
            let Effect::Persist(write) = effect else {
                continue;
            };
            match write {
                Durable::Identity { runner_id } => {
                    let saved = self.steps.save_identity(&runner_id);
                    self.local.push_back(saved);
                }
                Durable::HardwareCache { report } => self.steps.save_hardware_cache(&report)?,
                other => rows.push(other),
            }
        }
        self.durable.commit(rows)?;
        if let Some(took) = self.durable.take_commit_time() {
            self.observer.store_committed(took);
        }
        Ok(())
    }

    fn perform_one(&mut self, effect: Effect) {
        match effect {
            Effect::Persist(_) => {}
            Effect::OpenConnection => self.link.open(&self.inputs_tx),
            Effect::Send(message) => {
                if let Err(error) = self.link.send(message, self.steps.identity()) {
                    self.local.push_back(Event::StepFailed { error });
                }
            }
            Effect::ResendOutbox { after } => {
                self.link.start_resend(after);
                self.pump_resend();
            }
            Effect::Close { reason } => self.link.close(reason),
            Effect::StartTimer { timer, delay } => {
                let crate::core::Delay::Millis(ms) = delay;
                if timer == crate::core::TimerKind::Backoff {
                    info!(delay_ms = ms, "reconnecting after backoff");
                }
                self.timers.start(timer, Duration::from_millis(ms));
            }
            Effect::CancelTimer { timer } => self.timers.cancel(&timer),
            Effect::SpawnJob { job } => self.spawns.push(Arc::unwrap_or_clone(job)),
            Effect::UploadOutputs(uploads) => {
                let OutputUploads { job, outputs, done } = *uploads;
                let folder = match &self.jobs {
                    Some(jobs) => jobs.work_folder(&job).map_err(|e| e.to_string()),
                    None => Err("a farewell runs no jobs".to_owned()),
                };
                self.files
                    .upload(job, outputs, done, folder, &self.inputs_tx);
            }
            Effect::FetchInputs { job } => {
                let folder = match &self.jobs {
                    Some(jobs) => jobs.prepare_folder(&job).map_err(|e| e.to_string()),
                    None => Err("a farewell runs no jobs".to_owned()),
                };
                self.files
                    .start(Arc::unwrap_or_clone(job), folder, &self.inputs_tx);
            }
            Effect::CancelJob {
                job,
                reason,
                grace_secs,
            } => {
                info!(job = %job.job_id, attempt = job.attempt, reason = reason.name(), grace_secs, "cancelling job");
                if let Some(jobs) = &mut self.jobs {
                    jobs.cancel(&job, reason.name(), Duration::from_secs(grace_secs));
                }
                // A job still waiting for its pre_job hook: the hook is stopped instead.
                self.hooks.stop_pre_job(&job);
                // One whose outputs are being uploaded: they are abandoned.
                if self.files.abandon_uploads(&job) {
                    self.local.push_back(Event::UploadsDone {
                        job: job.clone(),
                        missing: Vec::new(),
                        wall_ms: None,
                    });
                }
                // One whose inputs are being fetched: the fetch stops, and says so.
                if self.files.stop(&job) {
                    self.local.push_back(Event::InputsFetched {
                        job,
                        outcome: crate::core::FetchOutcome::Stopped,
                    });
                }
            }
            Effect::RenewLeases { within_ms } => {
                if let Some(jobs) = &mut self.jobs {
                    jobs.renew(Duration::from_millis(within_ms));
                }
            }
            Effect::RunInstallStep { step } => {
                let done = self.steps.install_step(step);
                self.local.push_back(done);
            }
            Effect::RollbackInstall => {
                if self.steps.installing() {
                    // The install's folders go: let go of the files held open in them.
                    self.observer.close_trace();
                    self.durable.let_go_of_files();
                }
                self.steps.rollback();
            }
            Effect::Farewell => self.steps.farewell(),
            Effect::ForgetKey => self.steps.forget_key(),
            Effect::GenerateKey => {
                let generated = self.steps.generate_key();
                self.local.push_back(generated);
            }
            Effect::CollectHardware => self.steps.collect_hardware(&self.inputs_tx),
            Effect::Notify(notice) => self.observer.notify(&notice),
            Effect::TellManager(notice) => self.observer.tell_manager(&notice),
            Effect::RunHook(call) => {
                let runner_id = self.core.runner_id().unwrap_or_default().to_owned();
                self.hooks.run(call, &runner_id, self.core.state_name());
            }
            Effect::Exit { code } => {
                // Accepted and not started: the next start reports them lost.
                for job in self.spawns.drain(..) {
                    warn!(job = %job.job_id, attempt = job.attempt, "not started: the runner is stopping");
                }
                self.files.stop_all();
                #[cfg(unix)]
                self.endpoints.close_all();
                // Jobs the core asked to stop end now; the others stay with their
                // supervisors (a stop that leaves them running), where they have one.
                if let Some(jobs) = &mut self.jobs {
                    jobs.end_at_exit();
                }
                self.exit = Some(code);
            }
        }
    }

    /// The runner stopped with jobs still being launched: each launch ends (within
    /// the supervisor's answer's bound) and goes through the dispatch (the core is
    /// Stopped: it only traces it); then what the exit asked of jobs applies to these
    /// too: one the core asked to stop is killed, the others stay with their
    /// supervisors, and the next start reattaches them.
    pub(super) async fn finish_launches(&mut self, inputs: &mut mpsc::UnboundedReceiver<Input>) {
        let launching = |driver: &Driver| driver.jobs.as_ref().is_some_and(|j| j.launching() > 0);
        if !launching(self) {
            return;
        }
        let launched = |input: &Input| matches!(input, Input::Launched(_));
        if !self
            .take_at_exit(inputs, LAUNCHES_WITHIN, launched, launching)
            .await
        {
            warn!("job launches still in flight at exit are left to their supervisors");
        }
        if let Some(jobs) = &mut self.jobs {
            jobs.end_at_exit();
        }
    }

    /// The runner stopped: `pre_job` hooks are killed (their jobs never start), the
    /// others (`post_job`, `on_stopped`, ...) may finish within their own timeout; each
    /// end still goes through the dispatch (the core is Stopped: it only traces it).
    pub(super) async fn finish_hooks(&mut self, inputs: &mut mpsc::UnboundedReceiver<Input>) {
        self.hooks.stop_pre_jobs();
        let within = self.hooks.timeout() + Duration::from_secs(5);
        let hook_end = |input: &Input| matches!(input, Input::Event(Event::HookFinished { .. }));
        let running = |driver: &Driver| driver.hooks.running() > 0;
        if !self.take_at_exit(inputs, within, hook_end, running).await {
            warn!(
                running = self.hooks.running(),
                "hooks still running at exit are left behind"
            );
        }
    }

    /// At exit, while `waiting` says something is still due: the inputs `wanted` picks
    /// go through the dispatch, the others are dropped. Whether all came `within`.
    async fn take_at_exit(
        &mut self,
        inputs: &mut mpsc::UnboundedReceiver<Input>,
        within: Duration,
        wanted: impl Fn(&Input) -> bool,
        waiting: impl Fn(&Driver) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while waiting(self) {
            match tokio::time::timeout_at(deadline, inputs.recv()).await {
                Ok(Some(input)) if wanted(&input) => {
                    if let Some(event) = self.accept(input) {
                        self.dispatch(event);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }

    pub(super) async fn spawn_jobs(&mut self) {
        for job in std::mem::take(&mut self.spawns) {
            // Its endpoint is served before its process starts.
            #[cfg(unix)]
            let folder_ready = self.folder_and_endpoint(&job).await;
            #[cfg(windows)]
            let folder_ready = false;
            let failed = match &mut self.jobs {
                Some(jobs) => {
                    info!(job = %job.job_id, attempt = job.attempt, program = ?job.command.first(), "starting job");
                    // Its `Started` comes back as an input (`Input::Launched`).
                    let inputs = self.inputs_tx.clone();
                    let deliver = move |launched| drop(inputs.send(Input::Launched(launched)));
                    jobs.start(&job, folder_ready, deliver)
                        .map(JobReport::into_event)
                }
                None => Some(Event::JobSpawnFailed {
                    job: job.job_ref(),
                    error: "a farewell runs no jobs".into(),
                }),
            };
            self.local.extend(failed);
        }
    }

    /// The job's folder made and its endpoint served, before its process starts.
    /// Whether the folder is there (the launch then does not make it again); a folder
    /// that cannot be made is the launch's to report, which tries again and says why.
    #[cfg(unix)]
    async fn folder_and_endpoint(&mut self, job: &crate::protocol::JobSpec) -> bool {
        let Some(Ok(folder)) = self.jobs.as_ref().map(|jobs| jobs.prepare_folder(job)) else {
            return false;
        };
        if let Some(job_dir) = folder.work.parent() {
            let kv = crate::runtime::job_endpoint::KvView::new(job.kv.clone());
            self.endpoints
                .open(
                    job.job_ref(),
                    job_dir,
                    folder.account,
                    kv,
                    folder.endpoint_socket,
                )
                .await;
        }
        true
    }

    pub(super) fn pump_resend(&mut self) {
        match self
            .link
            .pump_resend(&self.durable.store, self.steps.identity())
        {
            Ok(0) => {}
            Ok(resent) => self.observer.resent(resent),
            Err(e) => self.local.push_back(Event::StoreFailed {
                error: e.to_string(),
            }),
        }
    }

    pub(super) fn save_acks(&mut self) {
        if let Err(e) = self.durable.save_acks() {
            self.local.push_back(Event::StoreFailed {
                error: e.to_string(),
            });
        }
    }
}

/// Persist before send: the order in which a batch's effects are performed.
fn phase_of(effect: &Effect) -> u8 {
    match effect {
        Effect::Persist(_) => 0,
        Effect::Send(_) | Effect::ResendOutbox { .. } => 1,
        Effect::Close { .. } => 2,
        Effect::OpenConnection => 3,
        Effect::StartTimer { .. } | Effect::CancelTimer { .. } => 4,
        Effect::SpawnJob { .. }
        | Effect::FetchInputs { .. }
        | Effect::UploadOutputs(_)
        | Effect::CancelJob { .. }
        | Effect::RenewLeases { .. } => 5,
        Effect::RunInstallStep { .. }
        | Effect::RollbackInstall
        | Effect::ForgetKey
        | Effect::Farewell
        | Effect::GenerateKey
        | Effect::CollectHardware
        | Effect::RunHook(_) => 6,
        Effect::Notify(_) | Effect::TellManager(_) => 7,
        Effect::Exit { .. } => 8,
    }
}
