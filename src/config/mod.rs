/*!
The run settings and the config file: each setting defined once (`settings.rs`), as a
flag, an environment variable, a key of the TOML file, a default and a check, and the
resolution of the merged settings into what the runner starts with.

Owns: the settings' table and checks (`settings`, `value`, made into types by
`define`); parsing the file's text with errors that name the key, the file and the
line (`raw`, pure); reading the file, refusing one others could have written, the
default locations, the precedence flags > `FYN_RUNNER_*` > file > defaults, reading the
one-time token from a file or standard input, and resolving paths, host name and the
endpoint (`resolved`, which may ask the system); writing a commented file for `install`
and `--print-config` (`render`).

Must not: import `core` or the runtime (the runtime turns [`Resolved`] into its own
settings), nor hold the one-time registration token in the file: it is not
configuration and is never written to disk.
*/

#[macro_use]
mod define;
pub mod dirs;
mod keys;
mod merge;
mod raw;
mod render;
mod resolved;
mod secret;
mod settings;
pub mod value;

use std::io;
use std::path::PathBuf;

pub use keys::KeyDoc;
pub use merge::{apply_file, given_explicitly};
pub use raw::parse;
pub use render::render;
pub use resolved::{
    ResolveError, Resolved, check, default_config_path, default_jobs_dir, default_state_dir, load,
    load_chosen, load_required, metrics_listen, resolve, user_config_path,
};
pub use secret::{Secret, TokenError, TokenSource, read_token};
pub use settings::{FileConfig, GlobalSettings, KEYS, RunSettings};
pub use value::{MAX_DRAIN_DEADLINE_SECS, MAX_JOB_RETENTION_HOURS, SettingsError, endpoint};

/// The system-wide file, read by the system service.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/fyn-runner/config.toml";

/// The `log_format` values, which `--log-format` takes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the config file {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("{}:{line}:{column}: not valid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}:{line}:{column}: key `{key}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "{}:{line}: key `token` is refused: the one-time registration token is not \
         configuration and is never written to disk (it is used once, to register). Remove \
         the line and pass the token with --token-file, `--token -` (standard input), \
         --token or FYN_RUNNER_TOKEN",
        path.display()
    )]
    TokenInFile { path: PathBuf, line: usize },
    #[error("key `{key}`: {} is not valid UTF-8 and cannot be written to a TOML file", path.display())]
    NotUtf8 { key: &'static str, path: PathBuf },
    #[error(
        "refusing the config file {}: it is writable by group or others (mode {mode:04o}), \
         and whoever can write it can point the runner at their own control plane. Run \
         chmod go-w {}",
        path.display(),
        path.display()
    )]
    WritableByOthers { path: PathBuf, mode: u32 },
    #[error(
        "refusing the config file {}: it is owned by uid {owner}, which is neither root nor \
         this user (uid {me}), and its owner can change it. Run chown {me} {}",
        path.display(),
        path.display()
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "refusing the config file {}: its folder {} is writable by others (mode {mode:04o}) \
         without the sticky bit, so anyone can replace the file. Move the file, or run \
         chmod o-w {}",
        path.display(),
        folder.display(),
        folder.display()
    )]
    FolderWritableByOthers {
        path: PathBuf,
        folder: PathBuf,
        mode: u32,
    },
}
