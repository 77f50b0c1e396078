/*!
Job execution: the processes of the jobs this runner was handed.

Owns: every job's processes, from spawn to the last one of its process group; the
job's directory (`<jobs_root>/<job_id>-<attempt>/`, with `work/` inside and the
`stdout.log`/`stderr.log` files beside it); on Unix the job's supervisor process and
its folder (`<jobs_root>/.supervisors/<key>/`); the cancellation ladder (SIGTERM to the
job's processes, a grace period, SIGKILL); what became of the jobs an earlier run
started; and the stream of `JobReport`s that tell the driver what happened, in order:
`Started`, then `Output`/`Truncated`, then `Exited` — or a single `SpawnFailed`; for a
job of an earlier run, `Found` first.

Layout: `executor` is the pluggable backend interface with its preflight check (seed
002); `process` is the first backend, local processes, prepared there and started
under a supervisor of their own on Unix (`supervised/`, which also holds the
supervisor program, `fyn-runner supervise`) or by the runner in a job object on
Windows (`in_process`); `job_account` runs them as an account of their own when the
runner is root; `spare_dir` keeps a job folder made ahead of time; `retention` removes
ended jobs' folders once their term is up; `output` holds the credits that bound a
job's output in memory; `supervisor` is what the driver holds (`JobSupervisor`, the
runner's side of every job); `report` is what comes back.

Must not: import `crate::core::machine` or decide outcomes. Whether an exit means
succeeded, failed, cancelled or timed out is the core's call, from the exit status and
why it asked for the cancel; this module only reports what it saw. The one name it
takes from `crate::core` is `Event`, to hand reports over in the core's vocabulary.
*/

mod executor;
#[cfg(windows)]
mod in_process;
mod job_account;
mod output;
mod process;
mod report;
mod retention;
mod spare_dir;
#[cfg(unix)]
mod supervised;
mod supervisor;

pub use executor::{
    Executor, ExecutorError, FindRequest, Finding, JobControl, JobEnd, OutputProgress,
    PreparedFolder, ProcessUsage, RunningJob, SpawnRequest, StreamProgress,
};
pub use job_account::{JobAccount, move_job_folders};
pub use output::{CHUNK_BYTES, CREDITS_PER_STREAM, OutputChunk, OutputSink, StreamSink};
pub use process::{JobsLayout, ProcessExecutor, default_path, job_dir, supervisor_program};
pub use report::{FoundState, JobReport};
pub use spare_dir::BoundSocket;
#[cfg(unix)]
pub(crate) use supervised::tree as supervised_tree;
#[cfg(unix)]
pub use supervised::{end_all as end_supervised_jobs, main as supervise_main};

/// The folder a job's supervisor keeps, once its job's end is committed: removed.
/// Nothing on Windows, where jobs have no supervisor.
pub fn forget_supervisor(jobs_root: &std::path::Path, job: &crate::protocol::JobRef) {
    #[cfg(unix)]
    {
        let folder = supervised::wire::Folder::of(jobs_root, job);
        if let Err(error) = std::fs::remove_dir_all(folder.path())
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(folder = %folder.path().display(), %error, "cannot remove an ended job's supervisor folder");
        }
    }
    #[cfg(windows)]
    let _ = (jobs_root, job);
}
pub use retention::{Janitor, Retention, stamp_end};
pub use supervisor::{JobSupervisor, Launched};
