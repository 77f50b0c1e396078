//! The frame decoder against arbitrary input: it returns a value or a clear error,
//! never panics, and every valid message survives a round trip.

use fyn_runner::protocol::{
    FrameError, MAX_FRAME_BYTES, RunnerMessage, ServerMessage, decode_runner, decode_server, encode,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2048,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/protocol_codec.txt"
        )))),
        ..ProptestConfig::default()
    }
}

/// JSON-shaped text: objects with known and unknown types and random fields.
fn jsonish() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("hello".to_owned()),
        Just("command".to_owned()),
        Just("authenticated".to_owned()),
        Just("events_ack".to_owned()),
        "[a-z_]{0,12}",
    ];
    let value = prop_oneof![
        Just("1".to_owned()),
        Just("-1".to_owned()),
        Just("null".to_owned()),
        Just("\"x\"".to_owned()),
        Just("{}".to_owned()),
        Just("[]".to_owned()),
        Just("18446744073709551616".to_owned()),
    ];
    let field = ("[a-z_]{1,10}", value).prop_map(|(k, v)| format!("\"{k}\":{v}"));
    (kind, prop::collection::vec(field, 0..5)).prop_map(|(kind, fields)| {
        let mut all = vec![format!("\"type\":\"{kind}\"")];
        all.extend(fields);
        format!("{{{}}}", all.join(","))
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode_server(&text);
        let _ = decode_runner(&text);
    }

    #[test]
    fn json_shaped_frames_decode_or_explain(text in jsonish()) {
        match decode_server(&text) {
            Ok(message) => prop_assert_eq!(decode_server(&encode(&message)).ok(), Some(message)),
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
        let _ = decode_runner(&text);
    }
}

#[test]
fn each_way_of_being_wrong_has_its_own_error() {
    assert!(matches!(
        decode_server("{nope"),
        Err(FrameError::NotJson(_))
    ));
    assert!(matches!(decode_server("{}"), Err(FrameError::MissingType)));
    assert!(
        matches!(decode_server(r#"{"type":"nope"}"#), Err(FrameError::UnknownType(t)) if t == "nope")
    );
    assert!(
        matches!(decode_server(r#"{"type":"hello"}"#), Err(FrameError::Malformed { kind, .. }) if kind == "hello")
    );
    let big = "x".repeat(MAX_FRAME_BYTES + 1);
    assert!(matches!(
        decode_server(&big),
        Err(FrameError::TooLarge { .. })
    ));
    // A runner message is not a server message.
    let ack = encode(&RunnerMessage::CommandAck { index: 3 });
    assert!(matches!(
        decode_server(&ack),
        Err(FrameError::UnknownType(_))
    ));
    let hello = ServerMessage::Hello {
        protocol: 1,
        nonce: "n".into(),
    };
    assert_eq!(decode_server(&encode(&hello)), Ok(hello));
}
