/*!
A folder made ahead of time: `<root>/.spare-<runner pid>-<n>/`, with what a start
needs in it. A job's folder (`JOB_FOLDER`: `work/` and the two empty logs) and, on
Unix, a supervisor's (its lock and its log, `supervised::wire::SPARE_FOLDER`). A start
renames it into place, one change to the file system where making the folder costs
one for it and one for each thing in it (each a new inode, 30 µs apiece on this
project's VM), on the path between `start_job` and `job_started`. The next spare is made on a blocking thread
once the runner is idle (`Executor::prepare_ahead`), so it competes neither for the
CPU nor for the file system's journal with the start that used the last one. When
there is none ready (jobs started back to back, a failure making it, a job folder
that exists already), the start makes its folder itself, as it would without spares.

Job IDs never start with '.', and supervisors' folders are named by 16 hex digits, so
a spare never meets a real folder. A runner removes
its spare when it stops; one that an earlier run left behind (a crash) is removed by
the executor's preflight. The first spare is made when the runner is first Active.
*/

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::debug;

use super::job_account::JobAccount;
use crate::platform::{self, Access};

/// What the spare folder and its logs are made with: the job's own access.
const ACCESS: Access = Access::Private;
const PREFIX: &str = ".spare-";
pub const LOGS: [&str; 2] = ["stdout.log", "stderr.log"];

/// What a spare holds besides itself: folders, then empty files, by name.
#[derive(Debug, Clone, Copy)]
pub struct Contents {
    pub folders: &'static [&'static str],
    pub files: &'static [&'static str],
}

/// A job's folder: `work/` and the two logs.
pub const JOB_FOLDER: Contents = Contents {
    folders: &["work"],
    files: &LOGS,
};

pub struct SpareDirs {
    root: PathBuf,
    contents: Contents,
    /// Whom the spare is handed over to once made (it and its folders).
    account: Option<Arc<JobAccount>>,
    /// `.spare-<pid>-<n>`: one name per executor, so two in one process never share.
    path: PathBuf,
    slot: Arc<Mutex<Slot>>,
}

enum Slot {
    Empty,
    Making,
    Ready(PathBuf),
}

impl SpareDirs {
    pub fn new(root: PathBuf, contents: Contents, account: Option<Arc<JobAccount>>) -> Self {
        static SPARES: AtomicU64 = AtomicU64::new(0);
        let n = SPARES.fetch_add(1, Ordering::Relaxed);
        Self {
            path: root.join(format!("{PREFIX}{}-{n}", std::process::id())),
            root,
            contents,
            account,
            slot: Arc::new(Mutex::new(Slot::Empty)),
        }
    }

    /// Removes spares left by earlier runs. The first spare is made by `refill` once
    /// the runner can be handed jobs, not at its start: a fleet starting at once would
    /// otherwise make a thousand folders no job asks for yet.
    pub fn remove_leftovers(&self) {
        remove_leftovers(&self.root);
    }

    /// Moves the spare to `job_dir`. Returns whether the folder, with its contents, is
    /// now in place.
    pub fn take_into(&self, job_dir: &Path) -> bool {
        let mut slot = self.lock();
        let Slot::Ready(spare) = std::mem::replace(&mut *slot, Slot::Empty) else {
            return false;
        };
        match fs::rename(&spare, job_dir) {
            Ok(()) => true,
            Err(error) => {
                // Most likely the job's folder exists (a retried attempt): the spare
                // stays for the next job, unless it is gone.
                debug!(%error, to = %job_dir.display(), "spare folder not used");
                if spare.exists() {
                    *slot = Slot::Ready(spare);
                }
                false
            }
        }
    }

    /// Starts making a spare if there is none, on a blocking thread (inline outside a
    /// tokio runtime); returns at once.
    pub fn refill(&self) {
        let mut slot = self.lock();
        if !matches!(*slot, Slot::Empty) {
            return;
        }
        *slot = Slot::Making;
        drop(slot);
        let (slot, path, contents, account) = (
            self.slot.clone(),
            self.path.clone(),
            self.contents,
            self.account.clone(),
        );
        let fill = move || fill(&slot, &path, contents, account.as_deref());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(fill)),
            Err(_) => fill(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A runner that stops takes its ready spare with it (one still being made is left
/// to the next start, which removes it).
impl Drop for SpareDirs {
    fn drop(&mut self) {
        if let Slot::Ready(spare) = std::mem::replace(&mut *self.lock(), Slot::Empty) {
            let _ = fs::remove_dir_all(spare);
        }
    }
}

fn fill(slot: &Mutex<Slot>, path: &Path, contents: Contents, account: Option<&JobAccount>) {
    let made = make(path, contents).and_then(|()| match account {
        Some(account) => std::iter::once(path.to_owned())
            .chain(contents.folders.iter().map(|folder| path.join(folder)))
            .try_for_each(|folder| account.hand_over(&folder))
            .map_err(io::Error::other),
        None => Ok(()),
    });
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    *slot = match made {
        Ok(()) => Slot::Ready(path.to_owned()),
        Err(error) => {
            debug!(%error, path = %path.display(), "cannot make a spare folder; starts make their own");
            Slot::Empty
        }
    };
}

/// The folder and its contents, from scratch (a half-made one from an earlier attempt
/// is removed first).
fn make(path: &Path, contents: Contents) -> io::Result<()> {
    if path.exists() {
        fs::remove_dir_all(path)?;
    }
    platform::create_dir_all(path, ACCESS)?;
    for folder in contents.folders {
        platform::create_dir_all(&path.join(folder), ACCESS)?;
    }
    for file in contents.files {
        platform::no_follow(platform::open_options(ACCESS).write(true).create_new(true))
            .open(path.join(file))?;
    }
    Ok(())
}

fn remove_leftovers(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(PREFIX)
            && let Err(error) = fs::remove_dir_all(entry.path())
        {
            debug!(%error, path = %entry.path().display(), "cannot remove an old spare job folder");
        }
    }
}
