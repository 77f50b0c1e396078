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

use std::collections::HashMap;
use std::path::Path;

use tokio::sync::mpsc;
use tracing::warn;

use crate::core::Event;
use crate::platform::Account;
use crate::protocol::JobRef;
use crate::runtime::job_endpoint::{
    EndpointConfig, EndpointReport, JobEndpoint, JobSays, KvView, Taken,
};

/// Reports waiting for the loop: the endpoints wait (and so do their jobs) past this.
const REPORTS_QUEUED: usize = 256;

pub(super) struct Endpoints {
    open: HashMap<JobRef, JobEndpoint>,
    reports_tx: mpsc::Sender<EndpointReport>,
}

impl Endpoints {
    pub fn new() -> (Self, mpsc::Receiver<EndpointReport>) {
        let (reports_tx, reports) = mpsc::channel(REPORTS_QUEUED);
        let endpoints = Self {
            open: HashMap::new(),
            reports_tx,
        };
        (endpoints, reports)
    }

    /// Serve the job's endpoint in its folder (which exists). A failure is logged: the
    /// job runs without one (its `fyn-runner job` calls say there is none).
    pub async fn open(
        &mut self,
        job: JobRef,
        job_dir: &Path,
        account: Option<Account>,
        kv: KvView,
    ) {
        let mut config = EndpointConfig::new(job.clone(), job_dir, kv);
        config.account = account;
        match JobEndpoint::bind(config, self.reports_tx.clone()).await {
            Ok(endpoint) => {
                self.open.insert(job, endpoint);
            }
            Err(error) => {
                warn!(job = %job.job_id, attempt = job.attempt, %error, "the job runs without its endpoint");
            }
        }
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
