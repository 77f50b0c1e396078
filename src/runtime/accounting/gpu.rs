//! GPU memory of a job's processes: `nvidia-smi --query-compute-apps=pid,used_memory
//! --format=csv` lists the processes on every GPU with the memory each holds (a
//! process on two GPUs is listed twice); the rows of the job's processes (its main
//! process and every descendant, found in `/proc`) are summed, sampled while the job
//! runs, and the peak is its `gpu_memory_peak_bytes`.
//!
//! "Where possible": without `nvidia-smi` there is nothing to sample; where the driver
//! cannot attribute memory to processes (`[N/A]`: MIG, some containers) or the job's
//! processes are not the ones the driver sees (another PID namespace), no figure is
//! given rather than a wrong one.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One row of the query: a process, and the memory it holds on one GPU if known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_bytes: Option<u64>,
}

/// The program the sampler runs, looked up on `PATH`.
const TOOL: &str = "nvidia-smi";

/// The query the sampler runs.
pub const QUERY: [&str; 2] = ["--query-compute-apps=pid,used_memory", "--format=csv"];

/// The rows of the query's output, with or without its header and units; anything
/// that is not a row (the header, blank lines, a message) is skipped.
pub fn parse_compute_apps(text: &str) -> Vec<GpuProcess> {
    text.lines()
        .filter_map(|line| {
            let (pid, memory) = line.split_once(',')?;
            let pid = pid.trim().parse().ok()?;
            Some(GpuProcess {
                pid,
                used_bytes: mib(memory),
            })
        })
        .collect()
}

/// `"6265 MiB"` or `"6265"` in bytes; `[N/A]`, `[Not Supported]` and the like: none.
fn mib(text: &str) -> Option<u64> {
    let number = text.trim().trim_end_matches("MiB").trim();
    number
        .parse::<u64>()
        .ok()
        .map(|mib| mib.saturating_mul(1 << 20))
}

/// The memory the job's processes hold together, when the driver attributes any to
/// them; `None` when none of them is listed with a figure.
pub fn attributed_bytes(rows: &[GpuProcess], job_pids: &HashSet<u32>) -> Option<u64> {
    let mut sum = None;
    for row in rows.iter().filter(|row| job_pids.contains(&row.pid)) {
        if let Some(bytes) = row.used_bytes {
            sum = Some(sum.unwrap_or(0u64).saturating_add(bytes));
        }
    }
    sum
}

/// `pid`, `ppid` and process group from a `/proc/<pid>/stat` line (the name in
/// parentheses may itself hold spaces and parentheses: the fields follow its last `)`).
pub fn parse_stat(text: &str) -> Option<(u32, u32, u32)> {
    let (head, tail) = text.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    let mut fields = tail.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    Some((pid, ppid, group))
}

/// `root` and every process descending from it or in its process group, now (Linux:
/// from `/proc`; elsewhere `root` alone).
pub fn job_processes(root: u32) -> HashSet<u32> {
    processes_of(&process_table(), root)
}

/// `root` and every process of `table` (pid, parent, group) descending from it or in
/// its process group.
fn processes_of(table: &[(u32, u32, u32)], root: u32) -> HashSet<u32> {
    let mut job = HashSet::from([root]);
    let root_group = table
        .iter()
        .find(|(pid, _, _)| *pid == root)
        .map(|(_, _, group)| *group);
    // Parents come and go in any order in /proc: repeat until nothing is added.
    loop {
        let before = job.len();
        for (pid, ppid, group) in table {
            if job.contains(ppid) || Some(*group) == root_group {
                job.insert(*pid);
            }
        }
        if job.len() == before {
            return job;
        }
    }
}

#[cfg(target_os = "linux")]
fn process_table() -> Vec<(u32, u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat))
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn process_table() -> Vec<(u32, u32, u32)> {
    Vec::new()
}

#[derive(Debug, thiserror::Error)]
pub enum GpuProbeError {
    #[error("{0} is not installed")]
    Missing(String),
    #[error("{program} failed: {detail}")]
    Failed { program: String, detail: String },
}

/// Run the query once.
pub async fn query(program: &std::path::Path) -> Result<Vec<GpuProcess>, GpuProbeError> {
    let shown = program.display().to_string();
    let output = tokio::process::Command::new(program)
        .args(QUERY)
        .kill_on_drop(true)
        .output()
        .await;
    match output {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(GpuProbeError::Missing(shown))
        }
        Err(error) => Err(GpuProbeError::Failed {
            program: shown,
            detail: error.to_string(),
        }),
        Ok(output) if !output.status.success() => Err(GpuProbeError::Failed {
            program: shown,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }),
        Ok(output) => Ok(parse_compute_apps(&String::from_utf8_lossy(&output.stdout))),
    }
}

/// The GPU memory of every job it watches, sampled with one query for all of them
/// every `every` (not one per job: `nvidia-smi` takes tens of milliseconds of CPU), and
/// a job's first sample soon after it is watched; each job's peak is kept until it is
/// unwatched. Idle while it watches none; for good once it found no `nvidia-smi`.
/// Dropping it stops the sampling.
#[derive(Debug)]
pub struct GpuWatch<K> {
    program: PathBuf,
    every: Duration,
    jobs: Arc<Mutex<HashMap<K, Watched>>>,
    wake: Arc<Notify>,
    missing: Arc<AtomicBool>,
    /// Started with the first job watched.
    task: Option<JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy)]
struct Watched {
    /// The job's main process.
    root: u32,
    peak: Option<u64>,
}

/// Samples never come closer together than this, however many jobs start.
const MIN_GAP: Duration = Duration::from_secs(1);

impl<K: Eq + Hash + Clone + Send + 'static> GpuWatch<K> {
    /// Sampling `nvidia-smi` on `PATH`.
    pub fn new(every: Duration) -> Self {
        Self::with_program(PathBuf::from(TOOL), every)
    }

    pub fn with_program(program: PathBuf, every: Duration) -> Self {
        Self {
            program,
            every,
            jobs: Arc::default(),
            wake: Arc::default(),
            missing: Arc::default(),
            task: None,
        }
    }

    /// Whether there is no tool to sample with (known after the first attempt).
    pub fn tool_missing(&self) -> bool {
        self.missing.load(Ordering::Relaxed)
    }

    /// Sample the job whose main process is `root` (with its descendants and its
    /// process group) from now on. Needs a tokio runtime.
    pub fn watch(&mut self, job: K, root: u32) {
        if self.tool_missing() {
            return;
        }
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(job, Watched { root, peak: None });
        }
        if self.task.is_none() {
            self.task = Some(tokio::spawn(sample(
                self.program.clone(),
                self.every,
                Arc::clone(&self.jobs),
                Arc::clone(&self.wake),
                Arc::clone(&self.missing),
            )));
        }
        self.wake.notify_one();
    }

    /// Stop sampling the job; its peak, if any memory was attributed to it.
    pub fn unwatch(&mut self, job: &K) -> Option<u64> {
        self.jobs.lock().ok()?.remove(job)?.peak
    }
}

impl<K> Drop for GpuWatch<K> {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn sample<K: Eq + Hash + Clone + Send + 'static>(
    program: PathBuf,
    every: Duration,
    jobs: Arc<Mutex<HashMap<K, Watched>>>,
    wake: Arc<Notify>,
    missing: Arc<AtomicBool>,
) {
    loop {
        let roots: Vec<(K, u32)> = jobs
            .lock()
            .map(|jobs| jobs.iter().map(|(k, w)| (k.clone(), w.root)).collect())
            .unwrap_or_default();
        if roots.is_empty() {
            wake.notified().await;
            continue;
        }
        match query(&program).await {
            Ok(rows) => {
                let table = tokio::task::spawn_blocking(process_table)
                    .await
                    .unwrap_or_default();
                let peaks: Vec<(K, u64)> = roots
                    .into_iter()
                    .filter_map(|(job, root)| {
                        let pids = processes_of(&table, root);
                        attributed_bytes(&rows, &pids).map(|bytes| (job, bytes))
                    })
                    .collect();
                if let Ok(mut jobs) = jobs.lock() {
                    for (job, bytes) in peaks {
                        if let Some(watched) = jobs.get_mut(&job) {
                            watched.peak = Some(watched.peak.unwrap_or(0).max(bytes));
                        }
                    }
                }
            }
            // No tool, no figure: nothing more to sample, now or for later jobs.
            Err(GpuProbeError::Missing(_)) => {
                missing.store(true, Ordering::Relaxed);
                return;
            }
            Err(error) => tracing::debug!(%error, "GPU sample failed"),
        }
        tokio::time::sleep(MIN_GAP).await;
        // The next round at `every`, or sooner for a job just watched.
        let _ = tokio::time::timeout(every.saturating_sub(MIN_GAP), wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/accounting/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_query_in_each_of_its_forms() {
        assert_eq!(
            parse_compute_apps(&fixture("compute-apps-two.csv")),
            [
                GpuProcess {
                    pid: 3858903,
                    used_bytes: Some(6265 * MIB)
                },
                GpuProcess {
                    pid: 3880364,
                    used_bytes: Some(5530 * MIB)
                },
            ]
        );
        assert_eq!(parse_compute_apps(&fixture("compute-apps-none.csv")), []);
        let unknown = parse_compute_apps(&fixture("compute-apps-not-available.csv"));
        assert_eq!(unknown.len(), 2);
        assert!(unknown.iter().all(|row| row.used_bytes.is_none()));
        let bare = parse_compute_apps(&fixture("compute-apps-noheader-nounits.csv"));
        assert_eq!(
            bare[1],
            GpuProcess {
                pid: 4243,
                used_bytes: Some(512 * MIB)
            }
        );
    }

    #[test]
    fn only_the_jobs_processes_count_and_unknown_memory_gives_no_figure() {
        let rows = parse_compute_apps(&fixture("compute-apps-two.csv"));
        let job = HashSet::from([3880364, 1]);
        assert_eq!(attributed_bytes(&rows, &job), Some(5530 * MIB));
        assert_eq!(attributed_bytes(&rows, &HashSet::from([7])), None);
        let unknown = parse_compute_apps(&fixture("compute-apps-not-available.csv"));
        assert_eq!(attributed_bytes(&unknown, &HashSet::from([4242])), None);
        // One process on two GPUs: both rows count.
        let twice = parse_compute_apps("9, 100 MiB\n9, 50 MiB\n");
        assert_eq!(
            attributed_bytes(&twice, &HashSet::from([9])),
            Some(150 * MIB)
        );
    }

    #[test]
    fn a_stat_line_whose_name_holds_parentheses() {
        assert_eq!(
            parse_stat(&fixture("proc-stat.txt")),
            Some((4242, 4100, 4100))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_job_is_its_process_and_its_descendants() -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        // A group of its own, as a job's.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .process_group(0)
            .spawn()?;
        std::thread::sleep(Duration::from_millis(200));
        let job = job_processes(child.id());
        child.kill()?;
        child.wait()?;
        assert!(job.contains(&child.id()));
        assert!(job.len() >= 2, "the sleep is the shell's child: {job:?}");
        assert!(!job.contains(&std::process::id()));
        Ok(())
    }

    /// A stand-in `nvidia-smi` that lists the job's shell with 100 MiB and a stranger
    /// with more: the watch reports the job's alone; without the tool, nothing, and it
    /// says so.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_watch_keeps_each_jobs_peak() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut job = tokio::process::Command::new("sleep")
            .arg("5")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let pid = job.id().unwrap_or_default();
        let dir = tempfile::tempdir()?;
        let tool = dir.path().join("nvidia-smi");
        std::fs::write(
            &tool,
            format!(
                "#!/bin/sh\necho 'pid, used_gpu_memory [MiB]'\necho '{pid}, 100 MiB'\necho '1, 9000 MiB'\n"
            ),
        )?;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755))?;
        let mut watch = GpuWatch::with_program(tool, Duration::from_millis(20));
        watch.watch("job", pid);
        watch.watch("stranger's", 999_999);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(watch.unwatch(&"job"), Some(100 * MIB));
        assert_eq!(watch.unwatch(&"stranger's"), None);
        assert_eq!(watch.unwatch(&"never watched"), None);
        let mut missing =
            GpuWatch::with_program(dir.path().join("absent"), Duration::from_millis(20));
        missing.watch("job", pid);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(missing.tool_missing());
        assert_eq!(missing.unwatch(&"job"), None);
        job.kill().await?;
        Ok(())
    }
}
