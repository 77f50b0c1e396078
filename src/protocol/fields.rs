//! How single fields are read, where a field's JSON type alone does not say whether it is
//! valid: the index range, base64 byte strings and the JSON payloads of hardware
//! messages. Each reader refuses what `docs/protocol.md` refuses, so a frame that breaks
//! one of these rules is `FrameError::Malformed` (close 1007) at decoding, never a
//! value that fails later in a store or in arithmetic.
//!
//! The rule for optional fields lives with the types that have them (`JobSpec`,
//! `SessionParams`): each is read through an `…OnWire` twin whose optional fields are
//! `Option`s, which serde reads alike when omitted and when `null`; the defaults are
//! applied in one place, the conversion from the twin.
//!
//! Owns no message type; must not import anything outside `protocol`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

/// The highest index either side may use: 2^53 − 1, the largest integer every JSON
/// implementation holds exactly (JavaScript's numbers included), far below where a
/// signed 64-bit store column (SQLite's) ends and far above what any runner can reach
/// (a million events a second for 285 years). Command and event indexes, the
/// positions that name them (`last_event_index`, `up_to`, `last_command_index`) and
/// heartbeat `seq` all live in this range.
pub const MAX_INDEX: u64 = (1 << 53) - 1;

/// An index that names one message: `1..=MAX_INDEX`.
pub(super) fn index<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if (1..=MAX_INDEX).contains(&value) {
        Ok(value)
    } else {
        Err(D::Error::custom(format_args!(
            "index {value} is outside 1..={MAX_INDEX}"
        )))
    }
}

/// A position: the highest index held or applied, 0 when none: `0..=MAX_INDEX`.
pub(super) fn position<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if value <= MAX_INDEX {
        Ok(value)
    } else {
        Err(D::Error::custom(format_args!(
            "index {value} is outside 0..={MAX_INDEX}"
        )))
    }
}

/// Bytes as standard base64 with padding (RFC 4648 §4); kept as the text it came as.
pub(super) fn base64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    match STANDARD.decode(&text) {
        Ok(_) => Ok(text),
        Err(e) => Err(D::Error::custom(format_args!(
            "not standard base64 with padding: {e}"
        ))),
    }
}

/// An optional fraction: a number from 0 to 1 (`job_progress.fraction`).
pub(super) fn fraction<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    let value = Option::<f64>::deserialize(deserializer)?;
    match value {
        Some(f) if !(0.0..=1.0).contains(&f) => Err(D::Error::custom(format_args!(
            "fraction {f} is outside 0..=1"
        ))),
        _ => Ok(value),
    }
}
