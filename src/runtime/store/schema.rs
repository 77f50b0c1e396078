//! The store's schema, as the migrations that build it: a store of any older version
//! is taken forward one version at a time, each in its own transaction.

use super::SCHEMA_VERSION;

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
pub(super) const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
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
