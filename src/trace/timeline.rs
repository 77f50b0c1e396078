//! A session at a glance: lifecycle states as bands over time, reconnects and missed
//! heartbeats as markers, and jobs as bars in slot rows.
//!
//! Time runs left to right on `mono_ms`. Both renderings are pure functions of the
//! entries (no clock, no randomness, fixed number formatting), so they can be
//! snapshot-tested.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::format::{TraceEntry, state_of_phase};

/// The nine lifecycle states: letter for text, colour for SVG. The letters avoid
/// clashes (Registering is `G`, Reconnecting `C`), so one row shows them all.
const STATES: [(&str, char, &str); 9] = [
    ("Installing", 'I', "#8c564b"),
    ("Registering", 'G', "#9467bd"),
    ("Validating", 'V', "#1f77b4"),
    ("HardwareSync", 'H', "#17becf"),
    ("Ready", 'R', "#bcbd22"),
    ("Active", 'A', "#2ca02c"),
    ("Reconnecting", 'C', "#d62728"),
    ("Draining", 'D', "#ff7f0e"),
    ("Stopped", 'S', "#7f7f7f"),
];

const UNKNOWN_STATE: (char, &str) = ('?', "#cccccc");

fn state_style(state: &str) -> (char, &'static str) {
    STATES
        .iter()
        .find(|(name, _, _)| *name == state)
        .map_or(UNKNOWN_STATE, |(_, letter, colour)| (*letter, *colour))
}

/// A stretch of time spent in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Band {
    state: String,
    start: u64,
    end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MarkerKind {
    Reconnect,
    MissedHeartbeat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    kind: MarkerKind,
    at: u64,
    seq: u64,
}

/// One job attempt's run, from `JobStarted` to `JobExited` (or the end of the trace).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bar {
    label: String,
    /// 0-based slot row: the lowest one free when the job started.
    slot: usize,
    start: u64,
    end: u64,
    /// Still running when the trace ends.
    open: bool,
}

struct Model {
    t0: u64,
    t1: u64,
    events: usize,
    bands: Vec<Band>,
    markers: Vec<Marker>,
    bars: Vec<Bar>,
    slots: usize,
}

fn job_label(event: &Value) -> Option<String> {
    let job = event.get("job")?;
    let id = job.get("job_id")?.as_str()?;
    let attempt = job.get("attempt")?.as_u64()?;
    Some(if attempt == 1 {
        id.to_owned()
    } else {
        format!("{id}#{attempt}")
    })
}

impl Model {
    fn build(entries: &[TraceEntry]) -> Option<Self> {
        let first = entries.first()?;
        let t0 = first.mono_ms;
        let t1 = entries.iter().map(|e| e.mono_ms).max().unwrap_or(t0);
        let mut bands = Vec::new();
        let mut current = state_of_phase(&first.before).to_owned();
        let mut since = t0;
        let mut markers = Vec::new();
        let mut running: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        let mut busy: Vec<bool> = Vec::new();
        let mut bars = Vec::new();
        let mut clock = t0;
        for entry in entries {
            // A clock that went backwards in a doctored trace is held where it was.
            let at = entry.mono_ms.max(clock);
            clock = at;
            let before = state_of_phase(&entry.before);
            let after = state_of_phase(&entry.after);
            if after != current {
                bands.push(Band {
                    state: std::mem::replace(&mut current, after.to_owned()),
                    start: since,
                    end: at,
                });
                since = at;
            }
            if after == "Reconnecting" && before != "Reconnecting" {
                markers.push(Marker {
                    kind: MarkerKind::Reconnect,
                    at,
                    seq: entry.seq,
                });
            }
            let tag = entry.event_tag();
            let timer = entry.event.get("timer").and_then(Value::as_str);
            if tag == Some("timer_fired") && timer == Some("ack") && before == "Active" {
                markers.push(Marker {
                    kind: MarkerKind::MissedHeartbeat,
                    at,
                    seq: entry.seq,
                });
            }
            match (tag, job_label(&entry.event)) {
                (Some("job_started"), Some(label)) if !running.contains_key(&label) => {
                    let slot = match busy.iter().position(|b| !b) {
                        Some(free) => free,
                        None => {
                            busy.push(false);
                            busy.len() - 1
                        }
                    };
                    busy[slot] = true;
                    running.insert(label, (slot, at));
                }
                (Some("job_exited"), Some(label)) => {
                    if let Some((slot, start)) = running.remove(&label) {
                        busy[slot] = false;
                        bars.push(Bar {
                            label,
                            slot,
                            start,
                            end: at,
                            open: false,
                        });
                    }
                }
                _ => {}
            }
        }
        bands.push(Band {
            state: current,
            start: since,
            end: t1,
        });
        for (label, (slot, start)) in running {
            bars.push(Bar {
                label,
                slot,
                start,
                end: t1,
                open: true,
            });
        }
        bars.sort_by_key(|a| (a.start, a.slot));
        Some(Self {
            t0,
            t1,
            events: entries.len(),
            bands,
            markers,
            bars,
            slots: busy.len(),
        })
    }

    fn span(&self) -> u64 {
        (self.t1 - self.t0).max(1)
    }

    /// States that occur, in lifecycle order, for the legend.
    fn states_seen(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = STATES
            .iter()
            .map(|(name, _, _)| *name)
            .filter(|name| self.bands.iter().any(|b| b.state == *name))
            .collect();
        for band in &self.bands {
            if !seen.contains(&band.state.as_str()) {
                seen.push(&band.state);
            }
        }
        seen
    }
}

/// Milliseconds as people read them: `850 ms`, `12.5 s`, `3 min 5.0 s`.
fn human_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{}.{} s", ms / 1_000, (ms % 1_000) / 100)
    } else {
        let secs = ms / 1_000;
        format!("{} min {}.{} s", secs / 60, secs % 60, (ms % 1_000) / 100)
    }
}

/// The text timeline, `width` columns of time (at least 10) after a 10-column label.
pub fn render_text(entries: &[TraceEntry], width: usize) -> String {
    let Some(model) = Model::build(entries) else {
        return "timeline: no events\n".to_owned();
    };
    let width = width.max(10);
    let span = model.span();
    let column = |t: u64| -> usize {
        let offset = u128::from(t.saturating_sub(model.t0).min(span));
        // Integer arithmetic keeps the output identical on every platform.
        let col = offset * (width as u128 - 1) / u128::from(span);
        usize::try_from(col).unwrap_or(width - 1)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "timeline: {} over {} events, 1 column = {}",
        human_ms(model.t1 - model.t0),
        model.events,
        human_ms(span.div_ceil(width as u64 - 1))
    );

    let start_label = format!("+{}", human_ms(0));
    let end_label = format!("+{}", human_ms(model.t1 - model.t0));
    let gap = width
        .saturating_sub(start_label.len() + end_label.len())
        .max(1);
    let _ = writeln!(
        out,
        "{:<10}{start_label}{}{end_label}",
        "time",
        " ".repeat(gap)
    );

    let mut band_row = vec!['?'; width];
    let last = model.bands.len() - 1;
    for (i, band) in model.bands.iter().enumerate() {
        let (letter, _) = state_style(&band.state);
        let c0 = column(band.start);
        let c1 = column(band.end);
        // Each band owns its columns up to where the next begins; a band shorter
        // than a column still shows, unless a later one lands on the same column.
        let end = if i == last { c1 + 1 } else { c1.max(c0 + 1) };
        for cell in band_row.iter_mut().take(end.min(width)).skip(c0) {
            *cell = letter;
        }
    }
    let _ = writeln!(
        out,
        "{:<10}{}",
        "state",
        band_row.iter().collect::<String>()
    );

    for (kind, label, symbol) in [
        (MarkerKind::Reconnect, "reconnect", '^'),
        (MarkerKind::MissedHeartbeat, "missed hb", 'x'),
    ] {
        let mut row = vec!['.'; width];
        let mut any = false;
        for marker in model.markers.iter().filter(|m| m.kind == kind) {
            row[column(marker.at)] = symbol;
            any = true;
        }
        if any {
            let _ = writeln!(out, "{label:<10}{}", row.iter().collect::<String>());
        }
    }

    for slot in 0..model.slots {
        let mut row = vec!['.'; width];
        for bar in model.bars.iter().filter(|b| b.slot == slot) {
            let c0 = column(bar.start);
            let c1 = column(bar.end).max(c0);
            for cell in row.iter_mut().take(c1 + 1).skip(c0) {
                *cell = '=';
            }
            row[c0] = '[';
            row[c1] = if bar.open { '>' } else { ']' };
            // The label goes inside the bar when it fits between the brackets.
            let inside = c1.saturating_sub(c0 + 1);
            if bar.label.chars().count() <= inside {
                for (k, ch) in bar.label.chars().enumerate() {
                    row[c0 + 1 + k] = ch;
                }
            }
        }
        let name = format!("slot {}", slot + 1);
        let _ = writeln!(out, "{name:<10}{}", row.iter().collect::<String>());
    }

    let legend: Vec<String> = model
        .states_seen()
        .into_iter()
        .map(|state| format!("{} {state}", state_style(state).0))
        .collect();
    let _ = writeln!(out, "states:   {}", legend.join("  "));
    let _ = writeln!(
        out,
        "markers:  ^ reconnect  x missed heartbeat  [job] job run  > still running"
    );
    for bar in &model.bars {
        let _ = writeln!(
            out,
            "job {} in slot {}: +{} to +{}{}",
            bar.label,
            bar.slot + 1,
            human_ms(bar.start - model.t0),
            human_ms(bar.end - model.t0),
            if bar.open { " (still running)" } else { "" }
        );
    }
    for marker in &model.markers {
        let what = match marker.kind {
            MarkerKind::Reconnect => "reconnect",
            MarkerKind::MissedHeartbeat => "missed heartbeat",
        };
        let _ = writeln!(
            out,
            "{what} at +{} (#{})",
            human_ms(marker.at - model.t0),
            marker.seq
        );
    }
    out
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(ch),
        }
    }
    out
}

/// The SVG timeline: a self-contained image with hover titles on every band and bar.
pub fn render_svg(entries: &[TraceEntry]) -> String {
    const LEFT: f64 = 90.0;
    const PLOT: f64 = 900.0;
    const ROW: f64 = 24.0;
    const TOP: f64 = 30.0;
    let Some(model) = Model::build(entries) else {
        return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"300\" height=\"40\">\
                <text x=\"10\" y=\"25\" font-family=\"monospace\" font-size=\"12\">timeline: no events</text></svg>\n"
            .to_owned();
    };
    let span = model.span() as f64;
    let x = |t: u64| LEFT + (t.saturating_sub(model.t0) as f64) * PLOT / span;
    // Rows: states, reconnects, missed heartbeats, then one per job slot.
    let rows = 3 + model.slots;
    let axis_y = TOP + rows as f64 * ROW + 6.0;
    let legend_y = axis_y + 42.0;
    let height = legend_y + 30.0;
    let width = LEFT + PLOT + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"monospace\" font-size=\"12\">"
    );
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"#ffffff\"/>"
    );
    let _ = writeln!(
        out,
        "<text x=\"{LEFT:.0}\" y=\"18\">fyn-runner session: {} over {} events</text>",
        xml_escape(&human_ms(model.t1 - model.t0)),
        model.events
    );

    let row_y = |row: usize| TOP + row as f64 * ROW;
    let labels = ["state", "reconnect", "missed hb"]
        .map(str::to_owned)
        .into_iter()
        .chain((0..model.slots).map(|s| format!("slot {}", s + 1)));
    for (row, label) in labels.enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"6\" y=\"{:.1}\">{label}</text>",
            row_y(row) + ROW * 0.65
        );
    }

    for band in &model.bands {
        let (_, colour) = state_style(&band.state);
        let x0 = x(band.start);
        // Zero-length bands still get a hairline, so every state entered is visible.
        let w = (x(band.end) - x0).max(1.0);
        let _ = writeln!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{colour}\">\
             <title>{} +{} to +{}</title></rect>",
            row_y(0) + 2.0,
            ROW - 4.0,
            xml_escape(&band.state),
            xml_escape(&human_ms(band.start - model.t0)),
            xml_escape(&human_ms(band.end - model.t0)),
        );
    }

    for marker in &model.markers {
        let mx = x(marker.at);
        let row = match marker.kind {
            MarkerKind::Reconnect => 1,
            MarkerKind::MissedHeartbeat => 2,
        };
        let my = row_y(row) + ROW / 2.0;
        let at = xml_escape(&human_ms(marker.at - model.t0));
        match marker.kind {
            MarkerKind::Reconnect => {
                let _ = writeln!(
                    out,
                    "<line x1=\"{mx:.1}\" y1=\"{:.1}\" x2=\"{mx:.1}\" y2=\"{:.1}\" stroke=\"#d62728\" stroke-dasharray=\"3,2\"/>",
                    row_y(0),
                    row_y(rows)
                );
                let _ = writeln!(
                    out,
                    "<path d=\"M {:.1} {:.1} L {:.1} {:.1} L {mx:.1} {:.1} Z\" fill=\"#d62728\">\
                     <title>reconnect at +{at} (#{})</title></path>",
                    mx - 6.0,
                    my - 6.0,
                    mx + 6.0,
                    my - 6.0,
                    my + 6.0,
                    marker.seq
                );
            }
            MarkerKind::MissedHeartbeat => {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{mx:.1}\" cy=\"{my:.1}\" r=\"5\" fill=\"#ff7f0e\" stroke=\"#000000\">\
                     <title>missed heartbeat at +{at} (#{})</title></circle>",
                    marker.seq
                );
            }
        }
    }

    for bar in &model.bars {
        let x0 = x(bar.start);
        let w = (x(bar.end) - x0).max(2.0);
        let y = row_y(3 + bar.slot) + 3.0;
        let label = xml_escape(&bar.label);
        let _ = writeln!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" rx=\"3\" fill=\"#4c78a8\"{}>\
             <title>{label} +{} to +{}{}</title></rect>",
            ROW - 6.0,
            if bar.open {
                " stroke=\"#000000\" stroke-dasharray=\"4,2\""
            } else {
                ""
            },
            xml_escape(&human_ms(bar.start - model.t0)),
            xml_escape(&human_ms(bar.end - model.t0)),
            if bar.open { " (still running)" } else { "" }
        );
        // About 7 px per character at this font size: label only what fits.
        if w >= 7.0 * bar.label.chars().count() as f64 + 6.0 {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#ffffff\">{label}</text>",
                x0 + 3.0,
                y + ROW * 0.5
            );
        }
    }

    let _ = writeln!(
        out,
        "<line x1=\"{LEFT:.1}\" y1=\"{axis_y:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\" stroke=\"#000000\"/>",
        LEFT + PLOT
    );
    for quarter in 0..=4u64 {
        let offset = (model.t1 - model.t0) * quarter / 4;
        let tx = x(model.t0 + offset);
        let anchor = match quarter {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = writeln!(
            out,
            "<line x1=\"{tx:.1}\" y1=\"{axis_y:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#000000\"/>\
             <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">+{}</text>",
            axis_y + 5.0,
            axis_y + 18.0,
            xml_escape(&human_ms(offset))
        );
    }

    let mut lx = LEFT;
    for state in model.states_seen() {
        let (_, colour) = state_style(state);
        let _ = writeln!(
            out,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            legend_y - 10.0,
            lx + 16.0,
            legend_y,
            xml_escape(state)
        );
        lx += 16.0 + 7.5 * state.len() as f64 + 14.0;
    }
    let _ = writeln!(out, "</svg>");
    out
}
