//! Ending supervised jobs from the runner's side: all of them (`fyn-runner
//! uninstall`), or one whose supervisor no store accounts for. Each supervisor is asked
//! to kill its job and record the end; what one that does not answer names is killed
//! here. Must not: end a job a supervisor's lock does not show alive.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tracing::warn;

use crate::runtime::orphans::{self, Leader};

use super::supervisor_lives;
use super::wire::{self, Folder, RunnerAsks, StartedRecord, line, read_record};

/// End every job supervisors run under `jobs_root`, and wait (bounded) for each
/// supervisor to record the end (`fyn-runner uninstall`). Returns how many there were.
pub fn end_all(jobs_root: &Path) -> usize {
    let dir = jobs_root.join(wire::SUPERVISORS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut ended = 0;
    for entry in entries.flatten() {
        let folder = Folder::at(entry.path());
        if supervisor_lives(&folder) {
            end_supervised(&folder);
            ended += 1;
        }
    }
    ended
}

/// Ask the supervisor in `folder` to kill its job, and wait until it is gone; should it
/// not answer, what its records name is killed here.
pub(super) fn end_supervised(folder: &Folder) {
    if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(folder.socket()) {
        let _ = stream.write_all(&line(&RunnerAsks::Kill));
    }
    for _ in 0..500 {
        if !supervisor_lives(folder) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(Some(record)) = read_record::<StartedRecord>(&folder.started()) {
        warn!(folder = %folder.path().display(), "a supervisor did not end its job in time; killing the job's processes");
        orphans::end_leftovers(
            &record.job,
            Some(Leader {
                pid: record.pid,
                start_ticks: record.start_ticks,
            }),
        );
    }
}
