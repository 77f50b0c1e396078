//! Commands (stored before they are sent, acknowledged by index) and the runner events
//! stored by index.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, get_u64, int};
use crate::devserver::api::EventRecord;
use crate::protocol::Command;

/// A command as stored: its body is decoded by the caller, so a body this build cannot
/// read (a database from another version) is retired by name instead of failing every
/// resend of the runner's other commands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredCommand {
    pub index: u64,
    pub body: String,
}

impl StoredCommand {
    pub fn decode(&self) -> Result<Command, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

impl Store {
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

    pub fn unacked_commands(&self, runner_id: &str) -> Result<Vec<StoredCommand>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, body FROM commands WHERE runner_id = ?1 AND acked = 0 ORDER BY idx",
        )?;
        let rows = stmt
            .query_map(params![runner_id], |row| {
                Ok(StoredCommand {
                    index: get_u64(row, 0)?,
                    body: row.get(1)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The command issued to the runner under `index`, acknowledged or not.
    pub fn command(
        &self,
        runner_id: &str,
        index: u64,
    ) -> Result<Option<StoredCommand>, StoreError> {
        let body = self
            .one(
                "SELECT body FROM commands WHERE runner_id = ?1 AND idx = ?2",
                params![runner_id, int(index)],
                |row| row.get(0),
            )
            .optional()?;
        Ok(body.map(|body| StoredCommand { index, body }))
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
        self.events_after(runner_id, 0, i64::MAX)
    }

    /// At most `limit` of a runner's events with an index above `after`, in index order:
    /// one page of a listing that may be long (every event a runner ever sent).
    pub fn events_after(
        &self,
        runner_id: &str,
        after: u64,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, kind, body, received_ms FROM events
             WHERE runner_id = ?1 AND idx > ?2 ORDER BY idx LIMIT ?3",
        )?;
        // Indexes above i64::MAX cannot be stored (the protocol caps them lower).
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let raws = stmt
            .query_map(params![runner_id, after, limit], |row| {
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
}
