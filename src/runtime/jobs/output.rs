/*!
A job's output on its way to the reports, in bounded memory.

Each stream has one reader with one fixed buffer of `CHUNK_BYTES`; what it reads
becomes an `Output` report for the driver. The reports channel is unbounded (the
driver owns it), so the bound is kept with credits: every `Output` report carries one
of its stream's `CREDITS_PER_STREAM` credits inside its `OutputChunk`, and the reader
takes a credit before it sends. When all are out, the reader waits until the driver
catches up. So at most `CREDITS_PER_STREAM * CHUNK_BYTES` (1 MiB) per stream, plus the
read buffer, is held between a job and the driver, whatever the job prints. Once the
driver converts a report into an event, the bytes are the driver's (and the credit is
back).

Where a reader reads is the platform's. On Unix it reads the job's log, which the
job's supervisor writes (`supervised/follow.rs`): a slow API holds back the reports,
never the job, whose output waits on disk. On Windows it reads the job's pipe and also
writes the log (`pump`, below): there a reader out of credits stops reading, the pipe
fills, and the job blocks in `write` until the driver catches up.

Past the output limit nothing is logged or reported, and nothing waits for credits:
the job never blocks on a truncated stream.
*/

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::protocol::{JobRef, OutputStream};

use super::report::JobReport;

/// The largest `Output` report: the size of a reader's buffer.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// How many `Output` reports of one stream may wait unconverted before its reader stops.
pub const CREDITS_PER_STREAM: usize = 16;

/// The bytes of one `Output` report and the credit that lets its reader go on. The
/// credit returns when the chunk is turned into bytes (`into_bytes`) or dropped.
pub struct OutputChunk {
    bytes: Vec<u8>,
    _credit: Option<OwnedSemaphorePermit>,
}

impl OutputChunk {
    fn with_credit(bytes: Vec<u8>, credit: OwnedSemaphorePermit) -> Self {
        Self {
            bytes,
            _credit: Some(credit),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, giving the credit back.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A chunk made from plain bytes holds no credit (for tests and replays).
impl From<Vec<u8>> for OutputChunk {
    fn from(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            _credit: None,
        }
    }
}

impl std::ops::Deref for OutputChunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl PartialEq for OutputChunk {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

/// Chunks are up to 64 KiB; a log line with all of them would drown the rest.
impl std::fmt::Debug for OutputChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutputChunk({} bytes)", self.bytes.len())
    }
}

/// Where one job's output reports go. An executor gets one with each `SpawnRequest`
/// and makes a `StreamSink` for each stream it reads.
#[derive(Clone)]
pub struct OutputSink {
    job: JobRef,
    reports: UnboundedSender<JobReport>,
}

impl OutputSink {
    pub fn new(job: JobRef, reports: UnboundedSender<JobReport>) -> Self {
        Self { job, reports }
    }

    pub fn job(&self) -> &JobRef {
        &self.job
    }

    /// The sink of one stream, with its own credits, so a flood on one stream never
    /// holds back the other.
    pub fn stream(&self, stream: OutputStream) -> StreamSink {
        StreamSink {
            job: self.job.clone(),
            stream,
            reports: self.reports.clone(),
            credits: Arc::new(Semaphore::new(CREDITS_PER_STREAM)),
            listening: true,
        }
    }
}

/// One stream's reports: `Output` chunks paid for with credits, and `Truncated`.
pub struct StreamSink {
    job: JobRef,
    stream: OutputStream,
    reports: UnboundedSender<JobReport>,
    credits: Arc<Semaphore>,
    /// False once the driver's receiver is gone: the output is still logged and
    /// drained, but nobody waits for it.
    listening: bool,
}

impl StreamSink {
    /// Report `data` as the stream's bytes from `offset`; waits for a credit first.
    pub async fn output(&mut self, offset: u64, data: &[u8]) {
        if !self.listening {
            return;
        }
        // The semaphore is never closed, so this only waits; a failure would mean it
        // was, and then there is nobody to wait for.
        let Ok(credit) = self.credits.clone().acquire_owned().await else {
            self.listening = false;
            return;
        };
        let report = JobReport::Output {
            job: self.job.clone(),
            stream: self.stream,
            offset,
            data: OutputChunk::with_credit(data.to_vec(), credit),
        };
        // A closed channel hands the report back and drops it, credit included, so a
        // gone driver never leaves the reader waiting.
        if self.reports.send(report).is_err() {
            self.listening = false;
        }
    }

    pub fn truncated(&mut self, offset: u64) {
        if !self.listening {
            return;
        }
        let report = JobReport::Truncated {
            job: self.job.clone(),
            stream: self.stream,
            offset,
        };
        if self.reports.send(report).is_err() {
            self.listening = false;
        }
    }
}

#[cfg(windows)]
pub(super) use in_pipes::{LogFile, pump};

/// Windows: a job's pipe to its log and its reports.
#[cfg(windows)]
mod in_pipes {
    use std::path::PathBuf;
    use std::time::Duration;

    use tokio::fs::File;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;
    use tokio::time::Instant;
    use tracing::warn;

    use super::{CHUNK_BYTES, StreamSink};

    /// A stream's log file. A write error (disk full) stops the logging, not the job: the
    /// stream is still reported and drained.
    pub(in super::super) struct LogFile {
        file: Option<File>,
        path: PathBuf,
    }

    impl LogFile {
        pub(in super::super) fn new(file: std::fs::File, path: PathBuf) -> Self {
            Self {
                file: Some(File::from_std(file)),
                path,
            }
        }

        async fn write(&mut self, data: &[u8]) {
            let Some(file) = &mut self.file else {
                return;
            };
            if let Err(error) = file.write_all(data).await {
                warn!(path = %self.path.display(), %error, "cannot write the job's log; it stops here");
                self.file = None;
            }
        }

        /// Wait until every write reached the file, so it is complete when `Exited` is sent.
        async fn finish(&mut self) {
            if let Some(file) = &mut self.file
                && let Err(error) = file.flush().await
            {
                warn!(path = %self.path.display(), %error, "cannot finish the job's log");
            }
        }
    }

    /// How long a stream may still take, once the job's processes are dead, before its
    /// reader gives up: what is left in a pipe then is read at once, so only a process
    /// that escaped the job's process group (`setsid`) can hold it open longer. Time spent
    /// waiting for the driver's credits does not count; a slow driver loses nothing.
    pub(in super::super) const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

    /// Copy one stream to its log and its reports until end of file: the first `limit`
    /// bytes are logged and reported, then one `Truncated`, then the rest is only counted.
    /// `ended` turns true when the job's processes are dead; from then on the reader
    /// drains within `DRAIN_AFTER_EXIT`. Returns how many bytes the job wrote to the stream.
    pub(in super::super) async fn pump<R: AsyncRead + Unpin>(
        mut reader: R,
        mut log: LogFile,
        mut sink: StreamSink,
        limit: u64,
        mut ended: watch::Receiver<bool>,
    ) -> u64 {
        let mut buf = vec![0u8; CHUNK_BYTES].into_boxed_slice();
        let mut seen: u64 = 0;
        let mut truncated = false;
        let mut drain_left: Option<Duration> = None;
        loop {
            if drain_left.is_some_and(|left| left.is_zero()) {
                warn!(job = %sink.job.job_id, stream = ?sink.stream, "output still open after the job's processes were killed: a process escaped its group; reading stops here");
                break;
            }
            let began = Instant::now();
            let read = match drain_left {
                None => tokio::select! {
                    biased;
                    read = reader.read(&mut buf) => read,
                    // A dropped sender also means the job is over.
                    _ = ended.wait_for(|ended| *ended) => {
                        drain_left = Some(DRAIN_AFTER_EXIT);
                        continue;
                    }
                },
                Some(left) => match tokio::time::timeout(left, reader.read(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => {
                        drain_left = Some(Duration::ZERO);
                        continue;
                    }
                },
            };
            let n = match read {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    warn!(job = %sink.job.job_id, stream = ?sink.stream, %error, "cannot read the job's output; treating it as ended");
                    break;
                }
            };
            let offset = seen;
            seen += n as u64;
            if truncated {
                charge(&mut drain_left, began);
                continue;
            }
            // `min(n)` keeps the value within usize.
            let keep = limit.saturating_sub(offset).min(n as u64) as usize;
            let data = &buf[..keep];
            if keep > 0 {
                log.write(data).await;
            }
            charge(&mut drain_left, began);
            if keep > 0 {
                sink.output(offset, data).await;
            }
            if keep < n {
                truncated = true;
                sink.truncated(offset + keep as u64);
            }
        }
        log.finish().await;
        seen
    }

    /// Take the time since `began` from the drain budget, if draining.
    fn charge(drain_left: &mut Option<Duration>, began: Instant) {
        if let Some(left) = drain_left {
            *left = left.saturating_sub(began.elapsed());
        }
    }
}
