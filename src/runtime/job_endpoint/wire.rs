//! The line protocol of a job's local endpoint: one JSON object per line each way, a
//! request and its answer, as many as the job likes on one connection. Shared by the
//! endpoint (the runner's side) and `fyn-runner job` (the job's side).
//!
//! ```text
//! {"op": "progress", "fraction": 0.42, "message": "iteration 420"}  ->  {"ok": true}
//! {"op": "kv_put", "key": "checkpoint", "value": "step-40"}        ->  {"ok": true}
//! {"op": "kv_get", "key": "checkpoint"}                            ->  {"ok": true, "value": "step-40"}
//! {"op": "kv_get", "key": "nothing"}                               ->  {"ok": true, "value": null}
//! anything refused                                                 ->  {"ok": false, "error": "..."}
//! ```
//!
//! Must not import anything of the runtime but this module's siblings.

use serde::{Deserialize, Serialize};

/// The longest line either side reads: a 64 KiB value with JSON's escapes and room.
pub const MAX_LINE_BYTES: usize = 512 * 1024;

/// What a job asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Progress {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fraction: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    KvPut {
        key: String,
        value: String,
    },
    KvGet {
        key: String,
    },
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub ok: bool,
    /// A `kv_get`'s value; `null` when the key has none (present and `null` is not the
    /// same as absent here).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A field that is there, `null` included, is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

impl Answer {
    pub fn done() -> Self {
        Self {
            ok: true,
            value: None,
            error: None,
        }
    }

    pub fn value(value: Option<String>) -> Self {
        Self {
            ok: true,
            value: Some(value),
            error: None,
        }
    }

    pub fn refused(why: impl Into<String>) -> Self {
        Self {
            ok: false,
            value: None,
            error: Some(why.into()),
        }
    }

    /// One line of JSON, newline included.
    pub fn line(&self) -> String {
        let mut text = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"ok":false,"error":"unencodable answer"}"#.to_owned());
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_as_the_module_doc_shows_them() -> Result<(), serde_json::Error> {
        let progress: Request = serde_json::from_str(
            r#"{"op": "progress", "fraction": 0.42, "message": "iteration 420"}"#,
        )?;
        assert_eq!(
            progress,
            Request::Progress {
                fraction: Some(0.42),
                message: Some("iteration 420".into())
            }
        );
        let get: Request = serde_json::from_str(r#"{"op": "kv_get", "key": "k"}"#)?;
        assert_eq!(get, Request::KvGet { key: "k".into() });
        assert!(
            serde_json::from_str::<Request>(r#"{"op": "kv_get", "key": "k", "x": 1}"#).is_err()
        );
        assert_eq!(Answer::done().line(), "{\"ok\":true}\n");
        assert_eq!(Answer::value(None).line(), "{\"ok\":true,\"value\":null}\n");
        let read: Answer = serde_json::from_str(r#"{"ok": true, "value": null}"#)?;
        assert_eq!(read, Answer::value(None));
        let read: Answer = serde_json::from_str(r#"{"ok": true, "value": "v"}"#)?;
        assert_eq!(read, Answer::value(Some("v".into())));
        Ok(())
    }
}
