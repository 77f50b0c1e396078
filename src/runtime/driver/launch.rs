//! Starting a runner: the state folder, the control socket's guard, the identity, the
//! store, the boot mode and the core's boot record (the operator's config plus this
//! process's jitter seed), the trace, the job executor and what an earlier run left
//! (its jobs, found and reported to the core first; its ended jobs' folders).
//!
//! Owns: `start`, `start_install`, the farewell's launch, `StartError`. Must not: run
//! the loop (`super::Driver::run`) or decide anything the core decides; the boot mode
//! follows from what the caller asked for and what the state folder holds.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use tokio::sync::{broadcast, mpsc, watch};
use tracing::info;

use crate::core::{BackoffPolicy, BootMode, Core, CoreConfig, Effects, Event};
use crate::protocol::{JobRef, JobSpec};
use crate::runtime::control::{self, ControlError};
use crate::runtime::hooks::HookRunner;
use crate::runtime::identity::{Identity, IdentityError};
use crate::runtime::install::{self, InstallPlan, Installer};
use crate::runtime::jobs::{
    self, ExecutorError, FoundState, Janitor, JobReport, JobSupervisor, OutputProgress, Retention,
};
use crate::runtime::metrics::{
    self, MetricsFeed, MetricsServer, MetricsServerError, RunnerMetrics,
};
use crate::runtime::secure_fs::{self, SecureFsError};
use crate::runtime::settings::RunnerSettings;
use crate::runtime::status::status_of;
use crate::runtime::store::{Store, StoreError};
use crate::runtime::timers::{Timers, jitter_seed};
use crate::runtime::ws::{self, TlsSetupError};

use super::Driver;
use super::durable::Durability;
use super::handle::RunnerHandle;
use super::input::Input;
use super::job_files::JobFiles;
use super::link::{Credentials, Link};
use super::local_steps::LocalSteps;
use super::observe::{Observer, start_trace};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "no runner identity in {state_dir} and no registration token: pass --token (or FYN_RUNNER_TOKEN) once to register"
    )]
    NoIdentity { state_dir: String },
    #[error("cannot create the state directory {path}: {source}")]
    StateDir { path: String, source: SecureFsError },
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
    Control(#[from] ControlError),
    #[error("the job executor cannot run: {0}")]
    Jobs(ExecutorError),
    #[error(transparent)]
    Metrics(#[from] MetricsServerError),
}

/// What a start is for, beyond the settings.
pub(super) enum Purpose {
    /// `fyn-runner run`: register with the token, or resume with the identity.
    Run,
    /// `fyn-runner install`: install steps around a registration, then stop.
    Install(InstallPlan),
    /// A farewell (see `super::leave`). `identity` is given when its files are gone
    /// already (an install rolling back): then nothing on disk is touched.
    Leave {
        identity: Option<Identity>,
        reason: &'static str,
    },
}

/// Prepare the state directory, the store and the identity, then start the loop.
pub fn start(settings: RunnerSettings) -> Result<RunnerHandle, StartError> {
    launch(settings, Purpose::Run)
}

/// `fyn-runner install`: the same runner, booted into Installing with the steps of
/// `plan`; it registers, installs the service and stops. Refuses when this state
/// directory already has an identity (the caller handles `--force`).
pub fn start_install(
    settings: RunnerSettings,
    plan: InstallPlan,
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
    launch(settings, Purpose::Install(plan))
}

pub(super) fn launch(
    settings: RunnerSettings,
    purpose: Purpose,
) -> Result<RunnerHandle, StartError> {
    let state_dir = settings.state_dir.clone();
    let shown = || state_dir.display().to_string();
    // A farewell whose identity is in memory has no state folder left to use.
    let on_disk = !matches!(
        purpose,
        Purpose::Leave {
            identity: Some(_),
            ..
        }
    );
    // The outermost folder this start creates, so a failed install removes all of it.
    let created_root = install::outermost_missing(&state_dir);
    if on_disk {
        secure_fs::create_private_dir(&state_dir).map_err(|source| StartError::StateDir {
            path: shown(),
            source,
        })?;
    }
    // A farewell runs after the runner stopped (the caller checked that no other runs).
    if !matches!(purpose, Purpose::Leave { .. }) {
        control::ensure_unused(&state_dir)?;
    }
    let (mode, identity, plan, leaving_reason) = match purpose {
        Purpose::Install(plan) => (
            BootMode::Install,
            Identity::load(&state_dir)?,
            Some(plan),
            "",
        ),
        Purpose::Leave { identity, reason } => {
            let identity = match identity {
                Some(identity) => identity,
                None => Identity::load(&state_dir)?
                    .ok_or_else(|| StartError::NoIdentity { state_dir: shown() })?,
            };
            (BootMode::Leave, Some(identity), None, reason)
        }
        Purpose::Run => match (Identity::load(&state_dir)?, &settings.token) {
            (Some(identity), _) => (BootMode::Resume, Some(identity), None, ""),
            (None, Some(_)) => (BootMode::Register, None, None, ""),
            (None, None) => return Err(StartError::NoIdentity { state_dir: shown() }),
        },
    };
    let store = if on_disk {
        Store::open(&state_dir)?
    } else {
        Store::open_in_memory()?
    };
    let mut durable = store.load()?;
    durable.runner_id = identity.as_ref().map(|i| i.runner_id().to_owned());
    // A registration that did not finish kept its key: the next one sends it again.
    let kept_key = if matches!(mode, BootMode::Register | BootMode::Install) {
        Identity::kept_key(&state_dir)?
    } else {
        None
    };
    durable.registration_key = kept_key.as_ref().map(Identity::public_key_b64);
    let tls = ws::tls_config(settings.ca_file.as_deref())?;
    // A farewell runs no jobs (the core boots it with none): nothing to reap or keep.
    let farewell = mode == BootMode::Leave;
    let restored: Vec<JobSpec> = if farewell {
        Vec::new()
    } else {
        durable.jobs.clone()
    };
    let restored_refs: Vec<JobRef> = restored.iter().map(JobSpec::job_ref).collect();
    let pids = store.job_pids()?;
    let progress = store.job_progress()?;
    #[cfg(unix)]
    let kv_written = store.job_kv_written()?;
    let config = boot_config(&settings);
    let booted_from = durable.clone();
    let outbox_at_boot = (durable.acked_event_index, durable.last_event_index);
    let (core, boot_effects) = Core::boot(config.clone(), mode, durable);
    let trace = on_disk
        .then(|| start_trace(&settings, mode, &config, &booted_from, &boot_effects))
        .flatten();
    let trace_path = trace.as_ref().map(|t| t.path());
    let (inputs_tx, inputs) = mpsc::unbounded_channel();
    let jobs_root = settings.jobs_root();
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let (jobs, retention, janitor, found) = if farewell {
        let nothing_kept = Retention::new(settings.job_retention, settings.job_retention_max);
        (None, nothing_kept, Janitor::default(), Found::default())
    } else {
        let mut jobs = JobSupervisor::with_layout(settings.jobs_layout(), reports_tx);
        jobs.preflight().map_err(StartError::Jobs)?;
        let (retention, janitor) = ended_jobs_retention(&settings, &jobs_root, &restored_refs);
        let found = find_jobs(&mut jobs, &restored, &pids, &progress);
        (Some(jobs), retention, janitor, found)
    };
    #[cfg(unix)]
    let reopened = endpoints_to_reopen(&settings, &jobs_root, &found.running, &kv_written);
    let (control_tx, control) = mpsc::unbounded_channel();
    let (status_tx, status) =
        watch::channel(status_of(&core, None, settings.endpoint.as_str(), None));
    let (transitions_tx, first_transitions) = broadcast::channel(1024);
    info!(mode = ?mode, state_dir = %state_dir.display(), endpoint = %settings.endpoint, "runner starting");
    let installer = plan.map(|plan| Installer::new(plan, &state_dir, created_root.as_deref()));
    // Only a runner that stays up serves the socket: an install leaves it to the
    // service it starts, and a farewell is over in seconds.
    let serves = installer.is_none() && !farewell;
    let credentials = Credentials {
        name: settings.name.clone(),
        token: settings.token.clone(),
        leaving_reason,
    };
    let mut observer = Observer::new(
        trace,
        status_tx,
        transitions_tx.clone(),
        settings.endpoint.to_string(),
    );
    // Only a runner that stays up serves metrics, like the control socket.
    let metrics_server = match settings.metrics_listen.filter(|_| serves) {
        Some(addr) => Some(start_metrics(
            addr,
            &core,
            outbox_at_boot,
            &mut observer,
            &inputs_tx,
        )?),
        None => None,
    };
    let hook_inputs = inputs_tx.clone();
    let hooks = HookRunner::new(
        settings.hooks.clone(),
        settings.jobs_layout().account,
        (settings.name.clone(), jobs_root.clone()),
        std::sync::Arc::new(move |event| {
            let _ = hook_inputs.send(Input::Event(event));
        }),
    );
    #[cfg(unix)]
    let (endpoints, endpoint_reports) = super::endpoints::Endpoints::new();
    #[cfg(windows)]
    let endpoint_reports = tokio::sync::mpsc::channel(1).1;
    let driver = Driver {
        hooks,
        files: JobFiles::new(settings.transfer_settings()),
        job_gauges: Default::default(),
        #[cfg(unix)]
        endpoints,
        #[cfg(unix)]
        kv_waiting: None,
        core,
        observer,
        link: Link::new(
            tls,
            settings.endpoint.clone(),
            settings.connect_timeout,
            credentials,
        ),
        durable: Durability::new(
            store,
            retention,
            janitor,
            jobs_root,
            !settings.job_retention.is_zero() && settings.job_retention_max > 0,
        ),
        timers: Timers::new(inputs_tx.clone()),
        jobs,
        inputs_tx,
        // What became of the previous run's jobs goes in before anything else.
        local: found.events,
        exit: None,
        scratch: Effects::default(),
        spawns: Vec::new(),
        steps: LocalSteps::new(installer, identity, kept_key, settings),
    };
    let socket = if serves {
        Some(control::serve(
            &state_dir,
            status.clone(),
            control_tx.clone(),
        )?)
    } else {
        None
    };
    let task = tokio::spawn(async move {
        #[cfg(unix)]
        let driver = {
            let mut driver = driver;
            for (job, job_dir, account, kv) in reopened {
                driver
                    .endpoints
                    .open(job, &job_dir, account, kv, None)
                    .await;
            }
            driver
        };
        let code = driver
            .run(boot_effects, inputs, reports, control, endpoint_reports)
            .await;
        if let Some(socket) = socket {
            socket.close();
        }
        if let Some(server) = metrics_server {
            server.close();
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

/// The metrics listener: the families, the observer's feed, the probes' way into the
/// loop. The address bound (the system's choice for port 0) is logged and shown by
/// `status`.
fn start_metrics(
    addr: std::net::SocketAddr,
    core: &Core,
    (acked, last): (u64, u64),
    observer: &mut Observer,
    inputs: &mpsc::UnboundedSender<Input>,
) -> Result<MetricsServer, StartError> {
    let families = RunnerMetrics::new(core.lifecycle());
    observer.feed_metrics(MetricsFeed::new(
        families.clone(),
        acked,
        last,
        std::time::Instant::now(),
    ));
    let inputs = inputs.clone();
    let probes: metrics::ProbeSender =
        std::sync::Arc::new(move |probe| inputs.send(Input::Probe(probe)).is_ok());
    let server = metrics::serve(addr, families, probes)?;
    let bound = server.local_addr();
    info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    observer.metrics_listening(bound);
    Ok(server)
}

/// The core's boot record: the operator's settings, the backoff's bounds, and this
/// process's jitter seed (the run's one random draw; the trace header records it).
fn boot_config(settings: &RunnerSettings) -> CoreConfig {
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    CoreConfig {
        backoff: BackoffPolicy {
            base_ms: millis(settings.backoff_min),
            cap_ms: millis(settings.backoff_max),
        },
        rng_seed: jitter_seed(),
        ..settings.core.clone()
    }
}

/// What became of the previous run's jobs.
#[derive(Default)]
struct Found {
    /// For the core to take first.
    events: VecDeque<Event>,
    /// The jobs reattached: their supervisor still runs them.
    #[cfg_attr(not(unix), allow(dead_code))] // their endpoints are Unix sockets
    running: Vec<JobSpec>,
}

/// The jobs the previous run left in the store: what became of each (its supervisor
/// still runs it, it ended meanwhile, or it is lost), as events for the core to take
/// first, and one line saying how many of each. Whatever supervisors the store does not
/// account for are ended.
fn find_jobs(
    jobs: &mut JobSupervisor,
    restored: &[JobSpec],
    pids: &[(JobRef, u32)],
    progress: &[(JobRef, OutputProgress)],
) -> Found {
    let mut found = Found::default();
    let (mut running, mut ended, mut lost) = (0, 0, 0);
    for spec in restored {
        let job = spec.job_ref();
        let pid = pids.iter().find(|(j, _)| *j == job).map(|(_, pid)| *pid);
        let done = progress
            .iter()
            .find(|(j, _)| *j == job)
            .map(|(_, p)| *p)
            .unwrap_or_default();
        for report in jobs.reattach(spec, pid, done) {
            if let JobReport::Found { state, .. } = &report {
                match state {
                    FoundState::Running { .. } => {
                        running += 1;
                        found.running.push(spec.clone());
                    }
                    FoundState::Ended => ended += 1,
                    FoundState::Lost => lost += 1,
                }
            }
            found.events.push_back(report.into_event());
        }
    }
    let known: Vec<JobRef> = restored.iter().map(JobSpec::job_ref).collect();
    jobs.forget_others(&known);
    if !restored.is_empty() {
        info!(
            reattached = running,
            ended_while_down = ended,
            lost,
            "jobs of the previous run: {running} reattached (still running), {ended} ended \
             while the runner was down, {lost} lost"
        );
    }
    found
}

/// A reattached job's endpoint, as this run serves it again: at the path its
/// `FYN_JOB_SOCKET` names, with the pairs of its spec and its own writes (kept in the
/// store with their events), counted against the same bounds.
#[cfg(unix)]
type Reopened = (
    JobRef,
    std::path::PathBuf,
    Option<crate::platform::Account>,
    crate::runtime::job_endpoint::KvView,
);

#[cfg(unix)]
fn endpoints_to_reopen(
    settings: &RunnerSettings,
    jobs_root: &Path,
    running: &[JobSpec],
    written: &[crate::runtime::store::KvWritten],
) -> Vec<Reopened> {
    use std::collections::BTreeMap;
    let account = settings
        .jobs_layout()
        .account
        .map(|account| account.account().clone());
    running
        .iter()
        .filter_map(|spec| {
            let job = spec.job_ref();
            let job_dir = crate::runtime::jobs::job_dir(jobs_root, &job).ok()?;
            let (mut values, mut writes, mut bytes) = (BTreeMap::new(), 0u32, 0u64);
            for w in written.iter().filter(|w| w.job == job) {
                values.insert(w.key.clone(), w.value.clone());
                writes = writes.saturating_add(w.writes);
                bytes = bytes.saturating_add(w.bytes);
            }
            let kv = crate::runtime::job_endpoint::KvView::restored(
                spec.kv.clone(),
                values,
                writes,
                bytes,
            );
            Some((job, job_dir, account.clone(), kv))
        })
        .collect()
}

/// The term of ended jobs' folders, with what an earlier run left: those past it are
/// removed now, the rest queued. Folders of jobs the store still holds are not
/// touched; they start their term when those jobs end in this run.
fn ended_jobs_retention(
    settings: &RunnerSettings,
    jobs_root: &Path,
    restored: &[JobRef],
) -> (Retention, Janitor) {
    let live: Vec<PathBuf> = restored
        .iter()
        .filter_map(|job| jobs::job_dir(jobs_root, job).ok())
        .collect();
    let mut retention = Retention::new(settings.job_retention, settings.job_retention_max);
    let expired = retention.adopt_leftovers(
        jobs_root,
        &live,
        std::time::SystemTime::now(),
        tokio::time::Instant::now(),
    );
    let mut janitor = Janitor::default();
    janitor.remove(expired);
    (retention, janitor)
}
