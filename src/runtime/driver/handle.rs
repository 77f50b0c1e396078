//! What the caller of `start` holds: the runner's status, its transitions, a way to
//! ask it to stop, and its exit code.
//!
//! Owns: `RunnerHandle`, `Transition`. Must not reach into the loop: it talks to it
//! only through channels.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};

use crate::core::ExitCode;
use crate::runtime::control::Control;
use crate::runtime::status::RunnerStatus;

/// One change of phase, as the dispatch point saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transition {
    pub from: String,
    pub to: String,
    pub event: &'static str,
}

/// A running runner: its status, a way to ask it to stop, and its exit code.
pub struct RunnerHandle {
    pub status: watch::Receiver<RunnerStatus>,
    pub(super) transitions: broadcast::Sender<Transition>,
    /// Subscribed before the runner started, so the first reader misses nothing.
    pub(super) first_transitions: Option<broadcast::Receiver<Transition>>,
    pub(super) control: mpsc::UnboundedSender<Control>,
    pub(super) task: tokio::task::JoinHandle<ExitCode>,
    pub(super) trace_path: Option<PathBuf>,
}

impl RunnerHandle {
    /// The file this run's trace is written to, when tracing is on.
    pub fn trace_path(&self) -> Option<&std::path::Path> {
        self.trace_path.as_deref()
    }

    pub fn shutdown(&self) {
        let _ = self
            .control
            .send(Control::drain(crate::core::StopOrigin::Embedder));
    }

    pub fn force(&self) {
        let _ = self.control.send(Control::Force);
    }

    /// Every phase change (a slow reader misses the oldest, never blocks the runner).
    /// The first call sees them from the start; later calls from the moment of the call.
    pub fn transitions(&mut self) -> broadcast::Receiver<Transition> {
        self.first_transitions
            .take()
            .unwrap_or_else(|| self.transitions.subscribe())
    }

    pub fn control(&self) -> mpsc::UnboundedSender<Control> {
        self.control.clone()
    }

    /// Wait for the runner to stop and return its exit code.
    pub async fn wait(self) -> ExitCode {
        self.task.await.unwrap_or(ExitCode::StoreFailure)
    }

    /// Wait at most `within` for the runner to stop by itself; past that, force the
    /// stop and wait for it. Returns the exit code and whether it stopped in time.
    pub async fn wait_within(mut self, within: Duration) -> (ExitCode, bool) {
        match tokio::time::timeout(within, &mut self.task).await {
            Ok(ended) => (ended.unwrap_or(ExitCode::StoreFailure), true),
            Err(_) => {
                self.force();
                (self.wait().await, false)
            }
        }
    }

    /// Wait until the status satisfies `pred` (or the runner ends: the loop's end drops
    /// the status sender, which ends the wait with the last status).
    pub async fn wait_for(&mut self, pred: impl Fn(&RunnerStatus) -> bool) -> RunnerStatus {
        let status = self.status.wait_for(pred).await;
        status
            .map(|s| s.clone())
            .unwrap_or_else(|_| self.status.borrow().clone())
    }
}
