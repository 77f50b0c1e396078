//! Samples: what is read from both processes every `FYN_SOAK_SAMPLE_SECS` (memory,
//! the runner's open files, its store on disk and its outbox, the jobs so far), and
//! the line each is printed as.

use std::path::Path;
use std::time::Duration;

pub(crate) const MIB: f64 = 1024.0;

#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Seconds since the load began.
    pub(crate) t: f64,
    pub(crate) runner_rss: u64,
    pub(crate) runner_anon: u64,
    pub(crate) runner_hwm: u64,
    pub(crate) runner_fds: u64,
    pub(crate) server_rss: u64,
    /// `runner.db` and `runner.db-wal`, bytes.
    pub(crate) store_bytes: u64,
    pub(crate) outbox: Option<u64>,
    pub(crate) submitted: u64,
    pub(crate) finished: u64,
    pub(crate) cuts: u64,
    pub(crate) restarts: u64,
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

pub(crate) fn store_bytes(state: &Path) -> u64 {
    file_len(&state.join("runner.db")) + file_len(&state.join("runner.db-wal"))
}

/// Rows in the runner's outbox, read through a read-only connection of our own,
/// opened and closed each time so it never holds the WAL back.
pub(crate) fn outbox_rows(state: &Path) -> Option<u64> {
    use rusqlite::OpenFlags;
    let db = rusqlite::Connection::open_with_flags(
        state.join("runner.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    db.busy_timeout(Duration::from_secs(2)).ok()?;
    db.query_row("SELECT count(*) FROM outbox", [], |row| {
        row.get::<_, i64>(0)
    })
    .ok()
    .and_then(|n| u64::try_from(n).ok())
}

pub(crate) fn print_sample_header() {
    let names = [
        "t (s)",
        "rss MiB",
        "anon MiB",
        "hwm MiB",
        "fds",
        "server MiB",
        "store KiB",
        "outbox",
        "submitted",
        "finished",
        "cuts",
        "rst",
    ];
    let line: Vec<String> = names
        .iter()
        .zip(WIDTHS)
        .map(|(name, width)| format!("{name:>width$}"))
        .collect();
    println!("  {}", line.join(" "));
}

impl Sample {
    /// The sample's twelve figures as the terminal and the report show them.
    pub(crate) fn cells(&self) -> [String; 12] {
        [
            format!("{:.0}", self.t),
            format!("{:.2}", self.runner_rss as f64 / MIB),
            format!("{:.2}", self.runner_anon as f64 / MIB),
            format!("{:.2}", self.runner_hwm as f64 / MIB),
            self.runner_fds.to_string(),
            format!("{:.1}", self.server_rss as f64 / MIB),
            format!("{:.0}", self.store_bytes as f64 / 1024.0),
            self.outbox.map_or("?".to_owned(), |n| n.to_string()),
            self.submitted.to_string(),
            self.finished.to_string(),
            self.cuts.to_string(),
            self.restarts.to_string(),
        ]
    }
}

/// Column widths of the terminal's lines.
const WIDTHS: [usize; 12] = [7, 9, 9, 9, 4, 10, 9, 6, 9, 9, 4, 3];

pub(crate) fn print_sample(s: &Sample) {
    let line: Vec<String> = s
        .cells()
        .iter()
        .zip(WIDTHS)
        .map(|(cell, width)| format!("{cell:>width$}"))
        .collect();
    println!("  {}", line.join(" "));
}
