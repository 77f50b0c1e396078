/*!
Job execution: the processes of the jobs this runner was handed.

Owns: every job's processes, from spawn to the last one of its process group; the
job's directory (`<jobs_root>/<job_id>-<attempt>/`, with `work/` inside and the
`stdout.log`/`stderr.log` files beside it); the cancellation ladder (SIGTERM to the
group, a grace period, SIGKILL); and the stream of `JobReport`s that tell the driver
what happened, in order: `Started`, then `Output`/`Truncated`, then `Exited` — or a
single `SpawnFailed`.

Layout: `executor` is the pluggable backend interface with its preflight check (seed
002); `process` is the first backend, local processes in their own process group;
`job_account` runs them as an account of their own when the runner is root;
`spare_dir` keeps a job folder made ahead of time; `retention` removes ended jobs'
folders once their term is up;
`output` copies a job's output to its log files and to the reports with bounded
memory; `supervisor` is what the driver holds; `report` is what comes back.

Must not: import `crate::core::machine` or decide outcomes. Whether an exit means
succeeded, failed, cancelled or timed out is the core's call, from the exit status and
why it asked for the cancel; this module only reports what it saw. The one name it
takes from `crate::core` is `Event`, to hand reports over in the core's vocabulary.
*/

mod executor;
mod job_account;
mod output;
mod process;
mod report;
mod retention;
mod spare_dir;
mod supervisor;

pub use executor::{Executor, ExecutorError, JobControl, JobEnd, RunningJob, SpawnRequest};
pub use job_account::{JobAccount, move_job_folders};
pub use output::{CHUNK_BYTES, CREDITS_PER_STREAM, OutputChunk, OutputSink, StreamSink};
pub use process::{JobsLayout, ProcessExecutor, default_path, job_dir};
pub use report::JobReport;
pub use retention::{Janitor, Retention, stamp_end};
pub use supervisor::JobSupervisor;
