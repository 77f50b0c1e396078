//! What the runner and a job's supervisor say to each other, and what the supervisor
//! leaves on disk for a runner that comes later: the launch plan (runner to
//! supervisor, once, on its standard input), the reply (on its standard output), the
//! messages on the supervisor's socket, and the two records in its folder. One
//! version number covers all of them, so a runner upgraded while jobs run reads what
//! the supervisors of its predecessor wrote.
//!
//! Must not: do I/O beyond reading and writing these records.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::{ExitStatus, JobRef};

/// The version of everything in this file. A runner refuses a supervisor or a record
/// of another version rather than misread it.
pub const WIRE_VERSION: u32 = 1;

/// Where supervisors keep their folders, inside the jobs folder. The leading '.' keeps
/// it apart from job folders (job IDs never start with one) and from retention.
pub const SUPERVISORS_DIR: &str = ".supervisors";

/// The longest path a Unix socket address holds (`sun_path`, less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Bytes that need not be UTF-8 (paths, arguments, environment), as base64 in JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsBytes(pub Vec<u8>);

impl OsBytes {
    pub fn of(value: &OsStr) -> Self {
        Self(value.as_bytes().to_vec())
    }

    pub fn os(&self) -> OsString {
        OsString::from_vec(self.0.clone())
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(self.os())
    }
}

impl Serialize for OsBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for OsBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// A log file by path and by identity: the runner made it, and whoever opens it later
/// checks it is still that file (a job owns the folder the logs are in, and could put
/// another file, or a link to one, in their place).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogId {
    pub path: OsBytes,
    pub dev: u64,
    pub ino: u64,
}

impl LogId {
    pub fn of(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::symlink_metadata(path)?;
        Ok(Self {
            path: OsBytes::of(path.as_os_str()),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether `file` (opened from `path`) is this log: the same file, a plain file,
    /// and owned by this process's user.
    pub fn matches(&self, file: &fs::File) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        Ok(meta.is_file()
            && meta.dev() == self.dev
            && meta.ino() == self.ino
            && meta.uid() == crate::platform::effective_user_id())
    }
}

/// Who the job runs as, when not the supervisor's own user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything a supervisor needs to start its job; the runner decided all of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchPlan {
    pub version: u32,
    pub job: JobRef,
    /// The supervisor's folder (see [`Folder`]).
    pub dir: OsBytes,
    /// The program, found already (an absolute path, or relative to `cwd`).
    pub program: OsBytes,
    pub argv0: OsBytes,
    pub args: Vec<OsBytes>,
    /// The job's whole environment.
    pub env: Vec<(OsBytes, OsBytes)>,
    pub cwd: OsBytes,
    pub account: Option<AccountIds>,
    pub output_limit_bytes: u64,
    /// Between SIGTERM and SIGKILL when the supervisor ends the job itself (its
    /// lease ran out, or it was told to stop).
    pub cancel_grace_ms: u64,
    /// How long the job may run before a runner renews the lease.
    pub lease_ms: u64,
    /// stdout's log, then stderr's.
    pub logs: [LogId; 2],
}

impl LaunchPlan {
    /// A plan's line (without or with its newline), of this build's version.
    pub fn parse(text: &str) -> io::Result<Self> {
        let plan: Self = serde_json::from_str(text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if plan.version != WIRE_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "launch plan of version {}, this supervisor reads version {WIRE_VERSION}",
                    plan.version
                ),
            ));
        }
        Ok(plan)
    }
}

/// The supervisor's one answer to the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Started { pid: u32 },
    Failed { error: String },
}

/// How far one stream got: `seen` bytes written by the job, the first `logged` of
/// them in its log. More seen than logged means the log stopped (the output limit, or
/// a disk that refused a write) and the rest was read and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSize {
    pub logged: u64,
    pub seen: u64,
}

impl StreamSize {
    /// Where the stream was cut, when it was.
    pub fn cut_at(self) -> Option<u64> {
        (self.seen > self.logged).then_some(self.logged)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    pub stdout: StreamSize,
    pub stderr: StreamSize,
}

/// From the supervisor, one JSON line each: `hello` once per connection, then the
/// logs' sizes whenever they grow. The end of the connection means the job ended
/// (its exit record is written first) or the supervisor died (there is none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "says", rename_all = "snake_case")]
pub enum SupervisorSays {
    Hello {
        version: u32,
        job: JobRef,
        pid: u32,
        /// The reason of a cancel it was asked for, if any.
        cancel: Option<String>,
    },
    Sizes(Sizes),
}

/// From a runner, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "asks", rename_all = "snake_case")]
pub enum RunnerAsks {
    /// SIGTERM to every process of the job now, SIGKILL after `grace_ms` unless it
    /// ended. A later cancel can only shorten the grace; the first reason is kept.
    Cancel { grace_ms: u64, reason: String },
    /// SIGKILL to every process of the job now.
    Kill,
    /// A runner has a session with the API: go on for `within_ms` more.
    Lease { within_ms: u64 },
}

/// What the supervisor records once the job runs, for a runner that reattaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedRecord {
    pub version: u32,
    pub job: JobRef,
    /// The job's main process, which leads the job's process group.
    pub pid: u32,
    /// When it started, in clock ticks after boot (`/proc/<pid>/stat`): with the pid,
    /// who it is. None where there is no `/proc`.
    pub start_ticks: Option<u64>,
    pub supervisor_pid: u32,
    pub supervisor_start_ticks: Option<u64>,
    /// `CLOCK_MONOTONIC` at the job's start, in milliseconds: the same clock for every
    /// process of this boot, so a runner started later knows how long the job has run.
    pub started_mono_ms: u64,
    pub started_unix_ms: u64,
    pub logs: [LogId; 2],
}

/// Resource use of the job's processes that the supervisor waited for (the main
/// process and every descendant it reaped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub user_us: u64,
    pub system_us: u64,
    pub max_rss_kib: u64,
}

/// How the job ended, written before the supervisor exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub version: u32,
    pub job: JobRef,
    pub status: ExitStatus,
    /// From the job's start to its main process's end.
    pub duration_ms: u64,
    pub ended_unix_ms: u64,
    pub stdout: StreamSize,
    pub stderr: StreamSize,
    /// The reason of the cancel that ended it, if one did: a runner's, or the
    /// supervisor's own (`runner_lost` when no runner renewed the lease in time,
    /// `abandoned` when the supervisor itself was told to stop).
    pub cancel: Option<String>,
    pub usage: Usage,
}

/// A supervisor's folder, `<jobs_root>/.supervisors/<key>/`: the runner's alone (0700),
/// out of the job's reach, whatever account the job runs as. `<key>` is short so the
/// socket's path fits a socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder(PathBuf);

impl Folder {
    /// The lock's name in the folder (see `lock`).
    pub const LOCK: &str = "lock";
    /// The supervisor's log's name in the folder (see `log`).
    pub const LOG: &str = "supervisor.log";

    pub fn of(jobs_root: &Path, job: &JobRef) -> Self {
        Self(jobs_root.join(SUPERVISORS_DIR).join(key(job)))
    }

    pub fn at(dir: PathBuf) -> Self {
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Held (`flock`) by the supervisor for as long as it lives: the kernel lets go
    /// when it dies, so whoever can take it knows the supervisor is gone.
    pub fn lock(&self) -> PathBuf {
        self.0.join(Self::LOCK)
    }

    pub fn socket(&self) -> PathBuf {
        self.0.join("socket")
    }

    pub fn started(&self) -> PathBuf {
        self.0.join("started.json")
    }

    pub fn exit(&self) -> PathBuf {
        self.0.join("exit.json")
    }

    /// The supervisor's own log (its standard error).
    pub fn log(&self) -> PathBuf {
        self.0.join(Self::LOG)
    }
}

/// 16 hex digits naming a job attempt (FNV-1a, 64 bits). Stable across builds, since
/// a runner finds its predecessor's supervisors by it. Written here because no crate
/// this project uses offers a hash that promises to stay the same.
pub fn key(job: &JobRef) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = job
        .job_id
        .as_bytes()
        .iter()
        .copied()
        .chain([0])
        .chain(job.attempt.to_be_bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The socket path of the longest key under `jobs_root`, if it does not fit.
pub fn socket_path_too_long(jobs_root: &Path) -> Option<usize> {
    let longest = Folder::of(
        jobs_root,
        &JobRef {
            job_id: "x".into(),
            attempt: 1,
        },
    )
    .socket();
    let len = longest.as_os_str().len();
    (len > MAX_SOCKET_PATH).then_some(len)
}

/// Write `value` as JSON to `path` in one piece: a temporary file, renamed over. With
/// `durable`, the file and its folder are synced before this returns, so the record
/// survives a power cut too.
pub fn write_record<T: Serialize>(path: &Path, value: &T, durable: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    let temp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(&bytes)?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&temp, path)?;
    if durable && let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A record, if there is one. One of another version is an error, never misread.
pub fn read_record<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(invalid)?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(WIRE_VERSION)) {
        return Err(invalid(format!(
            "{} is of version {version:?}, this runner reads version {WIRE_VERSION}",
            path.display()
        )));
    }
    serde_json::from_value(value).map(Some).map_err(invalid)
}

fn invalid(error: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

/// One message as a line.
pub fn line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// `CLOCK_MONOTONIC` in milliseconds: one clock for every process of this boot.
pub fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_stable_and_tell_attempts_apart() {
        let job = |id: &str, attempt| JobRef {
            job_id: id.into(),
            attempt,
        };
        assert_eq!(key(&job("j-1", 1)).len(), 16);
        assert_eq!(key(&job("j-1", 1)), key(&job("j-1", 1)));
        assert_ne!(key(&job("j-1", 1)), key(&job("j-1", 2)));
        assert_ne!(key(&job("j-1", 1)), key(&job("j-11", 1)));
        // The value itself is part of the contract between runner versions.
        assert_eq!(key(&job("a", 1)), "8e1b2024f9e473d7");
    }

    #[test]
    fn a_record_of_another_version_is_refused_not_misread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exit.json");
        std::fs::write(
            &path,
            br#"{"version": 2, "job": {"job_id": "j", "attempt": 1}}"#,
        )
        .expect("write");
        let read: io::Result<Option<ExitRecord>> = read_record(&path);
        assert_eq!(
            read.expect_err("refused").kind(),
            io::ErrorKind::InvalidData
        );
        let missing: Option<ExitRecord> =
            read_record(&dir.path().join("none.json")).expect("no record is no error");
        assert_eq!(missing, None);
    }

    #[test]
    fn records_are_written_whole_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exit.json");
        let record = ExitRecord {
            version: WIRE_VERSION,
            job: JobRef {
                job_id: "j".into(),
                attempt: 2,
            },
            status: ExitStatus::Exited { code: 3 },
            duration_ms: 12,
            ended_unix_ms: 1,
            stdout: StreamSize {
                logged: 10,
                seen: 12,
            },
            stderr: StreamSize::default(),
            cancel: Some("timeout".into()),
            usage: Usage {
                user_us: 1,
                system_us: 2,
                max_rss_kib: 3,
            },
        };
        write_record(&path, &record, true).expect("written");
        assert!(!path.with_extension("tmp").exists());
        let read: Option<ExitRecord> = read_record(&path).expect("read");
        assert_eq!(read, Some(record));
        assert_eq!(
            StreamSize {
                logged: 10,
                seen: 12
            }
            .cut_at(),
            Some(10)
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_survive_the_plan() {
        let raw = OsBytes(vec![0x66, 0xff, 0x6f]);
        let json = serde_json::to_string(&raw).expect("encode");
        let back: OsBytes = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, raw);
    }
}
