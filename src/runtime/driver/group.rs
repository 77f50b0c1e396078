//! Group commit: events that are ready at the same moment are dispatched one by one
//! (each traced with its own effects, as always), and their rows go to disk in one
//! transaction before any of their other effects is performed. Eight `start_job`s
//! arriving together wait for one disk sync, not eight in a row; sixteen output chunks
//! of a job that prints fast, for one.
//!
//! Owns: which inputs may join a group and which batches end one. Must not: decide
//! anything the core decides, or reorder what a batch does: persist before send holds
//! for the whole group (nothing of it is sent before its one commit), and each batch's
//! other effects are performed in the core's order, batch after batch.
//!
//! Only inputs whose acceptance does not depend on what an earlier batch performs may
//! join: job reports (converted without looking at anything) and the frames of the
//! current connection. A batch that opens or closes the connection, exits, resends,
//! or does any local step ends the group, since what comes next may depend on it
//! having been done; anything else that arrives is handed back to the loop and
//! accepted only after the group is performed.

use tokio::sync::mpsc;

use crate::core::{Durable, Effect, Event};
use crate::runtime::jobs::JobReport;
use crate::runtime::ws::LinkReport;

use super::input::Input;

/// The most events one group holds: bounds how long the first one's frames wait, and
/// how far past the writer's high water a group can take the queue.
pub(super) const MAX_EVENTS: usize = 16;

/// Events dispatched whose effects are not performed yet.
#[derive(Default)]
pub(super) struct Group {
    pub(super) events: Vec<Event>,
    pub(super) batches: Vec<Vec<Effect>>,
    /// False once a batch that must be performed before anything else is accepted
    /// joined.
    open: bool,
}

impl Group {
    pub(super) fn new() -> Self {
        Self {
            events: Vec::new(),
            batches: Vec::new(),
            open: true,
        }
    }

    pub(super) fn push(&mut self, event: Event, batch: Vec<Effect>) {
        self.open &= batch.iter().all(lets_others_join);
        self.events.push(event);
        self.batches.push(batch);
    }

    /// Whether another ready input may be dispatched into this group.
    pub(super) fn takes_more(&self) -> bool {
        self.open && self.events.len() < MAX_EVENTS
    }
}

/// Whether an input may be accepted while a group waits to be performed: one whose
/// acceptance reads nothing an earlier batch changes.
pub(super) fn may_join(input: &Input) -> bool {
    match input {
        Input::Job(_) => true,
        Input::Link(LinkReport::Event { event, .. }) => may_group(event),
        _ => false,
    }
}

/// Events that start a group: job reports and the API's messages.
pub(super) fn may_group(event: &Event) -> bool {
    matches!(
        event,
        Event::Message(_)
            | Event::JobStarted { .. }
            | Event::JobOutput { .. }
            | Event::JobOutputTruncated { .. }
            | Event::JobExited { .. }
            | Event::JobSpawnFailed { .. }
    )
}

/// Effects after which the next ready input may still be dispatched before the
/// batch is performed: rows of the store, sends, timers, jobs, notices.
fn lets_others_join(effect: &Effect) -> bool {
    match effect {
        Effect::Persist(row) => !matches!(
            row,
            Durable::Identity { .. } | Durable::HardwareCache { .. }
        ),
        Effect::Send(_)
        | Effect::StartTimer { .. }
        | Effect::CancelTimer { .. }
        | Effect::SpawnJob { .. }
        | Effect::FetchInputs { .. }
        | Effect::UploadOutputs(_)
        | Effect::CancelJob { .. }
        | Effect::RenewLeases { .. }
        | Effect::Notify(_)
        | Effect::TellManager(_) => true,
        Effect::OpenConnection
        | Effect::ResendOutbox { .. }
        | Effect::Close { .. }
        | Effect::RunInstallStep { .. }
        | Effect::RollbackInstall
        | Effect::Farewell
        | Effect::ForgetKey
        | Effect::GenerateKey
        | Effect::CollectHardware
        | Effect::RunHook(_)
        | Effect::Exit { .. } => false,
    }
}

impl super::Driver {
    /// The next input that is ready and may join a group, accepted; `None` when there
    /// is none. One that may not join is left in `carried` for the loop, and a job's end
    /// whose endpoint must close first in `held_end`.
    pub(super) fn ready_to_join(
        &mut self,
        inputs: &mut mpsc::UnboundedReceiver<Input>,
        reports: &mut mpsc::UnboundedReceiver<JobReport>,
        carried: &mut Option<Input>,
        held_end: &mut Option<JobReport>,
    ) -> Option<Event> {
        // The brake holds as in the loop (a group's sends are not queued yet, so the
        // queue is what it was when the group began).
        if !self.link.backpressured()
            && let Ok(report) = reports.try_recv()
        {
            if self.closes_endpoint(&report) {
                *held_end = Some(report);
                return None;
            }
            return self.accept(Input::Job(report));
        }
        loop {
            let input = inputs.try_recv().ok()?;
            if !may_join(&input) {
                *carried = Some(input);
                return None;
            }
            // A frame of a connection that is no longer current is dropped, as ever.
            if let Some(event) = self.accept(input) {
                return Some(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Delay, TimerKind};
    use crate::protocol::JobRef;
    use crate::runtime::jobs::JobReport;
    use crate::runtime::timers::TimerFired;

    fn started(n: u32) -> Event {
        Event::JobStarted {
            job: JobRef {
                job_id: format!("j-{n}"),
                attempt: 1,
            },
            pid: n,
        }
    }

    fn rows() -> Vec<Effect> {
        vec![
            Effect::Persist(Durable::LastApplied { index: 1 }),
            Effect::StartTimer {
                timer: TimerKind::Heartbeat,
                delay: Delay::Millis(5),
            },
        ]
    }

    #[test]
    fn rows_and_timers_let_the_next_ready_input_join_up_to_the_bound() {
        let mut group = Group::new();
        for n in 0..MAX_EVENTS as u32 {
            assert!(group.takes_more(), "event {n} may join");
            group.push(started(n), rows());
        }
        assert!(!group.takes_more(), "the group is full at {MAX_EVENTS}");
        assert_eq!(group.events.len(), group.batches.len());
    }

    #[test]
    fn a_batch_that_changes_the_link_or_ends_the_runner_ends_the_group() {
        let enders = [
            Effect::Close {
                reason: crate::protocol::CloseReason::Normal,
            },
            Effect::OpenConnection,
            Effect::ResendOutbox { after: 0 },
            Effect::Exit {
                code: crate::core::ExitCode::Clean,
            },
            Effect::Persist(Durable::Identity {
                runner_id: "r".into(),
            }),
        ];
        for ender in enders {
            let name = format!("{ender:?}");
            let mut group = Group::new();
            let mut batch = rows();
            batch.push(ender);
            group.push(started(1), batch);
            assert!(!group.takes_more(), "{name} ends the group");
        }
    }

    #[test]
    fn only_job_reports_and_frames_join_a_group() {
        let job = JobRef {
            job_id: "j".into(),
            attempt: 1,
        };
        assert!(may_join(&Input::Job(JobReport::Started { job, pid: 1 })));
        let timer = Input::Timer(TimerFired {
            timer: TimerKind::Heartbeat,
            generation: 1,
        });
        assert!(
            !may_join(&timer),
            "a timer's acceptance reads its generation"
        );
        let closed = Input::Link(LinkReport::Event {
            conn: 1,
            event: Event::SocketClosed {
                code: Some(1000),
                reason: String::new(),
            },
        });
        assert!(!may_join(&closed), "accepting a close changes the link");
        let below = Input::Link(LinkReport::BelowLowWater { conn: 1 });
        assert!(!may_join(&below));
        assert!(!may_group(&Event::SocketOpened));
        assert!(may_group(&started(1)));
    }
}
