//! Generated artefacts stay in step with the spec table.

use fyn_runner::spec;

#[test]
fn committed_lifecycle_doc_matches_the_spec() {
    let table = spec::embedded().expect("the spec parses");
    let generated = spec::render_lifecycle_doc(&table);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/lifecycle.md"))
            .expect("docs/lifecycle.md exists");
    assert!(
        committed == generated,
        "docs/lifecycle.md is stale: run `cargo run -- spec --format markdown > docs/lifecycle.md`"
    );
}

#[test]
fn every_rendering_names_every_state() {
    let table = spec::embedded().expect("the spec parses");
    for rendering in [
        spec::render_mermaid(&table),
        spec::render_dot(&table),
        spec::render_json(&table),
        spec::render_table(&table),
    ] {
        for state in [
            "Installing",
            "Registering",
            "Validating",
            "HardwareSync",
            "Ready",
            "Active",
            "Reconnecting",
            "Draining",
            "Stopped",
        ] {
            assert!(
                rendering.contains(state),
                "{state} missing from a rendering"
            );
        }
    }
}

#[test]
fn a_malformed_table_is_an_error_with_a_line_number() {
    let cases = [
        ("state A\nA | NoSuchEvent | - | = | -\n", "line 2"),
        ("state A\nA | StepDone | - | =\n", "line 2"),
        ("state A\nB | StepDone | - | = | -\n", "line 2"),
        ("state A\nA | StepDone | nope | = | -\n", "line 2"),
        ("frobnicate\n", "line 1"),
    ];
    for (text, needle) in cases {
        let error = spec::Spec::parse(text).expect_err(text).to_string();
        assert!(error.contains(needle), "{error:?} should name {needle}");
    }
}
