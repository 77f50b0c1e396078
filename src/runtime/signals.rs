//! OS signals to control requests, nothing else: the first stop request asks for a
//! drain, the second forces the stop.
//!
//! On Unix a stop request is SIGTERM or SIGINT. On Windows it is a console event:
//! Ctrl+C, Ctrl+Break, the console window closing, logoff or shutdown (Windows gives a
//! console program only a few seconds after the last three; a drain that must outlast
//! them needs the Windows service, whose stop request reaches the same drain).

use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::control::Control;

pub fn forward_signals(control: UnboundedSender<Control>) -> std::io::Result<()> {
    let mut signals = os::StopSignals::new()?;
    tokio::spawn(async move {
        let mut seen = 0u32;
        while let Some(name) = signals.next().await {
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

#[cfg(unix)]
mod os {
    use tokio::signal::unix::{Signal, SignalKind, signal};

    pub struct StopSignals {
        term: Signal,
        interrupt: Signal,
    }

    impl StopSignals {
        pub fn new() -> std::io::Result<Self> {
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }

        /// The next stop request, by name; `None` once none can come any more.
        pub async fn next(&mut self) -> Option<&'static str> {
            tokio::select! {
                Some(()) = self.term.recv() => Some("SIGTERM"),
                Some(()) = self.interrupt.recv() => Some("SIGINT"),
                else => None,
            }
        }
    }
}

#[cfg(windows)]
mod os {
    use tokio::signal::windows::{
        CtrlBreak, CtrlC, CtrlClose, CtrlLogoff, CtrlShutdown, ctrl_break, ctrl_c, ctrl_close,
        ctrl_logoff, ctrl_shutdown,
    };

    pub struct StopSignals {
        c: CtrlC,
        brk: CtrlBreak,
        close: CtrlClose,
        logoff: CtrlLogoff,
        shutdown: CtrlShutdown,
    }

    impl StopSignals {
        pub fn new() -> std::io::Result<Self> {
            Ok(Self {
                c: ctrl_c()?,
                brk: ctrl_break()?,
                close: ctrl_close()?,
                logoff: ctrl_logoff()?,
                shutdown: ctrl_shutdown()?,
            })
        }

        /// The next stop request, by name; `None` once none can come any more.
        pub async fn next(&mut self) -> Option<&'static str> {
            tokio::select! {
                Some(()) = self.c.recv() => Some("CTRL_C"),
                Some(()) = self.brk.recv() => Some("CTRL_BREAK"),
                Some(()) = self.close.recv() => Some("CTRL_CLOSE"),
                Some(()) = self.logoff.recv() => Some("CTRL_LOGOFF"),
                Some(()) = self.shutdown.recv() => Some("CTRL_SHUTDOWN"),
                else => None,
            }
        }
    }
}
