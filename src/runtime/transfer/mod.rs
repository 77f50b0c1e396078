/*!
A job's files over HTTP: its inputs fetched into `work/` before the process starts
(through a content-addressed cache, so a file used by ten jobs is fetched once), its
outputs uploaded by `PUT` after the process ended (the way presigned object-store URLs
work). Streaming both ways: memory stays bounded by a few chunks whatever the size.

- `http.rs`: one exchange per connection (hyper, rustls with ring, the session's CA
  rules); plain `http://` only to loopback unless the operator allowed it.
- `fetch.rs`: a download into a file, its SHA-256 checked, resumed with `Range` after a
  transient failure, redirects followed.
- `upload.rs`: a file `PUT` with `Content-Length` and `Content-Digest`, the whole file
  again after a transient failure (object stores do not append).
- `cache.rs`: the cache of inputs by SHA-256 under the state folder, size-capped,
  least recently used out, one fetch per file however many jobs want it at once, and
  nothing partial ever in it.
- `place.rs`: a cached input put into a job's `work/` (a hard link, or a copy).
- `outputs.rs`: which files of `work/` the declared outputs name (globs included),
  never following a link.
- `retry.rs`: how often and how patiently a transient failure is tried again.

What a transfer decides is only whether to try again (transient: a refused or reset
connection, a timeout, 408, 429, 5xx; final: another 4xx, a checksum that does not
match, a URL the settings refuse). Results come back as data ([`FetchedInput`],
[`UploadedFile`], [`TransferError`]); turning them into events, and deciding what a
failure means for the job, belongs to the core.

Must not import: `core`, the driver or `jobs`. Works with a job account's rights
(`account_fs`) wherever it touches a job's folder.
*/

mod cache;
mod fetch;
mod http;
mod outputs;
mod place;
mod retry;
mod upload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::info;
use url::Url;

use crate::platform::Account;
use crate::protocol::{InputFile, OutputFile};

pub use cache::InputCache;
pub use http::{HttpClient, Timeouts};
pub use outputs::{MAX_OUTPUT_FILES, OutputPlan, PlannedUpload, RefusedOutput};
pub use place::Placement;
pub use retry::RetryPolicy;

/// Why a transfer failed. `is_transient` says whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{url}: {why}")]
    Refused { url: String, why: String },
    #[error("{url}: unreachable: {why}")]
    Unreachable { url: String, why: String },
    #[error("{url}: TLS: {why}")]
    Tls { url: String, why: String },
    #[error("{url}: the connection broke: {why}")]
    Broken { url: String, why: String },
    #[error("{url}: {what}")]
    Timeout { url: String, what: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {why}")]
    Redirect { url: String, why: String },
    #[error("{url}: the {size} bytes received have sha256 {got}, not the {expected} the job names")]
    ChecksumMismatch {
        url: String,
        expected: String,
        got: String,
        size: u64,
    },
    #[error("{path}: the file changed while it was uploaded")]
    FileChanged { path: String },
    #[error("{path}: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
}

impl TransferError {
    /// A failure that may not happen again: the connection, the network or the other
    /// side's momentary trouble. Everything else is final.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Broken { .. } | Self::Timeout { .. } => true,
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::Refused { .. }
            | Self::Tls { .. }
            | Self::Redirect { .. }
            | Self::ChecksumMismatch { .. }
            | Self::FileChanged { .. }
            | Self::Local { .. } => false,
        }
    }

    pub(crate) fn local(path: &Path, source: std::io::Error) -> Self {
        Self::Local {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A URL as logs, errors and reports show it: without its query and fragment, where a
/// presigned URL keeps its signature and credentials.
pub fn shown_url(url: &str) -> String {
    crate::protocol::url_without_query(url)
}

/// What transfers start with (from the run settings).
#[derive(Debug, Clone)]
pub struct TransferSettings {
    /// The CA to trust instead of the public web roots (the session's `--ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Plain `http://` to hosts that are not loopback (`allow_insecure_transfers`).
    pub allow_insecure: bool,
    /// The input cache: `<state_dir>/cache/inputs`.
    pub cache_dir: PathBuf,
    /// The size the cache is kept to (`input_cache_max_bytes`).
    pub cache_max_bytes: u64,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferSetupError {
    #[error(transparent)]
    Tls(#[from] crate::runtime::ws::TlsSetupError),
    #[error("input cache {path}: {source}")]
    Cache {
        path: String,
        source: std::io::Error,
    },
}

/// An input in place in `work/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedInput {
    /// Below `work/`.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// Found in the cache: nothing was downloaded.
    pub from_cache: bool,
    pub placement: Placement,
}

/// An output uploaded, complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedFile {
    /// Below `work/`.
    pub path: String,
    /// Where it went, without the query (a presigned URL's signature stays out of
    /// events, logs and traces).
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

/// The transfers of one runner: the client, the retry policy and the input cache.
#[derive(Debug, Clone)]
pub struct Transfers {
    client: HttpClient,
    retry: RetryPolicy,
    cache: Arc<InputCache>,
}

impl Transfers {
    pub fn new(settings: &TransferSettings) -> Result<Self, TransferSetupError> {
        let tls = crate::runtime::ws::tls_config(settings.ca_file.as_deref())?;
        let client = HttpClient::new(tls, settings.allow_insecure, settings.timeouts);
        Self::with_client(client, settings)
    }

    /// With a client made elsewhere (tests: one that trusts a test CA).
    pub fn with_client(
        client: HttpClient,
        settings: &TransferSettings,
    ) -> Result<Self, TransferSetupError> {
        let cache =
            InputCache::open(&settings.cache_dir, settings.cache_max_bytes).map_err(|source| {
                TransferSetupError::Cache {
                    path: settings.cache_dir.display().to_string(),
                    source,
                }
            })?;
        Ok(Self {
            client,
            retry: settings.retry,
            cache: Arc::new(cache),
        })
    }

    pub fn cache(&self) -> &InputCache {
        &self.cache
    }

    /// Put `input` at its path in `work/`, from the cache or fetched into it first.
    /// With `account`, the file (and any folder made for it) is the account's.
    pub async fn fetch_input(
        &self,
        input: &InputFile,
        work: &Path,
        account: Option<&Account>,
    ) -> Result<FetchedInput, TransferError> {
        let url = Url::parse(&input.url).map_err(|e| TransferError::Refused {
            url: shown_url(&input.url),
            why: e.to_string(),
        })?;
        self.client.check_url(&url)?;
        let entry = self
            .cache
            .get_or_fetch(&input.sha256, |part| async move {
                fetch::download(&self.client, &self.retry, &url, &part, &input.sha256).await
            })
            .await?;
        if entry.hit {
            info!(sha256 = %input.sha256, path = %input.path, "input found in the cache, not fetched again");
        } else {
            info!(sha256 = %input.sha256, path = %input.path, size = entry.size, url = %shown_url(&input.url), "input fetched");
        }
        let blob = entry.path.clone();
        let (work, path, executable) = (work.to_owned(), input.path.clone(), input.executable);
        let account = account.cloned();
        let placement = tokio::task::spawn_blocking(move || {
            place::place_input(&blob, &work, &path, executable, account.as_ref())
        })
        .await
        .map_err(|e| TransferError::local(&entry.path, std::io::Error::other(e)))?
        .map_err(|source| TransferError::Local {
            path: input.path.clone(),
            source,
        })?;
        let fetched = FetchedInput {
            path: input.path.clone(),
            sha256: input.sha256.clone(),
            size: entry.size,
            from_cache: entry.hit,
            placement,
        };
        drop(entry);
        self.cache.evict().await;
        Ok(fetched)
    }

    /// The files the declared outputs name in `work/` (read with `account`'s rights).
    pub async fn plan_outputs(
        &self,
        work: &Path,
        outputs: &[OutputFile],
        account: Option<&Account>,
    ) -> Result<OutputPlan, TransferError> {
        let (work, outputs, account) = (work.to_owned(), outputs.to_vec(), account.cloned());
        let shown = work.clone();
        tokio::task::spawn_blocking(move || {
            outputs::plan_outputs(&work, &outputs, account.as_ref())
        })
        .await
        .map_err(|e| TransferError::local(&shown, std::io::Error::other(e)))?
        .map_err(|source| TransferError::local(&shown, source))
    }

    /// Upload one planned file (read with `account`'s rights).
    pub async fn upload(
        &self,
        work: &Path,
        planned: &PlannedUpload,
        account: Option<&Account>,
    ) -> Result<UploadedFile, TransferError> {
        let (sha256, size) =
            upload::upload_file(&self.client, &self.retry, work, planned, account).await?;
        info!(path = %planned.path, size, url = %shown_url(&planned.url), "output uploaded");
        Ok(UploadedFile {
            path: planned.path.clone(),
            url: shown_url(&planned.url),
            sha256,
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_url_keeps_no_signature() {
        assert_eq!(
            shown_url("https://b.s3.example/k/a.csv?X-Amz-Signature=abc&X-Amz-Credential=x#f"),
            "https://b.s3.example/k/a.csv"
        );
        assert_eq!(shown_url("not a url?secret"), "not a url");
    }

    #[test]
    fn only_the_network_and_the_peers_momentary_trouble_are_tried_again() {
        let status = |status| TransferError::Status {
            url: String::new(),
            status,
        };
        for transient in [408, 429, 500, 502, 503, 599] {
            assert!(status(transient).is_transient(), "{transient}");
        }
        for last in [400, 401, 403, 404, 410, 413] {
            assert!(!status(last).is_transient(), "{last}");
        }
        let mismatch = TransferError::ChecksumMismatch {
            url: String::new(),
            expected: String::new(),
            got: String::new(),
            size: 0,
        };
        assert!(!mismatch.is_transient());
    }
}
