//! The durable store: batches are atomic, a reopen gives back exactly what was
//! committed, and failures are named.

use std::collections::BTreeMap;
use std::fs;
#[cfg(unix)]
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fyn_runner::core::{Durable, DurableState};
use fyn_runner::protocol::{JobRef, JobSpec, OutputStream, RunnerEvent};
use fyn_runner::runtime::store::{Store, StoreError, db_path};
use proptest::prelude::*;

fn job(id: &str, attempt: u32) -> JobSpec {
    JobSpec {
        job_id: id.to_owned(),
        attempt,
        command: vec!["/bin/echo".into(), id.into()],
        env: BTreeMap::from([("TOKEN".to_owned(), "s3cret".to_owned())]),
        workdir: None,
        timeout_secs: 60,
        output_limit_bytes: 1024,
        cancel_grace_secs: 3,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

fn job_ref(id: &str, attempt: u32) -> JobRef {
    JobRef {
        job_id: id.to_owned(),
        attempt,
    }
}

fn event(seed: u64) -> RunnerEvent {
    let job = job_ref(&format!("job-{}", seed % 5), 1);
    match seed % 3 {
        0 => RunnerEvent::JobAccepted { job },
        1 => RunnerEvent::JobOutput {
            job,
            stream: OutputStream::Stderr,
            offset: seed,
            data: "aGVsbG8=".into(),
        },
        _ => RunnerEvent::HardwareChanged {
            changes: serde_json::from_value(
                serde_json::json!([{"path": "seed", "old": seed, "new": seed + 1}]),
            )
            .expect("a valid change list"),
        },
    }
}

fn append(index: u64) -> Durable {
    Durable::OutboxAppend {
        index,
        event: event(index).into(),
    }
}

/// Opens a second connection and abandons the first without closing it, the way
/// a `kill -9` would: nothing but what `commit` made durable may count.
fn reopen_after_crash(store: Store, dir: &Path) -> Store {
    let fresh = Store::open(dir).unwrap();
    std::mem::forget(store);
    fresh
}

#[test]
fn a_new_store_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.load().unwrap(), DurableState::default());
    assert_eq!(store.outbox_depth().unwrap(), 0);
    assert!(store.outbox_after(0).unwrap().is_empty());
}

#[cfg(unix)]
#[test]
fn the_db_file_is_private_wal_and_versioned() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let path = db_path(tmp.path());
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, fyn_runner::runtime::store::SCHEMA_VERSION);
}

#[test]
fn commit_survives_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path()).unwrap();
    store
        .commit(&[
            Durable::LastApplied { index: 4 },
            append(1),
            append(2),
            append(3),
            Durable::JobAdded {
                job: job("b", 2).into(),
            },
            Durable::JobAdded {
                job: job("a", 1).into(),
            },
        ])
        .unwrap();
    store.commit(&[Durable::OutboxAcked { up_to: 1 }]).unwrap();

    let store = reopen_after_crash(store, tmp.path());
    assert_eq!(
        store.load().unwrap(),
        DurableState {
            runner_id: None,
            last_applied_command: 4,
            // 3 stored, and one each for the two jobs with no start on record.
            last_event_index: 5,
            acked_event_index: 1,
            jobs: vec![job("a", 1), job("b", 2)],
            ended_attempts: Vec::new(),
            registration_key: None,
            outputs_done: Vec::new(),
        }
    );
    assert_eq!(
        store.outbox_after(0).unwrap(),
        vec![(2, event(2)), (3, event(3))]
    );
}

#[test]
fn a_failing_write_rolls_back_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path()).unwrap();
    store
        .commit(&[Durable::LastApplied { index: 1 }, append(1)])
        .unwrap();
    let before = store.load().unwrap();

    let err = store
        .commit(&[
            Durable::LastApplied { index: 9 },
            Durable::JobAdded {
                job: job("x", 1).into(),
            },
            append(2),
            append(2),
            Durable::OutboxAcked { up_to: 1 },
        ])
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Write {
                position: 4,
                total: 5,
                write: "outbox",
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("write 4 of 5 (outbox)"), "{text}");
    assert!(
        text.contains("not above the last appended index 2"),
        "{text}"
    );

    let store = reopen_after_crash(store, tmp.path());
    assert_eq!(store.load().unwrap(), before);
    assert_eq!(store.outbox_after(0).unwrap(), vec![(1, event(1))]);
}

#[test]
fn an_acked_index_is_never_reused() {
    let mut store = Store::open_in_memory().unwrap();
    store.commit(&[append(1), append(2)]).unwrap();
    store.commit(&[Durable::OutboxAcked { up_to: 2 }]).unwrap();
    let err = store.commit(&[append(2)]).unwrap_err();
    assert!(
        matches!(err, StoreError::Write { position: 1, .. }),
        "{err}"
    );
    store.commit(&[append(5)]).unwrap();
    assert_eq!(store.outbox_after(0).unwrap(), vec![(5, event(5))]);
}

#[test]
fn acks_delete_up_to_and_never_lower() {
    let mut store = Store::open_in_memory().unwrap();
    store
        .commit(&(1..=5).map(append).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 5);

    store.commit(&[Durable::OutboxAcked { up_to: 3 }]).unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 2);
    assert_eq!(store.load().unwrap().acked_event_index, 3);

    store.commit(&[Durable::OutboxAcked { up_to: 1 }]).unwrap();
    assert_eq!(store.load().unwrap().acked_event_index, 3);
    assert_eq!(store.outbox_depth().unwrap(), 2);
}

#[test]
fn outbox_after_is_in_index_order_and_filtered() {
    let mut store = Store::open_in_memory().unwrap();
    store.commit(&[append(2), append(10)]).unwrap();
    store.commit(&[append(11), append(30)]).unwrap();
    let after = |n| {
        store
            .outbox_after(n)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    assert_eq!(after(0), vec![2, 10, 11, 30]);
    assert_eq!(after(10), vec![11, 30]);
    assert_eq!(after(30), Vec::<u64>::new());
}

#[test]
fn jobs_are_replaced_by_id_and_removed_by_id() {
    let mut store = Store::open_in_memory().unwrap();
    store
        .commit(&[
            Durable::JobAdded {
                job: job("a", 1).into(),
            },
            Durable::JobAdded {
                job: job("a", 2).into(),
            },
            Durable::JobAdded {
                job: job("b", 1).into(),
            },
        ])
        .unwrap();
    assert_eq!(store.load().unwrap().jobs, vec![job("a", 2), job("b", 1)]);
    store
        .commit(&[Durable::JobRemoved {
            job: job_ref("a", 2),
        }])
        .unwrap();
    assert_eq!(store.load().unwrap().jobs, vec![job("b", 1)]);
}

#[test]
fn file_writes_are_not_rows() {
    let mut store = Store::open_in_memory().unwrap();
    store
        .commit(&[
            Durable::Identity {
                runner_id: "r".into(),
            },
            Durable::HardwareCache {
                report: Box::new(hardware_report(1)),
            },
        ])
        .unwrap();
    assert_eq!(store.load().unwrap(), DurableState::default());
}

#[test]
fn an_index_too_large_for_sqlite_is_a_named_error() {
    let mut store = Store::open_in_memory().unwrap();
    let err = store
        .commit(&[Durable::LastApplied { index: u64::MAX }])
        .unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    assert_eq!(store.load().unwrap(), DurableState::default());
}

/// A new store is built in a file of its own and renamed into place: what a crash
/// left of an unfinished build (here, garbage and a stray WAL) is replaced, and once
/// open only the store itself is there.
#[test]
fn an_unfinished_new_store_left_by_a_crash_is_built_again() {
    let tmp = tempfile::tempdir().unwrap();
    let building = tmp.path().join("runner.db.new");
    fs::write(&building, vec![0xA5; 8192]).unwrap();
    fs::write(tmp.path().join("runner.db.new-wal"), vec![0x5A; 4096]).unwrap();
    let mut store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.load().unwrap(), DurableState::default());
    store.commit(&[append(1)]).unwrap();
    let left: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("runner.db.new"))
        .collect();
    assert!(left.is_empty(), "left over: {left:?}");
    let store = reopen_after_crash(store, tmp.path());
    assert_eq!(store.outbox_depth().unwrap(), 1);
}

#[test]
fn a_corrupt_db_file_fails_to_open_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = db_path(tmp.path());
    fs::write(&path, vec![0xA5; 8192]).unwrap();
    let err = Store::open(tmp.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("not a database"), "{text}");
}

#[test]
fn a_missing_state_dir_fails_to_open_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("missing");
    let err = Store::open(&dir).unwrap_err().to_string();
    assert!(err.contains(&db_path(&dir).display().to_string()), "{err}");
}

/// The pid comes with the `job_started` event, in its transaction, and survives a crash;
/// a job that never started has none.
#[test]
fn a_started_jobs_pid_is_kept_with_its_event() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path()).unwrap();
    let (running, waiting) = (job("running", 2), job("waiting", 1));
    store
        .commit(&[
            Durable::JobAdded {
                job: running.clone().into(),
            },
            Durable::JobAdded {
                job: waiting.into(),
            },
        ])
        .unwrap();
    let started = RunnerEvent::JobStarted {
        job: running.job_ref(),
        pid: 4242,
    };
    store
        .commit(&[Durable::OutboxAppend {
            index: 1,
            event: started.into(),
        }])
        .unwrap();
    let store = reopen_after_crash(store, tmp.path());
    assert_eq!(
        store.job_pids().unwrap(),
        vec![(job_ref("running", 2), 4242)]
    );
}

/// A database written by the first schema opens, migrates, and keeps its jobs.
#[test]
fn a_version_1_database_is_migrated() {
    let tmp = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(db_path(tmp.path())).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) STRICT;
         CREATE TABLE outbox (idx INTEGER PRIMARY KEY NOT NULL, kind TEXT NOT NULL,
                              body TEXT NOT NULL) STRICT;
         CREATE TABLE jobs (job_id TEXT PRIMARY KEY NOT NULL, attempt INTEGER NOT NULL,
                            spec TEXT NOT NULL) STRICT;
         PRAGMA user_version = 1;",
    )
    .unwrap();
    let spec = job("old", 1);
    conn.execute(
        "INSERT INTO jobs (job_id, attempt, spec) VALUES ('old', 1, ?1)",
        [serde_json::to_string(&spec).unwrap()],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.load().unwrap().jobs, vec![spec]);
    assert!(store.job_pids().unwrap().is_empty());
}

#[test]
fn a_newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::open(tmp.path()).unwrap());
    let conn = rusqlite::Connection::open(db_path(tmp.path())).unwrap();
    conn.pragma_update(None, "user_version", 7).unwrap();
    drop(conn);
    let err = Store::open(tmp.path()).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 7, .. }), "{err}");
}

#[test]
fn a_corrupt_outbox_row_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path()).unwrap();
    store.commit(&[append(1), append(2)]).unwrap();
    let conn = rusqlite::Connection::open(db_path(tmp.path())).unwrap();
    conn.execute("UPDATE outbox SET body = '{' WHERE idx = 2", [])
        .unwrap();
    let err = store.outbox_after(0).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("outbox event 2"), "{err}");
}

#[test]
fn a_job_row_that_disagrees_with_its_spec_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path()).unwrap();
    store
        .commit(&[Durable::JobAdded {
            job: job("a", 1).into(),
        }])
        .unwrap();
    let conn = rusqlite::Connection::open(db_path(tmp.path())).unwrap();
    conn.execute("UPDATE jobs SET attempt = 2", []).unwrap();
    let err = store.load().unwrap_err();
    assert!(err.to_string().contains("job a is corrupt"), "{err}");
}

// ---- property: random commit sequences reopen to the model's state ----

#[derive(Debug, Clone)]
enum Op {
    Applied(u64),
    Append,
    /// An append that reuses an index: the batch must fail and leave nothing.
    AppendStale,
    /// Ack up to `last_event_index + 2 - n` (saturating), so some acks are stale.
    Ack(u64),
    AddJob(u8, u32),
    /// `job_started` for this job (its current attempt), which records its pid.
    Started(u8),
    RemoveJob(u8),
    Identity,
    Hardware,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..1000).prop_map(Op::Applied),
        6 => Just(Op::Append),
        1 => Just(Op::AppendStale),
        3 => (0u64..5).prop_map(Op::Ack),
        3 => (0u8..4, 1u32..4).prop_map(|(id, attempt)| Op::AddJob(id, attempt)),
        2 => (0u8..4).prop_map(Op::Started),
        2 => (0u8..4).prop_map(Op::RemoveJob),
        1 => Just(Op::Identity),
        1 => Just(Op::Hardware),
    ]
}

#[derive(Debug, Clone, Default)]
struct Model {
    last_applied: u64,
    last_event: u64,
    acked: u64,
    outbox: BTreeMap<u64, RunnerEvent>,
    jobs: BTreeMap<String, JobSpec>,
    /// Jobs whose `job_started` (and so pid) is on record.
    started: std::collections::BTreeSet<String>,
    /// Attempts that ended (each `JobRemoved`), oldest first.
    ended: Vec<JobRef>,
}

impl Model {
    fn state(&self) -> DurableState {
        // A job without a recorded start may have sent one that a power cut took
        // back: its index counts as used (see `runtime/store/mod.rs`).
        let unconfirmed = self
            .jobs
            .keys()
            .filter(|id| !self.started.contains(*id))
            .count() as u64;
        DurableState {
            runner_id: None,
            last_applied_command: self.last_applied,
            last_event_index: self.last_event + unconfirmed,
            acked_event_index: self.acked,
            jobs: self.jobs.values().cloned().collect(),
            ended_attempts: self.ended.clone(),
            registration_key: None,
            outputs_done: Vec::new(),
        }
    }

    /// Turns `ops` into writes, applying them to `self`. Returns the writes and
    /// whether the batch must fail.
    fn apply(&mut self, ops: &[Op]) -> (Vec<Durable>, bool) {
        let mut fails = false;
        let writes = ops
            .iter()
            .map(|op| match op {
                Op::Applied(index) => {
                    self.last_applied = *index;
                    Durable::LastApplied { index: *index }
                }
                Op::Append => {
                    self.last_event += 1;
                    self.outbox.insert(self.last_event, event(self.last_event));
                    append(self.last_event)
                }
                Op::AppendStale => {
                    fails = true;
                    append(self.last_event)
                }
                Op::Ack(n) => {
                    let up_to = (self.last_event + 2).saturating_sub(*n);
                    self.acked = self.acked.max(up_to);
                    self.outbox.retain(|index, _| *index > up_to);
                    Durable::OutboxAcked { up_to }
                }
                Op::AddJob(id, attempt) => {
                    let spec = job(&format!("job-{id}"), *attempt);
                    self.jobs.insert(spec.job_id.clone(), spec.clone());
                    // A new row: no pid until its own start.
                    self.started.remove(&spec.job_id);
                    Durable::JobAdded { job: spec.into() }
                }
                Op::Started(id) => {
                    let id = format!("job-{id}");
                    let attempt = self.jobs.get(&id).map_or(1, |spec| spec.attempt);
                    if self.jobs.contains_key(&id) {
                        self.started.insert(id.clone());
                    }
                    let event = RunnerEvent::JobStarted {
                        job: job_ref(&id, attempt),
                        pid: 4242,
                    };
                    self.last_event += 1;
                    self.outbox.insert(self.last_event, event.clone());
                    Durable::OutboxAppend {
                        index: self.last_event,
                        event: event.into(),
                    }
                }
                Op::RemoveJob(id) => {
                    let id = format!("job-{id}");
                    self.jobs.remove(&id);
                    self.started.remove(&id);
                    self.ended.push(job_ref(&id, 1));
                    Durable::JobRemoved {
                        job: job_ref(&id, 1),
                    }
                }
                Op::Identity => Durable::Identity {
                    runner_id: "r".into(),
                },
                Op::Hardware => Durable::HardwareCache {
                    report: Box::new(hardware_report(2)),
                },
            })
            .collect();
        (writes, fails)
    }
}

fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(store.load().unwrap(), model.state());
    let outbox: Vec<_> = model.outbox.clone().into_iter().collect();
    prop_assert_eq!(store.outbox_after(0).unwrap(), outbox);
    prop_assert_eq!(store.outbox_depth().unwrap(), model.outbox.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_commits_reopen_to_the_model(
        batches in prop::collection::vec(
            (prop::collection::vec(op(), 0..6), any::<bool>()),
            1..12,
        )
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let mut model = Model::default();
        for (ops, reopen) in batches {
            let mut next = model.clone();
            let (writes, fails) = next.apply(&ops);
            let result = store.commit(&writes);
            prop_assert_eq!(result.is_err(), fails, "{:?}", result);
            if !fails {
                model = next;
            }
            if reopen {
                // Open the new connection first so the old one's close is not
                // the last and cannot checkpoint: like a crash, only commits count.
                let fresh = Store::open(tmp.path()).unwrap();
                drop(std::mem::replace(&mut store, fresh));
            }
            check(&store, &model)?;
        }
    }
}

/// A small but complete hardware record, `cores` logical cores.
fn hardware_report(cores: u32) -> fyn_runner::protocol::HardwareReport {
    serde_json::from_value(serde_json::json!({
        "os": {"name": "Linux", "kernel": "6.8.0", "arch": "x86_64", "hostname": "test"},
        "cpu": {"model": "Test CPU", "vendor": "GenuineIntel", "logical_cores": cores},
        "memory": {"total_bytes": 1u64 << 30},
        "job_disk": {"mount_point": "/", "total_bytes": 1u64 << 40, "available_bytes": 1u64 << 39},
        "gpus": {"kind": "none"}
    }))
    .expect("a valid hardware record")
}

/// The ended attempts the store remembers are the last `ENDED_ATTEMPTS_KEPT`, oldest
/// first, as the core keeps them, and they survive a reopen.
#[test]
fn ended_attempts_are_kept_up_to_the_bound_across_reopens() {
    use fyn_runner::core::ENDED_ATTEMPTS_KEPT;
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path()).unwrap();
    let extra = 5;
    // One batch (one disk sync), the writes in the order jobs would start and end.
    let writes: Vec<Durable> = (0..ENDED_ATTEMPTS_KEPT + extra)
        .flat_map(|n| {
            let id = format!("job-{n}");
            [
                Durable::JobAdded {
                    job: job(&id, 1).into(),
                },
                Durable::JobRemoved {
                    job: job_ref(&id, 1),
                },
            ]
        })
        .collect();
    store.commit(&writes).unwrap();
    drop(store);
    let store = Store::open(tmp.path()).unwrap();
    let ended = store.load().unwrap().ended_attempts;
    assert_eq!(ended.len(), ENDED_ATTEMPTS_KEPT);
    assert_eq!(
        ended[0],
        job_ref(&format!("job-{extra}"), 1),
        "oldest kept first"
    );
    assert_eq!(
        ended[ENDED_ATTEMPTS_KEPT - 1],
        job_ref(&format!("job-{}", ENDED_ATTEMPTS_KEPT + extra - 1), 1)
    );
}
