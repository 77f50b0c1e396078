//! What the runtime needs to know to run, resolved and checked before anything starts.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::core::CoreConfig;
use crate::protocol::RUNNER_PATH;

/// A secret that never prints: `Debug` and `Display` show a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
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
}

/// Where hardware reports come from: the machine itself, or (tests, demos of the
/// change path) a function that stands in for it.
#[derive(Clone)]
pub enum HardwareSource {
    System,
    Custom(HardwareProbe),
}

/// A stand-in for the machine's hardware: the job area in, a report out.
pub type HardwareProbe = std::sync::Arc<
    dyn Fn(&std::path::Path) -> Result<crate::hardware::HardwareReport, String> + Send + Sync,
>;

impl HardwareSource {
    pub fn collect(
        &self,
        job_area: &std::path::Path,
    ) -> Result<crate::hardware::HardwareReport, String> {
        match self {
            Self::System => crate::hardware::collect(job_area).map_err(|e| e.to_string()),
            Self::Custom(probe) => probe(job_area),
        }
    }
}

impl fmt::Debug for HardwareSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::System => "System",
            Self::Custom(_) => "Custom",
        })
    }
}

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// The runner endpoint, e.g. `wss://api.example.com/runner/v1`.
    pub endpoint: Url,
    pub state_dir: PathBuf,
    /// One-time registration token; only used when there is no identity yet.
    pub token: Option<Secret>,
    pub name: String,
    /// PEM file of the CA to trust instead of the public web roots.
    pub ca_file: Option<PathBuf>,
    pub core: CoreConfig,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub hardware: HardwareSource,
    /// Record the session trace under `<state_dir>/traces`; `None` turns it off.
    pub trace: Option<TraceLimits>,
    /// How long an ended job's folder (its logs and `work/`) is kept.
    pub job_retention: Duration,
    /// The service manager's notification socket (`NOTIFY_SOCKET` under systemd).
    pub notify_socket: Option<String>,
}

/// Ended jobs' folders are kept a week unless the operator says otherwise.
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Size-based rotation of the trace files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceLimits {
    /// A file passing this many bytes is closed and the trace goes on in the next.
    pub max_bytes: u64,
    /// Trace files kept in the folder, the current one included.
    pub keep: usize,
}

impl Default for TraceLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            keep: 8,
        }
    }
}

impl RunnerSettings {
    /// Where job directories live (and whose disk is reported as the job area).
    pub fn jobs_root(&self) -> PathBuf {
        self.state_dir.join("jobs")
    }

    /// Defaults an operator would expect: one slot, backoff from 0.5 s to 60 s, a
    /// 15 s connect timeout, the machine's own hardware, the trace on, no token.
    pub fn new(endpoint: Url, state_dir: PathBuf) -> Self {
        Self {
            endpoint,
            state_dir,
            token: None,
            name: "fyn-runner".to_owned(),
            ca_file: None,
            core: CoreConfig::default(),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(15),
            hardware: HardwareSource::System,
            trace: Some(TraceLimits::default()),
            job_retention: DEFAULT_JOB_RETENTION,
            notify_socket: None,
        }
    }
}

/// Turn `--server` into the runner endpoint, refusing plain text off loopback unless the
/// operator opted in.
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
    fn secrets_do_not_print() {
        let s = Secret::new("tok-123");
        assert!(!format!("{s:?}").contains("tok-123"));
    }
}
