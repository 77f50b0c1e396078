//! A job's files on the control plane's side: the URLs its attempt is handed (and the
//! token in them that stands for that attempt, like a presigned URL's signature: a
//! runner holds no admin token), what a blob request may reach with a token, the
//! uploads that arrive, and the results read back through the admin API.
//!
//! A token is derived from a secret drawn at start, the job and the attempt, and
//! stored with them: a new attempt gets a new one, and the old one stops working.

use sha2::{Digest, Sha256};

use super::api::JobRequest;
use super::blobs::BlobUrls;
use super::error::DevServerError;
use super::hub::{Hub, Inner};
use super::job_side::{InputRequest, JobResults, OutputRequest};
use super::store::{DeclaredFiles, JobRow, Store, StoreError};
use super::util::now_ms;
use crate::protocol::{
    InputFile, JobSpec, OutputFile, OutputTarget, glob_matches, to_hex, validate_file_path,
};

/// The key tokens are derived with; drawn once per server start.
#[derive(Clone)]
pub(crate) struct GrantKey([u8; 32]);

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantKey(..)")
    }
}

impl GrantKey {
    pub fn draw() -> Result<Self, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(Self(key))
    }

    /// 32 hex digits that cannot be guessed without the key.
    fn token(&self, job_id: &str, attempt: u32) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.0);
        hasher.update(job_id.as_bytes());
        hasher.update(b":");
        hasher.update(attempt.to_be_bytes());
        to_hex(&hasher.finalize()[..16])
    }
}

/// The same length as a real token, for sizing a `start_job` before any attempt.
const PLACEHOLDER_TOKEN: &str = "00000000000000000000000000000000";

/// The `JobSpec` fields a job's declarations become under a token.
fn spec_files(
    files: &DeclaredFiles,
    urls: &BlobUrls,
    token: &str,
) -> (Vec<InputFile>, Vec<OutputFile>) {
    let inputs = files
        .inputs
        .iter()
        .map(|input| InputFile {
            url: urls.input(token, &input.sha256),
            sha256: input.sha256.clone(),
            path: input.path.clone(),
            executable: input.executable,
        })
        .collect();
    let outputs = files
        .outputs
        .iter()
        .enumerate()
        .map(|(index, output)| OutputFile {
            path: output.path.clone(),
            glob: output.glob.clone(),
            url: urls.output(token, index, output.glob.is_some()),
        })
        .collect();
    (inputs, outputs)
}

/// `spec` with the job's files attached under `token`.
pub(crate) fn with_files(
    mut spec: JobSpec,
    files: &DeclaredFiles,
    urls: &BlobUrls,
    token: &str,
) -> JobSpec {
    let (inputs, outputs) = spec_files(files, urls, token);
    spec.inputs = inputs;
    spec.outputs = outputs;
    spec.kv = files.kv.clone();
    spec
}

/// What a job request declares, checked as far as the request alone allows (the
/// blobs' presence is checked against the store).
pub(crate) fn declared_files(request: &JobRequest) -> DeclaredFiles {
    DeclaredFiles {
        inputs: request.inputs.clone(),
        outputs: request.outputs.clone(),
        kv: request.kv.clone(),
    }
}

/// The spec of a new job as a runner would get it, for validation and sizing.
pub(crate) fn sized_spec(spec: JobSpec, files: &DeclaredFiles, urls: &BlobUrls) -> JobSpec {
    with_files(spec, files, urls, PLACEHOLDER_TOKEN)
}

impl Inner {
    /// A fresh token for the job's current attempt, stored: its spec's URLs carry it.
    pub fn grant(&self, store: &Store, job: &JobRow) -> Result<String, StoreError> {
        let token = self.grant_key.token(&job.id, job.attempt);
        store.grant(&job.id, job.attempt, &token)?;
        Ok(token)
    }

    /// The job and attempt a token stands for, if that attempt is still on its runner.
    fn live_grant(&self, token: &str) -> Result<(JobRow, DeclaredFiles), DevServerError> {
        let (job_id, attempt) = self
            .store
            .granted(token)?
            .ok_or(DevServerError::NoSuchGrant)?;
        let job = self
            .store
            .job(&job_id)?
            .ok_or(DevServerError::NoSuchGrant)?;
        if job.attempt != attempt || !job.state.on_runner() {
            return Err(DevServerError::GrantEnded { job_id, attempt });
        }
        let files = self.store.job_files(&job_id)?;
        Ok((job, files))
    }
}

/// Where an upload of output `index` (at `rest` below a glob's URL) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UploadTarget {
    pub job_id: String,
    pub attempt: u32,
    /// Below the job's `work/`.
    pub path: String,
}

impl Hub {
    /// The size of input `sha256`, if `token`'s attempt declared it and it is stored.
    pub fn input_grant(&self, token: &str, sha256: &str) -> Result<u64, DevServerError> {
        self.with(|inner, _| {
            let (job, files) = inner.live_grant(token)?;
            if !files.inputs.iter().any(|input| input.sha256 == sha256) {
                return Err(DevServerError::NotDeclared(format!(
                    "job {:?} has no input {sha256}",
                    job.id
                )));
            }
            inner
                .store
                .blob_size(sha256)?
                .ok_or_else(|| DevServerError::BlobNotFound(sha256.to_owned()))
        })
    }

    /// Where an upload to output `index` of `token`'s attempt goes: the declared path,
    /// or for a glob `rest`, which must match it.
    pub fn upload_target(
        &self,
        token: &str,
        index: usize,
        rest: Option<&str>,
    ) -> Result<UploadTarget, DevServerError> {
        self.with(|inner, _| {
            let (job, files) = inner.live_grant(token)?;
            let declared = files.outputs.get(index).ok_or_else(|| {
                DevServerError::NotDeclared(format!("job {:?} has no output {index}", job.id))
            })?;
            let path = upload_path(declared, rest)?;
            Ok(UploadTarget {
                job_id: job.id,
                attempt: job.attempt,
                path,
            })
        })
    }

    /// A stored blob arrived for `target`: recorded as that output's upload (a second
    /// upload of the same path replaces the first), if the attempt is still current.
    pub fn record_upload(
        &self,
        target: &UploadTarget,
        sha256: &str,
        size: u64,
    ) -> Result<(), DevServerError> {
        self.with(|inner, _| {
            let current = inner
                .store
                .job(&target.job_id)?
                .is_some_and(|job| job.attempt == target.attempt && job.state.on_runner());
            if !current {
                return Err(DevServerError::GrantEnded {
                    job_id: target.job_id.clone(),
                    attempt: target.attempt,
                });
            }
            inner.store.atomically(|store| -> Result<(), StoreError> {
                store.insert_blob(sha256, size, now_ms())?;
                store.result_uploaded(&target.job_id, target.attempt, &target.path, sha256, size)
            })?;
            inner.changed();
            Ok(())
        })
    }

    /// A blob stored through the admin API.
    pub fn record_blob(&self, sha256: &str, size: u64) -> Result<(), DevServerError> {
        self.with(|inner, _| Ok(inner.store.insert_blob(sha256, size, now_ms())?))
    }

    /// The results of the job's current attempt.
    pub fn results(&self, job_id: &str) -> Result<JobResults, DevServerError> {
        self.with(|inner, _| {
            let job = inner
                .store
                .job(job_id)?
                .ok_or_else(|| DevServerError::JobNotFound(job_id.to_owned()))?;
            let files = inner.store.results(job_id, job.attempt)?;
            let missing = inner
                .store
                .report(job_id, job.attempt)?
                .and_then(|(_, _, missing)| missing);
            Ok(JobResults {
                job_id: job.id,
                attempt: job.attempt,
                files,
                complete: missing.is_some(),
                missing: missing.unwrap_or_default(),
            })
        })
    }

    /// The blob holding result `path` of the job's current attempt, and its size.
    pub fn result_blob(&self, job_id: &str, path: &str) -> Result<(String, u64), DevServerError> {
        self.with(|inner, _| {
            let job = inner
                .store
                .job(job_id)?
                .ok_or_else(|| DevServerError::JobNotFound(job_id.to_owned()))?;
            let not_found = || DevServerError::ResultNotFound {
                job_id: job_id.to_owned(),
                path: path.to_owned(),
            };
            let file = inner
                .store
                .result(job_id, job.attempt, path)?
                .ok_or_else(not_found)?;
            match (file.sha256, file.size) {
                (Some(sha256), Some(size)) => Ok((sha256, size)),
                _ => Err(not_found()),
            }
        })
    }
}

/// The result path an upload names: a declared path as it is; below a glob, the rest
/// of the URL, which must be a clean relative path that the glob matches.
fn upload_path(declared: &OutputRequest, rest: Option<&str>) -> Result<String, DevServerError> {
    let output = OutputFile {
        path: declared.path.clone(),
        glob: declared.glob.clone(),
        url: String::new(),
    };
    let refused = |why: String| DevServerError::NotDeclared(why);
    match (output.target(), rest) {
        (Some(OutputTarget::Path(path)), None) => Ok(path.to_owned()),
        (Some(OutputTarget::Glob(glob)), Some(rest)) => {
            validate_file_path(rest, false).map_err(|why| refused(format!("{rest:?}: {why}")))?;
            if glob_matches(glob, rest) {
                Ok(rest.to_owned())
            } else {
                Err(refused(format!(
                    "{rest:?} does not match the output's glob {glob:?}"
                )))
            }
        }
        (Some(OutputTarget::Path(_)), Some(_)) => Err(refused(
            "this output is one file: upload it to its own URL".to_owned(),
        )),
        _ => Err(refused(
            "this output is a glob: append the file's path to its URL".to_owned(),
        )),
    }
}

/// Inputs name stored blobs.
pub(crate) fn check_inputs_stored(
    store: &Store,
    inputs: &[InputRequest],
) -> Result<(), DevServerError> {
    for input in inputs {
        if store.blob_size(&input.sha256)?.is_none() {
            return Err(DevServerError::BlobNotFound(input.sha256.clone()));
        }
    }
    Ok(())
}
