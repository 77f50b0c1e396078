//! What the control plane does with runners and jobs: submit, assign, cancel, drain,
//! and give away the jobs of a lost runner (commands themselves are `commands.rs`'s).
//!
//! All of it runs on `Inner` under the hub's lock; the `Hub` methods at the bottom are
//! the entry points the admin API and `DevServer` share.

use std::cmp::Reverse;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::api::{EventRecord, JobInfo, JobRequest, JobState, OutputPage, RunnerInfo, RunnerState};
use super::blobs::BlobUrls;
use super::commands::largest_start_frame_len;
use super::error::DevServerError;
use super::grants::{check_inputs_stored, declared_files, sized_spec, with_files};
use super::hub::{Hub, Inner, Post};
use super::store::{DeclaredFiles, JobRow, RunnerLoad, RunnerRow, Store, StoreError};
use super::util::{now_ms, random_hex};
use crate::protocol::{Command, JobRef, JobSpec, MAX_FRAME_BYTES, OutputStream};

/// The runner-side default of `JobSpec::output_limit_bytes` (1 GiB).
const DEFAULT_OUTPUT_LIMIT: u64 = 1 << 30;
/// The runner-side default of `JobSpec::cancel_grace_secs`.
const DEFAULT_CANCEL_GRACE: u64 = 10;

impl Inner {
    // ------------------------------------------------------------ assignment

    /// Hand queued jobs, oldest first, to connected Active runners with free slots,
    /// the runner with the most free slots first. A job does not go back to a runner
    /// that may still run an older attempt of it: that runner would take the new
    /// start for a duplicate of the running job and ignore it.
    pub fn try_assign(&mut self, post: &mut Post) -> Result<(), StoreError> {
        let queued = self.store.jobs_in_state(JobState::Queued)?;
        if queued.is_empty() {
            return Ok(());
        }
        let mut free = self.free_slots()?;
        for mut job in queued {
            let held_by = job.held_by.as_deref();
            let Some(slot) = free
                .iter_mut()
                .filter(|(id, n)| *n > 0 && Some(id.as_str()) != held_by)
                .max_by_key(|(id, n)| (*n, Reverse(id.clone())))
            else {
                continue;
            };
            slot.1 -= 1;
            let runner_id = slot.0.clone();
            self.assign(&mut job, &runner_id, post)?;
        }
        Ok(())
    }

    /// Runners that may take a job now, with their free slots.
    fn free_slots(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let mut free = Vec::new();
        for (id, live) in &self.live {
            if !live.active || live.draining {
                continue;
            }
            if let Some(runner) = self.store.runner(id)? {
                let used = self.store.count_jobs_on_runner(id)?;
                free.push((id.clone(), runner.slots.saturating_sub(used)));
            }
        }
        Ok(free)
    }

    fn assign(
        &mut self,
        job: &mut JobRow,
        runner_id: &str,
        post: &mut Post,
    ) -> Result<(), StoreError> {
        job.state = JobState::Assigned;
        job.runner_id = Some(runner_id.to_owned());
        let files = self.store.job_files(&job.id)?;
        let (index, command) = self.store.atomically(|store| {
            store.save_job(job)?;
            let token = self.grant(store, job)?;
            let spec = with_files(job_spec(job), &files, &self.urls, &token);
            let command = Command::StartJob { job: spec };
            let index = store.append_command(runner_id, &command, now_ms())?;
            Ok::<_, StoreError>((index, command))
        })?;
        tracing::info!(job_id = %job.id, attempt = job.attempt, runner_id, index, "job assigned");
        self.send_command(runner_id, index, command, post);
        Ok(())
    }

    // ------------------------------------------------------------ runner-lost

    /// Runners disconnected for longer than the runner-lost threshold lose their jobs:
    /// each unfinished one is queued again as the next attempt (or cancelled, if a
    /// cancel was pending). The runner stops the old attempt on its side at the same
    /// threshold, and anything it still reports about it is ignored as stale. In case
    /// it comes back before its own clock ran out, it is also sent a `cancel_job` for
    /// the old attempt, and the job does not go back to it until that attempt ended.
    pub fn sweep_lost(&mut self, now: u64, post: &mut Post) -> Result<(), StoreError> {
        let threshold = self.params.runner_lost_threshold_ms;
        for runner in self.store.runners()? {
            if self.live.contains_key(&runner.id) {
                continue;
            }
            let Some(seen) = runner.last_seen_ms else {
                continue;
            };
            if now.saturating_sub(seen) <= threshold {
                continue;
            }
            for mut job in self.store.jobs_on_runner(&runner.id)? {
                tracing::warn!(job_id = %job.id, attempt = job.attempt, runner_id = %runner.id,
                    "runner lost: giving the job away");
                let old = job.attempt;
                let requeued = self
                    .store
                    .atomically(|store| requeue_lost(store, &mut job))?;
                self.changed();
                if requeued {
                    let cancel = Command::CancelJob {
                        job_id: job.id.clone(),
                        attempt: old,
                    };
                    self.issue(&runner.id, cancel, post)?;
                }
            }
        }
        Ok(())
    }

    /// A runner that leaves for good (`fyn-runner uninstall`): its unfinished jobs go to
    /// others and its identity is forgotten, so it can never authenticate again.
    pub fn retire_runner(&mut self, runner_id: &str, post: &mut Post) -> Result<(), StoreError> {
        for mut job in self.store.jobs_on_runner(runner_id)? {
            self.store
                .atomically(|store| requeue_lost(store, &mut job))?;
            job.held_by = None;
            self.store.save_job(&job)?;
        }
        self.live.remove(runner_id);
        self.store.delete_runner(runner_id)?;
        self.try_assign(post)
    }

    // ------------------------------------------------------------ views

    /// One runner as the admin API shows it.
    pub fn runner_info(&self, row: RunnerRow) -> Result<RunnerInfo, StoreError> {
        let load = RunnerLoad {
            jobs: self.store.count_jobs_on_runner(&row.id)?,
            unacked_commands: self.store.unacked_count(&row.id)?,
        };
        Ok(self.runner_info_with(row, load))
    }

    /// A runner as the admin API shows it, with what it holds already counted.
    fn runner_info_with(&self, row: RunnerRow, load: RunnerLoad) -> RunnerInfo {
        let live = self.live.get(&row.id);
        let used = load.jobs;
        RunnerInfo {
            state: live.map_or(RunnerState::Disconnected, |l| l.state),
            connected: live.is_some(),
            last_seen: live.map(|l| l.last_seen_ms).or(row.last_seen_ms),
            slots_free: row.slots.saturating_sub(used),
            draining: live.is_some_and(|l| l.draining),
            hardware_known: row.hardware_known && row.hardware.is_some(),
            last_command_index: row.next_command_index.saturating_sub(1),
            unacked_commands: load.unacked_commands,
            last_event_index: row.last_event_index,
            slots: row.slots,
            hardware: row.hardware,
            version: row.version,
            name: row.name,
            id: row.id,
        }
    }

    /// A job without its output (which may be any size): `held_bytes` says how much
    /// is held, `GET .../output` reads it a bounded range at a time. Its files, its
    /// key-value pairs and what its runner reported come from the job side's tables.
    pub fn job_info(&self, row: JobRow) -> Result<JobInfo, StoreError> {
        let files = self.store.job_files(&row.id)?;
        let mut kv = files.kv;
        kv.extend(self.store.kv(&row.id)?);
        let (progress, usage) = match self.store.report(&row.id, row.attempt)? {
            Some((progress, usage, _)) => (Some(progress), usage),
            None => (None, None),
        };
        Ok(JobInfo {
            inputs: files.inputs,
            outputs: files.outputs,
            kv,
            progress,
            usage,
            stdout_bytes: row.stdout_len,
            stderr_bytes: row.stderr_len,
            state: row.state,
            attempt: row.attempt,
            runner: row.runner_id,
            command: row.command,
            env: row.env,
            workdir: row.workdir,
            timeout_secs: row.timeout_secs,
            output_limit_bytes: row.output_limit_bytes,
            cancel_grace_secs: row.cancel_grace_secs,
            cancel_requested: row.cancel_requested,
            outcome: row.outcome,
            exit_status: row.exit_status,
            duration_ms: row.duration_ms,
            truncated: row.truncated,
            detail: row.detail,
            created: row.created_ms,
            id: row.id,
        })
    }
}

/// The spec of the job's current attempt, as `start_job` carries it, but for its files
/// and key-value pairs (`grants::with_files` adds them under the attempt's token).
fn job_spec(job: &JobRow) -> JobSpec {
    JobSpec {
        job_id: job.id.clone(),
        attempt: job.attempt,
        command: job.command.clone(),
        env: job.env.clone(),
        workdir: job.workdir.clone(),
        timeout_secs: job.timeout_secs,
        output_limit_bytes: job.output_limit_bytes,
        cancel_grace_secs: job.cancel_grace_secs,
        inputs: Default::default(),
        outputs: Default::default(),
        kv: Default::default(),
    }
}

/// Returns true when the job was queued again, false when it was cancelled instead.
fn requeue_lost(store: &Store, job: &mut JobRow) -> Result<bool, StoreError> {
    let lost_on = job.runner_id.take().unwrap_or_default();
    // The runner may come back before its own runner-lost clock stopped the attempt;
    // until it says the attempt ended, it must not get the job again, and a pending
    // cancel for it stays worth sending.
    job.held_by = Some(lost_on.clone());
    if job.cancel_requested {
        job.state = JobState::Cancelled;
        job.detail = Some(format!(
            "runner {lost_on} was lost while the job was being cancelled"
        ));
        store.save_job(job)?;
        return Ok(false);
    }
    job.detail = Some(format!(
        "attempt {} was lost with runner {lost_on}",
        job.attempt
    ));
    job.state = JobState::Queued;
    job.attempt += 1;
    job.outcome = None;
    job.exit_status = None;
    job.duration_ms = None;
    job.truncated = false;
    job.stdout_len = 0;
    job.stderr_len = 0;
    store.clear_output(&job.id)?;
    store.save_job(job)?;
    Ok(true)
}

/// `runner_id` no longer holds an older attempt of the job, so the job may go back to
/// it. Returns whether a hold was released.
pub(crate) fn release_hold(
    store: &Store,
    runner_id: &str,
    job_id: &str,
) -> Result<bool, StoreError> {
    let Some(mut job) = store.job(job_id)? else {
        return Ok(false);
    };
    if job.held_by.as_deref() != Some(runner_id) {
        return Ok(false);
    }
    job.held_by = None;
    store.save_job(&job)?;
    Ok(true)
}

/// A runner that started up reports the jobs it runs; it holds no older attempt of
/// any other job.
pub(crate) fn release_absent_holds(
    store: &Store,
    runner_id: &str,
    running: &[JobRef],
) -> Result<(), StoreError> {
    for job in store.jobs_held_by(runner_id)? {
        if !running.iter().any(|held| held.job_id == job.id) {
            release_hold(store, runner_id, &job.id)?;
        }
    }
    Ok(())
}

/// A new job from an admin request, validated as the runner would validate it (its
/// files as they will be handed out), and small enough that its `start_job` always
/// fits a frame: what is accepted here can reach the runner, so it never fails later
/// for a reason known now.
fn new_job(
    request: JobRequest,
    urls: &BlobUrls,
) -> Result<(JobRow, DeclaredFiles), DevServerError> {
    let files = declared_files(&request);
    let id = format!("j-{}", random_hex(8)?);
    let limits = (
        request.timeout_secs,
        request.output_limit_bytes.unwrap_or(DEFAULT_OUTPUT_LIMIT),
        request.cancel_grace_secs.unwrap_or(DEFAULT_CANCEL_GRACE),
    );
    let mut job = JobRow::queued(id, request.command, request.env, limits, now_ms());
    job.workdir = request.workdir;
    let spec = sized_spec(job_spec(&job), &files, urls);
    spec.validate()?;
    let size = largest_start_frame_len(&spec);
    if size > MAX_FRAME_BYTES {
        return Err(DevServerError::JobTooLarge {
            size,
            limit: MAX_FRAME_BYTES,
        });
    }
    Ok((job, files))
}

/// The largest `limit` one output read returns.
pub const MAX_OUTPUT_READ: u64 = 1 << 20;

/// Read a range of a job's output under the lock; bounded by `limit` (at most
/// `MAX_OUTPUT_READ`).
fn read_output(
    store: &Store,
    id: &str,
    stream: OutputStream,
    offset: u64,
    limit: u64,
) -> Result<OutputPage, DevServerError> {
    let job = store
        .job(id)?
        .ok_or_else(|| DevServerError::JobNotFound(id.to_owned()))?;
    let held = job.output_len(stream);
    let limit = limit.min(MAX_OUTPUT_READ);
    let data = if offset < held {
        store.output_range(id, stream, offset, limit)?
    } else {
        Vec::new()
    };
    let next_offset = offset + data.len() as u64;
    Ok(OutputPage {
        job_id: job.id,
        attempt: job.attempt,
        stream,
        offset,
        data: STANDARD.encode(&data),
        next_offset,
        held_bytes: held,
        complete: job.state.is_terminal() && next_offset >= held,
        state: job.state,
    })
}

// ---------------------------------------------------------------- entry points

impl Hub {
    pub fn mint_token(&self) -> Result<String, DevServerError> {
        let token = random_hex(24)?;
        self.with(|inner, _| inner.store.insert_token(&token, now_ms()))?;
        Ok(token)
    }

    pub fn submit_job(&self, request: JobRequest) -> Result<String, DevServerError> {
        self.with(|inner, post| -> Result<String, DevServerError> {
            let (job, files) = new_job(request, &inner.urls)?;
            check_inputs_stored(&inner.store, &files.inputs)?;
            inner.store.atomically(|store| -> Result<(), StoreError> {
                store.insert_job(&job)?;
                store.set_job_files(&job.id, &files)
            })?;
            inner.try_assign(post)?;
            tracing::info!(job_id = %job.id, "job queued");
            Ok(job.id)
        })
    }

    /// A queued job is cancelled at once; one on a runner gets a `cancel_job` and ends
    /// when the runner reports it finished. Asking twice sends one command.
    pub fn cancel_job(&self, id: &str) -> Result<JobInfo, DevServerError> {
        self.with(|inner, post| {
            let mut job = inner
                .store
                .job(id)?
                .ok_or_else(|| DevServerError::JobNotFound(id.to_owned()))?;
            match job.state {
                JobState::Queued => {
                    job.state = JobState::Cancelled;
                    inner.store.save_job(&job)?;
                    inner.changed();
                }
                state if state.on_runner() => {
                    if !job.cancel_requested {
                        job.cancel_requested = true;
                        inner.store.save_job(&job)?;
                        let runner_id = job.runner_id.clone().unwrap_or_default();
                        let command = Command::CancelJob {
                            job_id: job.id.clone(),
                            attempt: job.attempt,
                        };
                        inner.issue(&runner_id, command, post)?;
                    }
                }
                state => {
                    return Err(DevServerError::NotCancellable {
                        id: id.to_owned(),
                        state,
                    });
                }
            }
            Ok(inner.job_info(job)?)
        })
    }

    pub fn drain_runner(
        &self,
        id: &str,
        deadline_secs: Option<u64>,
    ) -> Result<u64, DevServerError> {
        self.with(|inner, post| {
            if inner.store.runner(id)?.is_none() {
                return Err(DevServerError::RunnerNotFound(id.to_owned()));
            }
            if let Some(live) = inner.live.get_mut(id) {
                live.draining = true;
            }
            Ok(inner.issue(id, Command::Drain { deadline_secs }, post)?)
        })
    }

    pub fn runners(&self) -> Result<Vec<RunnerInfo>, DevServerError> {
        self.with(|inner, _| {
            let rows = inner.store.runners()?;
            let loads = inner.store.runner_loads()?;
            Ok(rows
                .into_iter()
                .map(|row| {
                    let load = loads.get(&row.id).copied().unwrap_or_default();
                    inner.runner_info_with(row, load)
                })
                .collect())
        })
    }

    pub fn runner(&self, id: &str) -> Result<Option<RunnerInfo>, DevServerError> {
        self.with(|inner, _| {
            let row = inner.store.runner(id)?;
            Ok(row.map(|row| inner.runner_info(row)).transpose()?)
        })
    }

    pub fn events(&self, runner_id: &str) -> Result<Vec<EventRecord>, DevServerError> {
        self.with(|inner, _| {
            if inner.store.runner(runner_id)?.is_none() {
                return Err(DevServerError::RunnerNotFound(runner_id.to_owned()));
            }
            Ok(inner.store.events(runner_id)?)
        })
    }

    /// One page of a runner's events: at most `limit` with an index above `after`.
    pub fn events_page(
        &self,
        runner_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, DevServerError> {
        self.with(|inner, _| {
            if inner.store.runner(runner_id)?.is_none() {
                return Err(DevServerError::RunnerNotFound(runner_id.to_owned()));
            }
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            Ok(inner.store.events_after(runner_id, after, limit)?)
        })
    }

    pub fn jobs(&self) -> Result<Vec<JobInfo>, DevServerError> {
        self.with(|inner, _| {
            let rows = inner.store.jobs()?;
            Ok(rows
                .into_iter()
                .map(|row| inner.job_info(row))
                .collect::<Result<_, StoreError>>()?)
        })
    }

    pub fn job(&self, id: &str) -> Result<Option<JobInfo>, DevServerError> {
        self.with(|inner, _| {
            let row = inner.store.job(id)?;
            Ok(row.map(|row| inner.job_info(row)).transpose()?)
        })
    }

    /// At most `limit` bytes of a job's output from `offset` on.
    pub fn output(
        &self,
        id: &str,
        stream: OutputStream,
        offset: u64,
        limit: u64,
    ) -> Result<OutputPage, DevServerError> {
        self.with(|inner, _| read_output(&inner.store, id, stream, offset, limit))
    }

    /// All of a job's output held for a stream (in-process callers only: it is as large
    /// as the job made it).
    pub fn output_bytes(&self, id: &str, stream: OutputStream) -> Result<Vec<u8>, DevServerError> {
        self.with(|inner, _| {
            if inner.store.job(id)?.is_none() {
                return Err(DevServerError::JobNotFound(id.to_owned()));
            }
            Ok(inner.store.output(id, stream)?)
        })
    }

    /// One pass of the periodic task: runner-lost detection, then assignment (which
    /// also picks up anything a missed trigger left queued).
    pub fn tick(&self) -> Result<(), StoreError> {
        self.with(|inner, post| {
            inner.sweep_lost(now_ms(), post)?;
            inner.try_assign(post)
        })
    }
}
