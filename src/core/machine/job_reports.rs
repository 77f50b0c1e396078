//! A job's reports (its start, output, progress, key-value writes, end) turned into
//! the outbox events the API is sent. Must not: decide a job's state; the runner's job
//! table (`crate::core::runner`) does.

use crate::core::effect::Effects;
use crate::core::event::Event;
use crate::core::runner::{JobFinish, Runner};
use crate::protocol::JobUsage;

impl Runner {
    /// Job-process reports: persisted as outbox events, sent when the session allows.
    /// A report about a job we do not run (or a stale attempt) is logged and dropped.
    pub(super) fn record_job_event(&mut self, event: &Event, fx: &mut Effects) {
        use crate::protocol::RunnerEvent;
        let Some((job, what)) = job_of(event) else {
            return;
        };
        if !self.check_job(fx, job, what) {
            return;
        }
        match event {
            Event::JobStarted { pid, .. } => self.emit(
                fx,
                RunnerEvent::JobStarted {
                    job: job.clone(),
                    pid: *pid,
                },
            ),
            Event::JobOutput {
                stream,
                offset,
                data,
                ..
            } => {
                let data = base64_encode(data);
                self.emit(
                    fx,
                    RunnerEvent::JobOutput {
                        job: job.clone(),
                        stream: *stream,
                        offset: *offset,
                        data,
                    },
                );
            }
            Event::JobProgressed {
                fraction, message, ..
            } => self.emit(
                fx,
                RunnerEvent::JobProgress {
                    job: job.clone(),
                    fraction: *fraction,
                    message: message.clone(),
                },
            ),
            Event::JobKvWritten { key, value, .. } => self.emit(
                fx,
                RunnerEvent::JobKvPut {
                    job: job.clone(),
                    key: key.clone(),
                    value: value.clone(),
                },
            ),
            Event::JobOutputTruncated { stream, offset, .. } => {
                self.emit(
                    fx,
                    RunnerEvent::JobOutputTruncated {
                        job: job.clone(),
                        stream: *stream,
                        offset: *offset,
                    },
                );
            }
            Event::JobExited {
                status,
                duration_ms,
                stdout_bytes,
                stderr_bytes,
                cancel,
                usage,
                ..
            } => {
                let end = JobFinish {
                    job,
                    status: *status,
                    duration_ms: *duration_ms,
                    output_bytes: (*stdout_bytes, *stderr_bytes),
                    spawn_error: None,
                    recorded_cancel: *cancel,
                    usage: *usage,
                };
                // With outputs, the job ends once they are uploaded.
                if !self.begin_uploads(fx, &end) {
                    self.job_finished(fx, end);
                }
            }
            Event::JobSpawnFailed { error, .. } => {
                let end = JobFinish {
                    job,
                    status: crate::protocol::ExitStatus::Unknown,
                    duration_ms: 0,
                    output_bytes: (0, 0),
                    spawn_error: Some(error),
                    recorded_cancel: None,
                    usage: JobUsage::default(),
                };
                self.job_finished(fx, end);
            }
            _ => {}
        }
    }
}

/// The job a job-process event is about, and its name for the log.
fn job_of(event: &Event) -> Option<(&crate::protocol::JobRef, &'static str)> {
    match event {
        Event::JobStarted { job, .. } => Some((job, "job_started")),
        Event::JobOutput { job, .. } => Some((job, "job_output")),
        Event::JobOutputTruncated { job, .. } => Some((job, "job_output_truncated")),
        Event::JobExited { job, .. } => Some((job, "job_exited")),
        Event::JobSpawnFailed { job, .. } => Some((job, "job_spawn_failed")),
        Event::JobProgressed { job, .. } => Some((job, "job_progress")),
        Event::JobKvWritten { job, .. } => Some((job, "job_kv_put")),
        _ => None,
    }
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}
