//! Unix: a job is a process group. The main process leads a new group
//! (`process_group(0)`); every signal goes to the whole group (`kill(-pgid, ..)`), so
//! a cancel reaches what the job started too, and when the main process exits the
//! group is SIGKILLed. A process that leaves the group (`setsid`) escapes this; only
//! a cgroup could hold it, and that is a later backend's business.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use tokio::process::{Child, Command};
use tracing::{debug, warn};

use crate::protocol::{ExitStatus, JobRef};

use crate::runtime::jobs::ExecutorError;

/// The `PATH` a job gets when the runner itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// [`DEFAULT_PATH`], as the executor takes it.
pub fn default_path() -> OsString {
    DEFAULT_PATH.into()
}

/// The locale a job gets unless it declares its own: UTF-8 without local surprises.
const DEFAULT_LOCALE: &str = "C.UTF-8";

/// The variables every job starts from, before its own: `PATH`, its folder as
/// `HOME`, a UTF-8 locale.
pub fn base_environment(job_dir: &Path, path: &OsString) -> Vec<(OsString, OsString)> {
    vec![
        ("PATH".into(), path.clone()),
        ("HOME".into(), job_dir.as_os_str().to_owned()),
        ("LANG".into(), DEFAULT_LOCALE.into()),
        ("LC_ALL".into(), DEFAULT_LOCALE.into()),
    ]
}

/// The job's command, its program found as `execvp` would find it: a name without `/`
/// is looked up in the job's `PATH` (an empty or relative entry taken from the
/// directory the job starts in), first executable file wins; `argv[0]` stays as the job
/// wrote it. Doing the lookup here rather than in the child lets the standard library
/// start the job with `posix_spawn` instead of `fork`: with a `PATH` of its own set, it
/// must fork to search that `PATH` in the child, which costs the runner a copy of its
/// page tables and a wait for the child's scheduling on every job start.
pub fn command(program: &str, path: &OsStr, start_dir: &Path) -> Result<Command, ExecutorError> {
    let mut command = Command::new(resolve_program(program, path, start_dir)?);
    command.arg0(program);
    Ok(command)
}

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

/// Make the job's main process the leader of a new process group.
pub fn prepare(command: &mut Command) {
    command.process_group(0);
}

/// How the main process ended: its exit code, or the signal that killed it.
pub fn exit_status_of(status: std::process::ExitStatus) -> ExitStatus {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Exited { code },
        (None, Some(signal)) => ExitStatus::Signaled { signal },
        (None, None) => ExitStatus::Unknown,
    }
}

/// The job's process group, signalled as a whole. Once retired (the main process
/// exited and the group was killed), it is never signalled again: its number may
/// then belong to someone else.
pub struct ProcessTree {
    pgid: i32,
    job: JobRef,
    /// Held while a signal is sent, so a retire never races a ladder step.
    live: Mutex<bool>,
}

impl ProcessTree {
    /// Take charge of the group `child` leads (it was spawned after [`prepare`]).
    pub fn adopt(child: &Child, job: JobRef) -> Result<Self, ExecutorError> {
        let pid = child.id().ok_or(ExecutorError::NoPid)?;
        let pgid = i32::try_from(pid)
            .ok()
            .filter(|pgid| *pgid > 1)
            .ok_or(ExecutorError::BadPid { pid })?;
        Ok(Self {
            pgid,
            job,
            live: Mutex::new(true),
        })
    }

    pub fn job(&self) -> &JobRef {
        &self.job
    }

    /// SIGTERM to the group.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGKILL to the group.
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&self, signal: libc::c_int) {
        // A poisoned lock still holds a correct flag: only a bool is written under it.
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if *live {
            self.send(signal);
        }
    }

    /// SIGKILL the group one last time and never signal it again.
    pub fn retire(&self) {
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
