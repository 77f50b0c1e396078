//! One check per setting, used wherever the setting enters: a flag, its environment
//! variable, the config file, `drain --deadline`, `service render`. Each check takes
//! the raw value in one of four shapes ([`Raw`]: a whole number, a string, a path, a
//! boolean) and returns the typed value or a message that says what is wrong with
//! it; the caller adds where the value came from (the flag, or the file's key and
//! line). Pure: nothing here reads the system.

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::Unexpected;
use url::Url;

use super::LogFormat;

use crate::protocol::RUNNER_PATH;

/// Ten years: a bound that catches a unit mistake (seconds given as hours).
pub const MAX_JOB_RETENTION_HOURS: u64 = 87_600;
/// The most ended jobs' folders `job_retention_max` may keep: the queue of them is in
/// memory (about 100 bytes each) and each is a folder in `jobs/`.
pub const MAX_JOB_RETENTION_COUNT: u64 = 1_000_000;

/// The longest drain deadline (30 days). Beyond it the service manager's stop timeout
/// (the deadline plus a margin) stops meaning anything and some managers overflow.
pub const MAX_DRAIN_DEADLINE_SECS: u64 = 30 * 24 * 3600;

/// The smallest trace file before it rotates. Smaller, nearly every event would start
/// a new file, and with `trace_keep` files kept the first one — the only one a replay
/// can start from — would be gone within a few events.
pub const MIN_TRACE_MAX_BYTES: u64 = 1024;

/// A raw value as it comes in: from the command line or an environment variable (text),
/// or from the config file (a TOML value of some type).
pub trait Raw: Sized {
    /// What a value of the wrong type is told it should have been.
    const EXPECTING: &'static str;
    fn from_arg(text: &OsStr) -> Result<Self, String>;
    fn from_toml(value: &toml::de::DeValue<'_>) -> Result<Self, String>;
}

/// The message serde gives a value of the wrong type, which the config file always
/// gave: `invalid type: string "two", expected a whole number`.
fn wrong_type(value: &toml::de::DeValue<'_>, expecting: &str) -> String {
    use toml::de::DeValue;
    let unexpected = match value {
        DeValue::String(s) => Unexpected::Str(s.as_ref()),
        DeValue::Integer(_) => Unexpected::Other("integer"),
        DeValue::Float(_) => Unexpected::Other("floating point"),
        DeValue::Boolean(b) => Unexpected::Bool(*b),
        DeValue::Datetime(_) => Unexpected::Other("datetime"),
        DeValue::Array(_) => Unexpected::Seq,
        DeValue::Table(_) => Unexpected::Map,
    };
    format!("invalid type: {unexpected}, expected {expecting}")
}

fn arg_text(text: &OsStr) -> Result<&str, String> {
    text.to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", text.to_string_lossy()))
}

/// TOML integers are signed 64-bit, so every number is read as one: a negative number
/// then gets a plain message instead of "expected u64", on the command line as in the
/// file.
impl Raw for i64 {
    const EXPECTING: &'static str = "a whole number";

    fn from_arg(text: &OsStr) -> Result<Self, String> {
        let text = arg_text(text)?.trim();
        text.parse::<i64>().map_err(|e| match e.kind() {
            std::num::IntErrorKind::PosOverflow => format!("too large: {text}"),
            std::num::IntErrorKind::NegOverflow => format!("must not be negative, got {text}"),
            _ => format!("expected a whole number, got {text:?}"),
        })
    }

    fn from_toml(value: &toml::de::DeValue<'_>) -> Result<Self, String> {
        let toml::de::DeValue::Integer(integer) = value else {
            return Err(wrong_type(value, Self::EXPECTING));
        };
        i64::from_str_radix(integer.as_str(), integer.radix())
            .map_err(|_| format!("too large: {integer}"))
    }
}

impl Raw for String {
    const EXPECTING: &'static str = "a string";

    fn from_arg(text: &OsStr) -> Result<Self, String> {
        arg_text(text).map(str::to_owned)
    }

    fn from_toml(value: &toml::de::DeValue<'_>) -> Result<Self, String> {
        match value {
            toml::de::DeValue::String(s) => Ok(s.to_string()),
            other => Err(wrong_type(other, Self::EXPECTING)),
        }
    }
}

/// A path on the command line may be any bytes the OS allows; in the file, TOML text.
impl Raw for PathBuf {
    const EXPECTING: &'static str = "a path (a string)";

    fn from_arg(text: &OsStr) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }

    fn from_toml(value: &toml::de::DeValue<'_>) -> Result<Self, String> {
        String::from_toml(value)
            .map(PathBuf::from)
            .map_err(|_| wrong_type(value, Self::EXPECTING))
    }
}

impl Raw for bool {
    const EXPECTING: &'static str = "a boolean";

    fn from_arg(text: &OsStr) -> Result<Self, String> {
        match arg_text(text)? {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!("expected true or false, got {other:?}")),
        }
    }

    fn from_toml(value: &toml::de::DeValue<'_>) -> Result<Self, String> {
        match value {
            toml::de::DeValue::Boolean(b) => Ok(*b),
            other => Err(wrong_type(other, Self::EXPECTING)),
        }
    }
}

/// A setting's check as clap's value parser, so a flag and its environment variable
/// are refused with the same words as the file.
pub struct Checked<R, T> {
    check: fn(R) -> Result<T, String>,
    _raw: PhantomData<fn(R)>,
}

impl<R, T> Clone for Checked<R, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R, T> Copy for Checked<R, T> {}

/// clap's value parser for a setting whose check is `check`.
pub fn arg_parser<R: Raw, T>(check: fn(R) -> Result<T, String>) -> Checked<R, T> {
    Checked {
        check,
        _raw: PhantomData,
    }
}

impl<R, T> Checked<R, T>
where
    R: Raw,
{
    /// Check one text value, as a flag or an environment variable gives it.
    pub fn parse(&self, text: &OsStr) -> Result<T, String> {
        R::from_arg(text).and_then(self.check)
    }

    /// Check one value of the config file.
    pub fn parse_toml(&self, value: &toml::de::DeValue<'_>) -> Result<T, String> {
        R::from_toml(value).and_then(self.check)
    }
}

impl<R, T> clap::builder::TypedValueParser for Checked<R, T>
where
    R: Raw + 'static,
    T: Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        self.parse(value).map_err(|message| {
            let arg = arg.map_or_else(|| "...".to_owned(), ToString::to_string);
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "invalid value '{}' for '{arg}': {message}\n",
                    value.to_string_lossy()
                ),
            )
            .with_cmd(cmd)
        })
    }
}

// ---------------------------------------------------------------- the checks

fn ranged(value: i64, min: i64, max: u64) -> Result<u64, String> {
    if value < 0 && min >= 0 {
        return Err(format!("must not be negative, got {value}"));
    }
    let in_range = value >= min && u64::try_from(value).is_ok_and(|v| v <= max);
    if !in_range {
        return Err(format!("must be between {min} and {max}, got {value}"));
    }
    u64::try_from(value).map_err(|_| format!("out of range: {value}"))
}

const ANY: u64 = i64::MAX as u64;

/// `slots`: 1 to 1024 jobs at once.
pub fn slots(value: i64) -> Result<u32, String> {
    let slots = ranged(value, 1, 1024)?;
    u32::try_from(slots).map_err(|_| format!("out of range: {slots}"))
}

/// `drain_deadline` (and `drain --deadline`): 0 to [`MAX_DRAIN_DEADLINE_SECS`] seconds.
pub fn drain_deadline(value: i64) -> Result<u64, String> {
    ranged(value, 0, MAX_DRAIN_DEADLINE_SECS)
}

/// `hardware_recheck`: at least one second.
pub fn hardware_recheck(value: i64) -> Result<u64, String> {
    ranged(value, 1, ANY)
}

/// `job_retention_hours`: 0 to [`MAX_JOB_RETENTION_HOURS`].
pub fn job_retention_hours(value: i64) -> Result<u64, String> {
    ranged(value, 0, MAX_JOB_RETENTION_HOURS)
}

/// `job_retention_max`: 0 to [`MAX_JOB_RETENTION_COUNT`] folders.
pub fn job_retention_max(value: i64) -> Result<u64, String> {
    ranged(value, 0, MAX_JOB_RETENTION_COUNT)
}

/// `trace_max_bytes`: at least [`MIN_TRACE_MAX_BYTES`].
pub fn trace_max_bytes(value: i64) -> Result<u64, String> {
    ranged(value, MIN_TRACE_MAX_BYTES as i64, ANY)
}

/// A size in bytes (`input_cache_max_bytes`): any that is not negative.
pub fn byte_count(value: i64) -> Result<u64, String> {
    ranged(value, 0, ANY)
}

/// `trace_keep`: 1 to 1000 files.
pub fn trace_keep(value: i64) -> Result<u64, String> {
    ranged(value, 1, 1000)
}

/// `hook_timeout`: 1 second to an hour.
pub fn hook_timeout(value: i64) -> Result<u64, String> {
    ranged(value, 1, 3600)
}

/// A string that says something: `name`.
pub fn non_empty(value: String) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(value)
}

/// A path: `state_dir`, `jobs_dir`, `ca_file`.
pub fn path(value: PathBuf) -> Result<PathBuf, String> {
    if value.as_os_str().is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(value)
}

/// A user account: `job_user`. The name is looked up when the runner starts; here
/// only its shape is checked (what `useradd` and the system's user database accept).
pub fn user_name(value: String) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 32
        && !value.starts_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(value)
    } else {
        Err(format!(
            "{value:?} is not a user name (letters, digits, '_', '-' and '.', at most 32, not \
             starting with '-')"
        ))
    }
}

/// `server`: its syntax and scheme. Whether plain `ws://` may go to this host depends on
/// `allow_insecure_transport` as well, which [`endpoint`] decides once both are known.
pub fn server(value: String) -> Result<String, String> {
    endpoint(&value, true).map_err(|e| e.to_string())?;
    Ok(value)
}

/// `metrics_listen`: an IP address and a port (`127.0.0.1:9464`, `[::1]:0`). Whether
/// an address off loopback may be used depends on `metrics_allow_remote` as well,
/// which [`listen_address_allowed`] decides once both are known.
pub fn listen_address(value: String) -> Result<String, String> {
    value
        .trim()
        .parse::<std::net::SocketAddr>()
        .map(|addr| addr.to_string())
        .map_err(|_| format!("expected IP:PORT such as 127.0.0.1:9464, got {value:?}"))
}

/// The metrics listener's address, refusing one off loopback unless the operator opted
/// in, as plain `ws://` is refused off loopback ([`endpoint`]).
pub fn listen_address_allowed(
    value: &str,
    allow_remote: bool,
) -> Result<std::net::SocketAddr, SettingsError> {
    let addr = listen_address(value.to_owned())
        .and_then(|text| {
            text.parse::<std::net::SocketAddr>()
                .map_err(|e| e.to_string())
        })
        .map_err(|reason| SettingsError::BadListen {
            value: value.to_owned(),
            reason,
        })?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(SettingsError::RemoteMetrics { addr });
    }
    Ok(addr)
}

/// A boolean: the switches.
pub fn boolean(value: bool) -> Result<bool, String> {
    Ok(value)
}

/// `log_format`: the names clap's `--log-format` takes, from the same definition.
pub fn log_format(value: String) -> Result<LogFormat, String> {
    <LogFormat as clap::ValueEnum>::from_str(&value, false)
        .map_err(|_| format!("unknown variant `{value}`, expected `text` or `json`"))
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--server {url:?} is not a valid URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--server must use wss:// (or ws://), not {0}://")]
    BadScheme(String),
    #[error(
        "refusing plain ws:// to {host}, which is not a loopback address: tokens and job \
         output would cross the network unencrypted. Use wss://, or pass \
         --allow-insecure-transport if this network is trusted"
    )]
    InsecureTransport { host: String },
    #[error("--metrics-listen {value:?}: {reason}")]
    BadListen { value: String, reason: String },
    #[error(
        "refusing to serve metrics on {addr}, which is not a loopback address: anyone who \
         reaches it sees the runner's state unauthenticated. Use 127.0.0.1:PORT, or pass \
         --metrics-allow-remote if that network may see it"
    )]
    RemoteMetrics { addr: std::net::SocketAddr },
}

/// Turn `server` into the runner endpoint, refusing plain text off loopback unless the
/// operator opted in. `run`, `--print-config`, `install` and `uninstall` all call this.
pub fn endpoint(server: &str, allow_insecure: bool) -> Result<Url, SettingsError> {
    let mut url = Url::parse(server).map_err(|e| SettingsError::BadUrl {
        url: server.to_owned(),
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "wss" => {}
        "ws" => {
            let host = url.host_str().unwrap_or_default().to_owned();
            if !is_loopback(&host) && !allow_insecure {
                return Err(SettingsError::InsecureTransport { host });
            }
        }
        other => return Err(SettingsError::BadScheme(other.to_owned())),
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(RUNNER_PATH);
    }
    Ok(url)
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

// ---------------------------------------------------------------- durations

/// Whole hours as a duration, saturating (hours are bounded anyway).
pub fn hours(value: u64) -> Duration {
    Duration::from_secs(value.saturating_mul(3600))
}

/// Seconds as milliseconds, saturating.
pub fn secs_to_ms(value: u64) -> u64 {
    value.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_only_to_loopback() {
        assert!(endpoint("ws://127.0.0.1:7480", false).is_ok());
        assert!(endpoint("ws://[::1]:7480", false).is_ok());
        assert!(endpoint("ws://localhost:7480", false).is_ok());
        let refused = endpoint("ws://10.0.0.5:7480", false).expect_err("must refuse");
        assert!(refused.to_string().contains("--allow-insecure-transport"));
        assert!(endpoint("ws://10.0.0.5:7480", true).is_ok());
        assert!(endpoint("wss://api.example.com", false).is_ok());
        assert!(matches!(
            endpoint("http://x", false),
            Err(SettingsError::BadScheme(_))
        ));
        assert!(matches!(
            endpoint("not a url", false),
            Err(SettingsError::BadUrl { .. })
        ));
    }

    #[test]
    fn the_runner_path_is_added_to_a_bare_server() {
        let url = endpoint("wss://api.example.com", false).expect("valid");
        assert_eq!(url.as_str(), "wss://api.example.com/runner/v1");
        let url = endpoint("wss://api.example.com/custom/path", false).expect("valid");
        assert_eq!(url.path(), "/custom/path");
    }

    #[test]
    fn a_flag_gets_the_same_words_as_the_file() {
        let parser = arg_parser(drain_deadline);
        let flag = parser.parse(OsStr::new("18446744073709551615"));
        assert_eq!(flag, Err("too large: 18446744073709551615".to_owned()));
        let flag = parser.parse(OsStr::new("-5"));
        assert_eq!(flag, Err("must not be negative, got -5".to_owned()));
        let flag = parser.parse(OsStr::new("9999999999"));
        assert_eq!(
            flag,
            Err(format!(
                "must be between 0 and {MAX_DRAIN_DEADLINE_SECS}, got 9999999999"
            ))
        );
        assert_eq!(parser.parse(OsStr::new("600")), Ok(600));
    }

    #[test]
    fn a_huge_retention_saturates_instead_of_overflowing() {
        assert_eq!(hours(u64::MAX), Duration::from_secs(u64::MAX));
    }

    #[test]
    fn trace_files_too_small_to_replay_are_refused() {
        assert!(trace_max_bytes(0).is_err());
        assert!(trace_max_bytes(1023).is_err());
        assert_eq!(trace_max_bytes(1024), Ok(1024));
    }

    #[test]
    fn user_names_are_checked_for_shape() {
        assert!(user_name("fyn-runner-job".into()).is_ok());
        for bad in ["", "-x", "a b", "a:b", "a/b", &"x".repeat(33)] {
            assert!(user_name(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
