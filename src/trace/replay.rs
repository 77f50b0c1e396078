//! Reading traces back and replaying them through a fresh `Core`.
//!
//! Replay boots the core exactly as the header says, checks the boot effects, then
//! dispatches every recorded event and compares the phase before, the phase after and
//! the effects (all redacted the same way) with the recording. The first difference
//! stops it. The machine is always driven from the first event: `from` only decides
//! what is reported, because the core has no snapshot to start from.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::core::{Core, Effect, Effects};
use crate::protocol::PROTOCOL_VERSION;

use super::format::{
    FORMAT_VERSION, RUNNER_VERSION, TRACE_MAGIC, TraceEntry, TraceHeader, file_name,
    parse_file_name, spec_version,
};
use super::redact;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a fyn-runner trace ({detail})")]
    NotATrace { path: PathBuf, detail: String },
    #[error("{path}: trace format {found}, this build reads format {this_build}")]
    FormatVersion {
        path: PathBuf,
        found: u64,
        this_build: u32,
    },
    #[error("{path}: trace from spec version {found}, this build has {this_build}")]
    SpecVersion {
        path: PathBuf,
        found: u64,
        this_build: u32,
    },
    #[error("{path}: trace from protocol version {found}, this build speaks {this_build}")]
    ProtocolVersion {
        path: PathBuf,
        found: u64,
        this_build: u32,
    },
    #[error("{path}:{line}: bad trace header: {detail}")]
    Header {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("{path}:{line}: corrupt trace line: {detail}")]
    CorruptLine {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("{path}:{line}: seq {seq} does not follow seq {previous}")]
    SeqOrder {
        path: PathBuf,
        line: usize,
        seq: u64,
        previous: u64,
    },
    #[error(
        "{path} is part {part} of a rotated recording (it continues {continues}); the core has no snapshot to start from, so replay the first file of the chain"
    )]
    NotChainStart {
        path: PathBuf,
        part: u32,
        continues: String,
    },
    #[error("this build's spec table does not parse: {0}")]
    Spec(#[from] crate::spec::SpecError),
}

/// No line the recorder writes comes near this (output is summarised); a file without
/// newlines must not make the reader swallow it whole.
pub const MAX_LINE_BYTES: u64 = 64 << 20;

/// One trace file, read line by line: the header is read and checked on open.
pub struct TraceReader {
    path: PathBuf,
    reader: BufReader<File>,
    header: TraceHeader,
    line: usize,
    buf: Vec<u8>,
    warnings: Vec<String>,
    done: bool,
}

impl TraceReader {
    /// Open a trace file and check its header against this build.
    pub fn open(path: &Path) -> Result<Self, ReplayError> {
        let io = |source| ReplayError::Io {
            path: path.to_owned(),
            source,
        };
        let mut reader = BufReader::with_capacity(256 * 1024, File::open(path).map_err(io)?);
        let mut buf = Vec::with_capacity(4096);
        let read = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(io)?;
        if read == 0 {
            return Err(ReplayError::NotATrace {
                path: path.to_owned(),
                detail: "the file is empty".into(),
            });
        }
        let header = check_header(path, trim_line(&buf))?;
        Ok(Self {
            path: path.to_owned(),
            reader,
            header,
            line: 1,
            buf,
            warnings: Vec::new(),
            done: false,
        })
    }

    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the reader tolerated (a truncated last line).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The next entry and its line number (1-based, the header is line 1), or `None`
    /// at the end. A last line cut short by a crash ends the file with a warning.
    pub fn next_entry(&mut self) -> Result<Option<(usize, TraceEntry)>, ReplayError> {
        if self.done {
            return Ok(None);
        }
        self.buf.clear();
        let read = (&mut self.reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| ReplayError::Io {
                path: self.path.clone(),
                source,
            })?;
        if read == 0 {
            self.done = true;
            return Ok(None);
        }
        self.line += 1;
        let complete = self.buf.last() == Some(&b'\n');
        if !complete && read as u64 > MAX_LINE_BYTES {
            return Err(ReplayError::CorruptLine {
                path: self.path.clone(),
                line: self.line,
                detail: format!("longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        let text = trim_line(&self.buf);
        match serde_json::from_slice::<TraceEntry>(text) {
            Ok(entry) => Ok(Some((self.line, entry))),
            Err(_) if !complete => {
                // The writer died mid-line: everything before it is sound.
                self.done = true;
                self.warnings.push(format!(
                    "{}:{}: last line is truncated ({} bytes, no newline) and was ignored",
                    self.path.display(),
                    self.line,
                    text.len()
                ));
                Ok(None)
            }
            Err(e) => Err(ReplayError::CorruptLine {
                path: self.path.clone(),
                line: self.line,
                detail: if text.is_empty() {
                    "empty line".into()
                } else {
                    e.to_string()
                },
            }),
        }
    }
}

fn trim_line(buf: &[u8]) -> &[u8] {
    let mut end = buf.len();
    while end > 0 && matches!(buf[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &buf[..end]
}

/// Check the marker and the versions before anything else, so a trace from another
/// build gets a message about versions rather than about some field it lacks.
fn check_header(path: &Path, line: &[u8]) -> Result<TraceHeader, ReplayError> {
    let value: Value = serde_json::from_slice(line).map_err(|e| ReplayError::NotATrace {
        path: path.to_owned(),
        detail: format!("line 1 is not JSON: {e}"),
    })?;
    if value.get("trace").and_then(Value::as_str) != Some(TRACE_MAGIC) {
        return Err(ReplayError::NotATrace {
            path: path.to_owned(),
            detail: format!("line 1 has no \"trace\": \"{TRACE_MAGIC}\""),
        });
    }
    let number = |field: &str| {
        value
            .get(field)
            .and_then(Value::as_u64)
            .ok_or_else(|| ReplayError::Header {
                path: path.to_owned(),
                line: 1,
                detail: format!("{field} is missing or not a number"),
            })
    };
    let format = number("format")?;
    if format != u64::from(FORMAT_VERSION) {
        return Err(ReplayError::FormatVersion {
            path: path.to_owned(),
            found: format,
            this_build: FORMAT_VERSION,
        });
    }
    let spec = number("spec_version")?;
    let this_spec = spec_version()?;
    if spec != u64::from(this_spec) {
        return Err(ReplayError::SpecVersion {
            path: path.to_owned(),
            found: spec,
            this_build: this_spec,
        });
    }
    let protocol = number("protocol_version")?;
    if protocol != u64::from(PROTOCOL_VERSION) {
        return Err(ReplayError::ProtocolVersion {
            path: path.to_owned(),
            found: protocol,
            this_build: PROTOCOL_VERSION,
        });
    }
    serde_json::from_value(value).map_err(|e| ReplayError::Header {
        path: path.to_owned(),
        line: 1,
        detail: e.to_string(),
    })
}

/// The files of one recording, read in order: a reader that moves on to the next
/// rotated part when one ends.
struct ChainReader {
    current: TraceReader,
    files: Vec<PathBuf>,
    warnings: Vec<String>,
    last_seq: Option<u64>,
}

impl ChainReader {
    /// `replaying`: refuse a later part, which the core cannot start from. Reading
    /// (for a timeline) may start anywhere.
    fn open(path: &Path, replaying: bool) -> Result<Self, ReplayError> {
        let current = TraceReader::open(path)?;
        if let Some(continues) = current.header().continues.as_ref().filter(|_| replaying) {
            return Err(ReplayError::NotChainStart {
                path: path.to_owned(),
                part: current.header().part,
                continues: continues.clone(),
            });
        }
        let mut warnings = Vec::new();
        if current.header().runner_version != RUNNER_VERSION {
            warnings.push(format!(
                "trace recorded by fyn-runner {}, replayed by {RUNNER_VERSION}",
                current.header().runner_version
            ));
        }
        Ok(Self {
            current,
            files: vec![path.to_owned()],
            warnings,
            last_seq: None,
        })
    }

    fn header(&self) -> &TraceHeader {
        self.current.header()
    }

    fn path(&self) -> &Path {
        self.current.path()
    }

    /// The next entry of the recording, checking that seq only grows.
    fn next_entry(&mut self) -> Result<Option<(usize, TraceEntry)>, ReplayError> {
        loop {
            if let Some((line, entry)) = self.current.next_entry()? {
                if let Some(previous) = self.last_seq
                    && entry.seq <= previous
                {
                    return Err(ReplayError::SeqOrder {
                        path: self.current.path().to_owned(),
                        line,
                        seq: entry.seq,
                        previous,
                    });
                }
                self.last_seq = Some(entry.seq);
                return Ok(Some((line, entry)));
            }
            if !self.advance()? {
                return Ok(None);
            }
        }
    }

    /// Move to the next rotated part, if there is one that names this file.
    fn advance(&mut self) -> Result<bool, ReplayError> {
        let path = self.current.path().to_owned();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Ok(false);
        };
        let Some((stamp, part)) = parse_file_name(name) else {
            return Ok(false);
        };
        let next_path = path.with_file_name(file_name(&stamp, part + 1));
        if !next_path.exists() {
            return Ok(false);
        }
        let next = TraceReader::open(&next_path)?;
        if next.header().continues.as_deref() != Some(name) {
            self.warnings.push(format!(
                "{} does not continue {name}; replay stopped at the end of {name}",
                next_path.display()
            ));
            return Ok(false);
        }
        let finished = std::mem::replace(&mut self.current, next);
        if !finished.warnings().is_empty() {
            // A truncated line inside a chain means entries are missing between parts.
            self.warnings.extend(finished.warnings().iter().cloned());
        }
        self.files.push(next_path);
        Ok(true)
    }

    fn finish(mut self) -> (Vec<PathBuf>, Vec<String>) {
        self.warnings
            .extend(self.current.warnings().iter().cloned());
        (self.files, self.warnings)
    }
}

/// A whole recording in memory (for the timeline and for tools).
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub header: TraceHeader,
    pub entries: Vec<TraceEntry>,
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

/// Read a recording from `path` on, following its rotated parts, without replaying it.
/// Unlike `replay`, this may start at a later part.
pub fn read_trace(path: &Path) -> Result<Trace, ReplayError> {
    let mut chain = ChainReader::open(path, false)?;
    let header = chain.header().clone();
    let mut entries = Vec::new();
    while let Some((_, entry)) = chain.next_entry()? {
        entries.push(entry);
    }
    let (files, warnings) = chain.finish();
    Ok(Trace {
        header,
        entries,
        files,
        warnings,
    })
}

/// One replayed step, as handed to `on_step`.
#[derive(Debug)]
pub struct StepReport<'a> {
    pub file: &'a Path,
    pub line: usize,
    /// The recorded entry.
    pub entry: &'a TraceEntry,
    /// The spec-table name of the event kind.
    pub event_kind: &'static str,
    /// The phase the replayed core ended in.
    pub actual_phase: &'a str,
    /// What the replayed core returned (before redaction; output chunks are replay
    /// placeholders, so print the recorded effects when bytes matter).
    pub actual_effects: &'a [Effect],
    /// Whether this step is where replay diverged.
    pub diverged: bool,
}

impl StepReport<'_> {
    /// `#seq  before → after  [event kind]  effects: a b c`; with `verbose`, the
    /// recorded event and effects follow as JSON, one per line.
    pub fn render(&self, verbose: bool) -> String {
        let tokens: Vec<String> = self.actual_effects.iter().map(Effect::spec_token).collect();
        let mut text = format!(
            "#{}  {} → {}  [{}]  effects: {}",
            self.entry.seq,
            self.entry.before,
            self.actual_phase,
            self.event_kind,
            if tokens.is_empty() {
                "-".to_owned()
            } else {
                tokens.join(" ")
            }
        );
        if self.diverged {
            text.push_str("  <-- diverged");
        }
        if verbose {
            text.push_str(&format!("\n    event:  {}", self.entry.event));
            for effect in &self.entry.effects {
                text.push_str(&format!("\n    effect: {effect}"));
            }
        }
        text
    }
}

/// Which comparison failed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DivergenceAspect {
    /// `Core::boot` returned other effects than the header records.
    BootEffects,
    /// The core was not in the recorded `before` phase when the event arrived.
    PhaseBefore,
    /// The core ended in another phase than the recorded `after`.
    PhaseAfter,
    /// Same phases, other effects.
    Effects,
}

/// Where and how replay left the recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    pub aspect: DivergenceAspect,
    pub file: PathBuf,
    /// The entry's seq; `None` for the boot effects.
    pub seq: Option<u64>,
    /// Line of `file` (1 = the header).
    pub line: usize,
    pub event_kind: String,
    /// For `PhaseBefore` the phases before the event, otherwise the phases after.
    pub expected_phase: String,
    pub actual_phase: String,
    /// Both redacted the same way, so they compare equal when the core agrees.
    pub expected_effects: Vec<Value>,
    pub actual_effects: Vec<Value>,
    /// Up to three entries before the divergent one, the divergent entry, and the
    /// entry after it when the file has one.
    pub context: Vec<TraceEntry>,
    pub warnings: Vec<String>,
}

impl Divergence {
    /// A readable account for the terminal; `verbose` adds the full JSON of both sides.
    pub fn render(&self, verbose: bool) -> String {
        let tokens = |list: &[Value]| {
            if list.is_empty() {
                "-".to_owned()
            } else {
                list.iter()
                    .map(redact::effect_token)
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let at = match self.seq {
            Some(seq) => format!("#{seq} [{}]", self.event_kind),
            None => "boot".to_owned(),
        };
        let mut text = format!(
            "DIVERGED at {at}, {}:{}: {}\n",
            self.file.display(),
            self.line,
            match self.aspect {
                DivergenceAspect::BootEffects => "boot effects differ",
                DivergenceAspect::PhaseBefore => "the core was in another phase before the event",
                DivergenceAspect::PhaseAfter => "the core ended in another phase",
                DivergenceAspect::Effects => "the core returned other effects",
            }
        );
        text.push_str(&format!("  expected phase:   {}\n", self.expected_phase));
        text.push_str(&format!("  actual phase:     {}\n", self.actual_phase));
        text.push_str(&format!(
            "  expected effects: {}\n",
            tokens(&self.expected_effects)
        ));
        text.push_str(&format!(
            "  actual effects:   {}\n",
            tokens(&self.actual_effects)
        ));
        if verbose {
            for effect in &self.expected_effects {
                text.push_str(&format!("  expected: {effect}\n"));
            }
            for effect in &self.actual_effects {
                text.push_str(&format!("  actual:   {effect}\n"));
            }
        }
        if !self.context.is_empty() {
            text.push_str("  context:\n");
            for entry in &self.context {
                let marker = if Some(entry.seq) == self.seq {
                    ">"
                } else {
                    " "
                };
                text.push_str(&format!(
                    "  {marker} #{}  {} → {}  [{}]  effects: {}\n",
                    entry.seq,
                    entry.before,
                    entry.after,
                    entry.event_kind_name(),
                    tokens(&entry.effects)
                ));
            }
        }
        text
    }
}

/// A replay that matched the recording to its end (or to `until`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySummary {
    /// Entries dispatched and compared.
    pub steps: u64,
    pub last_seq: Option<u64>,
    pub final_phase: String,
    pub files: Vec<PathBuf>,
    /// Tolerated oddities: a truncated last line, another runner version.
    pub warnings: Vec<String>,
    /// Replay stopped at `until` rather than at the end of the recording.
    pub stopped_at_until: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOutcome {
    Matched(ReplaySummary),
    Diverged(Box<Divergence>),
}

impl ReplayOutcome {
    pub fn is_match(&self) -> bool {
        matches!(self, Self::Matched(_))
    }

    pub fn warnings(&self) -> &[String] {
        match self {
            Self::Matched(summary) => &summary.warnings,
            Self::Diverged(divergence) => &divergence.warnings,
        }
    }
}

/// Replay the recording that starts at `path` (following its rotated parts). `on_step`
/// sees every step with `from <= seq <= until`, and the divergent step whatever its seq;
/// replay stops after `until`. See the module documentation for what is compared.
pub fn replay(
    path: &Path,
    from: Option<u64>,
    until: Option<u64>,
    mut on_step: impl FnMut(&StepReport<'_>),
) -> Result<ReplayOutcome, ReplayError> {
    let mut chain = ChainReader::open(path, true)?;
    let header = chain.header().clone();
    let (mut core, boot) = Core::boot(
        header.boot.config.clone(),
        header.boot.mode,
        header.boot.durable.clone(),
    );
    let boot_effects = redact::effects(&boot.list);
    if boot_effects != header.boot_effects {
        let (_, warnings) = chain.finish();
        return Ok(ReplayOutcome::Diverged(Box::new(Divergence {
            aspect: DivergenceAspect::BootEffects,
            file: path.to_owned(),
            seq: None,
            line: 1,
            event_kind: "boot".into(),
            expected_phase: core.phase(),
            actual_phase: core.phase(),
            expected_effects: header.boot_effects,
            actual_effects: boot_effects,
            context: Vec::new(),
            warnings,
        })));
    }

    let mut context: VecDeque<TraceEntry> = VecDeque::with_capacity(4);
    let mut effects = Effects::default();
    let mut phase = core.phase();
    let mut steps = 0u64;
    let mut stopped_at_until = false;
    while let Some((line, entry)) = chain.next_entry()? {
        if until.is_some_and(|until| entry.seq > until) {
            stopped_at_until = true;
            break;
        }
        let decoded =
            redact::decode_event(&entry.event).map_err(|detail| ReplayError::CorruptLine {
                path: chain.path().to_owned(),
                line,
                detail,
            })?;
        let before = std::mem::take(&mut phase);
        core.dispatch_into(&decoded.event, &mut effects);
        phase = core.phase();
        let aspect = if before != entry.before {
            Some(DivergenceAspect::PhaseBefore)
        } else if phase != entry.after {
            Some(DivergenceAspect::PhaseAfter)
        } else if !redact::effects_match(&effects.list, &entry.effects, decoded.alias.as_ref()) {
            Some(DivergenceAspect::Effects)
        } else {
            None
        };
        let event_kind = decoded.event.kind().name();
        if aspect.is_some() || from.is_none_or(|from| entry.seq >= from) {
            on_step(&StepReport {
                file: chain.path(),
                line,
                entry: &entry,
                event_kind,
                actual_phase: &phase,
                actual_effects: &effects.list,
                diverged: aspect.is_some(),
            });
        }
        if let Some(aspect) = aspect {
            let file = chain.path().to_owned();
            let (expected_phase, actual_phase) = match aspect {
                DivergenceAspect::PhaseBefore => (entry.before.clone(), before),
                _ => (entry.after.clone(), phase),
            };
            let seq = entry.seq;
            let expected_effects = entry.effects.clone();
            let actual = redact::effects_aliased(&effects.list, decoded.alias.as_ref());
            let mut context: Vec<TraceEntry> = context.into();
            context.push(entry);
            // One entry of what came next helps to see where the recording went; a
            // broken line after the divergence is not worth an error here.
            if let Ok(Some((_, next))) = chain.next_entry() {
                context.push(next);
            }
            let (_, warnings) = chain.finish();
            return Ok(ReplayOutcome::Diverged(Box::new(Divergence {
                aspect,
                file,
                seq: Some(seq),
                line,
                event_kind: event_kind.to_owned(),
                expected_phase,
                actual_phase,
                expected_effects,
                actual_effects: actual,
                context,
                warnings,
            })));
        }
        steps += 1;
        if context.len() == 3 {
            context.pop_front();
        }
        context.push_back(entry);
    }
    let last_seq = context.back().map(|entry| entry.seq);
    let (files, warnings) = chain.finish();
    Ok(ReplayOutcome::Matched(ReplaySummary {
        steps,
        last_seq,
        final_phase: phase,
        files,
        warnings,
        stopped_at_until,
    }))
}
