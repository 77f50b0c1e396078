//! Unix systems other than Linux: the job's process made by `fork`, through the
//! standard library, with the account and the file mode mask set before its `exec`.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use super::{AccountIds, Command};

/// Nothing is made ahead for a `fork`.
pub(super) struct ChildAhead;

impl ChildAhead {
    pub(super) fn make() -> io::Result<Self> {
        Ok(Self)
    }
}

/// Nothing to rehearse: the standard library builds its command at the start.
pub(super) fn rehearse(command: &Command) {
    let _ = command;
}

/// `fork` and `exec` through the standard library, with the account and the mask
/// set between them.
pub(super) fn start(
    command: &Command,
    account: Option<&AccountIds>,
    umask: libc::mode_t,
    _ahead: &ChildAhead,
    stdio: [RawFd; 3],
) -> io::Result<u32> {
    let os = |c: &std::ffi::CString| std::ffi::OsStr::from_bytes(c.as_bytes()).to_owned();
    let stdio_of = |fd: RawFd| -> io::Result<Stdio> {
        // SAFETY: the caller keeps `fd` open for this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        Ok(Stdio::from(borrowed.try_clone_to_owned()?))
    };
    let mut std_command = std::process::Command::new(os(&command.program));
    std_command
        .arg0(os(&command.args[0]))
        .args(command.args[1..].iter().map(os))
        .env_clear()
        .envs(command.env.iter().filter_map(|pair| {
            let bytes = pair.as_bytes();
            let at = bytes.iter().position(|b| *b == b'=')?;
            Some((
                std::ffi::OsStr::from_bytes(&bytes[..at]).to_owned(),
                std::ffi::OsStr::from_bytes(&bytes[at + 1..]).to_owned(),
            ))
        }))
        .current_dir(os(&command.cwd))
        .stdin(stdio_of(stdio[0])?)
        .stdout(stdio_of(stdio[1])?)
        .stderr(stdio_of(stdio[2])?)
        .process_group(0);
    let account = account.cloned();
    let supervisor = std::process::id();
    let setup = move || -> io::Result<()> {
        // SAFETY: between fork and exec only async-signal-safe calls are allowed:
        // these are plain system calls, reading memory allocated before the fork.
        unsafe {
            if let Some(account) = &account {
                crate::runtime::jobs::job_account::become_account(
                    account.uid,
                    account.gid,
                    &account.groups,
                )?;
            }
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            libc::umask(umask);
            if u32::try_from(libc::getppid()).ok() != Some(supervisor) {
                return Err(io::Error::other("the job's supervisor is gone"));
            }
        }
        Ok(())
    };
    // SAFETY: the closure makes only async-signal-safe system calls; it allocates
    // nothing and takes no lock.
    unsafe {
        std_command.pre_exec(setup);
    }
    let child = std_command.spawn()?;
    Ok(child.id())
}
