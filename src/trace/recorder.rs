//! Writing traces: buffered JSONL, size-based rotation, and a bound on how many trace
//! files a directory keeps.
//!
//! Recording must never take the runner down. Every failure is returned once as a
//! `TraceError` for the caller to log; after that the recorder is stopped and accepts
//! (and drops) further entries silently, so a full disk gives one error, not one per
//! event.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::format::{TraceEntry, TraceHeader, file_name, file_order_key, parse_file_name};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trace file {path} already exists; each recording needs its own start stamp")]
    Exists { path: PathBuf },
    #[error("cannot encode a trace line: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot list trace directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Records one session into `dir`, rotating by size.
pub struct Recorder {
    dir: PathBuf,
    header: TraceHeader,
    stamp: String,
    max_bytes: u64,
    keep: usize,
    part: u32,
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    /// Bytes in the current file, header included.
    written: u64,
    /// Reused for every line so recording does not allocate per event.
    line: Vec<u8>,
    stopped: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("part", &self.part)
            .field("written", &self.written)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Start a recording in `dir` (which must exist) at `trace-<stamp>.jsonl`, where
    /// the stamp comes from `header.started_at`. A file passing `max_bytes` is closed
    /// and the recording goes on in `trace-<stamp>.<n>.jsonl`; of all trace files in
    /// `dir`, only the newest `keep` (at least 1, the current one) are kept.
    pub fn create(
        dir: &Path,
        mut header: TraceHeader,
        max_bytes: u64,
        keep: usize,
    ) -> Result<Recorder, TraceError> {
        header.part = 0;
        header.continues = None;
        let stamp = header.started_at.file_stamp();
        let mut recorder = Recorder {
            dir: dir.to_owned(),
            path: dir.join(file_name(&stamp, 0)),
            header,
            stamp,
            max_bytes,
            keep: keep.max(1),
            part: 0,
            writer: None,
            written: 0,
            line: Vec::with_capacity(1024),
            stopped: false,
        };
        recorder.open_part()?;
        recorder.prune()?;
        Ok(recorder)
    }

    /// The file being written now.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an error stopped the recording.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Append one entry. The first failure is returned; afterwards the recorder is
    /// stopped and `record` does nothing.
    pub fn record(&mut self, entry: TraceEntry) -> Result<(), TraceError> {
        if self.stopped {
            return Ok(());
        }
        let result = self.write_entry(&entry);
        self.stop_on_error(result)
    }

    /// Push buffered lines to the file. Call it when the runner is idle or stopping;
    /// dropping the recorder flushes too, but cannot report a failure.
    pub fn flush(&mut self) -> Result<(), TraceError> {
        if self.stopped {
            return Ok(());
        }
        let result = match self.writer.as_mut() {
            Some(writer) => writer.flush().map_err(|source| TraceError::Io {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        };
        self.stop_on_error(result)
    }

    fn stop_on_error(&mut self, result: Result<(), TraceError>) -> Result<(), TraceError> {
        if result.is_err() {
            self.stopped = true;
            // Drop the writer without flushing again: the disk already said no, and a
            // second error would only be lost.
            if let Some(writer) = self.writer.take() {
                let (_file, _unflushed) = writer.into_parts();
            }
        }
        result
    }

    fn write_entry(&mut self, entry: &TraceEntry) -> Result<(), TraceError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, entry)?;
        self.line.push(b'\n');
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        writer
            .write_all(&self.line)
            .map_err(|source| TraceError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.written += self.line.len() as u64;
        if self.written > self.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Close the current part and open the next, whose header names the one before.
    fn rotate(&mut self) -> Result<(), TraceError> {
        if let Some(mut writer) = self.writer.take() {
            writer.flush().map_err(|source| TraceError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        let previous = file_name(&self.stamp, self.part);
        self.part += 1;
        self.header.part = self.part;
        self.header.continues = Some(previous);
        self.path = self.dir.join(file_name(&self.stamp, self.part));
        self.open_part()?;
        self.prune()
    }

    fn open_part(&mut self) -> Result<(), TraceError> {
        // Redacted, but still a record of what ran on this machine: owner only (the
        // traces folder is private, which is what a new file gets on Windows).
        let file = crate::platform::open_options(crate::platform::Access::Private)
            .write(true)
            .create_new(true)
            .open(&self.path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    TraceError::Exists {
                        path: self.path.clone(),
                    }
                } else {
                    TraceError::Io {
                        path: self.path.clone(),
                        source,
                    }
                }
            })?;
        let mut writer = BufWriter::with_capacity(64 * 1024, file);
        self.line.clear();
        serde_json::to_writer(&mut self.line, &self.header)?;
        self.line.push(b'\n');
        writer
            .write_all(&self.line)
            .map_err(|source| TraceError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.written = self.line.len() as u64;
        self.writer = Some(writer);
        Ok(())
    }

    /// Delete the oldest trace files in the directory beyond `keep`. Only names made by
    /// `file_name` count, so nothing else in the directory is ever touched.
    fn prune(&mut self) -> Result<(), TraceError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| TraceError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| TraceError::Dir {
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if let Some((stamp, part)) = parse_file_name(name) {
                files.push((file_order_key(&stamp, part), entry.path()));
            }
        }
        files.sort();
        let excess = files.len().saturating_sub(self.keep);
        for (_, path) in files.into_iter().take(excess) {
            if path == self.path {
                // Never the file being written, whatever the names say.
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                // Someone else pruned it first: the goal is met.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(TraceError::Io { path, source }),
            }
        }
        Ok(())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.as_mut() {
            // Nobody is left to tell about a failure here; `flush` is the checked way.
            let _ = writer.flush();
        }
    }
}
