//! The last reported inventory, kept as `hardware.json` in the state
//! directory so the runner only tells the control plane about real changes.
//!
//! Volatile fields ([`VOLATILE_PATHS`], currently free disk space) are stored
//! in the file but never compared: otherwise every check would report a
//! change. They therefore never appear in a [`HardwareChanges`] list either,
//! so a record patched with [`super::apply_changes`] keeps the volatile
//! values it had; fresh values travel with full reports.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::platform::Access;
use crate::protocol::{HardwareChanges, HardwareReport, diff_values};

pub const CACHE_FILE_NAME: &str = "hardware.json";

/// Report fields that change without the hardware changing.
pub const VOLATILE_PATHS: &[&str] = &["job_disk.available_bytes"];

/// Operators read the cache to see what the runner reported (mode 0644).
const CACHE_FILE_ACCESS: Access = Access::Readable;

#[derive(Debug, Clone, PartialEq)]
pub enum CacheStatus {
    /// No cached report: the runner has never reported, or the cache was
    /// unreadable.
    Missing,
    Unchanged,
    Changed(HardwareChanges),
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read hardware cache {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("hardware cache {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write hardware cache {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CACHE_FILE_NAME)
}

/// Compares the cached report with a freshly collected one, ignoring
/// [`VOLATILE_PATHS`].
pub fn compare(cached: Option<&HardwareReport>, current: &HardwareReport) -> CacheStatus {
    let Some(cached) = cached else {
        return CacheStatus::Missing;
    };
    let changes = diff_reports(cached, current);
    if changes.is_empty() {
        CacheStatus::Unchanged
    } else {
        CacheStatus::Changed(changes)
    }
}

/// The non-volatile differences between two reports.
pub fn diff_reports(old: &HardwareReport, new: &HardwareReport) -> HardwareChanges {
    let mut changes = diff_values(&report_value(old), &report_value(new));
    changes
        .0
        .retain(|change| !VOLATILE_PATHS.contains(&change.path.as_str()));
    changes
}

fn report_value(report: &HardwareReport) -> Value {
    // Serialization can only fail for maps with non-string keys or for
    // non-finite floats, and the report has neither.
    serde_json::to_value(report).expect("HardwareReport always serializes to JSON")
}

/// Reads the cached report. A missing file is `Ok(None)`; a corrupt one is
/// an error naming the file (callers treat it as missing and overwrite it).
pub fn load_cache(state_dir: &Path) -> Result<Option<HardwareReport>, CacheError> {
    let path = cache_path(state_dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CacheError::Read { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| CacheError::Corrupt { path, source })
}

/// Writes the report as pretty JSON, atomically: readers see the old file or
/// the new one, never a torn write. The state directory must exist.
///
/// It does not wait for the disk: the file is a cache of what the control plane was
/// told. A power cut may take the write back (or, on some file systems, leave the new
/// name with no content), and then the next start finds the old report, none, or a
/// corrupt one, which all lead to telling the control plane again — a repeat it
/// applies without harm. Waiting cost two disk syncs at every runner's first start.
pub fn write_cache(state_dir: &Path, report: &HardwareReport) -> Result<(), CacheError> {
    let path = cache_path(state_dir);
    let result = serde_json::to_vec_pretty(report)
        .map_err(io::Error::from)
        .and_then(|mut json| {
            json.push(b'\n');
            write_atomically(state_dir, &path, &json)
        });
    result.map_err(|source| CacheError::Write { path, source })
}

fn write_atomically(dir: &Path, path: &Path, contents: &[u8]) -> io::Result<()> {
    let temp = temp_path(dir);
    let result =
        write_new(&temp, contents).and_then(|()| crate::platform::replace_file(&temp, path));
    if result.is_err() {
        // Best effort: a leftover temp file is harmless, the error that
        // matters is the one already in `result`.
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = crate::platform::open_options(CACHE_FILE_ACCESS)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    // The mode given to open is filtered by the process umask; set it exactly.
    crate::platform::set_access(path, CACHE_FILE_ACCESS)?;
    file.write_all(contents)
}

/// Unique per process and per call, so concurrent writers never share a
/// temp file.
fn temp_path(dir: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{CACHE_FILE_NAME}.{}.{n}.tmp", std::process::id()))
}
