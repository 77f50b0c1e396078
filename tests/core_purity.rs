//! The lifecycle core does no I/O, reads no clock and draws no random numbers. This test
//! makes that a checked rule: it reads every file under `src/core/` and fails on any
//! name that would let the core reach the world.

const FORBIDDEN: &[&str] = &[
    "tokio",
    "rusqlite",
    "tungstenite",
    "std::fs",
    "std::net",
    "std::process",
    "std::thread",
    "std::env",
    "std::io",
    "Instant",
    "SystemTime",
    "getrandom",
    "rand::",
    "thread_rng",
    "crate::runtime",
    "crate::devserver",
    "crate::hardware",
    "println!",
    "eprintln!",
    "tracing::",
];

#[test]
fn core_names_nothing_that_touches_the_world() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("src/core exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable source");
        let mut in_block_comment = false;
        for (number, line) in text.lines().enumerate() {
            // Prose in comments may name what the core must avoid; code may not.
            if line.trim_start().starts_with("/*") {
                in_block_comment = true;
            }
            if in_block_comment {
                in_block_comment = !line.contains("*/");
                continue;
            }
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                assert!(
                    !code.contains(word),
                    "{}:{}: the core must not use `{word}`: {line}",
                    path.display(),
                    number + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 4, "expected the core's files, found {checked}");
}
