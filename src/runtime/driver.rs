//! The driver: the one place where events enter the core. It performs each batch of
//! effects in a fixed order — persist (one transaction), send, close, timers,
//! processes, notices, exit — and turns every result back into an event. It never
//! decides a lifecycle question; it does not look at the core's state except to report
//! it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::core::{
    BootMode, Core, Delay, Durable, Effect, Effects, Event, ExitCode, InstallStep, Outbound,
    TimerKind,
};
use crate::protocol::{RunnerMessage, encode};

use super::hardware_check::collect_and_compare;
use super::identity::{Identity, IdentityError};
use super::notices::{log_notice, problem_of};
use super::settings::RunnerSettings;
use super::status::{RunnerStatus, status_of, unix_ms};
use super::store::{Store, StoreError};
use super::timers::{Timers, backoff_delay, random_unit};
use super::ws::{self, Connection, TlsSetupError, WsStream};

/// How often a drain reports what it still waits for.
const DRAIN_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Events read from the outbox per resend step.
const RESEND_PAGE: u32 = 32;

/// How long a rolled-back registration may take to be forgotten by the API.
const FAREWELL_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Everything that reaches the driver's loop.
pub enum Input {
    Event(Event),
    /// A job process's report; converting it releases its output credit, so a job
    /// that prints faster than the runner can deliver waits for the runner.
    Job(super::jobs::JobReport),
    Socket {
        conn: u64,
        event: Event,
    },
    Connected {
        conn: u64,
        stream: Box<WsStream>,
    },
    /// The writer of this connection fell below the low-water mark.
    Drained {
        conn: u64,
    },
    ConnectFailed {
        conn: u64,
        error: String,
    },
    Timer {
        timer: TimerKind,
        generation: u64,
    },
}

/// Requests from outside the loop (signals, the control socket, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Shutdown,
    /// Drain with this deadline (from `fyn-runner drain --deadline`).
    Drain {
        deadline_secs: Option<u64>,
    },
    Force,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "no runner identity in {state_dir} and no registration token: pass --token (or FYN_RUNNER_TOKEN) once to register"
    )]
    NoIdentity { state_dir: String },
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        source: super::secure_fs::SecureFsError,
    },
    #[error(
        "{state_dir} already holds a registered runner; uninstall it first, or pass --force to replace it"
    )]
    AlreadyInstalled { state_dir: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Control(#[from] super::control::ControlError),
    #[error("the job executor cannot run: {0}")]
    Jobs(super::jobs::ExecutorError),
}

/// One change of phase, as the dispatch point saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transition {
    pub from: String,
    pub to: String,
    pub event: &'static str,
}

/// A running runner: its status, a way to ask it to stop, and its exit code.
pub struct RunnerHandle {
    pub status: watch::Receiver<RunnerStatus>,
    transitions: broadcast::Sender<Transition>,
    /// Subscribed before the runner started, so the first reader misses nothing.
    first_transitions: Option<broadcast::Receiver<Transition>>,
    control: mpsc::UnboundedSender<Control>,
    task: tokio::task::JoinHandle<ExitCode>,
    trace_path: Option<PathBuf>,
}

impl RunnerHandle {
    /// The file this run's trace is written to, when tracing is on.
    pub fn trace_path(&self) -> Option<&std::path::Path> {
        self.trace_path.as_deref()
    }

    pub fn shutdown(&self) {
        let _ = self.control.send(Control::Shutdown);
    }

    pub fn force(&self) {
        let _ = self.control.send(Control::Force);
    }

    /// Every phase change (a slow reader misses the oldest, never blocks the runner).
    /// The first call sees them from the start; later calls from the moment of the call.
    pub fn transitions(&mut self) -> broadcast::Receiver<Transition> {
        self.first_transitions
            .take()
            .unwrap_or_else(|| self.transitions.subscribe())
    }

    pub fn control(&self) -> mpsc::UnboundedSender<Control> {
        self.control.clone()
    }

    /// Wait for the runner to stop and return its exit code.
    pub async fn wait(self) -> ExitCode {
        self.task.await.unwrap_or(ExitCode::StoreFailure)
    }

    /// Wait until the status satisfies `pred` (or the runner ends).
    pub async fn wait_for(&mut self, pred: impl Fn(&RunnerStatus) -> bool) -> RunnerStatus {
        let status = self
            .status
            .wait_for(|s| pred(s) || s.state == "Stopped")
            .await;
        status
            .map(|s| s.clone())
            .unwrap_or_else(|_| self.status.borrow().clone())
    }
}

/// Prepare the state directory, the store and the identity, then start the loop.
pub fn start(settings: RunnerSettings) -> Result<RunnerHandle, StartError> {
    launch(settings, None)
}

/// `fyn-runner install`: the same runner, booted into Installing with the steps of
/// `plan`; it registers, installs the service and stops. Refuses when this state
/// directory already has an identity (the caller handles `--force`).
pub fn start_install(
    settings: RunnerSettings,
    plan: super::install::InstallPlan,
) -> Result<RunnerHandle, StartError> {
    if settings.token.is_none() {
        return Err(StartError::NoIdentity {
            state_dir: settings.state_dir.display().to_string(),
        });
    }
    if Identity::load(&settings.state_dir)?.is_some() {
        return Err(StartError::AlreadyInstalled {
            state_dir: settings.state_dir.display().to_string(),
        });
    }
    launch(settings, Some(plan))
}

fn launch(
    settings: RunnerSettings,
    plan: Option<super::install::InstallPlan>,
) -> Result<RunnerHandle, StartError> {
    // The outermost folder this start creates, so a failed install removes all of it.
    let created_root = super::install::outermost_missing(&settings.state_dir);
    super::secure_fs::create_private_dir(&settings.state_dir).map_err(|source| {
        StartError::StateDir {
            path: settings.state_dir.display().to_string(),
            source,
        }
    })?;
    super::control::ensure_unused(&settings.state_dir)?;
    let identity = Identity::load(&settings.state_dir)?;
    let mode = match (&identity, &settings.token) {
        _ if plan.is_some() => BootMode::Install,
        (Some(_), _) => BootMode::Resume,
        (None, Some(_)) => BootMode::Register,
        (None, None) => {
            return Err(StartError::NoIdentity {
                state_dir: settings.state_dir.display().to_string(),
            });
        }
    };
    let store = Store::open(&settings.state_dir)?;
    let mut durable = store.load()?;
    durable.runner_id = identity.as_ref().map(|i| i.runner_id().to_owned());
    let tls = ws::tls_config(settings.ca_file.as_deref())?;
    let restored: Vec<_> = durable.jobs.iter().map(|job| job.job_ref()).collect();
    let pids = store.job_pids()?;
    let booted_from = durable.clone();
    let (core, boot_effects) = Core::boot(settings.core.clone(), mode, durable);
    let trace = start_trace(&settings, mode, &booted_from, &boot_effects);
    let (inputs_tx, inputs) = mpsc::unbounded_channel();
    let jobs_root = settings.jobs_root();
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let jobs = super::jobs::JobSupervisor::with_layout(settings.jobs_layout(), reports_tx);
    jobs.preflight().map_err(StartError::Jobs)?;
    let (retention, janitor) = ended_jobs_retention(&settings, &jobs_root, &restored);
    // Jobs of a previous runner that died with it: kill what is left, report them lost.
    let reaper_inputs = inputs_tx.clone();
    tokio::spawn(async move {
        for job in restored {
            if let Some((_, pid)) = pids.iter().find(|(started, _)| *started == job) {
                super::orphans::reap(*pid, &job).await;
            }
            let lost = Event::JobExited {
                job,
                status: crate::protocol::ExitStatus::Unknown,
                duration_ms: 0,
                stdout_bytes: 0,
                stderr_bytes: 0,
            };
            let _ = reaper_inputs.send(Input::Event(lost));
        }
    });
    let (control_tx, control) = mpsc::unbounded_channel();
    let (status_tx, status) =
        watch::channel(status_of(&core, None, settings.endpoint.as_str(), None));
    let (transitions_tx, first_transitions) = broadcast::channel(1024);
    info!(mode = ?mode, state_dir = %settings.state_dir.display(), endpoint = %settings.endpoint, "runner starting");
    let trace_path = trace.as_ref().map(|t| t.recorder.path().to_path_buf());
    let notifier = super::notify::Notifier::new(settings.notify_socket.as_deref());
    let installer = plan.map(|plan| {
        super::install::Installer::new(plan, &settings.state_dir, created_root.as_deref())
    });
    let driver = Driver {
        installer,
        trace,
        notifier,
        ready_sent: false,
        timers: Timers::new(inputs_tx.clone()),
        jobs,
        retention,
        janitor,
        inputs_tx,
        core,
        store,
        identity,
        pending_key: None,
        resend_after: None,
        created_identity: false,
        farewell: None,
        connection: None,
        next_conn: 0,
        tls,
        settings,
        status: status_tx,
        transitions_tx: transitions_tx.clone(),
        local: VecDeque::new(),
        exit: None,
        scratch: Effects::default(),
        spawns: Vec::new(),
        unsaved_ack: None,
    };
    // An install is no daemon: it leaves the socket to the service it starts.
    let socket = if driver.installer.is_none() {
        Some(super::control::serve(
            &driver.settings.state_dir,
            status.clone(),
            control_tx.clone(),
        )?)
    } else {
        None
    };
    let task = tokio::spawn(async move {
        let code = driver.run(boot_effects, inputs, reports, control).await;
        if let Some(socket) = socket {
            socket.close();
        }
        code
    });
    Ok(RunnerHandle {
        status,
        transitions: transitions_tx,
        first_transitions: Some(first_transitions),
        control: control_tx,
        task,
        trace_path,
    })
}

/// The trace of this run (see `crate::trace`).
struct Trace {
    recorder: crate::trace::Recorder,
    seq: u64,
    started: std::time::Instant,
}

/// Tracing is a diagnostic: when it cannot start, the runner runs without it and says so.
fn start_trace(
    settings: &RunnerSettings,
    mode: BootMode,
    durable: &crate::core::DurableState,
    boot: &Effects,
) -> Option<Trace> {
    let limits = settings.trace.as_ref()?;
    let dir = settings.state_dir.join("traces");
    let started = std::time::Instant::now();
    let result = super::secure_fs::create_private_dir(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            let stamp = crate::trace::StartedAt::UnixMs(unix_ms());
            crate::trace::TraceHeader::new(stamp, mode, &settings.core, durable, &boot.list)
                .map_err(|e| e.to_string())
        })
        .and_then(|header| {
            crate::trace::Recorder::create(&dir, header, limits.max_bytes, limits.keep)
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(recorder) => {
            info!(path = %recorder.path().display(), "recording the session trace");
            Some(Trace {
                recorder,
                seq: 0,
                started,
            })
        }
        Err(error) => {
            warn!(%error, dir = %dir.display(), "cannot record a trace; running without one");
            None
        }
    }
}

/// The term of ended jobs' folders, with what an earlier run left: those past it are
/// removed now, the rest queued. Folders of jobs the store still holds are not
/// touched; they start their term when those jobs end in this run.
fn ended_jobs_retention(
    settings: &RunnerSettings,
    jobs_root: &std::path::Path,
    restored: &[crate::protocol::JobRef],
) -> (super::jobs::Retention, super::jobs::Janitor) {
    let live: Vec<PathBuf> = restored
        .iter()
        .filter_map(|job| super::jobs::job_dir(jobs_root, job).ok())
        .collect();
    let mut retention = super::jobs::Retention::new(settings.job_retention);
    let expired = retention.adopt_leftovers(
        jobs_root,
        &live,
        std::time::SystemTime::now(),
        tokio::time::Instant::now(),
    );
    let mut janitor = super::jobs::Janitor::default();
    janitor.remove(expired);
    (retention, janitor)
}

struct Driver {
    /// Present only for `fyn-runner install`.
    installer: Option<super::install::Installer>,
    trace: Option<Trace>,
    notifier: super::notify::Notifier,
    ready_sent: bool,
    core: Core,
    store: Store,
    identity: Option<Identity>,
    /// A key generated during registration, saved with the runner ID.
    pending_key: Option<SigningKey>,
    /// The resend cursor: events after this index still wait to be resent.
    resend_after: Option<u64>,
    created_identity: bool,
    /// Telling the API to forget a registration that was rolled back.
    farewell: Option<tokio::task::JoinHandle<()>>,
    connection: Option<Connection>,
    next_conn: u64,
    tls: Arc<rustls::ClientConfig>,
    settings: RunnerSettings,
    timers: Timers,
    jobs: super::jobs::JobSupervisor,
    /// Ended jobs' folders, removed when their term is up.
    retention: super::jobs::Retention,
    janitor: super::jobs::Janitor,
    inputs_tx: mpsc::UnboundedSender<Input>,
    status: watch::Sender<RunnerStatus>,
    transitions_tx: broadcast::Sender<Transition>,
    /// Events the driver itself produced while performing a batch; they go in before
    /// anything from outside, in order.
    local: VecDeque<Event>,
    exit: Option<ExitCode>,
    scratch: Effects,
    /// Jobs to start once the frames of the batch that asked for them are written.
    spawns: Vec<crate::protocol::JobSpec>,
    /// An acknowledgement not written yet. A batch of acknowledgements alone is not
    /// worth a commit of its own: it goes with the next batch, or at the next progress
    /// tick, or before the runner stops. Losing it only means the API is sent those
    /// events again and drops them by index.
    unsaved_ack: Option<u64>,
}

impl Driver {
    async fn run(
        mut self,
        boot: Effects,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut reports: mpsc::UnboundedReceiver<super::jobs::JobReport>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) -> ExitCode {
        self.perform(boot);
        let mut progress = tokio::time::interval(DRAIN_PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the next folder due, moved when that changes, not made anew on
        // every turn of the loop.
        let removal = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(removal);
        let mut removal_at = None;
        while self.exit.is_none() {
            if !self.spawns.is_empty() {
                // One turn for the writer first: the API hears `job_accepted` (and the
                // command's ack) while the process starts, not after it.
                tokio::task::yield_now().await;
                self.spawn_jobs();
                continue;
            }
            if let Some(event) = self.local.pop_front() {
                self.dispatch(event);
                continue;
            }
            // Job output waits (and so does the job, once its credits are spent) while
            // the API is behind: memory stays bounded however slow the link is.
            self.flush_trace();
            if inputs.is_empty() && reports.is_empty() {
                self.jobs.prepare_ahead();
            }
            let paused = self.backpressured();
            let due = self.retention.next_due();
            if due != removal_at {
                removal_at = due;
                if let Some(at) = due {
                    removal.as_mut().reset(at);
                }
            }
            let next = tokio::select! {
                _ = progress.tick() => {
                    self.drain_progress();
                    self.save_acks();
                    None
                }
                () = &mut removal, if removal_at.is_some() => {
                    self.remove_ended_folders();
                    None
                }
                Some(input) = inputs.recv() => self.accept(input),
                Some(report) = reports.recv(), if !paused => self.accept(Input::Job(report)),
                Some(request) = control.recv() => Some(match request {
                    Control::Shutdown => Event::ShutdownRequested { deadline_secs: None },
                    Control::Drain { deadline_secs } => Event::ShutdownRequested { deadline_secs },
                    Control::Force => Event::ForceShutdown,
                }),
                else => break,
            };
            if let Some(event) = next {
                self.dispatch(event);
            }
            self.pump_resend();
        }
        self.save_acks();
        self.flush_trace();
        self.timers.cancel_all();
        if let Some(farewell) = self.farewell.take() {
            let _ = tokio::time::timeout(
                FAREWELL_WITHIN + std::time::Duration::from_secs(1),
                farewell,
            )
            .await;
        }
        let code = self.exit.unwrap_or(ExitCode::StoreFailure);
        info!(code = code.code(), "runner stopped");
        code
    }

    /// Filter what arrives: events of a connection that is no longer current, and timers
    /// that were cancelled or replaced, never reach the core.
    fn accept(&mut self, input: Input) -> Option<Event> {
        let current = self.connection.as_ref().map(|c| c.id);
        match input {
            Input::Event(event) => Some(event),
            // Only a wake-up: the loop re-checks the brake and the resend.
            Input::Drained { .. } => None,
            Input::Job(report) => Some(report.into_event()),
            Input::Socket { conn, event } => {
                if Some(conn) != current {
                    return None;
                }
                if matches!(
                    event,
                    Event::SocketClosed { .. } | Event::SocketFailed { .. }
                ) {
                    self.connection = None;
                    self.resend_after = None;
                }
                Some(event)
            }
            Input::Connected { conn, stream } => {
                if conn != self.next_conn {
                    return None;
                }
                self.connection = Some(Connection::spawn(conn, *stream, self.inputs_tx.clone()));
                Some(Event::SocketOpened)
            }
            Input::ConnectFailed { conn, error } => {
                (conn == self.next_conn).then_some(Event::SocketFailed { error })
            }
            Input::Timer { timer, generation } => self
                .timers
                .accept(&timer, generation)
                .then_some(Event::TimerFired { timer }),
        }
    }

    /// The one dispatch point: every event into the core and every transition out of it
    /// passes here.
    fn dispatch(&mut self, event: Event) {
        let before = self.core.phase();
        let mut effects = std::mem::take(&mut self.scratch);
        self.core.dispatch_into(&event, &mut effects);
        let after = self.core.phase();
        self.record(&event, &before, &after, &effects);
        if before != after {
            info!(from = %before, to = %after, event = event.kind().name(), "transition");
            self.tell_service_manager(&before, &after);
            let _ = self.transitions_tx.send(Transition {
                from: before,
                to: after,
                event: event.kind().name(),
            });
        }
        let batch = std::mem::take(&mut effects.list);
        self.scratch = effects;
        self.perform(Effects { list: batch });
        let next = status_of(
            &self.core,
            Some(&self.status.borrow()),
            self.settings.endpoint.as_str(),
            Some(&event),
        );
        let _ = self.status.send(next);
    }

    /// Readiness once Active, the phase on every change, stopping when draining.
    fn tell_service_manager(&mut self, before: &str, after: &str) {
        if !self.notifier.enabled() {
            return;
        }
        let mut message = format!("STATUS={after}");
        if after == "Active" && !self.ready_sent {
            self.ready_sent = true;
            message.push_str("\nREADY=1");
        }
        if after.starts_with("Draining") && !before.starts_with("Draining") {
            message.push_str("\nSTOPPING=1");
            message.push_str(&self.extend_timeout());
        }
        self.notifier.send(&message);
    }

    /// While a drain is under way, ask systemd for time up to the drain's own bound
    /// (the deadline, then the kill grace and flush), so it does not cut the drain short.
    fn extend_timeout(&self) -> String {
        let usec = crate::config::value::extend_timeout_usec(
            self.core.drain_deadline_secs(),
            self.settings.core.flush_grace_secs,
        );
        format!("\nEXTEND_TIMEOUT_USEC={usec}")
    }

    /// Every few seconds while draining: what is left, in the log and for systemd.
    fn drain_progress(&mut self) {
        if self.core.state_name() != "Draining" {
            return;
        }
        let status = self.status.borrow().clone();
        let elapsed = unix_ms().saturating_sub(status.state_since_ms) / 1000;
        let left = self.core.drain_deadline_secs().saturating_sub(elapsed);
        info!(
            phase = %status.phase,
            jobs_left = status.jobs_running,
            undelivered = status.outbox_depth,
            deadline_in_secs = left,
            "draining"
        );
        if self.notifier.enabled() {
            let message = format!(
                "STATUS=Draining: {} job(s) left, deadline in {left} s{}",
                status.jobs_running,
                self.extend_timeout()
            );
            self.notifier.send(&message);
        }
    }

    /// Every event and what came of it goes to the trace, from here and nowhere else.
    fn record(&mut self, event: &Event, before: &str, after: &str, effects: &Effects) {
        let Some(trace) = &mut self.trace else { return };
        trace.seq += 1;
        let mono_ms = u64::try_from(trace.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let entry = crate::trace::TraceEntry::new(
            trace.seq,
            unix_ms(),
            mono_ms,
            event,
            before,
            after,
            &effects.list,
        );
        if let Err(e) = trace.recorder.record(entry) {
            warn!(error = %e, "trace recording stopped");
            self.trace = None;
        }
    }

    fn flush_trace(&mut self) {
        if let Some(trace) = &mut self.trace
            && let Err(e) = trace.recorder.flush()
        {
            warn!(error = %e, "trace recording stopped");
            self.trace = None;
        }
    }

    fn perform(&mut self, effects: Effects) {
        let mut list = effects.list;
        // The written order; within a phase, the core's order.
        list.sort_by_key(phase_of);
        let (writes, rest): (Vec<Effect>, Vec<Effect>) = list
            .into_iter()
            .partition(|e| matches!(e, Effect::Persist(_)));
        if let Err(error) = self.persist(writes) {
            error!(%error, "persisting failed; nothing of this batch is sent");
            self.local.push_back(Event::StoreFailed { error });
            // Only what cannot leak unpersisted state goes ahead: closing and exiting.
            for effect in rest {
                if matches!(effect, Effect::Exit { .. } | Effect::Close { .. }) {
                    self.perform_one(effect);
                }
            }
            return;
        }
        for effect in rest {
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
                Durable::Identity { runner_id } => self.save_identity(&runner_id)?,
                Durable::HardwareCache { report } => self.save_hardware_cache(report)?,
                other => rows.push(other),
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        if let Some(up_to) = only_acks(&rows) {
            self.unsaved_ack = self.unsaved_ack.max(Some(up_to));
            return Ok(());
        }
        if let Some(up_to) = self.unsaved_ack.take() {
            rows.push(Durable::OutboxAcked { up_to });
        }
        self.store.commit(&rows).map_err(|e| e.to_string())?;
        for row in &rows {
            if let Durable::JobRemoved { job } = row {
                self.job_folder_ended(job);
            }
        }
        Ok(())
    }

    /// A job's end is on disk: its folder starts its term.
    fn job_folder_ended(&mut self, job: &crate::protocol::JobRef) {
        if let Ok(folder) = super::jobs::job_dir(&self.settings.jobs_root(), job) {
            if !self.settings.job_retention.is_zero() {
                super::jobs::stamp_end(&folder);
            }
            self.retention
                .job_ended(folder, tokio::time::Instant::now());
        }
    }

    fn remove_ended_folders(&mut self) {
        let mut due = self.retention.take_due(tokio::time::Instant::now());
        // An API that sends an ended job's attempt again gets the same folder back.
        let jobs_root = self.settings.jobs_root();
        let running: Vec<PathBuf> = self
            .core
            .running_jobs()
            .iter()
            .filter_map(|job| super::jobs::job_dir(&jobs_root, job).ok())
            .collect();
        due.retain(|folder| !running.contains(folder));
        self.janitor.remove(due);
    }

    /// Writes the acknowledgement that waits, if any (see `unsaved_ack`).
    fn save_acks(&mut self) {
        let Some(up_to) = self.unsaved_ack.take() else {
            return;
        };
        if let Err(error) = self.store.commit(&[Durable::OutboxAcked { up_to }]) {
            error!(%error, "persisting an acknowledgement failed");
            self.local.push_back(Event::StoreFailed {
                error: error.to_string(),
            });
        }
    }

    fn save_identity(&mut self, runner_id: &str) -> Result<(), String> {
        let Some(key) = self.pending_key.take() else {
            self.local.push_back(Event::StepFailed {
                error: "no key was generated before registration".into(),
            });
            return Ok(());
        };
        let dir = &self.settings.state_dir;
        match Identity::save(dir, runner_id, &key).and_then(|()| Identity::load(dir)) {
            Ok(Some(identity)) => {
                self.created_identity = true;
                self.identity = Some(identity);
                info!(runner_id, path = %super::identity::identity_dir(dir).display(), "identity saved");
                self.local.push_back(Event::StepDone);
            }
            Ok(None) => self.local.push_back(Event::StepFailed {
                error: "the saved identity cannot be read back".into(),
            }),
            Err(e) => self.local.push_back(Event::StepFailed {
                error: e.to_string(),
            }),
        }
        Ok(())
    }

    fn save_hardware_cache(&mut self, report: serde_json::Value) -> Result<(), String> {
        let report: crate::hardware::HardwareReport =
            serde_json::from_value(report).map_err(|e| format!("hardware report: {e}"))?;
        crate::hardware::write_cache(&self.settings.state_dir, &report).map_err(|e| e.to_string())
    }

    fn perform_one(&mut self, effect: Effect) {
        match effect {
            Effect::Persist(_) => {}
            Effect::OpenConnection => self.open_connection(),
            Effect::Send(message) => self.send(message),
            Effect::ResendOutbox { after } => {
                self.resend_after = Some(after);
                self.pump_resend();
            }
            Effect::Close { reason } => {
                if let Some(connection) = self.connection.take() {
                    connection.close(reason, reason.name());
                }
                // A connection attempt still in flight is abandoned with it.
                self.next_conn += 1;
                self.resend_after = None;
            }
            Effect::StartTimer { timer, delay } => {
                let after = match delay {
                    Delay::Millis(ms) => std::time::Duration::from_millis(ms),
                    Delay::Backoff { attempt } => {
                        let d = backoff_delay(
                            attempt,
                            self.settings.backoff_min,
                            self.settings.backoff_max,
                            random_unit(),
                        );
                        info!(
                            attempt,
                            delay_ms = d.as_millis() as u64,
                            "reconnecting after backoff"
                        );
                        d
                    }
                };
                self.timers.start(timer, after);
            }
            Effect::CancelTimer { timer } => self.timers.cancel(&timer),
            Effect::SpawnJob { job } => self.spawns.push(job),
            Effect::CancelJob {
                job,
                reason,
                grace_secs,
            } => {
                info!(job = %job.job_id, attempt = job.attempt, reason = reason.name(), grace_secs, "cancelling job");
                self.jobs
                    .cancel(&job, std::time::Duration::from_secs(grace_secs));
            }
            Effect::RunInstallStep { step } => self.install_step(step),
            Effect::RollbackInstall => self.rollback(),
            Effect::GenerateKey => match Identity::generate_key() {
                Ok(key) => {
                    let public_key = Identity::public_key_b64(&key);
                    self.pending_key = Some(key);
                    self.local.push_back(Event::KeyGenerated { public_key });
                }
                Err(e) => self.local.push_back(Event::StepFailed {
                    error: e.to_string(),
                }),
            },
            Effect::CollectHardware => self.collect_hardware(),
            Effect::Notify(notice) => {
                log_notice(&notice);
                if let Some(problem) = problem_of(&notice) {
                    self.status.send_modify(|s| s.problem = Some(problem));
                }
            }
            Effect::Exit { code } => {
                // Accepted and not started: the next start reports them lost.
                for job in self.spawns.drain(..) {
                    warn!(job = %job.job_id, attempt = job.attempt, "not started: the runner is stopping");
                }
                // No process of a job outlives the runner that ran it.
                self.jobs.kill_all();
                self.exit = Some(code);
            }
        }
    }

    fn spawn_jobs(&mut self) {
        for job in std::mem::take(&mut self.spawns) {
            info!(job = %job.job_id, attempt = job.attempt, program = ?job.command.first(), "starting job");
            let started = self.jobs.spawn(&job).into_event();
            self.local.push_back(started);
        }
    }

    fn open_connection(&mut self) {
        self.next_conn += 1;
        let conn = self.next_conn;
        let url = self.settings.endpoint.clone();
        let tls = self.tls.clone();
        let timeout = self.settings.connect_timeout;
        let inputs = self.inputs_tx.clone();
        debug!(%url, conn, "connecting");
        tokio::spawn(async move {
            let input = match ws::connect(&url, tls, timeout).await {
                Ok(stream) => Input::Connected {
                    conn,
                    stream: Box::new(stream),
                },
                Err(error) => {
                    warn!(%url, %error, "connection attempt failed");
                    Input::ConnectFailed { conn, error }
                }
            };
            let _ = inputs.send(input);
        });
    }

    fn send(&mut self, message: Outbound) {
        if self.resend_after.is_some() && matches!(message, Outbound::Event { .. }) {
            // Persisted already; the resend cursor delivers it in order.
            return;
        }
        let Some(connection) = &self.connection else {
            warn!(
                message = message.name(),
                "no connection to send on; dropped (the outbox keeps events)"
            );
            return;
        };
        match self.wire(message) {
            Some(wire) => connection.send_text(encode(&wire)),
            None => self.local.push_back(Event::StepFailed {
                error: "a message needed a token or identity this runner does not hold".into(),
            }),
        }
    }

    /// The wire message for an outbound intent: the runtime adds the token, the
    /// signature, the name and the version, which the core never holds.
    fn wire(&self, message: Outbound) -> Option<RunnerMessage> {
        let version = env!("CARGO_PKG_VERSION").to_owned();
        let name = self.settings.name.clone();
        Some(match message {
            Outbound::ValidateToken => RunnerMessage::ValidateToken {
                token: self.settings.token.as_ref()?.expose().to_owned(),
            },
            Outbound::Register { public_key, slots } => RunnerMessage::Register {
                public_key,
                name,
                version,
                slots,
            },
            Outbound::Authenticate {
                nonce,
                runner_id,
                slots,
                last_command_index,
            } => {
                let identity = self.identity.as_ref()?;
                RunnerMessage::Authenticate {
                    signature: identity.sign(&nonce),
                    runner_id,
                    name,
                    version,
                    slots,
                    last_command_index,
                }
            }
            Outbound::Startup { jobs } => RunnerMessage::Startup { version, jobs },
            Outbound::HardwareFull { report } => RunnerMessage::HardwareFull { report },
            Outbound::HardwareChanges { changes } => RunnerMessage::HardwareChanges { changes },
            Outbound::HardwareUnchanged => RunnerMessage::HardwareUnchanged {},
            Outbound::Ready { slots_free } => RunnerMessage::Ready { slots_free },
            Outbound::Heartbeat { seq, jobs_running } => {
                RunnerMessage::Heartbeat { seq, jobs_running }
            }
            Outbound::CommandAck { index } => RunnerMessage::CommandAck { index },
            Outbound::Event { index, event } => RunnerMessage::Event { index, event },
            Outbound::Stopping {
                reason,
                deadline_secs,
            } => RunnerMessage::Stopping {
                reason,
                deadline_secs,
            },
        })
    }

    fn backpressured(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| c.queued() >= ws::HIGH_WATER)
    }

    /// Resend the outbox page by page as the writer drains. Events emitted meanwhile
    /// are not sent directly: they are in the outbox, so the cursor reaches them in
    /// index order (the API drops anything at or below the highest index it holds, so
    /// order matters).
    fn pump_resend(&mut self) {
        while let Some(after) = self.resend_after {
            let Some(connection) = &self.connection else {
                self.resend_after = None;
                return;
            };
            if connection.queued() >= ws::HIGH_WATER {
                return;
            }
            let page = match self.store.outbox_page(after, RESEND_PAGE) {
                Ok(page) => page,
                Err(e) => {
                    self.resend_after = None;
                    self.local.push_back(Event::StoreFailed {
                        error: e.to_string(),
                    });
                    return;
                }
            };
            let Some(&(last, _)) = page.last() else {
                self.resend_after = None;
                return;
            };
            debug!(count = page.len(), after, "resending unacknowledged events");
            for (index, event) in page {
                if let Some(wire) = self.wire(Outbound::Event { index, event })
                    && let Some(connection) = &self.connection
                {
                    connection.send_text(encode(&wire));
                }
            }
            self.resend_after = Some(last);
        }
    }

    fn collect_hardware(&mut self) {
        let state_dir = self.settings.state_dir.clone();
        let job_area = self.settings.jobs_root();
        let source = self.settings.hardware.clone();
        let inputs = self.inputs_tx.clone();
        tokio::spawn(async move {
            let event = match tokio::task::spawn_blocking(move || {
                collect_and_compare(&source, &state_dir, &job_area)
            })
            .await
            {
                Ok(event) => event,
                Err(e) => Event::HardwareFailed {
                    error: format!("hardware collection task failed: {e}"),
                },
            };
            let _ = inputs.send(Input::Event(event));
        });
    }

    fn install_step(&mut self, step: InstallStep) {
        let Some(installer) = self.installer.as_mut() else {
            self.local.push_back(Event::StepFailed {
                error: format!(
                    "install step {} asked for outside `fyn-runner install`",
                    step.name()
                ),
            });
            return;
        };
        match installer.run(step) {
            Ok(done) => {
                info!(step = step.name(), "{done}");
                self.local.push_back(Event::StepDone);
            }
            Err(error) => {
                error!(step = step.name(), %error, "install step failed");
                self.local.push_back(Event::StepFailed { error });
            }
        }
    }

    fn rollback(&mut self) {
        if self.installer.is_some() {
            self.let_go_of_state_files();
        }
        if let Some(installer) = self.installer.as_mut() {
            // The whole install goes, the identity with the state folder it lives in.
            installer.rollback();
        }
        if self.created_identity {
            // The API keeps the runner this registration created unless told; it is
            // told in the background (bounded), and `run` waits for that before it ends.
            if let Some(identity) = self.identity.take() {
                let settings = self.settings.clone();
                self.farewell = Some(tokio::spawn(async move {
                    let reason = "installation rolled back";
                    match super::leave::leave_as(&identity, &settings, reason, FAREWELL_WITHIN)
                        .await
                    {
                        Ok(id) => {
                            info!(runner_id = %id, "the control plane forgot the rolled-back registration")
                        }
                        Err(e) => {
                            warn!(error = %e, "could not tell the control plane to forget the rolled-back registration")
                        }
                    }
                }));
            }
            match Identity::remove(&self.settings.state_dir) {
                Ok(()) => info!("rolled back the identity this registration created"),
                Err(e) => {
                    error!(error = %e, "could not remove the identity this registration created")
                }
            }
            self.created_identity = false;
            self.identity = None;
        }
        self.pending_key = None;
    }

    /// Close the database and the trace before the install's folders are removed:
    /// Windows refuses to delete a file that is open. What little the runner still
    /// writes before it exits goes to memory; the install is gone with its folders.
    fn let_go_of_state_files(&mut self) {
        self.flush_trace();
        self.trace = None;
        match Store::open_in_memory() {
            Ok(memory) => self.store = memory,
            Err(error) => warn!(%error, "cannot swap the store out; its files may stay behind"),
        }
    }
}

/// The highest `up_to` when `rows` are acknowledgements and nothing else.
fn only_acks(rows: &[Durable]) -> Option<u64> {
    rows.iter().try_fold(0, |highest, row| match row {
        Durable::OutboxAcked { up_to } => Some(highest.max(*up_to)),
        _ => None,
    })
}

/// Persist before send: the order in which a batch's effects are performed.
fn phase_of(effect: &Effect) -> u8 {
    match effect {
        Effect::Persist(_) => 0,
        Effect::Send(_) | Effect::ResendOutbox { .. } => 1,
        Effect::Close { .. } => 2,
        Effect::OpenConnection => 3,
        Effect::StartTimer { .. } | Effect::CancelTimer { .. } => 4,
        Effect::SpawnJob { .. } | Effect::CancelJob { .. } => 5,
        Effect::RunInstallStep { .. }
        | Effect::RollbackInstall
        | Effect::GenerateKey
        | Effect::CollectHardware => 6,
        Effect::Notify(_) => 7,
        Effect::Exit { .. } => 8,
    }
}
