//! The account jobs run as. A system install runs the runner as root and its jobs as an
//! unprivileged account of their own (as GitLab Runner's shell executor runs jobs as
//! `gitlab-runner`): `install` creates it when it does not exist, and a rolled-back
//! install removes it again. `uninstall` leaves it (files the jobs left elsewhere may
//! still belong to it) and says so.
//!
//! Through [`CommandRunner`], like every other system command, so the exact calls are
//! tested without touching the machine's accounts.

use std::ffi::OsString;
use std::path::Path;

use super::ServiceError;
use super::command::{CommandRunner, run_checked};

/// The account `install` creates for jobs unless told otherwise.
pub const DEFAULT_JOB_USER: &str = "fyn-runner-job";

/// Shells that refuse a login, the first one present is used.
const NO_LOGIN_SHELLS: [&str; 3] = ["/usr/sbin/nologin", "/sbin/nologin", "/bin/false"];

/// Create `name` as a system account with a group of its own, no home folder and no
/// login shell (Linux: `useradd`). On other systems the operator creates it.
pub fn create_job_account(runner: &dyn CommandRunner, name: &str) -> Result<(), ServiceError> {
    if !cfg!(target_os = "linux") {
        return Err(ServiceError::Environment(format!(
            "the job account {name:?} does not exist and install creates accounts on Linux \
             only: create it (macOS: sysadminctl -addUser {name} ...; then pass --job-user \
             {name}), or pass --job-user root to run jobs as root"
        )));
    }
    let shell = NO_LOGIN_SHELLS
        .iter()
        .find(|shell| Path::new(shell).exists())
        .copied()
        .unwrap_or("/bin/false");
    let args: Vec<OsString> = [
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        shell,
        "--comment",
        "fyn-runner jobs",
        name,
    ]
    .iter()
    .map(OsString::from)
    .collect();
    run_checked(runner, "useradd", &args).map(drop)
}

/// Remove an account [`create_job_account`] made (its own group goes with it).
pub fn remove_job_account(runner: &dyn CommandRunner, name: &str) -> Result<(), ServiceError> {
    run_checked(runner, "userdel", &[OsString::from(name)]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::RecordingRunner;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_job_account_is_a_system_account_without_login() {
        let runner = RecordingRunner::new();
        create_job_account(&runner, DEFAULT_JOB_USER).expect("created");
        remove_job_account(&runner, DEFAULT_JOB_USER).expect("removed");
        let lines = runner.lines();
        assert!(
            lines[0].starts_with(
                "useradd --system --user-group --no-create-home --home-dir /nonexistent --shell "
            ),
            "{lines:?}"
        );
        assert!(
            lines[0].ends_with(" --comment fyn-runner jobs fyn-runner-job"),
            "{lines:?}"
        );
        assert_eq!(lines[1], "userdel fyn-runner-job");
    }

    #[test]
    fn a_failure_names_the_command() {
        let runner = RecordingRunner::new();
        runner.respond(
            "userdel",
            8,
            "",
            "userdel: user fyn-runner-job is currently used",
        );
        let error = remove_job_account(&runner, DEFAULT_JOB_USER).expect_err("fails");
        assert!(
            error.to_string().contains("userdel fyn-runner-job"),
            "{error}"
        );
        assert!(error.to_string().contains("currently used"), "{error}");
    }
}
