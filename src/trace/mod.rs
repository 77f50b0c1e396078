/*!
Session traces: recording every event the core is fed, replaying it, and drawing it.

Owns: the trace file format (`format`), what is kept out of it (`redact`), writing and
rotating trace files (`recorder`), replay against a fresh `Core` (`replay`, with the
allocation-free comparison in `compare`), the timeline renderings (`timeline`), and
the `replay` command's output (`command`).

Recording: build a `TraceHeader::new(started_at, mode, &config, &durable,
&boot_effects.list)` right after `Core::boot`, `Recorder::create(dir, header, max_bytes, keep)`, then for
every dispatch `recorder.record(TraceEntry::new(seq, wall_ms, mono_ms, &event, before,
after, &effects.list))`, where `before`/`after` are `Core::phase()` around the dispatch. The
caller supplies sequence numbers, times and the start stamp: this module reads no clock.
A failed write is returned once; the recorder then stops and ignores further entries.

Rotation: a file passing `max_bytes` continues in `trace-<stamp>.<n>.jsonl`, whose
header repeats the boot record and names the part before in `continues`. The core has
no snapshot, so only the first file of a chain can be replayed (replay follows the
parts from there); once `keep` has pruned a chain's first file, its later parts can
still be read and drawn (`read_trace`), but no longer replayed.

Must not import: `crate::runtime` or tokio. Replay is a pure function of the file and
the core, so it runs anywhere the library does.
*/

mod command;
mod compare;
mod format;
mod recorder;
mod redact;
mod replay;
mod timeline;

pub use command::{
    DEFAULT_TIMELINE_WIDTH, EXIT_DIVERGED, EXIT_MATCHED, ReplayCommandError, ReplayOptions,
    run_replay_command,
};
pub use format::{
    BootRecord, FORMAT_VERSION, RUNNER_VERSION, StartedAt, TRACE_MAGIC, TraceEntry, TraceHeader,
    file_name, parse_file_name, spec_version, state_of_phase,
};
pub use recorder::{Recorder, TraceError};
pub use redact::{
    DecodedEvent, MAX_PLACEHOLDER_BYTES, OutputAlias, OutputSummary, REDACTED, decode_event,
    durable_state as redact_durable_state, effect as redact_effect, effect_token,
    effects as redact_effects, effects_match, event as redact_event, fnv1a64,
};
pub use replay::{
    Divergence, DivergenceAspect, MAX_LINE_BYTES, ReplayError, ReplayOutcome, ReplaySummary,
    StepReport, Trace, TraceReader, read_trace, replay,
};
pub use timeline::{render_svg, render_text};
