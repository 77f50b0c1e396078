/*!
How long a finished job's folder stays: its logs are the job's whole output and
`work/` is what the job left, both worth a look for a while after it ended — but a
runner that runs jobs for months must not fill its disk with them. A folder goes
once its job has ended (finished, failed to start, or lost) and `keep` has passed.

Owns: the queue of ended jobs' folders and when each may go, and removing them on a
blocking thread. Folders an earlier run left behind are judged by their logs' last
modification, since that run's queue died with it: a job's end touches its
`stdout.log` (`mark_ended`), so a job that printed nothing is not judged by when its
folder was made (a spare can wait long before a job takes it).

Must not: touch the folder of a job that has not ended. The driver hands over a folder
only after the job's removal from the store is committed, and at start names the
folders of the jobs the store still holds. Entries whose names start with '.' (the
spare folder, the executor's preflight probe) are never this module's.
*/

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{info, warn};

/// When the runner starts, and how long ended jobs' folders stay.
pub struct Retention {
    keep: Duration,
    /// Ended jobs' folders, the soonest due first.
    due: VecDeque<(Instant, PathBuf)>,
}

impl Retention {
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
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
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if !is_dir || hidden || live.contains(&path) {
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
        self.due.extend(waiting);
        expired
    }

    /// A job ended now: its folder goes `keep` from now.
    pub fn job_ended(&mut self, folder: PathBuf, now: Instant) {
        let due = now + self.keep;
        // Leftovers adopted at start may be due later than a job ending now.
        let at = self.due.partition_point(|(when, _)| *when <= due);
        self.due.insert(at, (due, folder));
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
/// times); the folder's own time where it has no logs.
fn last_change(folder: &Path) -> Option<SystemTime> {
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let logs = super::spare_dir::LOGS.map(|log| modified(&folder.join(log)));
    logs.into_iter()
        .flatten()
        .max()
        .or_else(|| modified(folder))
}

/// Stamps the job's end on its folder (`stdout.log`'s modification time), for a later
/// start's judgement of it; off the driver's loop.
pub fn mark_ended(folder: &Path) {
    let log = folder.join(super::spare_dir::LOGS[0]);
    super::off_the_loop(move || {
        let stamped = fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|file| file.set_modified(SystemTime::now()));
        if let Err(error) = stamped {
            tracing::debug!(log = %log.display(), %error, "cannot stamp a job's end on its log");
        }
    });
}

/// Removes `folders` off the driver's loop: a job's `work/` can hold many files. A folder that cannot be removed is logged and left; the
/// next start tries again.
pub fn remove_folders(folders: Vec<PathBuf>, keep: Duration) {
    if folders.is_empty() {
        return;
    }
    super::off_the_loop(move || {
        for folder in folders {
            match fs::remove_dir_all(&folder) {
                Ok(()) => {
                    info!(folder = %folder.display(), kept_hours = keep.as_secs() / 3600, "removed an ended job's folder");
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    warn!(folder = %folder.display(), %error, "cannot remove an ended job's folder; the next start tries again");
                }
            }
        }
    });
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
        fs::write(root.path().join("stray-file"), b"x").expect("file");

        let mut retention = Retention::new(24 * HOUR);
        let now = Instant::now();
        let expired =
            retention.adopt_leftovers(root.path(), std::slice::from_ref(&live), wall_now, now);

        assert_eq!(expired, vec![old]);
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
        let mut retention = Retention::new(24 * HOUR);
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
        let mut retention = Retention::new(Duration::ZERO);
        let now = Instant::now();
        retention.job_ended(PathBuf::from("/jobs/a-1"), now);
        assert_eq!(retention.next_due(), Some(now));
        assert_eq!(retention.take_due(now), vec![PathBuf::from("/jobs/a-1")]);
    }

    #[test]
    fn the_end_stamp_makes_an_old_folder_count_from_the_end() {
        let root = tempfile::tempdir().expect("tempdir");
        let wall_now = SystemTime::now();
        // A folder made from a spare that waited for days, for a job that printed nothing.
        let folder = job_folder(root.path(), "quiet-1", 100 * HOUR, wall_now);
        mark_ended(&folder);
        let mut retention = Retention::new(24 * HOUR);
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
        remove_folders(vec![root.path().join("gone-1"), folder.clone()], HOUR);
        assert!(!folder.exists());
    }
}
