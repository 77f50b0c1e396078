//! A cached input put at its path in a job's `work/`. Every folder on the way is made
//! (and every existing one checked not to be a symbolic link) with the job account's
//! rights, so nothing a job planted in `work/` leads the runner elsewhere.
//!
//! A hard link when it is safe and possible: the job runs as its own account (it
//! cannot change the runner's read-only file, which all jobs then share), the input is
//! not to be executable (a link shares the cached file's mode), and `work/` is on the
//! cache's file system. Otherwise a copy the job owns (`copy_file_range` where the
//! system has it, which some file systems turn into a shared extent), mode 0644, or
//! 0755 for an executable input. A linked input is read-only to the job.

use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::platform::Account;
use crate::protocol::validate_file_path;
use crate::runtime::account_fs::with_account_access;

/// How an input reached `work/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hard link to the cached file: no copy, read-only.
    Linked,
    /// A copy the job owns.
    Copied,
}

/// Put the cached file `blob` at `rel` below `work`.
pub fn place_input(
    blob: &Path,
    work: &Path,
    rel: &str,
    executable: bool,
    account: Option<&Account>,
) -> io::Result<Placement> {
    validate_file_path(rel, false).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("input path {rel:?}: {why}"),
        )
    })?;
    let target = work.join(rel);
    let (parent, name) = match (target.parent(), target.file_name()) {
        (Some(parent), Some(name)) => (parent.to_owned(), name.to_owned()),
        _ => {
            return Err(io::Error::other(format!(
                "input path {rel:?} names no file"
            )));
        }
    };
    let (work_dir, parent_dir) = (work.to_owned(), parent.clone());
    with_account_access(account, move || make_folders(&work_dir, &parent_dir))?;
    if account.is_some() && !executable && imp::link(blob, &parent, &name, account)? {
        return Ok(Placement::Linked);
    }
    copy(blob, &target, executable, account)?;
    Ok(Placement::Copied)
}

/// Each folder from `work` down to `dir`: made when missing, refused when a link.
fn make_folders(work: &Path, dir: &Path) -> io::Result<()> {
    let relative = dir.strip_prefix(work).map_err(io::Error::other)?;
    let mut at: PathBuf = work.to_owned();
    let parts = std::iter::once(None).chain(relative.components().map(Some));
    for part in parts {
        if let Some(part) = part {
            let Component::Normal(name) = part else {
                return Err(io::Error::other("an input's folder is not a plain path"));
            };
            at.push(name);
        }
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(io::Error::other(format!(
                    "{} is a symbolic link; inputs are never placed through one",
                    at.display()
                )));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is in the way: not a folder",
                    at.display()
                )));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => fs::create_dir(&at)?,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// A copy of `blob` at `target`, made by (and so owned by) the account.
fn copy(blob: &Path, target: &Path, executable: bool, account: Option<&Account>) -> io::Result<()> {
    let mut source = File::open(blob)?;
    let mode = if executable { 0o755 } else { 0o644 };
    let path = target.to_owned();
    let mut dest = with_account_access(account, move || imp::create_new(&path, mode))?;
    io::copy(&mut source, &mut dest)?;
    imp::set_mode(&dest, mode)
}

#[cfg(unix)]
mod imp {
    use std::ffi::{CString, OsStr};
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    use crate::platform::Account;
    use crate::runtime::account_fs::with_account_access;

    pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    }

    pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
    }

    /// A hard link `dir/name` to `blob`; `false` when the system cannot make one here
    /// (another file system, links not allowed), so the caller copies.
    pub fn link(
        blob: &Path,
        dir: &Path,
        name: &OsStr,
        account: Option<&Account>,
    ) -> io::Result<bool> {
        let dir = dir.to_owned();
        // The folder is opened with the account's rights and without following a
        // link; the link itself is made by the runner into that very folder.
        let folder = with_account_access(account, move || {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(&dir)
        })?;
        let from = CString::new(blob.as_os_str().as_bytes())?;
        let to = CString::new(name.as_bytes())?;
        // SAFETY: both strings are NUL-terminated and live across the call; the folder
        // descriptor is open.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                folder.as_raw_fd(),
                to.as_ptr(),
                0,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EXDEV | libc::EPERM | libc::EMLINK | libc::ENOTSUP) => Ok(false),
            _ => Err(error),
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use std::ffi::OsStr;
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::path::Path;

    use crate::platform::Account;

    pub fn create_new(path: &Path, _mode: u32) -> io::Result<File> {
        OpenOptions::new().write(true).create_new(true).open(path)
    }

    pub fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
        Ok(())
    }

    /// Job accounts exist only on Linux: jobs here run as the runner, so they copy.
    pub fn link(
        _blob: &Path,
        _dir: &Path,
        _name: &OsStr,
        _account: Option<&Account>,
    ) -> io::Result<bool> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_without_an_account_is_a_copy_in_the_folders_it_names() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let blob = dir.path().join("blob");
        fs::write(&blob, b"mesh")?;
        let work = dir.path().join("work");
        fs::create_dir(&work)?;
        let placed = place_input(&blob, &work, "in/deep/mesh.vtu", false, None)?;
        assert_eq!(placed, Placement::Copied);
        assert_eq!(fs::read(work.join("in/deep/mesh.vtu"))?, b"mesh");
        place_input(&blob, &work, "run.sh", true, None)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| fs::metadata(work.join(p)).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode("run.sh")?, 0o755);
            assert_eq!(mode("in/deep/mesh.vtu")?, 0o644);
        }
        // Already there: refused, not replaced.
        assert!(place_input(&blob, &work, "run.sh", true, None).is_err());
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn a_link_planted_in_work_is_never_followed() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let blob = dir.path().join("blob");
        fs::write(&blob, b"mesh")?;
        let work = dir.path().join("work");
        let outside = dir.path().join("outside");
        fs::create_dir(&work)?;
        fs::create_dir(&outside)?;
        std::os::unix::fs::symlink(&outside, work.join("in"))?;
        assert!(place_input(&blob, &work, "in/mesh.vtu", false, None).is_err());
        std::os::unix::fs::symlink(outside.join("target"), work.join("file"))?;
        assert!(place_input(&blob, &work, "file", false, None).is_err());
        assert_eq!(fs::read_dir(&outside)?.count(), 0);
        Ok(())
    }

    /// As root with a job account: a plain input is a link to the runner's read-only
    /// file (the account cannot write it), an executable one a copy the account owns.
    #[cfg(target_os = "linux")]
    #[test]
    fn with_an_account_a_plain_input_is_a_read_only_link() -> io::Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !crate::platform::is_privileged() {
            eprintln!("skipped: another account's rights need root (CI runs as root)");
            return Ok(());
        }
        let nobody = Account {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        let dir = tempfile::tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711))?;
        let blob = dir.path().join("blob");
        fs::write(&blob, b"mesh")?;
        fs::set_permissions(&blob, fs::Permissions::from_mode(0o444))?;
        let work = dir.path().join("work");
        fs::create_dir(&work)?;
        std::os::unix::fs::chown(&work, Some(nobody.uid), Some(nobody.gid))?;
        let linked = place_input(&blob, &work, "in/mesh.vtu", false, Some(&nobody))?;
        assert_eq!(linked, Placement::Linked);
        let meta = fs::metadata(work.join("in/mesh.vtu"))?;
        assert_eq!(meta.ino(), fs::metadata(&blob)?.ino());
        assert_eq!(fs::metadata(work.join("in"))?.uid(), nobody.uid);
        let path = work.join("in/mesh.vtu");
        let write = with_account_access(Some(&nobody), move || {
            fs::OpenOptions::new().write(true).open(&path).map(|_| ())
        });
        assert_eq!(
            write.map_err(|e| e.kind()),
            Err(io::ErrorKind::PermissionDenied)
        );
        let copied = place_input(&blob, &work, "run.sh", true, Some(&nobody))?;
        assert_eq!(copied, Placement::Copied);
        let meta = fs::metadata(work.join("run.sh"))?;
        assert_eq!((meta.uid(), meta.mode() & 0o777), (nobody.uid, 0o755));
        Ok(())
    }
}
