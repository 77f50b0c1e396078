/*!
`fyn-runner ctl`: the dev-server's admin API from the command line, instead of `curl`.

Owns: the admin API client (`client.rs`), following a job's output (`follow.rs`), the
tables people read (`render.rs`), and what each command does and exits with. The clap
definitions are `cli::ctl`'s; this module takes plain values.

Must not: touch the runner's state or the dev-server's internals. It speaks HTTP to
the admin API like any other client, using the API's own JSON types
(`devserver::{JobInfo, RunnerInfo, ...}`).

Exit codes (also in `--help` and docs/dev-server.md): 0 done; 1 the API refused or
failed (400, 409, 5xx) or answered something unreadable; 2 bad usage; 3 no such job
or runner; 4 not authorized (no or wrong admin token, Host or Origin refused); 5 the
server cannot be reached. `submit --wait` exits with the job's own code instead (see
`job_exit_code`), and 125 when ctl itself failed.
*/

mod client;
mod files;
mod follow;
mod render;

use std::collections::BTreeMap;
use std::io::Write;

use crate::devserver::{
    CommandIssued, DrainRequest, JobCreated, JobInfo, JobRequest, JobState, RunnerInfo,
    TokenCreated,
};
use crate::protocol::{ExitStatus, JobOutcome, OutputStream};

pub use client::{Client, find_token, parse_server};
pub use files::{fetch, parse_input, results};
pub use follow::Streams;

/// The server `ctl` talks to when neither `--server` nor the variable says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7480";

/// `submit --wait`: the job was cancelled.
pub const EXIT_CANCELLED: i32 = 122;
/// `submit --wait`: the runner was lost with the job.
pub const EXIT_LOST: i32 = 123;
/// `submit --wait`: the job ran past its timeout (as `timeout(1)` says).
pub const EXIT_TIMED_OUT: i32 = 124;
/// `submit --wait`: ctl itself failed (as `docker run` says).
pub const EXIT_CTL_FAILED: i32 = 125;
/// `submit --wait`: the job never ran a process (refused, or could not start).
pub const EXIT_NOT_RUN: i32 = 126;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the dev-server at {server}: {why}")]
    Unreachable { server: String, why: String },
    #[error("not authorized: {0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the API refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the API's answer does not read: {0}")]
    BadAnswer(String),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CtlError {
    fn from_status(status: u16, message: String) -> Self {
        match status {
            401 | 403 => Self::Unauthorized(message),
            404 => Self::NotFound(message),
            _ => Self::Refused { status, message },
        }
    }

    /// The exit code this error ends `ctl` with.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Refused { .. } | Self::BadAnswer(_) | Self::Output(_) => 1,
            Self::Usage(_) => 2,
            Self::NotFound(_) => 3,
            Self::Unauthorized(_) => 4,
            Self::Unreachable { .. } => 5,
        }
    }
}

/// How to print: tables and sentences for people, the API's JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// What `submit` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub timeout_secs: u64,
    pub output_limit_bytes: Option<u64>,
    pub cancel_grace_secs: Option<u64>,
    /// Local files, and where each goes in the job's `work/`.
    pub inputs: Vec<(std::path::PathBuf, String)>,
    /// Paths or globs below `work/` uploaded after the process ended.
    pub outputs: Vec<String>,
    pub kv: BTreeMap<String, String>,
}

/// An output as the API takes it: a glob when it has a glob character, else a path.
fn output_request(text: &str) -> crate::devserver::OutputRequest {
    let glob = text.contains(['*', '?', '[']);
    crate::devserver::OutputRequest {
        path: (!glob).then(|| text.to_owned()),
        glob: glob.then(|| text.to_owned()),
    }
}

fn print(text: &str) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), CtlError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| CtlError::BadAnswer(e.to_string()))?;
    print(&(text + "\n"))
}

/// Milliseconds since the Unix epoch, to say how long ago the API's times were.
#[allow(clippy::disallowed_methods)] // a command-line client: the clock is its own
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn path_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

pub async fn runners(client: &Client, format: Format) -> Result<i32, CtlError> {
    let runners: Vec<RunnerInfo> = client.get("/admin/v1/runners").await?;
    match format {
        Format::Json => print_json(&runners)?,
        Format::Human => print(&render::runners(&runners, now_ms()))?,
    }
    Ok(0)
}

pub async fn runner(client: &Client, id: &str, format: Format) -> Result<i32, CtlError> {
    let path = format!("/admin/v1/runners/{}", path_segment(id));
    let runner: RunnerInfo = client.get(&path).await?;
    match format {
        Format::Json => print_json(&runner)?,
        Format::Human => print(&render::runner(&runner, now_ms()))?,
    }
    Ok(0)
}

pub async fn create_token(client: &Client, format: Format) -> Result<i32, CtlError> {
    let created: TokenCreated = client
        .post("/admin/v1/registration-tokens", None::<&()>)
        .await?;
    match format {
        Format::Json => print_json(&created)?,
        Format::Human => print(&format!("{}\n", created.token))?,
    }
    Ok(0)
}

pub async fn jobs(client: &Client, format: Format) -> Result<i32, CtlError> {
    let jobs: Vec<JobInfo> = client.get("/admin/v1/jobs").await?;
    match format {
        Format::Json => print_json(&jobs)?,
        Format::Human => print(&render::jobs(&jobs, now_ms()))?,
    }
    Ok(0)
}

async fn fetch_job(client: &Client, id: &str) -> Result<JobInfo, CtlError> {
    client
        .get(&format!("/admin/v1/jobs/{}", path_segment(id)))
        .await
}

pub async fn job(client: &Client, id: &str, format: Format) -> Result<i32, CtlError> {
    let job = fetch_job(client, id).await?;
    match format {
        Format::Json => print_json(&job)?,
        Format::Human => print(&render::job(&job, now_ms()))?,
    }
    Ok(0)
}

/// Submit a job; with `wait`, follow its output (people) or wait quietly (JSON), then
/// exit with the job's code. Errors of ctl itself are `EXIT_CTL_FAILED` then, so they
/// cannot pass for the job's own codes 1 to 5.
pub async fn submit(
    client: &Client,
    submission: Submission,
    wait: bool,
    format: Format,
) -> Result<i32, CtlError> {
    let inputs = files::store_inputs(client, &submission.inputs).await?;
    let request = JobRequest {
        command: submission.command,
        env: submission.env,
        workdir: submission.workdir,
        timeout_secs: submission.timeout_secs,
        output_limit_bytes: submission.output_limit_bytes,
        cancel_grace_secs: submission.cancel_grace_secs,
        inputs,
        outputs: submission
            .outputs
            .iter()
            .map(|o| output_request(o))
            .collect(),
        kv: submission.kv,
    };
    let created: JobCreated = client.post("/admin/v1/jobs", Some(&request)).await?;
    if !wait {
        match format {
            Format::Json => print_json(&created)?,
            Format::Human => print(&format!("{}\n", created.id))?,
        }
        return Ok(0);
    }
    let waited = async {
        if format == Format::Human {
            eprintln!(
                "fyn-runner ctl: submitted {}; following its output",
                created.id
            );
            follow::follow(
                client,
                &created.id,
                Streams::Both,
                true,
                follow::Sink::Terminal,
            )
            .await?;
        } else {
            follow::follow(
                client,
                &created.id,
                Streams::Both,
                true,
                follow::Sink::Discard,
            )
            .await?;
        }
        fetch_job(client, &created.id).await
    };
    let job = match waited.await {
        Ok(job) => job,
        Err(error) => {
            eprintln!("fyn-runner ctl: {error}");
            return Ok(EXIT_CTL_FAILED);
        }
    };
    match format {
        Format::Json => print_json(&job)?,
        Format::Human => eprintln!("fyn-runner ctl: {}", render::ending(&job)),
    }
    Ok(job_exit_code(&job))
}

/// What `submit --wait` exits with for an ended job: its exit code; 128 + the signal
/// that killed it; `EXIT_TIMED_OUT`, `EXIT_CANCELLED`, `EXIT_LOST` for those ends;
/// `EXIT_NOT_RUN` for a job that never ran a process.
pub fn job_exit_code(job: &JobInfo) -> i32 {
    match (job.state, job.outcome, job.exit_status) {
        (_, Some(JobOutcome::TimedOut), _) => EXIT_TIMED_OUT,
        (_, Some(JobOutcome::Cancelled), _) | (JobState::Cancelled, _, _) => EXIT_CANCELLED,
        (_, Some(JobOutcome::Lost), _) | (JobState::Lost, _, _) => EXIT_LOST,
        (_, _, Some(ExitStatus::Exited { code })) if (0..=255).contains(&code) => code,
        // A Windows status (an NTSTATUS and the like) does not fit an exit code.
        (_, _, Some(ExitStatus::Exited { .. })) => 1,
        (_, _, Some(ExitStatus::Signaled { signal })) => 128 + signal.clamp(0, 127),
        _ => EXIT_NOT_RUN,
    }
}

/// Print a job's output: what is held, or (`follow`) until the job ends.
pub async fn logs(
    client: &Client,
    id: &str,
    streams: Streams,
    follow_on: bool,
    format: Format,
) -> Result<i32, CtlError> {
    let sink = match format {
        Format::Human => follow::Sink::Terminal,
        Format::Json => follow::Sink::JsonLines,
    };
    follow::follow(client, id, streams, follow_on, sink).await?;
    Ok(0)
}

pub async fn cancel(client: &Client, id: &str, format: Format) -> Result<i32, CtlError> {
    let path = format!("/admin/v1/jobs/{}/cancel", path_segment(id));
    let job: JobInfo = client.post(&path, None::<&()>).await?;
    match format {
        Format::Json => print_json(&job)?,
        Format::Human if job.state == JobState::Cancelled => {
            print(&format!("{}: cancelled\n", job.id))?;
        }
        Format::Human => print(&format!(
            "{}: cancel sent to runner {}; the job ends when the runner reports it\n",
            job.id,
            job.runner.as_deref().unwrap_or("-")
        ))?,
    }
    Ok(0)
}

pub async fn drain(
    client: &Client,
    runner_id: &str,
    deadline_secs: Option<u64>,
    format: Format,
) -> Result<i32, CtlError> {
    let path = format!("/admin/v1/runners/{}/drain", path_segment(runner_id));
    let issued: CommandIssued = client
        .post(&path, Some(&DrainRequest { deadline_secs }))
        .await?;
    match format {
        Format::Json => print_json(&issued)?,
        Format::Human => print(&format!(
            "{runner_id}: drain sent (command {}); it takes no new job and stops when its jobs are done\n",
            issued.command_index
        ))?,
    }
    Ok(0)
}

/// Which output stream a single-stream read names, for the API's `stream=`.
fn stream_name(stream: OutputStream) -> &'static str {
    match stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(state: JobState, outcome: Option<JobOutcome>, status: Option<ExitStatus>) -> JobInfo {
        JobInfo {
            id: "j-1".into(),
            state,
            attempt: 1,
            runner: None,
            command: vec!["x".into()],
            env: BTreeMap::new(),
            workdir: None,
            timeout_secs: 1,
            output_limit_bytes: 1,
            cancel_grace_secs: 1,
            cancel_requested: false,
            outcome,
            exit_status: status,
            duration_ms: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            truncated: false,
            detail: None,
            created: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
            kv: BTreeMap::new(),
            progress: None,
            usage: None,
        }
    }

    #[test]
    fn exit_codes_say_how_the_job_ended() {
        use JobState::{Cancelled, Failed, Finished, Lost};
        let code = |s, o, e| job_exit_code(&ended(s, o, e));
        let exited = |code| Some(ExitStatus::Exited { code });
        let failed = Some(JobOutcome::Failed);
        assert_eq!(code(Finished, Some(JobOutcome::Succeeded), exited(0)), 0);
        assert_eq!(code(Finished, failed, exited(3)), 3);
        assert_eq!(code(Finished, failed, exited(-1073741819)), 1);
        let killed = Some(ExitStatus::Signaled { signal: 9 });
        assert_eq!(code(Finished, failed, killed), 137);
        let timed_out = Some(JobOutcome::TimedOut);
        assert_eq!(code(Finished, timed_out, killed), EXIT_TIMED_OUT);
        let cancelled = Some(JobOutcome::Cancelled);
        assert_eq!(code(Cancelled, cancelled, killed), EXIT_CANCELLED);
        assert_eq!(code(Cancelled, None, None), EXIT_CANCELLED);
        assert_eq!(code(Lost, Some(JobOutcome::Lost), None), EXIT_LOST);
        assert_eq!(code(Failed, None, None), EXIT_NOT_RUN);
        assert_eq!(
            code(Finished, failed, Some(ExitStatus::Unknown)),
            EXIT_NOT_RUN
        );
    }

    #[test]
    fn error_kinds_have_their_exit_codes() {
        assert_eq!(CtlError::from_status(401, String::new()).exit_code(), 4);
        assert_eq!(CtlError::from_status(403, String::new()).exit_code(), 4);
        assert_eq!(CtlError::from_status(404, String::new()).exit_code(), 3);
        assert_eq!(CtlError::from_status(400, String::new()).exit_code(), 1);
        assert_eq!(CtlError::from_status(500, String::new()).exit_code(), 1);
        let gone = CtlError::Unreachable {
            server: "x".into(),
            why: "y".into(),
        };
        assert_eq!(gone.exit_code(), 5);
    }
}
