//! The core's side of jobs that outlive the runner, event by event: a job found still
//! running keeps the timeout it has left and the outcome a cancel before the restart
//! called for; a stop leaves jobs running (no cancel, exit 0) where a drain ends them;
//! the session renews the jobs' leases with the API's threshold.

use std::collections::BTreeMap;

use fyn_runner::core::{
    BootMode, CancelReason, Core, CoreConfig, Delay, DurableState, Effect, Event, ExitCode,
    FoundJob, Outbound, TimerKind,
};
use fyn_runner::protocol::{
    ExitStatus, JobOutcome, JobRef, JobSpec, PROTOCOL_VERSION, RunnerEvent, ServerMessage,
    SessionParams,
};

fn job() -> JobRef {
    JobRef {
        job_id: "long".into(),
        attempt: 1,
    }
}

/// A runner restarted with one job of 60 s in its store, booted to Validating.
fn restarted() -> Core {
    let durable = DurableState {
        runner_id: Some("r-1".into()),
        jobs: vec![JobSpec {
            job_id: job().job_id,
            attempt: 1,
            command: vec!["sleep".into(), "100".into()],
            env: BTreeMap::new(),
            workdir: None,
            timeout_secs: 60,
            output_limit_bytes: 1 << 20,
            cancel_grace_secs: 5,
            inputs: Vec::new(),
            outputs: Vec::new(),
            kv: BTreeMap::new(),
        }],
        ..DurableState::default()
    };
    Core::boot(CoreConfig::default(), BootMode::Resume, durable).0
}

fn timeout_of(effects: &[Effect]) -> Option<u64> {
    effects.iter().find_map(|effect| match effect {
        Effect::StartTimer {
            timer: TimerKind::JobTimeout(j),
            delay: Delay::Millis(ms),
        } if *j == job() => Some(*ms),
        _ => None,
    })
}

fn found(core: &mut Core, found: FoundJob) -> Vec<Effect> {
    core.dispatch(&Event::JobFound { job: job(), found }).list
}

#[test]
fn a_reattached_job_keeps_the_time_it_has_left() {
    let mut core = restarted();
    let effects = found(
        &mut core,
        FoundJob::Running {
            elapsed_ms: 45_000,
            cancel: None,
        },
    );
    assert_eq!(timeout_of(&effects), Some(15_000));
    assert_eq!(core.running_jobs(), vec![job()]);

    // Past its timeout already: the timer fires at once and the job is timed out.
    let mut core = restarted();
    let effects = found(
        &mut core,
        FoundJob::Running {
            elapsed_ms: 90_000,
            cancel: None,
        },
    );
    assert_eq!(timeout_of(&effects), Some(0));
    let effects = core.dispatch(&Event::TimerFired {
        timer: TimerKind::JobTimeout(job()),
    });
    assert!(effects.list.contains(&Effect::CancelJob {
        job: job(),
        reason: CancelReason::TimedOut,
        grace_secs: 5,
    }));
}

/// The outcome of the job's end, from the `job_finished` its exit produces.
fn outcome_after_exit(core: &mut Core, status: ExitStatus) -> JobOutcome {
    outcome_after_recorded_exit(core, status, None)
}

/// The same, with the reason of a cancel the job's supervisor recorded with its end.
fn outcome_after_recorded_exit(
    core: &mut Core,
    status: ExitStatus,
    cancel: Option<CancelReason>,
) -> JobOutcome {
    let effects = core.dispatch(&Event::JobExited {
        job: job(),
        status,
        duration_ms: 1,
        stdout_bytes: 0,
        stderr_bytes: 0,
        cancel,
        usage: Default::default(),
    });
    effects
        .list
        .iter()
        .find_map(|effect| match effect {
            Effect::Persist(fyn_runner::core::Durable::OutboxAppend { event, .. }) => {
                match &**event {
                    RunnerEvent::JobFinished { outcome, .. } => Some(*outcome),
                    _ => None,
                }
            }
            _ => None,
        })
        .expect("a job_finished")
}

#[test]
fn a_cancel_from_before_the_restart_still_decides_the_outcome() {
    let killed = ExitStatus::Signaled { signal: 9 };
    // Cancelled by the API, ended while no runner was there.
    let mut core = restarted();
    found(
        &mut core,
        FoundJob::Ended {
            cancel: Some(CancelReason::Cancelled),
        },
    );
    assert_eq!(outcome_after_exit(&mut core, killed), JobOutcome::Cancelled);
    // Its supervisor's lease ran out: the API gave it away.
    let mut core = restarted();
    found(
        &mut core,
        FoundJob::Ended {
            cancel: Some(CancelReason::RunnerLost),
        },
    );
    assert_eq!(outcome_after_exit(&mut core, killed), JobOutcome::Lost);
    // Timed out while running on.
    let mut core = restarted();
    found(
        &mut core,
        FoundJob::Running {
            elapsed_ms: 1,
            cancel: Some(CancelReason::TimedOut),
        },
    );
    assert_eq!(outcome_after_exit(&mut core, killed), JobOutcome::TimedOut);
    // No cancel: the exit code decides.
    let mut core = restarted();
    found(&mut core, FoundJob::Ended { cancel: None });
    assert_eq!(
        outcome_after_exit(&mut core, ExitStatus::Exited { code: 0 }),
        JobOutcome::Succeeded
    );
    // Reattached, then ended by its supervisor on its own (its lease ran out while
    // this runner had no session): lost, not failed.
    let mut core = restarted();
    found(
        &mut core,
        FoundJob::Running {
            elapsed_ms: 1,
            cancel: None,
        },
    );
    assert_eq!(
        outcome_after_recorded_exit(&mut core, killed, Some(CancelReason::RunnerLost)),
        JobOutcome::Lost
    );
    // The core's own reason comes first: the API's cancel stays a cancel.
    let mut core = restarted();
    found(
        &mut core,
        FoundJob::Running {
            elapsed_ms: 1,
            cancel: Some(CancelReason::Cancelled),
        },
    );
    assert_eq!(
        outcome_after_recorded_exit(&mut core, killed, Some(CancelReason::RunnerLost)),
        JobOutcome::Cancelled
    );
    // Lost: the runtime reports an unknown end next.
    let mut core = restarted();
    found(&mut core, FoundJob::Lost);
    assert_eq!(
        outcome_after_exit(&mut core, ExitStatus::Unknown),
        JobOutcome::Lost
    );
}

/// Through the handshake to Active with `threshold_ms` as the API's runner-lost
/// threshold; the effects of authentication.
fn to_active(core: &mut Core, threshold_ms: u64) -> Vec<Effect> {
    let session = SessionParams {
        runner_lost_threshold_ms: threshold_ms,
        ..SessionParams::default()
    };
    let mut at_auth = Vec::new();
    for event in [
        Event::SocketOpened,
        Event::Message(ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            nonce: "n".into(),
        }),
        Event::Message(ServerMessage::Authenticated {
            runner_id: "r-1".into(),
            last_event_index: 0,
            session,
            hardware_known: true,
        }),
    ] {
        at_auth = core.dispatch(&event).list;
    }
    let _ = core.dispatch(&Event::Message(ServerMessage::StartupAck {}));
    let _ = core.dispatch(&Event::HardwareCollected {
        report: Box::new(
            serde_json::from_value(serde_json::json!({
                "os": {"name": "Linux", "kernel": "6", "arch": "x86_64", "hostname": "h"},
                "cpu": {"model": "c", "vendor": "v", "logical_cores": 1},
                "memory": {"total_bytes": 1},
                "job_disk": {"mount_point": "/", "total_bytes": 1, "available_bytes": 1},
                "gpus": {"kind": "none"}
            }))
            .expect("a record"),
        ),
        cache: fyn_runner::core::HardwareCache::Unchanged,
    });
    let _ = core.dispatch(&Event::Message(ServerMessage::HardwareConfirmed {}));
    let _ = core.dispatch(&Event::Message(ServerMessage::ReadyAck {}));
    assert_eq!(core.phase(), "Active");
    at_auth
}

#[test]
fn the_session_renews_the_leases_with_the_apis_threshold() {
    let mut core = restarted();
    let at_auth = to_active(&mut core, 42_000);
    assert!(at_auth.contains(&Effect::RenewLeases { within_ms: 42_000 }));
    // The startup report lists the job: the API keeps it.
    assert!(at_auth.contains(&Effect::Send(Outbound::Startup { jobs: vec![job()] })));
    // The answer to the latest heartbeat renews them; a late answer to an older one
    // proves nothing of the session now.
    let _ = core.dispatch(&Event::TimerFired {
        timer: fyn_runner::core::TimerKind::Heartbeat,
    });
    let _ = core.dispatch(&Event::TimerFired {
        timer: fyn_runner::core::TimerKind::Heartbeat,
    });
    let late = core.dispatch(&Event::Message(ServerMessage::HeartbeatAck { seq: 1 }));
    assert!(
        !late
            .list
            .iter()
            .any(|e| matches!(e, Effect::RenewLeases { .. }))
    );
    let effects = core.dispatch(&Event::Message(ServerMessage::HeartbeatAck { seq: 2 }));
    assert!(
        effects
            .list
            .contains(&Effect::RenewLeases { within_ms: 42_000 })
    );
}

#[test]
fn a_stop_leaves_jobs_running_and_a_drain_ends_them() {
    let mut core = restarted();
    to_active(&mut core, 120_000);
    let effects = core.dispatch(&Event::StopRequested);
    assert_eq!(core.phase(), "Stopped");
    assert!(
        !effects
            .list
            .iter()
            .any(|e| matches!(e, Effect::CancelJob { .. })),
        "{effects:?}"
    );
    assert!(effects.list.contains(&Effect::Exit {
        code: ExitCode::Clean
    }));

    let mut core = restarted();
    to_active(&mut core, 120_000);
    let _ = core.dispatch(&Event::ShutdownRequested {
        deadline_secs: Some(0),
        origin: None,
    });
    assert_eq!(core.phase(), "Draining.graceful");
    // A stop signal during the drain hurries it: the job was to end anyway.
    let effects = core.dispatch(&Event::StopRequested);
    assert_eq!(core.phase(), "Draining.forced");
    assert!(effects.list.contains(&Effect::CancelJob {
        job: job(),
        reason: CancelReason::Shutdown,
        grace_secs: 5,
    }));
}

/// A runner killed during a job's uploads and started again: the job's end comes back
/// from its supervisor's record, the files recorded as done are not uploaded again,
/// and each file is reported once; the summary counts them all.
#[test]
fn a_restart_during_the_uploads_uploads_and_reports_only_the_rest() {
    use fyn_runner::core::{Durable, OutputDone};
    let outputs: Vec<fyn_runner::protocol::OutputFile> = serde_json::from_value(
        serde_json::json!([{"glob": "*.csv", "url": "http://127.0.0.1:9/out/"}]),
    )
    .expect("outputs");
    let durable = DurableState {
        runner_id: Some("r-1".into()),
        jobs: vec![JobSpec {
            job_id: job().job_id,
            attempt: 1,
            command: vec!["true".into()],
            env: BTreeMap::new(),
            workdir: None,
            timeout_secs: 60,
            output_limit_bytes: 1 << 20,
            cancel_grace_secs: 5,
            inputs: Default::default(),
            outputs: outputs.clone(),
            kv: Default::default(),
        }],
        outputs_done: vec![OutputDone {
            job: job(),
            path: "a.csv".into(),
            uploaded: true,
        }],
        ..DurableState::default()
    };
    let mut core = Core::boot(CoreConfig::default(), BootMode::Resume, durable).0;
    let _ = found(&mut core, FoundJob::Ended { cancel: None });
    let exited = core
        .dispatch(&Event::JobExited {
            job: job(),
            status: ExitStatus::Exited { code: 0 },
            duration_ms: 5,
            stdout_bytes: 0,
            stderr_bytes: 0,
            cancel: None,
            usage: Default::default(),
        })
        .list;
    let upload = exited.iter().find_map(|effect| match effect {
        Effect::UploadOutputs(uploads) => Some((uploads.done.clone(), uploads.outputs.clone())),
        _ => None,
    });
    assert_eq!(upload, Some((vec!["a.csv".to_owned()], outputs)));
    assert!(
        !exited
            .iter()
            .any(|e| matches!(e, Effect::Persist(Durable::JobRemoved { .. }))),
        "the job ends after its uploads"
    );
    // A late report of the recorded file is not reported again.
    let again = core.dispatch(&Event::OutputUploaded {
        job: job(),
        path: "a.csv".into(),
        url: "http://127.0.0.1:9/out/a.csv".into(),
        sha256: "c".repeat(64),
        size: 1,
    });
    assert_eq!(again.spec_tokens(), ["notify(stale_job)"]);
    let b = core.dispatch(&Event::OutputUploaded {
        job: job(),
        path: "b.csv".into(),
        url: "http://127.0.0.1:9/out/b.csv".into(),
        sha256: "d".repeat(64),
        size: 2,
    });
    assert!(b.list.iter().any(|e| matches!(
        e,
        Effect::Persist(Durable::OutputDone { done }) if done.path == "b.csv" && done.uploaded
    )));
    assert!(b.list.iter().any(|e| matches!(
        e,
        Effect::Persist(Durable::OutboxAppend { event, .. })
            if matches!(&**event, RunnerEvent::JobOutputFile { path, .. } if path == "b.csv")
    )));
    let done = core.dispatch(&Event::UploadsDone {
        job: job(),
        missing: Vec::new(),
        wall_ms: None,
    });
    let events: Vec<RunnerEvent> = done
        .list
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(Durable::OutboxAppend { event, .. }) => Some((**event).clone()),
            _ => None,
        })
        .collect();
    assert!(
        matches!(
            &events[..],
            [
                RunnerEvent::JobOutputs {
                    uploaded: 2,
                    failed: 0,
                    ..
                },
                RunnerEvent::JobFinished {
                    outcome: JobOutcome::Succeeded,
                    ..
                }
            ]
        ),
        "{events:?}"
    );
}
