/*!
What a job's processes used, for `job_finished`: CPU time and peak memory from the
rusage `wait4` returns for the job's main process (which covers every descendant it
waited for, as `/usr/bin/time` reports them), and GPU memory sampled through
`nvidia-smi` and attributed to the job's processes (`gpu.rs`).

The per-job supervisor (issue 17) waits for the job and records its rusage in the job
folder; this module turns such a record into the protocol's figures. It decides
nothing about when to measure.

Must not import: `core`, the driver or `jobs`.
*/

pub mod gpu;

#[cfg(unix)]
use crate::protocol::JobUsage;

/// CPU times and peak resident memory from a rusage (the other figures are the
/// caller's: wall time from its own clock, GPU memory from `gpu`).
#[cfg(unix)]
pub fn usage_from_rusage(rusage: &libc::rusage) -> JobUsage {
    JobUsage {
        cpu_user_ms: Some(timeval_ms(&rusage.ru_utime)),
        cpu_system_ms: Some(timeval_ms(&rusage.ru_stime)),
        peak_rss_bytes: Some(max_rss_bytes(rusage.ru_maxrss)),
        ..JobUsage::default()
    }
}

#[cfg(unix)]
fn timeval_ms(time: &libc::timeval) -> u64 {
    let secs = u64::try_from(time.tv_sec).unwrap_or(0);
    let micros = u64::try_from(time.tv_usec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(micros / 1000)
}

/// `ru_maxrss` is in KiB on Linux and the BSDs, in bytes on macOS.
#[cfg(unix)]
fn max_rss_bytes(max_rss: libc::c_long) -> u64 {
    let value = u64::try_from(max_rss).unwrap_or(0);
    if cfg!(target_os = "macos") {
        value
    } else {
        value.saturating_mul(1024)
    }
}

/// Wait for the child `pid` (blocking) and return its raw wait status with what it
/// used. For the supervisor that waits for a job, and for tests.
#[cfg(unix)]
pub fn wait_with_usage(pid: u32) -> std::io::Result<(libc::c_int, JobUsage)> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live, writable locals of the right types.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if rc == pid {
            return Ok((status, usage_from_rusage(&rusage)));
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_rusage_becomes_milliseconds_and_bytes() {
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        rusage.ru_utime = libc::timeval {
            tv_sec: 2,
            tv_usec: 345_678,
        };
        rusage.ru_stime = libc::timeval {
            tv_sec: 0,
            tv_usec: 9_999,
        };
        rusage.ru_maxrss = 2048;
        let usage = usage_from_rusage(&rusage);
        assert_eq!(usage.cpu_user_ms, Some(2345));
        assert_eq!(usage.cpu_system_ms, Some(9));
        let expected = if cfg!(target_os = "macos") {
            2048
        } else {
            2048 * 1024
        };
        assert_eq!(usage.peak_rss_bytes, Some(expected));
        assert_eq!((usage.wall_ms, usage.gpu_memory_peak_bytes), (None, None));
    }
}
