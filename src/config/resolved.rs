//! From settings to what the runner starts with: reading the config file (and refusing
//! one that someone else could have written), where things are by default, and the
//! checks that need more than one setting or the system (the endpoint with
//! `allow_insecure_transport`, the job user and its jobs folder, the host name).

use std::io;
use std::path::{Path, PathBuf};

use url::Url;

use super::value::{SettingsError, endpoint};
use super::{ConfigError, FileConfig, RunSettings, Secret, dirs, raw};
use crate::platform::{self, Account, ForeignWrite};

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

/// Where job folders live when `jobs_dir` is not set: inside the state folder, or —
/// when jobs run as another user, who must not enter the private state folder —
/// beside it, `<state_dir>-jobs`.
pub fn default_jobs_dir(state_dir: &Path, separate_job_user: bool) -> PathBuf {
    if !separate_job_user {
        return state_dir.join("jobs");
    }
    let mut name = state_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "fyn-runner".into());
    name.push("-jobs");
    state_dir.with_file_name(name)
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
/// A file that someone other than this user or root could have changed is refused.
pub fn load(path: &Path) -> Result<Option<FileConfig>, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    match platform::foreign_write_access(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_error(source)),
        Ok(Some(foreign)) => return Err(untrusted(path, foreign)),
        Ok(None) => {}
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_error(source)),
    };
    raw::parse(&text, path).map(Some)
}

fn untrusted(path: &Path, foreign: ForeignWrite) -> ConfigError {
    let path = path.to_owned();
    match foreign {
        ForeignWrite::Mode { mode } => ConfigError::WritableByOthers { path, mode },
        ForeignWrite::Owner { owner, me } => ConfigError::ForeignOwner { path, owner, me },
        ForeignWrite::Folder { folder, mode } => {
            ConfigError::FolderWritableByOthers { path, folder, mode }
        }
    }
}

/// Like [`load`], but a missing file is an error: for `--config PATH`.
pub fn load_required(path: &Path) -> Result<FileConfig, ConfigError> {
    load(path)?.ok_or_else(|| ConfigError::NotFound {
        path: path.to_owned(),
    })
}

/// The file a command reads: the one named (`--config`, which must exist), else the
/// default location for this user (which may be absent).
pub fn load_chosen(explicit: Option<&Path>) -> Result<Option<FileConfig>, ConfigError> {
    match explicit {
        Some(path) => load_required(path).map(Some),
        None => load(&default_config_path(platform::is_privileged())),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no control plane given: pass --server, set FYN_RUNNER_SERVER, or put `server` in the \
         config file"
    )]
    NoServer,
    #[error(transparent)]
    Endpoint(#[from] SettingsError),
    #[error(
        "job_user {name:?} does not exist; create it (e.g. useradd --system --user-group \
         --no-create-home --shell /usr/sbin/nologin {name}) or remove job_user"
    )]
    NoSuchUser { name: String },
    #[error("cannot look up job_user {name:?}: {source}")]
    LookUp {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "job_user {name:?}: jobs can only run as another account when the runner runs as \
         root (it runs as uid {me}); run it as root, or remove job_user"
    )]
    NotRoot { name: String, me: u32 },
    #[error(
        "jobs_dir {} is inside the state folder {}, which the job user {user:?} cannot \
         enter (and must not: it holds the runner's key); put it beside it, e.g. {}",
        jobs_dir.display(),
        state_dir.display(),
        suggestion.display()
    )]
    JobsDirInState {
        jobs_dir: PathBuf,
        state_dir: PathBuf,
        user: String,
        suggestion: PathBuf,
    },
}

/// The settings as `run` uses them, resolved against the system.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The merged settings, as `--print-config` shows them (with the state folder).
    pub settings: RunSettings,
    pub endpoint: Url,
    pub state_dir: PathBuf,
    pub jobs_dir: PathBuf,
    /// The account jobs run as, when it is not the runner's own.
    pub job_account: Option<Account>,
    /// `name`, else the host name.
    pub name: String,
    pub token: Option<Secret>,
}

/// The checks that need more than one setting, without needing the server: what
/// `--print-config` holds the settings to, and `run` too (through [`resolve`]).
pub fn check(settings: &RunSettings) -> Result<(), ResolveError> {
    if let Some(server) = &settings.server {
        endpoint(server, settings.allow_insecure_transport)?;
    }
    metrics_listen(settings)?;
    let state_dir = state_dir_of(settings);
    job_account(settings, &state_dir).map(drop)
}

/// The metrics listener's address, when one is set (refused off loopback unless
/// allowed).
pub fn metrics_listen(
    settings: &RunSettings,
) -> Result<Option<std::net::SocketAddr>, ResolveError> {
    settings
        .metrics_listen
        .as_deref()
        .map(|addr| super::value::listen_address_allowed(addr, settings.metrics_allow_remote))
        .transpose()
        .map_err(ResolveError::Endpoint)
}

/// Everything `run` starts with: the endpoint (refusing plain `ws://` off loopback
/// unless allowed), the folders, the job account, the name, the token.
pub fn resolve(settings: RunSettings, token: Option<Secret>) -> Result<Resolved, ResolveError> {
    let server = settings.server.as_deref().ok_or(ResolveError::NoServer)?;
    let endpoint = endpoint(server, settings.allow_insecure_transport)?;
    metrics_listen(&settings)?;
    let state_dir = state_dir_of(&settings);
    let (job_account, jobs_dir) = job_account(&settings, &state_dir)?;
    let name = match &settings.name {
        Some(name) => name.clone(),
        None => sysinfo::System::host_name().unwrap_or_else(|_| "fyn-runner".to_owned()),
    };
    Ok(Resolved {
        settings: RunSettings {
            state_dir: Some(state_dir.clone()),
            ..settings
        },
        endpoint,
        state_dir,
        jobs_dir,
        job_account,
        name,
        token,
    })
}

fn state_dir_of(settings: &RunSettings) -> PathBuf {
    settings
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(platform::is_privileged()))
}

/// The account jobs run as (when not the runner's own) and the folder they run in.
fn job_account(
    settings: &RunSettings,
    state_dir: &Path,
) -> Result<(Option<Account>, PathBuf), ResolveError> {
    let account = match &settings.job_user {
        None => None,
        Some(name) => {
            let account = platform::lookup_account(name)
                .map_err(|source| ResolveError::LookUp {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| ResolveError::NoSuchUser { name: name.clone() })?;
            let me = platform::effective_user_id();
            if account.uid == me {
                // The runner's own account (root included): nothing to switch.
                None
            } else if me != 0 {
                return Err(ResolveError::NotRoot {
                    name: name.clone(),
                    me,
                });
            } else {
                Some(account)
            }
        }
    };
    let separate = account.is_some();
    let jobs_dir = settings
        .jobs_dir
        .clone()
        .unwrap_or_else(|| default_jobs_dir(state_dir, separate));
    if let Some(account) = &account
        && jobs_dir.starts_with(state_dir)
    {
        return Err(ResolveError::JobsDirInState {
            jobs_dir,
            state_dir: state_dir.to_owned(),
            user: account.name.clone(),
            suggestion: default_jobs_dir(state_dir, true),
        });
    }
    Ok((account, jobs_dir))
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
    fn jobs_of_another_user_live_beside_the_state_folder() {
        let state = Path::new("/var/lib/fyn-runner");
        assert_eq!(
            default_jobs_dir(state, false),
            Path::new("/var/lib/fyn-runner/jobs")
        );
        assert_eq!(
            default_jobs_dir(state, true),
            Path::new("/var/lib/fyn-runner-jobs")
        );
    }

    #[test]
    fn print_config_and_run_refuse_the_same_plain_endpoint() {
        let settings = RunSettings {
            server: Some("ws://10.1.2.3:7480".into()),
            state_dir: Some(std::env::temp_dir()),
            ..RunSettings::default()
        };
        let checked = check(&settings).expect_err("refused").to_string();
        let resolved = resolve(settings, None).expect_err("refused").to_string();
        assert_eq!(checked, resolved);
        assert!(checked.contains("--allow-insecure-transport"), "{checked}");
    }
}
