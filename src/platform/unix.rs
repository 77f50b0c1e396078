//! Unix: permissions are mode bits, privilege is euid 0, a folder is synced with fsync.

use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Access, Account, ForeignWrite};

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

/// This process's effective user ID: who owns what it creates, and whom its private
/// files must belong to.
pub fn effective_user_id() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What could let someone other than this user or root change the file at `path`
/// (as sshd's StrictModes asks of the files it trusts): group or others may write it,
/// another user owns it, or its folder is writable by others without the sticky bit.
pub fn foreign_write_access(path: &Path) -> io::Result<Option<ForeignWrite>> {
    let meta = fs::metadata(path)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Ok(Some(ForeignWrite::Mode { mode }));
    }
    let me = effective_user_id();
    if meta.uid() != me && meta.uid() != 0 {
        return Ok(Some(ForeignWrite::Owner {
            owner: meta.uid(),
            me,
        }));
    }
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let folder_mode = fs::metadata(&folder)?.mode() & 0o7777;
    if folder_mode & 0o002 != 0 && folder_mode & 0o1000 == 0 {
        return Ok(Some(ForeignWrite::Folder {
            folder,
            mode: folder_mode,
        }));
    }
    Ok(None)
}

/// The account called `name`, with its groups, or `None` when there is none.
pub fn lookup_account(name: &str) -> io::Result<Option<Account>> {
    let c_name =
        CString::new(name).map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut entry = MaybeUninit::<libc::passwd>::uninit();
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the NUL-terminated name, the entry
    // to fill, the buffer (with its true length) its strings go to, and `found`.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            entry.as_mut_ptr(),
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Ok(None);
    }
    // SAFETY: getpwnam_r returned 0 with a non-null result, so it filled the entry.
    let entry = unsafe { entry.assume_init() };
    Ok(Some(Account {
        name: name.to_owned(),
        uid: entry.pw_uid,
        gid: entry.pw_gid,
        groups: groups_of(&c_name, entry.pw_gid)?,
    }))
}

/// Every group `name` belongs to (`getgrouplist`), its primary group `gid` included.
fn groups_of(name: &CString, gid: libc::gid_t) -> io::Result<Vec<u32>> {
    let mut count: libc::c_int = 32;
    for _ in 0..8 {
        let mut groups = vec![0 as libc::gid_t; usize::try_from(count).unwrap_or(32)];
        let asked = count;
        // SAFETY: `groups` has room for `count` entries, and getgrouplist writes at
        // most that many, setting `count` to how many there are.
        #[cfg(not(target_os = "macos"))]
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        // macOS declares the groups as `int`.
        #[cfg(target_os = "macos")]
        let rc = unsafe {
            libc::getgrouplist(
                name.as_ptr(),
                gid as libc::c_int,
                groups.as_mut_ptr().cast(),
                &mut count,
            )
        };
        if rc >= 0 {
            groups.truncate(usize::try_from(count).unwrap_or(0));
            return Ok(groups);
        }
        // Too small: `count` now says how many there are (glibc), or try twice as many.
        count = count.max(asked.saturating_mul(2));
    }
    Err(io::Error::other("the account's group list keeps growing"))
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

/// The scheduler's time slice asked for by `prefer_short_slices`: the shortest Linux
/// takes.
#[cfg(target_os = "linux")]
const SHORT_SLICE_NS: u64 = 100_000;

/// Ask the scheduler for short time slices for the calling thread (Linux 6.12 and
/// later; older kernels take the request and keep their default). The runner's loop
/// works in bursts of well under a millisecond, and a thread with a shorter slice than
/// the one running may preempt it on waking, where otherwise it waits out the running
/// task's slice (up to a few milliseconds): on a machine whose cores all run jobs, that
/// wait falls on every heartbeat, command and job start. Threads and processes started
/// afterwards do not inherit it (`SCHED_FLAG_RESET_ON_FORK`): jobs keep the default.
pub fn prefer_short_slices() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        /// `struct sched_attr` as far as its first version goes (48 bytes).
        #[repr(C)]
        #[derive(Default)]
        struct SchedAttr {
            size: u32,
            policy: u32,
            flags: u64,
            nice: i32,
            priority: u32,
            runtime: u64,
            deadline: u64,
            period: u64,
        }
        const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;
        let size = std::mem::size_of::<SchedAttr>() as u32;
        let mut attr = SchedAttr::default();
        // SAFETY: sched_getattr writes at most `size` bytes into `attr`, which is that
        // large and laid out as the kernel's first version of the struct.
        let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &raw mut attr, size, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if attr.policy != libc::SCHED_OTHER as u32 {
            // Someone chose another policy for the runner; leave it be.
            return Ok(());
        }
        attr.size = size;
        attr.runtime = SHORT_SLICE_NS;
        attr.flags |= SCHED_FLAG_RESET_ON_FORK;
        // SAFETY: sched_setattr reads `attr`, filled in by sched_getattr above (so the
        // thread's nice value is kept).
        let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod slice_tests {
    use super::*;

    /// `se.slice` of a `/proc/.../sched` text, in nanoseconds.
    fn slice_in(text: &str) -> Option<u64> {
        text.lines()
            .find(|line| line.starts_with("se.slice"))?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }

    fn own_slice() -> Option<u64> {
        slice_in(&fs::read_to_string("/proc/thread-self/sched").ok()?)
    }

    #[test]
    fn the_loop_asks_for_short_slices_and_what_it_starts_does_not_inherit_them() {
        std::thread::spawn(|| {
            let before = own_slice();
            prefer_short_slices().expect("sched_setattr");
            let Some(after) = own_slice() else {
                eprintln!("this kernel shows no se.slice; nothing to check");
                return;
            };
            if before == Some(after) && after != SHORT_SLICE_NS {
                eprintln!("this kernel (before 6.12) keeps its default slice; nothing to check");
                return;
            }
            assert_eq!(after, SHORT_SLICE_NS);
            let thread = std::thread::spawn(own_slice).join().expect("thread");
            assert_ne!(
                thread,
                Some(SHORT_SLICE_NS),
                "a thread it starts inherits it"
            );
            let child = std::process::Command::new("cat")
                .arg("/proc/self/sched")
                .output()
                .expect("cat runs");
            let child = slice_in(&String::from_utf8_lossy(&child.stdout));
            assert_ne!(
                child,
                Some(SHORT_SLICE_NS),
                "a process it starts inherits it"
            );
        })
        .join()
        .expect("the test's thread");
    }
}
