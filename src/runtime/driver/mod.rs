/*!
The driver: the one place where events enter the core.

Owns: the loop and the one dispatch point. Every input (socket frames, connection
results, timers, job reports, control requests, its own follow-up events) is filtered
here — reports of a connection that is no longer current and timers that were
cancelled or replaced never reach the core — then dispatched, observed (`observe`:
trace, transition, status) and performed in a fixed order: persist (files first, then
one SQLite transaction), send, close, connect, timers, processes, local steps,
notices, exit. If the transaction fails nothing of the batch is sent and the core gets
`StoreFailed`.

Must not: decide a lifecycle question, or look at the core's state except to report
it. Each duty lives in its own file and imports nothing of the others but what the
loop hands it:

- `input`: what reaches the loop, converted from each source's own type;
- `launch`: starting a runner (state folder, identity, store, boot record, trace);
- `link`: the connection, the writer's queue, the resend cursor, `wire()`;
- `job_files`: jobs' inputs being fetched and outputs being uploaded, a task each;
- `job_gauges`: what is measured of running jobs (wall time, GPU memory);
- `endpoints`: jobs' local endpoints (`job.sock`) and the writes waiting for their batch;
- `durable`: a batch's transaction, acknowledgements batched, ended jobs' folders;
- `group`: which ready inputs are dispatched together and share one transaction;
- `local_steps`: install steps and rollback, keys, hardware, the install's farewell;
- `observe`: the trace, transitions, status, operator and service-manager notices;
- `perform`: a batch performed, persist before send; the jobs it starts;
- `leave`: `fyn-runner uninstall`'s farewell (the runner booted to leave);
- `handle`: what the caller holds.
*/

mod durable;
#[cfg(unix)]
mod endpoints;
mod group;
mod handle;
mod input;
mod job_files;
mod job_gauges;
mod launch;
pub mod leave;
mod link;
mod local_steps;
mod observe;
mod perform;

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use crate::core::{Core, Effect, Effects, Event, ExitCode, Lifecycle};
use crate::protocol::JobSpec;

use super::control::Control;
use super::hooks::HookRunner;
use super::jobs::{JobReport, JobSupervisor};
use super::timers::Timers;
use durable::Durability;
use group::Group;
use input::Input;
use job_files::JobFiles;
use job_gauges::JobGauges;
use link::Link;
use local_steps::{FAREWELL_WITHIN, LocalSteps};
use observe::{Observer, Passage};

pub use handle::{RunnerHandle, Transition};
pub use launch::{StartError, start, start_install};

/// How often acknowledgements that wait are written (see `Durability::save_acks`).
const SAVE_ACKS_EVERY: Duration = Duration::from_secs(5);

struct Driver {
    core: Core,
    observer: Observer,
    link: Link,
    durable: Durability,
    steps: LocalSteps,
    timers: Timers<Input>,
    /// None for a farewell, which runs no jobs and must not touch the jobs folder
    /// (an install rolling back has just removed it).
    jobs: Option<JobSupervisor>,
    inputs_tx: mpsc::UnboundedSender<Input>,
    /// Events the driver itself produced while performing a batch; they go in before
    /// anything from outside, in order.
    local: VecDeque<Event>,
    exit: Option<ExitCode>,
    /// The batch list, reused so a long-running runner does not allocate one per event.
    scratch: Effects,
    /// Jobs to start once the frames of the batch that asked for them are written.
    spawns: Vec<JobSpec>,
    /// The operator's hooks in flight.
    hooks: HookRunner,
    /// Jobs' inputs being fetched.
    files: JobFiles,
    /// What is measured of running jobs: wall time, GPU memory.
    job_gauges: JobGauges,
    /// Jobs' local endpoints (Unix).
    #[cfg(unix)]
    endpoints: endpoints::Endpoints,
    /// A job's key-value write, confirmed once the batch its event made is durable.
    #[cfg(unix)]
    kv_waiting: Option<crate::runtime::job_endpoint::Taken>,
}

/// What jobs say through their endpoints (none on Windows, where they have none).
#[cfg(unix)]
pub(super) type EndpointReports = mpsc::Receiver<crate::runtime::job_endpoint::EndpointReport>;
#[cfg(windows)]
pub(super) type EndpointReports = mpsc::Receiver<std::convert::Infallible>;

impl Driver {
    async fn run(
        mut self,
        boot: Effects,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut reports: mpsc::UnboundedReceiver<JobReport>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut endpoint_reports: EndpointReports,
    ) -> ExitCode {
        self.perform(vec![boot.list]);
        let mut save_acks = tokio::time::interval(SAVE_ACKS_EVERY);
        save_acks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the next folder due, moved when that changes, not made anew on
        // every turn of the loop.
        let removal = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(removal);
        let mut removal_at = None;
        // An input taken while a group was being gathered that could not join it: it
        // is accepted once the group is performed.
        let mut carried: Option<Input> = None;
        // The same for a job's end: its endpoint is closed first (`report_in`), which
        // a group cannot wait for.
        let mut held_end: Option<JobReport> = None;
        while self.exit.is_none() {
            if !self.spawns.is_empty() {
                // One turn for the writer first: the API hears `job_accepted` (and the
                // command's ack) while the process starts, not after it.
                tokio::task::yield_now().await;
                self.spawn_jobs().await;
                continue;
            }
            if let Some(event) = self.local.pop_front() {
                if group::may_group(&event) {
                    self.dispatch_group(event, |driver| {
                        let next = driver.local.front().is_some_and(group::may_group);
                        next.then(|| driver.local.pop_front()).flatten()
                    });
                } else {
                    self.dispatch(event);
                }
                continue;
            }
            #[cfg(unix)]
            if let Some(said) = self.endpoints.next_released() {
                if let Some(event) = self.accept_endpoint(said) {
                    self.dispatch(event);
                }
                continue;
            }
            if let Some(report) = held_end.take() {
                if let Some(event) = self.report_in(report, &mut endpoint_reports).await {
                    self.dispatch(event);
                }
                continue;
            }
            if let Some(input) = carried.take() {
                if let Some(event) = self.accept(input) {
                    self.dispatch(event);
                }
                self.pump_resend();
                continue;
            }
            self.observer.flush_trace();
            // A spare job folder and supervisor are made when idle, and only once
            // jobs can come: a runner still registering or reconnecting has none to
            // start, and a fleet starting at once would make a thousand for nothing.
            // Mechanics, not a decision: a start without a spare makes its own. Not
            // while a job launches or its `job_started` waits for the writer: making
            // a supervisor is a process start, CPU those need (on two cores it held
            // a `job_started` back by 1.4 ms; docs/architecture.md). The API's
            // acknowledgement wakes the loop again. (Waiting for the API to have
            // acknowledged every event halved the rate of eight slots' starts: with
            // jobs in flight that moment rarely comes, and starts made their own.)
            if inputs.is_empty()
                && reports.is_empty()
                && self.core.lifecycle() == Lifecycle::Active
                && !self.link.writing()
                && let Some(jobs) = &self.jobs
                && jobs.launching() == 0
            {
                jobs.prepare_ahead();
                crate::runtime::memory::release_startup_pages_once();
            }
            // Job output waits (and so does the job, once its credits are spent) while
            // the API is behind: memory stays bounded however slow the link is.
            let paused = self.link.backpressured();
            let due = self.durable.next_removal();
            if due != removal_at {
                removal_at = due;
                if let Some(at) = due {
                    removal.as_mut().reset(at);
                }
            }
            let next = tokio::select! {
                _ = save_acks.tick() => {
                    self.save_acks();
                    None
                }
                () = &mut removal, if removal_at.is_some() => {
                    self.durable.remove_ended_folders(&self.core.running_jobs());
                    None
                }
                Some(input) = inputs.recv() => self.accept(input),
                Some(report) = reports.recv(), if !paused => {
                    self.report_in(report, &mut endpoint_reports).await
                }
                Some(said) = endpoint_reports.recv() => {
                    #[cfg(unix)]
                    { self.accept_endpoint(said) }
                    #[cfg(windows)]
                    match said {}
                }
                Some(request) = control.recv() => Some(match request {
                    Control::Drain { deadline_secs, by } => Event::ShutdownRequested {
                        deadline_secs,
                        origin: Some(by),
                    },
                    Control::Force => Event::ForceShutdown,
                    Control::Stop => Event::StopRequested,
                }),
                else => break,
            };
            if let Some(event) = next {
                if group::may_group(&event) {
                    self.dispatch_group(event, |driver| {
                        driver.ready_to_join(&mut inputs, &mut reports, &mut carried, &mut held_end)
                    });
                } else {
                    self.dispatch(event);
                }
            }
            self.pump_resend();
        }
        self.finish_launches(&mut inputs).await;
        self.finish_hooks(&mut inputs).await;
        self.save_acks();
        self.observer.flush_trace();
        self.timers.cancel_all();
        if let Some(farewell) = self.steps.take_farewell() {
            let _ = tokio::time::timeout(FAREWELL_WITHIN + Duration::from_secs(1), farewell).await;
        }
        // The Close the last batch queued is written, and the API's answer read, before
        // the caller drops the runtime and the socket with it (bounded by LINGER).
        self.link.settle(super::ws::LINGER).await;
        let code = self.exit.unwrap_or(ExitCode::StoreFailure);
        info!(code = code.code(), "runner stopped");
        code
    }

    /// Filter what arrives: reports of a connection that is no longer current, and
    /// timers that were cancelled or replaced, never reach the core.
    fn accept(&mut self, input: Input) -> Option<Event> {
        match input {
            Input::Event(event) => {
                if let Event::HookFinished { hook, job, .. } = &event {
                    self.hooks.finished(*hook, job.as_ref());
                }
                // A fetch stopped meanwhile was reported stopped already.
                if let Event::InputsFetched { job, .. } = &event
                    && !self.files.finished(job)
                {
                    return None;
                }
                // Uploads abandoned meanwhile were reported done already.
                match &event {
                    Event::OutputUploaded { job, .. } | Event::OutputFailed { job, .. }
                        if !self.files.uploading(job) =>
                    {
                        return None;
                    }
                    Event::UploadsDone { job, .. } if !self.files.uploads_over(job) => {
                        return None;
                    }
                    _ => {}
                }
                Some(event)
            }
            Input::Job(report) => Some(report.into_event()),
            Input::Launched(launched) => {
                let jobs = self.jobs.as_mut()?;
                let event = jobs.launched(launched).into_event();
                // Dispatched by the caller now, before anything the job said meanwhile.
                #[cfg(unix)]
                if let Event::JobStarted { job, .. } | Event::JobSpawnFailed { job, .. } = &event {
                    self.endpoints.release(job);
                }
                Some(event)
            }
            Input::Link(report) => self.link.accept_report(report),
            Input::Connected { conn, stream } => {
                self.link.accept_connected(conn, *stream, &self.inputs_tx)
            }
            Input::ConnectFailed { conn, error } => self.link.accept_connect_failed(conn, error),
            Input::Timer(fired) => self
                .timers
                .accept(&fired.timer, fired.generation)
                .then_some(Event::TimerFired { timer: fired.timer }),
            Input::Probe(probe) => {
                probe.answer(self.observer.probe_answer(&self.core));
                None
            }
        }
    }

    /// The one dispatch point: every event into the core and every transition out of it
    /// passes here (a group's events too, one by one: `dispatch_group`).
    fn dispatch(&mut self, mut event: Event) {
        let batch = self.dispatch_only(&mut event);
        // A job's key-value write is confirmed to it once the batch recording it is
        // committed (endpoint events never join a group: they come here alone).
        #[cfg(unix)]
        let records_kv = batch.iter().any(|effect| {
            matches!(
                effect,
                Effect::Persist(crate::core::Durable::OutboxAppend { event, .. })
                    if matches!(**event, crate::protocol::RunnerEvent::JobKvPut { .. })
            )
        });
        self.perform(vec![batch]);
        #[cfg(unix)]
        if let Some(taken) = self.kv_waiting.take() {
            let failed = self
                .local
                .iter()
                .any(|e| matches!(e, Event::StoreFailed { .. }));
            if records_kv && !failed {
                taken.confirm();
            } else {
                taken.refuse("the runner could not record the write");
            }
        }
        self.observer.performed(&self.core, &event);
    }

    /// Into the core (with the job's wall time, when it may end a job), and the
    /// batch out, traced; performing it is the caller's.
    fn dispatch_only(&mut self, event: &mut Event) -> Vec<Effect> {
        self.job_gauges.stamp(event);
        let event = &*event;
        let before = self.core.phase();
        let was = self.core.lifecycle();
        let mut effects = std::mem::take(&mut self.scratch);
        self.core.dispatch_into(event, &mut effects);
        self.job_gauges.observe(event, &effects.list);
        let after = self.core.phase();
        let passage = Passage {
            before: &before,
            after: &after,
            was,
            is: self.core.lifecycle(),
        };
        self.observer.dispatched(event, &passage, &effects);
        let batch = std::mem::take(&mut effects.list);
        self.scratch = effects;
        batch
    }

    /// `first`, then whatever `more` has ready while the group takes more (`group`),
    /// each dispatched as it comes; then all their rows in one transaction, then each
    /// batch's other effects in order.
    fn dispatch_group(&mut self, first: Event, mut more: impl FnMut(&mut Self) -> Option<Event>) {
        let mut group = Group::new();
        let mut next = Some(first);
        while let Some(mut event) = next.take() {
            let batch = self.dispatch_only(&mut event);
            group.push(event, batch);
            if group.takes_more() {
                next = more(self);
            }
        }
        let Group {
            events, batches, ..
        } = group;
        self.perform(batches);
        for event in &events {
            self.observer.performed(&self.core, event);
        }
    }

    /// Whether taking `report` closes a job's endpoint first (`report_in`).
    fn closes_endpoint(&self, report: &JobReport) -> bool {
        #[cfg(unix)]
        if let JobReport::Exited { job, .. } = report {
            return self.endpoints.is_open(job);
        }
        let _ = report;
        false
    }

    /// A job's report, accepted. At a job's end its endpoint closes first, and what
    /// the job still said through it (its last progress) goes in before the end: the
    /// one place that happens, whichever way the end was taken (the loop, or a group
    /// that met it and held it back), so no job's socket outlives the job.
    async fn report_in(
        &mut self,
        report: JobReport,
        endpoint_reports: &mut EndpointReports,
    ) -> Option<Event> {
        #[cfg(unix)]
        if let super::jobs::JobReport::Exited { job, .. } = &report
            && let Some(endpoint) = self.endpoints.take(job)
        {
            let close = endpoint.close();
            tokio::pin!(close);
            loop {
                tokio::select! {
                    () = &mut close => break,
                    Some(said) = endpoint_reports.recv() => {
                        if let Some(event) = self.accept_endpoint(said) {
                            self.dispatch(event);
                        }
                    }
                }
            }
            while let Ok(said) = endpoint_reports.try_recv() {
                if let Some(event) = self.accept_endpoint(said) {
                    self.dispatch(event);
                }
            }
        }
        #[cfg(windows)]
        let _ = endpoint_reports;
        self.accept(Input::Job(report))
    }
}
