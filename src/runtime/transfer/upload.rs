//! One output file `PUT` to its URL: opened once with the job account's rights (never
//! through a link), read once to learn its size and SHA-256 (which go first, in
//! `Content-Length` and `Content-Digest: sha-256=:<base64>:`, because a presigned
//! upload needs its length up front and a store can then refuse a body that does not
//! match), then streamed a chunk at a time and hashed again on the way: a file that
//! changed in between is not sent as the one announced. A transient failure sends the
//! whole file again after the retry policy's wait (object stores do not append); any
//! 2xx is success.

use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::{Body, Bytes};
use hyper::{Method, header};
use sha2::{Digest, Sha256};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::warn;
use url::Url;

use super::http::HttpClient;
use super::outputs::PlannedUpload;
use super::retry::RetryPolicy;
use super::{TransferError, shown_url};
use crate::platform::Account;
use crate::protocol::{CONTENT_DIGEST, content_digest, to_hex};
use crate::runtime::account_fs::with_account_access;

/// What one read of the file hands on.
const CHUNK: usize = 64 * 1024;

/// Upload `planned` from `work`; its SHA-256 and size.
pub(super) async fn upload_file(
    client: &HttpClient,
    retry: &RetryPolicy,
    work: &Path,
    planned: &PlannedUpload,
    account: Option<&Account>,
) -> Result<(String, u64), TransferError> {
    let path = work.join(&planned.path);
    let url = Url::parse(&planned.url).map_err(|e| TransferError::Refused {
        url: shown_url(&planned.url),
        why: e.to_string(),
    })?;
    client.check_url(&url)?;
    let mut file = open(&path, account).await?;
    let (sha256, size) = hash(&mut file, &path).await?;
    let mut attempt = 1;
    loop {
        match put(client, &url, &mut file, &path, &sha256, size).await {
            Ok(()) => return Ok((sha256, size)),
            Err(error) if error.is_transient() => match retry.delay_after(attempt) {
                Some(delay) => {
                    warn!(path = %planned.path, url = %shown_url(&planned.url), %error, attempt, ?delay,
                        "upload failed; sending the whole file again");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => return Err(error),
            },
            Err(error) => return Err(error),
        }
    }
}

/// The file, opened with the account's rights, never through a link at its end; a
/// regular file or an error.
async fn open(path: &Path, account: Option<&Account>) -> Result<File, TransferError> {
    let (shown, target) = (path.to_owned(), path.to_owned());
    let account = account.cloned();
    let opened = tokio::task::spawn_blocking(move || {
        with_account_access(account.as_ref(), move || imp::open_no_follow(&target))
    })
    .await
    .map_err(|e| TransferError::local(&shown, std::io::Error::other(e)))?
    .map_err(|e| TransferError::local(&shown, e))?;
    let meta = opened
        .metadata()
        .map_err(|e| TransferError::local(&shown, e))?;
    if !meta.is_file() {
        return Err(TransferError::local(
            &shown,
            std::io::Error::other("not a regular file"),
        ));
    }
    Ok(File::from_std(opened))
}

async fn hash(file: &mut File, path: &Path) -> Result<(String, u64), TransferError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| TransferError::local(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((to_hex(&hasher.finalize()), size))
}

/// One `PUT` of the whole file.
async fn put(
    client: &HttpClient,
    url: &Url,
    file: &mut File,
    path: &Path,
    sha256: &str,
    size: u64,
) -> Result<(), TransferError> {
    file.seek(SeekFrom::Start(0))
        .await
        .map_err(|e| TransferError::local(path, e))?;
    let reader = file
        .try_clone()
        .await
        .map_err(|e| TransferError::local(path, e))?;
    let changed = Arc::new(AtomicBool::new(false));
    let body = streamed(reader, size, sha256.to_owned(), Arc::clone(&changed));
    let digest = content_digest(sha256).unwrap_or_default();
    let headers = vec![
        (header::CONTENT_LENGTH, size.to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::HeaderName::from_static(CONTENT_DIGEST), digest),
    ];
    let sent = client.send(Method::PUT, url, headers, body).await;
    if changed.load(Ordering::SeqCst) {
        return Err(TransferError::FileChanged {
            path: path.display().to_string(),
        });
    }
    let answer = sent?;
    match answer.status() {
        200..=299 => Ok(()),
        300..=399 => Err(TransferError::Redirect {
            url: shown_url(url.as_str()),
            why: "the store answered an upload with a redirect; an upload URL must take the file itself".into(),
        }),
        status => Err(TransferError::Status {
            url: shown_url(url.as_str()),
            status,
        }),
    }
}

/// The file's `size` bytes as a body, hashed on the way; if they are not the bytes
/// announced (the file changed), the body fails instead of ending, so the store never
/// takes it for complete, and `changed` says why.
fn streamed(file: File, size: u64, sha256: String, changed: Arc<AtomicBool>) -> Body {
    struct Reading {
        file: File,
        left: u64,
        hasher: Sha256,
        sha256: String,
        changed: Arc<AtomicBool>,
        done: bool,
    }
    let state = Reading {
        file,
        left: size,
        hasher: Sha256::new(),
        sha256,
        changed,
        done: false,
    };
    let chunks = futures_util::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        let want = usize::try_from(state.left.min(CHUNK as u64)).unwrap_or(CHUNK);
        if want == 0 {
            state.done = true;
            let mut rest = [0u8; 1];
            let longer = matches!(state.file.read(&mut rest).await, Ok(n) if n > 0);
            let same = to_hex(&std::mem::take(&mut state.hasher).finalize()) == state.sha256;
            if longer || !same {
                state.changed.store(true, Ordering::SeqCst);
                return Some((
                    Err(std::io::Error::other("the file changed while it was sent")),
                    state,
                ));
            }
            return None;
        }
        let mut buf = vec![0u8; want];
        match state.file.read(&mut buf).await {
            Ok(0) => {
                state.done = true;
                state.changed.store(true, Ordering::SeqCst);
                Some((
                    Err(std::io::Error::other(
                        "the file became shorter while it was sent",
                    )),
                    state,
                ))
            }
            Ok(n) => {
                buf.truncate(n);
                state.hasher.update(&buf);
                state.left -= n as u64;
                Some((Ok(Bytes::from(buf)), state))
            }
            Err(error) => {
                state.done = true;
                Some((Err(error), state))
            }
        }
    });
    Body::from_stream(chunks)
}

#[cfg(unix)]
mod imp {
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    pub fn open_no_follow(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    }
}

#[cfg(not(unix))]
mod imp {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    pub fn open_no_follow(path: &Path) -> io::Result<File> {
        if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
            return Err(io::Error::other(
                "a symbolic link; outputs never follow one",
            ));
        }
        File::open(path)
    }
}
