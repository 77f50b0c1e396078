//! Unix: what a job starts from: its base environment and its program, found in its
//! `PATH`. The job's processes themselves are its supervisor's (`supervised/`): a
//! process group of their own, and on Linux every descendant, which the supervisor, a
//! child subreaper, keeps track of.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::runtime::jobs::ExecutorError;

/// The `PATH` a job gets when the runner itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// [`DEFAULT_PATH`], as the executor takes it.
pub fn default_path() -> OsString {
    DEFAULT_PATH.into()
}

/// The locale a job gets unless it declares its own: UTF-8 without local surprises.
const DEFAULT_LOCALE: &str = "C.UTF-8";

/// The variables every job starts from, before its own: `PATH`, its folder as
/// `HOME`, a UTF-8 locale.
pub fn base_environment(job_dir: &Path, path: &OsString) -> Vec<(OsString, OsString)> {
    vec![
        ("PATH".into(), path.clone()),
        ("HOME".into(), job_dir.as_os_str().to_owned()),
        ("LANG".into(), DEFAULT_LOCALE.into()),
        ("LC_ALL".into(), DEFAULT_LOCALE.into()),
    ]
}

/// The job's program, found as `execvp` would find it: a name without `/` is looked up
/// in the job's `PATH` (an empty or relative entry taken from the directory the job
/// starts in), first executable file wins; `argv[0]` stays as the job wrote it. Doing
/// the lookup in the runner rather than in the job's process says at once, with a
/// clear error, that a program is missing, and lets the job's supervisor start it with
/// the path it was given.
pub fn program_path(
    program: &str,
    path: &OsStr,
    start_dir: &Path,
) -> Result<PathBuf, ExecutorError> {
    resolve_program(program, path, start_dir)
}

fn resolve_program(
    program: &str,
    path: &OsStr,
    start_dir: &Path,
) -> Result<PathBuf, ExecutorError> {
    if program.contains('/') {
        // Relative to where the job starts, as the child would see it after its chdir.
        return Ok(start_dir.join(program));
    }
    let not_found = || ExecutorError::Spawn {
        program: program.to_owned(),
        source: io::Error::new(io::ErrorKind::NotFound, "not found in the job's PATH"),
    };
    if program.is_empty() || program.contains('\0') {
        return Err(not_found());
    }
    std::env::split_paths(path)
        .map(|dir| start_dir.join(dir).join(program))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(not_found)
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
