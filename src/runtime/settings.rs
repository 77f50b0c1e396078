//! What the runtime needs to know to run, resolved and checked before anything starts
//! (by `crate::config`, whose [`Resolved`] settings become a [`RunnerSettings`] here).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::config::{Resolved, RunSettings, value};
use crate::core::{CoreConfig, HookPoint};
use crate::platform::Account;

/// The ended jobs' folders kept at most where no setting says (the setting's default).
pub const DEFAULT_JOB_RETENTION_MAX: usize = 1000;

pub use crate::config::{Secret, SettingsError, endpoint};

/// Where hardware reports come from: the machine itself, or (tests, demos of the
/// change path) a function that stands in for it.
#[derive(Clone)]
pub enum HardwareSource {
    System,
    Custom(HardwareProbe),
}

/// A stand-in for the machine's hardware: the job area in, a report out.
pub type HardwareProbe = std::sync::Arc<
    dyn Fn(&std::path::Path) -> Result<crate::hardware::HardwareReport, String> + Send + Sync,
>;

impl HardwareSource {
    pub fn collect(
        &self,
        job_area: &std::path::Path,
    ) -> Result<crate::hardware::HardwareReport, String> {
        match self {
            Self::System => crate::hardware::collect(job_area).map_err(|e| e.to_string()),
            Self::Custom(probe) => probe(job_area),
        }
    }
}

impl fmt::Debug for HardwareSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::System => "System",
            Self::Custom(_) => "Custom",
        })
    }
}

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// The runner endpoint, e.g. `wss://api.example.com/runner/v1`.
    pub endpoint: Url,
    pub state_dir: PathBuf,
    /// One-time registration token; only used when there is no identity yet.
    pub token: Option<Secret>,
    pub name: String,
    /// PEM file of the CA to trust instead of the public web roots.
    pub ca_file: Option<PathBuf>,
    pub core: CoreConfig,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub hardware: HardwareSource,
    /// Record the session trace under `<state_dir>/traces`; `None` turns it off.
    pub trace: Option<TraceLimits>,
    /// How long an ended job's folder (its logs and `work/`) is kept.
    pub job_retention: Duration,
    /// The most ended jobs' folders kept, however young: the oldest go first.
    pub job_retention_max: usize,
    /// Where job folders live; `None`: the default for `state_dir` (see
    /// [`RunnerSettings::jobs_root`]).
    pub jobs_dir: Option<PathBuf>,
    /// The account jobs run as, when not the runner's own.
    pub job_account: Option<Account>,
    /// Plain `http://` for job inputs and outputs to hosts that are not loopback.
    pub allow_insecure_transfers: bool,
    /// The size the input cache is kept to.
    pub input_cache_max_bytes: u64,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The operator's hooks (the core's config names which are set: `core.hooks`).
    pub hooks: crate::runtime::hooks::HookSettings,
}

/// Size-based rotation of the trace files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceLimits {
    /// A file passing this many bytes is closed and the trace goes on in the next.
    pub max_bytes: u64,
    /// Trace files kept in the folder, the current one included.
    pub keep: usize,
}

impl RunnerSettings {
    /// Where job directories live (and whose disk is reported as the job area).
    pub fn jobs_root(&self) -> PathBuf {
        self.jobs_dir.clone().unwrap_or_else(|| {
            crate::config::default_jobs_dir(&self.state_dir, self.job_account.is_some())
        })
    }

    /// Where jobs live and whom they run as. With a job account the jobs folder is
    /// outside the state folder, and job folders an earlier layout kept inside it are
    /// moved out.
    pub fn jobs_layout(&self) -> crate::runtime::jobs::JobsLayout {
        let root = self.jobs_root();
        let inside = self.state_dir.join("jobs");
        crate::runtime::jobs::JobsLayout {
            moved_from: (root != inside).then_some(inside),
            root,
            account: self
                .job_account
                .clone()
                .map(crate::runtime::jobs::JobAccount::new),
            supervisor: crate::runtime::jobs::supervisor_program(),
        }
    }

    /// The runner `run` starts from its resolved settings.
    pub fn from_config(resolved: Resolved) -> Self {
        let Resolved {
            settings,
            endpoint,
            state_dir,
            jobs_dir,
            job_account,
            name,
            token,
        } = resolved;
        let mut runner = Self {
            token,
            name,
            jobs_dir: Some(jobs_dir),
            job_account,
            ..Self::new(endpoint, state_dir)
        };
        runner.take(&settings);
        runner
    }

    /// What the table of settings decides (`crate::config`, defined once there): the
    /// core's slots and deadlines, the trace, the retention, the CA.
    fn take(&mut self, settings: &RunSettings) {
        self.core.slots = settings.slots;
        self.core.drain_deadline_secs = settings.drain_deadline;
        self.core.hardware_recheck_ms = value::secs_to_ms(settings.hardware_recheck);
        self.trace = (!settings.no_trace).then_some(TraceLimits {
            max_bytes: settings.trace_max_bytes,
            // At most 1000 (the setting's check).
            keep: usize::try_from(settings.trace_keep).unwrap_or(1000),
        });
        self.job_retention = value::hours(settings.job_retention_hours);
        // At most 1,000,000 (the setting's check).
        self.job_retention_max = usize::try_from(settings.job_retention_max).unwrap_or(usize::MAX);
        self.ca_file = settings.ca_file.clone();
        self.allow_insecure_transfers = settings.allow_insecure_transfers;
        self.input_cache_max_bytes = settings.input_cache_max_bytes;
        // Refused off loopback without the opt-in by `crate::config::resolve` already.
        self.metrics_listen = crate::config::metrics_listen(settings).ok().flatten();
        self.set_hooks(crate::runtime::hooks::HookSettings {
            executables: [
                (HookPoint::OnConnected, &settings.hook_on_connected),
                (HookPoint::OnDisconnected, &settings.hook_on_disconnected),
                (HookPoint::OnDrain, &settings.hook_on_drain),
                (HookPoint::OnStopped, &settings.hook_on_stopped),
                (HookPoint::PreJob, &settings.hook_pre_job),
                (HookPoint::PostJob, &settings.hook_post_job),
            ]
            .into_iter()
            .filter_map(|(point, path)| Some((point, path.clone()?)))
            .collect(),
            timeout: Duration::from_secs(settings.hook_timeout),
        });
    }

    /// What job transfers start with: the session's CA rules, the input cache under
    /// the state folder (`<state_dir>/cache/inputs`), the transfer settings.
    pub fn transfer_settings(&self) -> crate::runtime::transfer::TransferSettings {
        crate::runtime::transfer::TransferSettings {
            ca_file: self.ca_file.clone(),
            allow_insecure: self.allow_insecure_transfers,
            cache_dir: self.state_dir.join("cache").join("inputs"),
            cache_max_bytes: self.input_cache_max_bytes,
            timeouts: crate::runtime::transfer::Timeouts::default(),
            retry: crate::runtime::transfer::RetryPolicy::default(),
        }
    }

    /// Use these hooks: the runtime runs their executables, and the core is told which
    /// points have one (and their timeout, for a stop's bound).
    pub fn set_hooks(&mut self, hooks: crate::runtime::hooks::HookSettings) {
        self.core.hooks = hooks.points();
        self.core.hook_timeout_secs = if hooks.executables.is_empty() {
            0
        } else {
            hooks.timeout.as_secs()
        };
        self.hooks = hooks;
    }

    /// Defaults an operator would expect: the settings' own defaults (one slot, the
    /// trace on, a week's retention), backoff from 0.5 s to 60 s, a 15 s connect
    /// timeout, the machine's own hardware, no token.
    pub fn new(endpoint: Url, state_dir: PathBuf) -> Self {
        let mut runner = Self {
            endpoint,
            state_dir,
            token: None,
            name: "fyn-runner".to_owned(),
            ca_file: None,
            core: CoreConfig::default(),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(15),
            hardware: HardwareSource::System,
            trace: None,
            job_retention: Duration::ZERO,
            job_retention_max: DEFAULT_JOB_RETENTION_MAX,
            jobs_dir: None,
            job_account: None,
            allow_insecure_transfers: false,
            input_cache_max_bytes: 0,
            metrics_listen: None,
            hooks: crate::runtime::hooks::HookSettings::default(),
        };
        runner.take(&RunSettings::default());
        runner
    }
}
