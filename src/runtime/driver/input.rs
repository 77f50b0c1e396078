//! Everything that reaches the driver's loop, as one enum.
//!
//! Owns: `Input`, and the conversions from each source's own small type. The sources
//! (`ws`, `timers`, `control`, `signals`, `jobs`) know nothing of the driver: the
//! driver imports them, never the other way round.
//!
//! Must not: decide anything; filtering stale inputs is `super::Driver::accept`'s job.

use crate::core::Event;
use crate::runtime::jobs::{JobReport, Launched};
use crate::runtime::timers::TimerFired;
use crate::runtime::ws::{LinkReport, WsStream};

pub(super) enum Input {
    /// An event the runtime produced off the loop (hardware collected, an orphan
    /// reaped): it goes to the core as it is.
    Event(Event),
    /// A job process's report; converting it releases its output credit, so a job
    /// that prints faster than the runner can deliver waits for the runner.
    Job(JobReport),
    /// A job's launch ended (`JobSupervisor::start`): started, or why not.
    Launched(Launched),
    /// What a live connection reports (frames, the close, its writer's queue).
    Link(LinkReport),
    /// A connection attempt succeeded.
    Connected {
        conn: u64,
        stream: Box<WsStream>,
    },
    ConnectFailed {
        conn: u64,
        error: String,
    },
    Timer(TimerFired),
    /// A health probe from the metrics listener: the loop answers it between two
    /// dispatches, which is what shows the loop is alive.
    Probe(crate::runtime::metrics::Probe),
}

impl From<LinkReport> for Input {
    fn from(report: LinkReport) -> Self {
        Self::Link(report)
    }
}

impl From<TimerFired> for Input {
    fn from(fired: TimerFired) -> Self {
        Self::Timer(fired)
    }
}
