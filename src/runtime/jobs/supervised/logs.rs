//! The supervisor's copy of a job's output: each stream from its pipe to its log, in
//! the runner's chunk size, announced only once written, and on disk before the exit
//! record that counts it. Owns the log files while the job runs; must not block the
//! job (past the output limit it reads and drops).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tracing::warn;

use super::wire::{Sizes, StreamSize};

/// The largest piece of output copied at once.
const CHUNK: usize = crate::runtime::jobs::output::CHUNK_BYTES;

/// Copy one stream from its pipe to its log: the first `limit` bytes, then only count.
/// Every chunk is written before it is announced, so a runner that reads the log up to
/// what it was told finds every byte. Returns how far the stream got.
pub(super) async fn pump(
    pipe: OwnedFd,
    mut log: File,
    limit: u64,
    sizes: Arc<watch::Sender<Sizes>>,
    is_stdout: bool,
) -> StreamSize {
    let mut size = StreamSize::default();
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) else {
        warn!("cannot read the job's output pipe");
        return size;
    };
    let mut buf = vec![0u8; CHUNK].into_boxed_slice();
    let mut logging = true;
    // How much of the log the disk was asked to take so far (see `start_writeback`).
    let mut handed_to_disk = 0u64;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                warn!(%error, "cannot read the job's output; treating it as ended");
                break;
            }
        };
        size.seen += n as u64;
        // `min(n)` keeps the value within usize.
        let keep = if logging {
            limit.saturating_sub(size.logged).min(n as u64) as usize
        } else {
            0
        };
        if keep > 0 {
            // A write to a regular file does not wait for the disk; the page cache
            // takes it. Done inline: the supervisor has nothing else this would delay
            // but the other stream.
            match log.write_all(&buf[..keep]) {
                Ok(()) => {
                    size.logged += keep as u64;
                    if size.logged - handed_to_disk >= WRITEBACK_EVERY {
                        start_writeback(&log, handed_to_disk, size.logged - handed_to_disk);
                        handed_to_disk = size.logged;
                    }
                }
                Err(error) => {
                    warn!(%error, "cannot write the job's log; the rest of this stream is dropped");
                    logging = false;
                }
            }
        }
        sizes.send_modify(|all| {
            if is_stdout {
                all.stdout = size;
            } else {
                all.stderr = size;
            }
        });
    }
    // The exit record that counts this output waits for the disk, so the output must
    // be there first: else a power cut could keep the record of the job's end and take
    // back the log's tail, and the runner would deliver a shorter output as the whole.
    if size.logged > 0
        && let Err(error) = log.sync_data()
    {
        warn!(%error, "cannot sync the job's log to disk");
    }
    size
}

/// How much log is written before the disk is asked to start writing it out.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Ask the disk to start writing `len` bytes of the log from `from`, without waiting:
/// the log is synced when the stream ends (its exit record waits for that), and a
/// large output would otherwise leave all of it to write then, delaying the job's end.
fn start_writeback(log: &File, from: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
            return;
        };
        // SAFETY: sync_file_range reads its integer arguments only; the descriptor is
        // the log's, open for the whole call. Failure only means no early writeback.
        unsafe {
            libc::sync_file_range(log.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (log, from, len);
}
