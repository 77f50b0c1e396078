/*!
The process executor: each job is a local child process, with every process it starts
held together as one tree the runner can stop, in its own directory, with a clean
environment.

Layout of a job: `<jobs_root>/<job_id>-<attempt>/` (private: mode 0700, or a private
access list on Windows; the job's `HOME`) holds `stdout.log`, `stderr.log` and `work/`,
where the job starts (or in the relative `workdir` below it that the spec names). With
a job account (`job_account.rs`) the folder and `work/` belong to that account, the
logs stay the runner's, and the jobs root is the runner's, 0711.

What holds a job's processes together is the platform's: a process group on Unix
(`process_group.rs`: signals to the whole group, SIGKILL when the main process
exits), a kill-on-close job object on Windows (`job_object.rs`: Ctrl+Break to the
group, `TerminateJobObject`). Either way nothing of a job outlives it.
*/

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::protocol::{ExitStatus, JobRef, JobSpecError, OutputStream, validate_job_id};

use super::executor::{Executor, ExecutorError, JobControl, JobEnd, RunningJob, SpawnRequest};
use super::job_account::JobAccount;
use super::output::{LogFile, StreamSink, pump};
use super::spare_dir::{self, SpareDirs};
use crate::platform::{self, Access};

#[cfg(unix)]
#[path = "process_group.rs"]
mod tree;
#[cfg(windows)]
#[path = "job_object.rs"]
mod tree;

use tree::ProcessTree;
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
}

impl ProcessExecutor {
    pub fn new(jobs_root: PathBuf) -> Self {
        Self::with_layout(JobsLayout {
            root: jobs_root,
            account: None,
            moved_from: None,
        })
    }

    pub fn with_layout(layout: JobsLayout) -> Self {
        let path = std::env::var_os("PATH")
            .filter(|path| !path.is_empty())
            .unwrap_or_else(default_path);
        let account = layout.account.map(Arc::new);
        Self {
            spares: SpareDirs::new(layout.root.clone(), account.clone()),
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

    /// The jobs root exists (or can be made) and a file can be written in it.
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
        self.spares.prepare();
        Ok(())
    }

    fn prepare_ahead(&self) {
        self.spares.refill();
    }

    fn spawn(&self, request: SpawnRequest) -> Result<RunningJob, ExecutorError> {
        let SpawnRequest { spec, output } = request;
        spec.validate()?;
        let job = spec.job_ref();
        let job_dir = self.job_dir(&job)?;
        let [stdout_log, stderr_log] = self.make_job_dir(&job_dir)?;
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
        let mut command = tree::command(program, search_path, &start_dir)?;
        command
            .args(args)
            .current_dir(&start_dir)
            // Nothing of the runner's environment (its token above all) reaches a job
            // unless listed here.
            .env_clear()
            .envs(tree::base_environment(&job_dir, &self.path));
        if let Some(account) = &self.account {
            command.envs(account.environment());
            account.apply(&mut command);
        }
        // The job's own variables may replace the defaults above...
        for (name, value) in &spec.env {
            check_env(name, value)?;
            command.env(name, value);
        }
        // ...but not the runner's word on which job this is.
        command
            .env("FYN_JOB_ID", &job.job_id)
            .env("FYN_JOB_ATTEMPT", job.attempt.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        tree::prepare(&mut command);

        let mut child = command.spawn().map_err(|source| ExecutorError::Spawn {
            program: program.clone(),
            source,
        })?;
        let started = Instant::now();
        // On an early return from here, dropping `child` kills the main process and
        // dropping `guard` kills the rest of its tree.
        let pid = child.id().ok_or(ExecutorError::NoPid)?;
        let group = Arc::new(ProcessTree::adopt(&child, job.clone())?);
        let guard = RetireOnDrop(group.clone());
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ExecutorError::Spawn {
                program: program.clone(),
                source: io::Error::other("the output pipes were not set up"),
            });
        };
        info!(job = %job.job_id, attempt = job.attempt, pid, dir = %job_dir.display(), "job started");
        let streams = Streams {
            stdout,
            stderr,
            stdout_log,
            stderr_log,
            stdout_sink: output.stream(OutputStream::Stdout),
            stderr_sink: output.stream(OutputStream::Stderr),
            limit: spec.output_limit_bytes,
        };
        Ok(RunningJob {
            pid,
            control: group,
            finished: Box::pin(run_to_end(child, guard, streams, started)),
        })
    }
}

impl ProcessExecutor {
    /// The job's folder with `work/` and its two logs, open: the spare moved into
    /// place, or else made here. A log that cannot be opened is a job that cannot be
    /// run as promised.
    fn make_job_dir(&self, job_dir: &Path) -> Result<[LogFile; 2], ExecutorError> {
        let [stdout, stderr] = spare_dir::LOGS.map(|log| job_dir.join(log));
        if self.spares.take_into(job_dir) {
            // Made empty with the spare (and handed over to the job account with it):
            // opened as they are, no change to the disk.
            return Ok([open_log(stdout, false)?, open_log(stderr, false)?]);
        }
        let work = job_dir.join("work");
        create_dir(&work)?;
        if let Some(account) = &self.account {
            account.hand_over(job_dir)?;
            account.hand_over(&work)?;
        }
        Ok([open_log(stdout, true)?, open_log(stderr, true)?])
    }
}

/// A job's two pipes and where their bytes go.
struct Streams {
    stdout: ChildStdout,
    stderr: ChildStderr,
    stdout_log: LogFile,
    stderr_log: LogFile,
    stdout_sink: StreamSink,
    stderr_sink: StreamSink,
    limit: u64,
}

/// Read both streams while waiting for the main process; when it exits, kill its
/// group, then finish reading. Nothing runs until this future is first polled, so the
/// supervisor's `Started` report comes before any output.
async fn run_to_end(
    mut child: Child,
    group: RetireOnDrop,
    streams: Streams,
    started: Instant,
) -> JobEnd {
    let (ended_tx, ended) = watch::channel(false);
    let stdout = pump(
        streams.stdout,
        streams.stdout_log,
        streams.stdout_sink,
        streams.limit,
        ended.clone(),
    );
    let stderr = pump(
        streams.stderr,
        streams.stderr_log,
        streams.stderr_sink,
        streams.limit,
        ended,
    );
    let main = async {
        let status = child.wait().await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Whatever the main process left behind dies with it; that also closes the
        // pipes those processes held, so the readers reach their end.
        group.0.retire();
        // An error only means both readers are done already.
        let _ = ended_tx.send(true);
        (exit_status(status, group.0.job()), duration_ms)
    };
    let ((status, duration_ms), (stdout_bytes, stderr_bytes)) =
        tokio::join!(main, async { tokio::join!(stdout, stderr) });
    JobEnd {
        status,
        duration_ms,
        stdout_bytes,
        stderr_bytes,
    }
}

fn exit_status(status: io::Result<std::process::ExitStatus>, job: &JobRef) -> ExitStatus {
    match status {
        Ok(status) => tree::exit_status_of(status),
        Err(error) => {
            warn!(job = %job.job_id, attempt = job.attempt, %error, "cannot observe the job's exit");
            ExitStatus::Unknown
        }
    }
}

impl JobControl for ProcessTree {
    fn terminate(&self) {
        ProcessTree::terminate(self);
    }

    fn kill(&self) {
        ProcessTree::kill(self);
    }
}

/// Kills the tree if the job's future is dropped before it finished (the runtime
/// shutting down, a spawn error after the fork): no process of a job outlives it.
struct RetireOnDrop(Arc<ProcessTree>);

impl Drop for RetireOnDrop {
    fn drop(&mut self) {
        self.0.retire();
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

/// The log starts empty; a symlink in its place is refused rather than followed.
fn open_log(path: PathBuf, create: bool) -> Result<LogFile, ExecutorError> {
    match platform::no_follow(
        platform::open_options(JOB_ACCESS)
            .write(true)
            .create(create)
            .truncate(create),
    )
    .open(&path)
    {
        Ok(file) => Ok(LogFile::new(file, path)),
        Err(source) => Err(ExecutorError::Io {
            op: "open",
            path,
            source,
        }),
    }
}

/// What `execve` cannot carry: an empty name, `=` in a name (it would split
/// differently on the other side), a NUL byte anywhere.
fn check_env(name: &str, value: &str) -> Result<(), ExecutorError> {
    let why = if name.is_empty() {
        "the name is empty"
    } else if name.contains('=') {
        "the name contains '='"
    } else if name.contains('\0') || value.contains('\0') {
        "it contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(ExecutorError::BadEnv {
        name: name.to_owned(),
        why,
    })
}
