//! The durable store: `<state_dir>/runner.db`, a SQLite database in WAL mode with
//! `synchronous=FULL`, so a committed batch survives a crash or power loss.
//!
//! Two kinds of batch are committed without waiting for the disk (`NORMAL`): they
//! are in the WAL, so they survive the runner's own crash (`kill -9`), but a power
//! cut or a kernel crash can take them back. Every other batch waits (`FULL`), and
//! since the WAL is one file replayed in order up to its first missing commit, a
//! crash can only ever take back a suffix of not-waited-for batches.
//! - Acknowledgements alone (`OutboxAcked`). Losing one loses nothing: the events it
//!   retired are sent again and the API drops them by index. (The driver rarely
//!   commits one alone: it holds them back and adds them to the next batch.)
//! - A `job_started` alone. Its job's acceptance waited for the disk before the
//!   process was spawned, so a job is never run twice; what a power cut can take back
//!   is only the news that a process started, and that process died with the power.
//!   The job's row is then without its pid, so `load` reports it lost like any job
//!   that did not outlive its runner. The one danger is its event index: the API may
//!   hold it, and it drops an event whose index it has seen. So `load` counts one
//!   possibly-used index for each job without a pid and starts after them; the API
//!   may see a gap, never a reused index. This takes the second of the two disk
//!   syncs between a `start_job` and its `job_started`.
//!
//! It holds exactly what `DurableState` needs to rebuild the core, plus the outbox
//! bodies to resend: the `meta` counters, the unacknowledged `outbox` events and the
//! running `jobs` (with, for a job that outlives a restart, its pid and how far each
//! of its streams was taken into the outbox, kept in the transaction that stores the
//! event). The core decides every write; the store only applies a batch of
//! `Durable` writes in one transaction, all or nothing. There is no clock here.
//!
//! `Durable::Identity` and `Durable::HardwareCache` are files, not rows: the caller
//! writes them (see `runtime::identity` and `hardware::cache`) *before* committing
//! the batch, and `commit` skips them.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::secure_fs::{self, SecureFsError};
use crate::core::{Durable, DurableState, ENDED_ATTEMPTS_KEPT, OutputDone};
use crate::protocol::{JobRef, JobSpec, OutputStream, RunnerEvent};
use crate::runtime::jobs::{OutputProgress, StreamProgress};

pub const DB_FILE: &str = "runner.db";

/// The schema version this build writes, kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: u32 = 6;

/// How long a write waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // Version 1. No timestamps: the store has no clock, like the core.
    "CREATE TABLE meta (
         key   TEXT PRIMARY KEY NOT NULL,
         value INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE outbox (
         idx  INTEGER PRIMARY KEY NOT NULL,
         kind TEXT NOT NULL,
         body TEXT NOT NULL
     ) STRICT;
     CREATE TABLE jobs (
         job_id  TEXT PRIMARY KEY NOT NULL,
         attempt INTEGER NOT NULL,
         spec    TEXT NOT NULL
     ) STRICT;",
    // Version 2. The pid of a running job, from its `job_started` event: what a
    // runner restarted after a crash kills if that process is still the job's.
    "ALTER TABLE jobs ADD COLUMN pid INTEGER;",
    // Version 3. The attempts that ended here, oldest first (the last
    // `ENDED_ATTEMPTS_KEPT`): a `start_job` for one is refused, never run again.
    "CREATE TABLE ended_attempts (
         seq     INTEGER PRIMARY KEY NOT NULL,
         job_id  TEXT NOT NULL,
         attempt INTEGER NOT NULL
     ) STRICT;",
    // Version 4. How far each stream of a running job was taken into the outbox
    // (bytes from offset 0), and whether its truncation was: where a runner restarted
    // while the job runs on goes on reporting, without a byte twice or skipped.
    "ALTER TABLE jobs ADD COLUMN stdout_sent INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN stderr_sent INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN stdout_cut INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN stderr_cut INTEGER NOT NULL DEFAULT 0;",
    // Version 5. The output files of a running job whose upload is over (uploaded, or
    // failed for good), each recorded with its event: a runner restarted during the
    // uploads does the others only, and reports each file once.
    "CREATE TABLE outputs_done (
         job_id   TEXT NOT NULL,
         attempt  INTEGER NOT NULL,
         path     TEXT NOT NULL,
         uploaded INTEGER NOT NULL,
         PRIMARY KEY (job_id, attempt, path)
     ) STRICT;",
    // Version 6. A running job's key-value writes, each recorded with its `job_kv_put`
    // event (the value last written, and how many writes and bytes it took): a runner
    // restarted while the job runs serves its endpoint again with the job's own view,
    // counted against the same bounds.
    "CREATE TABLE job_kv (
         job_id  TEXT NOT NULL,
         attempt INTEGER NOT NULL,
         key     TEXT NOT NULL,
         value   TEXT NOT NULL,
         writes  INTEGER NOT NULL,
         bytes   INTEGER NOT NULL,
         PRIMARY KEY (job_id, attempt, key)
     ) STRICT;",
];

const LAST_APPLIED: &str = "last_applied_command";
const LAST_EVENT: &str = "last_event_index";
const ACKED_EVENT: &str = "acked_event_index";

/// What went wrong underneath a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreFault {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// SQLite integers are signed 64-bit.
    #[error("{0} is too large for the store (limit {max})", max = i64::MAX)]
    OutOfRange(u64),
    #[error("outbox index {index} is not above the last appended index {last}")]
    IndexNotAbove { index: u64, last: u64 },
    #[error("meta value {key} is negative ({value})")]
    NegativeMeta { key: String, value: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create store {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fs(#[from] SecureFsError),
    #[error(
        "cannot open store {path}: WAL journaling could not be enabled (journal_mode is {mode})"
    )]
    NoWal { path: String, mode: String },
    #[error(
        "store {path} has schema version {found}, newer than this build supports \
         ({SCHEMA_VERSION}); run a newer fyn-runner"
    )]
    TooNew { path: String, found: u32 },
    #[error("cannot migrate store {path} to schema version {version}: {source}")]
    Migrate {
        path: String,
        version: u32,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "store {path}: write {position} of {total} ({write}) failed, nothing of the batch \
         was stored: {source}"
    )]
    Write {
        path: String,
        /// 1-based position of the failing write in the batch.
        position: usize,
        total: usize,
        write: &'static str,
        #[source]
        source: StoreFault,
    },
    #[error("store {path}: cannot commit the batch: {source}")]
    Commit {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {path}: cannot read {what}: {source}")]
    Read {
        path: String,
        what: &'static str,
        #[source]
        source: StoreFault,
    },
    #[error(
        "store {} {what}, but this runner is registered ({}): the record of the commands it \
         applied and of the results it has not delivered is gone, and starting with an \
         empty store could apply commands a second time. Restore {} (with its -wal file, \
         if any) from a backup. Or start fresh as a new runner: move the identity aside \
         (mv {} {}.lost) and run once more with a new one-time token (--token-file); the \
         control plane counts the old runner as lost and gives its jobs to others",
        path.display(),
        identity.display(),
        path.display(),
        identity.display(),
        identity.display()
    )]
    Lost {
        path: PathBuf,
        what: &'static str,
        identity: PathBuf,
    },
    #[error("store {path}: {what} is corrupt: {detail}")]
    Corrupt {
        path: String,
        what: String,
        detail: String,
    },
}

/// A running job's key-value writes to one key, as the store keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvWritten {
    pub job: JobRef,
    pub key: String,
    /// The value last written.
    pub value: String,
    /// Writes to this key, and the bytes of their keys and values.
    pub writes: u32,
    pub bytes: u64,
}

pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_FILE)
}

pub struct Store {
    conn: Connection,
    /// For error messages: the file, or `:memory:`.
    path: String,
    /// Whether a commit now returns only once it is on disk (`synchronous=FULL`).
    waits_for_disk: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/runner.db`. The state folder must
    /// exist. A new database file is created with mode 0600: job specs may carry
    /// secrets in their environment. SQLite gives the WAL files the same mode. A
    /// file another user owns is refused, one others may read is made private; so is
    /// a missing or empty store beside a registered identity refused (see
    /// [`check_not_lost`]).
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let file = db_path(state_dir);
        check_not_lost(state_dir, &file)?;
        if create_private_db_file(&file)? {
            secure_fs::sync_dir(state_dir)?;
        }
        secure_fs::ensure_private_file(&file)?;
        let path = file.display().to_string();
        let conn = Connection::open(&file).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::setup(conn, path, true)
    }

    /// A store that lives and dies with this value: for tests and dry runs.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let path = ":memory:".to_owned();
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::setup(conn, path, false)
    }

    fn setup(conn: Connection, path: String, on_disk: bool) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        // The first statement reads the header, so a corrupt file fails here.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if on_disk && !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal { path, mode });
        }
        // FULL: a commit is on disk before `commit` returns, even in WAL mode.
        conn.pragma_update(None, "synchronous", "FULL")
            .and_then(|()| conn.busy_timeout(BUSY_TIMEOUT))
            .and_then(|()| conn.pragma_update(None, "foreign_keys", true))
            // The working set is a few rows; a 256 KiB page cache keeps the idle
            // runner small (SQLite's default is 2 MiB).
            .and_then(|()| conn.pragma_update(None, "cache_size", -256))
            // Deleted rows (a job's spec, with its environment's secrets) are
            // overwritten with zeros, not left in free pages for anyone who reads
            // the file later. See `commit` for the WAL's old copies.
            .and_then(|()| conn.pragma_update(None, "secure_delete", true))
            .map_err(open_err)?;
        let mut store = Store {
            conn,
            path,
            waits_for_disk: true,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Brings the schema up to `SCHEMA_VERSION` in one transaction: a store is at its
    /// old version or the new one, never between, and a new store costs one disk
    /// sync rather than one per version (a fleet's first start pays it once a runner).
    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let found: u32 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path, found });
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        let failed = |version: u32| {
            let path = path.clone();
            move |source| StoreError::Migrate {
                path,
                version,
                source,
            }
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(failed(found + 1))?;
        for version in found..SCHEMA_VERSION {
            tx.execute_batch(MIGRATIONS[version as usize])
                .map_err(failed(version + 1))?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .and_then(|()| tx.commit())
            .map_err(failed(SCHEMA_VERSION))
    }

    /// What the core is rebuilt from. `runner_id` stays `None`: the identity files
    /// hold it. Jobs come back ordered by job ID.
    pub fn load(&self) -> Result<DurableState, StoreError> {
        Ok(DurableState {
            runner_id: None,
            last_applied_command: self.meta(LAST_APPLIED)?,
            last_event_index: self.meta(LAST_EVENT)? + self.jobs_without_pid()?,
            acked_event_index: self.meta(ACKED_EVENT)?,
            jobs: self.jobs()?,
            ended_attempts: self.ended_attempts()?,
            registration_key: None,
            outputs_done: self.outputs_done()?,
        })
    }

    /// Applies the batch in one transaction: all of it is stored, or none of it.
    pub fn commit(&mut self, writes: &[Durable]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let may_be_undone = writes.iter().all(may_be_undone_by_power_loss);
        self.wait_for_disk(!may_be_undone)
            .map_err(|source| StoreError::Commit {
                path: path.clone(),
                source,
            })?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| StoreError::Commit {
                path: path.clone(),
                source,
            })?;
        for (i, write) in writes.iter().enumerate() {
            // On error `tx` is dropped, which rolls the whole batch back.
            apply(&tx, write).map_err(|source| StoreError::Write {
                path: path.clone(),
                position: i + 1,
                total: writes.len(),
                write: write.name(),
                source,
            })?;
        }
        tx.commit()
            .map_err(|source| StoreError::Commit { path, source })?;
        if writes
            .iter()
            .any(|write| matches!(write, Durable::JobRemoved { .. }))
        {
            self.forget_old_pages();
        }
        Ok(())
    }

    /// `secure_delete` zeroes a removed job's spec in the database, but the WAL still
    /// holds the frames that wrote it until a checkpoint overwrites or truncates
    /// them. So a batch that removes a job ends with a checkpoint that copies the
    /// zeroed pages into the database and truncates the WAL: a few pages and a disk
    /// sync, once per job end (never on the way to a job's start). Hygiene, not
    /// durability: the batch is committed already, so a failure is only logged.
    fn forget_old_pages(&self) {
        let checkpoint = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
        match checkpoint {
            Ok(0) => {}
            Ok(_) => {
                tracing::debug!(store = %self.path, "checkpoint blocked by a reader; the WAL keeps old pages until the next one")
            }
            Err(error) => {
                tracing::warn!(store = %self.path, %error, "cannot checkpoint the store; the WAL keeps old pages until the next checkpoint")
            }
        }
    }

    /// `synchronous` is FULL or NORMAL per batch; set only when it changes.
    fn wait_for_disk(&mut self, wait: bool) -> rusqlite::Result<()> {
        if self.waits_for_disk != wait {
            let level = if wait { "FULL" } else { "NORMAL" };
            self.conn.pragma_update(None, "synchronous", level)?;
            self.waits_for_disk = wait;
        }
        Ok(())
    }

    /// Outbox events with an index above `after`, in index order.
    pub fn outbox_after(&self, after: u64) -> Result<Vec<(u64, RunnerEvent)>, StoreError> {
        self.outbox_page(after, u32::MAX)
    }

    /// At most `limit` events after `after`, in index order: a resend reads the outbox
    /// page by page, so a large backlog never sits in memory at once.
    pub fn outbox_page(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, RunnerEvent)>, StoreError> {
        let read_err = |source: StoreFault| StoreError::Read {
            path: self.path.clone(),
            what: "outbox",
            source,
        };
        let after = to_sql_int(after).map_err(read_err)?;
        let rows = self
            .select_outbox(after, limit)
            .map_err(|e| read_err(e.into()))?;
        rows.into_iter()
            .map(|(idx, body)| self.decode_event(idx, &body))
            .collect()
    }

    /// How many events wait for the API's acknowledgement.
    pub fn outbox_depth(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))
            .map_err(|e| StoreError::Read {
                path: self.path.clone(),
                what: "outbox depth",
                source: e.into(),
            })?;
        Ok(count.unsigned_abs())
    }

    fn select_outbox(&self, after: i64, limit: u32) -> rusqlite::Result<Vec<(i64, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT idx, body FROM outbox WHERE idx > ?1 ORDER BY idx LIMIT ?2")?;
        let rows = stmt.query_map(rusqlite::params![after, i64::from(limit)], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        rows.collect()
    }

    fn decode_event(&self, idx: i64, body: &str) -> Result<(u64, RunnerEvent), StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("outbox event {idx}"),
            detail,
        };
        let index = u64::try_from(idx).map_err(|_| corrupt("negative index".into()))?;
        let event = serde_json::from_str(body).map_err(|e| corrupt(e.to_string()))?;
        Ok((index, event))
    }

    fn meta(&self, key: &'static str) -> Result<u64, StoreError> {
        let value: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| StoreError::Read {
                path: self.path.clone(),
                what: key,
                source: e.into(),
            })?;
        u64::try_from(value.unwrap_or(0)).map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            what: key.to_owned(),
            detail: "negative value".into(),
        })
    }

    fn jobs(&self) -> Result<Vec<JobSpec>, StoreError> {
        let rows = self.select_jobs().map_err(|e| StoreError::Read {
            path: self.path.clone(),
            what: "jobs",
            source: e.into(),
        })?;
        rows.into_iter()
            .map(|(id, attempt, spec)| self.decode_job(id, attempt, &spec))
            .collect()
    }

    /// The attempts that ended here, oldest first, at most `ENDED_ATTEMPTS_KEPT`.
    fn ended_attempts(&self) -> Result<Vec<JobRef>, StoreError> {
        let read = || -> rusqlite::Result<Vec<JobRef>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT job_id, attempt FROM ended_attempts ORDER BY seq DESC LIMIT ?1",
            )?;
            let kept = i64::try_from(ENDED_ATTEMPTS_KEPT).unwrap_or(i64::MAX);
            let rows = stmt.query_map([kept], |row| {
                Ok(JobRef {
                    job_id: row.get(0)?,
                    attempt: row.get(1)?,
                })
            })?;
            let mut newest_first = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            newest_first.reverse();
            Ok(newest_first)
        };
        read().map_err(|e| StoreError::Read {
            path: self.path.clone(),
            what: "ended attempts",
            source: e.into(),
        })
    }

    /// Jobs whose `job_started` is not on record: it was never sent, or its batch (not
    /// waited for) was taken back by a power cut after it was sent.
    fn jobs_without_pid(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .conn
            .query_row("SELECT count(*) FROM jobs WHERE pid IS NULL", [], |row| {
                row.get(0)
            })
            .map_err(|e| StoreError::Read {
                path: self.path.clone(),
                what: "jobs",
                source: e.into(),
            })?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// How far each stored job's output was taken into the outbox.
    pub fn job_progress(&self) -> Result<Vec<(JobRef, OutputProgress)>, StoreError> {
        let read = || -> rusqlite::Result<Vec<(JobRef, OutputProgress)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT job_id, attempt, stdout_sent, stderr_sent, stdout_cut, stderr_cut
                 FROM jobs ORDER BY job_id",
            )?;
            let rows = stmt.query_map([], |row| {
                let job = JobRef {
                    job_id: row.get(0)?,
                    attempt: row.get(1)?,
                };
                let sent = |i| row.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
                let progress = OutputProgress {
                    stdout: StreamProgress {
                        sent: sent(2)?,
                        cut: row.get::<_, i64>(4)? != 0,
                    },
                    stderr: StreamProgress {
                        sent: sent(3)?,
                        cut: row.get::<_, i64>(5)? != 0,
                    },
                };
                Ok((job, progress))
            })?;
            rows.collect()
        };
        read().map_err(|e| StoreError::Read {
            path: self.path.clone(),
            what: "jobs",
            source: e.into(),
        })
    }

    /// The output files of running jobs whose upload is over.
    fn outputs_done(&self) -> Result<Vec<OutputDone>, StoreError> {
        let read = || -> rusqlite::Result<Vec<OutputDone>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT job_id, attempt, path, uploaded FROM outputs_done ORDER BY rowid",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(OutputDone {
                    job: JobRef {
                        job_id: row.get(0)?,
                        attempt: row.get(1)?,
                    },
                    path: row.get(2)?,
                    uploaded: row.get(3)?,
                })
            })?;
            rows.collect()
        };
        read().map_err(|e| StoreError::Read {
            path: self.path.clone(),
            what: "uploaded outputs",
            source: e.into(),
        })
    }

    /// The key-value writes of each stored job: per key, the last value written.
    pub fn job_kv_written(&self) -> Result<Vec<KvWritten>, StoreError> {
        let read = || -> rusqlite::Result<Vec<KvWritten>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT job_id, attempt, key, value, writes, bytes FROM job_kv
                 ORDER BY job_id, attempt, key",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(KvWritten {
                    job: JobRef {
                        job_id: row.get(0)?,
                        attempt: row.get(1)?,
                    },
                    key: row.get(2)?,
                    value: row.get(3)?,
                    writes: row
                        .get::<_, i64>(4)
                        .map(|v| u32::try_from(v).unwrap_or(u32::MAX))?,
                    bytes: row
                        .get::<_, i64>(5)
                        .map(|v| u64::try_from(v).unwrap_or(0))?,
                })
            })?;
            rows.collect()
        };
        read().map_err(|e| StoreError::Read {
            path: self.path.clone(),
            what: "key-value writes",
            source: e.into(),
        })
    }

    /// The pid each stored job was started with, if it got that far.
    pub fn job_pids(&self) -> Result<Vec<(JobRef, u32)>, StoreError> {
        let read = || -> rusqlite::Result<Vec<(JobRef, u32)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT job_id, attempt, pid FROM jobs WHERE pid IS NOT NULL ORDER BY job_id",
            )?;
            let rows = stmt.query_map([], |row| {
                let job = JobRef {
                    job_id: row.get(0)?,
                    attempt: row.get(1)?,
                };
                Ok((job, row.get(2)?))
            })?;
            rows.collect()
        };
        read().map_err(|e| StoreError::Read {
            path: self.path.clone(),
            what: "jobs",
            source: e.into(),
        })
    }

    fn select_jobs(&self) -> rusqlite::Result<Vec<(String, i64, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT job_id, attempt, spec FROM jobs ORDER BY job_id")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        rows.collect()
    }

    /// The key columns are checked against the JSON so a hand-edited row cannot
    /// resurrect a job under another ID or attempt.
    fn decode_job(&self, id: String, attempt: i64, spec: &str) -> Result<JobSpec, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("job {id}"),
            detail,
        };
        let job: JobSpec = serde_json::from_str(spec).map_err(|e| corrupt(e.to_string()))?;
        if job.job_id != id || i64::from(job.attempt) != attempt {
            return Err(corrupt(format!(
                "row says attempt {attempt}, spec says {} attempt {}",
                job.job_id, job.attempt
            )));
        }
        Ok(job)
    }
}

/// A registered runner's store is never empty: the schema is written before the
/// identity is. So a store that is missing or empty beside an identity was deleted or
/// truncated (by hand, a restore gone wrong, a disk problem), and with it the record
/// of the commands this runner applied and the results it has not delivered.
/// Starting afresh under the same identity could apply commands a second time, so
/// the runner refuses and says how to restore, or how to start fresh as a new runner.
fn check_not_lost(state_dir: &Path, file: &Path) -> Result<(), StoreError> {
    let identity = super::identity::identity_dir(state_dir);
    if !identity.join(super::identity::RUNNER_FILE).exists() {
        return Ok(());
    }
    let what = match std::fs::metadata(file) {
        Ok(meta) if meta.len() > 0 => return Ok(()),
        Ok(_) => "is empty",
        Err(e) if e.kind() == io::ErrorKind::NotFound => "is missing",
        Err(source) => {
            return Err(StoreError::Create {
                path: file.to_path_buf(),
                source,
            });
        }
    };
    Err(StoreError::Lost {
        path: file.to_path_buf(),
        what,
        identity,
    })
}

/// Creates an empty, private database file (mode 0600; on Windows a private access
/// list) if there is none. Returns whether it created one. An empty file is a valid,
/// empty SQLite database.
fn create_private_db_file(file: &Path) -> Result<bool, StoreError> {
    match secure_fs::create_private_file(file) {
        Ok(_) => Ok(true),
        Err(SecureFsError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            Ok(false)
        }
        Err(SecureFsError::Io { source, .. }) => Err(StoreError::Create {
            path: file.to_path_buf(),
            source,
        }),
        Err(other) => Err(other.into()),
    }
}

fn to_sql_int(value: u64) -> Result<i64, StoreFault> {
    i64::try_from(value).map_err(|_| StoreFault::OutOfRange(value))
}

/// The writes a batch may consist of and still be committed without waiting for the
/// disk (see the module doc for why each is safe to lose to a power cut).
fn may_be_undone_by_power_loss(write: &Durable) -> bool {
    matches!(write, Durable::OutboxAcked { .. })
        || matches!(
            write,
            Durable::OutboxAppend { event, .. } if matches!(**event, RunnerEvent::JobStarted { .. })
        )
}

/// One write inside the batch transaction.
fn apply(tx: &Transaction<'_>, write: &Durable) -> Result<(), StoreFault> {
    match write {
        Durable::LastApplied { index } => set_meta(tx, LAST_APPLIED, *index),
        Durable::OutboxAppend { index, event } => {
            append_event(tx, *index, event)?;
            match &**event {
                RunnerEvent::JobStarted { job, pid } => record_pid(tx, job, *pid),
                RunnerEvent::JobOutput {
                    job,
                    stream,
                    offset,
                    data,
                } => record_sent(tx, job, *stream, offset.saturating_add(base64_len(data))),
                RunnerEvent::JobOutputTruncated { job, stream, .. } => record_cut(tx, job, *stream),
                RunnerEvent::JobKvPut { job, key, value } => record_kv(tx, job, key, value),
                _ => Ok(()),
            }
        }
        Durable::OutboxAcked { up_to } => ack_events(tx, *up_to),
        Durable::OutboxRenumbered {
            sent_up_to,
            api_last,
        } => renumber_unsent(tx, *sent_up_to, *api_last),
        Durable::JobAdded { job } => {
            let spec = serde_json::to_string(job)?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO jobs (job_id, attempt, spec) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![job.job_id, job.attempt, spec])?;
            Ok(())
        }
        Durable::OutputDone { done } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO outputs_done (job_id, attempt, path, uploaded)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                done.job.job_id,
                done.job.attempt,
                done.path,
                done.uploaded
            ])?;
            Ok(())
        }
        Durable::JobRemoved { job } => {
            tx.prepare_cached("DELETE FROM jobs WHERE job_id = ?1")?
                .execute([&job.job_id])?;
            tx.prepare_cached("DELETE FROM outputs_done WHERE job_id = ?1")?
                .execute([&job.job_id])?;
            tx.prepare_cached("DELETE FROM job_kv WHERE job_id = ?1")?
                .execute([&job.job_id])?;
            remember_ended(tx, job)
        }
        // Files, written by the caller before the transaction (see the module doc).
        Durable::Identity { .. } | Durable::HardwareCache { .. } => Ok(()),
    }
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: u64) -> Result<(), StoreFault> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, to_sql_int(value)?])?;
    Ok(())
}

/// Like `set_meta`, but a lower value never replaces a higher one.
fn raise_meta(tx: &Transaction<'_>, key: &str, value: u64) -> Result<(), StoreFault> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
    )?
    .execute(params![key, to_sql_int(value)?])?;
    Ok(())
}

fn get_meta(tx: &Transaction<'_>, key: &str) -> Result<u64, StoreFault> {
    let value: Option<i64> = tx
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?;
    let value = value.unwrap_or(0);
    u64::try_from(value).map_err(|_| StoreFault::NegativeMeta {
        key: key.to_owned(),
        value,
    })
}

/// The attempt ended: remembered, and the oldest forgotten past `ENDED_ATTEMPTS_KEPT`
/// (the core keeps the same ones in memory).
fn remember_ended(tx: &Transaction<'_>, job: &JobRef) -> Result<(), StoreFault> {
    tx.prepare_cached("INSERT INTO ended_attempts (job_id, attempt) VALUES (?1, ?2)")?
        .execute(params![job.job_id, job.attempt])?;
    let kept = i64::try_from(ENDED_ATTEMPTS_KEPT).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "DELETE FROM ended_attempts WHERE seq <= (SELECT max(seq) FROM ended_attempts) - ?1",
    )?
    .execute([kept])?;
    Ok(())
}

/// Event indexes only grow: the API deduplicates by index, so reusing one (even an
/// acknowledged one) would make it drop the event silently. Refuse it instead.
fn append_event(tx: &Transaction<'_>, index: u64, event: &RunnerEvent) -> Result<(), StoreFault> {
    let last = get_meta(tx, LAST_EVENT)?;
    if index <= last {
        return Err(StoreFault::IndexNotAbove { index, last });
    }
    let body = serde_json::to_string(event)?;
    tx.prepare_cached("INSERT INTO outbox (idx, kind, body) VALUES (?1, ?2, ?3)")?
        .execute(params![to_sql_int(index)?, event.kind(), body])?;
    raise_meta(tx, LAST_EVENT, index)
}

/// In the transaction that stores `job_started`, so the pid is known exactly when the
/// API can know it.
fn record_pid(tx: &Transaction<'_>, job: &JobRef, pid: u32) -> Result<(), StoreFault> {
    tx.prepare_cached("UPDATE jobs SET pid = ?1 WHERE job_id = ?2 AND attempt = ?3")?
        .execute(params![pid, job.job_id, job.attempt])?;
    Ok(())
}

/// In the transaction that stores a `job_output`: the stream was reported up to `end`.
fn record_sent(
    tx: &Transaction<'_>,
    job: &JobRef,
    stream: OutputStream,
    end: u64,
) -> Result<(), StoreFault> {
    let sql = match stream {
        OutputStream::Stdout => {
            "UPDATE jobs SET stdout_sent = max(stdout_sent, ?1) WHERE job_id = ?2 AND attempt = ?3"
        }
        OutputStream::Stderr => {
            "UPDATE jobs SET stderr_sent = max(stderr_sent, ?1) WHERE job_id = ?2 AND attempt = ?3"
        }
    };
    tx.prepare_cached(sql)?
        .execute(params![to_sql_int(end)?, job.job_id, job.attempt])?;
    Ok(())
}

/// In the transaction that stores a `job_kv_put`: the key's value, and the write
/// counted (as `KvView` counts it: one write, the key's and the value's bytes).
fn record_kv(tx: &Transaction<'_>, job: &JobRef, key: &str, value: &str) -> Result<(), StoreFault> {
    let size = to_sql_int((key.len() + value.len()) as u64)?;
    tx.prepare_cached(
        "INSERT INTO job_kv (job_id, attempt, key, value, writes, bytes)
         VALUES (?1, ?2, ?3, ?4, 1, ?5)
         ON CONFLICT (job_id, attempt, key) DO UPDATE SET
             value = excluded.value, writes = writes + 1, bytes = bytes + excluded.bytes",
    )?
    .execute(params![job.job_id, job.attempt, key, value, size])?;
    Ok(())
}

/// In the transaction that stores a `job_output_truncated`.
fn record_cut(tx: &Transaction<'_>, job: &JobRef, stream: OutputStream) -> Result<(), StoreFault> {
    let sql = match stream {
        OutputStream::Stdout => "UPDATE jobs SET stdout_cut = 1 WHERE job_id = ?1 AND attempt = ?2",
        OutputStream::Stderr => "UPDATE jobs SET stderr_cut = 1 WHERE job_id = ?1 AND attempt = ?2",
    };
    tx.prepare_cached(sql)?
        .execute(params![job.job_id, job.attempt])?;
    Ok(())
}

/// How many bytes standard base64 with padding stands for (the codec refused any
/// other, and the core writes only this).
fn base64_len(text: &str) -> u64 {
    let padding = text.bytes().rev().take_while(|b| *b == b'=').count();
    ((text.len() / 4 * 3).saturating_sub(padding)) as u64
}

/// Acknowledged events leave the outbox without `secure_delete`'s zeroing of the
/// pages they free (`FAST` zeroes only what is written anyway). The bodies that free
/// whole pages are job output, and those bytes stay in the job's logs, which are
/// removed without zeroing when the folder's term is up: zeroing the outbox's copy
/// protected nothing, and cost a second write of every output byte (measured with
/// `cargo bench --bench jobs`, see docs/architecture.md). Job specs, whose environment
/// may hold secrets that are nowhere else on disk, are still zeroed when removed.
fn ack_events(tx: &Transaction<'_>, up_to: u64) -> Result<(), StoreFault> {
    let up_to_sql = to_sql_int(up_to)?;
    tx.pragma_update(None, "secure_delete", "FAST")?;
    let deleted = tx
        .prepare_cached("DELETE FROM outbox WHERE idx <= ?1")
        .and_then(|mut delete| delete.execute([up_to_sql]));
    // Back on before anything else is removed, whatever the delete did.
    tx.pragma_update(None, "secure_delete", true)?;
    deleted?;
    raise_meta(tx, ACKED_EVENT, up_to)
}

/// Events after `sent_up_to` (made since the store went back in time, never sent)
/// move up to follow `api_last`, in order; the last index follows them. Two steps
/// through negative indexes, so no row meets another's index on the way.
fn renumber_unsent(tx: &Transaction<'_>, sent_up_to: u64, api_last: u64) -> Result<(), StoreFault> {
    let shift = api_last.saturating_sub(sent_up_to);
    let last = get_meta(tx, LAST_EVENT)?;
    tracing::warn!(
        api_holds_up_to = api_last,
        store_sent_up_to = sent_up_to,
        "the API holds events this runner's store has no record of: the store was \
         restored from an older copy; events not yet sent are renumbered after the API's"
    );
    let (after, shift_sql) = (to_sql_int(sent_up_to)?, to_sql_int(shift)?);
    tx.prepare_cached("UPDATE outbox SET idx = -(idx + ?2) WHERE idx > ?1")?
        .execute(params![after, shift_sql])?;
    tx.prepare_cached("UPDATE outbox SET idx = -idx WHERE idx < 0")?
        .execute([])?;
    raise_meta(tx, LAST_EVENT, last.max(sent_up_to).saturating_add(shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(store: &Store) -> i64 {
        store
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .expect("the pragma reads")
    }

    fn job_spec(job_id: &str) -> JobSpec {
        JobSpec {
            job_id: job_id.to_owned(),
            attempt: 1,
            command: vec!["true".to_owned()],
            env: std::collections::BTreeMap::new(),
            workdir: None,
            timeout_secs: 60,
            output_limit_bytes: 1 << 20,
            cancel_grace_secs: 1,
            inputs: Default::default(),
            outputs: Default::default(),
            kv: Default::default(),
        }
    }

    fn started(job: &JobSpec, pid: u32) -> RunnerEvent {
        RunnerEvent::JobStarted {
            job: job.job_ref(),
            pid,
        }
    }

    /// What the disk holds after a power cut at this moment: the database and its WAL
    /// up to the last synced commit (the caller copies right after one).
    fn copy_of_disk(dir: &Path) -> tempfile::TempDir {
        let copy = tempfile::tempdir().expect("a temporary directory");
        for name in [DB_FILE.to_owned(), format!("{DB_FILE}-wal")] {
            std::fs::copy(dir.join(&name), copy.path().join(&name)).expect("copy");
        }
        copy
    }

    /// An output's end is recorded with its event and read back at the next start;
    /// recorded twice it stays one record; the job's removal forgets them.
    #[test]
    fn output_ends_are_kept_until_their_job_is_removed() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let spec = job_spec("j");
        let done = |path: &str, uploaded| Durable::OutputDone {
            done: OutputDone {
                job: spec.job_ref(),
                path: path.to_owned(),
                uploaded,
            },
        };
        {
            let mut store = Store::open(dir.path()).expect("the store opens");
            store
                .commit(&[Durable::JobAdded { job: spec.clone() }])
                .expect("commit");
            store
                .commit(&[done("a.csv", true), done("b.csv", false)])
                .expect("commit");
            store.commit(&[done("a.csv", true)]).expect("commit");
        }
        let mut store = Store::open(dir.path()).expect("the store opens again");
        let loaded = store.load().expect("load").outputs_done;
        let paths: Vec<(&str, bool)> = loaded
            .iter()
            .map(|d| (d.path.as_str(), d.uploaded))
            .collect();
        assert_eq!(paths, [("a.csv", true), ("b.csv", false)]);
        store
            .commit(&[Durable::JobRemoved {
                job: spec.job_ref(),
            }])
            .expect("commit");
        assert!(store.load().expect("load").outputs_done.is_empty());
    }

    /// A job's writes are kept with their events, per key the last value and how much
    /// was written, and read back at the next start; the job's removal forgets them.
    #[test]
    fn key_value_writes_are_kept_until_their_job_is_removed() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let spec = job_spec("j");
        let put = |index: u64, key: &str, value: &str| Durable::OutboxAppend {
            index,
            event: RunnerEvent::JobKvPut {
                job: spec.job_ref(),
                key: key.to_owned(),
                value: value.to_owned(),
            }
            .into(),
        };
        {
            let mut store = Store::open(dir.path()).expect("the store opens");
            store
                .commit(&[Durable::JobAdded { job: spec.clone() }, put(1, "step", "1")])
                .expect("commit");
            store
                .commit(&[put(2, "step", "22"), put(3, "mesh", "fine")])
                .expect("commit");
            store
                .commit(&[Durable::OutboxAcked { up_to: 3 }])
                .expect("ack");
        }
        let mut store = Store::open(dir.path()).expect("the store opens again");
        let kept = store.job_kv_written().expect("read");
        let seen: Vec<(&str, &str, u32, u64)> = kept
            .iter()
            .map(|w| (w.key.as_str(), w.value.as_str(), w.writes, w.bytes))
            .collect();
        assert_eq!(seen, [("mesh", "fine", 1, 8), ("step", "22", 2, 11)]);
        assert!(kept.iter().all(|w| w.job == spec.job_ref()));
        store
            .commit(&[Durable::JobRemoved {
                job: spec.job_ref(),
            }])
            .expect("commit");
        assert!(store.job_kv_written().expect("read").is_empty());
    }

    /// 2 is FULL (the commit waits for the disk), 1 is NORMAL.
    #[test]
    fn only_acknowledgements_and_job_started_skip_the_wait_for_the_disk() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = Store::open(dir.path()).expect("the store opens");
        assert_eq!(synchronous(&store), 2);
        let job = crate::protocol::JobRef {
            job_id: "j".to_owned(),
            attempt: 1,
        };
        let append = |index| Durable::OutboxAppend {
            index,
            event: RunnerEvent::JobAccepted { job: job.clone() }.into(),
        };
        store.commit(&[append(1), append(2)]).expect("commit");
        assert_eq!(synchronous(&store), 2);
        store
            .commit(&[Durable::OutboxAcked { up_to: 1 }])
            .expect("commit");
        assert_eq!(synchronous(&store), 1);
        // An ack in the same batch as anything else waits with it.
        store
            .commit(&[Durable::OutboxAcked { up_to: 2 }, append(3)])
            .expect("commit");
        assert_eq!(synchronous(&store), 2);
        store
            .commit(&[Durable::LastApplied { index: 4 }])
            .expect("commit");
        assert_eq!(synchronous(&store), 2);
        assert_eq!(store.outbox_depth().expect("depth"), 1);
        let spec = job_spec("j");
        let start = |index| Durable::OutboxAppend {
            index,
            event: started(&spec, 42).into(),
        };
        store.commit(&[start(4)]).expect("commit");
        assert_eq!(synchronous(&store), 1);
        store
            .commit(&[start(5), Durable::LastApplied { index: 5 }])
            .expect("commit");
        assert_eq!(synchronous(&store), 2);
    }

    fn file_holds(path: &Path, needle: &[u8]) -> bool {
        std::fs::read(path)
            .unwrap_or_default()
            .windows(needle.len())
            .any(|window| window == needle)
    }

    /// Acknowledged output leaves the outbox without zeroing (its bytes are in the
    /// job's logs), but a job spec removed in the same batch, after the ack, is still
    /// zeroed: a spec large enough to spill into overflow pages is exactly what `FAST`
    /// would leave behind if `ack_events` did not set `secure_delete` back on.
    #[test]
    fn a_removed_spec_is_zeroed_even_after_an_acknowledgement_in_its_batch() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = Store::open(dir.path()).expect("the store opens");
        let needle = "needle-of-the-job-environment-";
        let mut spec = job_spec("j");
        spec.env
            .insert("SECRET".to_owned(), needle.repeat(8 * 1024 / needle.len()));
        let output = RunnerEvent::JobOutput {
            job: spec.job_ref(),
            stream: OutputStream::Stdout,
            offset: 0,
            data: "aGVsbG8K".to_owned(),
        };
        store
            .commit(&[
                Durable::JobAdded { job: spec.clone() },
                Durable::OutboxAppend {
                    index: 1,
                    event: output.into(),
                },
            ])
            .expect("commit");
        assert!(file_holds(
            &dir.path().join(format!("{DB_FILE}-wal")),
            needle.as_bytes()
        ));
        store
            .commit(&[
                Durable::OutboxAcked { up_to: 1 },
                Durable::JobRemoved {
                    job: spec.job_ref(),
                },
            ])
            .expect("commit");
        for name in [DB_FILE.to_owned(), format!("{DB_FILE}-wal")] {
            assert!(
                !file_holds(&dir.path().join(&name), needle.as_bytes()),
                "{name} still holds the removed spec's environment"
            );
        }
    }

    /// A power cut takes back a `job_started` the API may already hold: the job comes
    /// back without its pid (so it is reported lost) and the next event index is past
    /// the one that event used, so the API cannot drop the report as a duplicate.
    #[test]
    fn a_job_started_taken_back_by_a_power_cut_never_has_its_index_reused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = Store::open(dir.path()).expect("the store opens");
        let (running, starting) = (job_spec("running"), job_spec("starting"));
        let accepted = |job: &JobSpec, index| {
            vec![
                Durable::JobAdded { job: job.clone() },
                Durable::OutboxAppend {
                    index,
                    event: RunnerEvent::JobAccepted { job: job.job_ref() }.into(),
                },
            ]
        };
        store.commit(&accepted(&running, 1)).expect("commit");
        store
            .commit(&[Durable::OutboxAppend {
                index: 2,
                event: started(&running, 7).into(),
            }])
            .expect("commit");
        // Waited for the disk: also makes the start of `running` durable.
        store.commit(&accepted(&starting, 3)).expect("commit");
        let disk = copy_of_disk(dir.path());
        store
            .commit(&[Durable::OutboxAppend {
                index: 4,
                event: started(&starting, 8).into(),
            }])
            .expect("commit");

        // The runner's own crash keeps everything committed.
        drop(store);
        let after_crash = Store::open(dir.path()).expect("the store opens");
        assert_eq!(after_crash.load().expect("load").last_event_index, 4);
        assert_eq!(after_crash.job_pids().expect("pids").len(), 2);

        let after_power_cut = Store::open(disk.path()).expect("the copy opens");
        let state = after_power_cut.load().expect("load");
        assert_eq!(state.jobs.len(), 2);
        let pids = after_power_cut.job_pids().expect("pids");
        assert_eq!(pids, vec![(running.job_ref(), 7)]);
        assert_eq!(
            state.last_event_index, 4,
            "index 4 may be at the API already"
        );
    }

    /// What a runner restarted while a job runs on resumes from: how far each stream
    /// was taken into the outbox, kept with the events themselves.
    #[test]
    fn how_far_each_stream_was_reported_is_kept_with_its_events() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = Store::open(dir.path()).expect("the store opens");
        let spec = job_spec("j");
        let job = spec.job_ref();
        let output = |index, stream, offset, data: &str| Durable::OutboxAppend {
            index,
            event: RunnerEvent::JobOutput {
                job: job.clone(),
                stream,
                offset,
                data: data.to_owned(),
            }
            .into(),
        };
        store
            .commit(&[
                Durable::JobAdded { job: spec.clone() },
                // "hello" and "hi\n" in base64: 5 and 3 bytes.
                output(1, OutputStream::Stdout, 0, "aGVsbG8="),
                output(2, OutputStream::Stderr, 0, "aGkK"),
                output(3, OutputStream::Stdout, 5, "IHdvcmxk"),
            ])
            .expect("commit");
        store
            .commit(&[
                Durable::OutboxAppend {
                    index: 4,
                    event: RunnerEvent::JobOutputTruncated {
                        job: job.clone(),
                        stream: OutputStream::Stderr,
                        offset: 3,
                    }
                    .into(),
                },
                Durable::OutboxAcked { up_to: 4 },
            ])
            .expect("commit");
        // Acknowledged events leave the outbox; the progress stays with the job.
        assert_eq!(store.outbox_depth().expect("depth"), 0);
        drop(store);
        let store = Store::open(dir.path()).expect("the store opens again");
        let progress = store.job_progress().expect("progress");
        assert_eq!(
            progress,
            vec![(
                job,
                OutputProgress {
                    stdout: StreamProgress {
                        sent: 11,
                        cut: false
                    },
                    stderr: StreamProgress { sent: 3, cut: true },
                }
            )]
        );
        assert_eq!(base64_len(""), 0);
        assert_eq!(base64_len("YQ=="), 1);
        assert_eq!(base64_len("YWI="), 2);
    }

    #[test]
    fn unsent_events_move_up_past_the_apis_in_order_and_numbering_follows() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = Store::open(dir.path()).expect("the store opens");
        let job = |id: &str| crate::protocol::JobRef {
            job_id: id.to_owned(),
            attempt: 1,
        };
        let append = |index, id: &str| Durable::OutboxAppend {
            index,
            event: RunnerEvent::JobAccepted { job: job(id) }.into(),
        };
        // 1 and 2 were sent before the copy was taken; 3 and 4 were made since.
        store
            .commit(&[
                append(1, "a"),
                append(2, "b"),
                append(3, "c"),
                append(4, "d"),
            ])
            .expect("commit");
        // The API holds up to 6 (3 and 4 of the lost timeline, and more).
        let renumber = Durable::OutboxRenumbered {
            sent_up_to: 2,
            api_last: 6,
        };
        store
            .commit(&[renumber, Durable::OutboxAcked { up_to: 6 }])
            .expect("commit");
        let left = store.outbox_after(0).expect("read");
        assert_eq!(
            left,
            vec![
                (7, RunnerEvent::JobAccepted { job: job("c") }),
                (8, RunnerEvent::JobAccepted { job: job("d") })
            ]
        );
        assert_eq!(store.load().expect("load").last_event_index, 8);
        // An index the renumbered events now hold is refused; the next one is fine.
        assert!(store.commit(&[append(8, "e")]).is_err());
        store.commit(&[append(9, "e")]).expect("numbering goes on");
    }

    #[test]
    fn renumbering_starts_above_the_index_a_job_without_a_pid_holds_in_reserve() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = Store::open(dir.path()).expect("the store opens");
        let spec = job_spec("j");
        let accepted = Durable::OutboxAppend {
            index: 1,
            event: RunnerEvent::JobAccepted {
                job: spec.job_ref(),
            }
            .into(),
        };
        store
            .commit(&[Durable::JobAdded { job: spec.clone() }, accepted])
            .expect("commit");
        // 1 is on disk; 2 is held in reserve for the job's `job_started`, which a power
        // cut may have taken back after the API got it.
        let sent_up_to = store.load().expect("load").last_event_index;
        assert_eq!(sent_up_to, 2);
        let renumber = Durable::OutboxRenumbered {
            sent_up_to,
            api_last: 4,
        };
        store
            .commit(&[renumber, Durable::OutboxAcked { up_to: 4 }])
            .expect("commit");
        let append = |index| Durable::OutboxAppend {
            index,
            event: started(&spec, 7).into(),
        };
        assert!(store.commit(&[append(4)]).is_err(), "4 is the API's");
        store.commit(&[append(5)]).expect("numbering goes on");
    }
}
