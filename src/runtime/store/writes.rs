//! One batch's writes inside its transaction: what each `Durable` write does to the
//! tables. Called only from `Store::commit`, which owns the transaction.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{ACKED_EVENT, LAST_APPLIED, LAST_EVENT, StoreFault, to_sql_int};
use crate::core::{Durable, ENDED_ATTEMPTS_KEPT};
use crate::protocol::{JobRef, OutputStream, RunnerEvent};

/// The writes a batch may consist of and still be committed without waiting for the
/// disk (see the module doc for why each is safe to lose to a power cut).
pub(super) fn may_be_undone_by_power_loss(write: &Durable) -> bool {
    matches!(write, Durable::OutboxAcked { .. })
        || matches!(
            write,
            Durable::OutboxAppend { event, .. } if matches!(**event, RunnerEvent::JobStarted { .. })
        )
}

/// One write inside the batch transaction.
pub(super) fn apply(tx: &Transaction<'_>, write: &Durable) -> Result<(), StoreFault> {
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
pub(super) fn base64_len(text: &str) -> u64 {
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
