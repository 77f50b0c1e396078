//! Events per second through the lifecycle core on a realistic session: handshake, then
//! heartbeats, commands, job reports and acknowledgements, with a reconnect now and
//! then. Run with `cargo bench --bench core_throughput`. One core, no I/O.
//!
//! `FYN_BENCH_KINDS=1` adds where the time goes: each dispatch timed alone over a few
//! more rounds, by `EventKind`, the clock's own cost taken off (and the drop of the
//! batch, which the next dispatch does, left out).
//! A change that moves the total is found in the kind that moved.
#![allow(clippy::disallowed_methods)] // measuring time is what this does

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use fyn_runner::core::{BootMode, Core, CoreConfig, DurableState, Event, HardwareCache, TimerKind};
use fyn_runner::protocol::{
    Command, ExitStatus, JobRef, JobSpec, OutputStream, PROTOCOL_VERSION, ServerMessage,
    SessionParams,
};

fn msg(m: ServerMessage) -> Event {
    Event::Message(m)
}

fn handshake(resumed: bool) -> Vec<Event> {
    let mut events = vec![
        Event::SocketOpened,
        msg(ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            nonce: "nonce".into(),
        }),
        msg(ServerMessage::Authenticated {
            runner_id: "r-1".into(),
            last_event_index: 0,
            session: SessionParams::default(),
            hardware_known: resumed,
        }),
    ];
    if !resumed {
        events.push(msg(ServerMessage::StartupAck {}));
        events.push(Event::HardwareCollected {
            report: Box::new(hardware_report(1)),
            cache: HardwareCache::Unchanged,
        });
        events.push(msg(ServerMessage::HardwareConfirmed {}));
    }
    events.push(msg(ServerMessage::ReadyAck {}));
    events
}

/// One job's life as the core sees it, plus the heartbeats around it.
fn job_cycle(index: u64, event_index: &mut u64) -> Vec<Event> {
    let job = JobRef {
        job_id: format!("job-{index}"),
        attempt: 1,
    };
    let spec = JobSpec {
        job_id: job.job_id.clone(),
        attempt: 1,
        command: vec!["simulate".into(), "--steps".into(), "1000".into()],
        env: BTreeMap::new(),
        workdir: None,
        timeout_secs: 3600,
        output_limit_bytes: 1 << 30,
        cancel_grace_secs: 10,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    };
    let mut events = vec![
        Event::TimerFired {
            timer: TimerKind::Heartbeat,
        },
        msg(ServerMessage::HeartbeatAck { seq: index }),
        msg(ServerMessage::Command {
            index,
            command: Command::StartJob { job: spec },
        }),
        Event::JobStarted {
            job: job.clone(),
            pid: 4242,
        },
    ];
    for chunk in 0..4u64 {
        events.push(Event::JobOutput {
            job: job.clone(),
            stream: OutputStream::Stdout,
            offset: chunk * 64,
            data: vec![b'x'; 64],
        });
        events.push(Event::TimerFired {
            timer: TimerKind::Heartbeat,
        });
        events.push(msg(ServerMessage::HeartbeatAck { seq: index }));
    }
    events.push(Event::JobExited {
        job,
        status: ExitStatus::Exited { code: 0 },
        duration_ms: 1200,
        stdout_bytes: 256,
        stderr_bytes: 0,
        cancel: None,
        usage: Default::default(),
    });
    *event_index += 7; // accepted, started, 4 output, finished
    events.push(msg(ServerMessage::EventsAck {
        up_to: *event_index,
    }));
    events
}

fn session(cycles: u64) -> Vec<Event> {
    let mut events = handshake(false);
    let mut event_index = 0;
    for i in 1..=cycles {
        events.extend(job_cycle(i, &mut event_index));
        if i % 100 == 0 {
            events.push(Event::SocketClosed {
                code: Some(1006),
                reason: String::new(),
            });
            events.push(Event::TimerFired {
                timer: TimerKind::Backoff,
            });
            events.extend(handshake(true));
        }
    }
    events
}

fn main() {
    let events = session(2_000);
    let rounds = 20;
    let durable = DurableState {
        runner_id: Some("r-1".into()),
        ..DurableState::default()
    };
    let mut best = f64::MAX;
    let mut effects_seen = 0usize;
    for _ in 0..rounds {
        let mut core = resumed_core(&durable);
        let mut effects = fyn_runner::core::Effects::default();
        let start = Instant::now();
        for event in &events {
            core.dispatch_into(black_box(event), &mut effects);
            effects_seen += black_box(effects.list.len());
        }
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(
            core.state_name(),
            "Active",
            "the session must end where it should"
        );
    }
    let per_sec = events.len() as f64 / best;
    println!(
        "core_throughput: {} events/round, best of {rounds}: {:.3} ms, {:.1} M events/s, {:.0} ns/event ({} effects total)",
        events.len(),
        best * 1e3,
        per_sec / 1e6,
        best * 1e9 / events.len() as f64,
        effects_seen
    );
    if std::env::var_os("FYN_BENCH_KINDS").is_some() {
        print_kinds(&events, &durable);
    }
}

/// A core resumed from `durable`, as each round starts.
fn resumed_core(durable: &DurableState) -> Core {
    let config = CoreConfig {
        slots: 4,
        ..CoreConfig::default()
    };
    Core::boot(config, BootMode::Resume, durable.clone()).0
}

/// Each dispatch timed alone, summed by event kind, best of a few rounds per kind.
fn print_kinds(events: &[Event], durable: &DurableState) {
    use std::collections::BTreeMap;
    let rounds = 5;
    let clock = clock_cost_ns();
    let mut best: BTreeMap<&'static str, (f64, usize)> = BTreeMap::new();
    for _ in 0..rounds {
        let mut core = resumed_core(durable);
        let mut effects = fyn_runner::core::Effects::default();
        let mut round: BTreeMap<&'static str, (f64, usize)> = BTreeMap::new();
        for event in events {
            // The previous batch is dropped here, outside the timing: `dispatch_into`
            // would drop it first thing, and count it with this event.
            effects.clear();
            let start = Instant::now();
            core.dispatch_into(black_box(event), &mut effects);
            let ns = start.elapsed().as_nanos() as f64 - clock;
            let entry = round.entry(event.kind().name()).or_default();
            entry.0 += ns.max(0.0);
            entry.1 += 1;
        }
        for (kind, (ns, count)) in round {
            let slot = best.entry(kind).or_insert((f64::MAX, count));
            slot.0 = slot.0.min(ns);
        }
    }
    let total: f64 = best.values().map(|(ns, _)| ns).sum();
    let mut rows: Vec<_> = best.into_iter().collect();
    rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    println!("by event kind (best of {rounds}, {clock:.0} ns of clock taken off each):");
    for (kind, (ns, count)) in rows {
        println!(
            "  {kind:<24} {count:>7} events {:>7.0} ns/event {:>5.1} % of the time",
            ns / count as f64,
            100.0 * ns / total
        );
    }
}

/// What reading the clock twice costs, to take off each timed dispatch.
fn clock_cost_ns() -> f64 {
    let samples = 100_000;
    let mut least = f64::MAX;
    for _ in 0..5 {
        let mut sum = 0.0;
        for _ in 0..samples {
            let start = Instant::now();
            sum += black_box(start).elapsed().as_nanos() as f64;
        }
        least = least.min(sum / samples as f64);
    }
    least
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
