/*!
The account jobs run as, when it is not the runner's own (`job_user`; Unix, the runner
running as root): what makes a job unable to reach the runner's key, store and
control socket.

- The jobs folder is the runner's, mode 0711: the job account may pass through it to
  its own job folder, but not list it nor create anything in it (a job that could
  plant a link there would have the runner, as root, follow it).
- A job's folder and its `work/` (and the folders of its `workdir`) are handed over to
  the account; the logs stay the runner's, written through descriptors it opened.
- The job's process drops to the account before `exec`: all of the account's groups
  (`setgroups`, so root's own groups are not inherited), then its group, then its
  user. Its supervisor does that (`supervised/program.rs`), and runs as the runner's
  user itself, so its records and socket stay out of the job's reach.

Must not: decide who a job runs as (that is the settings'), nor touch the state folder,
which stays 0700 and out of the account's reach.
*/

use std::io;
use std::path::Path;

use crate::platform::Account;

use super::ExecutorError;

/// Who a job's processes run as, and what that takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobAccount {
    account: Account,
}

impl JobAccount {
    pub fn new(account: Account) -> Self {
        Self { account }
    }

    pub fn name(&self) -> &str {
        &self.account.name
    }

    /// The account itself (for file operations done with its rights: `account_fs`).
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The ids a job's supervisor drops to before it runs the job (Unix).
    #[cfg(unix)]
    pub(super) fn ids(&self) -> super::supervised::wire::AccountIds {
        super::supervised::wire::AccountIds {
            uid: self.account.uid,
            gid: self.account.gid,
            groups: self.account.groups.clone(),
        }
    }

    /// Variables a job of this account gets (before its own): who it is.
    pub fn environment(&self) -> [(&'static str, &str); 2] {
        [("USER", self.name()), ("LOGNAME", self.name())]
    }

    /// Give `path` (a job's folder, its `work/`) to the account.
    pub fn hand_over(&self, path: &Path) -> Result<(), ExecutorError> {
        imp::chown(path, self.account.uid, self.account.gid).map_err(|source| ExecutorError::Io {
            op: "hand over",
            path: path.to_owned(),
            source,
        })
    }

    /// Give every folder from below `base` down to `dir` to the account (a `workdir`'s
    /// folders, made by the runner before the job starts).
    pub fn hand_over_below(&self, base: &Path, dir: &Path) -> Result<(), ExecutorError> {
        let Ok(relative) = dir.strip_prefix(base) else {
            return Ok(());
        };
        let mut path = base.to_path_buf();
        for part in relative.components() {
            path.push(part);
            self.hand_over(&path)?;
        }
        Ok(())
    }

    /// The jobs folder: the runner's, mode 0711, in a folder no other user can replace
    /// it in, and every folder above it passable by the account (otherwise no job could
    /// start in it: better said at start).
    pub fn open_jobs_root(&self, root: &Path) -> Result<(), ExecutorError> {
        imp::set_mode(root, 0o711).map_err(|source| ExecutorError::Io {
            op: "chmod 711",
            path: root.to_owned(),
            source,
        })?;
        let untrusted =
            crate::platform::foreign_write_access(root).map_err(|source| ExecutorError::Io {
                op: "inspect",
                path: root.to_owned(),
                source,
            })?;
        if let Some(why) = untrusted {
            return Err(ExecutorError::JobsRootUntrusted {
                root: root.to_owned(),
                why,
            });
        }
        for folder in root.ancestors() {
            if folder.as_os_str().is_empty() {
                continue;
            }
            if let Some(mode) =
                imp::closed_to(folder, &self.account).map_err(|source| ExecutorError::Io {
                    op: "inspect",
                    path: folder.to_owned(),
                    source,
                })?
            {
                return Err(ExecutorError::JobsRootUnreachable {
                    user: self.name().to_owned(),
                    root: root.to_owned(),
                    folder: folder.to_owned(),
                    mode,
                });
            }
        }
        Ok(())
    }

    /// Have `command` run as the job account (a hook the operator configured runs with
    /// a job's rights, never the runner's).
    pub fn apply(&self, command: &mut tokio::process::Command) {
        imp::run_as(command, &self.account);
    }
}

/// The layout changed when jobs got an account of their own: their folders moved from
/// `<state_dir>/jobs`, which that account cannot enter, to a jobs folder beside it.
/// Folders an earlier run left in the old place (ended jobs within their retention,
/// a job that was running at a crash) are moved along, so retention and the orphan
/// reaper find them; a spare folder is dropped. What cannot be moved (another file
/// system, a name taken) stays, with a warning.
pub fn move_job_folders(from: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    let mut moved = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let target = to.join(&name);
        if name.to_string_lossy().starts_with('.') {
            // Spares and probes: made again when needed.
            let _ = std::fs::remove_dir_all(entry.path());
            continue;
        }
        let result = if target.exists() {
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the name is taken",
            ))
        } else {
            std::fs::rename(entry.path(), &target)
        };
        match result {
            Ok(()) => moved += 1,
            Err(error) => tracing::warn!(
                folder = %entry.path().display(),
                to = %to.display(),
                %error,
                "cannot move a job folder to the new jobs folder; it stays where it is"
            ),
        }
    }
    if moved > 0 {
        tracing::info!(moved, from = %from.display(), to = %to.display(), "job folders moved out of the state folder");
    }
    // Only an empty folder goes.
    let _ = std::fs::remove_dir(from);
}

/// For the supervisor's `fork` (Unix systems other than Linux, `supervised/spawn/fork.rs`).
#[cfg(all(unix, not(target_os = "linux")))]
pub(crate) use imp::become_account;

#[cfg(unix)]
mod imp {
    use std::fs;
    use std::io;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use crate::platform::Account;

    /// Between `fork` and `exec`: the groups, then the group, then the user, each
    /// checked (glibc's wrappers, right in a forked child, which has one thread).
    ///
    /// # Safety
    /// Only in a child between `fork` and `exec`: it makes three async-signal-safe
    /// system calls on `groups`, which must have been allocated before the fork.
    pub unsafe fn become_account(
        uid: libc::uid_t,
        gid: libc::gid_t,
        groups: &[libc::gid_t],
    ) -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: plain system calls reading `groups` with its true length.
        unsafe {
            check(libc::setgroups(groups.len() as _, groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))
        }
    }

    pub fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    /// The folder's mode when the account cannot pass through it.
    pub fn closed_to(folder: &Path, account: &Account) -> io::Result<Option<u32>> {
        let meta = fs::metadata(folder)?;
        let mode = meta.mode() & 0o7777;
        let can_pass = if meta.uid() == account.uid {
            mode & 0o100 != 0
        } else if account.groups.contains(&meta.gid()) || meta.gid() == account.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        Ok((!can_pass).then_some(mode))
    }

    pub fn run_as(command: &mut tokio::process::Command, account: &Account) {
        let groups: Vec<libc::gid_t> = account.groups.clone();
        let (uid, gid) = (account.uid, account.gid);
        // SAFETY (of the call): in the forked child, on memory allocated before the
        // fork (`groups`).
        let drop_privileges = move || unsafe { become_account(uid, gid, &groups) };
        // SAFETY: the closure only makes async-signal-safe system calls (see above);
        // it allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(drop_privileges);
        }
    }
}

#[cfg(windows)]
mod imp {
    use std::io;
    use std::path::Path;

    use crate::platform::Account;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "job_user is not supported on Windows",
        )
    }

    pub fn chown(_path: &Path, _uid: u32, _gid: u32) -> io::Result<()> {
        Err(unsupported())
    }

    pub fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
        Err(unsupported())
    }

    pub fn closed_to(_folder: &Path, _account: &Account) -> io::Result<Option<u32>> {
        Err(unsupported())
    }

    /// Never reached: no account can be looked up on Windows (`platform`).
    pub fn run_as(_command: &mut tokio::process::Command, _account: &Account) {}
}
