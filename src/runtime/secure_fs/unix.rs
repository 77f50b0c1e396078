//! Unix: private means mode 0700 (folders) and 0600 (files), owned by this user.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, SecureFsError, io_error};

/// Permission bits that give the group or others any access.
const SHARED_BITS: u32 = 0o077;

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `path` and its missing parents with mode 0700. An existing directory we
/// own is tightened to 0700; one owned by someone else is refused (as sshd's
/// StrictModes does): its owner could rename or replace what the runner keeps there.
pub fn create_private_dir(path: &Path) -> Result<(), SecureFsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
        .map_err(io_error("create directory", path))?;
    let meta = fs::metadata(path).map_err(io_error("inspect", path))?;
    if !meta.is_dir() {
        return Err(SecureFsError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    check_owner(path, &meta)?;
    let mode = meta.mode() & 0o7777;
    if mode == PRIVATE_DIR_MODE {
        return Ok(());
    }
    // The umask may have narrowed the mode, or the directory predates us: either
    // way, set exactly 0700.
    fs::set_permissions(path, Permissions::from_mode(PRIVATE_DIR_MODE))
        .map_err(io_error("chmod 700", path))
}

/// Fails, naming the path and its owner, when another user owns it.
fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<(), SecureFsError> {
    let me = effective_uid();
    if meta.uid() == me {
        return Ok(());
    }
    Err(SecureFsError::ForeignOwner {
        path: path.to_path_buf(),
        owner: meta.uid(),
        me,
    })
}

/// Fails, naming the path and what is wrong, when another user owns it or group or
/// others have any access.
pub fn check_private(path: &Path) -> Result<(), SecureFsError> {
    let meta = fs::metadata(path).map_err(io_error("inspect", path))?;
    check_owner(path, &meta)?;
    let mode = meta.mode() & 0o7777;
    if mode & SHARED_BITS == 0 {
        return Ok(());
    }
    let fix = if meta.is_dir() {
        PRIVATE_DIR_MODE
    } else {
        PRIVATE_FILE_MODE
    };
    Err(SecureFsError::TooOpen {
        path: path.to_path_buf(),
        mode,
        fix,
    })
}

/// An existing file of the runner's that must be private (the store): refused when
/// another user owns it, tightened to 0600 when group or others could read it.
pub fn ensure_private_file(path: &Path) -> Result<(), SecureFsError> {
    let meta = fs::metadata(path).map_err(io_error("inspect", path))?;
    check_owner(path, &meta)?;
    if meta.mode() & SHARED_BITS == 0 {
        return Ok(());
    }
    fs::set_permissions(path, Permissions::from_mode(PRIVATE_FILE_MODE))
        .map_err(io_error("chmod 600", path))
}

/// Makes the entries of `dir` (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<(), SecureFsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync directory", dir))
}

/// Creates a new file (never an existing one) with mode 0600 from its first moment.
pub fn create_private_file(path: &Path) -> Result<File, SecureFsError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
        .map_err(io_error("create", path))
}

#[cfg(test)]
mod tests {
    use super::super::write_private_file;
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn creates_nested_dirs_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&tmp.path().join("a")), 0o700);
    }

    #[test]
    fn tightens_an_existing_open_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("open");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
    }

    #[test]
    fn refuses_a_file_where_a_dir_should_be() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("file");
        fs::write(&path, b"x").unwrap();
        let err = create_private_dir(&path).unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
    }

    #[test]
    fn writes_atomically_with_mode_0600_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("secret");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        write_private_file(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode_of(&path), 0o600);
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn write_into_missing_dir_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("missing/secret");
        let err = write_private_file(&path, b"x").unwrap_err().to_string();
        assert!(err.contains("cannot create"), "{err}");
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn check_private_accepts_0600_and_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        create_private_dir(&dir).unwrap();
        let file = dir.join("f");
        write_private_file(&file, b"x").unwrap();
        check_private(&dir).unwrap();
        check_private(&file).unwrap();
    }

    #[test]
    fn check_private_names_path_mode_and_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("key");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        let err = check_private(&file).unwrap_err().to_string();
        let shown = file.display();
        assert_eq!(
            err,
            format!("{shown} is accessible by group or others (mode 0644); run chmod 600 {shown}")
        );

        fs::set_permissions(tmp.path(), Permissions::from_mode(0o750)).unwrap();
        let err = check_private(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("(mode 0750); run chmod 700"), "{err}");
    }

    #[test]
    fn a_folder_or_file_of_another_user_is_refused_even_when_private() {
        if effective_uid() != 0 {
            eprintln!("skipped: needs root to give a file away");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        create_private_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let err = create_private_dir(&dir).unwrap_err().to_string();
        let shown = dir.display();
        assert_eq!(
            err,
            format!(
                "{shown} is owned by uid 65534, not by this user (uid 0): its owner can \
                 rename, replace or delete the runner's private files. Give it to this user \
                 (chown -R 0 {shown}) or run the runner as its owner"
            )
        );
        assert!(check_private(&dir).is_err());
    }

    #[test]
    fn check_private_on_missing_path_is_an_io_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = check_private(&tmp.path().join("nope")).unwrap_err();
        assert!(matches!(err, SecureFsError::Io { op: "inspect", .. }));
    }
}
