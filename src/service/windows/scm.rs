//! The one seam to the Windows service control manager: every call `fyn-runner`
//! makes to it goes through [`Scm`], so tests replace it with [`RecordingScm`] and
//! check the exact sequence, as [`super::super::RecordingRunner`] does for
//! `systemctl` and `launchctl`. The real one, on Windows, is `SystemScm`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use super::Definition;
use crate::service::ServiceError;

/// What the SCM says a service is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScmState {
    Stopped,
    StartPending,
    StopPending,
    Running,
    ContinuePending,
    PausePending,
    Paused,
}

/// How the service's last run ended, as it reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScmExit {
    /// A Windows error code (0: success).
    Win32(u32),
    /// The service's own code: the runner's exit code.
    ServiceSpecific(u32),
}

/// One `QueryServiceStatusEx` and `QueryServiceConfig`, as far as the manager needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScmStatus {
    pub state: ScmState,
    pub pid: Option<u32>,
    pub exit: ScmExit,
    /// Rises while a start or stop is under way; the SCM's sign of progress.
    pub checkpoint: u32,
    /// How long the service said the next step may take.
    pub wait_hint: Duration,
    /// Whether it starts at boot (auto start, delayed or not).
    pub auto_start: bool,
}

/// The service control manager's operations on one service, by name.
pub trait Scm {
    /// The service's status; `None` when the SCM does not know it.
    fn query(&self, name: &str) -> Result<Option<ScmStatus>, ServiceError>;
    /// Create the service with everything `definition` says (start type, delayed
    /// start, failure actions, description, preshutdown timeout); a half-configured
    /// service is deleted again before the error returns.
    fn create(&self, definition: &Definition) -> Result<(), ServiceError>;
    /// `StartService`: returns once the SCM launched it (it is then StartPending).
    fn start(&self, name: &str) -> Result<(), ServiceError>;
    /// `ControlService(STOP)`: returns at once; the runner drains, reporting
    /// StopPending.
    fn stop(&self, name: &str) -> Result<(), ServiceError>;
    /// `DeleteService`.
    fn delete(&self, name: &str) -> Result<(), ServiceError>;
}

impl<T: Scm + ?Sized> Scm for &T {
    fn query(&self, name: &str) -> Result<Option<ScmStatus>, ServiceError> {
        (**self).query(name)
    }
    fn create(&self, definition: &Definition) -> Result<(), ServiceError> {
        (**self).create(definition)
    }
    fn start(&self, name: &str) -> Result<(), ServiceError> {
        (**self).start(name)
    }
    fn stop(&self, name: &str) -> Result<(), ServiceError> {
        (**self).stop(name)
    }
    fn delete(&self, name: &str) -> Result<(), ServiceError> {
        (**self).delete(name)
    }
}

/// A fake SCM that records every call (`"create fyn-runner"`, `"stop fyn-runner"`,
/// ...) and answers queries from a script: each query takes the next scripted status,
/// and the last one repeats. Operations succeed unless [`RecordingScm::fail`] names
/// them. The created definition is kept for inspection.
#[derive(Debug, Default)]
pub struct RecordingScm {
    calls: RefCell<Vec<String>>,
    statuses: RefCell<VecDeque<Option<ScmStatus>>>,
    failures: RefCell<Vec<(String, String)>>,
    created: RefCell<Option<Definition>>,
}

impl RecordingScm {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queries answer these, in order (`None`: not installed); the last repeats.
    /// With nothing scripted the service is not installed.
    pub fn answer(&self, statuses: impl IntoIterator<Item = Option<ScmStatus>>) -> &Self {
        self.statuses.borrow_mut().extend(statuses);
        self
    }

    /// The operation `op` (`"create"`, `"start"`, `"stop"`, `"delete"`, `"query"`)
    /// fails, saying `detail`.
    pub fn fail(&self, op: &str, detail: &str) -> &Self {
        self.failures
            .borrow_mut()
            .push((op.to_owned(), detail.to_owned()));
        self
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    pub fn created(&self) -> Option<Definition> {
        self.created.borrow().clone()
    }

    fn record(&self, op: &'static str, name: &str) -> Result<(), ServiceError> {
        self.calls.borrow_mut().push(format!("{op} {name}"));
        match self.failures.borrow().iter().find(|(o, _)| o == op) {
            Some((_, detail)) => Err(ServiceError::Scm {
                op,
                name: name.to_owned(),
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl Scm for RecordingScm {
    fn query(&self, name: &str) -> Result<Option<ScmStatus>, ServiceError> {
        self.record("query", name)?;
        let mut statuses = self.statuses.borrow_mut();
        Ok(if statuses.len() > 1 {
            statuses.pop_front().flatten()
        } else {
            statuses.front().cloned().flatten()
        })
    }

    fn create(&self, definition: &Definition) -> Result<(), ServiceError> {
        self.record("create", &definition.name)?;
        *self.created.borrow_mut() = Some(definition.clone());
        Ok(())
    }

    fn start(&self, name: &str) -> Result<(), ServiceError> {
        self.record("start", name)
    }

    fn stop(&self, name: &str) -> Result<(), ServiceError> {
        self.record("stop", name)
    }

    fn delete(&self, name: &str) -> Result<(), ServiceError> {
        self.record("delete", name)
    }
}
