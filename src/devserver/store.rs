//! SQLite storage: tokens, runners (with their keys and indexes), commands, events and
//! jobs with their output. Every SQL statement of the dev-server lives here.
//!
//! Registration tokens are stored in clear text: this is a development tool, and the
//! crate has no hash function to spare. A production control plane stores a hash.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::api::{EventRecord, JobState};
use crate::protocol::{Command, ExitStatus, JobOutcome, OutputStream};

/// Bumped when the schema changes incompatibly; an older build refuses a newer file.
const SCHEMA_VERSION: i64 = 1;

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
}

/// What `validate_token` finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenStatus {
    Unknown,
    Used,
    Valid,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunnerRow {
    pub id: String,
    pub name: String,
    pub public_key: String,
    pub version: String,
    pub slots: u32,
    pub hardware: Option<serde_json::Value>,
    pub hardware_known: bool,
    pub last_event_index: u64,
    pub next_command_index: u64,
    pub last_seen_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobRow {
    pub id: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout_secs: u64,
    pub output_limit_bytes: u64,
    pub cancel_grace_secs: u64,
    pub state: JobState,
    pub attempt: u32,
    pub runner_id: Option<String>,
    pub cancel_requested: bool,
    pub outcome: Option<JobOutcome>,
    pub exit_status: Option<ExitStatus>,
    pub duration_ms: Option<u64>,
    pub truncated: bool,
    pub stdout_len: u64,
    pub stderr_len: u64,
    pub detail: Option<String>,
    /// A runner that lost the job and may still run an older attempt of it; the job
    /// does not go back to that runner until it reports the old attempt ended.
    pub held_by: Option<String>,
    pub created_ms: u64,
}

impl JobRow {
    /// A new job, queued for its first attempt.
    pub fn queued(
        id: String,
        command: Vec<String>,
        env: BTreeMap<String, String>,
        limits: (u64, u64, u64),
        now: u64,
    ) -> Self {
        let (timeout_secs, output_limit_bytes, cancel_grace_secs) = limits;
        Self {
            id,
            command,
            env,
            timeout_secs,
            output_limit_bytes,
            cancel_grace_secs,
            state: JobState::Queued,
            attempt: 1,
            runner_id: None,
            cancel_requested: false,
            outcome: None,
            exit_status: None,
            duration_ms: None,
            truncated: false,
            stdout_len: 0,
            stderr_len: 0,
            detail: None,
            held_by: None,
            created_ms: now,
        }
    }

    pub fn output_len(&self, stream: OutputStream) -> u64 {
        match stream {
            OutputStream::Stdout => self.stdout_len,
            OutputStream::Stderr => self.stderr_len,
        }
    }

    pub fn set_output_len(&mut self, stream: OutputStream, len: u64) {
        match stream {
            OutputStream::Stdout => self.stdout_len = len,
            OutputStream::Stderr => self.stderr_len = len,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CommandRow {
    pub index: u64,
    pub command: Command,
}

pub(crate) struct Store {
    conn: Connection,
}

impl Store {
    /// Open (or create) the database; in memory when `path` is `None`.
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let conn = match path {
            Some(path) => Connection::open(path)?,
            None => Connection::open_in_memory()?,
        };
        // A restarted dev-server may briefly overlap the old one on the same file.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        if path.is_some() {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
        let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA)?;
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
            Some(Some(_)) => TokenStatus::Used,
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

    // ------------------------------------------------------------ runners

    pub fn insert_runner(&self, runner: &RunnerRow, now: u64) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO runners (id, name, public_key, version, slots, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                runner.id,
                runner.name,
                runner.public_key,
                runner.version,
                runner.slots,
                int(now)
            ],
        )?;
        Ok(())
    }

    /// Forget a runner and its commands; its events stay as history.
    pub fn delete_runner(&self, id: &str) -> Result<(), StoreError> {
        self.atomically(|store: &Self| -> Result<(), StoreError> {
            store
                .conn
                .execute("DELETE FROM commands WHERE runner_id = ?1", params![id])?;
            store
                .conn
                .execute("DELETE FROM runners WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    pub fn runner(&self, id: &str) -> Result<Option<RunnerRow>, StoreError> {
        let row = self
            .one(
                &format!("SELECT {RUNNER_COLUMNS} FROM runners WHERE id = ?1"),
                params![id],
                raw_runner,
            )
            .optional()?;
        row.map(RawRunner::parse).transpose()
    }

    pub fn runners(&self) -> Result<Vec<RunnerRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {RUNNER_COLUMNS} FROM runners ORDER BY created_ms, id"
        ))?;
        let raws = stmt
            .query_map([], raw_runner)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(RawRunner::parse).collect()
    }

    /// What the runner says about itself on every `authenticate`.
    pub fn update_runner_identity(
        &self,
        id: &str,
        name: &str,
        version: &str,
        slots: u32,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE runners SET name = ?2, version = ?3, slots = ?4 WHERE id = ?1",
            params![id, name, version, slots],
        )?;
        Ok(())
    }

    pub fn set_runner_version(&self, id: &str, version: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE runners SET version = ?2 WHERE id = ?1",
            params![id, version],
        )?;
        Ok(())
    }

    pub fn set_hardware(
        &self,
        id: &str,
        hardware: &impl serde::Serialize,
        known: bool,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE runners SET hardware = ?2, hardware_known = ?3 WHERE id = ?1",
            params![id, serde_json::to_string(hardware)?, known],
        )?;
        Ok(())
    }

    pub fn set_hardware_known(&self, id: &str, known: bool) -> Result<(), StoreError> {
        self.exec(
            "UPDATE runners SET hardware_known = ?2 WHERE id = ?1",
            params![id, known],
        )?;
        Ok(())
    }

    pub fn set_last_seen(&self, id: &str, now: u64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE runners SET last_seen_ms = ?2 WHERE id = ?1",
            params![id, int(now)],
        )?;
        Ok(())
    }

    // ------------------------------------------------------------ commands

    /// Persist a command under the runner's next index and return that index.
    pub fn append_command(
        &self,
        runner_id: &str,
        command: &Command,
        now: u64,
    ) -> Result<u64, StoreError> {
        let index: u64 = self.one(
            "UPDATE runners SET next_command_index = next_command_index + 1
             WHERE id = ?1 RETURNING next_command_index - 1",
            params![runner_id],
            |row| get_u64(row, 0),
        )?;
        self.exec(
            "INSERT INTO commands (runner_id, idx, body, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                runner_id,
                int(index),
                serde_json::to_string(command)?,
                int(now)
            ],
        )?;
        Ok(index)
    }

    /// Never issue an index the runner has already applied: after a lost database
    /// the runner would silently drop every such command as a duplicate.
    pub fn raise_next_command_index(
        &self,
        runner_id: &str,
        applied: u64,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE runners SET next_command_index = MAX(next_command_index, ?2 + 1) WHERE id = ?1",
            params![runner_id, int(applied)],
        )?;
        Ok(())
    }

    pub fn ack_command(&self, runner_id: &str, index: u64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE commands SET acked = 1 WHERE runner_id = ?1 AND idx = ?2",
            params![runner_id, int(index)],
        )?;
        Ok(())
    }

    /// `authenticate` carries the last index the runner applied: everything up to it is
    /// acknowledged, everything after it is not, whatever was recorded before.
    pub fn reset_acks(&self, runner_id: &str, last_applied: u64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE commands SET acked = (idx <= ?2) WHERE runner_id = ?1",
            params![runner_id, int(last_applied)],
        )?;
        Ok(())
    }

    pub fn unacked_commands(&self, runner_id: &str) -> Result<Vec<CommandRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, body FROM commands WHERE runner_id = ?1 AND acked = 0 ORDER BY idx",
        )?;
        let raws = stmt
            .query_map(params![runner_id], |row| {
                Ok((get_u64(row, 0)?, row.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter()
            .map(|(index, body)| {
                Ok(CommandRow {
                    index,
                    command: serde_json::from_str(&body)?,
                })
            })
            .collect()
    }

    pub fn unacked_count(&self, runner_id: &str) -> Result<u64, StoreError> {
        Ok(self.one(
            "SELECT COUNT(*) FROM commands WHERE runner_id = ?1 AND acked = 0",
            params![runner_id],
            |row| get_u64(row, 0),
        )?)
    }

    // ------------------------------------------------------------ events

    /// Store an event and raise the runner's last event index to it.
    pub fn record_event(
        &self,
        runner_id: &str,
        index: u64,
        kind: &str,
        body: &serde_json::Value,
        now: u64,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO events (runner_id, idx, kind, body, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![runner_id, int(index), kind, serde_json::to_string(body)?, int(now)],
        )?;
        self.exec(
            "UPDATE runners SET last_event_index = ?2 WHERE id = ?1",
            params![runner_id, int(index)],
        )?;
        Ok(())
    }

    pub fn events(&self, runner_id: &str) -> Result<Vec<EventRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, kind, body, received_ms FROM events WHERE runner_id = ?1 ORDER BY idx",
        )?;
        let raws = stmt
            .query_map(params![runner_id], |row| {
                Ok((
                    get_u64(row, 0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    get_u64(row, 3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter()
            .map(|(index, kind, body, received)| {
                Ok(EventRecord {
                    index,
                    kind,
                    body: serde_json::from_str(&body)?,
                    received,
                })
            })
            .collect()
    }

    // ------------------------------------------------------------ jobs

    pub fn insert_job(&self, job: &JobRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO jobs (id, command, env, timeout_secs, output_limit_bytes,
                               cancel_grace_secs, state, attempt, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                job.id,
                serde_json::to_string(&job.command)?,
                serde_json::to_string(&job.env)?,
                int(job.timeout_secs),
                int(job.output_limit_bytes),
                int(job.cancel_grace_secs),
                job.state.as_str(),
                job.attempt,
                int(job.created_ms)
            ],
        )?;
        Ok(())
    }

    /// Write back every field of a job that can change after it was submitted.
    pub fn save_job(&self, job: &JobRow) -> Result<(), StoreError> {
        let outcome = job.outcome.map(serde_json::to_value).transpose()?;
        let outcome = outcome.as_ref().and_then(|v| v.as_str()).map(str::to_owned);
        let exit_status = job
            .exit_status
            .map(|s| serde_json::to_string(&s))
            .transpose()?;
        self.exec(
            "UPDATE jobs SET state = ?2, attempt = ?3, runner_id = ?4, cancel_requested = ?5,
                outcome = ?6, exit_status = ?7, duration_ms = ?8, truncated = ?9,
                stdout_len = ?10, stderr_len = ?11, detail = ?12, held_by = ?13
             WHERE id = ?1",
            params![
                job.id,
                job.state.as_str(),
                job.attempt,
                job.runner_id,
                job.cancel_requested,
                outcome,
                exit_status,
                job.duration_ms.map(int),
                job.truncated,
                int(job.stdout_len),
                int(job.stderr_len),
                job.detail,
                job.held_by
            ],
        )?;
        Ok(())
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        let raw = self
            .one(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                raw_job,
            )
            .optional()?;
        raw.map(RawJob::parse).transpose()
    }

    pub fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        self.jobs_where("1 = 1", params![])
    }

    pub fn jobs_in_state(&self, state: JobState) -> Result<Vec<JobRow>, StoreError> {
        self.jobs_where("state = ?1", params![state.as_str()])
    }

    /// Jobs that hold one of the runner's slots.
    pub fn jobs_on_runner(&self, runner_id: &str) -> Result<Vec<JobRow>, StoreError> {
        self.jobs_where(
            "runner_id = ?1 AND state IN ('assigned', 'accepted', 'running')",
            params![runner_id],
        )
    }

    /// Jobs an older attempt of which may still run on `runner_id`.
    pub fn jobs_held_by(&self, runner_id: &str) -> Result<Vec<JobRow>, StoreError> {
        self.jobs_where("held_by = ?1", params![runner_id])
    }

    pub fn count_jobs_on_runner(&self, runner_id: &str) -> Result<u32, StoreError> {
        Ok(self.one(
            "SELECT COUNT(*) FROM jobs
             WHERE runner_id = ?1 AND state IN ('assigned', 'accepted', 'running')",
            params![runner_id],
            |row| row.get(0),
        )?)
    }

    fn jobs_where(
        &self,
        condition: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<JobRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE {condition} ORDER BY seq"
        ))?;
        let raws = stmt
            .query_map(args, raw_job)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(RawJob::parse).collect()
    }

    pub fn append_output(
        &self,
        job_id: &str,
        stream: OutputStream,
        pos: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT OR REPLACE INTO job_output (job_id, stream, pos, data) VALUES (?1, ?2, ?3, ?4)",
            params![job_id, stream_name(stream), int(pos), data],
        )?;
        Ok(())
    }

    pub fn output(&self, job_id: &str, stream: OutputStream) -> Result<Vec<u8>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT data FROM job_output WHERE job_id = ?1 AND stream = ?2 ORDER BY pos",
        )?;
        let chunks = stmt
            .query_map(params![job_id, stream_name(stream)], |row| {
                row.get::<_, Vec<u8>>(0)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(chunks.concat())
    }

    /// A new attempt starts with no output.
    pub fn clear_output(&self, job_id: &str) -> Result<(), StoreError> {
        self.exec("DELETE FROM job_output WHERE job_id = ?1", params![job_id])?;
        Ok(())
    }
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

// ---------------------------------------------------------------- row mapping
// Rows are read as raw column values first (rusqlite's error type), then parsed into
// the typed rows (our error type), so a corrupt JSON column is a clear StoreError.

const RUNNER_COLUMNS: &str = "id, name, public_key, version, slots, hardware, hardware_known,
    last_event_index, next_command_index, last_seen_ms";

struct RawRunner {
    row: RunnerRow,
    hardware: Option<String>,
}

fn raw_runner(row: &Row<'_>) -> rusqlite::Result<RawRunner> {
    Ok(RawRunner {
        row: RunnerRow {
            id: row.get(0)?,
            name: row.get(1)?,
            public_key: row.get(2)?,
            version: row.get(3)?,
            slots: row.get(4)?,
            hardware: None,
            hardware_known: row.get(6)?,
            last_event_index: get_u64(row, 7)?,
            next_command_index: get_u64(row, 8)?,
            last_seen_ms: get_opt_u64(row, 9)?,
        },
        hardware: row.get(5)?,
    })
}

impl RawRunner {
    fn parse(self) -> Result<RunnerRow, StoreError> {
        let mut row = self.row;
        row.hardware = self
            .hardware
            .map(|text| serde_json::from_str(&text))
            .transpose()?;
        Ok(row)
    }
}

const JOB_COLUMNS: &str = "id, command, env, timeout_secs, output_limit_bytes, cancel_grace_secs,
    state, attempt, runner_id, cancel_requested, outcome, exit_status, duration_ms, truncated,
    stdout_len, stderr_len, detail, created_ms, held_by";

struct RawJob {
    row: JobRow,
    command: String,
    env: String,
    state: String,
    outcome: Option<String>,
    exit_status: Option<String>,
}

fn raw_job(row: &Row<'_>) -> rusqlite::Result<RawJob> {
    Ok(RawJob {
        row: JobRow {
            id: row.get(0)?,
            command: Vec::new(),
            env: BTreeMap::new(),
            timeout_secs: get_u64(row, 3)?,
            output_limit_bytes: get_u64(row, 4)?,
            cancel_grace_secs: get_u64(row, 5)?,
            state: JobState::Queued,
            attempt: row.get(7)?,
            runner_id: row.get(8)?,
            cancel_requested: row.get(9)?,
            outcome: None,
            exit_status: None,
            duration_ms: get_opt_u64(row, 12)?,
            truncated: row.get(13)?,
            stdout_len: get_u64(row, 14)?,
            stderr_len: get_u64(row, 15)?,
            detail: row.get(16)?,
            created_ms: get_u64(row, 17)?,
            held_by: row.get(18)?,
        },
        command: row.get(1)?,
        env: row.get(2)?,
        state: row.get(6)?,
        outcome: row.get(10)?,
        exit_status: row.get(11)?,
    })
}

impl RawJob {
    fn parse(self) -> Result<JobRow, StoreError> {
        let mut row = self.row;
        row.command = serde_json::from_str(&self.command)?;
        row.env = serde_json::from_str(&self.env)?;
        row.state = JobState::parse(&self.state).ok_or(StoreError::BadValue {
            column: "jobs.state",
            value: self.state,
        })?;
        row.outcome = self
            .outcome
            .map(|o| serde_json::from_value(serde_json::Value::String(o)))
            .transpose()?;
        row.exit_status = self
            .exit_status
            .map(|s| serde_json::from_str(&s))
            .transpose()?;
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn tokens_are_single_use() -> Result<(), StoreError> {
        let store = Store::open(None)?;
        store.insert_token("t", 1)?;
        assert_eq!(store.token_status("t")?, TokenStatus::Valid);
        assert_eq!(store.token_status("x")?, TokenStatus::Unknown);
        store.insert_runner(&runner("r-1"), 1)?;
        assert!(store.consume_token("t", "r-1", 2)?);
        assert!(!store.consume_token("t", "r-1", 3)?);
        assert_eq!(store.token_status("t")?, TokenStatus::Used);
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

    #[test]
    fn jobs_round_trip() -> Result<(), StoreError> {
        let store = Store::open(None)?;
        let mut job = JobRow::queued(
            "j-1".to_owned(),
            vec!["true".to_owned()],
            BTreeMap::from([("A".to_owned(), "b".to_owned())]),
            (5, 100, 10),
            7,
        );
        store.insert_job(&job)?;
        job.state = JobState::Finished;
        job.outcome = Some(JobOutcome::TimedOut);
        job.exit_status = Some(ExitStatus::Signaled { signal: 9 });
        job.runner_id = Some("r-1".to_owned());
        store.save_job(&job)?;
        assert_eq!(store.job("j-1")?, Some(job));
        Ok(())
    }
}
