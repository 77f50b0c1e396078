use super::writes::base64_len;
use super::*;
use crate::core::OutputDone;
use crate::protocol::{JobSpec, OutputStream, RunnerEvent};
use crate::runtime::jobs::{OutputProgress, StreamProgress};

fn synchronous(store: &Store) -> i64 {
    store
        .conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .expect("the pragma reads")
}

fn job_spec(job_id: &str) -> JobSpec {
    JobSpec {
        job_id: job_id.to_owned(),
        attempt: 1,
        command: vec!["true".to_owned()],
        env: std::collections::BTreeMap::new(),
        workdir: None,
        timeout_secs: 60,
        output_limit_bytes: 1 << 20,
        cancel_grace_secs: 1,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

fn started(job: &JobSpec, pid: u32) -> RunnerEvent {
    RunnerEvent::JobStarted {
        job: job.job_ref(),
        pid,
    }
}

/// What the disk holds after a power cut at this moment: the database and its WAL
/// up to the last synced commit (the caller copies right after one).
fn copy_of_disk(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("a temporary directory");
    for name in [DB_FILE.to_owned(), format!("{DB_FILE}-wal")] {
        std::fs::copy(dir.join(&name), copy.path().join(&name)).expect("copy");
    }
    copy
}

/// An output's end is recorded with its event and read back at the next start;
/// recorded twice it stays one record; the job's removal forgets them.
#[test]
fn output_ends_are_kept_until_their_job_is_removed() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let spec = job_spec("j");
    let done = |path: &str, uploaded| Durable::OutputDone {
        done: Box::new(OutputDone {
            job: spec.job_ref(),
            path: path.to_owned(),
            uploaded,
        }),
    };
    {
        let mut store = Store::open(dir.path()).expect("the store opens");
        store
            .commit(&[Durable::JobAdded {
                job: spec.clone().into(),
            }])
            .expect("commit");
        store
            .commit(&[done("a.csv", true), done("b.csv", false)])
            .expect("commit");
        store.commit(&[done("a.csv", true)]).expect("commit");
    }
    let mut store = Store::open(dir.path()).expect("the store opens again");
    let loaded = store.load().expect("load").outputs_done;
    let paths: Vec<(&str, bool)> = loaded
        .iter()
        .map(|d| (d.path.as_str(), d.uploaded))
        .collect();
    assert_eq!(paths, [("a.csv", true), ("b.csv", false)]);
    store
        .commit(&[Durable::JobRemoved {
            job: spec.job_ref(),
        }])
        .expect("commit");
    assert!(store.load().expect("load").outputs_done.is_empty());
}

/// A job's writes are kept with their events, per key the last value and how much
/// was written, and read back at the next start; the job's removal forgets them.
#[test]
fn key_value_writes_are_kept_until_their_job_is_removed() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let spec = job_spec("j");
    let put = |index: u64, key: &str, value: &str| Durable::OutboxAppend {
        index,
        event: RunnerEvent::JobKvPut {
            job: spec.job_ref(),
            key: key.to_owned(),
            value: value.to_owned(),
        }
        .into(),
    };
    {
        let mut store = Store::open(dir.path()).expect("the store opens");
        store
            .commit(&[
                Durable::JobAdded {
                    job: spec.clone().into(),
                },
                put(1, "step", "1"),
            ])
            .expect("commit");
        store
            .commit(&[put(2, "step", "22"), put(3, "mesh", "fine")])
            .expect("commit");
        store
            .commit(&[Durable::OutboxAcked { up_to: 3 }])
            .expect("ack");
    }
    let mut store = Store::open(dir.path()).expect("the store opens again");
    let kept = store.job_kv_written().expect("read");
    let seen: Vec<(&str, &str, u32, u64)> = kept
        .iter()
        .map(|w| (w.key.as_str(), w.value.as_str(), w.writes, w.bytes))
        .collect();
    assert_eq!(seen, [("mesh", "fine", 1, 8), ("step", "22", 2, 11)]);
    assert!(kept.iter().all(|w| w.job == spec.job_ref()));
    store
        .commit(&[Durable::JobRemoved {
            job: spec.job_ref(),
        }])
        .expect("commit");
    assert!(store.job_kv_written().expect("read").is_empty());
}

/// 2 is FULL (the commit waits for the disk), 1 is NORMAL.
#[test]
fn only_acknowledgements_and_job_started_skip_the_wait_for_the_disk() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = Store::open(dir.path()).expect("the store opens");
    assert_eq!(synchronous(&store), 2);
    let job = crate::protocol::JobRef {
        job_id: "j".to_owned(),
        attempt: 1,
    };
    let append = |index| Durable::OutboxAppend {
        index,
        event: RunnerEvent::JobAccepted { job: job.clone() }.into(),
    };
    store.commit(&[append(1), append(2)]).expect("commit");
    assert_eq!(synchronous(&store), 2);
    store
        .commit(&[Durable::OutboxAcked { up_to: 1 }])
        .expect("commit");
    assert_eq!(synchronous(&store), 1);
    // An ack in the same batch as anything else waits with it.
    store
        .commit(&[Durable::OutboxAcked { up_to: 2 }, append(3)])
        .expect("commit");
    assert_eq!(synchronous(&store), 2);
    store
        .commit(&[Durable::LastApplied { index: 4 }])
        .expect("commit");
    assert_eq!(synchronous(&store), 2);
    assert_eq!(store.outbox_depth().expect("depth"), 1);
    let spec = job_spec("j");
    let start = |index| Durable::OutboxAppend {
        index,
        event: started(&spec, 42).into(),
    };
    store.commit(&[start(4)]).expect("commit");
    assert_eq!(synchronous(&store), 1);
    store
        .commit(&[start(5), Durable::LastApplied { index: 5 }])
        .expect("commit");
    assert_eq!(synchronous(&store), 2);
}

fn file_holds(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path)
        .unwrap_or_default()
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Acknowledged output leaves the outbox without zeroing (its bytes are in the
/// job's logs), but a job spec removed in the same batch, after the ack, is still
/// zeroed: a spec large enough to spill into overflow pages is exactly what `FAST`
/// would leave behind if `ack_events` did not set `secure_delete` back on.
#[test]
fn a_removed_spec_is_zeroed_even_after_an_acknowledgement_in_its_batch() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = Store::open(dir.path()).expect("the store opens");
    let needle = "needle-of-the-job-environment-";
    let mut spec = job_spec("j");
    spec.env
        .insert("SECRET".to_owned(), needle.repeat(8 * 1024 / needle.len()));
    let output = RunnerEvent::JobOutput {
        job: spec.job_ref(),
        stream: OutputStream::Stdout,
        offset: 0,
        data: "aGVsbG8K".to_owned(),
    };
    store
        .commit(&[
            Durable::JobAdded {
                job: spec.clone().into(),
            },
            Durable::OutboxAppend {
                index: 1,
                event: output.into(),
            },
        ])
        .expect("commit");
    assert!(file_holds(
        &dir.path().join(format!("{DB_FILE}-wal")),
        needle.as_bytes()
    ));
    store
        .commit(&[
            Durable::OutboxAcked { up_to: 1 },
            Durable::JobRemoved {
                job: spec.job_ref(),
            },
        ])
        .expect("commit");
    for name in [DB_FILE.to_owned(), format!("{DB_FILE}-wal")] {
        assert!(
            !file_holds(&dir.path().join(&name), needle.as_bytes()),
            "{name} still holds the removed spec's environment"
        );
    }
}

/// A power cut takes back a `job_started` the API may already hold: the job comes
/// back without its pid (so it is reported lost) and the next event index is past
/// the one that event used, so the API cannot drop the report as a duplicate.
#[test]
fn a_job_started_taken_back_by_a_power_cut_never_has_its_index_reused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = Store::open(dir.path()).expect("the store opens");
    let (running, starting) = (job_spec("running"), job_spec("starting"));
    let accepted = |job: &JobSpec, index| {
        vec![
            Durable::JobAdded {
                job: job.clone().into(),
            },
            Durable::OutboxAppend {
                index,
                event: RunnerEvent::JobAccepted { job: job.job_ref() }.into(),
            },
        ]
    };
    store.commit(&accepted(&running, 1)).expect("commit");
    store
        .commit(&[Durable::OutboxAppend {
            index: 2,
            event: started(&running, 7).into(),
        }])
        .expect("commit");
    // Waited for the disk: also makes the start of `running` durable.
    store.commit(&accepted(&starting, 3)).expect("commit");
    let disk = copy_of_disk(dir.path());
    store
        .commit(&[Durable::OutboxAppend {
            index: 4,
            event: started(&starting, 8).into(),
        }])
        .expect("commit");

    // The runner's own crash keeps everything committed.
    drop(store);
    let after_crash = Store::open(dir.path()).expect("the store opens");
    assert_eq!(after_crash.load().expect("load").last_event_index, 4);
    assert_eq!(after_crash.job_pids().expect("pids").len(), 2);

    let after_power_cut = Store::open(disk.path()).expect("the copy opens");
    let state = after_power_cut.load().expect("load");
    assert_eq!(state.jobs.len(), 2);
    let pids = after_power_cut.job_pids().expect("pids");
    assert_eq!(pids, vec![(running.job_ref(), 7)]);
    assert_eq!(
        state.last_event_index, 4,
        "index 4 may be at the API already"
    );
}

/// What a runner restarted while a job runs on resumes from: how far each stream
/// was taken into the outbox, kept with the events themselves.
#[test]
fn how_far_each_stream_was_reported_is_kept_with_its_events() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = Store::open(dir.path()).expect("the store opens");
    let spec = job_spec("j");
    let job = spec.job_ref();
    let output = |index, stream, offset, data: &str| Durable::OutboxAppend {
        index,
        event: RunnerEvent::JobOutput {
            job: job.clone(),
            stream,
            offset,
            data: data.to_owned(),
        }
        .into(),
    };
    store
        .commit(&[
            Durable::JobAdded {
                job: spec.clone().into(),
            },
            // "hello" and "hi\n" in base64: 5 and 3 bytes.
            output(1, OutputStream::Stdout, 0, "aGVsbG8="),
            output(2, OutputStream::Stderr, 0, "aGkK"),
            output(3, OutputStream::Stdout, 5, "IHdvcmxk"),
        ])
        .expect("commit");
    store
        .commit(&[
            Durable::OutboxAppend {
                index: 4,
                event: RunnerEvent::JobOutputTruncated {
                    job: job.clone(),
                    stream: OutputStream::Stderr,
                    offset: 3,
                }
                .into(),
            },
            Durable::OutboxAcked { up_to: 4 },
        ])
        .expect("commit");
    // Acknowledged events leave the outbox; the progress stays with the job.
    assert_eq!(store.outbox_depth().expect("depth"), 0);
    drop(store);
    let store = Store::open(dir.path()).expect("the store opens again");
    let progress = store.job_progress().expect("progress");
    assert_eq!(
        progress,
        vec![(
            job,
            OutputProgress {
                stdout: StreamProgress {
                    sent: 11,
                    cut: false
                },
                stderr: StreamProgress { sent: 3, cut: true },
            }
        )]
    );
    assert_eq!(base64_len(""), 0);
    assert_eq!(base64_len("YQ=="), 1);
    assert_eq!(base64_len("YWI="), 2);
}

#[test]
fn unsent_events_move_up_past_the_apis_in_order_and_numbering_follows() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = Store::open(dir.path()).expect("the store opens");
    let job = |id: &str| crate::protocol::JobRef {
        job_id: id.to_owned(),
        attempt: 1,
    };
    let append = |index, id: &str| Durable::OutboxAppend {
        index,
        event: RunnerEvent::JobAccepted { job: job(id) }.into(),
    };
    // 1 and 2 were sent before the copy was taken; 3 and 4 were made since.
    store
        .commit(&[
            append(1, "a"),
            append(2, "b"),
            append(3, "c"),
            append(4, "d"),
        ])
        .expect("commit");
    // The API holds up to 6 (3 and 4 of the lost timeline, and more).
    let renumber = Durable::OutboxRenumbered {
        sent_up_to: 2,
        api_last: 6,
    };
    store
        .commit(&[renumber, Durable::OutboxAcked { up_to: 6 }])
        .expect("commit");
    let left = store.outbox_after(0).expect("read");
    assert_eq!(
        left,
        vec![
            (7, RunnerEvent::JobAccepted { job: job("c") }),
            (8, RunnerEvent::JobAccepted { job: job("d") })
        ]
    );
    assert_eq!(store.load().expect("load").last_event_index, 8);
    // An index the renumbered events now hold is refused; the next one is fine.
    assert!(store.commit(&[append(8, "e")]).is_err());
    store.commit(&[append(9, "e")]).expect("numbering goes on");
}

#[test]
fn renumbering_starts_above_the_index_a_job_without_a_pid_holds_in_reserve() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = Store::open(dir.path()).expect("the store opens");
    let spec = job_spec("j");
    let accepted = Durable::OutboxAppend {
        index: 1,
        event: RunnerEvent::JobAccepted {
            job: spec.job_ref(),
        }
        .into(),
    };
    store
        .commit(&[
            Durable::JobAdded {
                job: spec.clone().into(),
            },
            accepted,
        ])
        .expect("commit");
    // 1 is on disk; 2 is held in reserve for the job's `job_started`, which a power
    // cut may have taken back after the API got it.
    let sent_up_to = store.load().expect("load").last_event_index;
    assert_eq!(sent_up_to, 2);
    let renumber = Durable::OutboxRenumbered {
        sent_up_to,
        api_last: 4,
    };
    store
        .commit(&[renumber, Durable::OutboxAcked { up_to: 4 }])
        .expect("commit");
    let append = |index| Durable::OutboxAppend {
        index,
        event: started(&spec, 7).into(),
    };
    assert!(store.commit(&[append(4)]).is_err(), "4 is the API's");
    store.commit(&[append(5)]).expect("numbering goes on");
}
