//! Windows: permissions are ACLs ([`super::acl`]), privilege is an elevated token, a
//! rename is made durable by the rename itself (write-through), free space comes
//! from `GetDiskFreeSpaceExW`.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr;

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::Security::{
    GetTokenInformation, TOKEN_ELEVATION, TOKEN_QUERY, TokenElevation,
};
use windows_sys::Win32::Storage::FileSystem::{
    FILE_FLAG_OPEN_REPARSE_POINT, GetDiskFreeSpaceExW, GetVolumePathNameW,
    MOVEFILE_REPLACE_EXISTING, MOVEFILE_WRITE_THROUGH, MoveFileExW,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

use super::{Access, Account, ForeignWrite};

/// `text` as a NUL-terminated UTF-16 string for the Win32 API.
pub(crate) fn wide(text: &OsStr) -> Vec<u16> {
    text.encode_wide().chain(std::iter::once(0)).collect()
}

/// Creates `path` and its missing parents; each folder it creates gets the protected
/// ACL for `access` (what the Unix mode is there), so nothing of a more open parent
/// (such as `%ProgramData%`, where Users may create files) is inherited.
pub fn create_dir_all(path: &Path, access: Access) -> io::Result<()> {
    let missing: Vec<PathBuf> = path
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .map(Path::to_path_buf)
        .collect();
    fs::create_dir_all(path)?;
    // Outermost first, so each inner folder is created under its final parent ACL.
    for dir in missing.iter().rev() {
        super::acl::apply(dir, access)?;
    }
    Ok(())
}

/// Options for a new file. Windows has no mode bits: the file inherits the entries
/// of its folder, which [`create_dir_all`] or [`set_access`] made what `access`
/// stands for; call [`set_access`] on the file where it must differ from its folder.
pub fn open_options(_access: Access) -> OpenOptions {
    OpenOptions::new()
}

/// After a file made with [`open_options`] was created: give it the ACL for `access`
/// where that differs from what its folder passes on.
pub fn finish_new_file(path: &Path, access: Access) -> io::Result<()> {
    super::acl::apply(path, access)
}

/// Replaces the ACL of an existing file or folder with the protected one for `access`.
pub fn set_access(path: &Path, access: Access) -> io::Result<()> {
    super::acl::apply(path, access)
}

/// Opens a symbolic link (a reparse point) in the last component as itself instead
/// of following it to its target.
pub fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
}

/// Windows cannot fsync a folder. NTFS records changes to folders in its journal, and
/// the renames that must be durable go through [`replace_file`], which writes
/// through; so there is nothing left to flush here.
pub fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Renames `from` over `to`, replacing it. `MOVEFILE_WRITE_THROUGH` makes a move across
/// volumes wait for the disk; for a rename within one volume Windows documents no such
/// wait (NTFS journals it), so after a power cut the old file may come back.
pub fn replace_file(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (wide(from.as_os_str()), wide(to.as_os_str()));
    // SAFETY: both names are NUL-terminated and live across the call.
    let ok = unsafe {
        MoveFileExW(
            from.as_ptr(),
            to.as_ptr(),
            MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH,
        )
    };
    if ok == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether this process runs elevated (as an Administrator past UAC): what a system
/// install, the `%ProgramData%` paths and the Windows service need.
pub fn is_privileged() -> bool {
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: the pseudo-handle of this process is always valid.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return false;
    }
    let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
    let mut needed = 0u32;
    // SAFETY: `elevation` is writable memory of the size given.
    let ok = unsafe {
        GetTokenInformation(
            token,
            TokenElevation,
            ptr::addr_of_mut!(elevation).cast(),
            u32::try_from(std::mem::size_of::<TOKEN_ELEVATION>()).unwrap_or(0),
            &mut needed,
        )
    };
    // SAFETY: `token` was opened above and is closed once.
    unsafe { CloseHandle(token) };
    ok != 0 && elevation.TokenIsElevated != 0
}

/// Windows has no numeric user IDs (accounts are SIDs; see [`super::acl`]).
pub fn user_id() -> Option<u32> {
    None
}

/// A volume and its space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    pub mount_point: PathBuf,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// The volume holding the existing path `path`: its mount point (`C:\`, or the folder
/// a volume is mounted on) from `GetVolumePathNameW`, its space from
/// `GetDiskFreeSpaceExW` (available: what this account may use, after quotas).
pub fn filesystem_of(path: &Path) -> io::Result<Filesystem> {
    let mount_point = volume_path(path)?;
    let name = wide(mount_point.as_os_str());
    let (mut available, mut total, mut free) = (0u64, 0u64, 0u64);
    // SAFETY: `name` is NUL-terminated; the three outputs are writable u64s.
    if unsafe { GetDiskFreeSpaceExW(name.as_ptr(), &mut available, &mut total, &mut free) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Filesystem {
        mount_point: without_verbatim_prefix(&mount_point),
        total_bytes: total,
        available_bytes: available,
    })
}

/// Whether two existing paths lie on the same volume.
pub fn same_filesystem(a: &Path, b: &Path) -> bool {
    match (volume_path(a), volume_path(b)) {
        (Ok(a), Ok(b)) => without_verbatim_prefix(&a)
            .as_os_str()
            .eq_ignore_ascii_case(without_verbatim_prefix(&b).as_os_str()),
        _ => false,
    }
}

fn volume_path(path: &Path) -> io::Result<PathBuf> {
    let name = wide(path.as_os_str());
    // A relative path, or one through a mounted folder, can name a volume path longer
    // than itself: leave room for a full MAX_PATH beyond it.
    let mut buffer = vec![0u16; name.len() + 260 + 2];
    let capacity = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
    // SAFETY: `name` is NUL-terminated; `buffer` is writable for `capacity` units.
    if unsafe { GetVolumePathNameW(name.as_ptr(), buffer.as_mut_ptr(), capacity) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let len = buffer
        .iter()
        .position(|&unit| unit == 0)
        .unwrap_or(buffer.len());
    Ok(PathBuf::from(String::from_utf16_lossy(&buffer[..len])))
}

/// `\\?\C:\x` as `C:\x` (canonical paths on Windows carry the verbatim prefix, which
/// operators do not write).
pub fn without_verbatim_prefix(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    match text.strip_prefix(r"\\?\") {
        Some(rest) if rest.as_bytes().get(1) == Some(&b':') => PathBuf::from(rest),
        _ => path.to_path_buf(),
    }
}

/// Windows has no user IDs; the runner's files are kept private by their ACLs.
pub fn effective_user_id() -> u32 {
    0
}

/// Not checked on Windows: the config file's ACL is the installer's (see
/// docs/operations.md, "Known limits").
pub fn foreign_write_access(_path: &Path) -> io::Result<Option<ForeignWrite>> {
    Ok(None)
}

/// Jobs run as the service's account on Windows: another account would need its
/// password stored with the runner.
pub fn lookup_account(_name: &str) -> io::Result<Option<Account>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "job_user is not supported on Windows",
    ))
}

/// Unix: shorter scheduler slices for the runner's loop. Windows' scheduler boosts a
/// thread that wakes from a wait already; nothing to ask for.
pub fn prefer_short_slices() -> io::Result<()> {
    Ok(())
}
