//! SQLite storage: tokens, runners (with their keys and indexes), commands, events,
//! jobs with their output, and a job's side (blobs, reports, key-value, results).
//! Every SQL statement of the dev-server lives here.
//!
//! Registration tokens are stored in clear text: this is a development tool, and the
//! crate has no hash function to spare. A production control plane stores a hash. So
//! the database file is made private (0600) and kept so.

mod commands;
mod job_side;
mod jobs;
mod runners;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::platform::{self, Access};
use crate::protocol::OutputStream;

pub(crate) use commands::StoredCommand;
pub(crate) use job_side::DeclaredFiles;
pub(crate) use jobs::JobRow;
pub(crate) use runners::{RunnerLoad, RunnerRow};

/// Bumped when the schema changes incompatibly; an older build refuses a newer file.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    token      TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    used_by    TEXT,
    used_ms    INTEGER
);
CREATE TABLE IF NOT EXISTS runners (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    public_key         TEXT NOT NULL,
    version            TEXT NOT NULL,
    slots              INTEGER NOT NULL,
    hardware           TEXT,
    hardware_known     INTEGER NOT NULL DEFAULT 0,
    last_event_index   INTEGER NOT NULL DEFAULT 0,
    next_command_index INTEGER NOT NULL DEFAULT 1,
    last_seen_ms       INTEGER,
    created_ms         INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    runner_id  TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    body       TEXT NOT NULL,
    acked      INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (runner_id, idx)
);
CREATE TABLE IF NOT EXISTS events (
    runner_id   TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (runner_id, idx)
);
CREATE TABLE IF NOT EXISTS jobs (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT NOT NULL UNIQUE,
    command            TEXT NOT NULL,
    env                TEXT NOT NULL,
    timeout_secs       INTEGER NOT NULL,
    output_limit_bytes INTEGER NOT NULL,
    cancel_grace_secs  INTEGER NOT NULL,
    state              TEXT NOT NULL,
    attempt            INTEGER NOT NULL,
    runner_id          TEXT,
    cancel_requested   INTEGER NOT NULL DEFAULT 0,
    outcome            TEXT,
    exit_status        TEXT,
    duration_ms        INTEGER,
    truncated          INTEGER NOT NULL DEFAULT 0,
    stdout_len         INTEGER NOT NULL DEFAULT 0,
    stderr_len         INTEGER NOT NULL DEFAULT 0,
    detail             TEXT,
    held_by            TEXT,
    workdir            TEXT,
    created_ms         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_output (
    job_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    pos    INTEGER NOT NULL,
    data   BLOB NOT NULL,
    PRIMARY KEY (job_id, stream, pos)
);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored value {value:?} in {column} is not valid")]
    BadValue { column: &'static str, value: String },
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    NewerSchema { found: i64, supported: i64 },
    #[error("cannot make the database file {path} private: {source}")]
    Private {
        path: String,
        source: std::io::Error,
    },
}

/// What `validate_token` finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenStatus {
    Unknown,
    /// Spent by this runner (which may be retrying its registration).
    Used {
        runner_id: String,
    },
    Valid,
}

pub(crate) struct Store {
    conn: Connection,
}

impl Store {
    /// Open (or create) the database; in memory when `path` is `None`.
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let conn = match path {
            Some(path) => {
                make_private(path)?;
                Connection::open(path)?
            }
            None => Connection::open_in_memory()?,
        };
        // A restarted dev-server may briefly overlap the old one on the same file.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        if path.is_some() {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
        // Every commit waits for the disk (SQLite's default, said here because
        // `softly` relaxes it for one transaction and puts this back).
        conn.pragma_update(None, "synchronous", "FULL")?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA)?;
        // Version 3 added the job side's tables (blobs, declarations, reports, results).
        conn.execute_batch(job_side::SCHEMA)?;
        if found == 1 {
            // Version 2 added the jobs' workdir.
            conn.execute_batch("ALTER TABLE jobs ADD COLUMN workdir TEXT")?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        // Room for every statement `exec` and `one` run, so none is parsed twice.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Self { conn })
    }

    /// One statement, prepared once per connection: the dev-server runs the same few
    /// statements for every frame, and parsing them each time was most of its work.
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.conn.prepare_cached(sql)?.execute(params)
    }

    /// A query for one row, through the same statement cache.
    fn one<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.conn.prepare_cached(sql)?.query_row(params, row)
    }

    /// Run `f` in one transaction that does not wait for the disk, for soft state: when
    /// a runner was last seen, what it said when it authenticated. Losing such a write
    /// in a power cut costs nothing (the runner says it again at its next heartbeat,
    /// startup or authentication, and after a restart each authenticates first), and
    /// a fleet's heartbeats and reconnects no longer queue, one disk sync each, behind
    /// the store's lock. In WAL mode the commit is still atomic and in order; it is on disk with
    /// the next commit that waits (every other one) or the next checkpoint.
    pub fn softly<T, E>(&self, f: impl FnOnce(&Self) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(StoreError::from)?;
        let result = self.atomically(f);
        let restored = self.conn.pragma_update(None, "synchronous", "FULL");
        let value = result?;
        restored.map_err(StoreError::from)?;
        Ok(value)
    }

    /// Run `f` in one transaction: all of it is stored, or none of it.
    pub fn atomically<T, E>(&self, f: impl FnOnce(&Self) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(StoreError::from)?;
        let value = f(self)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    // ------------------------------------------------------------ tokens

    pub fn insert_token(&self, token: &str, now: u64) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO tokens (token, created_ms) VALUES (?1, ?2)",
            params![token, int(now)],
        )?;
        Ok(())
    }

    pub fn token_status(&self, token: &str) -> Result<TokenStatus, StoreError> {
        let used: Option<Option<String>> = self
            .one(
                "SELECT used_by FROM tokens WHERE token = ?1",
                params![token],
                |row| row.get(0),
            )
            .optional()?;
        Ok(match used {
            None => TokenStatus::Unknown,
            Some(Some(runner_id)) => TokenStatus::Used { runner_id },
            Some(None) => TokenStatus::Valid,
        })
    }

    /// Mark the token used by `runner_id`; false when it was used (or vanished) since
    /// it was validated, so two connections cannot both register with it.
    pub fn consume_token(
        &self,
        token: &str,
        runner_id: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        let changed = self.exec(
            "UPDATE tokens SET used_by = ?2, used_ms = ?3 WHERE token = ?1 AND used_by IS NULL",
            params![token, runner_id, int(now)],
        )?;
        Ok(changed == 1)
    }
}

/// The database holds registration tokens and runner keys in clear text: create it
/// 0600 (SQLite gives its `-wal` and `-shm` files the same mode), and narrow a file an
/// older build left readable to others.
fn make_private(path: &Path) -> Result<(), StoreError> {
    let failed = |source| StoreError::Private {
        path: path.display().to_string(),
        source,
    };
    let existed = path.exists();
    let mut options = platform::open_options(Access::Private);
    options.read(true).write(true).create(true);
    options.open(path).map_err(failed)?;
    if !existed {
        return platform::finish_new_file(path, Access::Private).map_err(failed);
    }
    for file in [
        path.to_owned(),
        suffixed(path, "-wal"),
        suffixed(path, "-shm"),
    ] {
        if file.exists() && !is_private(&file) {
            tracing::warn!(path = %file.display(), "the database file was readable by others; made it private");
            platform::set_access(&file, Access::Private).map_err(failed)?;
        }
    }
    Ok(())
}

fn suffixed(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

#[cfg(unix)]
fn is_private(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 == 0)
}

/// Windows: a file created by an older build keeps its ACL; new files get a private one.
#[cfg(not(unix))]
fn is_private(_path: &Path) -> bool {
    true
}

// SQLite integers are i64, and rusqlite maps u64 only with a feature this crate does
// not enable. Every u64 here (times, indexes, sizes) is far below i64::MAX, so the
// conversions saturate instead of failing.

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn get_u64(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    Ok(u64::try_from(row.get::<_, i64>(index)?).unwrap_or(0))
}

fn get_opt_u64(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row
        .get::<_, Option<i64>>(index)?
        .map(|value| u64::try_from(value).unwrap_or(0)))
}

fn stream_name(stream: OutputStream) -> &'static str {
    match stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;

    fn runner(id: &str) -> RunnerRow {
        RunnerRow {
            id: id.to_owned(),
            name: "n".to_owned(),
            public_key: "k".to_owned(),
            version: "v".to_owned(),
            slots: 2,
            hardware: None,
            hardware_known: false,
            last_event_index: 0,
            next_command_index: 1,
            last_seen_ms: None,
        }
    }

    fn synchronous(store: &Store) -> i64 {
        store
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .unwrap_or(-1)
    }

    /// A soft write is stored like any other, and the next commit waits for the disk
    /// again (2 is FULL), whether the soft one succeeded or failed.
    #[test]
    fn soft_writes_are_stored_and_the_next_commit_waits_again() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|source| StoreError::Private {
            path: "a temporary folder".to_owned(),
            source,
        })?;
        let store = Store::open(Some(&dir.path().join("dev.db")))?;
        assert_eq!(synchronous(&store), 2);
        store.insert_runner(&runner("r-1"), 1)?;
        store.softly(|s| s.set_last_seen("r-1", 42))?;
        assert_eq!(synchronous(&store), 2);
        assert_eq!(store.runner("r-1")?.and_then(|r| r.last_seen_ms), Some(42));
        let failed: Result<(), StoreError> = store.softly(|s| {
            s.set_last_seen("r-1", 43)?;
            Err(StoreError::BadValue {
                column: "a test's",
                value: "refused".to_owned(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(synchronous(&store), 2);
        assert_eq!(
            store.runner("r-1")?.and_then(|r| r.last_seen_ms),
            Some(42),
            "rolled back"
        );
        Ok(())
    }

    #[test]
    fn tokens_are_single_use() -> Result<(), StoreError> {
        let store = Store::open(None)?;
        store.insert_token("t", 1)?;
        assert_eq!(store.token_status("t")?, TokenStatus::Valid);
        assert_eq!(store.token_status("x")?, TokenStatus::Unknown);
        store.insert_runner(&runner("r-1"), 1)?;
        assert!(store.consume_token("t", "r-1", 2)?);
        assert!(!store.consume_token("t", "r-1", 3)?);
        assert_eq!(
            store.token_status("t")?,
            TokenStatus::Used {
                runner_id: "r-1".to_owned()
            }
        );
        Ok(())
    }

    #[test]
    fn command_indexes_count_up_and_acks_reset() -> Result<(), StoreError> {
        let store = Store::open(None)?;
        store.insert_runner(&runner("r-1"), 1)?;
        let drain = Command::Drain {
            deadline_secs: None,
        };
        assert_eq!(store.append_command("r-1", &drain, 1)?, 1);
        assert_eq!(store.append_command("r-1", &drain, 1)?, 2);
        store.raise_next_command_index("r-1", 9)?;
        assert_eq!(store.append_command("r-1", &drain, 1)?, 10);
        store.reset_acks("r-1", 2)?;
        let pending: Vec<u64> = store
            .unacked_commands("r-1")?
            .iter()
            .map(|c| c.index)
            .collect();
        assert_eq!(pending, vec![10]);
        store.ack_command("r-1", 10)?;
        assert_eq!(store.unacked_count("r-1")?, 0);
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn the_database_file_is_private() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let mode = |path: &Path| std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777);
        let path = dir.path().join("dev.db");
        let store = Store::open(Some(&path))?;
        store.insert_token("secret", 1)?;
        assert_eq!(mode(&path)?, 0o600);
        assert_eq!(
            mode(&suffixed(&path, "-wal"))?,
            0o600,
            "SQLite copies the mode"
        );
        drop(store);

        // A file an older build left world-readable is narrowed.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Store::open(Some(&path))?;
        assert_eq!(mode(&path)?, 0o600);
        Ok(())
    }

    #[test]
    fn a_version_1_database_is_upgraded() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path)?;
            conn.execute_batch(&SCHEMA.replace("    workdir            TEXT,\n", ""))?;
            conn.pragma_update(None, "user_version", 1)?;
        }
        let store = Store::open(Some(&path))?;
        let mut job = JobRow::queued(
            "j-1".into(),
            vec!["x".into()],
            Default::default(),
            (1, 1, 1),
            1,
        );
        job.workdir = Some("w".into());
        store.insert_job(&job)?;
        assert_eq!(
            store.job("j-1")?.and_then(|j| j.workdir),
            Some("w".to_owned())
        );
        Ok(())
    }
}
