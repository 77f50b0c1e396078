/*!
File operations done with a job account's rights instead of the runner's: making a
job's input files and its local socket, reading its output files. A job's folder and
`work/` belong to that account, so anything in them may be a link a job (or another job
of the same account) planted; the runner, as root, must never follow one to a file the
job could not reach itself. Done with the account's rights, the kernel applies the
account's permissions at every step, symbolic links included.

How (Linux): the operation runs on a thread of its own, which first takes the account's
groups (the raw `setgroups` system call, which changes only the calling thread, unlike
the C library's wrapper), then `setfsgid` and `setfsuid` (which also drop, for that
thread, the capabilities that let root ignore file permissions). The thread ends with
the operation, so nothing else ever runs with those rights. Descriptors opened there
stay valid on any thread: the runner then reads or writes through them.

Without an account (jobs run as the runner's own user) the operation runs where it is
called: the job could reach all of it anyway. On other systems an account is refused:
job accounts exist only on Linux (`install` creates one only there).

Must not: do anything on that thread but the one operation it was given.
*/

use std::io;

use crate::platform::Account;

/// Run `operation` with `account`'s file-system rights (or the runner's own when
/// `None`), on a thread of its own when an account is given.
pub fn with_account_access<T, F>(account: Option<&Account>, operation: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    match account {
        None => operation(),
        Some(account) => imp::on_account_thread(account, operation),
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;

    use crate::platform::Account;

    pub fn on_account_thread<T, F>(account: &Account, operation: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let groups: Vec<libc::gid_t> = account.groups.clone();
        let (uid, gid) = (account.uid, account.gid);
        let thread = std::thread::Builder::new()
            .name("fyn-account-fs".to_owned())
            .spawn(move || {
                become_account(&groups, uid, gid)?;
                operation()
            })?;
        thread.join().unwrap_or_else(|_| {
            Err(io::Error::other(
                "a file operation as the job account panicked",
            ))
        })
    }

    /// Take the account's groups and file-system identity, for this thread only.
    fn become_account(groups: &[libc::gid_t], uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: the raw system call reads `groups.len()` ids from a live slice; it
        // changes the credentials of the calling thread only.
        let set = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        // setfsgid/setfsuid return the previous id and never fail visibly; calling each
        // twice tells whether the change took (the second call returns the new id).
        // SAFETY: plain system calls on the calling thread's credentials.
        unsafe {
            libc::setfsgid(gid);
            if u32::try_from(libc::setfsgid(gid)).ok() != Some(gid) {
                return Err(io::Error::other("setfsgid did not take effect"));
            }
            libc::setfsuid(uid);
            if u32::try_from(libc::setfsuid(uid)).ok() != Some(uid) {
                return Err(io::Error::other("setfsuid did not take effect"));
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;

    use crate::platform::Account;

    pub fn on_account_thread<T, F>(account: &Account, _operation: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "job account {:?}: file access as another account needs Linux",
                account.name
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_account_the_operation_runs_as_the_runner() -> io::Result<()> {
        let value = with_account_access(None, || Ok(41 + 1))?;
        assert_eq!(value, 42);
        Ok(())
    }

    /// As root (where CI runs the privileged tests), a file only root may read is out of
    /// reach with an unprivileged account's rights, and reachable without.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_account_cannot_open_what_it_may_not_read() -> io::Result<()> {
        if !crate::platform::is_privileged() {
            eprintln!("skipped: taking another account's rights needs root (CI runs as root)");
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        // Passable by anyone, so only the file's own mode keeps the account out.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "x")?;
        std::os::unix::fs::chown(&secret, Some(0), Some(0))?;
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let nobody = Account {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        let path = secret.clone();
        let denied = with_account_access(Some(&nobody), move || std::fs::read(&path));
        assert_eq!(
            denied.map_err(|e| e.kind()),
            Err(io::ErrorKind::PermissionDenied)
        );
        assert_eq!(
            with_account_access(None, move || std::fs::read(&secret))?,
            b"x"
        );
        Ok(())
    }
}
