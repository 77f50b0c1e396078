//! Files and folders that only the runner's user may read: the identity key and the
//! store. Writes are atomic (temp file, fsync, rename, fsync the folder) so a crash
//! leaves the old file or the new one, never a torn or half-private one.
//!
//! "Only the runner's user" is mode 0700/0600 on Unix ([`unix`]) and, on Windows, a
//! protected access list that lets in the runner's account, `SYSTEM` and the
//! Administrators group and nobody else ([`windows`], `crate::platform::acl`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

pub use imp::{
    check_private, create_private_dir, create_private_file, ensure_private_file, sync_dir,
};

pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum SecureFsError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is accessible by group or others (mode {mode:04o}); run chmod {fix:o} {path}")]
    TooOpen { path: PathBuf, mode: u32, fix: u32 },
    #[error("{path} exists but is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} is owned by uid {owner}, not by this user (uid {me}): its owner can rename, \
         replace or delete the runner's private files. Give it to this user (chown -R {me} \
         {path}) or run the runner as its owner"
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{path} is accessible by {grantees} (its access list lets them in); remove them, e.g. \
         icacls \"{path}\" /inheritance:r /remove:g {remove}"
    )]
    SharedAcl {
        path: PathBuf,
        /// The foreign trustees, as string SIDs, comma-separated.
        grantees: String,
        /// The same SIDs in icacls form (`*S-1-...`), space-separated.
        remove: String,
    },
}

pub(crate) fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SecureFsError {
    let path = path.to_path_buf();
    move |source| SecureFsError::Io { op, path, source }
}

/// Replaces `path` with `bytes` atomically, private. The parent must exist.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), SecureFsError> {
    let dir = parent_of(path);
    let temp = temp_path(&dir, path);
    let result = write_new_private(&temp, bytes).and_then(|()| {
        crate::platform::replace_file(&temp, path).map_err(io_error("rename into place", path))?;
        // The rename is only durable once the directory entry is on disk.
        sync_dir(&dir)
    });
    if result.is_err() {
        // Best effort: the error that matters is already in `result`.
        let _ = fs::remove_file(&temp);
    }
    result
}

/// The parent directory, or `.` for a bare file name.
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn write_new_private(temp: &Path, bytes: &[u8]) -> Result<(), SecureFsError> {
    use std::io::Write;
    // create_new: never follow or reuse a file someone else planted at this name.
    // The file is private from its creation, so the secret is never briefly readable.
    let mut file = create_private_file(temp)?;
    file.write_all(bytes).map_err(io_error("write", temp))?;
    file.sync_all().map_err(io_error("sync", temp))
}

/// Unique per process and per call, so concurrent writers never share a temp file.
fn temp_path(dir: &Path, target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()))
}
