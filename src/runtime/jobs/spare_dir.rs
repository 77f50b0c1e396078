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

A job's spare also holds its endpoint's socket (`job.sock`), bound and listening (Unix):
the bind is the one new inode a start would still make (90 µs under `perf` here, the
largest step left between the plan and the job). A Unix socket is found by its inode,
not its name, so the listener serves at the job's folder once the spare is renamed
there; a socket no endpoint takes is removed (`BoundSocket`).

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

/// What a spare holds besides itself: folders, then empty files, by name, and a Unix
/// socket bound and listening (ignored elsewhere).
#[derive(Debug, Clone, Copy)]
pub struct Contents {
    pub folders: &'static [&'static str],
    pub files: &'static [&'static str],
    pub socket: Option<&'static str>,
}

/// A job's folder: `work/` and the two logs (its endpoint's socket: `with_socket`).
pub const JOB_FOLDER: Contents = Contents {
    folders: &["work"],
    files: &LOGS,
    socket: None,
};

impl Contents {
    /// The same, with a socket bound at `name` (mode 0600, not blocking).
    #[cfg(unix)]
    pub const fn with_socket(self, name: &'static str) -> Self {
        Self {
            socket: Some(name),
            ..self
        }
    }
}

/// What a start took from a spare besides the folder itself.
#[derive(Debug, Default)]
pub struct Taken {
    /// The socket, listening at its place in the renamed folder.
    pub socket: Option<BoundSocket>,
}

/// A socket a spare was made with. Removed from its folder when dropped unless
/// `into_listener` took it: a job must not find a socket that nobody serves.
#[derive(Debug)]
pub struct BoundSocket {
    #[cfg(unix)]
    listener: Option<std::os::unix::net::UnixListener>,
    path: PathBuf,
}

impl BoundSocket {
    /// Where the socket is now.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, to serve; the socket stays.
    #[cfg(unix)]
    pub fn into_listener(mut self) -> Option<std::os::unix::net::UnixListener> {
        self.listener.take()
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        #[cfg(unix)]
        if self.listener.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

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
    Ready(Spare),
}

/// A spare made: its folder, and its socket's listener when it has one.
struct Spare {
    path: PathBuf,
    #[cfg(unix)]
    socket: Option<std::os::unix::net::UnixListener>,
}

impl Spare {
    /// Its socket's path, when one is bound.
    fn socket_path(&self, contents: Contents) -> Option<PathBuf> {
        #[cfg(unix)]
        let bound = self.socket.is_some();
        #[cfg(not(unix))]
        let bound = false;
        contents
            .socket
            .filter(|_| bound)
            .map(|name| self.path.join(name))
    }
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

    /// Moves the spare to `job_dir`. Returns what else it held when the folder, with
    /// its contents, is now in place.
    pub fn take_into(&self, job_dir: &Path) -> Option<Taken> {
        let mut slot = self.lock();
        let Slot::Ready(spare) = std::mem::replace(&mut *slot, Slot::Empty) else {
            return None;
        };
        match fs::rename(&spare.path, job_dir) {
            Ok(()) => Some(Taken {
                #[cfg(unix)]
                socket: spare
                    .socket
                    .zip(self.contents.socket)
                    .map(|(listener, name)| BoundSocket {
                        listener: Some(listener),
                        path: job_dir.join(name),
                    }),
                #[cfg(not(unix))]
                socket: None,
            }),
            Err(error) => {
                // Most likely the job's folder exists (a retried attempt): the spare
                // stays for the next job, unless it is gone.
                debug!(%error, to = %job_dir.display(), "spare folder not used");
                if spare.path.exists() {
                    *slot = Slot::Ready(spare);
                }
                None
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
            let _ = fs::remove_dir_all(spare.path);
        }
    }
}

fn fill(slot: &Mutex<Slot>, path: &Path, contents: Contents, account: Option<&JobAccount>) {
    let made = make(path, contents).and_then(|spare| match account {
        // The socket is the account's too: the job connects to it as that account.
        Some(account) => std::iter::once(path.to_owned())
            .chain(contents.folders.iter().map(|folder| path.join(folder)))
            .chain(spare.socket_path(contents))
            .try_for_each(|item| account.hand_over(&item))
            .map(|()| spare)
            .map_err(io::Error::other),
        None => Ok(spare),
    });
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    *slot = match made {
        Ok(spare) => Slot::Ready(spare),
        Err(error) => {
            debug!(%error, path = %path.display(), "cannot make a spare folder; starts make their own");
            Slot::Empty
        }
    };
}

/// The folder and its contents, from scratch (a half-made one from an earlier attempt
/// is removed first).
fn make(path: &Path, contents: Contents) -> io::Result<Spare> {
    if path.exists() {
        fs::remove_dir_all(path)?;
    }
    platform::create_dir_all(path, ACCESS)?;
    for folder in contents.folders {
        platform::create_dir_all(&path.join(folder), ACCESS)?;
    }
    #[cfg(unix)]
    let socket = contents.socket.and_then(|name| {
        // A spare without one is still a spare: the start binds its own.
        crate::runtime::job_endpoint::listen_at(&path.join(name))
            .map_err(|error| debug!(%error, "cannot bind a spare folder's socket; the start binds its own"))
            .ok()
    });
    // The files last: a spare with its logs is complete.
    for file in contents.files {
        platform::no_follow(platform::open_options(ACCESS).write(true).create_new(true))
            .open(path.join(file))?;
    }
    Ok(Spare {
        path: path.to_owned(),
        #[cfg(unix)]
        socket,
    })
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
