//! Where the dev-server keeps job inputs and results: files named by their SHA-256 in
//! its blob folder (beside the database, `<db>-blobs/`, or a private temporary folder
//! removed at exit when the database lives in memory). A body is streamed to a
//! temporary file while it is hashed, checked against its declared length and
//! `Content-Digest`, and only then renamed into place: a partial or wrong upload never
//! becomes a blob, and memory stays bounded whatever the size. Also builds the URLs
//! handed to runners: `<base>/blobs/v1/<token>/in/<sha256>` to fetch an input,
//! `<base>/blobs/v1/<token>/out/<n>` (a glob's: `.../out/<n>/` and the file's path) to
//! upload an output, where the token stands for one attempt of one job.
//!
//! Owns the blob folder; the rows that say which blobs are complete and whose they are
//! live in the store.

use std::io;
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::util::random_hex;
use crate::platform::{self, Access};
use crate::protocol::to_hex;

/// The path prefix of the runner's blob endpoints.
pub(crate) const BLOB_PATH: &str = "/blobs/v1/";

/// What reading a body into the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the body is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("the body ended after {got} of the {declared} bytes Content-Length declared")]
    Short { got: u64, declared: u64 },
    #[error("the body is longer than the {declared} bytes Content-Length declared")]
    Long { declared: u64 },
    #[error("the body's sha256 is {got}, not the {declared} Content-Digest declared")]
    DigestMismatch { got: String, declared: String },
    #[error("reading the body: {0}")]
    Body(String),
    #[error("blob folder {path}: {source}")]
    Io { path: String, source: io::Error },
}

impl BlobError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The HTTP status a request that failed this way is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 413,
            Self::Short { .. } | Self::Long { .. } | Self::DigestMismatch { .. } => 400,
            Self::Body(_) => 400,
            Self::Io { .. } => 500,
        }
    }
}

/// The blob folder and the limit on one blob.
#[derive(Debug)]
pub(crate) struct BlobStore {
    dir: PathBuf,
    max_bytes: u64,
    /// Made for an in-memory database: removed when the server goes.
    temporary: bool,
}

impl BlobStore {
    /// `dir` as given, else `<db>-blobs` beside the database, else a fresh private
    /// folder in the temporary directory. Made private (0700) if new.
    pub fn open(dir: Option<&Path>, db: Option<&Path>, max_bytes: u64) -> io::Result<Self> {
        let (dir, temporary) = match (dir, db) {
            (Some(dir), _) => (dir.to_owned(), false),
            (None, Some(db)) => {
                let mut name = db.as_os_str().to_owned();
                name.push("-blobs");
                (PathBuf::from(name), false)
            }
            (None, None) => {
                let suffix = random_hex(8).map_err(io::Error::other)?;
                let name = format!("fyn-runner-dev-server-blobs-{suffix}");
                (std::env::temp_dir().join(name), true)
            }
        };
        platform::create_dir_all(&dir.join("tmp"), Access::Private)?;
        // A crash mid-upload leaves its temporary file; none is ever a blob.
        if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir,
            max_bytes,
            temporary,
        })
    }

    /// The file of a complete blob.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Stream `body` (of `length` bytes) into the store; returns its SHA-256 (hex).
    /// With `digest`, the bytes must hash to it. The blob's file is in place when this
    /// returns `Ok`; on any error nothing of the body is kept.
    pub async fn receive(
        &self,
        body: Body,
        length: u64,
        digest: Option<&str>,
    ) -> Result<String, BlobError> {
        if length > self.max_bytes {
            return Err(BlobError::TooLarge {
                size: length,
                limit: self.max_bytes,
            });
        }
        let temp = self
            .dir
            .join("tmp")
            .join(random_hex(12).map_err(|e| BlobError::io(&self.dir, io::Error::other(e)))?);
        let received = write_body(&temp, body, length).await;
        let sha256 = match received {
            Ok(sha256) => sha256,
            Err(error) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(error);
            }
        };
        if let Some(declared) = digest
            && declared != sha256
        {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(BlobError::DigestMismatch {
                got: sha256,
                declared: declared.to_owned(),
            });
        }
        let target = self.path(&sha256);
        tokio::fs::rename(&temp, &target)
            .await
            .map_err(|e| BlobError::io(&target, e))?;
        Ok(sha256)
    }

    /// A stream of the blob's bytes from `offset` on, read a chunk at a time.
    pub async fn read(&self, sha256: &str, offset: u64) -> io::Result<Body> {
        let mut file = File::open(self.path(sha256)).await?;
        if offset > 0 {
            file.seek(io::SeekFrom::Start(offset)).await?;
        }
        let chunks = futures_util::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, io::Error>(Bytes::from(buf)), file))
                }
                Err(error) => Some((Err(error), file)),
            }
        });
        Ok(Body::from_stream(chunks))
    }
}

impl Drop for BlobStore {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What one read of a blob's file hands on.
const CHUNK: usize = 64 * 1024;

/// The body into `path`, hashed on the way; exactly `length` bytes or an error.
async fn write_body(path: &Path, body: Body, length: u64) -> Result<String, BlobError> {
    let mut file = platform::open_options(Access::Private)
        .write(true)
        .create_new(true)
        .open(path)
        .map(File::from_std)
        .map_err(|e| BlobError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut got: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
        got += chunk.len() as u64;
        if got > length {
            return Err(BlobError::Long { declared: length });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| BlobError::io(path, e))?;
    }
    if got < length {
        return Err(BlobError::Short {
            got,
            declared: length,
        });
    }
    file.sync_all().await.map_err(|e| BlobError::io(path, e))?;
    Ok(to_hex(&hasher.finalize()))
}

/// The URLs a job's attempt is handed, under the server's public base URL.
#[derive(Debug, Clone)]
pub(crate) struct BlobUrls {
    base: String,
}

impl BlobUrls {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub fn input(&self, token: &str, sha256: &str) -> String {
        format!("{}{BLOB_PATH}{token}/in/{sha256}", self.base)
    }

    /// Output `index`'s URL; a glob's ends with `/` (the runner appends each path).
    pub fn output(&self, token: &str, index: usize, glob: bool) -> String {
        let slash = if glob { "/" } else { "" };
        format!("{}{BLOB_PATH}{token}/out/{index}{slash}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, max: u64) -> io::Result<BlobStore> {
        BlobStore::open(Some(dir), None, max)
    }

    #[tokio::test]
    async fn a_body_becomes_a_blob_only_when_whole_and_as_declared()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let blobs = store(dir.path(), 10)?;
        let test = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let sha = blobs.receive(Body::from("test"), 4, Some(test)).await?;
        assert_eq!(sha, test);
        assert_eq!(std::fs::read(blobs.path(test))?, b"test");
        let refused = [
            blobs.receive(Body::from("test"), 5, None).await,
            blobs.receive(Body::from("test"), 3, None).await,
            blobs.receive(Body::from("tesT"), 4, Some(test)).await,
            blobs.receive(Body::from("0123456789a"), 11, None).await,
        ];
        let statuses: Vec<u16> = refused
            .iter()
            .map(|r| r.as_ref().map_or_else(BlobError::http_status, |_| 200))
            .collect();
        assert_eq!(statuses, [400, 400, 400, 413]);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        Ok(())
    }

    #[test]
    fn urls_name_the_token_and_what_they_are_for() {
        let urls = BlobUrls::new("http://127.0.0.1:9/");
        assert_eq!(urls.input("t", "ab"), "http://127.0.0.1:9/blobs/v1/t/in/ab");
        assert_eq!(
            urls.output("t", 2, false),
            "http://127.0.0.1:9/blobs/v1/t/out/2"
        );
        assert_eq!(
            urls.output("t", 2, true),
            "http://127.0.0.1:9/blobs/v1/t/out/2/"
        );
    }
}
