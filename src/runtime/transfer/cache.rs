//! The cache of job inputs, by SHA-256: `<dir>/blobs/<sha256>` holds complete,
//! checked files (read-only, the runner's own), `<dir>/tmp/` the downloads under way.
//!
//! - One fetch per file: a lock per SHA-256 is held from the lookup through the
//!   download to the moment the caller has placed the file in a job's `work/`; a
//!   second job that wants the same file waits on it, then finds the file (a hit).
//! - Nothing partial: a download goes to `tmp/` and is renamed into `blobs/` only once
//!   its checksum matched and it is on disk; whatever `tmp/` holds at start (a crash
//!   mid-download) is removed.
//! - Size-capped: after each fetch the least recently used files go (their last use
//!   is their modification time, set at each hit) until the total is within the cap,
//!   skipping any a job is being given right now. A file larger than the cap is used
//!   once and then goes too.
//!
//! Must not: know about jobs, URLs or HTTP; `fetch` is handed a function to fill a file.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::OwnedMutexGuard;
use tracing::{info, warn};

use super::TransferError;
use crate::platform::{self, Access};

/// A file of the cache, held for the caller until dropped (it is not evicted meanwhile).
pub struct CacheEntry {
    pub path: PathBuf,
    pub size: u64,
    /// Found, not fetched.
    pub hit: bool,
    _held: OwnedMutexGuard<()>,
}

#[derive(Debug)]
pub struct InputCache {
    blobs: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    /// One lock per SHA-256 being fetched or handed out; pruned as they go idle.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_part: AtomicU64,
}

impl InputCache {
    /// Open (or make, private) the cache folder; partial downloads of an earlier run go.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        platform::create_dir_all(&blobs, Access::Private)?;
        platform::create_dir_all(&tmp, Access::Private)?;
        for entry in std::fs::read_dir(&tmp)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self {
            blobs,
            tmp,
            max_bytes,
            locks: Mutex::new(HashMap::new()),
            next_part: AtomicU64::new(0),
        })
    }

    /// The file with `sha256`: the cached one, or the one `fetch` fills (given a
    /// temporary path; it returns the size once the file there is complete and checked).
    pub async fn get_or_fetch<F, Fut>(
        &self,
        sha256: &str,
        fetch: F,
    ) -> Result<CacheEntry, TransferError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<u64, TransferError>>,
    {
        let held = self.lock_for(sha256).lock_owned().await;
        let path = self.blobs.join(sha256);
        if let Some(size) = touch(&path) {
            return Ok(CacheEntry {
                path,
                size,
                hit: true,
                _held: held,
            });
        }
        let n = self.next_part.fetch_add(1, Ordering::Relaxed);
        let part = self
            .tmp
            .join(format!("{sha256}.{}.{n}.part", std::process::id()));
        let size = match fetch(part.clone()).await {
            Ok(size) => size,
            Err(error) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(error);
            }
        };
        if let Err(error) = enter(&part, &path) {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(TransferError::local(&path, error));
        }
        Ok(CacheEntry {
            path,
            size,
            hit: false,
            _held: held,
        })
    }

    /// The size of the cached files together.
    pub fn size(&self) -> u64 {
        entries(&self.blobs).iter().map(|e| e.size).sum()
    }

    /// Whether the file with `sha256` is in the cache.
    pub fn holds(&self, sha256: &str) -> bool {
        self.blobs.join(sha256).is_file()
    }

    /// Remove the least recently used files until the cache is within its cap; files
    /// held right now stay.
    pub async fn evict(&self) {
        let mut files = entries(&self.blobs);
        let mut total: u64 = files.iter().map(|e| e.size).sum();
        if total <= self.max_bytes {
            return;
        }
        files.sort_by_key(|e| e.used);
        for file in files {
            if total <= self.max_bytes {
                break;
            }
            let lock = self.lock_for(&file.sha256);
            let Ok(_held) = lock.try_lock_owned() else {
                continue;
            };
            let path = self.blobs.join(&file.sha256);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {
                    total -= file.size;
                    info!(sha256 = %file.sha256, size = file.size, "input evicted from the cache");
                }
                Err(error) => warn!(path = %path.display(), %error, "cannot evict a cached input"),
            }
        }
    }

    /// The lock of one SHA-256; idle locks of others are dropped on the way.
    fn lock_for(&self, sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.retain(|key, lock| key == sha256 || Arc::strong_count(lock) > 1);
        Arc::clone(locks.entry(sha256.to_owned()).or_default())
    }
}

/// A complete file enters the cache: read-only, then renamed in, the rename made
/// durable.
fn enter(part: &Path, path: &Path) -> io::Result<()> {
    set_read_only(part)?;
    std::fs::rename(part, path)?;
    if let Some(dir) = path.parent() {
        platform::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(unix)]
fn set_read_only(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
}

#[cfg(not(unix))]
fn set_read_only(path: &Path) -> io::Result<()> {
    let mut permissions = std::fs::metadata(path)?.permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(path, permissions)
}

/// The size of a cached file, its use recorded now; `None` when it is not there.
fn touch(path: &Path) -> Option<u64> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let marked = std::fs::File::open(path).and_then(|file| file.set_modified(SystemTime::now()));
    if let Err(error) = marked {
        warn!(path = %path.display(), %error, "cannot record the use of a cached input");
    }
    Some(meta.len())
}

struct Entry {
    sha256: String,
    size: u64,
    used: SystemTime,
}

fn entries(dir: &Path) -> Vec<Entry> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            meta.is_file().then(|| Entry {
                sha256: entry.file_name().to_string_lossy().into_owned(),
                size: meta.len(),
                used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    fn fill(
        bytes: &'static [u8],
    ) -> impl FnOnce(PathBuf) -> std::future::Ready<Result<u64, TransferError>> {
        move |path: PathBuf| {
            std::future::ready(
                std::fs::write(&path, bytes)
                    .map(|()| bytes.len() as u64)
                    .map_err(|e| TransferError::local(&path, e)),
            )
        }
    }

    #[tokio::test]
    async fn two_jobs_wanting_one_file_fetch_it_once() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cache = Arc::new(InputCache::open(dir.path(), 1 << 20)?);
        let fetches = Arc::new(AtomicUsize::new(0));
        let want = |cache: Arc<InputCache>, fetches: Arc<AtomicUsize>| async move {
            cache
                .get_or_fetch("aa", |path| async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    std::fs::write(&path, b"mesh").map_err(|e| TransferError::local(&path, e))?;
                    Ok(4)
                })
                .await
                .map(|entry| entry.hit)
        };
        let (a, b) = tokio::join!(
            tokio::spawn(want(Arc::clone(&cache), Arc::clone(&fetches))),
            tokio::spawn(want(Arc::clone(&cache), Arc::clone(&fetches))),
        );
        let mut hits = [a??, b??];
        hits.sort_unstable();
        assert_eq!(hits, [false, true]);
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_fetch_leaves_nothing_and_a_crash_leftover_goes_at_open()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cache = InputCache::open(dir.path(), 1 << 20)?;
        let failed = cache
            .get_or_fetch("bb", |path| async move {
                std::fs::write(&path, b"half").map_err(|e| TransferError::local(&path, e))?;
                Err(TransferError::Broken {
                    url: "u".into(),
                    why: "reset".into(),
                })
            })
            .await;
        assert!(failed.is_err());
        assert!(!cache.holds("bb"));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        std::fs::write(dir.path().join("tmp").join("cc.1.0.part"), b"crash")?;
        drop(cache);
        let reopened = InputCache::open(dir.path(), 1 << 20)?;
        assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        assert!(!reopened.holds("cc"));
        Ok(())
    }

    #[tokio::test]
    async fn the_least_recently_used_go_first_and_held_ones_stay()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cache = InputCache::open(dir.path(), 8)?;
        let old = cache.get_or_fetch("01", fill(b"1111")).await?;
        drop(old);
        let when = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(dir.path().join("blobs/01"))?.set_modified(when)?;
        let newer = cache.get_or_fetch("02", fill(b"2222")).await?;
        drop(newer);
        // A third file, held while the cache evicts: the oldest goes, it stays.
        let held = cache.get_or_fetch("03", fill(b"3333")).await?;
        cache.evict().await;
        assert!(!cache.holds("01"));
        assert!(cache.holds("02") && cache.holds("03"));
        assert!(!held.hit);
        drop(held);
        // A hit counts as a use: "02" is now the newest and "03" goes.
        let again = cache.get_or_fetch("02", fill(b"xxxx")).await?;
        assert!(again.hit);
        drop(again);
        let when = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::open(dir.path().join("blobs/03"))?.set_modified(when)?;
        let fourth = cache.get_or_fetch("04", fill(b"4444")).await?;
        drop(fourth);
        cache.evict().await;
        assert!(!cache.holds("03"));
        assert_eq!(cache.size(), 8);
        Ok(())
    }
}
