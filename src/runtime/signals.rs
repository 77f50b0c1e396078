//! OS signals to control requests, nothing else. Every other signal whose default would
//! end the runner (SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, ...) is caught and logged, never
//! obeyed. (SIGPIPE the Rust runtime ignores from the start; a job gets the default
//! back.)
//!
//! On Unix a stop request is SIGTERM or SIGINT, what a service manager sends for a stop
//! or a restart: the runner stops at once and leaves its jobs to their supervisors,
//! which keep running them; the next start reattaches them. Ending jobs is what a drain
//! is for (`fyn-runner drain`, the API's `drain` command, `uninstall`). A signal that
//! arrives while a drain runs forces it (running jobs are cancelled), as does a second.
//!
//! On Windows, where a job cannot outlive the runner (its job object closes with it),
//! a stop request drains as before, and a second forces the stop. It is a console
//! event: Ctrl+C, Ctrl+Break, the console window closing, logoff or shutdown (Windows
//! gives a console program only a few seconds after the last three; a drain that must
//! outlast them needs the Windows service, whose stop request reaches the same drain).

use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::control::Control;

pub fn forward_signals(control: UnboundedSender<Control>) -> std::io::Result<()> {
    let mut signals = os::StopSignals::new()?;
    let mut others = os::OtherSignals::new()?;
    tokio::spawn(async move {
        while let Some(name) = others.next().await {
            if name == "SIGHUP" {
                info!(
                    signal = name,
                    "nothing to reload: the config file is read at start (restart the \
                     runner to apply a change); carrying on"
                );
            } else {
                warn!(
                    signal = name,
                    "ignoring the signal: it does not stop the runner"
                );
            }
        }
    });
    tokio::spawn(async move {
        let mut seen = 0u32;
        while let Some(name) = signals.next().await {
            seen += 1;
            let request = if seen == 1 {
                os::FIRST_STOP
            } else {
                Control::Force
            };
            if seen == 1 {
                info!(signal = name, "{}", os::FIRST_STOP_SAYS);
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

    use super::Control;

    /// A service manager's stop or restart: jobs stay with their supervisors.
    pub const FIRST_STOP: Control = Control::Stop;
    pub const FIRST_STOP_SAYS: &str = "stopping; running jobs stay with their supervisors \
        and the next start reattaches them (a drain, if one runs, is forced instead; \
        `fyn-runner drain` ends jobs)";

    /// Signals whose default action ends the process and that no one should be able to
    /// end a runner with by accident (a terminal closing, a stray `kill -USR1`, a
    /// resource limit's warning): each is caught, so it is only logged.
    const CAUGHT: &[(libc::c_int, &str)] = &[
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGXFSZ, "SIGXFSZ"),
        #[cfg(any(target_os = "linux", target_os = "android"))]
        (libc::SIGPWR, "SIGPWR"),
    ];

    pub struct OtherSignals {
        streams: Vec<(Signal, &'static str)>,
    }

    impl OtherSignals {
        pub fn new() -> std::io::Result<Self> {
            let streams = CAUGHT
                .iter()
                .map(|&(number, name)| Ok((signal(SignalKind::from_raw(number))?, name)))
                .collect::<std::io::Result<_>>()?;
            Ok(Self { streams })
        }

        /// The next caught signal, by name; `None` once none can come any more.
        pub async fn next(&mut self) -> Option<&'static str> {
            let waits = self.streams.iter_mut().map(|(stream, name)| {
                let name = *name;
                Box::pin(async move { stream.recv().await.map(|()| name) })
            });
            let (received, _, _) = futures_util::future::select_all(waits).await;
            received
        }
    }

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
    use super::Control;

    /// A job dies with the runner on Windows: a stop drains first.
    pub const FIRST_STOP: Control = Control::Drain {
        deadline_secs: None,
        by: crate::core::StopOrigin::Signal,
    };
    pub const FIRST_STOP_SAYS: &str = "stopping: draining (send the signal again to force)";

    /// Windows ends a console program only through the console events below.
    pub struct OtherSignals;

    impl OtherSignals {
        pub fn new() -> std::io::Result<Self> {
            Ok(Self)
        }

        pub async fn next(&mut self) -> Option<&'static str> {
            None
        }
    }

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
