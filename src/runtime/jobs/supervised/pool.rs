/*!
Supervisor processes waiting for their launch plan: the one spare made ahead when the
runner is idle, the launcher that forks them, and a supervisor executed when the
launcher is gone. Owns those processes until a launch takes one, and the exchange of a
plan for its answer. Must not: know anything of a job but the plan's line it is handed.
*/

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::debug;

use super::launcher::Launcher;
use super::wire::Reply;

#[derive(Clone)]
pub(super) struct SupervisorPool {
    /// The binary run as `supervise`: the runner's own.
    program: PathBuf,
    spare: Arc<Mutex<Spare>>,
    /// Forks supervisors (`launcher`); started with the first one, and again after
    /// it failed. `None` while there is none: supervisors are then executed.
    launcher: Arc<Mutex<Option<Launcher>>>,
}

enum Spare {
    Empty,
    Making,
    Ready(SupervisorProcess),
}

/// A supervisor this runner started, waiting for (or answering) its plan.
pub(super) struct SupervisorProcess {
    /// One the runner executed itself, reaped by tokio in the background once dropped
    /// (it outlives this handle). The launcher's are the kernel's to reap.
    _child: Option<tokio::process::Child>,
    plan_in: io::PipeWriter,
    reply_out: io::PipeReader,
}

impl SupervisorPool {
    pub(super) fn new(program: PathBuf) -> Self {
        Self {
            program,
            spare: Arc::new(Mutex::new(Spare::Empty)),
            launcher: Arc::new(Mutex::new(None)),
        }
    }

    pub(super) fn program(&self) -> &Path {
        &self.program
    }

    /// The spare, or a supervisor made now when there is none ready.
    pub(super) fn take(&self) -> io::Result<SupervisorProcess> {
        match self.take_spare() {
            Some(process) => Ok(process),
            None => make_supervisor(&self.launcher, &self.program),
        }
    }

    /// Start a spare supervisor if there is none, on a blocking thread; returns at once.
    pub(super) fn prepare_ahead(&self) {
        let mut slot = self.lock_spare();
        if !matches!(*slot, Spare::Empty) {
            return;
        }
        *slot = Spare::Making;
        drop(slot);
        let (spare, program, launcher) = (
            self.spare.clone(),
            self.program.clone(),
            self.launcher.clone(),
        );
        let fill = move || {
            let made = make_supervisor(&launcher, &program);
            let mut slot = spare.lock().unwrap_or_else(PoisonError::into_inner);
            *slot = match made {
                Ok(process) => Spare::Ready(process),
                Err(error) => {
                    debug!(%error, "cannot start a spare supervisor; job starts start their own");
                    Spare::Empty
                }
            };
        };
        // Outside a tokio runtime (a preflight on its own) there is nothing to keep a
        // spare for, and no runtime to reap it later.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(fill)),
            Err(_) => *self.lock_spare() = Spare::Empty,
        }
    }

    fn lock_spare(&self) -> std::sync::MutexGuard<'_, Spare> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_spare(&self) -> Option<SupervisorProcess> {
        let mut slot = self.lock_spare();
        match std::mem::replace(&mut *slot, Spare::Empty) {
            Spare::Ready(process) => Some(process),
            other => {
                *slot = other;
                None
            }
        }
    }
}

impl SupervisorProcess {
    /// Hand the supervisor its plan (one line). A pipe holds far more than a plan, so
    /// this does not wait for the supervisor.
    pub(super) fn send_plan(&mut self, plan: &[u8]) -> io::Result<()> {
        self.plan_in
            .write_all(plan)
            .and_then(|()| self.plan_in.flush())
    }

    /// The supervisor's answer to its plan, waited for here (at most `within`). The
    /// plan's pipe is closed with it: the supervisor reads a runner gone from then on
    /// as no reason to stop (it checked before starting the job).
    pub(super) fn wait_for_answer(mut self, within: Duration) -> io::Result<Reply> {
        read_reply(&mut self.reply_out, within)
    }

    /// `wait_for_answer` on the caller's tokio runtime, so no thread waits for it.
    pub(super) async fn answer(self, within: Duration) -> io::Result<Reply> {
        use tokio::io::AsyncReadExt;
        let Self {
            _child,
            plan_in: _plan_in,
            reply_out,
        } = self;
        let mut reader =
            tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reply_out))?;
        let read = async move {
            let mut text = Vec::new();
            let mut buf = [0u8; 512];
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    return Err(ended_without_answer());
                }
                text.extend_from_slice(&buf[..n]);
                if let Some(end) = text.iter().position(|b| *b == b'\n') {
                    return parse_reply(&text[..end]);
                }
            }
        };
        tokio::time::timeout(within, read)
            .await
            .map_err(|_| no_answer_in_time())?
    }
}

/// A supervisor forked by the launcher (started first if there is none), or, should
/// the launcher fail, one executed from `program`. A launcher that failed is let go of;
/// the next supervisor starts another.
fn make_supervisor(
    launcher: &Mutex<Option<Launcher>>,
    program: &Path,
) -> io::Result<SupervisorProcess> {
    let mut slot = launcher.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.is_none() {
        *slot = Launcher::start(program)
            .inspect_err(|error| debug!(%error, "cannot start the supervisor launcher"))
            .ok();
    }
    if let Some(running) = slot.as_ref() {
        match running.supervisor() {
            Ok((plan_in, reply_out)) => {
                return Ok(SupervisorProcess {
                    _child: None,
                    plan_in,
                    reply_out,
                });
            }
            Err(error) => {
                debug!(%error, "the supervisor launcher is gone; executing this supervisor");
                *slot = None;
            }
        }
    }
    drop(slot);
    start_supervisor(program)
}

/// A supervisor executed from `program` (`super::supervise_command`).
fn start_supervisor(program: &Path) -> io::Result<SupervisorProcess> {
    let (plan_read, plan_in) = io::pipe()?;
    let (reply_out, reply_write) = io::pipe()?;
    let mut command = super::supervise_command(program);
    command
        .stdin(Stdio::from(plan_read))
        .stdout(Stdio::from(reply_write));
    let child = command.spawn()?;
    // Only the child holds the other ends now, so its death reads as an end of file.
    drop(command);
    Ok(SupervisorProcess {
        _child: Some(child),
        plan_in,
        reply_out,
    })
}

/// One line from the supervisor, within `within`.
fn read_reply(reader: &mut io::PipeReader, within: Duration) -> io::Result<Reply> {
    let deadline = std::time::Instant::now() + within;
    let mut text = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(no_answer_in_time());
        }
        let mut fd = libc::pollfd {
            fd: reader.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: poll reads and writes the one pollfd given.
        let ready = unsafe { libc::poll(&raw mut fd, 1, timeout) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if ready == 0 {
            continue;
        }
        let n = io::Read::read(reader, &mut buf)?;
        if n == 0 {
            return Err(ended_without_answer());
        }
        text.extend_from_slice(&buf[..n]);
        if let Some(end) = text.iter().position(|b| *b == b'\n') {
            return parse_reply(&text[..end]);
        }
    }
}

/// The answer's line, without its newline.
fn parse_reply(line: &[u8]) -> io::Result<Reply> {
    serde_json::from_slice(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn ended_without_answer() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the supervisor ended without answering",
    )
}

fn no_answer_in_time() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no answer in time")
}
