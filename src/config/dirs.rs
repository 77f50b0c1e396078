//! The default locations of the config file and the state directory, by platform.
//! Only environment variables are read; nothing is created.

use std::path::PathBuf;

pub use imp::{default_config_path, default_state_dir};

#[cfg(unix)]
mod imp {
    use std::path::PathBuf;

    use super::super::{SYSTEM_CONFIG_PATH, user_config_path};

    pub fn default_config_path(system: bool) -> PathBuf {
        if system {
            return PathBuf::from(SYSTEM_CONFIG_PATH);
        }
        user_config_path(
            std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
            std::env::var_os("HOME").map(PathBuf::from),
        )
    }

    pub fn default_state_dir(system: bool) -> PathBuf {
        if system {
            return PathBuf::from("/var/lib/fyn-runner");
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state"))
            })
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("fyn-runner")
    }
}

#[cfg(windows)]
mod imp {
    use std::path::PathBuf;

    use super::windows_base;

    pub fn default_config_path(system: bool) -> PathBuf {
        windows_base(
            system,
            std::env::var_os("ProgramData").map(PathBuf::from),
            std::env::var_os("LOCALAPPDATA").map(PathBuf::from),
        )
        .join("config.toml")
    }

    pub fn default_state_dir(system: bool) -> PathBuf {
        windows_base(
            system,
            std::env::var_os("ProgramData").map(PathBuf::from),
            std::env::var_os("LOCALAPPDATA").map(PathBuf::from),
        )
        .join("state")
    }
}

/// The runner's folder on Windows: `%ProgramData%\fyn-runner` for the machine (the
/// service), `%LOCALAPPDATA%\fyn-runner` for one user. Split out to test it anywhere.
#[cfg_attr(not(windows), allow(dead_code))]
pub fn windows_base(
    system: bool,
    program_data: Option<PathBuf>,
    local_app_data: Option<PathBuf>,
) -> PathBuf {
    let base = if system {
        program_data
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
    } else {
        local_app_data
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from("."))
    };
    base.join("fyn-runner")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_base_prefers_the_variables_and_falls_back() {
        let data = std::env::temp_dir().join("pd");
        let local = std::env::temp_dir().join("lad");
        assert_eq!(
            windows_base(true, Some(data.clone()), None),
            data.join("fyn-runner")
        );
        assert_eq!(
            windows_base(true, Some("relative".into()), None),
            PathBuf::from(r"C:\ProgramData").join("fyn-runner")
        );
        assert_eq!(
            windows_base(false, Some(data), Some(local.clone())),
            local.join("fyn-runner")
        );
        assert_eq!(
            windows_base(false, None, None),
            PathBuf::from(".").join("fyn-runner")
        );
    }
}
