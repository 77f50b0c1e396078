/*!
What a job's supervisor makes before its plan comes (`Ready`): a spare supervisor waits
for its plan while the runner is idle, so none of it is on a job start's path. Its
runtime, its own start time, the child subreaper, the job's pipes, `/dev/null` and the
child's stack (`spawn::Ahead`), and a rehearsal of the start's code on a sample plan.

Must not: start a thread (the job is started with `CLONE_VM`, and its steps must meet
no lock another thread holds), touch a file beyond `/dev/null` and `/proc`, or wait
for anything.
*/

use std::io;

use crate::protocol::JobRef;

use super::tree;
use super::wire::{Folder, LaunchPlan, LogId, OsBytes, Reply, WIRE_VERSION, line};

/// What a supervisor makes before its plan comes: a spare waits for its plan on an
/// idle runner, so none of this is on a job start's path. Nothing here starts a
/// thread, so the steps `spawn` runs between the job's start and its `exec` meet no
/// lock another thread held.
pub(super) struct Ready {
    /// A current-thread runtime: no thread until the job is supervised.
    pub(super) runtime: io::Result<tokio::runtime::Runtime>,
    /// This process's start (`/proc/<pid>/stat`), for `started.json`.
    pub(super) start_ticks: Option<u64>,
    pub(super) subreaper: io::Result<()>,
    /// The job's pipes and the like (`spawn::Ahead`); made at the start if not here.
    pub(super) ahead: Option<super::spawn::Ahead>,
}

impl Ready {
    pub(super) fn make() -> Self {
        // Log lines go to standard error, which becomes `supervisor.log` once the plan
        // names the folder (`log_to`); nothing is logged before that.
        let _ = tracing_subscriber::fmt()
            .with_writer(io::stderr)
            .with_ansi(false)
            .with_target(false)
            .try_init();
        Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            start_ticks: tree::stat_of(std::process::id()).map(|s| s.start_ticks),
            subreaper: tree::become_subreaper(),
            ahead: super::spawn::Ahead::make().ok(),
        }
        .rehearsed()
    }

    /// The code a start runs, run once on a sample plan before the plan comes. A spare
    /// is a fresh fork of the launcher and maps the binary's code page by page as it
    /// first runs it: the plan's parsing, the job's command, the answer faulted about
    /// 15 pages in on a start's path (on this project's VM 5–10 µs apiece, 100 µs of a
    /// start). Nothing here touches a file or another process.
    fn rehearsed(self) -> Self {
        let plan = sample_plan();
        if let Ok(plan) = LaunchPlan::parse(&String::from_utf8_lossy(&line(&plan))) {
            super::spawn::rehearse(&plan);
            std::hint::black_box(Folder::at(plan.dir.path()).lock());
        }
        std::hint::black_box(line(&Reply::Started { pid: 0 }));
        // Standard output's buffer, made on first use.
        drop(io::stdout().lock());
        self
    }
}

/// A plan of the usual shape (an environment, a few arguments, one per field), for
/// `Ready::rehearsed`.
fn sample_plan() -> LaunchPlan {
    let text = |s: &str| OsBytes::of(std::ffi::OsStr::new(s));
    let path = text("/var/lib/fyn-runner/jobs/job-1");
    LaunchPlan {
        version: WIRE_VERSION,
        job: JobRef {
            job_id: "job".into(),
            attempt: 1,
        },
        dir: path.clone(),
        program: text("/usr/bin/true"),
        argv0: text("true"),
        args: vec![text("--sample"), text("two")],
        env: vec![
            (text("PATH"), text("/usr/bin:/bin")),
            (text("HOME"), path.clone()),
        ],
        cwd: path.clone(),
        account: None,
        output_limit_bytes: 1 << 30,
        cancel_grace_ms: 1000,
        lease_ms: 60_000,
        logs: [0, 1].map(|ino| LogId {
            path: path.clone(),
            dev: 0,
            ino,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample the rehearsal cannot read would rehearse nothing, silently.
    #[test]
    fn the_rehearsals_sample_is_a_plan_this_build_reads() {
        let plan = sample_plan();
        let text = String::from_utf8(line(&plan)).expect("utf-8");
        assert_eq!(LaunchPlan::parse(&text).expect("a plan"), plan);
    }
}
