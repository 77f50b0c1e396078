//! A job's side of things: the blobs (inputs and results, stored as files by their
//! SHA-256; this table says which are complete), what a job declared at submission,
//! the token its current attempt's URLs carry, what its runner reported (phase,
//! progress, accounting, the outputs' summary), its key-value pairs and its results.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, get_opt_u64, int};
use crate::devserver::job_side::{InputRequest, JobProgress, JobUsage, OutputRequest, ResultFile};
use crate::protocol::JobPhase;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blobs (
    sha256     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS job_files (
    job_id  TEXT PRIMARY KEY,
    inputs  TEXT NOT NULL,
    outputs TEXT NOT NULL,
    kv      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_grants (
    token   TEXT PRIMARY KEY,
    job_id  TEXT NOT NULL UNIQUE,
    attempt INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS job_reports (
    job_id   TEXT PRIMARY KEY,
    attempt  INTEGER NOT NULL,
    phase    TEXT,
    fraction REAL,
    message  TEXT,
    usage    TEXT,
    missing  TEXT
);
CREATE TABLE IF NOT EXISTS job_kv (
    job_id TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE TABLE IF NOT EXISTS job_results (
    job_id   TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    path     TEXT NOT NULL,
    sha256   TEXT,
    size     INTEGER,
    reported INTEGER NOT NULL DEFAULT 0,
    failure  TEXT,
    PRIMARY KEY (job_id, attempt, path)
);
";

/// What a job declared when it was submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeclaredFiles {
    pub inputs: Vec<InputRequest>,
    pub outputs: Vec<OutputRequest>,
    pub kv: BTreeMap<String, String>,
}

impl Store {
    // ------------------------------------------------------------ blobs

    /// A blob is complete on disk; storing it twice changes nothing.
    pub fn insert_blob(&self, sha256: &str, size: u64, now: u64) -> Result<(), StoreError> {
        self.exec(
            "INSERT OR IGNORE INTO blobs (sha256, size, created_ms) VALUES (?1, ?2, ?3)",
            params![sha256, int(size), int(now)],
        )?;
        Ok(())
    }

    /// The size of a complete blob.
    pub fn blob_size(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .one(
                "SELECT size FROM blobs WHERE sha256 = ?1",
                params![sha256],
                |row| get_opt_u64(row, 0),
            )
            .optional()?
            .flatten())
    }

    // ------------------------------------------------------------ declarations

    pub fn set_job_files(&self, job_id: &str, files: &DeclaredFiles) -> Result<(), StoreError> {
        self.exec(
            "INSERT OR REPLACE INTO job_files (job_id, inputs, outputs, kv) VALUES (?1, ?2, ?3, ?4)",
            params![
                job_id,
                serde_json::to_string(&files.inputs)?,
                serde_json::to_string(&files.outputs)?,
                serde_json::to_string(&files.kv)?
            ],
        )?;
        Ok(())
    }

    /// What the job declared; nothing for a job submitted without files.
    pub fn job_files(&self, job_id: &str) -> Result<DeclaredFiles, StoreError> {
        let raw: Option<(String, String, String)> = self
            .one(
                "SELECT inputs, outputs, kv FROM job_files WHERE job_id = ?1",
                params![job_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        let Some((inputs, outputs, kv)) = raw else {
            return Ok(DeclaredFiles::default());
        };
        Ok(DeclaredFiles {
            inputs: serde_json::from_str(&inputs)?,
            outputs: serde_json::from_str(&outputs)?,
            kv: serde_json::from_str(&kv)?,
        })
    }

    // ------------------------------------------------------------ grants

    /// `token` now stands for the job's `attempt`; the token of an earlier attempt is
    /// worth nothing from here on.
    pub fn grant(&self, job_id: &str, attempt: u32, token: &str) -> Result<(), StoreError> {
        self.exec("DELETE FROM job_grants WHERE job_id = ?1", params![job_id])?;
        self.exec(
            "INSERT INTO job_grants (token, job_id, attempt) VALUES (?1, ?2, ?3)",
            params![token, job_id, attempt],
        )?;
        Ok(())
    }

    /// The job and attempt a token stands for.
    pub fn granted(&self, token: &str) -> Result<Option<(String, u32)>, StoreError> {
        Ok(self
            .one(
                "SELECT job_id, attempt FROM job_grants WHERE token = ?1",
                params![token],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    // ------------------------------------------------------------ reports

    /// The report row of `attempt`, made (or started over for a newer attempt) when
    /// missing, so the setters below only update.
    fn report_row(&self, job_id: &str, attempt: u32) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM job_reports WHERE job_id = ?1 AND attempt <> ?2",
            params![job_id, attempt],
        )?;
        self.exec(
            "INSERT OR IGNORE INTO job_reports (job_id, attempt) VALUES (?1, ?2)",
            params![job_id, attempt],
        )?;
        Ok(())
    }

    pub fn set_phase(
        &self,
        job_id: &str,
        attempt: u32,
        phase: Option<JobPhase>,
    ) -> Result<(), StoreError> {
        self.report_row(job_id, attempt)?;
        let phase = phase.map(serde_json::to_value).transpose()?;
        self.exec(
            "UPDATE job_reports SET phase = ?2 WHERE job_id = ?1",
            params![job_id, phase.as_ref().and_then(|v| v.as_str())],
        )?;
        Ok(())
    }

    pub fn set_progress(
        &self,
        job_id: &str,
        attempt: u32,
        fraction: Option<f64>,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        self.report_row(job_id, attempt)?;
        self.exec(
            "UPDATE job_reports SET fraction = ?2, message = ?3 WHERE job_id = ?1",
            params![job_id, fraction, message],
        )?;
        Ok(())
    }

    pub fn set_usage(
        &self,
        job_id: &str,
        attempt: u32,
        usage: &JobUsage,
    ) -> Result<(), StoreError> {
        self.report_row(job_id, attempt)?;
        self.exec(
            "UPDATE job_reports SET usage = ?2 WHERE job_id = ?1",
            params![job_id, serde_json::to_string(usage)?],
        )?;
        Ok(())
    }

    /// The runner's summary of the uploads arrived: these declared outputs were missing.
    pub fn set_missing(
        &self,
        job_id: &str,
        attempt: u32,
        missing: &[String],
    ) -> Result<(), StoreError> {
        self.report_row(job_id, attempt)?;
        self.exec(
            "UPDATE job_reports SET missing = ?2 WHERE job_id = ?1",
            params![job_id, serde_json::to_string(missing)?],
        )?;
        Ok(())
    }

    /// Progress, accounting and the missing outputs of the job's `attempt`, if its
    /// runner reported any.
    #[allow(clippy::type_complexity)]
    pub fn report(
        &self,
        job_id: &str,
        attempt: u32,
    ) -> Result<Option<(JobProgress, Option<JobUsage>, Option<Vec<String>>)>, StoreError> {
        type Raw = (
            Option<String>,
            Option<f64>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let raw: Option<Raw> = self
            .one(
                "SELECT phase, fraction, message, usage, missing FROM job_reports
                 WHERE job_id = ?1 AND attempt = ?2",
                params![job_id, attempt],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((phase, fraction, message, usage, missing)) = raw else {
            return Ok(None);
        };
        let phase = phase
            .map(|p| serde_json::from_value(serde_json::Value::String(p)))
            .transpose()?;
        let progress = JobProgress {
            phase,
            fraction,
            message,
        };
        let usage = usage.map(|u| serde_json::from_str(&u)).transpose()?;
        let missing = missing.map(|m| serde_json::from_str(&m)).transpose()?;
        Ok(Some((progress, usage, missing)))
    }

    // ------------------------------------------------------------ key-value

    pub fn kv_put(&self, job_id: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.exec(
            "INSERT OR REPLACE INTO job_kv (job_id, key, value) VALUES (?1, ?2, ?3)",
            params![job_id, key, value],
        )?;
        Ok(())
    }

    pub fn kv(&self, job_id: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM job_kv WHERE job_id = ?1")?;
        let pairs = stmt
            .query_map(params![job_id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<BTreeMap<String, String>, _>>()?;
        Ok(pairs)
    }

    // ------------------------------------------------------------ results

    /// An upload of `path` for the attempt arrived complete (a re-upload replaces it).
    pub fn result_uploaded(
        &self,
        job_id: &str,
        attempt: u32,
        path: &str,
        sha256: &str,
        size: u64,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO job_results (job_id, attempt, path, sha256, size) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (job_id, attempt, path) DO UPDATE SET sha256 = ?4, size = ?5, failure = NULL",
            params![job_id, attempt, path, sha256, int(size)],
        )?;
        Ok(())
    }

    /// The runner reports `path` uploaded: marked so, and noted as a failure when it
    /// disagrees with what arrived.
    pub fn result_reported(
        &self,
        job_id: &str,
        attempt: u32,
        path: &str,
        sha256: &str,
        size: u64,
    ) -> Result<(), StoreError> {
        let held = self.result(job_id, attempt, path)?;
        let failure = match held {
            Some(ResultFile {
                sha256: Some(held_sha),
                size: Some(held_size),
                ..
            }) if held_sha == sha256 && held_size == size => None,
            Some(_) => Some(format!(
                "the runner reports {size} bytes with sha256 {sha256}; the stored upload differs"
            )),
            None => Some("the runner reports an upload that never arrived".to_owned()),
        };
        self.exec(
            "INSERT INTO job_results (job_id, attempt, path, reported, failure) VALUES (?1, ?2, ?3, 1, ?4)
             ON CONFLICT (job_id, attempt, path) DO UPDATE SET reported = 1, failure = ?4",
            params![job_id, attempt, path, failure],
        )?;
        Ok(())
    }

    pub fn result_failed(
        &self,
        job_id: &str,
        attempt: u32,
        path: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO job_results (job_id, attempt, path, failure) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (job_id, attempt, path) DO UPDATE SET failure = ?4",
            params![job_id, attempt, path, reason],
        )?;
        Ok(())
    }

    pub fn result(
        &self,
        job_id: &str,
        attempt: u32,
        path: &str,
    ) -> Result<Option<ResultFile>, StoreError> {
        Ok(self
            .one(
                "SELECT path, sha256, size, reported, failure FROM job_results
                 WHERE job_id = ?1 AND attempt = ?2 AND path = ?3",
                params![job_id, attempt, path],
                result_file,
            )
            .optional()?)
    }

    pub fn results(&self, job_id: &str, attempt: u32) -> Result<Vec<ResultFile>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT path, sha256, size, reported, failure FROM job_results
             WHERE job_id = ?1 AND attempt = ?2 ORDER BY path",
        )?;
        let files = stmt
            .query_map(params![job_id, attempt], result_file)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(files)
    }
}

fn result_file(row: &rusqlite::Row<'_>) -> rusqlite::Result<ResultFile> {
    Ok(ResultFile {
        path: row.get(0)?,
        sha256: row.get(1)?,
        size: get_opt_u64(row, 2)?,
        reported: row.get(3)?,
        failure: row.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_belong_to_one_attempt() -> Result<(), StoreError> {
        let store = Store::open(None)?;
        store.set_phase("j", 1, Some(JobPhase::Fetching))?;
        store.set_progress("j", 1, Some(0.5), Some("half"))?;
        let (progress, usage, missing) = store.report("j", 1)?.ok_or(StoreError::BadValue {
            column: "job_reports",
            value: "none".into(),
        })?;
        assert_eq!(progress.phase, Some(JobPhase::Fetching));
        assert_eq!(progress.fraction, Some(0.5));
        assert_eq!((usage, missing), (None, None));
        // A newer attempt starts over.
        store.set_missing("j", 2, &["out.txt".to_owned()])?;
        assert!(store.report("j", 1)?.is_none());
        let later = store.report("j", 2)?;
        assert_eq!(later.map(|r| r.2), Some(Some(vec!["out.txt".to_owned()])));
        Ok(())
    }

    #[test]
    fn a_report_that_disagrees_with_the_upload_is_a_failure() -> Result<(), StoreError> {
        let store = Store::open(None)?;
        store.result_uploaded("j", 1, "a", "aa", 2)?;
        store.result_reported("j", 1, "a", "aa", 2)?;
        store.result_reported("j", 1, "b", "bb", 2)?;
        store.result_uploaded("j", 1, "c", "cc", 2)?;
        store.result_reported("j", 1, "c", "cc", 3)?;
        let failures: Vec<(String, bool, bool)> = store
            .results("j", 1)?
            .into_iter()
            .map(|f| (f.path, f.reported, f.failure.is_some()))
            .collect();
        assert_eq!(
            failures,
            [
                ("a".to_owned(), true, false),
                ("b".to_owned(), true, true),
                ("c".to_owned(), true, true)
            ]
        );
        Ok(())
    }

    #[test]
    fn a_new_grant_replaces_the_old_one() -> Result<(), StoreError> {
        let store = Store::open(None)?;
        store.grant("j", 1, "t1")?;
        store.grant("j", 2, "t2")?;
        assert_eq!(store.granted("t1")?, None);
        assert_eq!(store.granted("t2")?, Some(("j".to_owned(), 2)));
        Ok(())
    }
}
