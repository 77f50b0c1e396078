//! What the runner measures of a running job beyond what its supervisor records,
//! written into the event that ends it before it is dispatched, so the core puts it
//! in `job_finished` and the trace holds the figures it got:
//!
//! - its wall time (`wall_ms`): from the batch that accepted it (`job_accepted`
//!   persisted) to its end, on this process's monotonic clock. A job reattached after
//!   a restart counts from its process's start (`JobFound`'s `elapsed_ms`: the time it
//!   spent being prepared before is not known any more); one that ended, or was
//!   uploading, while no runner was there gets none;
//! - the most GPU memory its processes held (`gpu_memory_peak_bytes`), sampled through
//!   `nvidia-smi` every `GPU_SAMPLE_EVERY` from its start, one query for all running
//!   jobs (`accounting::gpu::GpuWatch`). The
//!   runner samples, not the supervisor: `nvidia-smi` run by the supervisor would be a
//!   child of the job's subreaper, its CPU time counted in the job's rusage. So only
//!   while a runner watches: a job reattached after a restart is not sampled, and no
//!   figure is given where no memory could be attributed (no tool, no GPU, a driver
//!   that does not say).
//!
//! Owns: when each running job was accepted, and its GPU sampler. Must not: decide
//! anything about a job; it only measures.

use std::collections::HashMap;

use tokio::time::{Duration, Instant};

use crate::core::{Durable, Effect, Event, FoundJob};
use crate::protocol::{JobRef, RunnerEvent};
use crate::runtime::accounting::gpu::GpuWatch;

/// How often a running job's GPU memory is sampled (the first sample is taken at its
/// start): `nvidia-smi` takes tens of milliseconds of CPU.
const GPU_SAMPLE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct JobGauges {
    accepted: HashMap<JobRef, Instant>,
    gpu: GpuWatch<JobRef>,
}

impl Default for JobGauges {
    fn default() -> Self {
        Self {
            accepted: HashMap::new(),
            gpu: GpuWatch::new(GPU_SAMPLE_EVERY),
        }
    }
}

impl JobGauges {
    /// Write what was measured into the event that may end the job: `JobExited` (the
    /// end, unless outputs are uploaded next; its GPU sampling stops here) and
    /// `UploadsDone` (the end after them: the wall time only).
    pub fn stamp(&mut self, event: &mut Event) {
        match event {
            Event::JobExited { job, usage, .. } => {
                usage.wall_ms = self.elapsed_ms(job);
                usage.gpu_memory_peak_bytes = self.gpu.unwatch(job);
            }
            Event::UploadsDone { job, wall_ms, .. } => *wall_ms = self.elapsed_ms(job),
            _ => {}
        }
    }

    /// Jobs accepted, started, reattached and finished by what `event` made the core
    /// do.
    pub fn observe(&mut self, event: &Event, effects: &[Effect]) {
        if let Event::JobStarted { job, pid } = event
            && self.accepted.contains_key(job)
        {
            self.gpu.watch(job.clone(), *pid);
        }
        if let Event::JobFound {
            job,
            found: FoundJob::Running { elapsed_ms, .. },
        } = event
        {
            let started = Instant::now().checked_sub(Duration::from_millis(*elapsed_ms));
            if let Some(started) = started {
                self.accepted.entry(job.clone()).or_insert(started);
            }
        }
        for effect in effects {
            let Effect::Persist(Durable::OutboxAppend { event, .. }) = effect else {
                continue;
            };
            match &**event {
                RunnerEvent::JobAccepted { job } => {
                    self.accepted.insert(job.clone(), Instant::now());
                }
                RunnerEvent::JobFinished { job, .. } => {
                    self.accepted.remove(job);
                    self.gpu.unwatch(job);
                }
                _ => {}
            }
        }
    }

    fn elapsed_ms(&self, job: &JobRef) -> Option<u64> {
        let accepted = self.accepted.get(job)?;
        u64::try_from(accepted.elapsed().as_millis()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ExitStatus, JobUsage};

    fn job() -> JobRef {
        JobRef {
            job_id: "j-1".into(),
            attempt: 1,
        }
    }

    fn appended(event: RunnerEvent) -> Effect {
        Effect::Persist(Durable::OutboxAppend {
            index: 1,
            event: event.into(),
        })
    }

    fn exited() -> Event {
        Event::JobExited {
            job: job(),
            status: ExitStatus::Exited { code: 0 },
            duration_ms: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            cancel: None,
            usage: JobUsage::default(),
        }
    }

    fn wall_of(event: &Event) -> Option<u64> {
        match event {
            Event::JobExited { usage, .. } => usage.wall_ms,
            Event::UploadsDone { wall_ms, .. } => *wall_ms,
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn from_acceptance_to_the_end_and_forgotten_after() {
        let mut clock = JobGauges::default();
        let mut unknown = exited();
        clock.stamp(&mut unknown);
        assert_eq!(wall_of(&unknown), None, "never accepted here");

        clock.observe(
            &exited(),
            &[appended(RunnerEvent::JobAccepted { job: job() })],
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        let mut end = exited();
        clock.stamp(&mut end);
        assert_eq!(wall_of(&end), Some(1500));
        tokio::time::advance(Duration::from_millis(500)).await;
        let mut uploads = Event::UploadsDone {
            job: job(),
            missing: Vec::new(),
            wall_ms: None,
        };
        clock.stamp(&mut uploads);
        assert_eq!(wall_of(&uploads), Some(2000));

        let finished: RunnerEvent = serde_json::from_value(serde_json::json!({
            "kind": "job_finished",
            "job": {"job_id": "j-1", "attempt": 1},
            "outcome": "succeeded",
            "status": {"how": "exited", "code": 0},
            "duration_ms": 1500,
            "stdout_bytes": 0,
            "stderr_bytes": 0,
        }))
        .expect("a job_finished");
        clock.observe(&exited(), &[appended(finished)]);
        let mut after = exited();
        clock.stamp(&mut after);
        assert_eq!(wall_of(&after), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reattached_job_counts_from_its_process_start() {
        let mut clock = JobGauges::default();
        tokio::time::advance(Duration::from_secs(60)).await;
        let found = Event::JobFound {
            job: job(),
            found: FoundJob::Running {
                elapsed_ms: 40_000,
                cancel: None,
            },
        };
        clock.observe(&found, &[]);
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut end = exited();
        clock.stamp(&mut end);
        assert_eq!(wall_of(&end), Some(42_000));
    }
}
