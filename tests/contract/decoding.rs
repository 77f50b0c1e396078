//! Both decoders against the document's tables (`doc.rs`), field by field: `decode_server`
//! (what a runner reads) and `decode_runner` (what a server reads). §2: a missing or
//! `null` required field, an unknown field, a field of the wrong type is a bad frame
//! (1007); an optional field may be omitted or `null`, both meaning its default. §6.4:
//! indexes in `1..=2^53-1`, positions in `0..=2^53-1`.

use fyn_runner::protocol::{CloseReason, FrameError, decode_runner, decode_server, encode};
use serde_json::{Value, json};

use crate::doc::{self, Direction, MAX_INDEX, PathStep, Ty};

/// Decode with the decoder for `direction`; the accepted message re-encoded, so two
/// frames can be compared by what they decoded to.
fn decode(direction: Direction, frame: &Value) -> Result<Value, FrameError> {
    let text = frame.to_string();
    let encoded = match direction {
        Direction::ToRunner => encode(&decode_server(&text)?),
        Direction::ToServer => encode(&decode_runner(&text)?),
    };
    Ok(serde_json::from_str(&encoded).expect("our own encoding is JSON"))
}

fn refused_as_bad_frame(direction: Direction, frame: &Value, what: &str) {
    match decode(direction, frame) {
        Ok(decoded) => panic!("{direction:?}: {what} was accepted: {frame} -> {decoded}"),
        Err(error) => assert_eq!(
            error.close_reason(),
            CloseReason::BadFrame,
            "{direction:?}: {what}: {error}"
        ),
    }
}

const BOTH: [Direction; 2] = [Direction::ToRunner, Direction::ToServer];

#[test]
fn every_message_of_the_tables_decodes_and_obeys_them() {
    for direction in BOTH {
        let samples = doc::samples(direction);
        assert!(samples.len() >= direction.table().len());
        for sample in samples {
            doc::check(direction, &sample).unwrap_or_else(|e| panic!("table sample: {e}"));
            decode(direction, &sample)
                .unwrap_or_else(|e| panic!("{direction:?}: {sample} refused: {e}"));
        }
    }
}

#[test]
fn every_optional_field_omitted_or_null_decodes_as_its_default() {
    let mut checked = Vec::new();
    for direction in BOTH {
        for sample in doc::samples(direction) {
            let given = decode(direction, &sample).expect("the sample decodes");
            for field in doc::fields(direction, &sample) {
                let Some(default) = field.default else {
                    continue;
                };
                let name = format!("{}{}", sample["type"], doc::show_path(&field.path));
                let as_default = decode(
                    direction,
                    &doc::with_field(&sample, &field.path, Some(default)),
                )
                .unwrap_or_else(|e| panic!("{name} = its default: refused: {e}"));
                for (form, value) in [("omitted", None), ("null", Some(Value::Null))] {
                    let frame = doc::with_field(&sample, &field.path, value);
                    let decoded = decode(direction, &frame)
                        .unwrap_or_else(|e| panic!("{name} {form}: refused: {e}"));
                    assert_eq!(decoded, as_default, "{name} {form} is not its default");
                }
                assert_ne!(
                    given, as_default,
                    "{name}: the sample must not be the default"
                );
                checked.push(name);
            }
        }
    }
    // The document's optional fields, each reached: JobSpec's (its files' too), drain's
    // deadline, SessionParams' three, job_finished's accounting, job_progress's two.
    for expected in [
        "job.env",
        "job.workdir",
        "job.output_limit_bytes",
        "job.cancel_grace_secs",
        "job.inputs",
        "job.inputs[0].executable",
        "job.outputs",
        "job.outputs[0].path",
        "job.outputs[0].glob",
        "job.kv",
        "event.detail",
        "event.cpu_user_ms",
        "event.cpu_system_ms",
        "event.peak_rss_bytes",
        "event.wall_ms",
        "event.gpu_memory_peak_bytes",
        "event.fraction",
        "event.message",
        "command.deadline_secs",
        "session.heartbeat_interval_ms",
        "session.ack_timeout_ms",
        "session.runner_lost_threshold_ms",
    ] {
        assert!(
            checked.iter().any(|name| name.ends_with(expected)),
            "{expected} not checked: {checked:?}"
        );
    }
}

#[test]
fn every_required_field_omitted_or_null_is_a_bad_frame() {
    let mut count = 0;
    for direction in BOTH {
        for sample in doc::samples(direction) {
            for field in doc::fields(direction, &sample) {
                if field.default.is_some() {
                    continue;
                }
                let name = format!("{}{}", sample["type"], doc::show_path(&field.path));
                for (form, value) in [("omitted", None), ("null", Some(Value::Null))] {
                    let frame = doc::with_field(&sample, &field.path, value);
                    refused_as_bad_frame(direction, &frame, &format!("{name} {form}"));
                }
                count += 1;
            }
        }
    }
    assert!(count > 60, "only {count} required fields reached");
}

/// Object paths of a frame: its root and every object that holds one of its fields.
fn object_paths(direction: Direction, frame: &Value) -> Vec<Vec<PathStep>> {
    let mut paths: Vec<Vec<PathStep>> = vec![Vec::new()];
    for field in doc::fields(direction, frame) {
        let mut candidates = vec![field.path[..field.path.len() - 1].to_vec()];
        // An object with no fields of its own (`{"how": "unknown"}`) is one too.
        if matches!(field.ty, Ty::Struct(_) | Ty::Tagged(..) | Ty::Session) {
            candidates.push(field.path.clone());
        }
        for candidate in candidates {
            if !paths
                .iter()
                .any(|p| doc::show_path(p) == doc::show_path(&candidate))
            {
                paths.push(candidate);
            }
        }
    }
    paths
}

#[test]
fn an_unknown_field_anywhere_is_a_bad_frame() {
    for direction in BOTH {
        for sample in doc::samples(direction) {
            for parent in object_paths(direction, &sample) {
                let mut path = parent.clone();
                path.push(PathStep::Key("surprise".into()));
                let frame = doc::with_field(&sample, &path, Some(json!(1)));
                let name = format!("{}{}", sample["type"], doc::show_path(&path));
                refused_as_bad_frame(direction, &frame, &name);
                // Not even as null: null means "omitted" only for fields that exist.
                let frame = doc::with_field(&sample, &path, Some(Value::Null));
                refused_as_bad_frame(direction, &frame, &format!("{name} = null"));
            }
        }
    }
}

#[test]
fn a_tag_missing_null_or_unknown_is_a_bad_frame() {
    for direction in BOTH {
        for sample in doc::samples(direction) {
            for tag in ["kind", "how"] {
                for field in doc::fields(direction, &sample) {
                    let Some(node) = field_value(&sample, &field.path) else {
                        continue;
                    };
                    if node.get(tag).is_none() {
                        continue;
                    }
                    let mut path = field.path.clone();
                    path.push(PathStep::Key(tag.into()));
                    let name = format!("{}{}", sample["type"], doc::show_path(&path));
                    for (form, value) in [
                        ("omitted", None),
                        ("null", Some(Value::Null)),
                        ("unknown", Some(json!("launch"))),
                        // serde alone would take a number as the variant's position.
                        ("a number", Some(json!(0))),
                    ] {
                        let frame = doc::with_field(&sample, &path, value);
                        refused_as_bad_frame(direction, &frame, &format!("{name} {form}"));
                    }
                }
            }
            for value in [
                None,
                Some(Value::Null),
                Some(json!("launch")),
                Some(json!(0)),
            ] {
                let frame = doc::with_field(&sample, &[PathStep::Key("type".into())], value);
                assert!(decode(direction, &frame).is_err(), "{frame}");
            }
        }
    }
}

fn field_value<'a>(frame: &'a Value, path: &[PathStep]) -> Option<&'a Value> {
    path.iter().try_fold(frame, |node, step| match step {
        PathStep::Key(key) => node.get(key.as_str()),
        PathStep::Item(i) => node.get(*i),
    })
}

/// Inside a change list `null` is a value: `"old": null` is not an absent `old`.
#[test]
fn null_inside_a_change_list_is_a_value_not_an_omission() {
    let with_null =
        json!({"type": "hardware_changes", "changes": [{"path": "a", "old": null, "new": 1}]});
    let without = json!({"type": "hardware_changes", "changes": [{"path": "a", "new": 1}]});
    let a = decode(Direction::ToServer, &with_null).expect("decodes");
    let b = decode(Direction::ToServer, &without).expect("decodes");
    assert_ne!(a, b);
    assert_eq!(a["changes"][0]["old"], Value::Null);
    assert!(b["changes"][0].get("old").is_none());
}

#[test]
fn indexes_and_positions_outside_the_range_are_bad_frames() {
    let accepted = |ty: &Ty| -> Vec<Value> {
        match ty {
            Ty::Index => vec![json!(1), json!(MAX_INDEX)],
            _ => vec![json!(0), json!(1), json!(MAX_INDEX)],
        }
    };
    let refused = |ty: &Ty| -> Vec<Value> {
        let mut out: Vec<Value> = vec![
            json!(MAX_INDEX + 1),
            json!(1u64 << 62),
            json!(1u64 << 63),
            json!(u64::MAX),
            serde_json::from_str("18446744073709551616").expect("a JSON number"),
            json!(-1),
            json!(1.5),
            json!("7"),
        ];
        if matches!(ty, Ty::Index) {
            out.push(json!(0));
        }
        out
    };
    let mut reached = Vec::new();
    for direction in BOTH {
        for sample in doc::samples(direction) {
            for field in doc::fields(direction, &sample) {
                if !matches!(field.ty, Ty::Index | Ty::Position) {
                    continue;
                }
                let name = format!("{}{}", sample["type"], doc::show_path(&field.path));
                for value in accepted(field.ty) {
                    let frame = doc::with_field(&sample, &field.path, Some(value.clone()));
                    decode(direction, &frame)
                        .unwrap_or_else(|e| panic!("{name} = {value}: refused: {e}"));
                }
                for value in refused(field.ty) {
                    let frame = doc::with_field(&sample, &field.path, Some(value.clone()));
                    refused_as_bad_frame(direction, &frame, &format!("{name} = {value}"));
                }
                reached.push(name);
            }
        }
    }
    for expected in [
        "\"command\".index",
        "\"events_ack\".up_to",
        "\"authenticated\".last_event_index",
        "\"heartbeat_ack\".seq",
        "\"authenticate\".last_command_index",
        "\"command_ack\".index",
        "\"event\".index",
        "\"heartbeat\".seq",
    ] {
        assert!(
            reached.iter().any(|r| r.starts_with(expected)),
            "{expected} not reached: {reached:?}"
        );
    }
}

#[test]
fn session_parameters_that_cannot_detect_a_dead_link_are_a_bad_frame() {
    let authenticated = |session: Value| {
        json!({"type": "authenticated", "runner_id": "r-1", "last_event_index": 0,
               "session": session, "hardware_known": true})
    };
    for session in [
        json!({"heartbeat_interval_ms": 1000, "ack_timeout_ms": 1000}),
        json!({"heartbeat_interval_ms": 1000, "ack_timeout_ms": 5000}),
        // The default ack (10 s) is not below a 5 s interval.
        json!({"heartbeat_interval_ms": 5000}),
        json!({"heartbeat_interval_ms": 0}),
        json!({"ack_timeout_ms": 0}),
        json!({"runner_lost_threshold_ms": 0}),
    ] {
        refused_as_bad_frame(
            Direction::ToRunner,
            &authenticated(session.clone()),
            &format!("session {session}"),
        );
    }
    // All omitted: the defaults of §7.
    let decoded = decode(Direction::ToRunner, &authenticated(json!({}))).expect("decodes");
    assert_eq!(
        decoded["session"],
        json!({"heartbeat_interval_ms": 15000, "ack_timeout_ms": 10000,
               "runner_lost_threshold_ms": 120000})
    );
}

#[test]
fn byte_strings_that_are_not_standard_base64_are_bad_frames() {
    let output = |data: &str| {
        json!({"type": "event", "index": 1, "event": {"kind": "job_output",
               "job": {"job_id": "j", "attempt": 1}, "stream": "stdout", "offset": 0,
               "data": data}})
    };
    decode(Direction::ToServer, &output("aGk=")).expect("padded base64");
    decode(Direction::ToServer, &output("")).expect("no bytes");
    for bad in ["aGk", "a-_=", "not base64!", "aGk=\n"] {
        refused_as_bad_frame(Direction::ToServer, &output(bad), &format!("data {bad:?}"));
    }
}

/// §5.4: `job_progress.fraction` is a number from 0 to 1; anything else is a bad frame.
#[test]
fn a_progress_fraction_outside_zero_to_one_is_a_bad_frame() {
    let progress = |fraction: Value| {
        json!({"type": "event", "index": 1, "event": {"kind": "job_progress",
               "job": {"job_id": "j", "attempt": 1}, "fraction": fraction}})
    };
    for fine in [json!(0), json!(0.0), json!(0.5), json!(1), json!(1.0)] {
        decode(Direction::ToServer, &progress(fine.clone()))
            .unwrap_or_else(|e| panic!("fraction {fine}: refused: {e}"));
    }
    for bad in [
        json!(-0.01),
        json!(1.0001),
        json!(2),
        json!("0.5"),
        json!(true),
    ] {
        refused_as_bad_frame(
            Direction::ToServer,
            &progress(bad.clone()),
            &format!("fraction {bad}"),
        );
    }
}
