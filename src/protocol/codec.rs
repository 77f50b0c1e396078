//! Strict encoding and decoding of frames. Decoding never panics: every way a frame
//! can be wrong is a `FrameError` value that names what was wrong.
//!
//! The rules, as `docs/protocol.md` §2 states them: at most `MAX_FRAME_BYTES`; JSON; a
//! known `type`; no unknown field; every required field present and not `null`; an
//! optional field omitted or `null` means its default (one rule, kept by the types:
//! optional fields are `Option`s on the wire, see `fields`); indexes within
//! `1..=MAX_INDEX`, positions within `0..=MAX_INDEX`; byte strings standard base64.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::fields::MAX_INDEX;
use super::messages::{RunnerMessage, ServerMessage};

/// The largest text frame either side accepts. Job output travels in chunks far below
/// this, so a bigger frame is a bug or an attack, not a legitimate message.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("binary frames are not part of the protocol")]
    Binary,
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    #[error("frame has no string field \"type\"")]
    MissingType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("message {kind:?} is malformed: {detail}")]
    Malformed { kind: String, detail: String },
    /// A `command` whose `index` is an index (`1..=MAX_INDEX`) but whose rest does not
    /// decode (an unknown `kind`, a field of the wrong type, a `start_job` whose spec
    /// cannot be read). The runner answers it under that index (`command_rejected`)
    /// instead of closing, so the server can retire it (`docs/protocol.md` §6.1).
    #[error("command {index} cannot be read: {detail}")]
    UnreadableCommand { index: u64, detail: String },
}

/// Why a connection is closed, mapped to one WebSocket close code each.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CloseReason {
    /// Orderly end: shutdown, registration finished, eviction acknowledged.
    Normal,
    /// The peer sent a frame that could not be decoded.
    BadFrame,
    /// The peer sent a frame larger than `MAX_FRAME_BYTES`.
    TooLarge,
    /// The peer sent a valid message that the current phase does not allow.
    Violation,
    /// An expected reply did not arrive in time.
    AckTimeout,
    /// This side failed internally.
    Internal,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::BadFrame => 1007,
            Self::TooLarge => 1009,
            Self::Internal => 1011,
            Self::AckTimeout => 4000,
            Self::Violation => 4002,
        }
    }

    /// As the trace and the logs name it: serde's name, by the same snake_case rule.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl FrameError {
    /// The close reason a receiver uses when it drops a connection over this error.
    pub fn close_reason(&self) -> CloseReason {
        match self {
            Self::TooLarge { .. } => CloseReason::TooLarge,
            _ => CloseReason::BadFrame,
        }
    }
}

pub fn encode<T: Serialize>(message: &T) -> String {
    // Serializing our own plain data types (strings, numbers, maps with string keys)
    // cannot fail; fall back to an empty object rather than panic if it ever did.
    serde_json::to_string(message).unwrap_or_else(|_| String::from("{}"))
}

pub fn decode_server(text: &str) -> Result<ServerMessage, FrameError> {
    decode(text, SERVER_TYPES)
}

pub fn decode_runner(text: &str) -> Result<RunnerMessage, FrameError> {
    decode(text, RUNNER_TYPES)
}

const SERVER_TYPES: &[&str] = &[
    "hello",
    "token_accepted",
    "token_rejected",
    "registered",
    "authenticated",
    "auth_rejected",
    "startup_ack",
    "hardware_confirmed",
    "ready_ack",
    "heartbeat_ack",
    "command",
    "events_ack",
    "evicted",
    "left",
];

const RUNNER_TYPES: &[&str] = &[
    "validate_token",
    "register",
    "authenticate",
    "startup",
    "hardware_full",
    "hardware_changes",
    "hardware_unchanged",
    "ready",
    "heartbeat",
    "command_ack",
    "event",
    "stopping",
    "leaving",
];

/// Decode in two steps so the error says *which* way the frame is wrong: size, JSON,
/// the `type` tag, then the message's own fields.
fn decode<T: DeserializeOwned>(text: &str, known: &[&str]) -> Result<T, FrameError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            size: text.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or(FrameError::MissingType)?
        .to_owned();
    if !known.contains(&kind.as_str()) {
        return Err(FrameError::UnknownType(kind));
    }
    let command_index = readable_command_index(&kind, &value);
    let malformed = |kind: String, detail: String| match command_index {
        Some(index) => FrameError::UnreadableCommand { index, detail },
        None => FrameError::Malformed { kind, detail },
    };
    if let Some(detail) = tag_not_a_name(&kind, &value) {
        return Err(malformed(kind, detail));
    }
    serde_json::from_value(value).map_err(|e| malformed(kind, e.to_string()))
}

/// The index of a `command` frame, when it is one (`1..=MAX_INDEX`): such a frame is a
/// command under that index whatever the rest holds, and is answered under it.
fn readable_command_index(kind: &str, value: &serde_json::Value) -> Option<u64> {
    if kind != "command" {
        return None;
    }
    value
        .get("index")
        .and_then(serde_json::Value::as_u64)
        .filter(|index| (1..=MAX_INDEX).contains(index))
}

/// The tags inside messages, by message type: where the variant is named.
const NESTED_TAGS: &[(&str, &[&str])] = &[
    ("command", &["command", "kind"]),
    ("event", &["event", "kind"]),
    ("event", &["event", "status", "how"]),
];

/// serde takes a number for the tag of an internally tagged enum (the variant's
/// position); the protocol names variants, so a tag that is not a string is refused.
fn tag_not_a_name(kind: &str, value: &serde_json::Value) -> Option<String> {
    NESTED_TAGS
        .iter()
        .filter(|(message, _)| *message == kind)
        .find_map(|(_, path)| {
            let tag = path.iter().try_fold(value, |node, key| node.get(key))?;
            (!tag.is_string()).then(|| format!("`{}` must be a string", path.join(".")))
        })
}
