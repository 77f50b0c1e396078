//! Durability: the rows of a batch in one SQLite transaction, acknowledgements batched
//! into the next commit, and ended jobs' folders kept for their term.
//!
//! Owns: the store, the acknowledgement that waits, the retention queue and its
//! janitor. Must not: decide what to persist; it writes exactly the core's `Durable`
//! rows (the file writes, identity and hardware cache, are `local_steps`').

use std::path::PathBuf;

use tracing::error;

use crate::core::Durable;
use crate::protocol::JobRef;
use crate::runtime::jobs::{self, Janitor, Retention};
use crate::runtime::store::{Store, StoreError};

pub(super) struct Durability {
    pub(super) store: Store,
    /// An acknowledgement not written yet. A batch of acknowledgements alone is not
    /// worth a commit of its own: it goes with the next batch, or at the next progress
    /// tick, or before the runner stops. Losing it only means the API is sent those
    /// events again and drops them by index. (Pure mechanics: what is acknowledged is
    /// the core's decision; this only chooses which commit carries it.)
    unsaved_ack: Option<u64>,
    /// Ended jobs' folders, removed when their term is up.
    retention: Retention,
    janitor: Janitor,
    jobs_root: PathBuf,
    /// Whether ended jobs' folders are kept at all (a zero term removes them at once).
    keep_folders: bool,
    /// How long the last transaction took, until the driver hands it to the metrics.
    commit_time: Option<std::time::Duration>,
}

impl Durability {
    pub(super) fn new(
        store: Store,
        retention: Retention,
        janitor: Janitor,
        jobs_root: PathBuf,
        keep_folders: bool,
    ) -> Self {
        Self {
            store,
            unsaved_ack: None,
            retention,
            janitor,
            jobs_root,
            keep_folders,
            commit_time: None,
        }
    }

    /// How long the last transaction took, once (for the metrics).
    pub(super) fn take_commit_time(&mut self) -> Option<std::time::Duration> {
        self.commit_time.take()
    }

    /// One transaction for the rows of a batch; acknowledgements alone wait.
    pub(super) fn commit(&mut self, mut rows: Vec<Durable>) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        if let Some(up_to) = only_acks(&rows) {
            self.unsaved_ack = self.unsaved_ack.max(Some(up_to));
            return Ok(());
        }
        if let Some(up_to) = self.unsaved_ack.take() {
            rows.push(Durable::OutboxAcked { up_to });
        }
        let started = std::time::Instant::now();
        self.store.commit(&rows).map_err(|e| e.to_string())?;
        self.commit_time = Some(started.elapsed());
        for row in &rows {
            if let Durable::JobRemoved { job } = row {
                self.job_folder_ended(job);
            }
        }
        Ok(())
    }

    /// Writes the acknowledgement that waits, if any (see `unsaved_ack`).
    pub(super) fn save_acks(&mut self) -> Result<(), StoreError> {
        let Some(up_to) = self.unsaved_ack.take() else {
            return Ok(());
        };
        self.store
            .commit(&[Durable::OutboxAcked { up_to }])
            .inspect_err(|e| error!(error = %e, "persisting an acknowledgement failed"))
    }

    /// A job's end is on disk: its folder starts its term, and its supervisor's folder
    /// (records the runner has read) goes.
    fn job_folder_ended(&mut self, job: &JobRef) {
        jobs::forget_supervisor(&self.jobs_root, job);
        if let Ok(folder) = jobs::job_dir(&self.jobs_root, job) {
            if self.keep_folders {
                jobs::stamp_end(&folder);
            }
            self.retention
                .job_ended(folder, tokio::time::Instant::now());
        }
    }

    /// When the next ended job's folder is due for removal.
    pub(super) fn next_removal(&self) -> Option<tokio::time::Instant> {
        self.retention.next_due()
    }

    /// Remove the folders whose term is up, except those of `running` jobs (an API
    /// that sends an ended job's attempt again gets the same folder back).
    pub(super) fn remove_ended_folders(&mut self, running: &[JobRef]) {
        let mut due = self.retention.take_due(tokio::time::Instant::now());
        let running: Vec<PathBuf> = running
            .iter()
            .filter_map(|job| jobs::job_dir(&self.jobs_root, job).ok())
            .collect();
        due.retain(|folder| !running.contains(folder));
        self.janitor.remove(due);
    }

    /// Swap the database for one in memory, so an install rolling back can remove its
    /// folder (Windows refuses to delete an open file). What little the runner still
    /// writes before it exits goes to memory; the install is gone with its folders.
    pub(super) fn let_go_of_files(&mut self) {
        match Store::open_in_memory() {
            Ok(memory) => self.store = memory,
            Err(error) => {
                tracing::warn!(%error, "cannot swap the store out; its files may stay behind")
            }
        }
    }
}

/// The highest `up_to` when `rows` are acknowledgements and nothing else.
fn only_acks(rows: &[Durable]) -> Option<u64> {
    rows.iter().try_fold(0, |highest, row| match row {
        Durable::OutboxAcked { up_to } => Some(highest.max(*up_to)),
        _ => None,
    })
}
