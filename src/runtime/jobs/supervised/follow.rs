//! The runner's reading of one supervised job: the supervisor says how far the job's
//! logs got, and the runner reads them from where it is, in chunks of at most
//! `CHUNK_BYTES`, each one an `Output` report paid for with a credit of its stream
//! (`output.rs`). Memory stays bounded however slow the API is, as before; what is new
//! is that the job no longer waits for the API at all: its output is on disk, and the
//! runner catches up from the log.
//!
//! When the connection ends, the supervisor is gone: `exit.json` says how the job ended
//! and how far each log got, and the rest is read and reported before `Exited`. No
//! record means the supervisor died with the job unfinished: what is left of the job is
//! killed, the logs are reported as far as they go, and the end is unknown (the core
//! reports the job lost).
//!
//! Where reporting starts is where the outbox stopped (`OutputProgress`), so a reattached
//! job's output goes on at the byte after the last one reported: none twice, none
//! skipped, whatever the API does with offsets.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Mutex;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

use crate::protocol::{ExitStatus, JobRef, OutputStream};
use crate::runtime::orphans::{self, Leader};

use super::super::executor::{JobEnd, OutputProgress, ProcessUsage};
use super::super::output::{CHUNK_BYTES, OutputSink, StreamSink};
use super::supervisor_lives;
use super::wire::{
    ExitRecord, Folder, LogId, RunnerAsks, Sizes, StartedRecord, StreamSize, SupervisorSays, line,
    read_record,
};

/// A job's log, opened for reading only if it is the file the runner made.
pub(super) enum Log {
    Open(File),
    /// Gone, replaced, or unreadable: nothing more of this stream can be reported.
    Missing,
}

impl Log {
    pub(super) fn open(id: &LogId) -> Self {
        let path = id.path.path();
        let opened = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match opened.map(|file| (id.matches(&file), file)) {
            Ok((Ok(true), file)) => Self::Open(file),
            Ok((Ok(false), _)) => {
                warn!(path = %path.display(), "the job's log is not the file the runner made (replaced?); its output is not reported");
                Self::Missing
            }
            Ok((Err(error), _)) | Err(error) => {
                warn!(path = %path.display(), %error, "cannot open the job's log; its output is not reported");
                Self::Missing
            }
        }
    }
}

/// One stream: where its log is, how far it was reported, where it reports to.
struct Stream {
    log: Log,
    sink: StreamSink,
    reported: u64,
    cut_reported: bool,
    limit: u64,
}

impl Stream {
    /// Report the log up to `size.logged`, then its cut if there is one.
    async fn catch_up(&mut self, size: StreamSize, buf: &mut [u8]) {
        let target = size.logged.min(self.limit);
        while self.reported < target {
            let file = match &self.log {
                Log::Open(file) => file,
                Log::Missing => return,
            };
            // `min` keeps it within the buffer's length.
            let want = (target - self.reported).min(buf.len() as u64) as usize;
            // A plain read of bytes the supervisor wrote just now, from the page cache:
            // no need for a blocking thread.
            let n = match file.read_at(&mut buf[..want], self.reported) {
                Ok(0) => {
                    warn!(
                        "the job's log is shorter than its supervisor says; its output stops here"
                    );
                    self.log = Log::Missing;
                    return;
                }
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    warn!(%error, "cannot read the job's log; its output stops here");
                    self.log = Log::Missing;
                    return;
                }
            };
            self.sink.output(self.reported, &buf[..n]).await;
            self.reported += n as u64;
        }
        if let Some(cut) = size.cut_at()
            && !self.cut_reported
            && self.reported >= cut
        {
            self.cut_reported = true;
            self.sink.truncated(cut);
        }
    }

    /// How far the log goes now (for a supervisor that died without saying).
    fn on_disk(&self) -> StreamSize {
        let len = match &self.log {
            Log::Open(file) => file.metadata().map_or(self.reported, |m| m.len()),
            Log::Missing => self.reported,
        };
        StreamSize {
            logged: len,
            seen: len,
        }
    }
}

pub(super) struct Follow {
    job: JobRef,
    folder: Folder,
    streams: [Stream; 2],
    /// Requests for the supervisor; the writer of the current connection holds them.
    asks: Arc<Mutex<UnboundedReceiver<RunnerAsks>>>,
}

impl Follow {
    pub(super) fn new(
        job: JobRef,
        folder: Folder,
        logs: [Log; 2],
        output: OutputSink,
        progress: OutputProgress,
        limit: u64,
        asks: UnboundedReceiver<RunnerAsks>,
    ) -> Self {
        let [stdout, stderr] = logs;
        let stream = |log, kind, progress: super::super::executor::StreamProgress| Stream {
            log,
            sink: output.stream(kind),
            reported: progress.sent,
            cut_reported: progress.cut,
            limit,
        };
        Self {
            job,
            folder,
            streams: [
                stream(stdout, OutputStream::Stdout, progress.stdout),
                stream(stderr, OutputStream::Stderr, progress.stderr),
            ],
            asks: Arc::new(Mutex::new(asks)),
        }
    }

    /// Follow the job to its end. `connected`: a connection already open (a reattach
    /// read its hello); otherwise one is opened, unless the supervisor is gone.
    pub(super) async fn run(mut self, mut connected: Option<UnixStream>) -> JobEnd {
        let mut buf = vec![0u8; CHUNK_BYTES].into_boxed_slice();
        if connected.is_none() {
            // A supervisor binds its socket only after its answer, while the runner
            // records and sends `job_started`: a connection tried now would nearly
            // always find none, and its attempt and lock test would come before that
            // frame on a job start's path. One turn of the loop lets it go first.
            tokio::task::yield_now().await;
        }
        loop {
            let stream = match connected.take() {
                Some(stream) => Some(stream),
                None => self.connect().await,
            };
            let Some(stream) = stream else {
                break;
            };
            self.read_updates(stream, &mut buf).await;
            // The connection ended. The supervisor lets go of its lock only by exiting;
            // while it holds it, this was only the connection.
            if !supervisor_lives(&self.folder) {
                break;
            }
        }
        self.finish(&mut buf).await
    }

    /// A connection to the supervisor, or `None` once it is gone.
    async fn connect(&self) -> Option<UnixStream> {
        let mut waited = Duration::ZERO;
        let mut said = false;
        loop {
            if let Ok(stream) = UnixStream::connect(self.folder.socket()).await {
                return Some(stream);
            }
            if !supervisor_lives(&self.folder) {
                return None;
            }
            let pause = connect_pause(waited);
            if waited >= Duration::from_secs(5) && !said {
                said = true;
                warn!(job = %self.job.job_id, folder = %self.folder.path().display(), "the job's supervisor lives but does not answer on its socket; still trying");
            }
            tokio::time::sleep(pause).await;
            waited += pause;
        }
    }

    /// Report the logs as the supervisor says they grow, until the connection ends.
    async fn read_updates(&mut self, stream: UnixStream, buf: &mut [u8]) {
        let (read, write) = stream.into_split();
        let writer = tokio::spawn(forward(write, self.asks.clone()));
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(text)) = lines.next_line().await {
            match serde_json::from_str::<SupervisorSays>(&text) {
                Ok(SupervisorSays::Sizes(sizes)) => self.catch_up(sizes, buf).await,
                Ok(SupervisorSays::Hello { .. }) => {}
                Err(error) => {
                    warn!(job = %self.job.job_id, %error, "the supervisor said something this runner does not read");
                }
            }
        }
        writer.abort();
    }

    async fn catch_up(&mut self, sizes: Sizes, buf: &mut [u8]) {
        self.streams[0].catch_up(sizes.stdout, buf).await;
        self.streams[1].catch_up(sizes.stderr, buf).await;
    }

    /// The supervisor is gone: the rest of the output, then how the job ended.
    async fn finish(mut self, buf: &mut [u8]) -> JobEnd {
        match read_record::<ExitRecord>(&self.folder.exit()) {
            Ok(Some(record)) => {
                let sizes = Sizes {
                    stdout: record.stdout,
                    stderr: record.stderr,
                };
                self.catch_up(sizes, buf).await;
                JobEnd {
                    status: record.status,
                    duration_ms: record.duration_ms,
                    stdout_bytes: record.stdout.seen,
                    stderr_bytes: record.stderr.seen,
                    usage: Some(ProcessUsage {
                        user_us: record.usage.user_us,
                        system_us: record.usage.system_us,
                        max_rss_kib: record.usage.max_rss_kib,
                    }),
                    cancel: record.cancel,
                }
            }
            found => {
                if let Err(error) = found {
                    warn!(job = %self.job.job_id, %error, "the job's exit record cannot be read");
                }
                warn!(job = %self.job.job_id, attempt = self.job.attempt, "the job's supervisor died before the job ended; ending what is left of the job");
                let started = read_record::<StartedRecord>(&self.folder.started())
                    .ok()
                    .flatten();
                orphans::end_leftovers(
                    &self.job,
                    started.map(|s| Leader {
                        pid: s.pid,
                        start_ticks: s.start_ticks,
                    }),
                );
                let sizes = Sizes {
                    stdout: self.streams[0].on_disk(),
                    stderr: self.streams[1].on_disk(),
                };
                self.catch_up(sizes, buf).await;
                info!(job = %self.job.job_id, "what the job's logs held was reported");
                JobEnd {
                    status: ExitStatus::Unknown,
                    duration_ms: 0,
                    stdout_bytes: sizes.stdout.seen,
                    stderr_bytes: sizes.stderr.seen,
                    usage: None,
                    cancel: None,
                }
            }
        }
    }
}

/// How long to wait before the next connection attempt, `waited` into the wait. The
/// first milliseconds are the common case and are tried often: a new supervisor binds
/// its socket a moment after it answers the plan, and one whose job ended closes the
/// connection a moment before its exit lets go of the lock. At 10 ms a try, those two
/// moments cost a short job 20 ms, and one slot ran 31 jobs a second (bench `jobs`).
fn connect_pause(waited: Duration) -> Duration {
    if waited < Duration::from_millis(50) {
        Duration::from_millis(1)
    } else if waited < Duration::from_secs(1) {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(500)
    }
}

/// Send the runner's requests on the connection until it ends (the next connection's
/// writer takes the queue over).
async fn forward(mut write: OwnedWriteHalf, asks: Arc<Mutex<UnboundedReceiver<RunnerAsks>>>) {
    let mut asks = asks.lock().await;
    while let Some(ask) = asks.recv().await {
        if write.write_all(&line(&ask)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_attempts_are_frequent_at_first_then_back_off() {
        assert_eq!(connect_pause(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(
            connect_pause(Duration::from_millis(49)),
            Duration::from_millis(1)
        );
        assert_eq!(
            connect_pause(Duration::from_millis(50)),
            Duration::from_millis(10)
        );
        assert_eq!(
            connect_pause(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
    }
}
