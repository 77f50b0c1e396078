//! The install steps the lifecycle machine asks for in Installing, and their rollback.
//! Everything an install creates is written down as it is created, so a failure at
//! any step — registration included — removes exactly that, in reverse order, and
//! nothing the operator had before.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::core::InstallStep;
use crate::platform::Access;

/// The OS service part of an install, behind a seam so the runtime does not depend on
/// a particular service manager (and tests need none).
pub trait ServiceStep: Send {
    /// Write, enable and start the service; returns what was done, for the operator.
    fn install(&mut self) -> Result<String, String>;
    /// Stop and remove what `install` did.
    fn remove(&mut self) -> Result<(), String>;
}

/// What `fyn-runner install` asks for beyond a normal start.
pub struct InstallPlan {
    pub config_path: PathBuf,
    /// The config file's text (it never holds the token).
    pub config_text: String,
    /// `None` with `--no-service`.
    pub service: Option<Box<dyn ServiceStep>>,
    /// Where job folders live (beside the state folder for a job account); `None`:
    /// `<state_dir>/jobs`.
    pub jobs_dir: Option<PathBuf>,
    /// The outermost folder of `jobs_dir` missing before the runner started (which
    /// makes it), so a rollback removes it.
    pub created_jobs_dir: Option<PathBuf>,
}

enum Created {
    Dir(PathBuf),
    File(PathBuf),
    Service,
}

pub(crate) struct Installer {
    plan: InstallPlan,
    state_dir: PathBuf,
    created: Vec<Created>,
}

impl Installer {
    /// `created_root`: the outermost folder the runtime created for the state
    /// directory before the machine started (it needs its store there), if any.
    pub(crate) fn new(plan: InstallPlan, state_dir: &Path, created_root: Option<&Path>) -> Self {
        // A jobs folder inside a new state folder goes with it.
        let jobs_dir = plan
            .created_jobs_dir
            .clone()
            .filter(|jobs| created_root.is_none_or(|root| !jobs.starts_with(root)));
        let created = created_root
            .map(Path::to_path_buf)
            .into_iter()
            .chain(jobs_dir)
            .map(Created::Dir)
            .collect();
        Self {
            plan,
            state_dir: state_dir.to_path_buf(),
            created,
        }
    }

    /// Perform one step; the message says what was done.
    pub(crate) fn run(&mut self, step: InstallStep) -> Result<String, String> {
        match step {
            InstallStep::CreateDirectories => self.create_directories(),
            InstallStep::WriteConfig => self.write_config(),
            InstallStep::InstallService => match self.plan.service.as_mut() {
                None => Ok("no service installed (--no-service)".to_owned()),
                Some(service) => {
                    let done = service.install()?;
                    self.created.push(Created::Service);
                    Ok(done)
                }
            },
        }
    }

    fn create_directories(&mut self) -> Result<String, String> {
        let jobs = (self.plan.jobs_dir.clone()).unwrap_or_else(|| self.state_dir.join("jobs"));
        self.create_dir(&jobs, Access::Private)?;
        if let Some(config_dir) = self.plan.config_path.parent().map(Path::to_path_buf) {
            self.create_dir(&config_dir, Access::Readable)?;
        }
        Ok(format!("state in {}", self.state_dir.display()))
    }

    fn create_dir(&mut self, dir: &Path, access: Access) -> Result<(), String> {
        if dir.exists() {
            return Ok(());
        }
        // Remember the outermost folder we create, so rollback removes all of it.
        let first_new = outermost_missing(dir);
        crate::platform::create_dir_all(dir, access)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        self.created
            .push(Created::Dir(first_new.unwrap_or_else(|| dir.to_path_buf())));
        Ok(())
    }

    fn write_config(&mut self) -> Result<String, String> {
        let path = &self.plan.config_path;
        let tmp = path.with_extension("toml.tmp");
        use std::io::Write;
        // The config holds no secret (never the token): the runner's group may read it.
        let access = Access::GroupReadable;
        let written = crate::platform::open_options(access)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut f| {
                crate::platform::finish_new_file(&tmp, access)?;
                f.write_all(self.plan.config_text.as_bytes())
                    .and_then(|()| f.sync_all())
            })
            .and_then(|()| crate::platform::replace_file(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("cannot write {}: {e}", path.display()));
        }
        self.created.push(Created::File(path.clone()));
        Ok(format!("config written to {}", path.display()))
    }

    /// Undo everything this install created, newest first.
    pub(crate) fn rollback(&mut self) {
        while let Some(item) = self.created.pop() {
            let result = match &item {
                Created::Service => self.plan.service.as_mut().map_or(Ok(()), |s| s.remove()),
                Created::File(path) => {
                    std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))
                }
                Created::Dir(path) => {
                    std::fs::remove_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))
                }
            };
            match result {
                Ok(()) => info!(what = %describe(&item), "rolled back"),
                Err(error) => warn!(what = %describe(&item), %error, "could not roll back"),
            }
        }
    }
}

fn describe(item: &Created) -> String {
    match item {
        Created::Dir(p) => format!("folder {}", p.display()),
        Created::File(p) => format!("file {}", p.display()),
        Created::Service => "the OS service".to_owned(),
    }
}

/// The outermost folder of `path` that does not exist yet, if any.
pub(crate) fn outermost_missing(path: &Path) -> Option<PathBuf> {
    if path.exists() {
        return None;
    }
    let mut first_new = path.to_path_buf();
    while let Some(parent) = first_new.parent() {
        if parent.as_os_str().is_empty() || parent.exists() {
            break;
        }
        first_new = parent.to_path_buf();
    }
    Some(first_new)
}
