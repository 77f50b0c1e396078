//! Both decoders fuzzed against the document: arbitrary bytes, and valid frames of the
//! tables (`doc::samples`) mutated field by field and byte by byte. Properties: no
//! panic; a frame either decoder accepts obeys the document (`doc::check`), and so does
//! its re-encoding, which decodes to the same message.
//!
//! Why proptest and not `cargo fuzz`: libFuzzer needs a nightly compiler and the project
//! builds with the stable toolchain it pins; proptest (already a dev-dependency) runs in
//! the normal `cargo test`. The number of inputs per property comes from
//! `FYN_FUZZ_CASES` (default 2,000: a few seconds in CI); a long run is
//! `FYN_FUZZ_CASES=5000000 cargo test --test contract fuzz` (two properties, so ten
//! million inputs).
//!
//! Measured: that long run (10,000,000 inputs, both decoders) took 909.7 s on the 2-core
//! development VM, with no panic and no accepted frame the document refuses.

use fyn_runner::protocol::{decode_runner, decode_server, encode};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value, json};

use crate::doc::{self, Direction};

fn config() -> ProptestConfig {
    let cases = std::env::var("FYN_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/contract_fuzz.txt"
        )))),
        ..ProptestConfig::default()
    }
}

/// Decode `text` both ways; whatever is accepted must obey the document, re-encode to a
/// frame that obeys it too, and decode again to the same message.
fn check_both(text: &str) -> Result<(), TestCaseError> {
    if let Ok(message) = decode_server(text) {
        accepted(Direction::ToRunner, text, &encode(&message))?;
        prop_assert_eq!(decode_server(&encode(&message)).ok(), Some(message));
    }
    if let Ok(message) = decode_runner(text) {
        accepted(Direction::ToServer, text, &encode(&message))?;
        prop_assert_eq!(decode_runner(&encode(&message)).ok(), Some(message));
    }
    Ok(())
}

fn accepted(direction: Direction, text: &str, reencoded: &str) -> Result<(), TestCaseError> {
    if let Err(why) = doc::check_text(direction, text) {
        return Err(TestCaseError::fail(format!(
            "{direction:?} accepted a frame the document refuses ({why}): {text}"
        )));
    }
    if let Err(why) = doc::check_text(direction, reencoded) {
        return Err(TestCaseError::fail(format!(
            "{direction:?} re-encoded {text} as {reencoded}, which the document refuses ({why})"
        )));
    }
    Ok(())
}

/// Values that sit on the edges of the document's types.
fn edge_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!(u32::MAX)),
        Just(json!(u64::from(u32::MAX) + 1)),
        Just(json!(i64::from(i32::MIN) - 1)),
        Just(json!(doc::MAX_INDEX)),
        Just(json!(doc::MAX_INDEX + 1)),
        Just(json!(1u64 << 63)),
        Just(json!(u64::MAX)),
        Just(json!(true)),
        Just(json!("")),
        Just(json!("aGk=")),
        Just(json!("aGk")),
        Just(json!("stdout")),
        Just(json!("exited")),
        Just(json!("drain")),
        Just(json!({})),
        Just(json!([])),
        Just(json!([{"path": "a"}])),
        Just(json!({"path": 1})),
        "[a-z_]{1,12}".prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
    ]
}

/// One change to a JSON tree, at a node chosen by `at` (an index into its nodes).
#[derive(Debug, Clone)]
enum Mutation {
    Remove(usize),
    Replace(usize, Value),
    AddField(usize, String, Value),
    /// Give a tagged object another tag of the document (`type`, `kind`, `how`).
    Retag(usize, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tag = prop_oneof![
        Just("hello"),
        Just("command"),
        Just("event"),
        Just("authenticated"),
        Just("heartbeat"),
        Just("start_job"),
        Just("drain"),
        Just("job_output"),
        Just("job_finished"),
        Just("hardware_changed"),
        Just("exited"),
        Just("unknown"),
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), edge_value()).prop_map(|(at, v)| Mutation::Replace(at, v)),
        (
            any::<usize>(),
            prop_oneof![Just("pad".to_owned()), "[a-z_]{1,10}"],
            edge_value()
        )
            .prop_map(|(at, k, v)| Mutation::AddField(at, k, v)),
        (any::<usize>(), tag).prop_map(|(at, t)| Mutation::Retag(at, t)),
    ]
}

/// The object members of a tree, depth first: (parent path, key).
fn members(value: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    if let Value::Object(map) = value {
        for (key, child) in map {
            out.push((path.clone(), key.clone()));
            path.push(key.clone());
            members(child, path, out);
            path.pop();
        }
    } else if let Value::Array(items) = value {
        for (i, child) in items.iter().enumerate() {
            path.push(format!("#{i}"));
            members(child, path, out);
            path.pop();
        }
    }
}

fn object_at<'a>(root: &'a mut Value, path: &[String]) -> Option<&'a mut Map<String, Value>> {
    let mut node = root;
    for step in path {
        node = match step.strip_prefix('#') {
            Some(i) => node.get_mut(i.parse::<usize>().ok()?)?,
            None => node.get_mut(step.as_str())?,
        };
    }
    node.as_object_mut()
}

fn apply(frame: &mut Value, mutation: &Mutation) {
    let mut all = Vec::new();
    members(frame, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return;
    }
    let pick = |at: usize| all[at % all.len()].clone();
    match mutation {
        Mutation::Remove(at) => {
            let (parent, key) = pick(*at);
            if let Some(object) = object_at(frame, &parent) {
                object.remove(&key);
            }
        }
        Mutation::Replace(at, value) => {
            let (parent, key) = pick(*at);
            if let Some(object) = object_at(frame, &parent) {
                object.insert(key, value.clone());
            }
        }
        Mutation::AddField(at, new_key, value) => {
            let (parent, _) = pick(*at);
            if let Some(object) = object_at(frame, &parent) {
                object.insert(new_key.clone(), value.clone());
            }
        }
        Mutation::Retag(at, tag) => {
            let (parent, _) = pick(*at);
            if let Some(object) = object_at(frame, &parent) {
                for key in ["type", "kind", "how"] {
                    if object.contains_key(key) {
                        object.insert(key.into(), json!(tag));
                        break;
                    }
                }
            }
        }
    }
}

/// A byte-level change to the text: flip, insert, delete, or cut.
#[derive(Debug, Clone)]
enum ByteEdit {
    None,
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Cut(usize),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        4 => Just(ByteEdit::None),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| ByteEdit::Flip(at, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| ByteEdit::Insert(at, b)),
        1 => any::<usize>().prop_map(ByteEdit::Delete),
        1 => any::<usize>().prop_map(ByteEdit::Cut),
    ]
}

fn edit_bytes(text: String, edit: &ByteEdit) -> String {
    let mut bytes = text.into_bytes();
    let len = bytes.len().max(1);
    match *edit {
        ByteEdit::None => {}
        ByteEdit::Flip(at, b) if !bytes.is_empty() => bytes[at % len] ^= b,
        ByteEdit::Insert(at, b) => bytes.insert(at % (bytes.len() + 1), b),
        ByteEdit::Delete(at) if !bytes.is_empty() => {
            bytes.remove(at % len);
        }
        ByteEdit::Cut(at) => bytes.truncate(at % (bytes.len() + 1)),
        _ => {}
    }
    // A text frame is UTF-8 by the time it reaches the decoder (the WebSocket layer
    // refuses anything else, 1007), so the fuzzer hands over what that layer would.
    String::from_utf8_lossy(&bytes).into_owned()
}

fn sample() -> impl Strategy<Value = Value> {
    let all: Vec<Value> = doc::samples(Direction::ToRunner)
        .into_iter()
        .chain(doc::samples(Direction::ToServer))
        .collect();
    proptest::sample::select(all)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_both(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn mutated_frames_of_the_document(
        frame in sample(),
        mutations in prop::collection::vec(mutation(), 0..4),
        edit in byte_edit(),
    ) {
        let mut frame = frame;
        for mutation in &mutations {
            apply(&mut frame, mutation);
        }
        check_both(&edit_bytes(frame.to_string(), &edit))?;
    }
}
