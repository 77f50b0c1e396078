//! A download into a file: streamed a chunk at a time (memory bounded by one chunk),
//! hashed on the way, checked against the SHA-256 the job names once the last byte
//! is in. A transient failure is tried again after the retry policy's wait, asking
//! with `Range: bytes=N-` for the rest when `N` bytes are in (a server that answers
//! `200` instead sends the whole file again, and gets it). Redirects are followed (at
//! most `MAX_REDIRECTS`), each hop under the same URL rules.

use std::io::SeekFrom;
use std::path::Path;

use axum::body::Body;
use hyper::{Method, header};
use sha2::{Digest, Sha256};
use tokio::fs::File;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tracing::warn;
use url::Url;

use super::http::{Answer, HttpClient};
use super::retry::RetryPolicy;
use super::{TransferError, shown_url};
use crate::protocol::to_hex;

/// Redirects followed for one download.
const MAX_REDIRECTS: usize = 5;

/// Download `url` into `dest` (made or emptied), hashed against `sha256`; the size.
pub(super) async fn download(
    client: &HttpClient,
    retry: &RetryPolicy,
    url: &Url,
    dest: &Path,
    sha256: &str,
) -> Result<u64, TransferError> {
    let mut partial = Partial::create(dest).await?;
    let mut attempt = 1;
    loop {
        match pass(client, url, &mut partial).await {
            Ok(()) => break,
            Err(error) if error.is_transient() => match retry.delay_after(attempt) {
                Some(delay) => {
                    warn!(url = %shown_url(url.as_str()), %error, attempt, held = partial.written, ?delay,
                        "download interrupted; trying again");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => return Err(error),
            },
            Err(error) => return Err(error),
        }
    }
    partial.finish(url, sha256).await
}

/// The bytes received so far, in the file and in the hash.
struct Partial {
    file: File,
    path: std::path::PathBuf,
    hasher: Sha256,
    written: u64,
}

impl Partial {
    async fn create(path: &Path) -> Result<Self, TransferError> {
        let file = File::create(path)
            .await
            .map_err(|e| TransferError::local(path, e))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// Forget what was received: the server sends the whole file again.
    async fn restart(&mut self) -> Result<(), TransferError> {
        if self.written == 0 {
            return Ok(());
        }
        self.file
            .set_len(0)
            .await
            .map_err(|e| TransferError::local(&self.path, e))?;
        self.file
            .seek(SeekFrom::Start(0))
            .await
            .map_err(|e| TransferError::local(&self.path, e))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    async fn append(&mut self, bytes: &[u8]) -> Result<(), TransferError> {
        self.file
            .write_all(bytes)
            .await
            .map_err(|e| TransferError::local(&self.path, e))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// On disk, and the bytes the job named; the size.
    async fn finish(mut self, url: &Url, expected: &str) -> Result<u64, TransferError> {
        self.file
            .flush()
            .await
            .map_err(|e| TransferError::local(&self.path, e))?;
        self.file
            .sync_all()
            .await
            .map_err(|e| TransferError::local(&self.path, e))?;
        let got = to_hex(&self.hasher.finalize());
        if got != expected {
            return Err(TransferError::ChecksumMismatch {
                url: shown_url(url.as_str()),
                expected: expected.to_owned(),
                got,
                size: self.written,
            });
        }
        Ok(self.written)
    }
}

/// One try: from the bytes held on, following redirects.
async fn pass(
    client: &HttpClient,
    start: &Url,
    partial: &mut Partial,
) -> Result<(), TransferError> {
    let mut url = start.clone();
    for _ in 0..=MAX_REDIRECTS {
        let mut headers = Vec::new();
        if partial.written > 0 {
            headers.push((header::RANGE, format!("bytes={}-", partial.written)));
        }
        let answer = client
            .send(Method::GET, &url, headers, Body::empty())
            .await?;
        let shown = shown_url(url.as_str());
        match answer.status() {
            200 => {
                partial.restart().await?;
                return receive(client, answer, &url, partial).await;
            }
            206 if content_range_start(&answer) == Some(partial.written) => {
                return receive(client, answer, &url, partial).await;
            }
            206 => {
                // Not the range asked for: start over, from the first byte.
                partial.restart().await?;
                return Err(TransferError::Broken {
                    url: shown,
                    why: "the server answered with a range that was not asked for".into(),
                });
            }
            416 if partial.written > 0 => {
                partial.restart().await?;
                return Err(TransferError::Broken {
                    url: shown,
                    why: "the server refused to resume; starting over".into(),
                });
            }
            301 | 302 | 303 | 307 | 308 => {
                url = redirect_target(&answer, &url)?;
                client.check_url(&url)?;
            }
            status => return Err(TransferError::Status { url: shown, status }),
        }
    }
    Err(TransferError::Redirect {
        url: shown_url(start.as_str()),
        why: format!("more than {MAX_REDIRECTS} redirects"),
    })
}

async fn receive(
    client: &HttpClient,
    answer: Answer,
    url: &Url,
    partial: &mut Partial,
) -> Result<(), TransferError> {
    let mut chunks = answer.into_chunks(client.timeouts.idle, url);
    while let Some(chunk) = chunks.next().await? {
        partial.append(&chunk).await?;
    }
    Ok(())
}

/// Where `Content-Range: bytes A-B/T` starts.
fn content_range_start(answer: &Answer) -> Option<u64> {
    let value = answer.headers().get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

fn redirect_target(answer: &Answer, from: &Url) -> Result<Url, TransferError> {
    let bad = |why: &str| TransferError::Redirect {
        url: shown_url(from.as_str()),
        why: why.to_owned(),
    };
    let location = answer
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad("a redirect without a Location"))?;
    from.join(location)
        .map_err(|_| bad("a redirect to something that is not a URL"))
}
