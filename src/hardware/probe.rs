//! Collecting the inventory from the running system.
//!
//! Blocking: it reads `/proc` and runs `lscpu` and `nvidia-smi`. Async
//! callers run [`collect`] on `tokio::task::spawn_blocking`.
//!
//! On Windows there is no `/proc`, `os-release` or `lscpu`: the OS, CPU and memory
//! come from sysinfo (which asks Windows itself), the job disk from
//! `GetVolumePathNameW`/`GetDiskFreeSpaceExW` (`crate::platform::filesystem_of`), and
//! GPUs from `nvidia-smi`, which the NVIDIA driver installs on Windows too.
//!
//! External tools are reached through [`CommandRunner`] so tests can replay
//! output captured on other machines.
#![allow(clippy::disallowed_methods)] // deadlines for the commands it runs

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};
use tracing::{debug, warn};

use super::parse::{
    LscpuInfo, NVIDIA_SMI_QUERY_FIELDS, OsRelease, ParseError, parse_cuda_version,
    parse_lscpu_json, parse_meminfo, parse_nvidia_smi_query, parse_os_release,
};
use crate::platform;
use crate::protocol::{CpuInfo, GpuInventory, HardwareReport, JobDisk, MemoryInfo, OsInfo};

/// How much of a failing tool's output goes into a report.
const DETAIL_MAX_CHARS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    ToolOutput(#[from] ParseError),
    #[error("cannot read {what} from the system: {source}")]
    System {
        what: &'static str,
        #[source]
        source: sysinfo::Error,
    },
    #[error("the system reports no {what}")]
    Unavailable { what: &'static str },
    #[error("cannot resolve job area {path}: {source}")]
    JobArea {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read filesystem statistics for {path}: {source}")]
    JobDisk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn system_error(what: &'static str) -> impl FnOnce(sysinfo::Error) -> CollectError {
    move |source| CollectError::System { what, source }
}

/// What a finished command printed. `status` is `None` when a signal ended
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Runs an external program to completion. An `Err` of kind `NotFound` must
/// mean the program is not installed.
pub trait CommandRunner {
    fn run(&self, program: &str, args: &[&str]) -> io::Result<CommandOutput>;
}

/// Runs real processes, looked up on `PATH`, with `LC_ALL=C` (lscpu
/// translates its field names) and a time limit (a wedged GPU driver can
/// make `nvidia-smi` hang forever).
#[derive(Debug, Clone)]
pub struct SystemCommandRunner {
    timeout: Duration,
}

impl SystemCommandRunner {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl Default for SystemCommandRunner {
    /// Long enough for `nvidia-smi` to initialise eight GPUs without
    /// persistence mode.
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl CommandRunner for SystemCommandRunner {
    fn run(&self, program: &str, args: &[&str]) -> io::Result<CommandOutput> {
        let mut child = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Drain both pipes while waiting: a child that fills a pipe buffer
        // would otherwise block and look like a timeout.
        thread::scope(|scope| {
            let stdout = scope.spawn(|| read_lossy(stdout));
            let stderr = scope.spawn(|| read_lossy(stderr));
            let status = wait_with_timeout(&mut child, self.timeout, program)?;
            Ok(CommandOutput {
                status: status.code(),
                stdout: join_reader(stdout)?,
                stderr: join_reader(stderr)?,
            })
        })
    }
}

fn read_lossy(pipe: Option<impl Read>) -> io::Result<String> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut bytes)?;
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn join_reader(handle: thread::ScopedJoinHandle<'_, io::Result<String>>) -> io::Result<String> {
    handle
        .join()
        .map_err(|_| io::Error::other("output reader thread panicked"))?
}

fn wait_with_timeout(
    child: &mut Child,
    timeout: Duration,
    program: &str,
) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // Kill and reap so the pipes close and no zombie is left behind.
            child.kill()?;
            child.wait()?;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{program} did not finish within {timeout:?}"),
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Collects the inventory of this machine; `job_area` is where jobs will
/// write, and selects the reported disk.
pub fn collect(job_area: &Path) -> Result<HardwareReport, CollectError> {
    collect_with(job_area, &SystemCommandRunner::default())
}

/// [`collect`] with external tools run through `runner`.
pub fn collect_with(
    job_area: &Path,
    runner: &dyn CommandRunner,
) -> Result<HardwareReport, CollectError> {
    Ok(HardwareReport {
        os: probe_os()?,
        cpu: probe_cpu(runner)?,
        memory: probe_memory()?,
        job_disk: probe_job_disk(job_area)?,
        gpus: probe_gpus(runner)?,
    })
}

fn probe_os() -> Result<OsInfo, CollectError> {
    let (name, version) = match read_os_release() {
        Some(release) => (release.name, release.version_id),
        None => (
            System::name().map_err(system_error("OS name"))?,
            System::os_version().ok(),
        ),
    };
    Ok(OsInfo {
        name,
        version,
        kernel: System::kernel_version().map_err(system_error("kernel version"))?,
        arch: System::cpu_arch(),
        hostname: System::host_name().map_err(system_error("host name"))?,
    })
}

fn read_os_release() -> Option<OsRelease> {
    // os-release(5): /etc wins, /usr/lib is the vendor default.
    ["/etc/os-release", "/usr/lib/os-release"]
        .into_iter()
        .find_map(|path| match fs::read_to_string(path) {
            Ok(text) => parse_os_release(&text)
                .inspect_err(|error| warn!(%error, path, "ignoring unparsable os-release"))
                .ok(),
            Err(error) => {
                debug!(%error, path, "os-release not readable");
                None
            }
        })
}

/// CPU details, preferring `lscpu` (caches, sockets) and falling back to
/// sysinfo for whatever lscpu cannot tell.
pub fn probe_cpu(runner: &dyn CommandRunner) -> Result<CpuInfo, CollectError> {
    let basics = SysinfoCpu::read()?;
    Ok(match run_lscpu(runner) {
        Some(lscpu) => cpu_from_lscpu(lscpu, basics),
        None => CpuInfo {
            model: basics.model,
            vendor: basics.vendor,
            logical_cores: basics.logical_cores,
            physical_cores: basics.physical_cores,
            base_frequency_mhz: None,
            max_frequency_mhz: None,
            l1d_cache_bytes: None,
            l1i_cache_bytes: None,
            l2_cache_bytes: None,
            l3_cache_bytes: None,
        },
    })
}

struct SysinfoCpu {
    model: String,
    vendor: String,
    logical_cores: u32,
    physical_cores: Option<u32>,
}

impl SysinfoCpu {
    fn read() -> Result<Self, CollectError> {
        // No usage or frequency refresh: both are momentary values.
        let system =
            System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()))
                .map_err(system_error("CPU list"))?;
        let cpus = system.cpus();
        let first = cpus
            .first()
            .ok_or(CollectError::Unavailable { what: "CPUs" })?;
        Ok(Self {
            model: first.brand().trim().to_owned(),
            vendor: first.vendor_id().trim().to_owned(),
            logical_cores: u32::try_from(cpus.len()).unwrap_or(u32::MAX),
            physical_cores: System::physical_core_count()
                .ok()
                .and_then(|count| u32::try_from(count).ok()),
        })
    }
}

fn run_lscpu(runner: &dyn CommandRunner) -> Option<LscpuInfo> {
    let output = match runner.run("lscpu", &["-J"]) {
        Ok(output) if output.success() => output,
        Ok(output) => {
            warn!(status = ?output.status, stderr = %excerpt(&output.stderr), "lscpu failed; CPU caches unknown");
            return None;
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            debug!("lscpu not installed; CPU caches unknown");
            return None;
        }
        Err(error) => {
            warn!(%error, "cannot run lscpu; CPU caches unknown");
            return None;
        }
    };
    parse_lscpu_json(&output.stdout)
        .inspect_err(|error| warn!(%error, "ignoring lscpu output; CPU caches unknown"))
        .ok()
}

fn cpu_from_lscpu(lscpu: LscpuInfo, basics: SysinfoCpu) -> CpuInfo {
    CpuInfo {
        model: lscpu.model_name.unwrap_or(basics.model),
        vendor: lscpu.vendor.unwrap_or(basics.vendor),
        logical_cores: lscpu.logical_cpus,
        physical_cores: lscpu.physical_cores.or(basics.physical_cores),
        base_frequency_mhz: lscpu.base_mhz,
        max_frequency_mhz: lscpu.max_mhz,
        l1d_cache_bytes: lscpu.l1d_cache_bytes,
        l1i_cache_bytes: lscpu.l1i_cache_bytes,
        l2_cache_bytes: lscpu.l2_cache_bytes,
        l3_cache_bytes: lscpu.l3_cache_bytes,
    }
}

fn probe_memory() -> Result<MemoryInfo, CollectError> {
    let from_proc = fs::read_to_string("/proc/meminfo")
        .inspect_err(|error| debug!(%error, "/proc/meminfo not readable"))
        .ok()
        .and_then(|text| {
            parse_meminfo(&text)
                .inspect_err(|error| warn!(%error, "ignoring /proc/meminfo"))
                .ok()
        });
    let total_bytes = match from_proc {
        Some(bytes) => bytes,
        None => System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
        )
        .map_err(system_error("memory size"))?
        .total_memory(),
    };
    if total_bytes == 0 {
        return Err(CollectError::Unavailable { what: "memory" });
    }
    Ok(MemoryInfo { total_bytes })
}

/// The filesystem holding `job_area`: the mount whose mount point is the
/// longest prefix of the path. A job area that does not exist yet is judged
/// by its nearest existing ancestor; nothing is created.
pub fn probe_job_disk(job_area: &Path) -> Result<JobDisk, CollectError> {
    let target = existing_ancestor(job_area)?;
    let disks = Disks::new_with_refreshed_list().map_err(system_error("mounted filesystems"))?;
    let longest_prefix = disks
        .iter()
        .filter(|disk| target.starts_with(disk.mount_point()))
        // `max_by_key` keeps the last of equals: the mount listed last
        // hides earlier ones on the same mount point.
        .max_by_key(|disk| disk.mount_point().components().count());
    match longest_prefix {
        Some(disk) if platform::same_filesystem(&target, disk.mount_point()) => Ok(JobDisk {
            mount_point: disk.mount_point().display().to_string(),
            total_bytes: disk.total_space(),
            available_bytes: disk.available_space(),
        }),
        // sysinfo skips tmpfs and network filesystems, so the longest listed
        // prefix can be a parent mount (`/` for a job area on a tmpfs
        // `/tmp`); ask the kernel about the path itself instead. (On Windows the
        // canonical path is `\\?\C:\..`, which no listed volume prefixes: it is
        // always asked about directly.)
        _ => {
            let fs = platform::filesystem_of(&target).map_err(|source| CollectError::JobDisk {
                path: target.clone(),
                source,
            })?;
            Ok(JobDisk {
                mount_point: fs.mount_point.display().to_string(),
                total_bytes: fs.total_bytes,
                available_bytes: fs.available_bytes,
            })
        }
    }
}

fn existing_ancestor(job_area: &Path) -> Result<PathBuf, CollectError> {
    let absolute = std::path::absolute(job_area).map_err(|source| CollectError::JobArea {
        path: job_area.to_owned(),
        source,
    })?;
    // Canonical, so that symlinks (`/var/run` -> `/run`) match mount points.
    absolute
        .ancestors()
        .find_map(|path| fs::canonicalize(path).ok())
        .ok_or_else(|| CollectError::JobArea {
            path: job_area.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no ancestor of the path exists"),
        })
}

/// The GPU inventory via `nvidia-smi`:
/// - not installed: [`GpuInventory::None`];
/// - installed but failing (cannot start, non-zero exit, time-out, no GPUs
///   listed): [`GpuInventory::DriverProblem`] with an excerpt of its output;
/// - output that does not parse: an error naming the line, since that means
///   this code and the tool disagree, not that the machine is broken.
pub fn probe_gpus(runner: &dyn CommandRunner) -> Result<GpuInventory, CollectError> {
    let query = format!("--query-gpu={NVIDIA_SMI_QUERY_FIELDS}");
    let output = match runner.run("nvidia-smi", &[&query, "--format=csv,noheader,nounits"]) {
        Ok(output) => output,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(GpuInventory::None),
        Err(error) => {
            return Ok(GpuInventory::DriverProblem {
                detail: format!("cannot run nvidia-smi: {error}"),
            });
        }
    };
    if !output.success() {
        return Ok(GpuInventory::DriverProblem {
            detail: failure_detail(&output),
        });
    }
    let devices = parse_nvidia_smi_query(&output.stdout)?;
    // One kernel module serves every GPU, so all report the same driver.
    let Some(driver_version) = devices.first().map(|gpu| gpu.driver_version.clone()) else {
        return Ok(GpuInventory::DriverProblem {
            detail: "nvidia-smi succeeded but listed no GPUs".to_owned(),
        });
    };
    Ok(GpuInventory::Nvidia {
        driver_version,
        cuda_version: probe_cuda_version(runner),
        devices,
    })
}

/// `nvidia-smi --version` is cheap but only exists in newer drivers; the
/// banner of plain `nvidia-smi` has the version everywhere.
fn probe_cuda_version(runner: &dyn CommandRunner) -> Option<String> {
    let version = [&["--version"][..], &[]].into_iter().find_map(|args| {
        runner
            .run("nvidia-smi", args)
            .ok()
            .filter(CommandOutput::success)
            .and_then(|output| parse_cuda_version(&output.stdout))
    });
    if version.is_none() {
        warn!("nvidia-smi did not report a CUDA version");
    }
    version
}

fn failure_detail(output: &CommandOutput) -> String {
    // nvidia-smi prints most failures ("couldn't communicate with the NVIDIA
    // driver") on stdout, not stderr.
    let text = if output.stderr.trim().is_empty() {
        &output.stdout
    } else {
        &output.stderr
    };
    let status = match output.status {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    };
    format!("nvidia-smi failed ({status}): {}", excerpt(text))
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(DETAIL_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn system_runner_captures_output_and_status() {
        let runner = SystemCommandRunner::default();
        let output = runner
            .run("sh", &["-c", "echo out; echo err >&2; exit 3"])
            .unwrap();
        assert_eq!(output.status, Some(3));
        assert_eq!(output.stdout, "out\n");
        assert_eq!(output.stderr, "err\n");
    }

    #[test]
    fn system_runner_reports_missing_program_as_not_found() {
        let error = SystemCommandRunner::default()
            .run("fyn-runner-no-such-program", &[])
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[cfg(unix)]
    #[test]
    fn system_runner_kills_a_hanging_program() {
        let runner = SystemCommandRunner::new(Duration::from_millis(200));
        let started = Instant::now();
        let error = runner.run("sleep", &["10"]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn excerpt_cuts_on_a_char_boundary() {
        let long = "é".repeat(DETAIL_MAX_CHARS + 10);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), DETAIL_MAX_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn missing_job_area_is_judged_by_its_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not/yet/created");
        let disk = probe_job_disk(&missing).unwrap();
        assert!(!missing.exists(), "probing must not create the job area");
        let existing = fs::canonicalize(dir.path()).unwrap();
        #[cfg(windows)]
        let existing = platform::without_verbatim_prefix(&existing);
        assert!(existing.starts_with(&disk.mount_point), "{disk:?}");
        assert!(disk.total_bytes > 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn job_area_on_tmpfs_reports_the_tmpfs_mount() {
        // /dev/shm is a tmpfs on Linux, which sysinfo does not list.
        let disk = probe_job_disk(Path::new("/dev/shm/fyn-runner-test/jobs")).unwrap();
        assert_eq!(disk.mount_point, "/dev/shm");
        assert!(disk.total_bytes > 0);
    }

    #[cfg(unix)]
    #[test]
    fn mount_point_of_root_is_root() {
        assert_eq!(platform::mount_point_of(Path::new("/")), Path::new("/"));
    }
}
