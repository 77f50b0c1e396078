//! What never reaches a trace file: job environment values (they carry secrets), the
//! query of a job's input and output URLs (a presigned URL's signature and credentials)
//! and job output bytes (they are large, and may carry secrets too).
//!
//! Environment values become `"<redacted>"`; keys stay, so a reader can still see which
//! variables a job got. Output becomes `{len, fnv1a64}`: enough to tell chunks apart
//! and to check that what the core sent matches what the process wrote, without the
//! bytes. Redaction happens on the JSON form because a summary no longer fits the typed
//! `Vec<u8>`/base64 field it replaces.
//!
//! Replay cannot recover the bytes, so it feeds the core a placeholder of the same
//! length and maps the placeholder's summary back to the recorded one (`OutputAlias`)
//! when it redacts what the core returned: replay compares modulo redaction.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::core::{DurableState, Effect, Event};
use crate::protocol::{JobRef, JobSpec, OutputStream};

/// What a job environment value becomes.
pub const REDACTED: &str = "<redacted>";

/// The largest output chunk replay will materialise as a placeholder. Far above any
/// chunk the runtime produces; it only stops a doctored trace from exhausting memory.
pub const MAX_PLACEHOLDER_BYTES: u64 = 64 << 20;

/// FNV-1a, 64-bit: a fast, dependency-free checksum. Not cryptographic, and it does not
/// need to be: it tells chunks apart, it does not hide them (the length is public too).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// What job output bytes are replaced by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSummary {
    pub len: u64,
    /// 16 lowercase hex digits; a string, because JSON readers lose u64 precision.
    pub fnv1a64: String,
}

impl OutputSummary {
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            len: bytes.len() as u64,
            fnv1a64: format!("{:016x}", fnv1a64(bytes)),
        }
    }
}

/// The placeholder replay fed the core for one recorded chunk, and that chunk's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputAlias {
    pub placeholder: OutputSummary,
    pub recorded: OutputSummary,
}

/// A recorded event turned back into something the core can take.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    pub event: Event,
    /// Set when the event's output bytes were summarised and replaced by a placeholder.
    pub alias: Option<OutputAlias>,
}

fn to_value<T: Serialize>(item: &T) -> Value {
    // Events and effects have string keys only, so this cannot fail; keep a readable
    // marker rather than panic should a future type break that.
    serde_json::to_value(item).unwrap_or_else(|e| {
        let mut map = Map::new();
        map.insert("unserialisable".into(), Value::String(e.to_string()));
        Value::Object(map)
    })
}

fn redact_env_map(env: Option<&mut Value>) {
    if let Some(Value::Object(map)) = env {
        for value in map.values_mut() {
            *value = Value::String(REDACTED.to_owned());
        }
    }
}

/// `job.env` values and the queries of `job.inputs[].url` and `job.outputs[].url` of a
/// serialised `JobSpec` holder.
fn redact_job_env(holder: Option<&mut Value>) {
    let Some(job) = holder else {
        return;
    };
    redact_env_map(job.get_mut("env"));
    for list in ["inputs", "outputs"] {
        redact_file_urls(job.get_mut(list));
    }
}

/// The queries of the URLs of a list of job files.
fn redact_file_urls(list: Option<&mut Value>) {
    if let Some(Value::Array(files)) = list {
        for url in files.iter_mut().filter_map(|file| file.get_mut("url")) {
            if let Value::String(text) = url {
                *text = redacted_url(text);
            }
        }
    }
}

/// A job file's URL as a trace keeps it: a query, if any, replaced by `<redacted>`.
pub fn redacted_url(url: &str) -> String {
    if url.contains('?') {
        format!("{}?{REDACTED}", crate::protocol::url_without_query(url))
    } else {
        url.to_owned()
    }
}

/// The redacted JSON form of an event.
pub fn event(event: &Event) -> Value {
    use crate::protocol::{Command, ServerMessage};
    match event {
        Event::JobOutput {
            job,
            stream,
            offset,
            data,
        } => {
            // Built by hand so the bytes are never turned into a JSON array first.
            let record = JobOutputRecord {
                event: "job_output".to_owned(),
                job: job.clone(),
                stream: *stream,
                offset: *offset,
                data: OutputSummary::of(data),
            };
            to_value(&record)
        }
        Event::Message(ServerMessage::Command {
            command: Command::StartJob { .. },
            ..
        }) => {
            let mut value = to_value(event);
            redact_job_env(value.get_mut("command").and_then(|c| c.get_mut("job")));
            value
        }
        _ => to_value(event),
    }
}

/// The recorded shape of `Event::JobOutput`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobOutputRecord {
    event: String,
    job: JobRef,
    stream: OutputStream,
    offset: u64,
    data: OutputSummary,
}

/// The redacted JSON form of an effect.
pub fn effect(effect: &Effect) -> Value {
    effect_aliased(effect, None)
}

pub fn effects(list: &[Effect]) -> Vec<Value> {
    list.iter().map(effect).collect()
}

/// As `effects`, mapping a replay placeholder's summary back to the recorded one.
pub fn effects_aliased(list: &[Effect], alias: Option<&OutputAlias>) -> Vec<Value> {
    list.iter().map(|e| effect_aliased(e, alias)).collect()
}

/// Which part of an effect's JSON redaction rewrites.
enum Redaction {
    None,
    /// `job.env` values.
    JobEnv,
    /// `event.data`, the base64 of an output chunk.
    OutputData,
    /// `outputs[].url` (an upload's presigned URLs).
    OutputUrls,
}

fn redaction_of(effect: &Effect) -> Redaction {
    use crate::core::{Durable, Outbound};
    use crate::protocol::RunnerEvent;
    match effect {
        Effect::SpawnJob { .. }
        | Effect::FetchInputs { .. }
        | Effect::Persist(Durable::JobAdded { .. }) => Redaction::JobEnv,
        Effect::Send(Outbound::Event { event, .. })
        | Effect::Persist(Durable::OutboxAppend { event, .. })
            if matches!(**event, RunnerEvent::JobOutput { .. }) =>
        {
            Redaction::OutputData
        }
        Effect::UploadOutputs(_) => Redaction::OutputUrls,
        _ => Redaction::None,
    }
}

fn effect_aliased(effect: &Effect, alias: Option<&OutputAlias>) -> Value {
    let mut value = to_value(effect);
    match redaction_of(effect) {
        Redaction::JobEnv => redact_job_env(value.get_mut("job")),
        Redaction::OutputData => {
            if let Some(data) = value.get_mut("event").and_then(|e| e.get_mut("data")) {
                *data = summarise_base64(data, alias);
            }
        }
        Redaction::OutputUrls => redact_file_urls(value.get_mut("outputs")),
        Redaction::None => {}
    }
    value
}

/// Whether `actual`, redacted, equals `recorded`: the comparison replay makes, done
/// without building the effects' JSON (see `compare`).
pub fn effects_match(actual: &[Effect], recorded: &[Value], alias: Option<&OutputAlias>) -> bool {
    use super::compare::{Rule, matches};
    actual.len() == recorded.len()
        && actual.iter().zip(recorded).all(|(effect, expected)| {
            let rule = match redaction_of(effect) {
                Redaction::None => Rule::Plain,
                Redaction::JobEnv => Rule::JobHolder,
                Redaction::OutputData => Rule::OutputHolder(alias),
                Redaction::OutputUrls => Rule::FilesHolder,
            };
            matches(effect, expected, rule)
        })
}

/// The summary of a base64 `data` field: of the decoded bytes, so it equals the summary
/// of the `Event::JobOutput` chunk it came from. Text that is not base64 (the core never
/// writes such) is summarised as it stands.
fn summarise_base64(data: &Value, alias: Option<&OutputAlias>) -> Value {
    let Value::String(text) = data else {
        return data.clone();
    };
    let summary = match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(bytes) => OutputSummary::of(&bytes),
        Err(_) => OutputSummary::of(text.as_bytes()),
    };
    let summary = match alias {
        Some(alias) if alias.placeholder == summary => alias.recorded.clone(),
        _ => summary,
    };
    to_value(&summary)
}

/// The durable state with job environment values replaced.
pub fn durable_state(durable: &DurableState) -> DurableState {
    let mut redacted = durable.clone();
    for job in &mut redacted.jobs {
        redact_spec(job);
    }
    redacted
}

fn redact_spec(job: &mut JobSpec) {
    for value in job.env.values_mut() {
        REDACTED.clone_into(value);
    }
    for input in &mut job.inputs {
        input.url = redacted_url(&input.url);
    }
    for output in &mut job.outputs {
        output.url = redacted_url(&output.url);
    }
}

/// Turn a recorded event back into an `Event`. A summarised output chunk becomes a
/// placeholder of zero bytes of the recorded length, with the alias that maps it back.
pub fn decode_event(value: &Value) -> Result<DecodedEvent, String> {
    let summarised = value.get("event").and_then(Value::as_str) == Some("job_output")
        && value.get("data").is_some_and(Value::is_object);
    if !summarised {
        return Event::deserialize(value)
            .map(|event| DecodedEvent { event, alias: None })
            .map_err(|e| format!("not an event: {e}"));
    }
    let record = JobOutputRecord::deserialize(value).map_err(|e| format!("not an event: {e}"))?;
    if record.data.len > MAX_PLACEHOLDER_BYTES {
        return Err(format!(
            "output chunk of {} bytes exceeds the {} bytes replay accepts",
            record.data.len, MAX_PLACEHOLDER_BYTES
        ));
    }
    let len = usize::try_from(record.data.len).map_err(|_| "output chunk too large".to_owned())?;
    let data = vec![0u8; len];
    let alias = OutputAlias {
        placeholder: OutputSummary::of(&data),
        recorded: record.data,
    };
    Ok(DecodedEvent {
        event: Event::JobOutput {
            job: record.job,
            stream: record.stream,
            offset: record.offset,
            data,
        },
        alias: Some(alias),
    })
}

/// The spec token (`send(event)`, `persist(outbox)`) of a recorded effect, or its raw
/// tag when it does not decode.
pub fn effect_token(value: &Value) -> String {
    if let Ok(effect) = Effect::deserialize(value) {
        return effect.spec_token();
    }
    // A summarised output chunk: put any string back where the base64 was, which is
    // enough to decode it for its name.
    let mut patched = value.clone();
    if let Some(data) = patched.get_mut("event").and_then(|e| e.get_mut("data"))
        && data.is_object()
    {
        *data = Value::String(String::new());
        if let Ok(effect) = Effect::deserialize(&patched) {
            return effect.spec_token();
        }
    }
    value
        .get("effect")
        .and_then(Value::as_str)
        .map_or_else(|| "?".to_owned(), |tag| format!("{tag}?"))
}
