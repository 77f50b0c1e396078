//! Runners: their rows (key, indexes, hardware record), the statements that keep them,
//! and what each holds (jobs, unacknowledged commands) for the admin API's list.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Row, params};

use super::{Store, StoreError, get_opt_u64, get_u64, int};

/// What a runner holds: its jobs (assigned, accepted or running) and its
/// unacknowledged commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RunnerLoad {
    pub jobs: u32,
    pub unacked_commands: u64,
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

impl Store {
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

    /// For every runner that holds any, how many jobs it holds (assigned, accepted
    /// or running) and how many of its commands are unacknowledged: two queries
    /// for the whole list, where one per runner held the store's lock for tens of
    /// milliseconds with a thousand runners.
    pub fn runner_loads(&self) -> Result<HashMap<String, RunnerLoad>, StoreError> {
        let mut loads: HashMap<String, RunnerLoad> = HashMap::new();
        let mut held = self.conn.prepare_cached(
            "SELECT runner_id, COUNT(*) FROM jobs
             WHERE runner_id IS NOT NULL AND state IN ('assigned', 'accepted', 'running')
             GROUP BY runner_id",
        )?;
        let rows = held.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?))
        })?;
        for row in rows {
            let (runner_id, jobs) = row?;
            loads.entry(runner_id).or_default().jobs = jobs;
        }
        let mut unacked = self.conn.prepare_cached(
            "SELECT runner_id, COUNT(*) FROM commands WHERE acked = 0 GROUP BY runner_id",
        )?;
        let rows = unacked.query_map([], |row| Ok((row.get::<_, String>(0)?, get_u64(row, 1)?)))?;
        for row in rows {
            let (runner_id, commands) = row?;
            loads.entry(runner_id).or_default().unacked_commands = commands;
        }
        Ok(loads)
    }
}

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
