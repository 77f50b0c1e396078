/*!
The few operating-system calls that differ between Unix and Windows, each behind one
function with the same meaning on both. Callers never write `cfg(unix)` themselves.

Owns: file permissions (Unix mode bits; Windows ACLs), who could change a file the
runner trusts, whether this process is privileged (root; an elevated Administrator),
the accounts jobs run as, durable renames, free disk space.

Must not: import `core`, the runtime or the service managers. Larger platform splits
that carry logic of their own (job process trees, the control endpoint, signals, the
Windows service) live beside their callers, under the same rule.
*/

#[cfg(any(windows, test))]
pub mod acl;
#[cfg(unix)]
#[path = "unix.rs"]
mod imp;
#[cfg(windows)]
#[path = "windows.rs"]
mod imp;

pub use imp::*;

/// Who may use a file or folder the runner creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only the runner's own account (Unix 0700/0600; Windows: the owner, SYSTEM and
    /// Administrators, nothing inherited).
    Private,
    /// Readable by everyone, writable by the owner (Unix 0755/0644; Windows: the
    /// owner, SYSTEM and Administrators in full, Users read).
    Readable,
    /// Readable by the owner's group as well (Unix 0640). On Windows, where groups do
    /// not map, the same as [`Access::Private`].
    GroupReadable,
}

impl Access {
    /// The Unix mode of a folder with this access.
    pub fn dir_mode(self) -> u32 {
        match self {
            Self::Private => 0o700,
            Self::Readable => 0o755,
            Self::GroupReadable => 0o750,
        }
    }

    /// The Unix mode of a file with this access.
    pub fn file_mode(self) -> u32 {
        match self {
            Self::Private => 0o600,
            Self::Readable => 0o644,
            Self::GroupReadable => 0o640,
        }
    }
}

/// Why a file the runner trusts (its config) could have been changed by someone other
/// than its user or root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForeignWrite {
    /// The group or others may write it.
    Mode { mode: u32 },
    /// It belongs to another user, who can change it at will.
    Owner { owner: u32, me: u32 },
    /// Its folder lets others replace it (writable by others, no sticky bit).
    Folder {
        folder: std::path::PathBuf,
        mode: u32,
    },
}

impl std::fmt::Display for ForeignWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mode { mode } => write!(f, "it is writable by group or others (mode {mode:04o})"),
            Self::Owner { owner, me } => write!(
                f,
                "it is owned by uid {owner}, neither root nor this user (uid {me})"
            ),
            Self::Folder { folder, mode } => write!(
                f,
                "its folder {} is writable by others (mode {mode:04o}) without the sticky bit",
                folder.display()
            ),
        }
    }
}

/// A user account jobs can run as: what `setgroups`, `setgid` and `setuid` need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Every group the account belongs to, its primary group included.
    pub groups: Vec<u32>,
}
