/*!
The supervisor launcher: one process, started from the runner's binary once, that
forks a job supervisor whenever the runner asks for one. A supervisor executed for
every job paid for a whole program start each time (the kernel's `exec`, the dynamic
loader's relocations, glibc's CPU probing, which traps to the hypervisor on a virtual
machine): measured here, most of a supervisor's CPU and the limit on how many jobs two
cores start in a second. A fork of a small process that has done all of that once
costs a fraction of it.

Both sides are here. The runner's (`Launcher`) makes two pipes per supervisor, the
plan's and the reply's, and hands the supervisor's ends over the launcher's standard
input (a Unix socket) as `SCM_RIGHTS`; from then on it talks to the supervisor exactly
as to one it executed itself. The launcher's (`main`) forks, and the child becomes the
supervisor (`program::main`) with those ends as its standard input and output.

Must not: hold anything of a job. The launcher is single-threaded (so forking it is
safe), lets the kernel reap what it forks, and exits when the runner's end of its
socket closes; supervisors it forked outlive it as they outlive the runner.
*/

use std::io::{self, PipeReader, PipeWriter};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;

/// Set in the launcher's environment (the runner clears the rest): `fyn-runner
/// supervise` with it launches supervisors, without it is one. An environment
/// variable rather than an argument, so every supervisor's command line reads the same
/// whichever way it was started.
pub const LAUNCHER_ENV: &str = "FYN_RUNNER_SUPERVISOR_LAUNCHER";

/// The runner's handle on its launcher.
pub struct Launcher {
    /// Reaped by tokio once dropped; the launcher exits when `socket` closes.
    _process: tokio::process::Child,
    socket: UnixStream,
}

impl Launcher {
    /// Start the launcher from `program` (the runner's own binary). Must be called
    /// inside a tokio runtime.
    pub fn start(program: &Path) -> io::Result<Self> {
        let (ours, theirs) = UnixStream::pair()?;
        let process = super::supervise_command(program)
            .env(LAUNCHER_ENV, "1")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self {
            _process: process,
            socket: ours,
        })
    }

    /// A new supervisor, waiting for its plan: the pipe its plan goes into and the pipe
    /// its answer comes out of. A launcher that is gone fails here (the socket is
    /// closed); one that cannot fork closes the supervisor's ends, which reads as an
    /// end of file once the plan is sent.
    pub fn supervisor(&self) -> io::Result<(PipeWriter, PipeReader)> {
        let (plan_read, plan_in) = io::pipe()?;
        let (reply_out, reply_write) = io::pipe()?;
        send_fds(
            self.socket.as_raw_fd(),
            [plan_read.as_raw_fd(), reply_write.as_raw_fd()],
        )?;
        // Only the supervisor holds these ends now, so its death reads as an end of file.
        drop((plan_read, reply_write));
        Ok((plan_in, reply_out))
    }
}

/// The launcher's whole life: a supervisor forked for each pair of pipes received on
/// standard input, until the runner's end closes. The process's exit code.
pub fn main() -> i32 {
    super::name_this_process(c"fyn-launcher");
    // SAFETY: signal takes and returns integers. With SIGCHLD ignored the kernel reaps
    // the supervisors this process forks: they are the runner's to follow, not its.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    loop {
        match receive_fds(libc::STDIN_FILENO) {
            Ok(Some([plan, reply])) => fork_supervisor(plan, reply),
            Ok(None) => return 0,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return 1,
        }
    }
}

/// The child becomes a supervisor reading its plan from `plan` and answering on
/// `reply`; the launcher keeps nothing of either. A failed fork drops both, which the
/// runner reads as a supervisor that died.
fn fork_supervisor(plan: OwnedFd, reply: OwnedFd) {
    // SAFETY: this process has one thread, so the child may run any code; fork takes
    // no arguments.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        return;
    }
    // SAFETY: signal, dup2 and close on descriptors this process owns. The socket on
    // standard input is replaced by the plan's pipe, so the supervisor keeps nothing
    // of the launcher's.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        libc::dup2(plan.as_raw_fd(), libc::STDIN_FILENO);
        libc::dup2(reply.as_raw_fd(), libc::STDOUT_FILENO);
    }
    drop((plan, reply));
    std::process::exit(super::program::main());
}

/// Room for the control message that carries two descriptors.
const FDS_SPACE: usize = 32;

/// Send one byte with two descriptors attached.
fn send_fds(socket: RawFd, fds: [RawFd; 2]) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // u64s, for the alignment a control message header needs.
    let mut control = [0u64; FDS_SPACE / 8];
    let data_len = (2 * size_of::<RawFd>()) as libc::c_uint;
    // SAFETY: msghdr is plain data; zero is a valid value for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE computes a size from a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as _;
    // SAFETY: the control buffer is FDS_SPACE bytes, aligned, and at least
    // CMSG_SPACE(8) long, so the first header and its two descriptors fit in it.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&raw const msg);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(data_len) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(header).cast::<RawFd>(), 2);
    }
    loop {
        // SAFETY: msg points at the iovec and control buffer above, alive for the call.
        let sent = unsafe { libc::sendmsg(socket, &raw const msg, libc::MSG_NOSIGNAL) };
        if sent == 1 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if sent < 0 && error.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(if sent < 0 {
            error
        } else {
            io::ErrorKind::WriteZero.into()
        });
    }
}

/// One byte and the two descriptors attached to it; `None` at the end of the stream.
/// A message with other than two descriptors is answered by closing what came.
fn receive_fds(socket: RawFd) -> io::Result<Option<[OwnedFd; 2]>> {
    loop {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; FDS_SPACE / 8];
        // SAFETY: msghdr is plain data; zero is a valid value for every field.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = FDS_SPACE as _;
        // SAFETY: msg points at buffers alive for the call; received descriptors are
        // close-on-exec, so none leaks into a job.
        let got = unsafe { libc::recvmsg(socket, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        if got == 0 {
            return Ok(None);
        }
        let fds = take_fds(&msg);
        if let Ok(pair) = <[OwnedFd; 2]>::try_from(fds) {
            return Ok(Some(pair));
        }
    }
}

/// Every descriptor in `msg`'s control messages, owned (so closed if not used).
fn take_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled, within the
    // length it reported; each SCM_RIGHTS payload holds descriptors now ours.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                let payload = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..payload / size_of::<RawFd>() {
                    let fd = data.add(i).read_unaligned();
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(msg, header);
        }
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Descriptors cross the socket: what is written into the sent pipe comes out of
    /// the received one.
    #[test]
    fn a_pair_of_pipes_crosses_the_socket() {
        let (runner, launcher) = UnixStream::pair().expect("a socket pair");
        let (first_read, mut first_write) = io::pipe().expect("a pipe");
        let (mut second_read, second_write) = io::pipe().expect("a pipe");
        send_fds(
            runner.as_raw_fd(),
            [first_read.as_raw_fd(), second_write.as_raw_fd()],
        )
        .expect("sent");
        drop((first_read, second_write));
        let [got_read, got_write] = receive_fds(launcher.as_raw_fd())
            .expect("received")
            .expect("a message");
        first_write.write_all(b"plan").expect("write");
        drop(first_write);
        let mut plan = String::new();
        PipeReader::from(got_read)
            .read_to_string(&mut plan)
            .expect("read");
        assert_eq!(plan, "plan");
        PipeWriter::from(got_write)
            .write_all(b"reply")
            .expect("write");
        let mut reply = String::new();
        second_read.read_to_string(&mut reply).expect("read");
        assert_eq!(reply, "reply");
    }

    /// The runner's end closing is the launcher's end of life.
    #[test]
    fn a_closed_socket_reads_as_the_end() {
        let (runner, launcher) = UnixStream::pair().expect("a socket pair");
        drop(runner);
        assert!(
            receive_fds(launcher.as_raw_fd())
                .expect("no error")
                .is_none()
        );
    }

    /// A message that carries one descriptor, not two, is skipped (its descriptor
    /// closed), and the next one is taken.
    #[test]
    fn a_message_without_two_descriptors_is_skipped() {
        let (runner, launcher) = UnixStream::pair().expect("a socket pair");
        (&runner)
            .write_all(b"x")
            .expect("a byte with nothing attached");
        let (read, write) = io::pipe().expect("a pipe");
        send_fds(runner.as_raw_fd(), [read.as_raw_fd(), write.as_raw_fd()]).expect("sent");
        assert!(
            receive_fds(launcher.as_raw_fd())
                .expect("received")
                .is_some()
        );
    }
}
