//! The Windows service's entry point: `fyn-runner service-main` hands the process to
//! the SCM's dispatcher (`StartServiceCtrlDispatcherW`), which calls back on its own
//! thread with the service's main function. That function registers the control
//! handler, reports StartPending, and runs the runner through the body the CLI gave
//! [`run`] — this module does not import the runtime — reporting what the body tells
//! it through [`ServiceReporter`] as [`Progress`] decides.
#![allow(clippy::disallowed_methods)] // wait hints for the service control manager

use std::ffi::OsString;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{error, info, warn};
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState as WinState,
    ServiceStatus as WinStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::{define_windows_service, service_dispatcher};
use windows_sys::Win32::System::Console::{AllocConsole, GetConsoleWindow, SetConsoleCtrlHandler};

use super::{Progress, REPORT_INTERVAL, Report, SERVICE_NAME, WAIT_HINT};
use crate::core::Lifecycle;
use crate::service::ServiceError;

/// Why the SCM asked the service to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `sc stop`, `Stop-Service`, `fyn-runner service stop`.
    Stop,
    /// Windows is shutting down (within the preshutdown timeout).
    Preshutdown,
}

type Body = Box<dyn FnOnce(mpsc::UnboundedReceiver<StopReason>, ServiceReporter) -> i32 + Send>;

/// The body [`run`] was given, for the service main function the SCM calls.
static BODY: Mutex<Option<(Body, Duration)>> = Mutex::new(None);

define_windows_service!(ffi_service_main, service_main);

/// Run `body` as the service `fyn-runner`; returns when the service has stopped.
/// `stop_budget` is how long a stop may take (drain deadline + margin). Fails at once
/// when the process was not started by the SCM.
pub fn run(
    stop_budget: Duration,
    body: impl FnOnce(mpsc::UnboundedReceiver<StopReason>, ServiceReporter) -> i32 + Send + 'static,
) -> Result<(), ServiceError> {
    *BODY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Box::new(body), stop_budget));
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(|e| ServiceError::Scm {
        op: "dispatch (is this process started by the service control manager?)",
        name: SERVICE_NAME.to_owned(),
        detail: e.to_string(),
    })
}

/// What the runner's body reports to (it hears STOP and PRESHUTDOWN through the
/// receiver it is given beside this).
pub struct ServiceReporter {
    handle: ServiceStatusHandle,
    progress: Progress,
    started: Instant,
}

impl ServiceReporter {
    /// How often the body should call [`ServiceReporter::tick`].
    pub const TICK: Duration = REPORT_INTERVAL;

    /// The runner entered `state`.
    pub fn runner_state(&mut self, state: Option<Lifecycle>) {
        let report = self.progress.runner_state(state, self.started.elapsed());
        self.send(report);
    }

    /// The body passed a stop request on to the runner.
    pub fn stop_requested(&mut self) {
        let report = self.progress.stop_requested(self.started.elapsed());
        self.send(report);
    }

    pub fn tick(&mut self) {
        let report = self.progress.tick(self.started.elapsed());
        self.send(report);
    }

    fn send(&self, report: Option<Report>) {
        if let Some(report) = report {
            set_status(self.handle, report);
        }
    }
}

fn set_status(handle: ServiceStatusHandle, report: Report) {
    let accepting = ServiceControlAccept::STOP | ServiceControlAccept::PRESHUTDOWN;
    let (state, accepted, checkpoint, exit_code) = match report {
        Report::StartPending { checkpoint } => (
            WinState::StartPending,
            accepting,
            checkpoint,
            ServiceExitCode::NO_ERROR,
        ),
        Report::Running => (WinState::Running, accepting, 0, ServiceExitCode::NO_ERROR),
        Report::StopPending { checkpoint } => (
            WinState::StopPending,
            ServiceControlAccept::empty(),
            checkpoint,
            ServiceExitCode::NO_ERROR,
        ),
        Report::Stopped { exit_code } => (
            WinState::Stopped,
            ServiceControlAccept::empty(),
            0,
            match u32::try_from(exit_code) {
                Ok(0) => ServiceExitCode::NO_ERROR,
                Ok(code) => ServiceExitCode::ServiceSpecific(code),
                // A negative code (none of the runner's): keep its bits.
                Err(_) => ServiceExitCode::ServiceSpecific(exit_code as u32),
            },
        ),
    };
    let pending = matches!(state, WinState::StartPending | WinState::StopPending);
    let status = WinStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accepted,
        exit_code,
        checkpoint,
        wait_hint: if pending { WAIT_HINT } else { Duration::ZERO },
        process_id: None,
    };
    if let Err(e) = handle.set_service_status(status) {
        warn!(error = %e, ?report, "cannot report the service status to the SCM");
    }
}

/// Give the service a console of its own (a service starts without one) and ignore
/// its events: jobs are started attached to it, so that Ctrl+Break can reach a job's
/// process group when it is cancelled. Stop requests come from the SCM instead.
fn prepare_console() {
    // SAFETY: plain calls without pointers; the handler ignores every event.
    unsafe {
        if GetConsoleWindow().is_null() && AllocConsole() == 0 {
            warn!(
                error = %std::io::Error::last_os_error(),
                "cannot give the service a console; cancelled jobs get no Ctrl+Break, only the kill after their grace"
            );
        }
        SetConsoleCtrlHandler(Some(ignore_console_event), 1);
    }
}

unsafe extern "system" fn ignore_console_event(_event: u32) -> windows_sys::core::BOOL {
    1
}

fn service_main(_arguments: Vec<OsString>) {
    let Some((body, stop_budget)) = BODY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    else {
        error!("the service started without a body to run");
        return;
    };
    let (stops_tx, stops) = mpsc::unbounded_channel();
    let handler = move |control| match control {
        ServiceControl::Stop => {
            let _ = stops_tx.send(StopReason::Stop);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Preshutdown => {
            let _ = stops_tx.send(StopReason::Preshutdown);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = match service_control_handler::register(SERVICE_NAME, handler) {
        Ok(handle) => handle,
        Err(e) => {
            error!(error = %e, "cannot register the service control handler");
            return;
        }
    };
    let mut progress = Progress::new(stop_budget);
    set_status(handle, progress.first());
    prepare_console();
    info!("running as the Windows service {SERVICE_NAME}");
    let reporter = ServiceReporter {
        handle,
        progress: progress.clone(),
        started: Instant::now(),
    };
    let code = body(stops, reporter);
    info!(code, "the runner exited; reporting the service stopped");
    set_status(handle, progress.exited(code));
}
