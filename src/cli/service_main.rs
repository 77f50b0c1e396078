//! `fyn-runner service-main`: what the Windows service control manager starts. It
//! hands the process to the service dispatcher and runs the runner inside it, passing
//! STOP and PRESHUTDOWN to the drain (what SIGTERM does on Unix) and the runner's
//! progress back to the SCM. Not for people: on other systems it refuses to run.

/// `prepared` is the runner's settings, or why they could not be made (config file,
/// flags, log file): either way the process goes through the dispatcher, so the SCM
/// sees the service start and then stop with the runner's exit code, instead of a
/// process that vanished (which it would count as a crash and restart, over and over).
#[cfg(windows)]
pub fn run(
    drain_deadline_secs: u64,
    prepared: anyhow::Result<crate::runtime::RunnerSettings>,
) -> anyhow::Result<i32> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::time::Duration;

    let stop_budget =
        Duration::from_secs(drain_deadline_secs.saturating_add(crate::service::STOP_MARGIN_SECS));
    let code = Arc::new(AtomicI32::new(1));
    let reported = code.clone();
    crate::service::windows::run_dispatcher(stop_budget, move |stops, reporter| {
        let exit = match prepared {
            Ok(settings) => body(settings, stops, reporter),
            Err(error) => {
                tracing::error!(
                    "the service cannot start: {}",
                    super::describe_error(&error)
                );
                // As `fyn-runner run` exits on a setup error.
                1
            }
        };
        reported.store(exit, Ordering::SeqCst);
        exit
    })?;
    Ok(code.load(Ordering::SeqCst))
}

/// Run the runner until it exits, as `fyn-runner run` does, but stopped by the SCM
/// instead of signals, telling the SCM how far it got.
#[cfg(windows)]
fn body(
    settings: crate::runtime::RunnerSettings,
    mut stops: tokio::sync::mpsc::UnboundedReceiver<crate::service::windows::StopReason>,
    mut reporter: crate::service::windows::ServiceReporter,
) -> i32 {
    use crate::service::windows::ServiceReporter;
    use tracing::{error, info};

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return 1;
        }
    };
    runtime.block_on(async move {
        let handle = match crate::runtime::start(settings) {
            Ok(handle) => handle,
            Err(e) => {
                error!(error = %e, "the runner cannot start");
                return 1;
            }
        };
        let control = handle.control();
        let mut status = handle.status.clone();
        let first = status.borrow_and_update().lifecycle;
        reporter.runner_state(first);
        let mut ticker = tokio::time::interval(ServiceReporter::TICK);
        let wait = handle.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                code = &mut wait => return code.code(),
                Some(reason) = stops.recv() => {
                    info!(?reason, "the service control manager asked to stop: draining");
                    let _ = control.send(crate::runtime::Control::drain(
                        crate::core::StopOrigin::ServiceManager,
                    ));
                    reporter.stop_requested();
                }
                Ok(()) = status.changed() => {
                    let state = status.borrow_and_update().lifecycle;
                    reporter.runner_state(state);
                }
                _ = ticker.tick() => reporter.tick(),
            }
        }
    })
}

#[cfg(not(windows))]
pub fn run(
    _drain_deadline_secs: u64,
    _prepared: anyhow::Result<crate::runtime::RunnerSettings>,
) -> anyhow::Result<i32> {
    anyhow::bail!(
        "`service-main` is the Windows service's entry point, started by the service control \
         manager; use `fyn-runner run` here"
    )
}
