//! What the store reads back: the outbox to resend, and at start what the core and
//! the job supervisor need (running jobs, ended attempts, output progress, key-value
//! writes, pids). Reads only; every write goes through `Store::commit`.

use rusqlite::OptionalExtension;

use super::{KvWritten, Store, StoreError, StoreFault, to_sql_int};
use crate::core::{ENDED_ATTEMPTS_KEPT, OutputDone};
use crate::protocol::{JobRef, JobSpec, RunnerEvent};
use crate::runtime::jobs::{OutputProgress, StreamProgress};

impl Store {
    /// A read's failure, naming the store and what was read.
    fn read_failed(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        let path = self.path.clone();
        move |source| StoreError::Read {
            path,
            what,
            source: source.into(),
        }
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
            .map_err(self.read_failed("outbox depth"))?;
        Ok(count.unsigned_abs())
    }

    pub(super) fn select_outbox(
        &self,
        after: i64,
        limit: u32,
    ) -> rusqlite::Result<Vec<(i64, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT idx, body FROM outbox WHERE idx > ?1 ORDER BY idx LIMIT ?2")?;
        let rows = stmt.query_map(rusqlite::params![after, i64::from(limit)], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        rows.collect()
    }

    pub(super) fn decode_event(
        &self,
        idx: i64,
        body: &str,
    ) -> Result<(u64, RunnerEvent), StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("outbox event {idx}"),
            detail,
        };
        let index = u64::try_from(idx).map_err(|_| corrupt("negative index".into()))?;
        let event = serde_json::from_str(body).map_err(|e| corrupt(e.to_string()))?;
        Ok((index, event))
    }

    pub(super) fn meta(&self, key: &'static str) -> Result<u64, StoreError> {
        let value: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(self.read_failed(key))?;
        u64::try_from(value.unwrap_or(0)).map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            what: key.to_owned(),
            detail: "negative value".into(),
        })
    }

    pub(super) fn jobs(&self) -> Result<Vec<JobSpec>, StoreError> {
        let rows = self.select_jobs().map_err(self.read_failed("jobs"))?;
        rows.into_iter()
            .map(|(id, attempt, spec)| self.decode_job(id, attempt, &spec))
            .collect()
    }

    /// The attempts that ended here, oldest first, at most `ENDED_ATTEMPTS_KEPT`.
    pub(super) fn ended_attempts(&self) -> Result<Vec<JobRef>, StoreError> {
        let read = || -> rusqlite::Result<Vec<JobRef>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT job_id, attempt FROM ended_attempts ORDER BY seq DESC LIMIT ?1",
            )?;
            let kept = i64::try_from(ENDED_ATTEMPTS_KEPT).unwrap_or(i64::MAX);
            let rows = stmt.query_map([kept], job_ref)?;
            let mut newest_first = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            newest_first.reverse();
            Ok(newest_first)
        };
        read().map_err(self.read_failed("ended attempts"))
    }

    /// Jobs whose `job_started` is not on record: it was never sent, or its batch (not
    /// waited for) was taken back by a power cut after it was sent.
    pub(super) fn jobs_without_pid(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .conn
            .query_row("SELECT count(*) FROM jobs WHERE pid IS NULL", [], |row| {
                row.get(0)
            })
            .map_err(self.read_failed("jobs"))?;
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
                let job = job_ref(row)?;
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
        read().map_err(self.read_failed("jobs"))
    }

    /// The output files of running jobs whose upload is over.
    pub(super) fn outputs_done(&self) -> Result<Vec<OutputDone>, StoreError> {
        let read = || -> rusqlite::Result<Vec<OutputDone>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT job_id, attempt, path, uploaded FROM outputs_done ORDER BY rowid",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(OutputDone {
                    job: job_ref(row)?,
                    path: row.get(2)?,
                    uploaded: row.get(3)?,
                })
            })?;
            rows.collect()
        };
        read().map_err(self.read_failed("uploaded outputs"))
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
                    job: job_ref(row)?,
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
        read().map_err(self.read_failed("key-value writes"))
    }

    /// The pid each stored job was started with, if it got that far.
    pub fn job_pids(&self) -> Result<Vec<(JobRef, u32)>, StoreError> {
        let read = || -> rusqlite::Result<Vec<(JobRef, u32)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT job_id, attempt, pid FROM jobs WHERE pid IS NOT NULL ORDER BY job_id",
            )?;
            let rows = stmt.query_map([], |row| {
                let job = job_ref(row)?;
                Ok((job, row.get(2)?))
            })?;
            rows.collect()
        };
        read().map_err(self.read_failed("jobs"))
    }

    pub(super) fn select_jobs(&self) -> rusqlite::Result<Vec<(String, i64, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT job_id, attempt, spec FROM jobs ORDER BY job_id")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        rows.collect()
    }

    /// The key columns are checked against the JSON so a hand-edited row cannot
    /// resurrect a job under another ID or attempt.
    pub(super) fn decode_job(
        &self,
        id: String,
        attempt: i64,
        spec: &str,
    ) -> Result<JobSpec, StoreError> {
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

/// The job a row names in its first two columns (`job_id`, `attempt`), as every table
/// that keeps something per attempt has them.
fn job_ref(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRef> {
    Ok(JobRef {
        job_id: row.get(0)?,
        attempt: row.get(1)?,
    })
}
