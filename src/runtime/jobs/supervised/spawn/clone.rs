//! Linux: the job's process made by `clone(CLONE_VM | CLONE_VFORK)`, running the
//! steps in the supervisor's memory on a stack of its own until its `exec` (see the
//! parent module for why).

use std::io;
use std::os::fd::RawFd;

use super::{AccountIds, Command};

/// The child's stack. The steps are a few system calls each; glibc's
/// `posix_spawn` gives its child 32 KiB plus the arguments' size.
const STACK_BYTES: usize = 64 * 1024;

/// The step of the child's that failed, for the supervisor's message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Step {
    None,
    Group,
    Stdio,
    Folder,
    Account,
    ParentDeath,
    SupervisorGone,
    Exec,
}

/// What the child reads and writes: made by the supervisor before the `clone`, and
/// shared with the child (`CLONE_VM`) until its `exec`.
struct Steps {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    /// Standard input, output and error, in that order.
    stdio: [RawFd; 3],
    groups: *const libc::gid_t,
    groups_len: usize,
    /// `(uid, gid)` to drop to, if any.
    ids: Option<(libc::uid_t, libc::gid_t)>,
    umask: libc::mode_t,
    supervisor: libc::pid_t,
    /// Written by the child when a step fails, then it exits.
    failed: Step,
    errno: libc::c_int,
}

/// The child's stack, made before the plan comes.
pub(super) struct ChildAhead {
    stack: Stack,
}

impl ChildAhead {
    pub(super) fn make() -> io::Result<Self> {
        let stack = Stack::new(STACK_BYTES)?;
        stack.touch_top();
        Ok(Self { stack })
    }
}

/// The steps' preparation on `command`, short of the clone (`super::rehearse`).
pub(super) fn rehearse(command: &Command) {
    std::hint::black_box((pointers(&command.args), pointers(&command.env)));
}

pub(super) fn start(
    command: &Command,
    account: Option<&AccountIds>,
    umask: libc::mode_t,
    ahead: &ChildAhead,
    stdio: [RawFd; 3],
) -> io::Result<u32> {
    let argv = pointers(&command.args);
    let envp = pointers(&command.env);
    let groups: Vec<libc::gid_t> = account.map(|a| a.groups.clone()).unwrap_or_default();
    let mut steps = Steps {
        program: command.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: command.cwd.as_ptr(),
        stdio,
        groups: groups.as_ptr(),
        groups_len: groups.len(),
        ids: account.map(|a| (a.uid, a.gid)),
        umask,
        // SAFETY: getpid takes nothing and cannot fail.
        supervisor: unsafe { libc::getpid() },
        failed: Step::None,
        errno: 0,
    };
    let stack = &ahead.stack;
    let pid = {
        // No handler of the supervisor's may run in the child, which shares its
        // memory: every signal stays blocked from before the clone until the child
        // has set each back to its default (it unblocks them just before `exec`).
        let _blocked = BlockedSignals::all()?;
        // SAFETY: the child runs `child` on `stack` (its top, growing down) with
        // `steps`, which live until the clone returns; with CLONE_VFORK it returns
        // only once the child has called `exec` or exited, so neither is used by
        // the child after that. `child` makes plain system calls only.
        unsafe {
            libc::clone(
                child,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&raw mut steps).cast(),
            )
        }
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the child wrote these before it exited, or never; it is gone or has a
    // memory of its own now. Volatile, since the write came from outside this code.
    let (failed, errno) = unsafe {
        (
            std::ptr::read_volatile(&raw const steps.failed),
            std::ptr::read_volatile(&raw const steps.errno),
        )
    };
    if failed == Step::None {
        return Ok(pid.unsigned_abs());
    }
    // The child exited: reap it, then say which step failed.
    // SAFETY: waitpid on the child just made, with no status wanted.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    Err(failure(failed, errno))
}

/// A null-terminated array of pointers into `strings`, for `execve`.
fn pointers(strings: &[std::ffi::CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn failure(step: Step, errno: libc::c_int) -> io::Error {
    let cause = io::Error::from_raw_os_error(errno);
    let what = match step {
        Step::None | Step::Exec => return cause,
        Step::Group => "cannot make the job's process group",
        Step::Stdio => "cannot set up the job's standard input and output",
        Step::Folder => "cannot enter the job's folder",
        Step::Account => "cannot switch to the job's account",
        Step::ParentDeath => "cannot ask for the job's end with its supervisor",
        Step::SupervisorGone => return io::Error::other("the job's supervisor is gone"),
    };
    io::Error::new(cause.kind(), format!("{what}: {cause}"))
}

/// The child, from `clone` to `exec`. Returns only when a step failed (the clone's
/// exit code); `steps` then says which.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Steps` the supervisor made and keeps alive, suspended,
    // until this child calls `exec` or exits.
    let steps = unsafe { &mut *arg.cast::<Steps>() };
    // SAFETY: every call in `run` is a system call on memory `steps` points to.
    let (step, errno) = unsafe { run(steps) };
    steps.failed = step;
    steps.errno = errno;
    // SAFETY: _exit ends this process without running anything of the supervisor's.
    unsafe { libc::_exit(127) }
}

/// The steps in order; the one that failed and its errno.
unsafe fn run(steps: &Steps) -> (Step, libc::c_int) {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)
    };
    macro_rules! check {
        ($step:expr, $rc:expr) => {
            if $rc < 0 {
                return ($step, errno());
            }
        };
    }
    // SAFETY (for the block): each call is a system call with integers or with
    // pointers into `steps`' memory, which the supervisor made before the clone
    // and keeps until this process's `exec` or exit.
    unsafe {
        // Every handler back to its default: a handler is the supervisor's code, and
        // what it ignores the job must not (SIGPIPE, SIGHUP); an `exec` keeps what is
        // ignored. Still blocked, so none is delivered meanwhile.
        for signal in 1..=libc::SIGRTMAX() {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &raw mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
            {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        check!(Step::Group, libc::setpgid(0, 0));
        for (target, &fd) in steps.stdio.iter().enumerate() {
            let target = target as libc::c_int;
            if fd == target {
                // Already in place: only its close-on-exec flag goes.
                check!(Step::Stdio, libc::fcntl(fd, libc::F_SETFD, 0));
            } else {
                check!(Step::Stdio, libc::dup2(fd, target));
            }
        }
        check!(Step::Folder, libc::chdir(steps.cwd));
        // The system calls themselves, not glibc's wrappers: those change every
        // thread of the process they believe they are in, which is the supervisor's.
        if let Some((uid, gid)) = steps.ids {
            check!(
                Step::Account,
                libc::syscall(libc::SYS_setgroups, steps.groups_len, steps.groups)
            );
            check!(Step::Account, libc::syscall(libc::SYS_setgid, gid));
            check!(Step::Account, libc::syscall(libc::SYS_setuid, uid));
        }
        libc::umask(steps.umask);
        // After the account change, which clears it.
        check!(
            Step::ParentDeath,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0)
        );
        // The supervisor may have died before the request above.
        if libc::getppid() != steps.supervisor {
            return (Step::SupervisorGone, 0);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut());
        libc::execve(steps.program, steps.argv, steps.envp);
        (Step::Exec, errno())
    }
}

/// Every signal blocked for this thread until dropped; then the mask it had.
struct BlockedSignals(libc::sigset_t);

impl BlockedSignals {
    fn all() -> io::Result<Self> {
        // SAFETY: sigfillset and pthread_sigmask write only the sets given.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&raw mut all);
            let mut old: libc::sigset_t = std::mem::zeroed();
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut old);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Self(old))
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `all`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &raw const self.0, std::ptr::null_mut())
        };
    }
}

/// A stack for the child, with a guard page below it: an overflow faults instead of
/// writing over the supervisor's memory.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new(bytes: usize) -> io::Result<Self> {
        // SAFETY: sysconf reads a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|page| *page > 0)
            .unwrap_or(4096);
        let len = bytes + page;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Fault in the pages the child's steps use (the topmost), so that is not done
    /// on the start's path.
    fn touch_top(&self) {
        const TOUCHED: usize = 8 * 1024;
        let top = self.top().cast::<u8>();
        for below in (1..=TOUCHED).step_by(4096) {
            // SAFETY: within the writable part of the mapping (far larger than
            // TOUCHED above its guard page), which nothing uses yet.
            unsafe { std::ptr::write_volatile(top.sub(below), 0) };
        }
    }

    /// The stack's top, where the child starts (x86-64 and AArch64 stacks grow
    /// down; the mapping is page-aligned, so the top is 16-byte aligned).
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the mapping's end, which `clone` takes as the stack top.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, no longer used by the child (it called
        // `exec` or exited before the clone returned).
        unsafe { libc::munmap(self.base, self.len) };
    }
}
