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
made ready before the `clone` (`clone.rs`). Other Unix systems `fork`
(`std::process::Command`, `fork.rs`).

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
    /// To let go of once the runner has its answer.
    pub leftovers: Leftovers,
}

/// What a start needs that no plan decides: the job's standard input (`/dev/null`),
/// the pipes for its output, and on Linux the child's stack. A spare supervisor makes
/// it while it waits for its plan, off a start's path.
pub(super) struct Ahead {
    stdin: File,
    stdout: (io::PipeReader, io::PipeWriter),
    stderr: (io::PipeReader, io::PipeWriter),
    child: imp::ChildAhead,
}

impl Ahead {
    pub(super) fn make() -> io::Result<Self> {
        Ok(Self {
            stdin: File::open("/dev/null")?,
            stdout: io::pipe()?,
            stderr: io::pipe()?,
            child: imp::ChildAhead::make()?,
        })
    }
}

/// What the supervisor lets go of once the runner has its answer, not before: the
/// stack's unmapping is no part of the answer. (The pipes' write ends are closed at
/// once: only the job holds them then, so the pipes end with its output.)
pub(super) struct Leftovers {
    dev_null: File,
    _child: imp::ChildAhead,
}

impl Leftovers {
    /// The job's `/dev/null`, kept for the supervisor's own standard input and output
    /// once it lets go of the runner's pipes; the rest goes.
    pub(super) fn into_dev_null(self) -> File {
        self.dev_null
    }
}

/// Start the job `plan` describes, with what was made `ahead`. `job_umask` is the file
/// mode mask the job gets (the supervisor keeps a stricter one for its own files).
/// Errors read as the standard library's would: `No such file or directory (os error
/// 2)` for a program that is not there.
pub(super) fn start_job(
    plan: &LaunchPlan,
    job_umask: libc::mode_t,
    ahead: Ahead,
) -> io::Result<JobProcess> {
    let Ahead {
        stdin,
        stdout: (stdout, stdout_write),
        stderr: (stderr, stderr_write),
        child,
    } = ahead;
    let command = Command::of(plan)?;
    let pid = imp::start(&command, plan.account.as_ref(), job_umask, &child, {
        use std::os::fd::AsRawFd;
        [
            stdin.as_raw_fd(),
            stdout_write.as_raw_fd(),
            stderr_write.as_raw_fd(),
        ]
    })?;
    drop((stdout_write, stderr_write));
    Ok(JobProcess {
        pid,
        stdout: stdout.into(),
        stderr: stderr.into(),
        leftovers: Leftovers {
            dev_null: stdin,
            _child: child,
        },
    })
}

/// What `start_job` does with a plan short of starting anything, for a spare to run
/// once on a sample before its plan comes (`program::rehearse`).
pub(super) fn rehearse(plan: &LaunchPlan) {
    if let Ok(command) = Command::of(plan) {
        imp::rehearse(&command);
    }
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
#[path = "clone.rs"]
mod imp;
#[cfg(not(target_os = "linux"))]
#[path = "fork.rs"]
mod imp;

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

    fn ahead() -> Ahead {
        Ahead::make().expect("made ahead")
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
        let job = start_job(
            &plan("/bin/sh", &["-c", script], dir.path()),
            0o027,
            ahead(),
        )
        .expect("started");
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
        let job = start_job(
            &plan("/bin/sh", &["-c", script], dir.path()),
            0o022,
            ahead(),
        )
        .expect("started");
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
            ahead(),
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
        let error = start_job(
            &plan("/bin/true", &[], &dir.path().join("gone")),
            0o022,
            ahead(),
        )
        .err()
        .expect("not started");
        assert_eq!(
            error.to_string(),
            "cannot enter the job's folder: No such file or directory (os error 2)"
        );
    }
}
