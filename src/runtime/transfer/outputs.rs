//! Which files of `work/` a job's declared outputs name, read with the job account's
//! rights: a path names its file, a glob every regular file below `work/` it matches.
//! Confined to `work/`: a symbolic link is never followed (a declared path through or
//! to a link is refused; a glob's walk does not enter or match links), so no output
//! can be a file outside the job's folder.
//!
//! Must not: open the files (uploading them is `upload.rs`'s, which opens each one
//! again with the account's rights).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::platform::Account;
use crate::protocol::{OutputFile, OutputTarget, glob_matches, validate_file_path};
use crate::runtime::account_fs::with_account_access;

/// At most this many files are uploaded for one job; the rest of a glob's matches are
/// refused, named in one line.
pub const MAX_OUTPUT_FILES: usize = 10_000;
/// A glob's walk goes no deeper below `work/`.
const MAX_DEPTH: usize = 64;

/// One file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedUpload {
    /// Which declared output named it.
    pub output: usize,
    /// Below `work/`, `/`-separated.
    pub path: String,
    /// Where it goes (for a glob, its URL followed by the path).
    pub url: String,
}

/// A file a declared output names that will not be uploaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedOutput {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputPlan {
    pub uploads: Vec<PlannedUpload>,
    /// Declared outputs that name nothing: a path not there, a glob matching nothing.
    pub missing: Vec<String>,
    pub refused: Vec<RefusedOutput>,
}

/// The plan for `outputs` in `work` (blocking: walks the folder).
pub fn plan_outputs(
    work: &Path,
    outputs: &[OutputFile],
    account: Option<&Account>,
) -> io::Result<OutputPlan> {
    let (work, outputs) = (work.to_owned(), outputs.to_vec());
    with_account_access(account, move || Ok(plan(&work, &outputs)))
}

fn plan(work: &Path, outputs: &[OutputFile]) -> OutputPlan {
    let mut plan = OutputPlan::default();
    let mut all_files: Option<Vec<String>> = None;
    for (index, output) in outputs.iter().enumerate() {
        match output.target() {
            Some(OutputTarget::Path(path)) => match one_file(work, path) {
                Ok(true) => plan.uploads.push(PlannedUpload {
                    output: index,
                    path: path.to_owned(),
                    url: output.upload_url(path),
                }),
                Ok(false) => plan.missing.push(path.to_owned()),
                Err(reason) => plan.refused.push(RefusedOutput {
                    path: path.to_owned(),
                    reason,
                }),
            },
            Some(OutputTarget::Glob(glob)) => {
                let files = all_files.get_or_insert_with(|| regular_files(work));
                let matched: Vec<&String> = files
                    .iter()
                    .filter(|file| glob_matches(glob, file))
                    .collect();
                if matched.is_empty() {
                    plan.missing.push(glob.to_owned());
                }
                for file in matched {
                    plan.uploads.push(PlannedUpload {
                        output: index,
                        path: file.clone(),
                        url: output.upload_url(file),
                    });
                }
            }
            None => plan.refused.push(RefusedOutput {
                path: output.declared().to_owned(),
                reason: "names neither a path nor a glob".to_owned(),
            }),
        }
    }
    if plan.uploads.len() > MAX_OUTPUT_FILES {
        let over = plan.uploads.split_off(MAX_OUTPUT_FILES);
        plan.refused.push(RefusedOutput {
            path: over.first().map(|u| u.path.clone()).unwrap_or_default(),
            reason: format!(
                "this and {} more files are over the limit of {MAX_OUTPUT_FILES} per job",
                over.len() - 1
            ),
        });
    }
    plan
}

/// Whether the declared file is there: `Ok(false)` when not, an error when it is not
/// a plain file in plain folders below `work/`.
fn one_file(work: &Path, path: &str) -> Result<bool, String> {
    validate_file_path(path, false)?;
    let mut at = work.to_owned();
    let parts: Vec<&str> = path.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let meta = match fs::symlink_metadata(&at) {
            Ok(meta) => meta,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error.to_string()),
        };
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{} is a symbolic link; outputs never follow one",
                parts[..=i].join("/")
            ));
        }
        if last && !meta.is_file() {
            return Err("not a regular file".to_owned());
        }
        if !last && !meta.is_dir() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every regular file below `work`, as `/`-separated relative paths, sorted; links
/// neither entered nor listed, folders that cannot be read skipped.
fn regular_files(work: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending: Vec<(PathBuf, String, usize)> = vec![(work.to_owned(), String::new(), 0)];
    while let Some((dir, prefix, depth)) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                // Not UTF-8: no path of the protocol can name it.
                continue;
            };
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if kind.is_dir() && depth < MAX_DEPTH {
                pending.push((entry.path(), relative, depth + 1));
            } else if kind.is_file() {
                found.push(relative);
            }
        }
    }
    found.sort_unstable();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(path: Option<&str>, glob: Option<&str>, url: &str) -> OutputFile {
        OutputFile {
            path: path.map(str::to_owned),
            glob: glob.map(str::to_owned),
            url: url.to_owned(),
        }
    }

    #[test]
    fn paths_and_globs_name_regular_files_below_work_only() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let work = dir.path().join("work");
        fs::create_dir_all(work.join("results/sub"))?;
        fs::write(work.join("results/a.csv"), "a")?;
        fs::write(work.join("results/sub/b.csv"), "b")?;
        fs::write(work.join("log.txt"), "l")?;
        fs::write(dir.path().join("secret.csv"), "s")?;
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(
                dir.path().join("secret.csv"),
                work.join("results/link.csv"),
            )?;
            std::os::unix::fs::symlink(dir.path(), work.join("up"))?;
        }
        let outputs = [
            output(Some("log.txt"), None, "https://s/log"),
            output(None, Some("results/*.csv"), "https://s/r/"),
            output(None, Some("**/*.csv"), "https://s/all/"),
            output(Some("missing.txt"), None, "https://s/m"),
            output(None, Some("*.vtu"), "https://s/v/"),
            output(Some("results"), None, "https://s/d"),
        ];
        let plan = plan_outputs(&work, &outputs, None)?;
        let uploads: Vec<(usize, &str, &str)> = plan
            .uploads
            .iter()
            .map(|u| (u.output, u.path.as_str(), u.url.as_str()))
            .collect();
        assert_eq!(
            uploads,
            [
                (0, "log.txt", "https://s/log"),
                (1, "results/a.csv", "https://s/r/results/a.csv"),
                (2, "results/a.csv", "https://s/all/results/a.csv"),
                (2, "results/sub/b.csv", "https://s/all/results/sub/b.csv"),
            ]
        );
        assert_eq!(plan.missing, ["missing.txt", "*.vtu"]);
        assert_eq!(plan.refused.len(), 1, "{:?}", plan.refused);
        assert_eq!(plan.refused[0].path, "results");
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn a_declared_path_through_or_to_a_link_is_refused() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let work = dir.path().join("work");
        fs::create_dir(&work)?;
        fs::write(dir.path().join("secret"), "s")?;
        std::os::unix::fs::symlink(dir.path().join("secret"), work.join("out.txt"))?;
        std::os::unix::fs::symlink(dir.path(), work.join("up"))?;
        let outputs = [
            output(Some("out.txt"), None, "https://s/a"),
            output(Some("up/secret"), None, "https://s/b"),
        ];
        let plan = plan_outputs(&work, &outputs, None)?;
        assert!(plan.uploads.is_empty());
        let refused: Vec<&str> = plan.refused.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(refused, ["out.txt", "up/secret"]);
        assert!(
            plan.refused
                .iter()
                .all(|r| r.reason.contains("symbolic link"))
        );
        Ok(())
    }
}
