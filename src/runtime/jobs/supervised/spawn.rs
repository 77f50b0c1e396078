/*!
The job's main process, started by its supervisor: in a process group of its own, its
standard output and error into pipes the supervisor reads, standard input from
`/dev/null`, in the job's folder, as the job's account, with the file mode mask the
runner had, and asking the kernel for SIGKILL should the supervisor die.

On Linux the child is made without copying the supervisor: `clone` with `CLONE_VM |
CLONE_VFORK`, as glibc's `posix_spawn` does, so the child runs in the supervisor's
memory on a stack of its own and the supervisor waits until the job's `exec`. A `fork`
copies the supervisor's page tables, and then both sides fault on every page either
writes: measured on this project's 2-core VM, `fork` + `exec` of `true` took 300 µs
where this took 100 µs, on a job start's path (docs/architecture.md). `posix_spawn`
itself cannot drop to an account or ask for a parent-death signal, and no crate does
both, so the child's steps are written here, each one plain system call on memory
made ready before the `clone`. Other Unix systems `fork` (`std::process::Command`).

Must not: allocate, lock or touch anything but the prepared `Steps` in the child, since it
shares the supervisor's memory until its `exec`.
*/

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;

use super::wire::{AccountIds, LaunchPlan};

/// The job's main process, running.
pub(super) struct JobProcess {
    pub pid: u32,
    /// The read ends of the job's standard output and error.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Start the job `plan` describes. `job_umask` is the file mode mask the job gets (the
/// supervisor keeps a stricter one for its own files). Errors read as the standard
/// library's would: `No such file or directory (os error 2)` for a program that is not
/// there.
pub(super) fn start_job(plan: &LaunchPlan, job_umask: libc::mode_t) -> io::Result<JobProcess> {
    let (stdout, stdout_write) = io::pipe()?;
    let (stderr, stderr_write) = io::pipe()?;
    let stdin = File::open("/dev/null")?;
    let command = Command::of(plan)?;
    let pid = imp::start(&command, plan.account.as_ref(), job_umask, {
        use std::os::fd::AsRawFd;
        [
            stdin.as_raw_fd(),
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
        ]
    })?;
    // Only the job holds the write ends now, so the pipes end with its output.
    drop((stdin, stdout_write, stderr_write));
    Ok(JobProcess {
        pid,
        stdout: stdout.into(),
        stderr: stderr.into(),
    })
}

/// The plan's program, arguments, environment and folder as C strings, made before the
/// child exists.
struct Command {
    program: CString,
    /// `argv[0]` first; the pointers below point into these.
    args: Vec<CString>,
    /// `NAME=value` each.
    env: Vec<CString>,
    cwd: CString,
}

impl Command {
    fn of(plan: &LaunchPlan) -> io::Result<Self> {
        let c = |value: OsString| {
            CString::new(value.into_vec()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "nul byte found in provided data",
                )
            })
        };
        let mut args = vec![c(plan.argv0.os())?];
        for arg in &plan.args {
            args.push(c(arg.os())?);
        }
        let mut env = Vec::with_capacity(plan.env.len());
        for (name, value) in &plan.env {
            let mut pair = name.os();
            pair.push("=");
            pair.push(value.os());
            env.push(c(pair)?);
        }
        Ok(Self {
            program: c(plan.program.os())?,
            args,
            env,
            cwd: c(plan.cwd.os())?,
        })
    }
}

#[cfg(target_os = "linux")]
mod imp {
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

    pub(super) fn start(
        command: &Command,
        account: Option<&AccountIds>,
        umask: libc::mode_t,
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
        let stack = Stack::new(STACK_BYTES)?;
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
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::os::fd::{BorrowedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    use super::{AccountIds, Command};

    /// `fork` and `exec` through the standard library, with the account and the mask
    /// set between them.
    pub(super) fn start(
        command: &Command,
        account: Option<&AccountIds>,
        umask: libc::mode_t,
        stdio: [RawFd; 3],
    ) -> io::Result<u32> {
        let os = |c: &std::ffi::CString| std::ffi::OsStr::from_bytes(c.as_bytes()).to_owned();
        let stdio_of = |fd: RawFd| -> io::Result<Stdio> {
            // SAFETY: the caller keeps `fd` open for this call.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            Ok(Stdio::from(borrowed.try_clone_to_owned()?))
        };
        let mut std_command = std::process::Command::new(os(&command.program));
        std_command
            .arg0(os(&command.args[0]))
            .args(command.args[1..].iter().map(os))
            .env_clear()
            .envs(command.env.iter().filter_map(|pair| {
                let bytes = pair.as_bytes();
                let at = bytes.iter().position(|b| *b == b'=')?;
                Some((
                    std::ffi::OsStr::from_bytes(&bytes[..at]).to_owned(),
                    std::ffi::OsStr::from_bytes(&bytes[at + 1..]).to_owned(),
                ))
            }))
            .current_dir(os(&command.cwd))
            .stdin(stdio_of(stdio[0])?)
            .stdout(stdio_of(stdio[1])?)
            .stderr(stdio_of(stdio[2])?)
            .process_group(0);
        let account = account.cloned();
        let supervisor = std::process::id();
        let setup = move || -> io::Result<()> {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            };
            // SAFETY: between fork and exec only async-signal-safe calls are allowed:
            // these are plain system calls, reading memory allocated before the fork.
            unsafe {
                if let Some(account) = &account {
                    check(libc::setgroups(
                        account.groups.len() as _,
                        account.groups.as_ptr(),
                    ))?;
                    check(libc::setgid(account.gid))?;
                    check(libc::setuid(account.uid))?;
                }
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                libc::umask(umask);
                if u32::try_from(libc::getppid()).ok() != Some(supervisor) {
                    return Err(io::Error::other("the job's supervisor is gone"));
                }
            }
            Ok(())
        };
        // SAFETY: the closure makes only async-signal-safe system calls; it allocates
        // nothing and takes no lock.
        unsafe {
            std_command.pre_exec(setup);
        }
        let child = std_command.spawn()?;
        Ok(child.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::JobRef;
    use crate::runtime::jobs::supervised::wire::{LogId, OsBytes, WIRE_VERSION};
    use std::io::Read;

    fn plan(program: &str, args: &[&str], cwd: &std::path::Path) -> LaunchPlan {
        let os = |s: &str| OsBytes::of(std::ffi::OsStr::new(s));
        LaunchPlan {
            version: WIRE_VERSION,
            job: JobRef {
                job_id: "j-spawn".into(),
                attempt: 1,
            },
            dir: OsBytes::of(cwd.as_os_str()),
            program: os(program),
            argv0: os("job"),
            args: args.iter().map(|a| os(a)).collect(),
            env: vec![(os("GREETING"), os("hello there"))],
            cwd: OsBytes::of(cwd.as_os_str()),
            account: None,
            output_limit_bytes: 1 << 20,
            cancel_grace_ms: 1000,
            lease_ms: 60_000,
            logs: [0, 1].map(|ino| LogId {
                path: OsBytes::of(cwd.as_os_str()),
                dev: 0,
                ino,
            }),
        }
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut text = String::new();
        File::from(fd).read_to_string(&mut text).expect("read");
        text
    }

    /// Waits for `pid`; its exit code.
    fn wait(pid: u32) -> i32 {
        let mut status = 0;
        // SAFETY: waits for this test's own child.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &raw mut status, 0) };
        assert_eq!(rc, pid as libc::pid_t);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn the_job_runs_in_its_folder_group_and_environment_with_its_output_in_the_pipes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "echo \"$0 $GREETING $(pwd) $(umask)\"; \
                      test \"$(ps -o pgid= -p $$ | tr -d ' ')\" = $$ && echo leader; \
                      trap - PIPE; kill -0 $PPID; echo oops >&2; exec 0>&-; exit 7";
        let job = start_job(&plan("/bin/sh", &["-c", script], dir.path()), 0o027).expect("started");
        let (stdout, stderr) = (read_all(job.stdout), read_all(job.stderr));
        assert_eq!(wait(job.pid), 7);
        let here = dir.path().canonicalize().expect("canonical");
        assert_eq!(
            stdout,
            format!("job hello there {} 0027\nleader\n", here.display())
        );
        assert_eq!(stderr, "oops\n");
    }

    #[test]
    fn the_job_gets_no_signal_disposition_of_the_supervisor() {
        // The test binary, like the supervisor, ignores SIGPIPE; a job must not.
        // SAFETY: sets this process's SIGHUP to ignored, as the supervisor's is; no test
        // here counts on it.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "grep -E '^Sig(Ign|Blk)' /proc/self/status";
        let job = start_job(&plan("/bin/sh", &["-c", script], dir.path()), 0o022).expect("started");
        let stdout = read_all(job.stdout);
        assert_eq!(wait(job.pid), 0);
        let mask = |name: &str| {
            let hex = stdout
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .expect("in the status");
            u64::from_str_radix(hex.trim(), 16).expect("hex")
        };
        assert_eq!(mask("SigBlk:"), 0, "{stdout}");
        // Bit n - 1 is signal n. (glibc's own signals, 32 and 33, are out of a
        // program's reach, and whatever started the test may have ignored them.)
        let ignored = mask("SigIgn:");
        for signal in [libc::SIGHUP, libc::SIGPIPE, libc::SIGINT, libc::SIGTERM] {
            assert_eq!(
                ignored & (1 << (signal - 1)),
                0,
                "signal {signal}: {stdout}"
            );
        }
    }

    #[test]
    fn a_program_that_is_not_there_is_an_error_and_no_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-such-program");
        let error = start_job(
            &plan(missing.to_str().expect("utf-8"), &[], dir.path()),
            0o022,
        )
        .err()
        .expect("not started");
        assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
        assert_eq!(error.to_string(), "No such file or directory (os error 2)");
        // SAFETY: asks whether any child is left to wait for.
        let left = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        assert!(left <= 0, "a child was left: {left}");
    }

    #[test]
    fn a_folder_that_is_not_there_is_said_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = start_job(&plan("/bin/true", &[], &dir.path().join("gone")), 0o022)
            .err()
            .expect("not started");
        assert_eq!(
            error.to_string(),
            "cannot enter the job's folder: No such file or directory (os error 2)"
        );
    }
}
