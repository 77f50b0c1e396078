/*!
The lifecycle spec table (`fsm-spec/lifecycle.spec`): parsing, row resolution, the
composition of exit and entry actions, and renderings (table, Mermaid, DOT, JSON, the
generated `docs/lifecycle.md`).

Owns: the meaning of the table. The property tests ask it what the machine must do;
`fyn-runner spec` asks it to draw itself.

Must not touch: the machine itself (`core::machine`) — the table is checked against the
machine, never derived from it — nor any I/O beyond the text handed in.
*/

mod parse;
mod render;

pub use parse::{ActionDecl, Guard, Next, Row, Spec, SpecError, StateDecl, StopCode, SuperDecl};
pub use render::{render_dot, render_json, render_lifecycle_doc, render_mermaid, render_table};

/// The table this build was made from.
pub const SPEC_TEXT: &str = include_str!("../../fsm-spec/lifecycle.spec");

/// Parse the embedded table. It is checked by the test suite, so failure here means a
/// broken build, reported as an error rather than a panic all the same.
pub fn embedded() -> Result<Spec, SpecError> {
    Spec::parse(SPEC_TEXT)
}

/// An effect as the table writes it: `send(ready)`, or `kill(shutdown)*` for any number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EffectPattern {
    pub token: String,
    pub repeat: bool,
}

impl std::fmt::Display for EffectPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.token, if self.repeat { "*" } else { "" })
    }
}

/// Does the machine's effect list match the table's patterns, in order?
pub fn effects_match(patterns: &[EffectPattern], actual: &[String]) -> bool {
    match patterns.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first.repeat => {
            // Try every count of repetitions, longest first.
            let run = actual.iter().take_while(|a| **a == first.token).count();
            (0..=run).rev().any(|n| effects_match(rest, &actual[n..]))
        }
        Some((first, rest)) => {
            actual.first().is_some_and(|a| *a == first.token) && effects_match(rest, &actual[1..])
        }
    }
}

/// What the table says one event does from one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The phase afterwards (`Active`, `Validating.await_auth`).
    pub next_phase: String,
    /// The handler's effects, then exit actions, then entry actions.
    pub effects: Vec<EffectPattern>,
    /// The exit code when the step ends in Stopped.
    pub exit_code: Option<i32>,
    /// The table line of the row that decided it.
    pub line: usize,
}

impl Spec {
    /// Resolve one event from one phase. `guard` answers row guards before the step;
    /// `entry_guard` answers entry guards given the handler's effects (so an entry can
    /// see that the handler closed the link).
    pub fn step(
        &self,
        phase: &str,
        event: &str,
        guard: &dyn Fn(&str) -> bool,
        entry_guard: &dyn Fn(&str, &[EffectPattern]) -> bool,
    ) -> Result<Step, SpecError> {
        let row = self
            .resolve(phase, event, guard)
            .ok_or_else(|| SpecError::NoRow {
                phase: phase.to_owned(),
                event: event.to_owned(),
            })?;
        let (state, _) = split_phase(phase);
        let (next_phase, exit_code) = match &row.next {
            Next::Stay => (phase.to_owned(), None),
            Next::Phase(target) => (self.full_phase(target), None),
            Next::Stopped(code) => {
                let code = match code {
                    StopCode::Code(c) => *c,
                    StopCode::Drain if phase.ends_with(".forced") => 2,
                    StopCode::Drain => 0,
                };
                ("Stopped".to_owned(), Some(code))
            }
        };
        let mut effects = row.effects.clone();
        let (next_state, next_step) = split_phase(&next_phase);
        if next_state != state {
            let handler = effects.clone();
            let (exited, entered) = self.transition_path(state, next_state);
            let (_, step_left) = split_phase(phase);
            for name in exited {
                // The state left runs its own exit, then the one of the step it was in.
                let step = (name == state).then_some(step_left).flatten();
                effects.extend(self.actions(&self.exits, name, step, &|_| true));
            }
            for name in entered {
                let step = (name == next_state).then_some(next_step).flatten();
                let eval = |g: &str| entry_guard(g, &handler);
                effects.extend(self.actions(&self.entries, name, step, &eval));
            }
        }
        if let Some(code) = exit_code {
            for e in &mut effects {
                e.token = e.token.replace("$code", &code.to_string());
            }
        }
        Ok(Step {
            next_phase,
            effects,
            exit_code,
            line: row.line,
        })
    }

    /// The effects of booting into `phase`: every entry action from the outside in.
    pub fn boot_effects(
        &self,
        phase: &str,
        entry_guard: &dyn Fn(&str) -> bool,
    ) -> Vec<EffectPattern> {
        let (state, step) = split_phase(phase);
        let mut chain = self.ancestors(state);
        chain.reverse();
        chain
            .into_iter()
            .flat_map(|name| {
                let step = (name == state).then_some(step).flatten();
                self.actions(&self.entries, name, step, entry_guard)
            })
            .collect()
    }

    /// The most specific matching row whose guards hold.
    pub fn resolve(&self, phase: &str, event: &str, guard: &dyn Fn(&str) -> bool) -> Option<&Row> {
        self.candidates(phase, event)
            .into_iter()
            .find(|row| row.guards.iter().all(|g| guard(&g.name) != g.negated))
    }

    /// Rows that name this phase and event, most specific level first, then file order.
    pub fn candidates(&self, phase: &str, event: &str) -> Vec<&Row> {
        match self.index.get(&(phase.to_owned(), event.to_owned())) {
            Some(rows) => rows.iter().map(|&i| &self.rows[i]).collect(),
            None => self
                .scan_candidates(phase, event)
                .into_iter()
                .map(|i| &self.rows[i])
                .collect(),
        }
    }

    pub(crate) fn build_index(&self) -> std::collections::HashMap<(String, String), Vec<usize>> {
        let mut index = std::collections::HashMap::new();
        for phase in self.phases() {
            for kind in crate::core::EventKind::ALL {
                let rows = self.scan_candidates(&phase, kind.name());
                index.insert((phase.clone(), kind.name().to_owned()), rows);
            }
        }
        index
    }

    fn scan_candidates(&self, phase: &str, event: &str) -> Vec<usize> {
        let mut rows: Vec<(u32, usize, &Row)> = self
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| self.row_names_event(row, event))
            .filter_map(|(i, row)| {
                let level = row
                    .states
                    .iter()
                    .filter_map(|s| self.specificity(s, phase))
                    .max()?;
                Some((level, i, row))
            })
            .collect();
        rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        rows.into_iter().map(|(_, i, _)| i).collect()
    }

    fn row_names_event(&self, row: &Row, event: &str) -> bool {
        row.events.iter().any(|e| {
            e == "*"
                || e == event
                || self
                    .groups
                    .get(e)
                    .is_some_and(|members| members.iter().any(|m| m == event))
        })
    }

    /// How specifically `pattern` names `phase`: a phase beats its state, which beats its
    /// superstates (inner before outer), which beat `*`. `None` when it does not match.
    fn specificity(&self, pattern: &str, phase: &str) -> Option<u32> {
        let (state, _) = split_phase(phase);
        if pattern == "*" {
            return Some(0);
        }
        if pattern == phase && pattern.contains('.') {
            return Some(1000);
        }
        let chain = self.ancestors(state);
        let depth = chain.len();
        chain
            .iter()
            .position(|name| *name == pattern)
            .map(|pos| u32::try_from(100 * (depth - pos)).unwrap_or(u32::MAX))
    }

    /// The state and its superstates, innermost first.
    pub fn ancestors<'a>(&'a self, state: &'a str) -> Vec<&'a str> {
        let mut chain = vec![state];
        let mut current = self.parent_of(state);
        while let Some(parent) = current {
            chain.push(parent);
            current = self.parent_of(parent);
        }
        chain
    }

    fn parent_of(&self, name: &str) -> Option<&str> {
        self.states
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.parent.as_deref())
            .or_else(|| {
                self.superstates
                    .iter()
                    .find(|s| s.name == name)
                    .and_then(|s| s.parent.as_deref())
            })
    }

    /// States exited (innermost first) and entered (outermost first) between two states.
    fn transition_path<'a>(&'a self, from: &'a str, to: &'a str) -> (Vec<&'a str>, Vec<&'a str>) {
        let up = self.ancestors(from);
        let down = self.ancestors(to);
        let common = up.iter().find(|name| down.contains(name)).copied();
        let exited = up
            .iter()
            .take_while(|n| Some(**n) != common)
            .copied()
            .collect();
        let mut entered: Vec<&str> = down
            .iter()
            .take_while(|n| Some(**n) != common)
            .copied()
            .collect();
        entered.reverse();
        (exited, entered)
    }

    fn actions(
        &self,
        decls: &[ActionDecl],
        name: &str,
        step: Option<&str>,
        guard: &dyn Fn(&str) -> bool,
    ) -> Vec<EffectPattern> {
        let phase = step.map(|s| format!("{name}.{s}"));
        let state_level = decls.iter().filter(|d| d.target == name);
        let phase_level = decls.iter().filter(|d| Some(&d.target) == phase.as_ref());
        let mut out = Vec::new();
        for group in [state_level.collect::<Vec<_>>(), phase_level.collect()] {
            // Of several guarded declarations for one target, the first that holds runs.
            if let Some(decl) = group
                .into_iter()
                .find(|d| d.guards.iter().all(|g| guard(&g.name) != g.negated))
            {
                out.extend(decl.effects.iter().cloned());
            }
        }
        out
    }

    /// `Registering` names the state in its first step; `Active` stays as it is.
    fn full_phase(&self, target: &str) -> String {
        if target.contains('.') {
            return target.to_owned();
        }
        match self
            .states
            .iter()
            .find(|s| s.name == target)
            .and_then(|s| s.steps.first())
        {
            Some(first) => format!("{target}.{first}"),
            None => target.to_owned(),
        }
    }

    /// Every phase of every state, e.g. `Validating.await_auth`, `Active`.
    pub fn phases(&self) -> Vec<String> {
        self.states
            .iter()
            .flat_map(|s| {
                if s.steps.is_empty() {
                    vec![s.name.clone()]
                } else {
                    s.steps
                        .iter()
                        .map(|step| format!("{}.{step}", s.name))
                        .collect()
                }
            })
            .collect()
    }

    /// Totality: every phase and event kind reaches a row that holds without guards,
    /// so no combination is left unspecified. Returns the pairs that do not.
    pub fn uncovered(&self, events: &[&str]) -> Vec<(String, String)> {
        let mut missing = Vec::new();
        for phase in self.phases() {
            for event in events {
                let covered = self
                    .candidates(&phase, event)
                    .iter()
                    .any(|row| row.guards.is_empty());
                if !covered {
                    missing.push((phase.clone(), (*event).to_owned()));
                }
            }
        }
        missing
    }
}

/// `Validating.await_auth` → (`Validating`, Some(`await_auth`)).
pub fn split_phase(phase: &str) -> (&str, Option<&str>) {
    match phase.split_once('.') {
        Some((state, step)) => (state, Some(step)),
        None => (phase, None),
    }
}
