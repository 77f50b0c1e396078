/*!
The config file: one TOML file holding the `run` settings, so a service can start the
runner with `run --config <file>` instead of a long command line.

Owns: the file's format and locations, parsing with errors that name the key, the file
and the line, the precedence rule (flags > environment > file > defaults) and writing a
commented file for `install`.

Must not: probe the system beyond reading the one file it is given (no host name, no
network, no hardware), nor hold the one-time registration token, which is not
configuration and is never written to disk.
*/

pub mod dirs;
mod keys;
mod merge;
mod render;

use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

pub use keys::{KEYS, KeyDoc};
pub use merge::{apply_file, given_explicitly};
pub use render::render;

/// The system-wide file, read by the system service.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/fyn-runner/config.toml";

/// Ten years: a bound that catches a unit mistake (seconds given as hours).
pub const MAX_JOB_RETENTION_HOURS: u64 = 87_600;

/// Every `run` setting, each optional: a key left out falls back to the environment
/// or the built-in default. Relative paths are taken relative to the file's folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default, deserialize_with = "server")]
    pub server: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "slots")]
    pub slots: Option<u32>,
    #[serde(default, deserialize_with = "path")]
    pub state_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "path")]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_insecure_transport: Option<bool>,
    #[serde(default, deserialize_with = "non_negative")]
    pub drain_deadline: Option<u64>,
    #[serde(default, deserialize_with = "positive")]
    pub hardware_recheck: Option<u64>,
    #[serde(default, deserialize_with = "job_retention_hours")]
    pub job_retention_hours: Option<u64>,
    #[serde(default, deserialize_with = "non_negative")]
    pub trace_max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "trace_keep")]
    pub trace_keep: Option<u64>,
    #[serde(default)]
    pub no_trace: Option<bool>,
    #[serde(default)]
    pub log_format: Option<LogFormat>,
}

/// The `log_format` values; the CLI maps them onto its own `--log-format` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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
         the line and pass the token with --token or FYN_RUNNER_TOKEN",
        path.display()
    )]
    TokenInFile { path: PathBuf, line: usize },
    #[error("key `{key}`: {} is not valid UTF-8 and cannot be written to a TOML file", path.display())]
    NotUtf8 { key: &'static str, path: PathBuf },
}

/// Where the config file lives: `/etc/fyn-runner/config.toml` for the system service,
/// `$XDG_CONFIG_HOME/fyn-runner/config.toml` (or `~/.config/...`) for a user's; on
/// Windows `%ProgramData%\fyn-runner\config.toml` and
/// `%LOCALAPPDATA%\fyn-runner\config.toml` (see [`dirs`]).
pub fn default_config_path(system: bool) -> PathBuf {
    dirs::default_config_path(system)
}

/// Where the state lives when nothing says: `/var/lib/fyn-runner` for the system
/// service, `$XDG_STATE_HOME/fyn-runner` (or `~/.local/state/...`) for a user's; on
/// Windows `%ProgramData%\fyn-runner\state` and `%LOCALAPPDATA%\fyn-runner\state`.
pub fn default_state_dir(system: bool) -> PathBuf {
    dirs::default_state_dir(system)
}

/// The user location from the two variables it depends on (split out to test it).
pub fn user_config_path(xdg_config_home: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    // The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    let base = xdg_config_home
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("fyn-runner").join("config.toml")
}

/// Read and check the file. A missing file is `Ok(None)`: the default location is
/// optional. (A path the operator named explicitly should use [`load_required`].)
pub fn load(path: &Path) -> Result<Option<FileConfig>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse(&text, path).map(Some)
}

/// Like [`load`], but a missing file is an error: for `--config PATH`.
pub fn load_required(path: &Path) -> Result<FileConfig, ConfigError> {
    load(path)?.ok_or_else(|| ConfigError::NotFound {
        path: path.to_owned(),
    })
}

/// Parse the text of the file at `path` (used for messages and relative paths).
pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    // Parse to a spanned table first: it gives syntax errors their place, lets the
    // token be refused with its own reason, and maps serde errors back to their key.
    let table = toml::de::DeTable::parse(text).map_err(|e| syntax_error(text, path, &e))?;
    if let Some((key, _)) = table.get_ref().get_key_value("token") {
        let (line, _) = line_column(text, key.span().start);
        return Err(ConfigError::TokenInFile {
            path: path.to_owned(),
            line,
        });
    }
    let mut config: FileConfig =
        toml::from_str(text).map_err(|e| value_error(text, path, table.get_ref(), &e))?;
    if let Some(folder) = path.parent() {
        config.resolve_relative_paths(folder);
    }
    Ok(config)
}

impl FileConfig {
    /// A service runs with `/` as its working folder, so a relative path in the file
    /// can only sensibly mean "next to this file".
    fn resolve_relative_paths(&mut self, folder: &Path) {
        for path in [&mut self.state_dir, &mut self.ca_file]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        }
    }
}

fn syntax_error(text: &str, path: &Path, error: &toml::de::Error) -> ConfigError {
    let (line, column) = error
        .span()
        .map_or((1, 1), |span| line_column(text, span.start));
    ConfigError::Syntax {
        path: path.to_owned(),
        line,
        column,
        message: error.message().trim().to_owned(),
    }
}

/// Name the key a deserialisation error is about: the top-level entry whose key or
/// value holds the error's span.
fn value_error(
    text: &str,
    path: &Path,
    table: &toml::de::DeTable<'_>,
    error: &toml::de::Error,
) -> ConfigError {
    let Some(span) = error.span() else {
        return syntax_error(text, path, error);
    };
    let key = table.iter().find_map(|(key, value)| {
        let covers = key.span().start <= span.start && span.start < value.span().end;
        covers.then(|| key.get_ref().to_string())
    });
    let (line, column) = line_column(text, span.start);
    match key {
        Some(key) => ConfigError::Invalid {
            path: path.to_owned(),
            key,
            line,
            column,
            message: error.message().trim().to_owned(),
        },
        None => syntax_error(text, path, error),
    }
}

/// 1-based line and column of a byte offset (columns count characters).
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

// Field checks. TOML integers are i64, so reading them as i64 first lets a negative
// number get a plain message instead of "expected u64". The ranges are the CLI's.

fn ranged<'de, D: Deserializer<'de>>(d: D, min: i64, max: i64) -> Result<u64, D::Error> {
    let value = d.deserialize_i64(Integer)?;
    if value < 0 && min >= 0 {
        return Err(D::Error::custom(format!(
            "must not be negative, got {value}"
        )));
    }
    if value < min || value > max {
        return Err(D::Error::custom(format!(
            "must be between {min} and {max}, got {value}"
        )));
    }
    u64::try_from(value).map_err(|_| D::Error::custom(format!("out of range: {value}")))
}

/// Reads a TOML integer; its `expecting` is what a wrong type's message says.
struct Integer;

impl serde::de::Visitor<'_> for Integer {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<i64, E> {
        Ok(value)
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<i64, E> {
        i64::try_from(value).map_err(|_| E::custom(format!("too large: {value}")))
    }
}

fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    ranged(d, 0, i64::MAX).map(Some)
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    ranged(d, 1, i64::MAX).map(Some)
}

fn slots<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let value = ranged(d, 1, 1024)?;
    u32::try_from(value)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("out of range: {value}")))
}

fn job_retention_hours<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    ranged(d, 0, MAX_JOB_RETENTION_HOURS as i64).map(Some)
}

fn trace_keep<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    ranged(d, 1, 1000).map(Some)
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = String::deserialize(d)?;
    if value.trim().is_empty() {
        return Err(D::Error::custom("must not be empty"));
    }
    Ok(Some(value))
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    non_empty(d).map(|p| p.map(PathBuf::from))
}

/// The URL's syntax and scheme are checked here so the message points into the file;
/// whether plain `ws://` is allowed depends on the merged settings and is left to the
/// runtime's own check.
fn server<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = String::deserialize(d)?;
    crate::runtime::settings::endpoint(&value, true).map_err(D::Error::custom)?;
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    // XDG paths: Unix semantics ("/x" is not absolute on Windows).
    #[cfg(unix)]
    #[test]
    fn user_path_prefers_an_absolute_xdg_config_home() {
        let home = Some(PathBuf::from("/home/ada"));
        assert_eq!(
            user_config_path(Some("/x/cfg".into()), home.clone()),
            PathBuf::from("/x/cfg/fyn-runner/config.toml")
        );
        assert_eq!(
            user_config_path(Some("relative".into()), home.clone()),
            PathBuf::from("/home/ada/.config/fyn-runner/config.toml")
        );
        assert_eq!(
            user_config_path(None, home),
            PathBuf::from("/home/ada/.config/fyn-runner/config.toml")
        );
        assert_eq!(
            default_config_path(true),
            PathBuf::from("/etc/fyn-runner/config.toml")
        );
    }

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, text.find('=').unwrap_or(0)), (1, 3));
        assert_eq!(line_column(text, 10), (2, 4));
    }

    #[test]
    fn relative_paths_are_taken_next_to_the_file() {
        let config = parse(
            "state_dir = \"state\"\nca_file = \"/abs/ca.pem\"\n",
            Path::new("/etc/fyn-runner/config.toml"),
        )
        .expect("valid");
        assert_eq!(
            config.state_dir,
            Some(PathBuf::from("/etc/fyn-runner/state"))
        );
        assert_eq!(config.ca_file, Some(PathBuf::from("/abs/ca.pem")));
    }
}
