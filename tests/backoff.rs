//! The reconnect backoff, against the rule in `docs/protocol.md` §15 and the spec
//! table: attempt n waits a uniform draw from [0, min(cap, base·2^(n-1))] ms, and the
//! attempt count starts again only after a session proved healthy (Active, and one
//! heartbeat acknowledged). A failure that strikes right after every handshake must
//! back off to the cap, never turn into a tight reconnect loop.

use fyn_runner::core::{
    BackoffPolicy, BootMode, Core, CoreConfig, Delay, DurableState, Effect, Effects, Event,
    HardwareCache, TimerKind,
};
use fyn_runner::protocol::{PROTOCOL_VERSION, ServerMessage, SessionParams};

fn msg(message: ServerMessage) -> Event {
    Event::Message(message)
}

fn config(seed: u64) -> CoreConfig {
    CoreConfig {
        backoff: BackoffPolicy {
            base_ms: 500,
            cap_ms: 60_000,
        },
        rng_seed: seed,
        ..CoreConfig::default()
    }
}

fn resumed() -> DurableState {
    DurableState {
        runner_id: Some("r-1".into()),
        ..DurableState::default()
    }
}

/// The backoff delay a batch armed, if it armed one.
fn backoff_of(effects: &Effects) -> Option<u64> {
    effects.list.iter().find_map(|effect| match effect {
        Effect::StartTimer {
            timer: TimerKind::Backoff,
            delay: Delay::Millis(ms),
        } => Some(*ms),
        _ => None,
    })
}

/// From the connection attempt to Active: the whole handshake of a reconnect.
fn handshake(core: &mut Core) {
    for event in [
        Event::SocketOpened,
        msg(ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            nonce: "n".into(),
        }),
        msg(ServerMessage::Authenticated {
            runner_id: "r-1".into(),
            last_event_index: 0,
            session: SessionParams::default(),
            hardware_known: true,
        }),
        msg(ServerMessage::ReadyAck {}),
    ] {
        let _ = core.dispatch(&event);
    }
}

/// The link drops; returns the backoff delay the loss armed, then lets it elapse.
fn lose_the_link(core: &mut Core) -> u64 {
    let effects = core.dispatch(&Event::SocketClosed {
        code: Some(1006),
        reason: String::new(),
    });
    assert_eq!(core.phase(), "Reconnecting.waiting");
    let delay = backoff_of(&effects).expect("a loss arms the backoff");
    let _ = core.dispatch(&Event::TimerFired {
        timer: TimerKind::Backoff,
    });
    assert_eq!(core.phase(), "Reconnecting.connecting");
    delay
}

/// The first connection of a resumed runner (start-up report, hardware), up to Active.
fn first_session(seed: u64) -> Core {
    let (mut core, _) = Core::boot(config(seed), BootMode::Resume, resumed());
    for event in [
        Event::SocketOpened,
        msg(ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            nonce: "n".into(),
        }),
        msg(ServerMessage::Authenticated {
            runner_id: "r-1".into(),
            last_event_index: 0,
            session: SessionParams::default(),
            hardware_known: true,
        }),
        msg(ServerMessage::StartupAck {}),
        Event::HardwareCollected {
            report: serde_json::from_value(serde_json::json!({
                "os": {"name": "Linux", "kernel": "6.8.0", "arch": "x86_64", "hostname": "t"},
                "cpu": {"model": "Test CPU", "vendor": "GenuineIntel", "logical_cores": 4},
                "memory": {"total_bytes": 1024},
                "job_disk": {"mount_point": "/", "total_bytes": 1024, "available_bytes": 512},
                "gpus": {"kind": "none"}
            }))
            .expect("a valid hardware record"),
            cache: HardwareCache::Unchanged,
        },
        msg(ServerMessage::HardwareConfirmed {}),
        msg(ServerMessage::ReadyAck {}),
    ] {
        let _ = core.dispatch(&event);
    }
    assert_eq!(core.phase(), "Active");
    core
}

#[test]
fn a_hundred_failures_after_the_handshake_back_off_to_the_cap() {
    let policy = config(0).backoff;
    for seed in [0, 1, 0xdead_beef] {
        let mut core = first_session(seed);
        let mut delays = Vec::new();
        for _ in 0..100 {
            delays.push(lose_the_link(&mut core));
            // The handshake completes, and the link drops before any heartbeat ack.
            handshake(&mut core);
            assert_eq!(core.phase(), "Active");
        }
        for (n, delay) in delays.iter().enumerate() {
            let attempt = u32::try_from(n + 1).expect("small");
            assert!(
                *delay <= policy.ceiling_ms(attempt),
                "seed {seed}, attempt {attempt}: {delay} ms above the ceiling"
            );
        }
        // The attempt count was never reset: past the doublings, every delay draws from
        // the whole range up to the cap, so the loop's rate stays bounded on average.
        let late = &delays[10..];
        let mean = late.iter().sum::<u64>() / late.len() as u64;
        assert!(
            mean > policy.cap_ms / 4,
            "seed {seed}: mean late delay {mean} ms; the backoff was reset"
        );
        assert!(late.iter().all(|d| *d <= policy.cap_ms));
        let total: u64 = delays.iter().sum();
        assert!(
            total > 100 * policy.cap_ms / 4,
            "seed {seed}: 100 failures took only {total} ms of backoff"
        );
    }
}

#[test]
fn a_heartbeat_acknowledged_in_active_starts_the_backoff_again() {
    let policy = config(0).backoff;
    let mut core = first_session(3);
    for _ in 0..12 {
        let _ = lose_the_link(&mut core);
        handshake(&mut core);
    }
    // Healthy: a heartbeat goes out and is acknowledged.
    let _ = core.dispatch(&Event::TimerFired {
        timer: TimerKind::Heartbeat,
    });
    let _ = core.dispatch(&msg(ServerMessage::HeartbeatAck { seq: 1 }));
    let delay = lose_the_link(&mut core);
    assert!(
        delay <= policy.ceiling_ms(1),
        "after a healthy session the first retry draws from [0, base]: {delay} ms"
    );
}

#[test]
fn the_same_seed_draws_the_same_delays_and_another_seed_others() {
    let run = |seed| {
        let mut core = first_session(seed);
        (0..20)
            .map(|_| {
                let delay = lose_the_link(&mut core);
                handshake(&mut core);
                delay
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42), "replay draws what the run drew");
    assert_ne!(run(42), run(43));
}
