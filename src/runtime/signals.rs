//! OS signals to control requests, nothing else: the first SIGTERM or SIGINT asks for a
//! drain, the second forces the stop.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::driver::Control;

pub fn forward_signals(control: UnboundedSender<Control>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut seen = 0u32;
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = interrupt.recv() => "SIGINT",
                else => return,
            };
            seen += 1;
            let request = if seen == 1 {
                Control::Shutdown
            } else {
                Control::Force
            };
            if seen == 1 {
                info!(
                    signal = name,
                    "stopping: draining (send the signal again to force)"
                );
            } else {
                warn!(signal = name, "second signal: forcing the stop");
            }
            if control.send(request).is_err() {
                return;
            }
        }
    });
    Ok(())
}
