//! The trace file format: one JSON header line, then one JSON line per dispatched event.
//!
//! Everything written here has already been redacted (see `redact`), which is why
//! events and effects are held as JSON values rather than as `Event`/`Effect`: a
//! summarised output chunk no longer fits the typed shape it came from.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::{BootMode, CoreConfig, DurableState, Effect, Event};
use crate::protocol::PROTOCOL_VERSION;

use super::redact;

/// The value of the header's `trace` field; anything else is not one of our traces.
pub const TRACE_MAGIC: &str = "fyn-runner";

/// The layout of header and entries. Bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// The version of this build, written into every header it records.
pub const RUNNER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The spec-table version this build was made from. The table is parsed once; a table
/// that does not parse is a broken build, reported as an error all the same.
pub fn spec_version() -> Result<u32, crate::spec::SpecError> {
    static VERSION: OnceLock<Result<u32, crate::spec::SpecError>> = OnceLock::new();
    VERSION
        .get_or_init(|| crate::spec::embedded().map(|spec| spec.version))
        .clone()
}

/// When the recording started, as the caller's clock said (the trace module reads none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StartedAt {
    UnixMs(u64),
    Rfc3339(String),
}

impl StartedAt {
    /// The stamp as it appears in file names: digits, letters, `-` and `_` only, so a
    /// `.` can separate the part number and the name is safe on every file system.
    pub fn file_stamp(&self) -> String {
        match self {
            Self::UnixMs(ms) => ms.to_string(),
            Self::Rfc3339(text) => text
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect(),
        }
    }
}

impl std::fmt::Display for StartedAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnixMs(ms) => write!(f, "{ms} (unix ms)"),
            Self::Rfc3339(text) => f.write_str(text),
        }
    }
}

/// How the core was booted: everything `Core::boot` needs to start the same machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootRecord {
    pub mode: BootMode,
    pub config: CoreConfig,
    /// Redacted: job environment values are replaced. The core never reads them.
    pub durable: DurableState,
}

/// Line 1 of every trace file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceHeader {
    pub trace: String,
    pub format: u32,
    pub runner_version: String,
    pub protocol_version: u32,
    pub spec_version: u32,
    pub started_at: StartedAt,
    /// Set on every rotated part after the first: the file name of the part before.
    /// Such a part cannot be replayed alone, because the core has no snapshot to start
    /// from; replay begins at the first part and follows the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<String>,
    /// 0 for the first file of a recording, then 1, 2, ... for its rotated parts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub part: u32,
    pub boot: BootRecord,
    /// The redacted effects `Core::boot` returned.
    pub boot_effects: Vec<Value>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TraceHeader {
    /// The header for a recording of a core booted with these inputs; `boot_effects` is
    /// what `Core::boot` returned. Redacts the durable state and the effects.
    pub fn new(
        started_at: StartedAt,
        mode: BootMode,
        config: &CoreConfig,
        durable: &DurableState,
        boot_effects: &[Effect],
    ) -> Result<Self, crate::spec::SpecError> {
        Ok(Self {
            trace: TRACE_MAGIC.to_owned(),
            format: FORMAT_VERSION,
            runner_version: RUNNER_VERSION.to_owned(),
            protocol_version: PROTOCOL_VERSION,
            spec_version: spec_version()?,
            started_at,
            continues: None,
            part: 0,
            boot: BootRecord {
                mode,
                config: config.clone(),
                durable: redact::durable_state(durable),
            },
            boot_effects: redact::effects(boot_effects),
        })
    }
}

/// One dispatched event: what went in, the phase around it, and what came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// Supplied by the caller; strictly increasing within a recording.
    pub seq: u64,
    /// Wall-clock time in unix ms, for people; replay ignores it.
    pub wall_ms: u64,
    /// Monotonic time in ms since some fixed point; the timeline's axis.
    pub mono_ms: u64,
    /// The redacted `Event`.
    pub event: Value,
    pub before: String,
    pub after: String,
    /// The redacted `Effect`s, in the order the core returned them.
    pub effects: Vec<Value>,
}

impl TraceEntry {
    /// Record one dispatch: the event, the phases before and after (`Core::phase()`),
    /// and the effects it returned. Redacts event and effects.
    pub fn new(
        seq: u64,
        wall_ms: u64,
        mono_ms: u64,
        event: &Event,
        before: impl Into<String>,
        after: impl Into<String>,
        effects: &[Effect],
    ) -> Self {
        Self {
            seq,
            wall_ms,
            mono_ms,
            event: redact::event(event),
            before: before.into(),
            after: after.into(),
            effects: redact::effects(effects),
        }
    }

    /// The event's tag as written (`timer_fired`, `message`, `job_started`, ...).
    pub fn event_tag(&self) -> Option<&str> {
        self.event.get("event").and_then(Value::as_str)
    }

    /// The spec-table name of the event kind (`Hello`, `HeartbeatDue`), or the raw tag
    /// when the event does not decode.
    pub fn event_kind_name(&self) -> String {
        match redact::decode_event(&self.event) {
            Ok(decoded) => decoded.event.kind().name().to_owned(),
            Err(_) => self.event_tag().unwrap_or("?").to_owned(),
        }
    }

    /// The compact spec tokens of the recorded effects: `send(ready) start(ack)`.
    pub fn effect_tokens(&self) -> Vec<String> {
        self.effects.iter().map(redact::effect_token).collect()
    }
}

/// The lifecycle state of a phase string: `Validating.await_auth` → `Validating`.
pub fn state_of_phase(phase: &str) -> &str {
    phase.split('.').next().unwrap_or(phase)
}

/// Where each part of a recording lives: `trace-<stamp>.jsonl` for the first,
/// `trace-<stamp>.<n>.jsonl` for rotated part n. Stamps never contain `.`.
pub fn file_name(stamp: &str, part: u32) -> String {
    if part == 0 {
        format!("trace-{stamp}.jsonl")
    } else {
        format!("trace-{stamp}.{part}.jsonl")
    }
}

/// The stamp and part of a file name made by `file_name`, or `None` for other files.
pub fn parse_file_name(name: &str) -> Option<(String, u32)> {
    let inner = name.strip_prefix("trace-")?.strip_suffix(".jsonl")?;
    let (stamp, part) = match inner.rsplit_once('.') {
        Some((stamp, part)) => (stamp, part.parse::<u32>().ok().filter(|p| *p > 0)?),
        None => (inner, 0),
    };
    let valid = !stamp.is_empty()
        && stamp
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    valid.then(|| (stamp.to_owned(), part))
}

/// Orders trace files oldest first: by stamp (numerically for unix-ms stamps, so a
/// 14-digit stamp sorts after a 13-digit one), then by part.
pub fn file_order_key(stamp: &str, part: u32) -> (String, u32) {
    let key = if stamp.bytes().all(|b| b.is_ascii_digit()) {
        format!("{stamp:0>24}")
    } else {
        stamp.to_owned()
    };
    (key, part)
}
