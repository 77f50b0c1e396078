//! The traces in `tests/traces/` were recorded by real sessions (see
//! `examples/record_traces.rs`): registration, jobs of every outcome, drains,
//! a reconnect after a dev-server restart, an eviction, a job reattached after a stop. Today's machine must replay
//! each of them step for step; a change to the lifecycle that alters what the runner
//! does shows up here as a divergence at the step it changed.

use fyn_runner::trace::{ReplayOutcome, replay};

#[test]
fn every_recorded_session_replays_exactly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces");
    let mut replayed = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/traces exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let mut steps = 0;
        match replay(&path, None, None, |_| steps += 1) {
            Ok(ReplayOutcome::Matched(_)) => {}
            Ok(ReplayOutcome::Diverged(divergence)) => {
                panic!("{} diverges:\n{}", path.display(), divergence.render(true))
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
        assert!(steps > 5, "{} replayed only {steps} steps", path.display());
        replayed.push(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    replayed.sort();
    assert_eq!(
        replayed,
        [
            "drain-deadline-forces-the-stop.jsonl",
            "evicted-by-a-newer-session.jsonl",
            "jobs-every-outcome-and-drain.jsonl",
            "reattached-after-a-stop.jsonl",
            "reconnect-after-dev-server-restart.jsonl",
        ]
    );
}

#[test]
fn no_recorded_trace_holds_a_job_secret() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces");
    for entry in std::fs::read_dir(&dir).expect("tests/traces exists") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(
            !text.contains("do-not-record-me"),
            "{} leaks a job's environment",
            path.display()
        );
    }
}
