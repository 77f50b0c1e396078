//! Trace replay speed: generate a 1,000,000-event trace of a long Active session
//! (heartbeat/ack pairs, jobs with output, event acknowledgements), then time
//! (a) parsing every line into a `TraceEntry` and (b) a full replay, which parses,
//! dispatches every event through a fresh core, and compares phases and redacted
//! effects. Target: replay within 1.5x of parsing.
//!
//! `cargo bench --bench replay`. Under `cargo test` (no `--bench` argument) it runs a
//! small trace once, as a smoke test.
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use fyn_runner::core::{BootMode, Core, CoreConfig, DurableState, Event, HardwareCache, TimerKind};
use fyn_runner::protocol::{
    Command, ExitStatus, JobRef, JobSpec, OutputStream, PROTOCOL_VERSION, ServerMessage,
    SessionParams,
};
use fyn_runner::trace::{
    Recorder, ReplayOutcome, StartedAt, TraceEntry, TraceHeader, TraceReader, replay,
};

fn msg(message: ServerMessage) -> Event {
    Event::Message(message)
}

fn handshake() -> Vec<Event> {
    vec![
        Event::SocketOpened,
        msg(ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            nonce: "nonce".into(),
        }),
        msg(ServerMessage::Authenticated {
            runner_id: "r-1".into(),
            last_event_index: 0,
            session: SessionParams::default(),
            hardware_known: false,
        }),
        msg(ServerMessage::StartupAck {}),
        Event::HardwareCollected {
            report: Box::new(hardware_report(16)),
            cache: HardwareCache::Unchanged,
        },
        msg(ServerMessage::HardwareConfirmed {}),
        msg(ServerMessage::ReadyAck {}),
    ]
}

/// One job amid heartbeats: 20 events, 6 of them reported to the API.
fn cycle(index: u64, event_index: &mut u64) -> Vec<Event> {
    let job = JobRef {
        job_id: format!("job-{index}"),
        attempt: 1,
    };
    let mut env = BTreeMap::new();
    env.insert("TOKEN".to_owned(), "secret".to_owned());
    let spec = JobSpec {
        job_id: job.job_id.clone(),
        attempt: 1,
        command: vec!["simulate".into(), "--steps".into(), "1000".into()],
        env,
        workdir: None,
        timeout_secs: 3600,
        output_limit_bytes: 1 << 30,
        cancel_grace_secs: 10,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    };
    let heartbeat = |events: &mut Vec<Event>, seq: u64| {
        events.push(Event::TimerFired {
            timer: TimerKind::Heartbeat,
        });
        events.push(msg(ServerMessage::HeartbeatAck { seq }));
    };
    let mut events = Vec::with_capacity(20);
    for _ in 0..4 {
        heartbeat(&mut events, index);
    }
    events.push(msg(ServerMessage::Command {
        index,
        command: Command::StartJob { job: spec },
    }));
    events.push(Event::JobStarted {
        job: job.clone(),
        pid: 4242,
    });
    for chunk in 0..3u64 {
        events.push(Event::JobOutput {
            job: job.clone(),
            stream: OutputStream::Stdout,
            offset: chunk * 64,
            data: vec![b'x'; 64],
        });
        heartbeat(&mut events, index);
    }
    events.push(Event::JobExited {
        job,
        status: ExitStatus::Exited { code: 0 },
        duration_ms: 1200,
        stdout_bytes: 192,
        stderr_bytes: 0,
        cancel: None,
        usage: Default::default(),
    });
    *event_index += 6; // accepted, started, 3 output, finished
    events.push(msg(ServerMessage::EventsAck {
        up_to: *event_index,
    }));
    events
}

/// Record `count` events of a session into `dir`; returns the file.
fn generate(dir: &Path, count: u64) -> std::path::PathBuf {
    let config = CoreConfig {
        slots: 4,
        ..CoreConfig::default()
    };
    let durable = DurableState {
        runner_id: Some("r-1".into()),
        ..DurableState::default()
    };
    let (mut core, boot) = Core::boot(config.clone(), BootMode::Resume, durable.clone());
    let header = TraceHeader::new(
        StartedAt::UnixMs(1_740_000_000_000),
        BootMode::Resume,
        &config,
        &durable,
        &boot.list,
    )
    .expect("the embedded spec parses");
    let mut recorder = Recorder::create(dir, header, u64::MAX, 1).expect("recorder starts");
    let mut seq = 0u64;
    let mut event_index = 0u64;
    // `pop` takes from the back, so every batch is stored reversed.
    let mut pending = handshake();
    pending.reverse();
    let mut index = 0u64;
    while seq < count {
        if pending.is_empty() {
            index += 1;
            pending = cycle(index, &mut event_index);
            pending.reverse();
        }
        let Some(event) = pending.pop() else { break };
        seq += 1;
        let before = core.phase();
        let effects = core.dispatch(&event);
        let after = core.phase();
        let entry = TraceEntry::new(
            seq,
            1_740_000_000_000 + seq * 7,
            seq * 7,
            &event,
            before,
            after,
            &effects.list,
        );
        recorder.record(entry).expect("recording works");
    }
    assert_eq!(core.state_name(), "Active", "the session must stay Active");
    recorder.flush().expect("flush works");
    recorder.path().to_owned()
}

fn parse_all(path: &Path) -> u64 {
    let mut reader = TraceReader::open(path).expect("trace opens");
    let mut count = 0u64;
    while let Some((_, entry)) = reader.next_entry().expect("trace parses") {
        std::hint::black_box(&entry);
        count += 1;
    }
    count
}

fn replay_all(path: &Path) -> u64 {
    match replay(path, None, None, |_| {}).expect("trace replays") {
        ReplayOutcome::Matched(summary) => summary.steps,
        ReplayOutcome::Diverged(d) => panic!("replay diverged:\n{}", d.render(false)),
    }
}

fn best_of(rounds: usize, mut run: impl FnMut() -> u64) -> (u64, f64) {
    let mut best = f64::MAX;
    let mut count = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        count = run();
        best = best.min(start.elapsed().as_secs_f64());
    }
    (count, best)
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (events, rounds) = if benching {
        (1_000_000, 3)
    } else {
        (20_000, 1)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let start = Instant::now();
    let path = generate(dir.path(), events);
    let generated = start.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "replay bench: {events} events, {:.1} MB, recorded in {:.2} s ({:.0} events/s)",
        bytes as f64 / 1e6,
        generated,
        events as f64 / generated
    );
    let (parsed, parse_s) = best_of(rounds, || parse_all(&path));
    let (replayed, replay_s) = best_of(rounds, || replay_all(&path));
    assert_eq!(parsed, events);
    assert_eq!(replayed, events);
    println!(
        "  parse only:  {:.3} s, {:.0} events/s",
        parse_s,
        events as f64 / parse_s
    );
    println!(
        "  full replay: {:.3} s, {:.0} events/s",
        replay_s,
        events as f64 / replay_s
    );
    println!(
        "  replay / parse: {:.2}x (target <= 1.50x)",
        replay_s / parse_s
    );
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
