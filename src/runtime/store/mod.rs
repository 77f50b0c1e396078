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
//!
//! Here: opening, migrating, loading and committing; `schema.rs` the migrations,
//! `reads.rs` what is read back (the outbox, and what a start needs), `writes.rs` what
//! each write of a batch does inside its transaction.

mod reads;
mod schema;
#[cfg(test)]
mod tests;
mod writes;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::secure_fs::{self, SecureFsError};
use crate::core::{Durable, DurableState};
use crate::protocol::JobRef;
use schema::MIGRATIONS;
use writes::{apply, may_be_undone_by_power_loss};

pub const DB_FILE: &str = "runner.db";

/// The schema version this build writes, kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: u32 = 6;

/// How long a write waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
        if !file.exists() {
            build_new(state_dir, &file)?;
        }
        secure_fs::ensure_private_file(&file)?;
        let path = file.display().to_string();
        let conn = Connection::open(&file).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::setup(conn, path, true, true)
    }

    /// A store that lives and dies with this value: for tests and dry runs.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let path = ":memory:".to_owned();
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::setup(conn, path, false, true)
    }

    /// `waits_for_disk`: whether a commit returns only once it is on disk (FULL), or
    /// nothing waits (OFF: only for a store being built, see `build_new`).
    fn setup(
        conn: Connection,
        path: String,
        on_disk: bool,
        waits_for_disk: bool,
    ) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        // FULL: a commit is on disk before `commit` returns, even in WAL mode. Set
        // before the switch to WAL, which writes the header of a new file; the switch is
        // the first statement that reads the header, so a corrupt file fails there.
        let synchronous = if waits_for_disk { "FULL" } else { "OFF" };
        let mode: String = conn
            .pragma_update(None, "synchronous", synchronous)
            .and_then(|()| {
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            })
            .map_err(open_err)?;
        if on_disk && !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal { path, mode });
        }
        conn.busy_timeout(BUSY_TIMEOUT)
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
            waits_for_disk,
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
    fn forget_old_pages(&mut self) {
        let checkpoint = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
        match checkpoint {
            Ok(0) => self.begin_next_wal(),
            Ok(_) => {
                tracing::debug!(store = %self.path, "checkpoint blocked by a reader; the WAL keeps old pages until the next one")
            }
            Err(error) => {
                tracing::warn!(store = %self.path, %error, "cannot checkpoint the store; the WAL keeps old pages until the next checkpoint")
            }
        }
    }

    /// After a checkpoint that truncated it, the WAL's next commit first writes a new
    /// header and waits for the disk to hold it (SQLite does so at any `synchronous`
    /// level but OFF): a second disk sync in that commit, which is most often the next
    /// job's acceptance, on its way to the job's start (measured: 0.2 ms of a 2.5 ms
    /// start). Rewriting the schema version, unchanged and without waiting for its own
    /// frame, pays that sync now, at the end of a job. A failure costs only that sync
    /// later.
    fn begin_next_wal(&mut self) {
        let rewrite = self.wait_for_disk(false).and_then(|()| {
            self.conn
                .pragma_update(None, "user_version", SCHEMA_VERSION)
        });
        if let Err(error) = rewrite {
            tracing::debug!(store = %self.path, %error, "cannot start the next WAL ahead; the next commit will");
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

/// Builds a new store at `file`: the schema written into a private file of its own
/// (mode 0600; on Windows a private access list) without waiting for the disk, that
/// file synced once, renamed into place, and the folder synced. A crash before the
/// rename leaves only the unfinished file, which the next start replaces; after it,
/// the store is whole. Building it in place cost a runner's first start eight disk
/// syncs (the file's folder, SQLite's switch to WAL through its rollback journal, the
/// schema's commit); this costs two, and a fleet starting at once pays them all.
fn build_new(state_dir: &Path, file: &Path) -> Result<(), StoreError> {
    let building = file.with_extension("db.new");
    let create_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Create { path, source }
    };
    for leftover in [building.clone(), wal_path(&building)] {
        match std::fs::remove_file(&leftover) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(create_err(&leftover)(error));
            }
            _ => {}
        }
    }
    drop(secure_fs::create_private_file(&building)?);
    let path = building.display().to_string();
    let conn = Connection::open(&building).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    // Nothing waits for the disk while the file is not yet the store.
    let store = Store::setup(conn, path.clone(), true, false)?;
    // Closing the only connection copies the WAL into the file and removes it, so
    // the one file is the whole store.
    drop(store);
    if wal_path(&building).exists() {
        return Err(StoreError::Corrupt {
            path,
            what: "the new store".into(),
            detail: "its WAL was not folded into the file when it was closed".into(),
        });
    }
    std::fs::File::open(&building)
        .and_then(|built| built.sync_all())
        .map_err(create_err(&building))?;
    crate::platform::replace_file(&building, file).map_err(create_err(file))?;
    secure_fs::sync_dir(state_dir)?;
    Ok(())
}

/// Where SQLite keeps the WAL of the database `file`.
fn wal_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn to_sql_int(value: u64) -> Result<i64, StoreFault> {
    i64::try_from(value).map_err(|_| StoreFault::OutOfRange(value))
}
