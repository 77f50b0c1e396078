/*!
The process executor: each job is a local process, with every process it starts held
together as one tree that can be stopped, in its own directory, with a clean
environment. This file prepares a job (folder, program, environment); starting it is
the platform's.

Layout of a job: `<jobs_root>/<job_id>-<attempt>/` (private: mode 0700, or a private
access list on Windows; the job's `HOME`) holds `stdout.log`, `stderr.log` and `work/`,
where the job starts (or in the relative `workdir` below it that the spec names). With
a job account (`job_account.rs`) the folder and `work/` belong to that account, the
logs stay the runner's, and the jobs root is the runner's, 0711.

Unix (`supervised/`): every job runs under a supervisor process of its own, which
owns the job's process group (and, on Linux, every descendant: it is a child
subreaper), writes its output to the logs, and outlives the runner; the runner follows
the logs and reattaches after a restart. Windows (`in_process.rs`): the runner starts
the job itself in a kill-on-close job object (`job_object.rs`: Ctrl+Break to the
group, `TerminateJobObject`), which dies with the runner. Either way nothing of a job
outlives the job.
*/

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tracing::info;

use crate::protocol::{JobRef, JobSpecError, validate_job_id};

use super::executor::{Executor, ExecutorError, RunningJob, SpawnRequest};
#[cfg(unix)]
use super::executor::{FindRequest, Finding};
use super::job_account::JobAccount;
use super::spare_dir::{self, SpareDirs, Taken};
#[cfg(unix)]
use super::supervised::{Launch, Supervisors};
use crate::platform::{self, Access};

#[cfg(unix)]
#[path = "process_group.rs"]
pub(super) mod tree;
#[cfg(windows)]
#[path = "job_object.rs"]
pub(super) mod tree;

pub use tree::default_path;

/// Job directories and logs hold the job's data; only the runner's user may read them.
const JOB_ACCESS: Access = Access::Private;

pub struct ProcessExecutor {
    jobs_root: PathBuf,
    /// The runner's `PATH`, read once, so every job of this runner sees the same one.
    path: OsString,
    spares: SpareDirs,
    /// Who jobs run as, when not the runner's own user.
    account: Option<Arc<JobAccount>>,
    /// Where an earlier layout kept job folders, moved from at preflight.
    moved_from: Option<PathBuf>,
    #[cfg(unix)]
    supervisors: Supervisors,
}

/// Where jobs live and whom they run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsLayout {
    pub root: PathBuf,
    /// The account jobs run as, when not the runner's own.
    pub account: Option<JobAccount>,
    /// A folder an earlier layout kept job folders in (`<state_dir>/jobs` before jobs
    /// had an account of their own), emptied into `root` at preflight.
    pub moved_from: Option<PathBuf>,
    /// The program run as each job's supervisor (Unix): the runner's own binary.
    pub supervisor: PathBuf,
}

impl ProcessExecutor {
    pub fn new(jobs_root: PathBuf) -> Self {
        Self::with_layout(JobsLayout {
            root: jobs_root,
            account: None,
            moved_from: None,
            supervisor: supervisor_program(),
        })
    }

    pub fn with_layout(layout: JobsLayout) -> Self {
        let path = std::env::var_os("PATH")
            .filter(|path| !path.is_empty())
            .unwrap_or_else(default_path);
        let account = layout.account.map(Arc::new);
        Self {
            spares: SpareDirs::new(layout.root.clone(), spare_folder(), account.clone()),
            #[cfg(unix)]
            supervisors: Supervisors::new(layout.supervisor, layout.root.clone()),
            jobs_root: layout.root,
            path,
            account,
            moved_from: layout.moved_from,
        }
    }

    pub fn jobs_root(&self) -> &Path {
        &self.jobs_root
    }

    pub fn job_dir(&self, job: &JobRef) -> Result<PathBuf, ExecutorError> {
        job_dir(&self.jobs_root, job)
    }
}

/// What a spare job folder holds: on Unix also the job's endpoint socket, bound.
#[cfg(unix)]
fn spare_folder() -> spare_dir::Contents {
    spare_dir::JOB_FOLDER.with_socket(crate::runtime::job_endpoint::SOCKET_NAME)
}

#[cfg(not(unix))]
fn spare_folder() -> spare_dir::Contents {
    spare_dir::JOB_FOLDER
}

/// `<jobs_root>/<job_id>-<attempt>`. The ID was validated when the command arrived; it
/// is checked again here because it becomes a path.
pub fn job_dir(jobs_root: &Path, job: &JobRef) -> Result<PathBuf, ExecutorError> {
    validate_job_id(&job.job_id)?;
    let name = format!("{}-{}", job.job_id, job.attempt);
    let mut parts = Path::new(&name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(part)), None) if part == name.as_str() => Ok(jobs_root.join(&name)),
        _ => Err(ExecutorError::UnsafeJobDir { name }),
    }
}

impl Executor for ProcessExecutor {
    fn name(&self) -> &'static str {
        "process"
    }

    /// The jobs root exists (or can be made) and a file can be written in it; on Unix
    /// its job supervisors can run there too.
    fn preflight(&self) -> Result<(), ExecutorError> {
        let root = &self.jobs_root;
        if root.exists() && !root.is_dir() {
            return Err(ExecutorError::NotADirectory { path: root.clone() });
        }
        create_dir(root)?;
        if let Some(account) = &self.account {
            account.open_jobs_root(root)?;
        }
        if let Some(old) = self
            .moved_from
            .as_deref()
            .filter(|old| *old != root.as_path())
        {
            super::job_account::move_job_folders(old, root);
        }
        // Job IDs never start with '.', so the probe cannot meet a job's directory.
        let probe = root.join(format!(".preflight-{}", std::process::id()));
        let io_error = |op| {
            let path = probe.clone();
            move |source| ExecutorError::Io { op, path, source }
        };
        let written = platform::open_options(JOB_ACCESS)
            .write(true)
            .create_new(true)
            .open(&probe)
            .and_then(|mut file| file.write_all(b"ok\n").and_then(|()| file.sync_all()))
            .map_err(io_error("write"));
        // Remove the probe even when the write failed half way.
        let removed = fs::remove_file(&probe).map_err(io_error("remove"));
        written.and(removed)?;
        #[cfg(unix)]
        self.supervisors.preflight()?;
        self.spares.remove_leftovers();
        Ok(())
    }

    /// The job's folder with `work/` (its account's), made now so its inputs can be
    /// placed before the process starts; `spawn` finds it there and keeps it.
    fn prepare_folder(
        &self,
        spec: &crate::protocol::JobSpec,
    ) -> Result<super::executor::PreparedFolder, ExecutorError> {
        spec.validate()?;
        let job_dir = self.job_dir(&spec.job_ref())?;
        let (_, taken) = self.make_job_dir(&job_dir)?;
        Ok(super::executor::PreparedFolder {
            work: job_dir.join("work"),
            account: self.account.as_deref().map(|a| a.account().clone()),
            endpoint_socket: taken.socket,
        })
    }

    fn work_folder(&self, job: &JobRef) -> Result<super::executor::PreparedFolder, ExecutorError> {
        Ok(super::executor::PreparedFolder {
            work: self.job_dir(job)?.join("work"),
            account: self.account.as_deref().map(|a| a.account().clone()),
            endpoint_socket: None,
        })
    }

    fn prepare_ahead(&self) {
        self.spares.refill();
        #[cfg(unix)]
        self.supervisors.prepare_ahead();
    }

    fn spawn(&self, request: SpawnRequest) -> Result<RunningJob, ExecutorError> {
        let SpawnRequest {
            spec,
            output,
            lease,
            folder_ready,
        } = request;
        let prepared = self.prepare(&spec, folder_ready)?;
        #[cfg(unix)]
        {
            self.supervisors
                .launch(prepared.into_launch(&spec, lease), output)
        }
        #[cfg(windows)]
        {
            let _ = lease;
            super::in_process::launch(prepared, output, spec.output_limit_bytes)
        }
    }

    /// Unix: the job's folder and its plan are made at once (a few file system calls),
    /// and the supervisor's answer is awaited on the runner's loop.
    #[cfg(unix)]
    fn spawn_later(self: Arc<Self>, request: SpawnRequest) -> super::executor::PendingSpawn {
        let SpawnRequest {
            spec,
            output,
            lease,
            folder_ready,
        } = request;
        match self.prepare(&spec, folder_ready) {
            Ok(prepared) => Box::pin(
                self.supervisors
                    .launch_async(prepared.into_launch(&spec, lease), output),
            ),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }

    /// Unix: a job's supervisor keeps it when the runner stops. Windows: a job dies
    /// with the runner, whose end closes its job object.
    fn outlives_runner(&self) -> bool {
        cfg!(unix)
    }

    #[cfg(unix)]
    fn find(&self, request: FindRequest) -> Finding {
        self.supervisors.find(request)
    }

    #[cfg(unix)]
    fn forget_others(&self, known: &[JobRef]) {
        self.supervisors.forget_others(known);
    }
}

/// A job ready to start: its folder made, its program found, its environment decided.
pub(super) struct Prepared {
    pub job: JobRef,
    /// stdout's log, then stderr's: there, and empty.
    pub logs: [PathBuf; 2],
    pub start_dir: PathBuf,
    /// The program to run: found in the job's `PATH` (Unix), or as the job wrote it
    /// (Windows, which searches itself).
    pub program: PathBuf,
    /// The first element of the job's command, as the job wrote it.
    pub argv0: String,
    pub args: Vec<String>,
    /// The environment, in order: a later entry replaces an earlier one of its name.
    pub env: Vec<(OsString, OsString)>,
    /// Whom the supervisor runs the job as. Windows has no supervisor and no job
    /// account (`job_user` is Unix-only), so nothing reads it there.
    #[cfg_attr(
        windows,
        expect(dead_code, reason = "jobs run as the runner on Windows")
    )]
    pub account: Option<Arc<JobAccount>>,
}

impl ProcessExecutor {
    /// Everything a start needs before a process exists. Never panics on a bad spec.
    /// `folder_ready`: `prepare_folder` made the folder for this start already.
    fn prepare(
        &self,
        spec: &crate::protocol::JobSpec,
        folder_ready: bool,
    ) -> Result<Prepared, ExecutorError> {
        spec.validate()?;
        let job = spec.job_ref();
        let job_dir = self.job_dir(&job)?;
        let logs = if folder_ready {
            spare_dir::LOGS.map(|log| job_dir.join(log))
        } else {
            // A socket the spare came with serves no one here: dropped, it is removed.
            self.make_job_dir(&job_dir)?.0
        };
        let work = job_dir.join("work");
        let start_dir = start_dir(&work, spec.workdir.as_deref())?;
        if let Some(account) = &self.account {
            account.hand_over_below(&work, &start_dir)?;
        }
        let Some((program, args)) = spec.command.split_first() else {
            return Err(JobSpecError::EmptyCommand.into());
        };
        let search_path = spec
            .env
            .get("PATH")
            .map_or(self.path.as_os_str(), |path| path.as_ref());
        let program_path = tree::program_path(program, search_path, &start_dir)?;
        // Nothing of the runner's environment (its token above all) reaches a job
        // unless listed here.
        let mut env = tree::base_environment(&job_dir, &self.path);
        if let Some(account) = &self.account {
            env.extend(
                account
                    .environment()
                    .into_iter()
                    .map(|(name, value)| (name.into(), value.into())),
            );
        }
        // The job's own variables may replace the defaults above...
        for (name, value) in &spec.env {
            // Checked with the spec already; checked again where it would matter.
            crate::protocol::validate_env(name, value)?;
            env.push((name.into(), value.into()));
        }
        // ...but not the runner's word on which job this is.
        env.push(("FYN_JOB_ID".into(), job.job_id.clone().into()));
        env.push(("FYN_JOB_ATTEMPT".into(), job.attempt.to_string().into()));
        // The job's endpoint, which the runner serves from just before the start.
        #[cfg(unix)]
        env.push((
            crate::runtime::job_endpoint::SOCKET_VARIABLE.into(),
            job_dir
                .join(crate::runtime::job_endpoint::SOCKET_NAME)
                .into_os_string(),
        ));
        info!(job = %job.job_id, attempt = job.attempt, dir = %job_dir.display(), "job prepared");
        Ok(Prepared {
            job,
            logs,
            start_dir,
            program: program_path,
            argv0: program.clone(),
            args: args.to_vec(),
            env,
            account: self.account.clone(),
        })
    }

    /// The job's folder with `work/` and its two empty logs: the spare moved into
    /// place (with its endpoint's socket bound, when it has one), or else made here.
    /// A log that cannot be made is a job that cannot be run as promised.
    fn make_job_dir(&self, job_dir: &Path) -> Result<([PathBuf; 2], Taken), ExecutorError> {
        let logs = spare_dir::LOGS.map(|log| job_dir.join(log));
        if let Some(taken) = self.spares.take_into(job_dir) {
            // Made empty with the spare (and handed over to the job account with it).
            return Ok((logs, taken));
        }
        let work = job_dir.join("work");
        create_dir(&work)?;
        if let Some(account) = &self.account {
            account.hand_over(job_dir)?;
            account.hand_over(&work)?;
        }
        for log in &logs {
            make_log(log)?;
        }
        Ok((logs, Taken::default()))
    }
}

#[cfg(unix)]
impl Prepared {
    fn into_launch(self, spec: &crate::protocol::JobSpec, lease: std::time::Duration) -> Launch {
        Launch {
            job: self.job,
            program: self.program,
            argv0: self.argv0,
            args: self.args,
            env: self.env,
            cwd: self.start_dir,
            account: self.account.as_deref().map(JobAccount::ids),
            output_limit_bytes: spec.output_limit_bytes,
            cancel_grace: std::time::Duration::from_secs(spec.cancel_grace_secs),
            lease,
            logs: self.logs,
        }
    }
}

fn create_dir(path: &Path) -> Result<(), ExecutorError> {
    platform::create_dir_all(path, JOB_ACCESS).map_err(|source| ExecutorError::Io {
        op: "create",
        path: path.to_owned(),
        source,
    })
}

/// The directory the job starts in: `work`, or the relative `workdir` below it,
/// created. The spec was validated, but this is where the path is used, so it is
/// checked again, and then once more on the real path in case a symlink leads out.
fn start_dir(work: &Path, workdir: Option<&str>) -> Result<PathBuf, ExecutorError> {
    let Some(workdir) = workdir else {
        return Ok(work.to_owned());
    };
    let relative = Path::new(workdir);
    let plain = relative
        .components()
        .all(|part| matches!(part, Component::Normal(_) | Component::CurDir));
    if !plain || workdir.contains('\0') {
        return Err(JobSpecError::BadWorkdir(workdir.to_owned()).into());
    }
    let dir = work.join(relative);
    create_dir(&dir)?;
    let real = |path: &Path| {
        fs::canonicalize(path).map_err(|source| ExecutorError::Io {
            op: "resolve",
            path: path.to_owned(),
            source,
        })
    };
    let resolved = real(&dir)?;
    if !resolved.starts_with(real(work)?) {
        return Err(ExecutorError::WorkdirEscapes {
            workdir: workdir.to_owned(),
            resolved,
        });
    }
    Ok(dir)
}

/// A log, made empty; a symlink in its place is refused rather than followed.
fn make_log(path: &Path) -> Result<(), ExecutorError> {
    match platform::no_follow(
        platform::open_options(JOB_ACCESS)
            .write(true)
            .create(true)
            .truncate(true),
    )
    .open(path)
    {
        Ok(_) => Ok(()),
        Err(source) => Err(ExecutorError::Io {
            op: "open",
            path: path.to_owned(),
            source,
        }),
    }
}

/// The program a job's supervisor runs from: the runner's own binary. On Linux that is
/// `/proc/self/exe`, the very file this process runs even after an upgrade replaced it
/// on disk, so a supervisor always speaks its runner's version. A process that is not
/// `fyn-runner` (a test, an example, an embedding program) looks for the `fyn-runner`
/// binary beside itself, as cargo lays out `target/<profile>/` (tests and examples
/// live one folder below, in `deps/` and `examples/`).
pub fn supervisor_program() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let named_so = |path: &Path| {
        path.file_stem()
            .is_some_and(|stem| stem.to_string_lossy().starts_with("fyn-runner"))
    };
    if named_so(&exe) {
        if cfg!(target_os = "linux") {
            return PathBuf::from("/proc/self/exe");
        }
        return exe;
    }
    let name = format!("fyn-runner{}", std::env::consts::EXE_SUFFIX);
    let beside = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let above = beside
        .file_name()
        .filter(|dir| *dir == "deps" || *dir == "examples")
        .and_then(|_| beside.parent().map(Path::to_path_buf));
    above
        .into_iter()
        .chain(std::iter::once(beside))
        .map(|dir| dir.join(&name))
        .find(|candidate| candidate.is_file())
        .unwrap_or(exe)
}
