//! The message tables of `docs/protocol.md` §5 (and the rules of §2 and §6.4), written
//! down as data by hand from the document, not from `src/protocol/`. From them:
//! `check` says whether a frame obeys the document, `samples` gives a valid frame for
//! every message (and every variant of every tagged part), and `fields` lists every
//! field of a frame with whether the document makes it optional.
//!
//! Edit this file when the document changes, never to make a test pass.

use base64::Engine;
use serde_json::{Map, Value, json};

/// The highest index (§6.4): 2^53 − 1.
pub const MAX_INDEX: u64 = (1 << 53) - 1;

/// The frame size limit (§2).
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// A field's JSON type as the document states it.
#[derive(Debug)]
pub enum Ty {
    Str,
    U32,
    U64,
    I32,
    Bool,
    /// 1..=MAX_INDEX.
    Index,
    /// 0..=MAX_INDEX.
    Position,
    /// Standard base64 with padding.
    Base64,
    /// The hardware record (§5.6): an object holding its five required objects.
    Object,
    /// A change list (§5.6).
    Changes,
    /// One of these strings.
    Enum(&'static [&'static str]),
    Array(&'static Ty),
    /// {string: string}.
    StrMap,
    Struct(&'static [Field]),
    /// An object tagged by the field `.0`, one field list per tag value.
    Tagged(&'static str, &'static [(&'static str, &'static [Field])]),
    /// `SessionParams` (§7): a struct of optional times, all ≥ 1 and ack below interval.
    Session,
    /// A number from 0 to 1 (`job_progress.fraction`).
    Fraction,
}

#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    /// `None`: required. `Some((default, sample))`: optional, with the default the
    /// document gives (JSON) and a sample value different from it.
    pub optional: Option<(&'static str, &'static str)>,
}

const fn req(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        optional: None,
    }
}

const fn opt(name: &'static str, ty: Ty, default: &'static str, sample: &'static str) -> Field {
    Field {
        name,
        ty,
        optional: Some((default, sample)),
    }
}

const JOB_REF: Ty = Ty::Struct(&[req("job_id", Ty::Str), req("attempt", Ty::U32)]);

const INPUT_FILE: Ty = Ty::Struct(&[
    req("url", Ty::Str),
    req("sha256", Ty::Str),
    req("path", Ty::Str),
    opt("executable", Ty::Bool, "false", "true"),
]);

// Exactly one of `path` and `glob` is a rule of `JobSpec::validate` (invalid_spec),
// not of the frame: at the frame level both are optional strings.
const OUTPUT_FILE: Ty = Ty::Struct(&[
    opt("path", Ty::Str, "null", r#""out/result.txt""#),
    opt("glob", Ty::Str, "null", r#""out/*.csv""#),
    req("url", Ty::Str),
]);

const JOB_SPEC: &[Field] = &[
    req("job_id", Ty::Str),
    req("attempt", Ty::U32),
    req("command", Ty::Array(&Ty::Str)),
    opt("env", Ty::StrMap, "{}", r#"{"A":"b"}"#),
    // No default value: omitted means "the job directory".
    opt("workdir", Ty::Str, "null", r#""sub/dir""#),
    req("timeout_secs", Ty::U64),
    opt("output_limit_bytes", Ty::U64, "1073741824", "4096"),
    opt("cancel_grace_secs", Ty::U64, "10", "3"),
    opt(
        "inputs",
        Ty::Array(&INPUT_FILE),
        "[]",
        concat!(
            r#"[{"url": "https://store.example/in/mesh", "sha256": ""#,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            r#"", "path": "mesh.vtu", "executable": true}]"#
        ),
    ),
    opt(
        "outputs",
        Ty::Array(&OUTPUT_FILE),
        "[]",
        r#"[{"path": "out/result.txt", "glob": "out/*.csv", "url": "https://store.example/out/"}]"#,
    ),
    opt("kv", Ty::StrMap, "{}", r#"{"checkpoint": "step-40"}"#),
];

pub const SESSION_FIELDS: &[Field] = &[
    opt("heartbeat_interval_ms", Ty::U64, "15000", "20000"),
    opt("ack_timeout_ms", Ty::U64, "10000", "5000"),
    opt("runner_lost_threshold_ms", Ty::U64, "120000", "60000"),
];

const COMMANDS: &[(&str, &[Field])] = &[
    ("start_job", &[req("job", Ty::Struct(JOB_SPEC))]),
    (
        "cancel_job",
        &[req("job_id", Ty::Str), req("attempt", Ty::U32)],
    ),
    ("drain", &[opt("deadline_secs", Ty::U64, "null", "30")]),
];

const STREAM: Ty = Ty::Enum(&["stdout", "stderr"]);

const EXIT_STATUS: Ty = Ty::Tagged(
    "how",
    &[
        ("exited", &[req("code", Ty::I32)]),
        ("signaled", &[req("signal", Ty::I32)]),
        ("unknown", &[]),
    ],
);

const EVENTS: &[(&str, &[Field])] = &[
    ("job_accepted", &[req("job", JOB_REF)]),
    (
        "job_rejected",
        &[
            req("job", JOB_REF),
            req(
                "reason",
                Ty::Enum(&["draining", "no_free_slot", "invalid_spec", "already_run"]),
            ),
            req("detail", Ty::Str),
        ],
    ),
    ("job_started", &[req("job", JOB_REF), req("pid", Ty::U32)]),
    (
        "job_output",
        &[
            req("job", JOB_REF),
            req("stream", STREAM),
            req("offset", Ty::U64),
            req("data", Ty::Base64),
        ],
    ),
    (
        "job_output_truncated",
        &[
            req("job", JOB_REF),
            req("stream", STREAM),
            req("offset", Ty::U64),
        ],
    ),
    (
        "job_finished",
        &[
            req("job", JOB_REF),
            req(
                "outcome",
                Ty::Enum(&["succeeded", "failed", "cancelled", "timed_out", "lost"]),
            ),
            req("status", EXIT_STATUS),
            req("duration_ms", Ty::U64),
            req("stdout_bytes", Ty::U64),
            req("stderr_bytes", Ty::U64),
            opt("detail", Ty::Str, "null", r#""no such program""#),
            opt("cpu_user_ms", Ty::U64, "null", "1200"),
            opt("cpu_system_ms", Ty::U64, "null", "80"),
            opt("peak_rss_bytes", Ty::U64, "null", "52428800"),
            opt("wall_ms", Ty::U64, "null", "4100"),
            opt("gpu_memory_peak_bytes", Ty::U64, "null", "1073741824"),
        ],
    ),
    (
        "job_phase",
        &[
            req("job", JOB_REF),
            req("phase", Ty::Enum(&["preparing", "fetching", "uploading"])),
        ],
    ),
    (
        "job_progress",
        &[
            req("job", JOB_REF),
            opt("fraction", Ty::Fraction, "null", "0.42"),
            opt("message", Ty::Str, "null", r#""iteration 420""#),
        ],
    ),
    (
        "job_kv_put",
        &[
            req("job", JOB_REF),
            req("key", Ty::Str),
            req("value", Ty::Str),
        ],
    ),
    (
        "job_output_file",
        &[
            req("job", JOB_REF),
            req("path", Ty::Str),
            req("url", Ty::Str),
            req("sha256", Ty::Str),
            req("size", Ty::U64),
        ],
    ),
    (
        "job_output_failed",
        &[
            req("job", JOB_REF),
            req("path", Ty::Str),
            req("reason", Ty::Str),
        ],
    ),
    (
        "job_outputs",
        &[
            req("job", JOB_REF),
            req("uploaded", Ty::U32),
            req("failed", Ty::U32),
            req("missing", Ty::Array(&Ty::Str)),
        ],
    ),
    ("hardware_changed", &[req("changes", Ty::Changes)]),
    (
        "command_rejected",
        &[req("index", Ty::Index), req("reason", Ty::Str)],
    ),
];

/// §5.1: everything the server may send.
pub const SERVER_MESSAGES: &[(&str, &[Field])] = &[
    ("hello", &[req("protocol", Ty::U32), req("nonce", Ty::Str)]),
    ("token_accepted", &[]),
    ("token_rejected", &[req("reason", Ty::Str)]),
    ("registered", &[req("runner_id", Ty::Str)]),
    (
        "authenticated",
        &[
            req("runner_id", Ty::Str),
            req("last_event_index", Ty::Position),
            req("session", Ty::Session),
            req("hardware_known", Ty::Bool),
        ],
    ),
    ("auth_rejected", &[req("reason", Ty::Str)]),
    ("startup_ack", &[]),
    ("hardware_confirmed", &[]),
    ("ready_ack", &[]),
    ("heartbeat_ack", &[req("seq", Ty::Index)]),
    (
        "command",
        &[
            req("index", Ty::Index),
            req("command", Ty::Tagged("kind", COMMANDS)),
        ],
    ),
    ("events_ack", &[req("up_to", Ty::Position)]),
    ("evicted", &[req("reason", Ty::Str)]),
    ("left", &[]),
];

/// §5.2: everything the runner may send.
pub const RUNNER_MESSAGES: &[(&str, &[Field])] = &[
    ("validate_token", &[req("token", Ty::Str)]),
    (
        "register",
        &[
            // A key that is not 32 bytes of base64 is answered with `token_rejected`
            // (§4.1), so at the frame level it is a string.
            req("public_key", Ty::Str),
            req("name", Ty::Str),
            req("version", Ty::Str),
            req("slots", Ty::U32),
        ],
    ),
    (
        "authenticate",
        &[
            req("runner_id", Ty::Str),
            // A bad signature is answered with `auth_rejected` (§4.2).
            req("signature", Ty::Str),
            req("name", Ty::Str),
            req("version", Ty::Str),
            req("slots", Ty::U32),
            req("last_command_index", Ty::Position),
        ],
    ),
    (
        "startup",
        &[req("version", Ty::Str), req("jobs", Ty::Array(&JOB_REF))],
    ),
    ("hardware_full", &[req("report", Ty::Object)]),
    ("hardware_changes", &[req("changes", Ty::Changes)]),
    ("hardware_unchanged", &[]),
    ("ready", &[req("slots_free", Ty::U32)]),
    (
        "heartbeat",
        &[req("seq", Ty::Index), req("jobs_running", Ty::U32)],
    ),
    ("command_ack", &[req("index", Ty::Index)]),
    (
        "event",
        &[
            req("index", Ty::Index),
            req("event", Ty::Tagged("kind", EVENTS)),
        ],
    ),
    (
        "stopping",
        &[req("reason", Ty::Str), req("deadline_secs", Ty::U64)],
    ),
    ("leaving", &[req("reason", Ty::Str)]),
];

/// Which way a frame travels, and so which table applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Server to runner (`decode_server`).
    ToRunner,
    /// Runner to server (`decode_runner`).
    ToServer,
}

impl Direction {
    pub fn table(self) -> &'static [(&'static str, &'static [Field])] {
        match self {
            Self::ToRunner => SERVER_MESSAGES,
            Self::ToServer => RUNNER_MESSAGES,
        }
    }
}

// ---------------------------------------------------------------- checking

/// Whether `text` is a frame the document allows in this direction; the error says
/// which rule it breaks, with the path of the field.
pub fn check_text(direction: Direction, text: &str) -> Result<(), String> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(format!("{} bytes is over the frame limit", text.len()));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    check(direction, &value)
}

pub fn check(direction: Direction, frame: &Value) -> Result<(), String> {
    check_tagged("type", direction.table(), frame, "$")
}

fn check_tagged(
    tag: &str,
    variants: &[(&str, &[Field])],
    value: &Value,
    at: &str,
) -> Result<(), String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("{at}: not an object"))?;
    let name = object
        .get(tag)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{at}: no string {tag:?}"))?;
    let (_, fields) = variants
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| format!("{at}: unknown {tag} {name:?}"))?;
    check_fields(fields, object, Some(tag), &format!("{at}<{name}>"))
}

fn check_fields(
    fields: &[Field],
    object: &Map<String, Value>,
    tag: Option<&str>,
    at: &str,
) -> Result<(), String> {
    for key in object.keys() {
        if Some(key.as_str()) != tag && !fields.iter().any(|f| f.name == key) {
            return Err(format!("{at}: unknown field {key:?}"));
        }
    }
    for field in fields {
        let path = format!("{at}.{}", field.name);
        match (object.get(field.name), field.optional) {
            (None | Some(Value::Null), Some(_)) => {}
            (None, None) => return Err(format!("{path}: required, missing")),
            (Some(Value::Null), None) => return Err(format!("{path}: required, null")),
            (Some(value), _) => check_value(&field.ty, value, &path)?,
        }
    }
    Ok(())
}

fn check_value(ty: &Ty, value: &Value, at: &str) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{at}: expected {what}, got {value}"));
    let ok = match ty {
        Ty::Str => value.is_string(),
        Ty::U32 => value.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
        Ty::U64 => value.is_u64(),
        Ty::I32 => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        Ty::Bool => value.is_boolean(),
        Ty::Index => value.as_u64().is_some_and(|n| (1..=MAX_INDEX).contains(&n)),
        Ty::Position => value.as_u64().is_some_and(|n| n <= MAX_INDEX),
        Ty::Base64 => value
            .as_str()
            .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok()),
        Ty::Object => ["os", "cpu", "memory", "job_disk", "gpus"]
            .iter()
            .all(|key| value.get(key).is_some_and(Value::is_object)),
        Ty::Changes => return check_changes(value, at),
        Ty::Enum(names) => value.as_str().is_some_and(|s| names.contains(&s)),
        Ty::Array(item) => {
            let Some(items) = value.as_array() else {
                return fail("an array");
            };
            for (i, item_value) in items.iter().enumerate() {
                check_value(item, item_value, &format!("{at}[{i}]"))?;
            }
            true
        }
        Ty::StrMap => value
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string)),
        Ty::Struct(fields) => {
            let Some(object) = value.as_object() else {
                return fail("an object");
            };
            return check_fields(fields, object, None, at);
        }
        Ty::Tagged(tag, variants) => return check_tagged(tag, variants, value, at),
        Ty::Session => return check_session(value, at),
        Ty::Fraction => value.as_f64().is_some_and(|f| (0.0..=1.0).contains(&f)),
    };
    if ok { Ok(()) } else { fail(&format!("{ty:?}")) }
}

/// §5.6: an array of `{"path": string, "old"?: any, "new"?: any}`.
fn check_changes(value: &Value, at: &str) -> Result<(), String> {
    let items = value
        .as_array()
        .ok_or_else(|| format!("{at}: not an array"))?;
    for (i, change) in items.iter().enumerate() {
        let object = change
            .as_object()
            .ok_or_else(|| format!("{at}[{i}]: not an object"))?;
        if !object.get("path").is_some_and(Value::is_string) {
            return Err(format!("{at}[{i}]: no string path"));
        }
        if let Some(key) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "path" | "old" | "new"))
        {
            return Err(format!("{at}[{i}]: unknown field {key:?}"));
        }
    }
    Ok(())
}

/// §7: optional times; with the defaults filled in, all ≥ 1 and ack below interval.
fn check_session(value: &Value, at: &str) -> Result<(), String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("{at}: not an object"))?;
    check_fields(SESSION_FIELDS, object, None, at)?;
    let time =
        |name: &str, default: u64| object.get(name).and_then(Value::as_u64).unwrap_or(default);
    let interval = time("heartbeat_interval_ms", 15_000);
    let ack = time("ack_timeout_ms", 10_000);
    let lost = time("runner_lost_threshold_ms", 120_000);
    if interval == 0 || ack == 0 || lost == 0 {
        return Err(format!("{at}: a time of 0"));
    }
    if ack >= interval {
        return Err(format!("{at}: ack_timeout_ms {ack} ≥ interval {interval}"));
    }
    Ok(())
}

// ---------------------------------------------------------------- samples

/// One valid frame for every message, and more where a message has tagged parts: one
/// per variant of each (the other parts at their first variant). Optional fields carry
/// their sample values (never their defaults).
pub fn samples(direction: Direction) -> Vec<Value> {
    direction
        .table()
        .iter()
        .flat_map(|(name, fields)| struct_samples(fields, Some(("type", name))))
        .collect()
}

fn struct_samples(fields: &[Field], tag: Option<(&str, &str)>) -> Vec<Value> {
    let per_field: Vec<Vec<Value>> = fields
        .iter()
        .map(|f| match f.optional {
            Some((_, sample)) => vec![parse(sample)],
            None => value_samples(&f.ty),
        })
        .collect();
    let build = |choice: &dyn Fn(usize) -> Value| {
        let mut object = Map::new();
        if let Some((key, name)) = tag {
            object.insert(key.into(), json!(name));
        }
        for (i, field) in fields.iter().enumerate() {
            object.insert(field.name.into(), choice(i));
        }
        Value::Object(object)
    };
    let mut out = vec![build(&|i| per_field[i][0].clone())];
    for (varied, options) in per_field.iter().enumerate() {
        for option in options.iter().skip(1) {
            out.push(build(&|i| {
                if i == varied {
                    option.clone()
                } else {
                    per_field[i][0].clone()
                }
            }));
        }
    }
    out
}

fn value_samples(ty: &Ty) -> Vec<Value> {
    match ty {
        Ty::Str => vec![json!("x-1")],
        Ty::U32 | Ty::U64 => vec![json!(2)],
        Ty::I32 => vec![json!(-3)],
        Ty::Bool => vec![json!(true)],
        Ty::Index => vec![json!(7)],
        Ty::Position => vec![json!(5)],
        Ty::Base64 => vec![json!("aGVsbG8K")],
        Ty::Object => vec![json!({
            "os": {"name": "Linux", "kernel": "6.8.0", "arch": "x86_64", "hostname": "h", "version": null},
            "cpu": {"model": "m", "vendor": "v", "logical_cores": 2, "physical_cores": null},
            "memory": {"total_bytes": 1024},
            "job_disk": {"mount_point": "/", "total_bytes": 10, "available_bytes": 5},
            "gpus": {"kind": "none"},
            "a_field_of_a_newer_runner": true
        })],
        Ty::Changes => vec![json!([
            {"path": "memory.total_bytes", "old": 1, "new": 2},
            {"path": "gpus.devices.1", "new": null},
            {"path": "gpus.devices.0"}
        ])],
        Ty::Enum(names) => names.iter().map(|n| json!(n)).collect(),
        Ty::Array(item) => vec![Value::Array(
            value_samples(item).into_iter().take(1).collect(),
        )],
        Ty::StrMap => vec![json!({"K": "v"})],
        Ty::Struct(fields) => struct_samples(fields, None),
        Ty::Tagged(tag, variants) => variants
            .iter()
            .flat_map(|(name, fields)| struct_samples(fields, Some((tag, name))))
            .collect(),
        Ty::Session => struct_samples(SESSION_FIELDS, None),
        Ty::Fraction => vec![json!(0.25)],
    }
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad JSON in the table {json:?}: {e}"))
}

// ---------------------------------------------------------------- fields

/// One field of a concrete frame: where it is, and what the document says of it.
#[derive(Debug)]
pub struct FieldAt {
    /// Object keys (and array positions) from the frame's root.
    pub path: Vec<PathStep>,
    /// The document's default, as JSON, for an optional field; `None` when required.
    pub default: Option<Value>,
    pub ty: &'static Ty,
}

#[derive(Debug, Clone)]
pub enum PathStep {
    Key(String),
    Item(usize),
}

/// Every field of `frame` (a sample of `direction`), nested ones included, except
/// inside the JSON payloads (`report`, `changes`, `env`'s entries), whose contents are
/// data, not fields.
pub fn fields(direction: Direction, frame: &Value) -> Vec<FieldAt> {
    let mut out = Vec::new();
    let name = frame["type"].as_str().unwrap_or_default();
    if let Some((_, fields)) = direction.table().iter().find(|(n, _)| *n == name) {
        walk_fields(fields, frame, &mut Vec::new(), &mut out);
    }
    out
}

fn walk_fields(
    fields: &'static [Field],
    value: &Value,
    at: &mut Vec<PathStep>,
    out: &mut Vec<FieldAt>,
) {
    for field in fields {
        at.push(PathStep::Key(field.name.into()));
        out.push(FieldAt {
            path: at.clone(),
            default: field.optional.map(|(default, _)| parse(default)),
            ty: &field.ty,
        });
        if let Some(inner) = value.get(field.name) {
            walk_type(&field.ty, inner, at, out);
        }
        at.pop();
    }
}

fn walk_type(ty: &'static Ty, value: &Value, at: &mut Vec<PathStep>, out: &mut Vec<FieldAt>) {
    match ty {
        Ty::Struct(fields) => walk_fields(fields, value, at, out),
        Ty::Session => walk_fields(SESSION_FIELDS, value, at, out),
        Ty::Tagged(tag, variants) => {
            let chosen = value.get(*tag).and_then(Value::as_str);
            if let Some((_, fields)) = variants.iter().find(|(n, _)| Some(*n) == chosen) {
                walk_fields(fields, value, at, out);
            }
        }
        Ty::Array(item) => {
            if let Some(first) = value.get(0) {
                at.push(PathStep::Item(0));
                walk_type(item, first, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

/// `frame` with the field at `path` removed (`None`) or set to `value`.
pub fn with_field(frame: &Value, path: &[PathStep], value: Option<Value>) -> Value {
    let mut frame = frame.clone();
    let (last, parents) = path.split_last().expect("a field path is never empty");
    let mut node = &mut frame;
    for step in parents {
        node = match step {
            PathStep::Key(key) => &mut node[key.as_str()],
            PathStep::Item(i) => &mut node[*i],
        };
    }
    let (PathStep::Key(key), Some(object)) = (last, node.as_object_mut()) else {
        panic!("a field path ends at an object key: {path:?}");
    };
    match value {
        Some(value) => object.insert(key.clone(), value),
        None => object.remove(key),
    };
    frame
}

pub fn show_path(path: &[PathStep]) -> String {
    path.iter()
        .map(|step| match step {
            PathStep::Key(key) => format!(".{key}"),
            PathStep::Item(i) => format!("[{i}]"),
        })
        .collect()
}
