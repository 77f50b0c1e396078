//! Session traces: record a real `Core` through a synthetic session, then replay it,
//! doctor it, rotate it and draw it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fyn_runner::core::{BootMode, Core, CoreConfig, DurableState, Event, HardwareCache, TimerKind};
use fyn_runner::protocol::{
    Command, ExitStatus, JobRef, JobSpec, OutputStream, PROTOCOL_VERSION, ServerMessage,
    SessionParams,
};
use fyn_runner::trace::{
    DivergenceAspect, OutputSummary, REDACTED, Recorder, ReplayError, ReplayOptions, ReplayOutcome,
    StartedAt, TraceEntry, TraceHeader, effects_match, fnv1a64, read_trace, redact_effects,
    render_svg, render_text, replay, run_replay_command,
};

const TOKEN: &str = "tok-very-secret-registration-token-4711";
const ENV_SECRET: &str = "hunter2-env-secret-value";
const URL_SECRET: &str = "X-Amz-Signature=presigned-url-secret";
const OUTPUT: &[u8] = b"model loss=0.0123 api_key=sk-live-output-secret\n";

fn msg(message: ServerMessage) -> Event {
    Event::Message(message)
}

fn timer(timer: TimerKind) -> Event {
    Event::TimerFired { timer }
}

fn session_params() -> SessionParams {
    SessionParams {
        heartbeat_interval_ms: 15_000,
        ack_timeout_ms: 10_000,
        runner_lost_threshold_ms: 120_000,
    }
}

fn job_spec(id: &str) -> JobSpec {
    let mut env = BTreeMap::new();
    env.insert("API_TOKEN".to_owned(), ENV_SECRET.to_owned());
    env.insert("MODE".to_owned(), "train".to_owned());
    JobSpec {
        job_id: id.to_owned(),
        attempt: 1,
        command: vec!["train".into(), "--epochs".into(), "3".into()],
        env,
        workdir: None,
        timeout_secs: 3600,
        output_limit_bytes: 1 << 20,
        cancel_grace_secs: 10,
        inputs: vec![fyn_runner::protocol::InputFile {
            url: format!("https://store.example/in/mesh?{URL_SECRET}"),
            sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            path: "mesh.vtu".into(),
            executable: false,
        }],
        outputs: vec![fyn_runner::protocol::OutputFile {
            path: Some("result.txt".into()),
            glob: None,
            url: format!("https://store.example/out/result?{URL_SECRET}"),
        }],
        kv: Default::default(),
    }
}

fn job_ref(id: &str) -> JobRef {
    JobRef {
        job_id: id.to_owned(),
        attempt: 1,
    }
}

/// A core being driven, with every dispatch recorded the way the driver will do it.
struct Session {
    core: Core,
    recorder: Recorder,
    seq: u64,
    mono: u64,
}

impl Session {
    fn start(
        dir: &Path,
        mode: BootMode,
        durable: DurableState,
        max_bytes: u64,
        keep: usize,
    ) -> Self {
        let config = CoreConfig {
            slots: 2,
            ..CoreConfig::default()
        };
        let (core, boot) = Core::boot(config.clone(), mode, durable.clone());
        let header = TraceHeader::new(
            StartedAt::Rfc3339("2025-03-01T12:00:00.000Z".into()),
            mode,
            &config,
            &durable,
            &boot.list,
        )
        .expect("the embedded spec parses");
        let recorder = Recorder::create(dir, header, max_bytes, keep).expect("recorder starts");
        Self {
            core,
            recorder,
            seq: 0,
            mono: 1_000,
        }
    }

    fn step(&mut self, after_ms: u64, event: Event) {
        self.seq += 1;
        self.mono += after_ms;
        let before = self.core.phase();
        let effects = self.core.dispatch(&event);
        let after = self.core.phase();
        let entry = TraceEntry::new(
            self.seq,
            1_740_830_400_000 + self.mono,
            self.mono,
            &event,
            before,
            after,
            &effects.list,
        );
        // Replay's allocation-free comparison must agree with the recorded JSON on
        // every effect of every session the tests drive.
        assert!(
            effects_match(&effects.list, &entry.effects, None),
            "streaming comparison disagrees with redaction at #{}: {:?}",
            self.seq,
            entry.effects
        );
        self.recorder.record(entry).expect("recording works");
    }

    fn finish(mut self) -> PathBuf {
        self.recorder.flush().expect("flush works");
        self.recorder.path().to_owned()
    }

    /// The first session of this process: start-up report and a full hardware sync.
    fn first_handshake(&mut self) {
        self.step(1_500, Event::SocketOpened);
        self.hello_and_auth("n-1", false);
        self.step(500, msg(ServerMessage::StartupAck {}));
        self.step(
            3_000,
            Event::HardwareCollected {
                report: Box::new(hardware_report(16)),
                cache: HardwareCache::Missing,
            },
        );
        self.step(1_000, msg(ServerMessage::HardwareConfirmed {}));
        self.step(1_000, msg(ServerMessage::ReadyAck {}));
    }

    /// A later session of the same process: the API holds our hardware already.
    fn resumed_handshake(&mut self, nonce: &str) {
        self.step(1_500, Event::SocketOpened);
        self.hello_and_auth(nonce, true);
        self.step(1_000, msg(ServerMessage::ReadyAck {}));
    }

    fn hello_and_auth(&mut self, nonce: &str, hardware_known: bool) {
        self.step(
            500,
            msg(ServerMessage::Hello {
                protocol: PROTOCOL_VERSION,
                nonce: nonce.into(),
            }),
        );
        self.step(
            1_000,
            msg(ServerMessage::Authenticated {
                runner_id: "r-7".into(),
                last_event_index: 0,
                session: session_params(),
                hardware_known,
            }),
        );
    }

    fn heartbeat(&mut self, seq: u64) {
        self.step(15_000, timer(TimerKind::Heartbeat));
        self.step(40, msg(ServerMessage::HeartbeatAck { seq }));
    }

    /// Everything after the handshake: two overlapping jobs, a missed heartbeat, a
    /// reconnect, a second handshake and a shutdown.
    fn body(&mut self) {
        self.heartbeat(1);
        self.step(
            500,
            msg(ServerMessage::Command {
                index: 1,
                command: Command::StartJob {
                    job: job_spec("job-1"),
                },
            }),
        );
        self.step(
            30,
            Event::JobStarted {
                job: job_ref("job-1"),
                pid: 4242,
            },
        );
        self.step(
            2_000,
            msg(ServerMessage::Command {
                index: 2,
                command: Command::StartJob {
                    job: job_spec("job-2"),
                },
            }),
        );
        self.step(
            30,
            Event::JobStarted {
                job: job_ref("job-2"),
                pid: 4243,
            },
        );
        self.step(
            1_000,
            Event::JobOutput {
                job: job_ref("job-1"),
                stream: OutputStream::Stdout,
                offset: 0,
                data: OUTPUT.to_vec(),
            },
        );
        self.heartbeat(2);
        self.step(
            3_000,
            Event::JobExited {
                job: job_ref("job-1"),
                status: ExitStatus::Exited { code: 0 },
                duration_ms: 20_000,
                stdout_bytes: OUTPUT.len() as u64,
                stderr_bytes: 0,
                cancel: None,
                usage: Default::default(),
            },
        );
        // Its outputs: the declared file was not written.
        self.step(
            10,
            Event::UploadsDone {
                job: job_ref("job-1"),
                missing: vec!["result.txt".into()],
                wall_ms: None,
            },
        );
        self.step(50, msg(ServerMessage::EventsAck { up_to: 6 }));
        // The API goes quiet: the heartbeat is not answered.
        self.step(11_000, timer(TimerKind::Heartbeat));
        self.step(10_000, timer(TimerKind::Ack));
        self.step(2_000, timer(TimerKind::Backoff));
        self.resumed_handshake("n-2");
        self.step(
            500,
            msg(ServerMessage::Command {
                index: 3,
                command: Command::StartJob {
                    job: job_spec("job-3"),
                },
            }),
        );
        self.step(
            30,
            Event::JobStarted {
                job: job_ref("job-3"),
                pid: 4250,
            },
        );
        self.step(
            4_000,
            Event::JobExited {
                job: job_ref("job-2"),
                status: ExitStatus::Exited { code: 1 },
                duration_ms: 30_000,
                stdout_bytes: 0,
                stderr_bytes: 0,
                cancel: None,
                usage: Default::default(),
            },
        );
        // Its outputs: the declared file was not written.
        self.step(
            10,
            Event::UploadsDone {
                job: job_ref("job-2"),
                missing: vec!["result.txt".into()],
                wall_ms: None,
            },
        );
        // Heartbeats count on across sessions: 1 and 2 answered, 3 not, then 4.
        self.heartbeat(4);
        self.step(
            2_000,
            Event::SocketClosed {
                code: Some(1006),
                reason: String::new(),
            },
        );
        self.step(1_000, timer(TimerKind::Backoff));
        self.resumed_handshake("n-3");
        self.step(
            3_000,
            Event::ShutdownRequested {
                deadline_secs: Some(30),
                origin: Some(fyn_runner::core::StopOrigin::DrainCommand),
            },
        );
        self.step(
            5_000,
            Event::JobExited {
                job: job_ref("job-3"),
                status: ExitStatus::Exited { code: 0 },
                duration_ms: 40_000,
                stdout_bytes: 0,
                stderr_bytes: 0,
                cancel: None,
                usage: Default::default(),
            },
        );
        // Its outputs: the declared file was not written.
        self.step(
            10,
            Event::UploadsDone {
                job: job_ref("job-3"),
                missing: vec!["result.txt".into()],
                wall_ms: None,
            },
        );
        self.step(100, msg(ServerMessage::EventsAck { up_to: 100 }));
    }
}

fn resumed_durable() -> DurableState {
    DurableState {
        runner_id: Some("r-7".into()),
        ..DurableState::default()
    }
}

/// The standard synthetic session, resumed with an identity, into one file.
fn record_session(dir: &Path) -> PathBuf {
    let mut session = Session::start(dir, BootMode::Resume, resumed_durable(), u64::MAX, 100);
    session.first_handshake();
    session.body();
    session.finish()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("trace readable")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("trace writable");
}

fn replay_all(path: &Path) -> Result<ReplayOutcome, ReplayError> {
    replay(path, None, None, |_| {})
}

#[test]
fn a_recorded_session_replays_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        "trace-2025-03-01T12_00_00_000Z.jsonl"
    );
    let mut printed = Vec::new();
    let outcome = replay(&path, None, None, |step| printed.push(step.render(false))).unwrap();
    let ReplayOutcome::Matched(summary) = outcome else {
        panic!("replay diverged: {outcome:?}");
    };
    let total = lines(&path).len() as u64 - 1;
    assert_eq!(summary.steps, total);
    assert_eq!(summary.last_seq, Some(total));
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_eq!(summary.final_phase, "Stopped");
    assert_eq!(printed.len() as u64, total);
    assert!(
        printed[0].starts_with(
            "#1  Validating.connecting → Validating.await_hello  [SocketOpened]  effects: "
        ),
        "{}",
        printed[0]
    );
    // The trace went through every lifecycle stage the session is meant to show.
    let trace = read_trace(&path).unwrap();
    let states: Vec<&str> = trace.entries.iter().map(|e| e.after.as_str()).collect();
    for state in [
        "HardwareSync",
        "Active",
        "Reconnecting",
        "Draining",
        "Stopped",
    ] {
        assert!(
            states.iter().any(|s| s.starts_with(state)),
            "the session never reached {state}: {states:?}"
        );
    }
}

#[test]
fn from_and_until_limit_what_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let mut seen = Vec::new();
    let outcome = replay(&path, Some(5), Some(9), |step| seen.push(step.entry.seq)).unwrap();
    assert_eq!(seen, vec![5, 6, 7, 8, 9]);
    let ReplayOutcome::Matched(summary) = outcome else {
        panic!("diverged");
    };
    assert!(summary.stopped_at_until);
    assert_eq!(summary.steps, 9, "the machine is driven from the start");
}

fn edit_line(path: &Path, seq: u64, edit: impl FnOnce(&mut serde_json::Value)) -> usize {
    let mut all = lines(path);
    let index = all
        .iter()
        .position(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64() == Some(seq)
        })
        .expect("the seq is in the trace");
    let mut value: serde_json::Value = serde_json::from_str(&all[index]).unwrap();
    edit(&mut value);
    all[index] = serde_json::to_string(&value).unwrap();
    write_lines(path, &all);
    index + 1
}

#[test]
fn an_edited_after_phase_is_caught_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let line = edit_line(&path, 12, |v| v["after"] = "Ready".into());
    let outcome = replay_all(&path).unwrap();
    let ReplayOutcome::Diverged(d) = outcome else {
        panic!("the edit went unnoticed");
    };
    assert_eq!(d.seq, Some(12));
    assert_eq!(d.line, line);
    assert_eq!(d.aspect, DivergenceAspect::PhaseAfter);
    assert_eq!(d.expected_phase, "Ready");
    assert_eq!(d.actual_phase, "Active");
    let seqs: Vec<u64> = d.context.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        vec![9, 10, 11, 12, 13],
        "three before, the step, one after"
    );
    let text = d.render(false);
    assert!(text.contains("DIVERGED at #12"), "{text}");
}

#[test]
fn an_edited_effect_is_caught_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    // The heartbeat at seq 8 arms timers; claim it armed another delay.
    let line = edit_line(&path, 8, |v| {
        let effects = v["effects"].as_array_mut().unwrap();
        let timer = effects
            .iter_mut()
            .find(|e| e["effect"] == "start_timer")
            .expect("a heartbeat arms a timer");
        timer["delay"] = serde_json::json!({"millis": 1});
    });
    let ReplayOutcome::Diverged(d) = replay_all(&path).unwrap() else {
        panic!("the edit went unnoticed");
    };
    assert_eq!(d.seq, Some(8));
    assert_eq!(d.line, line);
    assert_eq!(d.aspect, DivergenceAspect::Effects);
    assert_ne!(d.expected_effects, d.actual_effects);
    assert_eq!(d.expected_phase, d.actual_phase);
}

/// The seq of the first entry that arms the reconnect backoff, and its delay.
fn first_backoff(path: &Path) -> (u64, u64) {
    lines(path)
        .iter()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find_map(|entry| {
            let delay = entry["effects"].as_array()?.iter().find_map(|e| {
                (e["effect"] == "start_timer" && e["timer"] == "backoff")
                    .then(|| e["delay"]["millis"].as_u64())
                    .flatten()
            })?;
            Some((entry["seq"].as_u64()?, delay))
        })
        .expect("the session loses its link once")
}

#[test]
fn an_edited_backoff_delay_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let (seq, delay) = first_backoff(&path);
    edit_line(&path, seq, |v| {
        for effect in v["effects"].as_array_mut().unwrap() {
            if effect["timer"] == "backoff" && effect["effect"] == "start_timer" {
                effect["delay"] = serde_json::json!({"millis": delay + 1});
            }
        }
    });
    let ReplayOutcome::Diverged(d) = replay_all(&path).unwrap() else {
        panic!("the edited delay went unnoticed");
    };
    assert_eq!(d.seq, Some(seq));
    assert_eq!(d.aspect, DivergenceAspect::Effects);
}

#[test]
fn the_jitter_seed_in_the_header_decides_the_backoff_delays() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let (seq, _) = first_backoff(&path);
    let mut all = lines(&path);
    let mut header: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
    assert_eq!(
        header["boot"]["config"]["rng_seed"], 0,
        "recorded with its seed"
    );
    header["boot"]["config"]["rng_seed"] = 12_345.into();
    all[0] = serde_json::to_string(&header).unwrap();
    write_lines(&path, &all);
    let ReplayOutcome::Diverged(d) = replay_all(&path).unwrap() else {
        panic!("another seed drew the same delay");
    };
    assert_eq!(
        d.seq,
        Some(seq),
        "the first backoff is where the seeds part"
    );
    assert_eq!(d.aspect, DivergenceAspect::Effects);
}

#[test]
fn an_edited_output_summary_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let trace = read_trace(&path).unwrap();
    let seq = trace
        .entries
        .iter()
        .find(|e| e.event_tag() == Some("job_output"))
        .unwrap()
        .seq;
    // A different checksum for the bytes the process wrote: what the core sent (as
    // recorded) no longer matches the chunk it was given.
    edit_line(&path, seq, |v| {
        v["event"]["data"]["fnv1a64"] = "0000000000000000".into();
    });
    let ReplayOutcome::Diverged(d) = replay_all(&path).unwrap() else {
        panic!("the edit went unnoticed");
    };
    assert_eq!(d.seq, Some(seq));
    assert_eq!(d.aspect, DivergenceAspect::Effects);
}

#[test]
fn edited_boot_effects_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let mut all = lines(&path);
    let mut header: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
    header["boot_effects"] = serde_json::json!([]);
    all[0] = header.to_string();
    write_lines(&path, &all);
    let ReplayOutcome::Diverged(d) = replay_all(&path).unwrap() else {
        panic!("the edit went unnoticed");
    };
    assert_eq!(d.aspect, DivergenceAspect::BootEffects);
    assert_eq!(d.seq, None);
    assert_eq!(d.line, 1);
}

#[test]
fn a_trace_from_another_spec_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let mut all = lines(&path);
    let mut header: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
    header["spec_version"] = 99.into();
    all[0] = header.to_string();
    write_lines(&path, &all);
    let error = replay_all(&path).unwrap_err();
    assert!(
        matches!(error, ReplayError::SpecVersion { found: 99, .. }),
        "{error:?}"
    );
    let this_build = fyn_runner::trace::spec_version().unwrap();
    assert!(
        error.to_string().contains(&format!(
            "trace from spec version 99, this build has {this_build}"
        )),
        "{error}"
    );
}

#[test]
fn other_format_and_protocol_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let original = lines(&path);
    for (field, expect) in [
        ("format", "trace format 7"),
        ("protocol_version", "protocol version 7"),
    ] {
        let mut all = original.clone();
        let mut header: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
        header[field] = 7.into();
        all[0] = header.to_string();
        write_lines(&path, &all);
        let error = replay_all(&path).unwrap_err().to_string();
        assert!(error.contains(expect), "{field}: {error}");
    }
}

#[test]
fn files_that_are_not_traces_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 4] = [
        ("empty.jsonl", ""),
        ("other.jsonl", "{\"hello\": 1}\n"),
        ("text.jsonl", "just some log line\n"),
        ("array.jsonl", "[1, 2, 3]\n"),
    ];
    for (name, text) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let error = replay_all(&path).unwrap_err();
        assert!(
            matches!(error, ReplayError::NotATrace { .. }),
            "{name}: {error:?}"
        );
        assert!(
            error.to_string().contains("not a fyn-runner trace"),
            "{error}"
        );
    }
    let missing = replay_all(&dir.path().join("missing.jsonl")).unwrap_err();
    assert!(matches!(missing, ReplayError::Io { .. }));
}

#[test]
fn a_corrupt_middle_line_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let mut all = lines(&path);
    all[6] = "{\"seq\": 6, \"wall_ms\": 1, \"mono_".into();
    write_lines(&path, &all);
    let error = replay_all(&path).unwrap_err();
    assert!(
        matches!(error, ReplayError::CorruptLine { line: 7, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(":7: corrupt trace line"),
        "{error}"
    );

    // Valid JSON that is not an event is named the same way.
    let path = record_session(&dir.path().join("again").tap_create());
    edit_line(&path, 3, |v| {
        v["event"] = serde_json::json!({"event": "no_such_event"})
    });
    let error = replay_all(&path).unwrap_err();
    assert!(
        matches!(error, ReplayError::CorruptLine { line: 4, .. }),
        "{error:?}"
    );
}

trait TapCreate {
    fn tap_create(self) -> Self;
}

impl TapCreate for PathBuf {
    fn tap_create(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn a_truncated_last_line_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let total = text.lines().count() as u64 - 1;
    // A crash in the middle of writing the last line: no newline, half the JSON.
    let last_start = text.trim_end().rfind('\n').unwrap() + 1;
    let cut = last_start + (text.len() - last_start) / 2;
    std::fs::write(&path, &text[..cut]).unwrap();
    let ReplayOutcome::Matched(summary) = replay_all(&path).unwrap() else {
        panic!("diverged");
    };
    assert_eq!(summary.steps, total - 1);
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    assert!(
        summary.warnings[0].contains("truncated"),
        "{:?}",
        summary.warnings
    );
}

#[test]
fn seq_must_grow() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    edit_line(&path, 5, |v| v["seq"] = 2.into());
    let error = replay_all(&path).unwrap_err();
    assert!(
        matches!(
            error,
            ReplayError::SeqOrder {
                line: 6,
                seq: 2,
                previous: 4,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn damaged_traces_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let original = std::fs::read(&path).unwrap();
    let damaged = dir.path().join("damaged.jsonl");
    // Cut the file at many points and overwrite bytes at many others; replay must
    // answer every time, with an outcome or an error.
    let step = (original.len() / 97).max(1);
    for at in (0..original.len()).step_by(step) {
        std::fs::write(&damaged, &original[..at]).unwrap();
        let _ = replay_all(&damaged);
        for byte in [b'"', b'}', b'9', 0xff] {
            let mut bytes = original.clone();
            bytes[at] = byte;
            std::fs::write(&damaged, &bytes).unwrap();
            let _ = replay_all(&damaged);
        }
    }
    // A summary claiming an absurd output length is refused, not allocated.
    let trace = read_trace(&path).unwrap();
    let seq = trace
        .entries
        .iter()
        .find(|e| e.event_tag() == Some("job_output"))
        .unwrap()
        .seq;
    edit_line(&path, seq, |v| v["event"]["data"]["len"] = u64::MAX.into());
    assert!(matches!(
        replay_all(&path),
        Err(ReplayError::CorruptLine { .. })
    ));
}

#[test]
fn secrets_never_reach_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    // A first start: registration with a one-time token, then the whole session. The
    // token lives in the runtime, never in an event; the job's environment and output
    // do pass through the core and must be redacted.
    let mut session = Session::start(
        dir.path(),
        BootMode::Register,
        DurableState::default(),
        u64::MAX,
        10,
    );
    session.step(50, Event::SocketOpened);
    session.step(
        20,
        msg(ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            nonce: "n-0".into(),
        }),
    );
    session.step(30, msg(ServerMessage::TokenAccepted {}));
    session.step(
        10,
        Event::KeyGenerated {
            public_key: "cHVibGljLWtleQ".into(),
        },
    );
    session.step(
        30,
        msg(ServerMessage::Registered {
            runner_id: "r-7".into(),
        }),
    );
    session.step(5, Event::StepDone);
    session.step(
        30,
        msg(ServerMessage::Authenticated {
            runner_id: "r-7".into(),
            last_event_index: 0,
            session: session_params(),
            hardware_known: false,
        }),
    );
    session.step(20, msg(ServerMessage::StartupAck {}));
    session.step(
        400,
        Event::HardwareCollected {
            report: Box::new(hardware_report(16)),
            cache: HardwareCache::Missing,
        },
    );
    session.step(40, msg(ServerMessage::HardwareConfirmed {}));
    session.step(20, msg(ServerMessage::ReadyAck {}));
    session.body();
    let path = session.finish();

    let text = std::fs::read_to_string(&path).unwrap();
    use base64::Engine;
    let output_b64 = base64::engine::general_purpose::STANDARD.encode(OUTPUT);
    let output_text = String::from_utf8_lossy(OUTPUT).trim_end().to_owned();
    for secret in [
        TOKEN,
        ENV_SECRET,
        output_b64.as_str(),
        output_text.as_str(),
        "sk-live-output-secret",
        URL_SECRET,
    ] {
        assert!(!text.contains(secret), "{secret:?} leaked into the trace");
    }
    // A job file's URL is kept without its query.
    assert!(text.contains("https://store.example/in/mesh?<redacted>"));
    // What is kept instead: the variable names, and a summary of the output.
    assert!(text.contains(REDACTED));
    assert!(text.contains("API_TOKEN"));
    let summary = OutputSummary::of(OUTPUT);
    assert!(text.contains(&summary.fnv1a64));
    // Redacted or not, the trace still replays (modulo redaction) to the end.
    let outcome = replay_all(&path).unwrap();
    assert!(outcome.is_match(), "{outcome:?}");
}

#[test]
fn redaction_covers_the_durable_state_of_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let durable = DurableState {
        runner_id: Some("r-7".into()),
        last_applied_command: 4,
        last_event_index: 9,
        acked_event_index: 9,
        jobs: vec![job_spec("job-9")],
        ..DurableState::default()
    };
    let mut session = Session::start(dir.path(), BootMode::Resume, durable, u64::MAX, 10);
    session.first_handshake();
    session.step(
        10,
        Event::JobExited {
            job: job_ref("job-9"),
            status: ExitStatus::Unknown,
            duration_ms: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            cancel: None,
            usage: Default::default(),
        },
    );
    let path = session.finish();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(ENV_SECRET));
    assert!(lines(&path)[0].contains(REDACTED));
    assert!(replay_all(&path).unwrap().is_match());
}

#[test]
fn fnv1a64_matches_the_reference_vectors() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    assert_eq!(
        OutputSummary::of(b"foobar"),
        OutputSummary {
            len: 6,
            fnv1a64: "85944171f73967e8".into()
        }
    );
}

fn trace_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn rotation_splits_the_trace_and_keeps_the_newest_files() {
    let dir = tempfile::tempdir().unwrap();
    // An older session's trace and an unrelated file share the directory.
    std::fs::write(dir.path().join("trace-2025-02-01T00_00_00Z.jsonl"), "old\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "keep me\n").unwrap();
    let mut session = Session::start(dir.path(), BootMode::Resume, resumed_durable(), 4_300, 3);
    session.first_handshake();
    session.body();
    let current = session.finish();
    let names = trace_files(dir.path());
    let traces: Vec<&String> = names.iter().filter(|n| n.starts_with("trace-")).collect();
    assert_eq!(traces.len(), 3, "{names:?}");
    assert!(names.contains(&"notes.txt".to_owned()));
    assert!(
        !names.iter().any(|n| n.starts_with("trace-2025-02-01")),
        "{names:?}"
    );
    assert!(!names.contains(&"trace-2025-03-01T12_00_00_000Z.jsonl".to_owned()));
    assert!(current.exists());
    // Every part starts with the header and names the part before it.
    let last = lines(&current);
    let header: serde_json::Value = serde_json::from_str(&last[0]).unwrap();
    assert_eq!(header["trace"], "fyn-runner");
    let part = header["part"].as_u64().unwrap();
    assert!(
        part >= 3,
        "the session should need several files, got part {part}"
    );
    assert_eq!(
        header["continues"],
        format!("trace-2025-03-01T12_00_00_000Z.{}.jsonl", part - 1)
    );
    // A later part can still be read and drawn (the newest may hold only its header,
    // when the last entry filled the part before it)...
    let tail = read_trace(&current).unwrap();
    assert_eq!(tail.header.part as u64, part);
    let tail = if tail.entries.is_empty() {
        read_trace(&dir.path().join(header["continues"].as_str().unwrap())).unwrap()
    } else {
        tail
    };
    assert!(!tail.entries.is_empty());
    assert!(render_text(&tail.entries, 40).contains("state"));
    // ...but not replayed alone.
    let error = replay_all(&current).unwrap_err();
    assert!(
        matches!(error, ReplayError::NotChainStart { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("first file of the chain"),
        "{error}"
    );
}

#[test]
fn a_rotated_chain_replays_from_its_first_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut session = Session::start(dir.path(), BootMode::Resume, resumed_durable(), 4_000, 100);
    session.first_handshake();
    session.body();
    let total = session.seq;
    let last = session.finish();
    let first = dir.path().join("trace-2025-03-01T12_00_00_000Z.jsonl");
    let ReplayOutcome::Matched(summary) = replay_all(&first).unwrap() else {
        panic!("diverged");
    };
    assert_eq!(summary.steps, total);
    assert_eq!(summary.files.len(), trace_files(dir.path()).len());
    assert_eq!(summary.files.last(), Some(&last));
    let trace = read_trace(&first).unwrap();
    assert_eq!(trace.entries.len() as u64, total);
}

/// Unix only: Windows cannot take away a folder while the recorder holds a file in it,
/// so the failure cannot be provoked this way there.
#[cfg(unix)]
#[test]
fn recording_stops_after_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut session = Session::start(dir.path(), BootMode::Resume, resumed_durable(), 200, 10);
    // Take the directory away: the next rotation cannot create its file.
    std::fs::remove_dir_all(dir.path()).unwrap();
    let entry = |seq| TraceEntry::new(seq, 0, 0, &Event::SocketOpened, "a", "b", &[]);
    let first = session.recorder.record(entry(1));
    assert!(first.is_err(), "the failed rotation is reported");
    assert!(session.recorder.is_stopped());
    assert!(session.recorder.record(entry(2)).is_ok(), "and only once");
    assert!(session.recorder.flush().is_ok());
}

#[test]
fn a_second_recording_with_the_same_stamp_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Session::start(
        dir.path(),
        BootMode::Resume,
        resumed_durable(),
        u64::MAX,
        10,
    );
    let config = CoreConfig::default();
    let header = TraceHeader::new(
        StartedAt::Rfc3339("2025-03-01T12:00:00.000Z".into()),
        BootMode::Resume,
        &config,
        &DurableState::default(),
        &[],
    )
    .unwrap();
    let error = Recorder::create(dir.path(), header, 1000, 10).unwrap_err();
    assert!(error.to_string().contains("already exists"), "{error}");
}

#[test]
fn unix_ms_stamps_name_files_too() {
    let dir = tempfile::tempdir().unwrap();
    let header = TraceHeader::new(
        StartedAt::UnixMs(1_740_830_400_123),
        BootMode::Resume,
        &CoreConfig::default(),
        &resumed_durable(),
        &[],
    )
    .unwrap();
    let recorder = Recorder::create(dir.path(), header, 1000, 10).unwrap();
    assert_eq!(
        recorder.path().file_name().unwrap().to_str().unwrap(),
        "trace-1740830400123.jsonl"
    );
    drop(recorder);
    let text = std::fs::read_to_string(dir.path().join("trace-1740830400123.jsonl")).unwrap();
    assert!(text.contains("\"started_at\":1740830400123"), "{text}");
}

#[test]
fn the_replay_command_prints_steps_and_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let path = record_session(dir.path());
    let svg = dir.path().join("timeline.svg");
    let options = ReplayOptions {
        from: Some(3),
        until: Some(4),
        verbose: true,
        timeline: true,
        svg: Some(svg.clone()),
        ..ReplayOptions::new(&path)
    };
    let mut out = Vec::new();
    let status = run_replay_command(&options, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("#3  Validating.await_auth → "), "{text}");
    assert!(text.contains("    event:  {"), "{text}");
    assert!(!text.contains("#5 "), "{text}");
    assert!(text.contains("replay matched: 4 events"), "{text}");
    assert!(text.contains("timeline:"), "{text}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    edit_line(&path, 10, |v| v["after"] = "Stopped".into());
    let mut out = Vec::new();
    let status = run_replay_command(&ReplayOptions::new(&path), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(status, 1, "{text}");
    assert!(text.contains("<-- diverged"), "{text}");
    assert!(text.contains("DIVERGED at #10"), "{text}");
}

#[test]
fn timeline_text_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let trace = read_trace(&record_session(dir.path())).unwrap();
    insta::assert_snapshot!("timeline_text", render_text(&trace.entries, 100));
}

#[test]
fn timeline_svg_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let trace = read_trace(&record_session(dir.path())).unwrap();
    insta::assert_snapshot!("timeline_svg", render_svg(&trace.entries));
}

#[test]
fn timelines_of_nothing_render() {
    assert_eq!(render_text(&[], 80), "timeline: no events\n");
    assert!(render_svg(&[]).contains("no events"));
}

/// The trace module must stay replayable anywhere: no runtime, no tokio, no clock.
#[test]
fn the_trace_module_names_no_runtime_and_no_clock() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/trace");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut in_block_comment = false;
        for (number, line) in text.lines().enumerate() {
            // Module docs may name what the module avoids; code may not.
            if line.trim_start().starts_with("/*") {
                in_block_comment = true;
            }
            if in_block_comment {
                in_block_comment = !line.contains("*/");
                continue;
            }
            let code = line.split("//").next().unwrap_or("");
            for word in [
                "crate::runtime",
                "tokio",
                "SystemTime",
                "Instant",
                "getrandom",
            ] {
                assert!(
                    !code.contains(word),
                    "{}:{}: the trace module must not use `{word}`",
                    path.display(),
                    number + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 6);
}

#[test]
fn the_comparison_notices_redacted_fields_changing() {
    let mut core = Core::boot(
        CoreConfig {
            slots: 2,
            ..CoreConfig::default()
        },
        BootMode::Resume,
        resumed_durable(),
    )
    .0;
    for event in [
        Event::SocketOpened,
        msg(ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            nonce: "n".into(),
        }),
        msg(ServerMessage::Authenticated {
            runner_id: "r-7".into(),
            last_event_index: 0,
            session: session_params(),
            hardware_known: true,
        }),
        msg(ServerMessage::StartupAck {}),
        Event::HardwareCollected {
            report: Box::new(hardware_report(1)),
            cache: HardwareCache::Unchanged,
        },
        msg(ServerMessage::HardwareConfirmed {}),
        msg(ServerMessage::ReadyAck {}),
    ] {
        let _ = core.dispatch(&event);
    }
    assert_eq!(core.phase(), "Active");
    let start = core.dispatch(&msg(ServerMessage::Command {
        index: 1,
        command: Command::StartJob {
            job: job_spec("job-1"),
        },
    }));
    let _ = core.dispatch(&Event::JobStarted {
        job: job_ref("job-1"),
        pid: 1,
    });
    let output = core.dispatch(&Event::JobOutput {
        job: job_ref("job-1"),
        stream: OutputStream::Stdout,
        offset: 0,
        data: OUTPUT.to_vec(),
    });
    for list in [&start.list, &output.list] {
        let recorded = redact_effects(list);
        assert!(effects_match(list, &recorded, None));
        for (i, value) in recorded.iter().enumerate() {
            let mut edits: Vec<serde_json::Value> = Vec::new();
            let mut extra = value.clone();
            extra["extra"] = 1.into();
            edits.push(extra);
            if value["job"]["env"].is_object() {
                let mut env = value.clone();
                env["job"]["env"]["API_TOKEN"] = ENV_SECRET.into();
                edits.push(env);
                let mut env = value.clone();
                env["job"]["env"]["NEW"] = REDACTED.into();
                edits.push(env);
            }
            if value["event"]["data"].is_object() {
                let mut data = value.clone();
                data["event"]["data"]["len"] = 1.into();
                edits.push(data);
                let mut data = value.clone();
                data["event"]["data"]["extra"] = 1.into();
                edits.push(data);
            }
            for edit in edits {
                let mut changed = recorded.clone();
                changed[i] = edit;
                assert!(!effects_match(list, &changed, None), "{}", changed[i]);
            }
        }
    }
    let mut shorter = redact_effects(&output.list);
    shorter.pop();
    assert!(!effects_match(&output.list, &shorter, None));
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
