//! Unix: permissions are mode bits, privilege is euid 0, a folder is synced with fsync.

use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Access;

/// Creates `path` and its missing parents; the folders it creates get `access`
/// (narrowed by the umask, as `mkdir` does).
pub fn create_dir_all(path: &Path, access: Access) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(access.dir_mode())
        .create(path)
}

/// Options that create a file with `access` from its first moment (the mode is
/// applied by `open`, narrowed by the umask; [`set_access`] makes it exact).
pub fn open_options(access: Access) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(access.file_mode());
    options
}

/// After a file made with [`open_options`] was created: nothing left to do on Unix,
/// where `open` gave it its mode.
pub fn finish_new_file(_path: &Path, _access: Access) -> io::Result<()> {
    Ok(())
}

/// Sets exactly `access` on an existing file or folder, past the umask.
pub fn set_access(path: &Path, access: Access) -> io::Result<()> {
    let mode = if fs::metadata(path)?.is_dir() {
        access.dir_mode()
    } else {
        access.file_mode()
    };
    fs::set_permissions(path, Permissions::from_mode(mode))
}

/// Makes `open` fail on a symbolic link in the last component instead of following it.
pub fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    options.custom_flags(libc::O_NOFOLLOW)
}

/// Makes the entries of `dir` (creations, renames, removals) durable: fsync the folder.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` over `to` (atomically replacing it); callers sync the folder with
/// [`sync_dir`] to make the rename durable.
pub fn replace_file(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)
}

/// Whether this process runs as root (system paths, the system service).
pub fn is_privileged() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// This process's user ID (launchd's `gui/<uid>` domain, systemd's lingering);
/// Windows has none.
pub fn user_id() -> Option<u32> {
    // SAFETY: getuid has no preconditions and cannot fail.
    Some(unsafe { libc::getuid() })
}

/// A mounted filesystem and its space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    pub mount_point: PathBuf,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// The filesystem holding the existing path `path`, from `statvfs`; its mount point
/// is the topmost ancestor on the same device.
// The statvfs field types are u64 on 64-bit Linux but narrower elsewhere.
#[allow(clippy::useless_conversion)]
pub fn filesystem_of(path: &Path) -> io::Result<Filesystem> {
    let stats = statvfs(path)?;
    let block_size = u64::from(stats.f_frsize);
    Ok(Filesystem {
        mount_point: mount_point_of(path).to_path_buf(),
        total_bytes: u64::from(stats.f_blocks).saturating_mul(block_size),
        available_bytes: u64::from(stats.f_bavail).saturating_mul(block_size),
    })
}

/// Whether two existing paths lie on the same filesystem (the same device number).
pub fn same_filesystem(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// The topmost ancestor on the same device: the device number changes where a mount
/// starts.
pub fn mount_point_of(path: &Path) -> &Path {
    let device = |path: &Path| fs::metadata(path).map(|meta| meta.dev()).ok();
    let own = device(path);
    path.ancestors()
        .take_while(|ancestor| device(ancestor) == own)
        .last()
        .unwrap_or(path)
}

fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let mut stats = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and outlives the call; `stats` is
    // writable memory of the type statvfs(3) fills in.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised every field.
    Ok(unsafe { stats.assume_init() })
}
