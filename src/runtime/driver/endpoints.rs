//! Jobs' local endpoints (`job.sock`, `FYN_JOB_SOCKET`): one served for each job this
//! process starts, from just before its process starts, and for each job it reattached
//! (at the same path, with the view the job had: its spec's pairs and its own writes,
//! from the store), until its end is taken (closed first, so the last progress it
//! holds reaches the loop before the job's end). What a
//! job says comes to the loop as `EndpointReport`s and goes to the core as events; a
//! key-value write is confirmed to the job once the batch that records it is durable.
//!
//! Owns: the endpoints and their reports' channel, and the writes waiting for their
//! batch. Must not: decide anything about a report (the core's `job_reports` rows).
//! Unix only: on Windows a job has no endpoint (and no `FYN_JOB_SOCKET`).

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use tokio::sync::mpsc;
use tracing::warn;

use crate::core::Event;
use crate::platform::Account;
use crate::protocol::JobRef;
use crate::runtime::job_endpoint::{
    EndpointConfig, EndpointReport, JobEndpoint, JobSays, KvView, Taken,
};
use crate::runtime::jobs::BoundSocket;

/// Reports waiting for the loop: the endpoints wait (and so do their jobs) past this.
const REPORTS_QUEUED: usize = 256;

pub(super) struct Endpoints {
    open: HashMap<JobRef, JobEndpoint>,
    reports_tx: mpsc::Sender<EndpointReport>,
    /// Reports of jobs whose `job_started` is not dispatched yet (their launch is in
    /// flight): the API hears of a job's progress only after it hears it started.
    held: Vec<EndpointReport>,
    /// Held reports whose job's start is dispatched now, for the loop, in order.
    released: VecDeque<EndpointReport>,
}

impl Endpoints {
    pub fn new() -> (Self, mpsc::Receiver<EndpointReport>) {
        let (reports_tx, reports) = mpsc::channel(REPORTS_QUEUED);
        let endpoints = Self {
            open: HashMap::new(),
            reports_tx,
            held: Vec::new(),
            released: VecDeque::new(),
        };
        (endpoints, reports)
    }

    /// Serve the job's endpoint in its folder (which exists), on `bound` when the
    /// folder came with its socket. A failure is logged: the job runs without one (its
    /// `fyn-runner job` calls say there is none).
    pub async fn open(
        &mut self,
        job: JobRef,
        job_dir: &Path,
        account: Option<Account>,
        kv: KvView,
        bound: Option<BoundSocket>,
    ) {
        let mut config = EndpointConfig::new(job.clone(), job_dir, kv);
        config.account = account;
        match JobEndpoint::bind(config, self.reports_tx.clone(), bound).await {
            Ok(endpoint) => {
                self.open.insert(job, endpoint);
            }
            Err(error) => {
                warn!(job = %job.job_id, attempt = job.attempt, %error, "the job runs without its endpoint");
            }
        }
    }

    /// Keep a report until its job's start is dispatched (`release`).
    pub fn hold(&mut self, report: EndpointReport) {
        self.held.push(report);
    }

    /// The job's start is dispatched: what it said meanwhile goes to the loop next.
    pub fn release(&mut self, job: &JobRef) {
        let (mine, others) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|report| &report.job == job);
        self.held = others;
        self.released.extend::<Vec<_>>(mine);
    }

    /// The next released report, for the loop.
    pub fn next_released(&mut self) -> Option<EndpointReport> {
        self.released.pop_front()
    }

    pub fn is_open(&self, job: &JobRef) -> bool {
        self.open.contains_key(job)
    }

    /// The job's endpoint, to close (`JobEndpoint::close` queues its pending progress
    /// first; the caller takes reports meanwhile, since a write in flight waits for
    /// its confirmation before the endpoint can stop).
    pub fn take(&mut self, job: &JobRef) -> Option<JobEndpoint> {
        self.open.remove(job)
    }

    /// At exit: every endpoint stops (the next run serves them again for the jobs it
    /// reattaches).
    pub fn close_all(&mut self) {
        self.open.clear();
    }
}

impl super::Driver {
    /// What a job said through its endpoint, as the core's event; a write waits for
    /// the batch it makes.
    pub(super) fn accept_endpoint(
        &mut self,
        report: crate::runtime::job_endpoint::EndpointReport,
    ) -> Option<Event> {
        if self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.is_launching(&report.job))
        {
            self.endpoints.hold(report);
            return None;
        }
        let (event, taken) = into_event(report);
        if let Some(taken) = taken
            && let Some(earlier) = self.kv_waiting.replace(taken)
        {
            earlier.refuse("the runner could not record the write");
        }
        Some(event)
    }
}

/// The core's event for a report, and the confirmation a write waits for.
pub(super) fn into_event(report: EndpointReport) -> (Event, Option<Taken>) {
    let EndpointReport { job, says, taken } = report;
    let event = match says {
        JobSays::Progress { fraction, message } => Event::JobProgressed {
            job,
            fraction,
            message,
        },
        JobSays::KvPut { key, value } => Event::JobKvWritten { job, key, value },
    };
    (event, taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(job: &JobRef, key: &str) -> EndpointReport {
        EndpointReport {
            job: job.clone(),
            says: JobSays::KvPut {
                key: key.to_owned(),
                value: String::new(),
            },
            taken: None,
        }
    }

    fn key(report: EndpointReport) -> String {
        match report.says {
            JobSays::KvPut { key, .. } => key,
            JobSays::Progress { .. } => String::new(),
        }
    }

    /// What a job said while its launch was in flight waits for its start, in the
    /// order said; another job's waits for its own.
    #[tokio::test]
    async fn held_reports_go_to_the_loop_in_order_once_their_job_started() {
        let (mut endpoints, _reports) = Endpoints::new();
        let job = |id: &str| JobRef {
            job_id: id.to_owned(),
            attempt: 1,
        };
        let (a, b) = (job("a"), job("b"));
        endpoints.hold(said(&a, "a1"));
        endpoints.hold(said(&b, "b1"));
        endpoints.hold(said(&a, "a2"));
        assert!(
            endpoints.next_released().is_none(),
            "nothing before a start"
        );
        endpoints.release(&a);
        let released: Vec<String> =
            std::iter::from_fn(|| endpoints.next_released().map(key)).collect();
        assert_eq!(released, ["a1", "a2"]);
        endpoints.release(&b);
        assert_eq!(endpoints.next_released().map(key).as_deref(), Some("b1"));
        assert!(endpoints.next_released().is_none());
    }
}
