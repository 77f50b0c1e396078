//! Renderings of the table. Diagrams show state-to-state transitions; steps within a
//! state and rows that stay put are left to the table itself.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::parse::{Next, Row, Spec};
use super::split_phase;

/// One arrow of a diagram: from a state or superstate to a state, with its events.
fn edges(spec: &Spec) -> Vec<(String, String, Vec<String>)> {
    let mut map: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for row in &spec.rows {
        let target = match &row.next {
            Next::Stay => continue,
            Next::Phase(phase) => split_phase(phase).0.to_owned(),
            Next::Stopped(_) => "Stopped".to_owned(),
        };
        for source in &row.states {
            let from = split_phase(source).0.to_owned();
            if from == target || from == "*" {
                continue;
            }
            let key = (from, target.clone());
            if !map.contains_key(&key) {
                order.push(key.clone());
            }
            let labels = map.entry(key).or_default();
            for event in &row.events {
                if !labels.contains(event) {
                    labels.push(event.clone());
                }
            }
        }
    }
    order
        .into_iter()
        .map(|key| {
            let labels = map.remove(&key).unwrap_or_default();
            (key.0, key.1, labels)
        })
        .collect()
}

pub fn render_mermaid(spec: &Spec) -> String {
    let mut out = String::from("stateDiagram-v2\n");
    for (mode, phase) in &spec.boots {
        let _ = writeln!(out, "    [*] --> {} : boot {mode}", split_phase(phase).0);
    }
    render_mermaid_children(spec, None, 1, &mut out);
    for (from, to, labels) in edges(spec) {
        let _ = writeln!(out, "    {from} --> {to} : {}", labels.join(", "));
    }
    out.push_str("    Stopped --> [*]\n");
    out
}

fn render_mermaid_children(spec: &Spec, parent: Option<&str>, depth: usize, out: &mut String) {
    let indent = "    ".repeat(depth);
    for sup in spec
        .superstates
        .iter()
        .filter(|s| s.parent.as_deref() == parent)
    {
        let _ = writeln!(out, "{indent}state {} {{", sup.name);
        render_mermaid_children(spec, Some(&sup.name), depth + 1, out);
        let _ = writeln!(out, "{indent}}}");
    }
    for state in spec.states.iter().filter(|s| s.parent.as_deref() == parent) {
        let _ = writeln!(out, "{indent}{}", state.name);
    }
}

pub fn render_dot(spec: &Spec) -> String {
    let mut out = String::from(
        "digraph lifecycle {\n    rankdir=LR;\n    compound=true;\n    node [shape=box, style=rounded];\n    start [shape=point];\n",
    );
    render_dot_children(spec, None, 1, &mut out);
    for (mode, phase) in &spec.boots {
        let _ = writeln!(
            out,
            "    start -> {} [label=\"boot {mode}\"];",
            split_phase(phase).0
        );
    }
    for (from, to, labels) in edges(spec) {
        let is_super = spec.superstates.iter().any(|s| s.name == from);
        let (tail, attr) = if is_super {
            // DOT has no edges from clusters: draw from a member, clipped at the cluster.
            let member = first_member(spec, &from).unwrap_or_else(|| from.clone());
            (member, format!(", ltail=cluster_{from}"))
        } else {
            (from.clone(), String::new())
        };
        let _ = writeln!(
            out,
            "    {tail} -> {to} [label=\"{}\"{attr}];",
            labels.join("\\n")
        );
    }
    out.push_str("}\n");
    out
}

fn first_member(spec: &Spec, superstate: &str) -> Option<String> {
    spec.states
        .iter()
        .find(|s| spec.ancestors(&s.name).contains(&superstate))
        .map(|s| s.name.clone())
}

fn render_dot_children(spec: &Spec, parent: Option<&str>, depth: usize, out: &mut String) {
    let indent = "    ".repeat(depth);
    for sup in spec
        .superstates
        .iter()
        .filter(|s| s.parent.as_deref() == parent)
    {
        let _ = writeln!(
            out,
            "{indent}subgraph cluster_{} {{\n{indent}    label=\"{}\";",
            sup.name, sup.name
        );
        render_dot_children(spec, Some(&sup.name), depth + 1, out);
        let _ = writeln!(out, "{indent}}}");
    }
    for state in spec.states.iter().filter(|s| s.parent.as_deref() == parent) {
        let _ = writeln!(out, "{indent}{};", state.name);
    }
}

pub fn render_json(spec: &Spec) -> String {
    serde_json::to_string_pretty(spec).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The rows as an aligned table, one per line, in file order.
pub fn render_table(spec: &Spec) -> String {
    let cells: Vec<[String; 5]> = spec.rows.iter().map(row_cells).collect();
    let mut widths = [5usize, 6, 6, 4, 7];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let header = ["STATE", "EVENTS", "GUARDS", "NEXT", "EFFECTS"].map(str::to_owned);
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join(" | ").trim_end());
    }
    out
}

fn row_cells(row: &Row) -> [String; 5] {
    let guards = if row.guards.is_empty() {
        "-".to_owned()
    } else {
        row.guards
            .iter()
            .map(|g| format!("{}{}", if g.negated { "!" } else { "" }, g.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let next = match &row.next {
        Next::Stay => "=".to_owned(),
        Next::Phase(p) => p.clone(),
        Next::Stopped(super::StopCode::Code(c)) => format!("Stopped({c})"),
        Next::Stopped(super::StopCode::Drain) => "Stopped(drain)".to_owned(),
    };
    let effects = if row.effects.is_empty() {
        "-".to_owned()
    } else {
        row.effects
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    [
        row.states.join(", "),
        row.events.join(", "),
        guards,
        next,
        effects,
    ]
}

/// `docs/lifecycle.md`, generated whole from the table; a test keeps it current.
pub fn render_lifecycle_doc(spec: &Spec) -> String {
    let mut out = String::new();
    out.push_str("# The runner lifecycle\n\n");
    out.push_str("<!-- Generated from fsm-spec/lifecycle.spec by `fyn-runner spec --format markdown > docs/lifecycle.md`. Do not edit by hand. -->\n\n");
    let _ = writeln!(
        out,
        "Spec version {}: {} states, {} rows. The table in `fsm-spec/lifecycle.spec` is the source of truth; \
         the property tests hold the machine in `src/core/machine.rs` to it on every step.\n",
        spec.version,
        spec.states.len(),
        spec.rows.len()
    );
    out.push_str("```mermaid\n");
    out.push_str(&render_mermaid(spec));
    out.push_str("```\n\n## States\n\n");
    for state in &spec.states {
        let _ = writeln!(out, "### {}\n", state.name);
        if let Some(text) = spec.descriptions.get(&state.name) {
            let _ = writeln!(out, "{text}\n");
        }
        if !state.steps.is_empty() {
            let _ = writeln!(
                out,
                "Steps: {}.\n",
                state
                    .steps
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let chain = spec.ancestors(&state.name);
        if chain.len() > 1 {
            let _ = writeln!(
                out,
                "Inside: {}.\n",
                chain[1..]
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(" ⊂ ")
            );
        }
    }
    out.push_str("## Superstates\n\n");
    for sup in &spec.superstates {
        let text = spec
            .descriptions
            .get(&sup.name)
            .map(String::as_str)
            .unwrap_or("");
        let _ = writeln!(out, "- **{}**: {text}", sup.name);
    }
    out.push_str("\n## Guards\n\n");
    for (name, text) in &spec.guards {
        let _ = writeln!(out, "- `{name}`: {text}");
    }
    out.push_str("\n## The table\n\n```text\n");
    out.push_str(&render_table(spec));
    out.push_str("```\n");
    out
}
