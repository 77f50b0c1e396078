//! Jobs and their output: rows, the job table's statements, and reading output back a
//! bounded range at a time.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Row, params};

use super::{Store, StoreError, get_opt_u64, get_u64, int, stream_name};
use crate::devserver::api::JobState;
use crate::protocol::{ExitStatus, JobOutcome, OutputStream};

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
    /// Where in the job's folder it starts (`JobSpec::workdir`).
    pub workdir: Option<String>,
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
            workdir: None,
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

impl Store {
    pub fn insert_job(&self, job: &JobRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO jobs (id, command, env, timeout_secs, output_limit_bytes,
                               cancel_grace_secs, state, attempt, created_ms, workdir)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                job.id,
                serde_json::to_string(&job.command)?,
                serde_json::to_string(&job.env)?,
                int(job.timeout_secs),
                int(job.output_limit_bytes),
                int(job.cancel_grace_secs),
                job.state.as_str(),
                job.attempt,
                int(job.created_ms),
                job.workdir
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

    /// A whole stream, for in-process callers that asked for all of it (tests); the
    /// admin API reads with `output_range`.
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

    /// At most `limit` bytes of a stream from byte `offset` on. Only the bytes asked
    /// for are read (`substr` on the stored chunks), so the memory this takes is bounded
    /// by `limit` whatever the job printed.
    pub fn output_range(
        &self,
        job_id: &str,
        stream: OutputStream,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let end = offset.saturating_add(limit);
        // The chunk holding `offset` starts at or before it.
        let first: Option<u64> = self
            .one(
                "SELECT pos FROM job_output WHERE job_id = ?1 AND stream = ?2 AND pos <= ?3
                 ORDER BY pos DESC LIMIT 1",
                params![job_id, stream_name(stream), int(offset)],
                |row| get_u64(row, 0),
            )
            .optional()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT substr(data, MAX(?4 - pos, 0) + 1, ?5 - MAX(pos, ?4)) FROM job_output
             WHERE job_id = ?1 AND stream = ?2 AND pos >= ?3 AND pos < ?5 ORDER BY pos",
        )?;
        let start = first.unwrap_or(offset);
        let args = params![
            job_id,
            stream_name(stream),
            int(start),
            int(offset),
            int(end)
        ];
        let mut data = Vec::new();
        let mut rows = stmt.query(args)?;
        while let Some(row) = rows.next()? {
            data.extend_from_slice(&row.get::<_, Vec<u8>>(0)?);
        }
        Ok(data)
    }

    /// A new attempt starts with no output.
    pub fn clear_output(&self, job_id: &str) -> Result<(), StoreError> {
        self.exec("DELETE FROM job_output WHERE job_id = ?1", params![job_id])?;
        Ok(())
    }
}

// ---------------------------------------------------------------- row mapping

const JOB_COLUMNS: &str = "id, command, env, timeout_secs, output_limit_bytes, cancel_grace_secs,
    state, attempt, runner_id, cancel_requested, outcome, exit_status, duration_ms, truncated,
    stdout_len, stderr_len, detail, created_ms, held_by, workdir";

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
            workdir: row.get(19)?,
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
        assert_eq!(store.job("j-1")?, Some(job.clone()));
        job.id = "j-2".to_owned();
        job.workdir = Some("sub/dir".to_owned());
        store.insert_job(&job)?;
        store.save_job(&job)?;
        assert_eq!(store.job("j-2")?.map(|j| j.workdir), Some(job.workdir));
        Ok(())
    }

    #[test]
    fn output_is_read_back_by_range() -> Result<(), StoreError> {
        let store = Store::open(None)?;
        let job = JobRow::queued(
            "j-1".into(),
            vec!["x".into()],
            BTreeMap::new(),
            (5, 100, 10),
            7,
        );
        store.insert_job(&job)?;
        store.append_output("j-1", OutputStream::Stdout, 0, b"hello ")?;
        store.append_output("j-1", OutputStream::Stdout, 6, b"world")?;
        store.append_output("j-1", OutputStream::Stderr, 0, b"err")?;
        let read = |offset, limit| store.output_range("j-1", OutputStream::Stdout, offset, limit);
        assert_eq!(read(0, 100)?, b"hello world");
        assert_eq!(read(3, 5)?, b"lo wo");
        assert_eq!(read(6, 2)?, b"wo");
        assert_eq!(read(10, 100)?, b"d");
        assert_eq!(read(11, 100)?, b"");
        assert_eq!(read(50, 100)?, b"");
        assert_eq!(read(0, 0)?, b"");
        assert_eq!(
            store.output_range("j-1", OutputStream::Stderr, 1, 9)?,
            b"rr"
        );
        Ok(())
    }
}
