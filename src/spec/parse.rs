//! The table's text format; see the header of `fsm-spec/lifecycle.spec`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::EffectPattern;
use crate::core::EventKind;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("no row covers event {event} in phase {phase}")]
    NoRow { phase: String, event: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateDecl {
    pub name: String,
    pub parent: Option<String>,
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SuperDecl {
    pub name: String,
    pub parent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Guard {
    pub name: String,
    pub negated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionDecl {
    pub target: String,
    pub guards: Vec<Guard>,
    pub effects: Vec<EffectPattern>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCode {
    Code(i32),
    /// 0 from a graceful drain, 2 from a forced one.
    Drain,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    Stay,
    Phase(String),
    Stopped(StopCode),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub line: usize,
    pub states: Vec<String>,
    pub events: Vec<String>,
    pub guards: Vec<Guard>,
    pub next: Next,
    pub effects: Vec<EffectPattern>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Spec {
    pub version: u32,
    pub states: Vec<StateDecl>,
    pub superstates: Vec<SuperDecl>,
    pub groups: BTreeMap<String, Vec<String>>,
    pub guards: BTreeMap<String, String>,
    pub descriptions: BTreeMap<String, String>,
    pub entries: Vec<ActionDecl>,
    pub exits: Vec<ActionDecl>,
    pub boots: Vec<(String, String)>,
    pub rows: Vec<Row>,
    /// Candidate rows per (phase, event), most specific first; built once at parse.
    #[serde(skip)]
    pub(super) index: std::collections::HashMap<(String, String), Vec<usize>>,
}

impl Spec {
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        let mut spec = Spec::default();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            spec.parse_line(line, content)
                .map_err(|message| SpecError::Syntax { line, message })?;
        }
        spec.check()
            .map_err(|(line, message)| SpecError::Syntax { line, message })?;
        spec.index = spec.build_index();
        Ok(spec)
    }

    fn parse_line(&mut self, line: usize, content: &str) -> Result<(), String> {
        if content.contains('|') {
            let row = parse_row(line, content)?;
            self.rows.push(row);
            return Ok(());
        }
        let (keyword, rest) = content
            .split_once(char::is_whitespace)
            .unwrap_or((content, ""));
        let rest = rest.trim();
        match keyword {
            "spec-version" => {
                self.version = rest
                    .parse()
                    .map_err(|_| format!("bad spec-version {rest:?}"))?;
            }
            "superstate" => {
                let (name, parent, _) = parse_decl(rest)?;
                self.superstates.push(SuperDecl { name, parent });
            }
            "state" => {
                let (name, parent, steps) = parse_decl(rest)?;
                self.states.push(StateDecl {
                    name,
                    parent,
                    steps,
                });
            }
            "group" => {
                let (name, members) = colon_split(rest)?;
                self.groups.insert(name.to_owned(), words(members));
            }
            "guard" => {
                let (name, text) = colon_split(rest)?;
                self.guards.insert(name.to_owned(), text.trim().to_owned());
            }
            "describe" => {
                let (name, text) = colon_split(rest)?;
                let entry = self.descriptions.entry(name.to_owned()).or_default();
                if !entry.is_empty() {
                    entry.push(' ');
                }
                entry.push_str(text.trim());
            }
            "entry" | "exit" => {
                let (head, effects) = colon_split(rest)?;
                let (target, guards) = match head.split_once('[') {
                    Some((target, guards)) => {
                        (target.trim(), parse_guards(guards.trim_end_matches(']'))?)
                    }
                    None => (head.trim(), Vec::new()),
                };
                let decl = ActionDecl {
                    target: target.to_owned(),
                    guards,
                    effects: parse_effects(effects)?,
                };
                if keyword == "entry" {
                    self.entries.push(decl);
                } else {
                    self.exits.push(decl);
                }
            }
            "boot" => {
                let (mode, phase) = rest.split_once("->").ok_or("boot needs MODE -> PHASE")?;
                self.boots
                    .push((mode.trim().to_owned(), phase.trim().to_owned()));
            }
            other => return Err(format!("unknown declaration {other:?}")),
        }
        Ok(())
    }

    /// Every name a row uses must be declared, so a typo cannot silently never match.
    fn check(&self) -> Result<(), (usize, String)> {
        let phases = self.phases();
        let is_place = |name: &str| {
            name == "*"
                || phases.iter().any(|p| p == name)
                || self.states.iter().any(|s| s.name == name)
                || self.superstates.iter().any(|s| s.name == name)
        };
        for row in &self.rows {
            let fail = |message: String| Err((row.line, message));
            for state in &row.states {
                if !is_place(state) {
                    return fail(format!("unknown state or phase {state:?}"));
                }
            }
            for event in &row.events {
                let known = event == "*"
                    || EventKind::from_name(event).is_some()
                    || self.groups.contains_key(event);
                if !known {
                    return fail(format!("unknown event or group {event:?}"));
                }
            }
            for guard in &row.guards {
                if !self.guards.contains_key(&guard.name) {
                    return fail(format!("undeclared guard {:?}", guard.name));
                }
            }
            if let Next::Phase(target) = &row.next
                && (!is_place(target) || target == "*")
            {
                return fail(format!("unknown next state {target:?}"));
            }
        }
        for (name, members) in &self.groups {
            if let Some(bad) = members.iter().find(|m| EventKind::from_name(m).is_none()) {
                return Err((0, format!("group {name} names unknown event {bad:?}")));
            }
        }
        Ok(())
    }
}

fn parse_decl(rest: &str) -> Result<(String, Option<String>, Vec<String>), String> {
    let mut tokens = rest.split_whitespace();
    let name = tokens.next().ok_or("missing name")?.to_owned();
    let mut parent = None;
    let mut steps = Vec::new();
    while let Some(token) = tokens.next() {
        match token {
            "in" => parent = Some(tokens.next().ok_or("`in` needs a superstate")?.to_owned()),
            "steps" => steps.extend(tokens.by_ref().map(str::to_owned)),
            other => return Err(format!("unexpected {other:?} in declaration")),
        }
    }
    Ok((name, parent, steps))
}

fn parse_row(line: usize, content: &str) -> Result<Row, String> {
    let cells: Vec<&str> = content.split('|').map(str::trim).collect();
    let [states, events, guards, next, effects] = cells[..] else {
        return Err(format!("a row has 5 cells, this one has {}", cells.len()));
    };
    Ok(Row {
        line,
        states: list(states),
        events: list(events),
        guards: parse_guards(guards)?,
        next: parse_next(next)?,
        effects: parse_effects(effects)?,
    })
}

fn parse_next(cell: &str) -> Result<Next, String> {
    if cell == "=" {
        return Ok(Next::Stay);
    }
    if let Some(inner) = cell
        .strip_prefix("Stopped(")
        .and_then(|c| c.strip_suffix(')'))
    {
        let code = match inner {
            "drain" => StopCode::Drain,
            number => StopCode::Code(
                number
                    .parse()
                    .map_err(|_| format!("bad exit code {number:?}"))?,
            ),
        };
        return Ok(Next::Stopped(code));
    }
    if cell.is_empty() || cell.contains(char::is_whitespace) {
        return Err(format!("bad next state {cell:?}"));
    }
    Ok(Next::Phase(cell.to_owned()))
}

fn parse_guards(cell: &str) -> Result<Vec<Guard>, String> {
    if cell.trim() == "-" || cell.trim().is_empty() {
        return Ok(Vec::new());
    }
    list(cell)
        .into_iter()
        .map(|g| match g.strip_prefix('!') {
            Some(name) if !name.is_empty() => Ok(Guard {
                name: name.to_owned(),
                negated: true,
            }),
            Some(_) => Err("empty negated guard".to_owned()),
            None => Ok(Guard {
                name: g,
                negated: false,
            }),
        })
        .collect()
}

fn parse_effects(cell: &str) -> Result<Vec<EffectPattern>, String> {
    if cell.trim() == "-" {
        return Ok(Vec::new());
    }
    cell.split_whitespace()
        .map(|token| {
            let (token, repeat) = match token.strip_suffix('*') {
                Some(t) => (t, true),
                None => (token, false),
            };
            let balanced = token.matches('(').count() == token.matches(')').count();
            if token.is_empty() || !balanced {
                return Err(format!("bad effect {token:?}"));
            }
            Ok(EffectPattern {
                token: token.to_owned(),
                repeat,
            })
        })
        .collect()
}

fn colon_split(rest: &str) -> Result<(&str, &str), String> {
    rest.split_once(':')
        .map(|(a, b)| (a.trim(), b.trim()))
        .ok_or_else(|| "expected NAME: ...".to_owned())
}

fn list(cell: &str) -> Vec<String> {
    cell.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}
