//! Windows: a job is a job object. The main process starts suspended and in a new
//! console process group (`CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP`), is put in a
//! fresh job object whose limit is `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`, and only then
//! resumed, so everything it starts is in the job from its first instruction. A cancel
//! is `CTRL_BREAK_EVENT` to the process group (what a console program sees as
//! Ctrl+Break; it reaches the job only when the runner has a console to share with it,
//! which the Windows service sets up); the kill is `TerminateJobObject`. When the main
//! process exits the job is terminated, and should the runner itself die, the system
//! closes its handle to the job and the kill-on-close limit ends every process left:
//! nothing of a job outlives it or the runner. Windows has no signals, so every end
//! is an exit code; a killed job ends with [`KILLED_EXIT_CODE`].

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::Path;
use std::ptr;
use std::sync::{Mutex, PoisonError};

use tokio::process::{Child, Command};
use tracing::{debug, warn};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Console::{CTRL_BREAK_EVENT, GenerateConsoleCtrlEvent};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    CREATE_NEW_PROCESS_GROUP, CREATE_SUSPENDED, OpenThread, ResumeThread, THREAD_SUSPEND_RESUME,
};

use crate::protocol::{ExitStatus, JobRef};

use crate::runtime::jobs::ExecutorError;

/// The exit code of every process of a job that was killed (`TerminateJobObject`).
pub const KILLED_EXIT_CODE: u32 = 1;

/// Variables of the runner's environment a Windows program needs to work at all
/// (`SystemRoot` above all: without it Winsock and much of the C runtime fail). None
/// of them carries a secret.
const SYSTEM_VARIABLES: &[&str] = &[
    "SystemRoot",
    "SystemDrive",
    "windir",
    "ComSpec",
    "PATHEXT",
    "OS",
    "NUMBER_OF_PROCESSORS",
    "PROCESSOR_ARCHITECTURE",
    "PROCESSOR_IDENTIFIER",
    "PROCESSOR_LEVEL",
    "PROCESSOR_REVISION",
    "ProgramData",
    "ProgramFiles",
    "ProgramFiles(x86)",
    "ProgramW6432",
    "CommonProgramFiles",
    "CommonProgramFiles(x86)",
    "CommonProgramW6432",
    "ALLUSERSPROFILE",
    "PUBLIC",
    "COMPUTERNAME",
];

/// The `PATH` a job gets when the runner itself has none: the system folders.
pub fn default_path() -> OsString {
    let root = std::env::var_os("SystemRoot").unwrap_or_else(|| r"C:\Windows".into());
    let mut path = root.clone();
    path.push(r"\System32;");
    path.push(&root);
    path
}

/// The variables every job starts from, before its own: `PATH`, the system variables
/// Windows programs need, and its folder as `USERPROFILE`, `HOME`, `TEMP` and `TMP`.
pub fn base_environment(job_dir: &Path, path: &OsString) -> Vec<(OsString, OsString)> {
    let mut vars: Vec<(OsString, OsString)> = SYSTEM_VARIABLES
        .iter()
        .filter_map(|name| Some(((*name).into(), std::env::var_os(name)?)))
        .collect();
    vars.push(("PATH".into(), path.clone()));
    for name in ["USERPROFILE", "HOME", "TEMP", "TMP"] {
        vars.push((name.into(), job_dir.as_os_str().to_owned()));
    }
    vars
}

/// The program as the job wrote it: the standard library searches the `PATH` the job
/// is given (and `PATHEXT`) itself, the way `CreateProcess` callers expect.
pub fn program_path(
    program: &str,
    _path: &OsStr,
    _start_dir: &Path,
) -> Result<std::path::PathBuf, ExecutorError> {
    Ok(program.into())
}

/// Start the main process suspended, leading a new console process group.
pub fn prepare(command: &mut Command) {
    command.creation_flags(CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP);
}

/// Windows processes end with an exit code, always.
pub fn exit_status_of(status: std::process::ExitStatus) -> ExitStatus {
    match status.code() {
        Some(code) => ExitStatus::Exited { code },
        None => ExitStatus::Unknown,
    }
}

/// The job object holding every process of a job.
pub struct ProcessTree {
    job_object: OwnedHandle,
    /// The main process, which leads the console process group.
    pid: u32,
    job: JobRef,
    /// Held while a control is sent, so a retire never races a ladder step.
    live: Mutex<bool>,
}

impl ProcessTree {
    /// Put `child` (spawned suspended by [`prepare`]) in a new kill-on-close job
    /// object, then let it run. On an error the caller drops `child`, which kills it.
    pub fn adopt(child: &Child, job: JobRef) -> Result<Self, ExecutorError> {
        let pid = child.id().ok_or(ExecutorError::NoPid)?;
        let process = child.raw_handle().ok_or(ExecutorError::NoPid)?;
        let failed = |what: &'static str| {
            let source = io::Error::last_os_error();
            ExecutorError::Spawn {
                program: format!("job object ({what})"),
                source,
            }
        };
        // SAFETY: no security attributes, no name: a new anonymous job object.
        let raw = unsafe { CreateJobObjectW(ptr::null(), ptr::null()) };
        if raw.is_null() {
            return Err(failed("create"));
        }
        // SAFETY: `raw` is a new handle owned by nobody else; OwnedHandle closes it.
        let job_object = unsafe { OwnedHandle::from_raw_handle(raw as _) };
        let mut limits = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: `limits` is the structure this information class names, of the
        // size given.
        let ok = unsafe {
            SetInformationJobObject(
                raw,
                JobObjectExtendedLimitInformation,
                ptr::addr_of!(limits).cast(),
                u32::try_from(std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>())
                    .unwrap_or(u32::MAX),
            )
        };
        if ok == 0 {
            return Err(failed("set kill-on-close"));
        }
        // SAFETY: both handles are open: the job above, the child's process handle
        // while `child` lives.
        if unsafe { AssignProcessToJobObject(raw, process as HANDLE) } == 0 {
            return Err(failed("assign the process"));
        }
        resume_threads(pid).map_err(|source| ExecutorError::Spawn {
            program: "job object (resume the main thread)".to_owned(),
            source,
        })?;
        Ok(Self {
            job_object,
            pid,
            job,
            live: Mutex::new(true),
        })
    }

    pub fn job(&self) -> &JobRef {
        &self.job
    }

    /// `CTRL_BREAK_EVENT` to the job's process group.
    pub fn terminate(&self) {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if !*live {
            return;
        }
        // SAFETY: the call reads two integers; the group ID is the main process's pid.
        if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, self.pid) } == 0 {
            let error = io::Error::last_os_error();
            warn!(job = %self.job.job_id, attempt = self.job.attempt, pid = self.pid, %error, "cannot send Ctrl+Break to the job (no shared console); it is killed when its grace ends");
        } else {
            debug!(job = %self.job.job_id, attempt = self.job.attempt, pid = self.pid, "sent Ctrl+Break to the job's process group");
        }
    }

    /// End every process of the job now.
    pub fn kill(&self) {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if *live {
            self.terminate_job();
        }
    }

    /// Kill what is left of the job one last time and never touch it again.
    pub fn retire(&self) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if *live {
            self.terminate_job();
            *live = false;
        }
    }

    fn terminate_job(&self) {
        let raw = self.job_object.as_raw_handle() as HANDLE;
        // SAFETY: the job object handle is open for the life of `self`.
        if unsafe { TerminateJobObject(raw, KILLED_EXIT_CODE) } == 0 {
            let error = io::Error::last_os_error();
            warn!(job = %self.job.job_id, attempt = self.job.attempt, %error, "cannot terminate the job's job object");
        } else {
            debug!(job = %self.job.job_id, attempt = self.job.attempt, "terminated the job's job object");
        }
    }
}

/// Resume every thread of process `pid` (a process created suspended has one).
fn resume_threads(pid: u32) -> io::Result<()> {
    // SAFETY: a snapshot of all threads; the handle is closed below.
    let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if snapshot == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    let mut entry = THREADENTRY32 {
        dwSize: u32::try_from(std::mem::size_of::<THREADENTRY32>()).unwrap_or(0),
        cntUsage: 0,
        th32ThreadID: 0,
        th32OwnerProcessID: 0,
        tpBasePri: 0,
        tpDeltaPri: 0,
        dwFlags: 0,
    };
    let mut resumed = 0usize;
    let mut result = Ok(());
    // SAFETY: `entry` is a THREADENTRY32 with its size set, as the API requires.
    let mut more = unsafe { Thread32First(snapshot, &mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == pid {
            // SAFETY: opening a thread by ID; the handle is closed right after use.
            let thread = unsafe { OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID) };
            if thread.is_null() {
                result = Err(io::Error::last_os_error());
            } else {
                // SAFETY: `thread` is open with THREAD_SUSPEND_RESUME access.
                if unsafe { ResumeThread(thread) } == u32::MAX {
                    result = Err(io::Error::last_os_error());
                } else {
                    resumed += 1;
                }
                // SAFETY: closed once.
                unsafe { CloseHandle(thread) };
            }
        }
        // SAFETY: as for Thread32First.
        more = unsafe { Thread32Next(snapshot, &mut entry) } != 0;
    }
    // SAFETY: the snapshot handle is closed once.
    unsafe { CloseHandle(snapshot) };
    result?;
    if resumed == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} has no thread to resume"),
        ));
    }
    Ok(())
}
