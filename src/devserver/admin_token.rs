//! The admin API's credential: one bearer token per server, minted at start or read
//! from a file the operator names, and written where `fyn-runner ctl` finds it: a
//! file only its user can read (0600), in a folder only its user can enter (0700).
//!
//! Owns: the token's format, its default location, reading and writing it safely.
//! Must not: log the token (only where it is).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::platform::{self, Access};

use super::util::random_hex;

/// The folder (under the user's runtime or state folder) the default token files go in.
const DEFAULT_FOLDER: &str = "fyn-runner-dev-server";
/// A token shorter than this is too easy to guess, one longer is not a token.
const MIN_LEN: usize = 16;
const MAX_LEN: usize = 256;

/// The admin API's bearer token. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("no randomness to mint it: {0}")]
    Random(getrandom::Error),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} {why}")]
    Unsafe { path: PathBuf, why: String },
    #[error("{path} does not hold a token: {why}")]
    Malformed { path: PathBuf, why: &'static str },
    #[error(
        "there is no default place for it (neither XDG_RUNTIME_DIR, XDG_STATE_HOME nor HOME is set); pass --admin-token-file"
    )]
    NoDefaultLocation,
}

impl AdminToken {
    /// A fresh token: 32 random bytes as hex.
    pub fn mint() -> Result<Self, AdminTokenError> {
        random_hex(32).map(Self).map_err(AdminTokenError::Random)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, comparing in constant time so the answer's
    /// timing does not tell how much of a guess was right.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// A token from text (a file's content, an environment variable): trimmed, and of
    /// characters that fit an HTTP header.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let token = text.trim();
        if token.len() < MIN_LEN {
            return Err("it is shorter than 16 characters");
        }
        if token.len() > MAX_LEN {
            return Err("it is longer than 256 characters");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("it holds characters other than printable ASCII");
        }
        Ok(Self(token.to_owned()))
    }

    /// Read the token in `path`. The file must be private to this user (on Unix: owned
    /// by it, no access for group or others), or anyone who could read or plant it
    /// would hold the admin API.
    pub fn read(path: &Path) -> Result<Self, AdminTokenError> {
        check_private_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| AdminTokenError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|why| AdminTokenError::Malformed {
            path: path.to_owned(),
            why,
        })
    }

    /// The token in `path` if the file exists; otherwise a fresh one, written there.
    /// Returns the token and whether it was minted.
    pub fn read_or_mint(path: &Path) -> Result<(Self, bool), AdminTokenError> {
        if path.exists() {
            return Ok((Self::read(path)?, false));
        }
        let token = Self::mint()?;
        token.write(path)?;
        Ok((token, true))
    }

    /// Write the token to `path`, 0600, creating its folder 0700. Atomic: a reader sees
    /// the old file or the new one, never half of it.
    pub fn write(&self, path: &Path) -> Result<(), AdminTokenError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| AdminTokenError::Io { op, path, source }
        };
        let folder = path
            .parent()
            .filter(|f| !f.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        platform::create_dir_all(folder, Access::Private).map_err(io("create", folder))?;
        check_folder(folder)?;
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}.tmp", std::process::id()));
        let temp = PathBuf::from(name);
        let _ = std::fs::remove_file(&temp);
        let mut options = platform::open_options(Access::Private);
        options.write(true).create_new(true);
        let mut file = options.open(&temp).map_err(io("create", &temp))?;
        platform::finish_new_file(&temp, Access::Private).map_err(io("secure", &temp))?;
        let written = file
            .write_all(format!("{}\n", self.0).as_bytes())
            .and_then(|()| file.sync_all());
        drop(file);
        let moved = written.and_then(|()| platform::replace_file(&temp, path));
        if let Err(source) = moved {
            let _ = std::fs::remove_file(&temp);
            return Err(AdminTokenError::Io {
                op: "write",
                path: path.to_owned(),
                source,
            });
        }
        Ok(())
    }
}

/// Where the dev-server listening on `port` writes its token when not told otherwise,
/// and where `fyn-runner ctl` looks for it: `admin-token-PORT` in
/// `$XDG_RUNTIME_DIR/fyn-runner-dev-server/` (a private, per-login folder), else
/// under `$XDG_STATE_HOME` or `~/.local/state`; on Windows under `%LOCALAPPDATA%`.
pub fn default_token_path(port: u16) -> Result<PathBuf, AdminTokenError> {
    let base = default_base().ok_or(AdminTokenError::NoDefaultLocation)?;
    Ok(base
        .join(DEFAULT_FOLDER)
        .join(format!("admin-token-{port}")))
}

#[cfg(unix)]
fn default_base() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_RUNTIME_DIR")
        .or_else(|| var("XDG_STATE_HOME"))
        .or_else(|| var("HOME").map(|home| home.join(".local/state")))
}

#[cfg(windows)]
fn default_base() -> Option<PathBuf> {
    std::env::var_os("LOCALAPPDATA")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A token file: a regular file of this user's, unreadable to anyone else.
#[cfg(unix)]
fn check_private_file(path: &Path) -> Result<(), AdminTokenError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(path).map_err(|source| AdminTokenError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    let unsafe_because = |why: String| {
        Err(AdminTokenError::Unsafe {
            path: path.to_owned(),
            why,
        })
    };
    if !meta.file_type().is_file() {
        return unsafe_because("is not a regular file".to_owned());
    }
    if Some(meta.uid()) != platform::user_id() {
        return unsafe_because(format!(
            "belongs to user {}, not to this one; only a token file of your own is trusted",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return unsafe_because(format!(
            "is readable or writable by others (mode {mode:04o}); run `chmod 600` on it"
        ));
    }
    Ok(())
}

#[cfg(windows)]
fn check_private_file(_path: &Path) -> Result<(), AdminTokenError> {
    // The file is created with a private ACL; reading an operator's file trusts it.
    Ok(())
}

/// The token's folder: nobody else may replace files in it (a sticky folder such as
/// /tmp is fine: others cannot touch this user's files there).
#[cfg(unix)]
fn check_folder(folder: &Path) -> Result<(), AdminTokenError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(folder).map_err(|source| AdminTokenError::Io {
        op: "inspect",
        path: folder.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(AdminTokenError::Unsafe {
            path: folder.to_owned(),
            why: format!(
                "is writable by others (mode {:04o}), who could replace the token file; use a private folder",
                mode & 0o777
            ),
        });
    }
    Ok(())
}

#[cfg(windows)]
fn check_folder(_folder: &Path) -> Result<(), AdminTokenError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() -> Result<(), AdminTokenError> {
        let token = AdminToken::mint()?;
        assert_eq!(token.as_str().len(), 64);
        assert!(token.matches(token.as_str()));
        assert!(!token.matches(&token.as_str()[..63]));
        assert!(!token.matches(""));
        assert!(!token.matches(&token.as_str().replace(|_| true, "0")));
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
        Ok(())
    }

    #[test]
    fn parsing_trims_and_refuses_what_is_not_a_token() {
        assert!(AdminToken::parse("  0123456789abcdef\n").is_ok());
        assert!(AdminToken::parse("short").is_err());
        assert!(AdminToken::parse("0123456789 abcdef").is_err());
        assert!(AdminToken::parse(&"x".repeat(300)).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn written_private_and_read_back() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub").join("token");
        let (token, minted) = AdminToken::read_or_mint(&path)?;
        assert!(minted);
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(&path)?, 0o600);
        assert_eq!(mode(&dir.path().join("sub"))?, 0o700);
        let (again, minted) = AdminToken::read_or_mint(&path)?;
        assert!(!minted);
        assert_eq!(again, token);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let error = AdminToken::read(&path).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("mode 0644")));
        Ok(())
    }
}
