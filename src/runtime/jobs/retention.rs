/*!
How long a finished job's folder stays: its logs are the job's whole output and
`work/` is what the job left, both worth a look for a while after it ended — but a
runner that runs jobs for months must not fill its disk with them. A folder goes
once its job has ended (finished, failed to start, or lost) and `keep` has passed, or
sooner when more than `max_kept` ended folders are kept (the oldest first).

Owns: the queue of ended jobs' folders and when each may go (`Retention`, which
decides and does no I/O but read the job area at start), and the one thread that
removes folders (`Janitor`): a large `work/` must not take the blocking threads that
job output is written on. A folder due is first set aside (renamed to
`.removing-<pid>-<n>`) on the driver's thread, so nothing that starts later can meet
it. Folders an earlier run left
behind are judged by their logs' last modification, since that run's queue died with
it: a job's end touches its `stdout.log`, so a job that printed nothing is not judged
by when its folder was made (a spare can wait long before a job takes it). The queue
costs about 100 bytes per folder kept, so `max_kept` bounds it.

Must not: touch the folder of a job that has not ended. The driver hands over a folder
only after the job's removal from the store is committed, names the folders of the
jobs the store still holds at start, and leaves out those of running jobs when it
hands folders to the janitor (an API that sent an ended job's attempt again). Other entries
whose names start with '.' (the spare folder, the executor's preflight probe) are
never this module's.
*/

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{info, warn};

/// When the runner starts, and how long ended jobs' folders stay.
pub struct Retention {
    keep: Duration,
    /// The most folders kept, however young: past it the soonest due goes now. A term
    /// alone keeps as many folders (and queue entries) as jobs end within it, which at
    /// a high job rate is hundreds of thousands.
    max_kept: usize,
    /// Ended jobs' folders, the soonest due first.
    due: VecDeque<(Instant, PathBuf)>,
}

impl Retention {
    pub fn new(keep: Duration, max_kept: usize) -> Self {
        Self {
            keep,
            max_kept,
            due: VecDeque::new(),
        }
    }

    /// The folders an earlier run left in `jobs_root`: those last changed longer than
    /// `keep` ago are returned, to be removed now; the others are queued for when they
    /// will be due. `live` are the folders of jobs the store still holds: they end in
    /// this run and are queued then.
    pub fn adopt_leftovers(
        &mut self,
        jobs_root: &Path,
        live: &[PathBuf],
        wall_now: SystemTime,
        now: Instant,
    ) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(jobs_root) else {
            return Vec::new();
        };
        let mut expired = Vec::new();
        let mut waiting = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_dir && name.starts_with(SET_ASIDE) {
                // Set aside by an earlier run that exited before removing it.
                expired.push(path);
                continue;
            }
            if !is_dir || name.starts_with('.') || live.contains(&path) {
                continue;
            }
            // A folder whose age cannot be read counts as just changed: kept a full term.
            let age = last_change(&path)
                .and_then(|changed| wall_now.duration_since(changed).ok())
                .unwrap_or_default();
            match self.keep.checked_sub(age).filter(|left| !left.is_zero()) {
                Some(left) => waiting.push((now + left, path)),
                None => expired.push(path),
            }
        }
        waiting.sort();
        // Past the cap, the soonest due go now.
        let over = waiting.len().saturating_sub(self.max_kept);
        expired.extend(waiting.drain(..over).map(|(_, path)| path));
        self.due.extend(waiting);
        expired
    }

    /// A job ended now: its folder goes `keep` from now.
    pub fn job_ended(&mut self, folder: PathBuf, now: Instant) {
        let due = now + self.keep;
        // Leftovers adopted at start may be due later than a job ending now.
        let at = self.due.partition_point(|(when, _)| *when <= due);
        self.due.insert(at, (due, folder));
        // Past the cap, the soonest due are due now (the queue stays in order: they
        // were its front).
        let over = self.due.len().saturating_sub(self.max_kept);
        for (when, _) in self.due.iter_mut().take(over) {
            *when = (*when).min(now);
        }
    }

    /// When the next folder is due, if any is queued.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|(when, _)| *when)
    }

    /// The folders due by `now`, out of the queue.
    pub fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let ready = self.due.partition_point(|(when, _)| *when <= now);
        self.due.drain(..ready).map(|(_, folder)| folder).collect()
    }
}

/// When the job last wrote output or ended (the later of its logs' modification
/// times); the folder's own time where it has no logs. Links are not followed: the
/// job could have left any.
fn last_change(folder: &Path) -> Option<SystemTime> {
    let modified = |path: &Path| fs::symlink_metadata(path).and_then(|m| m.modified()).ok();
    let logs = super::spare_dir::LOGS.map(|log| modified(&folder.join(log)));
    logs.into_iter()
        .flatten()
        .max()
        .or_else(|| modified(folder))
}

/// Where a folder waits for the janitor: out of its job's name at once, so a job that
/// starts again under that name (an API that resends an ended attempt) gets a new
/// folder, never one the janitor is about to remove.
const SET_ASIDE: &str = ".removing-";

/// Stamps a job's end on its folder (`stdout.log`'s modification time), for a later
/// start's judgement of it. In place: one open and one time set, and a stamp that
/// waited on a thread could be lost when the runner exits.
pub fn stamp_end(folder: &Path) {
    let log = folder.join(super::spare_dir::LOGS[0]);
    if let Err(error) = stamp(&log) {
        tracing::debug!(log = %log.display(), %error, "cannot stamp a job's end on its log");
    }
}

/// The thread that removes folders set aside, one at a time; started on first use.
/// What it has not removed when the runner exits, the next start removes.
#[derive(Default)]
pub struct Janitor {
    removals: Option<mpsc::Sender<Vec<PathBuf>>>,
    /// Numbers the names folders are set aside under.
    set_aside: u64,
    #[cfg(test)]
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Janitor {
    /// Sets each folder aside now (a rename in its parent) and has it removed in the
    /// background. A folder already gone is skipped.
    pub fn remove(&mut self, folders: Vec<PathBuf>) {
        let aside: Vec<PathBuf> = folders
            .into_iter()
            .filter_map(|folder| self.set_aside(&folder))
            .collect();
        if !aside.is_empty() {
            self.give(aside);
        }
    }

    /// Named as the job's folder was, for the log; one an earlier run set aside is
    /// taken as it is.
    fn set_aside(&mut self, folder: &Path) -> Option<PathBuf> {
        let parent = folder.parent()?;
        let name = folder.file_name()?.to_string_lossy();
        if name.starts_with(SET_ASIDE) {
            return Some(folder.to_path_buf());
        }
        self.set_aside += 1;
        let aside = parent.join(format!(
            "{SET_ASIDE}{}-{}",
            std::process::id(),
            self.set_aside
        ));
        match fs::rename(folder, &aside) {
            Ok(()) => {
                info!(folder = %folder.display(), "removing an ended job's folder");
                Some(aside)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => {
                warn!(folder = %folder.display(), %error, "cannot set an ended job's folder aside for removal; the next start tries again");
                None
            }
        }
    }

    fn give(&mut self, folders: Vec<PathBuf>) {
        if self.removals.is_none() {
            let (removals, queue) = mpsc::channel::<Vec<PathBuf>>();
            let started = std::thread::Builder::new()
                .name("fyn-runner-janitor".to_owned())
                .spawn(move || {
                    for folders in queue {
                        folders.iter().for_each(|folder| remove(folder));
                    }
                });
            match started {
                Ok(_thread) => {
                    self.removals = Some(removals);
                    #[cfg(test)]
                    {
                        self.thread = Some(_thread);
                    }
                }
                Err(error) => {
                    warn!(%error, "cannot start the job-folder janitor; removing in place");
                }
            }
        }
        let undone = match &self.removals {
            Some(removals) => removals.send(folders).err().map(|failed| failed.0),
            None => Some(folders),
        };
        for folder in undone.unwrap_or_default() {
            remove(&folder);
        }
    }

    /// Waits for every removal given so far.
    #[cfg(test)]
    fn finish(mut self) {
        self.removals = None;
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the janitor ends");
        }
    }
}

/// Not through a link the job left, and not held up by a FIFO it left.
fn stamp(log: &Path) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    #[cfg(windows)]
    crate::platform::no_follow(&mut options);
    let file = options.open(log)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    file.set_modified(SystemTime::now())
}

/// A folder that cannot be removed is logged and left; the next start tries again.
fn remove(folder: &Path) {
    match fs::remove_dir_all(folder) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            warn!(folder = %folder.display(), %error, "cannot remove an ended job's folder; the next start tries again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A job folder as the executor makes it, last changed `age` before `wall_now`.
    fn job_folder(root: &Path, name: &str, age: Duration, wall_now: SystemTime) -> PathBuf {
        let folder = root.join(name);
        fs::create_dir_all(folder.join("work")).expect("folder");
        for log in super::super::spare_dir::LOGS {
            let file = fs::File::create(folder.join(log)).expect("log");
            file.set_modified(wall_now - age).expect("log time");
        }
        folder
    }

    #[test]
    fn leftovers_past_the_term_go_now_the_rest_when_due_and_live_ones_never() {
        let root = tempfile::tempdir().expect("tempdir");
        let wall_now = SystemTime::now();
        let old = job_folder(root.path(), "old-1", 30 * HOUR, wall_now);
        let young = job_folder(root.path(), "young-1", 4 * HOUR, wall_now);
        let live = job_folder(root.path(), "running-1", 300 * HOUR, wall_now);
        let spare = job_folder(root.path(), ".spare-1-1", 300 * HOUR, wall_now);
        // Set aside by a run that exited before its janitor removed it: whatever its age.
        let set_aside = job_folder(root.path(), ".removing-1-1", Duration::ZERO, wall_now);
        fs::write(root.path().join("stray-file"), b"x").expect("file");

        let mut retention = Retention::new(24 * HOUR, usize::MAX);
        let now = Instant::now();
        let expired =
            retention.adopt_leftovers(root.path(), std::slice::from_ref(&live), wall_now, now);

        let mut expired = expired;
        expired.sort();
        assert_eq!(expired, vec![set_aside, old]);
        // The young one is due when its 24 hours are up: in 20 hours.
        let due = retention.next_due().expect("queued");
        assert_eq!(due - now, 20 * HOUR);
        assert!(retention.take_due(now + 19 * HOUR).is_empty());
        assert_eq!(retention.take_due(now + 20 * HOUR), vec![young]);
        assert_eq!(retention.next_due(), None);
        assert!(spare.exists() && live.exists());
    }

    #[test]
    fn an_ended_job_goes_after_the_term_in_the_order_folders_fell_due() {
        let root = tempfile::tempdir().expect("tempdir");
        let wall_now = SystemTime::now();
        let leftover = job_folder(root.path(), "left-1", 20 * HOUR, wall_now);
        let mut retention = Retention::new(24 * HOUR, usize::MAX);
        let now = Instant::now();
        assert!(
            retention
                .adopt_leftovers(root.path(), &[], wall_now, now)
                .is_empty()
        );
        // Ends an hour in: due at 25 h, after the leftover (due at 4 h).
        let ended = root.path().join("ended-1");
        retention.job_ended(ended.clone(), now + HOUR);
        let early = root.path().join("early-1");
        retention.job_ended(early.clone(), now + 2 * HOUR);

        assert_eq!(retention.take_due(now + 4 * HOUR), vec![leftover]);
        assert!(retention.take_due(now + 24 * HOUR).is_empty());
        assert_eq!(retention.take_due(now + 26 * HOUR), vec![ended, early]);
    }

    #[test]
    fn keeping_nothing_makes_an_ended_job_due_at_once() {
        let mut retention = Retention::new(Duration::ZERO, usize::MAX);
        let now = Instant::now();
        retention.job_ended(PathBuf::from("/jobs/a-1"), now);
        assert_eq!(retention.next_due(), Some(now));
        assert_eq!(retention.take_due(now), vec![PathBuf::from("/jobs/a-1")]);
    }

    #[test]
    fn past_the_cap_the_oldest_ended_folders_go_at_once() {
        let mut retention = Retention::new(24 * HOUR, 2);
        let now = Instant::now();
        let folder = |n: u32| PathBuf::from(format!("/jobs/j{n}-1"));
        retention.job_ended(folder(1), now);
        retention.job_ended(folder(2), now + HOUR);
        assert_eq!(
            retention.next_due(),
            Some(now + 24 * HOUR),
            "within the cap"
        );
        retention.job_ended(folder(3), now + 2 * HOUR);
        // The third makes three: the oldest is due now, the others keep their term.
        assert_eq!(retention.next_due(), Some(now + 2 * HOUR));
        assert_eq!(retention.take_due(now + 2 * HOUR), vec![folder(1)]);
        assert_eq!(retention.next_due(), Some(now + 25 * HOUR));
        // However many end, at most two wait; the queue stays in order.
        for n in 4..100 {
            retention.job_ended(folder(n), now + 3 * HOUR);
        }
        assert_eq!(retention.take_due(now + 3 * HOUR).len(), 96);
        assert_eq!(
            retention.take_due(now + 27 * HOUR),
            vec![folder(98), folder(99)]
        );
    }

    #[test]
    fn leftovers_past_the_cap_go_at_start_the_oldest_first() {
        let root = tempfile::tempdir().expect("tempdir");
        let wall_now = SystemTime::now();
        let oldest = job_folder(root.path(), "a-1", 3 * HOUR, wall_now);
        let middle = job_folder(root.path(), "b-1", 2 * HOUR, wall_now);
        let newest = job_folder(root.path(), "c-1", HOUR, wall_now);
        let mut retention = Retention::new(24 * HOUR, 1);
        let now = Instant::now();
        let mut expired = retention.adopt_leftovers(root.path(), &[], wall_now, now);
        expired.sort();
        assert_eq!(expired, vec![oldest, middle]);
        assert_eq!(retention.take_due(now + 23 * HOUR), vec![newest]);
    }

    #[test]
    fn the_end_stamp_makes_an_old_folder_count_from_the_end() {
        let root = tempfile::tempdir().expect("tempdir");
        let wall_now = SystemTime::now();
        // A folder made from a spare that waited for days, for a job that printed nothing.
        let folder = job_folder(root.path(), "quiet-1", 100 * HOUR, wall_now);
        stamp_end(&folder);
        let mut retention = Retention::new(24 * HOUR, usize::MAX);
        let expired =
            retention.adopt_leftovers(root.path(), &[], SystemTime::now(), Instant::now());
        assert!(expired.is_empty());
        assert!(retention.next_due().is_some());
    }

    #[test]
    fn removal_takes_the_whole_folder_and_ignores_one_already_gone() {
        let root = tempfile::tempdir().expect("tempdir");
        let folder = job_folder(root.path(), "done-1", HOUR, SystemTime::now());
        fs::write(folder.join("work").join("result.dat"), b"data").expect("work file");
        // One an earlier run set aside goes as it is.
        let set_aside = job_folder(root.path(), ".removing-9-9", HOUR, SystemTime::now());
        let mut janitor = Janitor::default();
        janitor.remove(vec![root.path().join("gone-1"), folder.clone(), set_aside]);
        // Out of its name at once, before the janitor gets to it.
        assert!(!folder.exists());
        janitor.finish();
        assert_eq!(fs::read_dir(root.path()).expect("read").count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn a_stamp_follows_no_link_and_waits_on_no_fifo_the_job_left() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = root.path().join("outside");
        fs::write(&outside, b"x").expect("file");
        let long_ago = SystemTime::now() - 100 * HOUR;
        fs::File::options()
            .append(true)
            .open(&outside)
            .and_then(|f| f.set_modified(long_ago))
            .expect("time");
        let linked = root.path().join("linked-1");
        fs::create_dir_all(&linked).expect("folder");
        std::os::unix::fs::symlink(&outside, linked.join("stdout.log")).expect("link");
        let piped = root.path().join("piped-1");
        fs::create_dir_all(&piped).expect("folder");
        let fifo = std::ffi::CString::new(piped.join("stdout.log").to_str().expect("utf-8"))
            .expect("path");
        // SAFETY: a plain mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        stamp_end(&linked);
        stamp_end(&piped);
        let modified = fs::metadata(&outside)
            .and_then(|m| m.modified())
            .expect("time");
        assert_eq!(
            modified, long_ago,
            "the file behind the link was not touched"
        );
    }
}
