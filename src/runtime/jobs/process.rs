/*!
The process executor: each job is a local child process, leader of its own process
group, in its own directory, with a clean environment.

Layout of a job: `<jobs_root>/<job_id>-<attempt>/` (mode 0700, the job's `HOME`)
holds `stdout.log`, `stderr.log` and `work/`, where the job starts (or in the
relative `workdir` below it that the spec names).

Every signal goes to the whole group (`kill(-pgid, ..)`), so a cancel reaches what the
job started too, and when the main process exits the group is SIGKILLed: nothing of a
job outlives it. A process that leaves the group (`setsid`) escapes this; only a
cgroup could hold it, and that is a later backend's business.
*/

use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::protocol::{ExitStatus, JobRef, JobSpecError, OutputStream, validate_job_id};

use super::executor::{Executor, ExecutorError, JobControl, JobEnd, RunningJob, SpawnRequest};
use super::output::{LogFile, StreamSink, pump};

/// The `PATH` a job gets when the runner itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The locale a job gets unless it declares its own: UTF-8 without local surprises.
const DEFAULT_LOCALE: &str = "C.UTF-8";

/// Job directories and logs hold the job's data; only the runner's user may read them.
const DIR_MODE: u32 = 0o700;
const LOG_MODE: u32 = 0o600;

pub struct ProcessExecutor {
    jobs_root: PathBuf,
    /// The runner's `PATH`, read once, so every job of this runner sees the same one.
    path: OsString,
}

impl ProcessExecutor {
    pub fn new(jobs_root: PathBuf) -> Self {
        let path = std::env::var_os("PATH")
            .filter(|path| !path.is_empty())
            .unwrap_or_else(|| DEFAULT_PATH.into());
        Self { jobs_root, path }
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
        // Job IDs never start with '.', so the probe cannot meet a job's directory.
        let probe = root.join(format!(".preflight-{}", std::process::id()));
        let io_error = |op| {
            let path = probe.clone();
            move |source| ExecutorError::Io { op, path, source }
        };
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(LOG_MODE)
            .open(&probe)
            .and_then(|mut file| file.write_all(b"ok\n").and_then(|()| file.sync_all()))
            .map_err(io_error("write"));
        // Remove the probe even when the write failed half way.
        let removed = fs::remove_file(&probe).map_err(io_error("remove"));
        written.and(removed)
    }

    fn spawn(&self, request: SpawnRequest) -> Result<RunningJob, ExecutorError> {
        let SpawnRequest { spec, output } = request;
        spec.validate()?;
        let job = spec.job_ref();
        let job_dir = self.job_dir(&job)?;
        create_dir(&self.jobs_root)?;
        create_dir(&job_dir)?;
        let work = job_dir.join("work");
        create_dir(&work)?;
        let start_dir = start_dir(&work, spec.workdir.as_deref())?;
        // A log that cannot be opened is a job that cannot be run as promised.
        let stdout_log = open_log(job_dir.join("stdout.log"))?;
        let stderr_log = open_log(job_dir.join("stderr.log"))?;

        let Some((program, args)) = spec.command.split_first() else {
            return Err(JobSpecError::EmptyCommand.into());
        };
        let search_path = spec
            .env
            .get("PATH")
            .map_or(self.path.as_os_str(), |path| path.as_ref());
        let mut command = Command::new(resolve_program(program, search_path, &start_dir)?);
        command
            .arg0(program)
            .args(args)
            .current_dir(&start_dir)
            // Nothing of the runner's environment (its token above all) reaches a job
            // unless listed here.
            .env_clear()
            .env("PATH", &self.path)
            .env("HOME", &job_dir)
            .env("LANG", DEFAULT_LOCALE)
            .env("LC_ALL", DEFAULT_LOCALE);
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
            .process_group(0)
            .kill_on_drop(true);

        let mut child = command.spawn().map_err(|source| ExecutorError::Spawn {
            program: program.clone(),
            source,
        })?;
        let started = Instant::now();
        // On an early return from here, dropping `child` kills the main process and
        // dropping `group` kills the rest of its group.
        let pid = child.id().ok_or(ExecutorError::NoPid)?;
        let pgid = i32::try_from(pid)
            .ok()
            .filter(|pgid| *pgid > 1)
            .ok_or(ExecutorError::BadPid { pid })?;
        let group = Arc::new(ProcessGroup::new(pgid, job.clone()));
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
        (exit_status(status, &group.0.job), duration_ms)
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
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Exited { code },
            (None, Some(signal)) => ExitStatus::Signaled { signal },
            (None, None) => ExitStatus::Unknown,
        },
        Err(error) => {
            warn!(job = %job.job_id, attempt = job.attempt, %error, "cannot observe the job's exit");
            ExitStatus::Unknown
        }
    }
}

/// The job's process group, signalled as a whole. Once retired (the main process
/// exited and the group was killed), it is never signalled again: its number may
/// then belong to someone else.
struct ProcessGroup {
    pgid: i32,
    job: JobRef,
    /// Held while a signal is sent, so a retire never races a ladder step.
    live: Mutex<bool>,
}

impl ProcessGroup {
    fn new(pgid: i32, job: JobRef) -> Self {
        Self {
            pgid,
            job,
            live: Mutex::new(true),
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // A poisoned lock still holds a correct flag: only a bool is written under it.
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if *live {
            self.send(signal);
        }
    }

    /// SIGKILL the group one last time and never signal it again.
    fn retire(&self) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if *live {
            self.send(libc::SIGKILL);
            *live = false;
        }
    }

    fn send(&self, signal: libc::c_int) {
        match signal_group(self.pgid, signal) {
            Ok(()) => {
                debug!(job = %self.job.job_id, attempt = self.job.attempt, pgid = self.pgid, signal, "signalled the job's process group")
            }
            // Every process of the group is gone already: nothing to stop.
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
            Err(error) => {
                warn!(job = %self.job.job_id, attempt = self.job.attempt, pgid = self.pgid, signal, %error, "cannot signal the job's process group")
            }
        }
    }
}

impl JobControl for ProcessGroup {
    fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    fn kill(&self) {
        self.signal(libc::SIGKILL);
    }
}

/// Kills the group if the job's future is dropped before it finished (the runtime
/// shutting down, a spawn error after the fork): no process of a job outlives it.
struct RetireOnDrop(Arc<ProcessGroup>);

impl Drop for RetireOnDrop {
    fn drop(&mut self) {
        self.0.retire();
    }
}

/// `kill(-pgid, signal)`.
fn signal_group(pgid: i32, signal: libc::c_int) -> io::Result<()> {
    // kill(0, ..) would hit the runner's own group and kill(-1, ..) every process it
    // may signal; a group ID is never either.
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{pgid} is not a job's process group"),
        ));
    }
    // SAFETY: kill(2) reads its two integer arguments and no memory of this process.
    // `-pgid` names the group the job's main process leads (spawned with
    // `process_group(0)`), and `pgid > 1` was checked above, so it can never name the
    // runner's own group or every process.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn create_dir(path: &Path) -> Result<(), ExecutorError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|source| ExecutorError::Io {
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
fn open_log(path: PathBuf) -> Result<LogFile, ExecutorError> {
    match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(LOG_MODE)
        .custom_flags(libc::O_NOFOLLOW)
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

/// The program as `execvp` would find it: a name without `/` is looked up in the job's
/// `PATH` (an empty or relative entry taken from the directory the job starts in),
/// first executable file wins. Doing the lookup here rather than in the child lets the standard library
/// start the job with `posix_spawn` instead of `fork`: with a `PATH` of its own set, it
/// must fork to search that `PATH` in the child, which costs the runner a copy of its
/// page tables and a wait for the child's scheduling on every job start.
fn resolve_program(
    program: &str,
    path: &OsStr,
    start_dir: &Path,
) -> Result<PathBuf, ExecutorError> {
    if program.contains('/') {
        // Relative to where the job starts, as the child would see it after its chdir.
        return Ok(start_dir.join(program));
    }
    let not_found = || ExecutorError::Spawn {
        program: program.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "not found in the job's PATH"),
    };
    if program.is_empty() || program.contains('\0') {
        return Err(not_found());
    }
    std::env::split_paths(path)
        .map(|dir| start_dir.join(dir).join(program))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(not_found)
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
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
