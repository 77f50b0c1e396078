//! Giving back the pages that starting up touched. A runner idles for days, and most
//! of what it has resident then is not data but the binary's own code and read-only
//! data: the command line, registration, TLS set-up and hardware collection ran once,
//! and the kernel maps 64 KiB around every page a fault touches, so their pages stay
//! mapped (about 7 of the 11 MiB an idle runner had resident). Once the runner is
//! Active and idle, the read-only mappings of files that this process never wrote to
//! are dropped from its page tables (`MADV_DONTNEED`): the pages stay in the page
//! cache, and what the runner runs next faults back in as it runs, without a disk read.
//!
//! Mechanics, not a decision: it changes nothing anyone can observe but resident
//! memory, as returning freed heap to the system would.
//!
//! Must not: touch a mapping that is writable, shared, or holds a page this process
//! wrote (relocated read-only data does: dropping it would bring back the file's
//! unrelocated bytes), or anything that is not a file.

use std::sync::Once;

/// The first call, from the runner's loop, releases the pages on a blocking thread;
/// later calls do nothing.
pub fn release_startup_pages_once() {
    static RELEASED: Once = Once::new();
    RELEASED.call_once(|| {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn_blocking(|| {
                let released = release_startup_pages();
                tracing::debug!(bytes = released, "startup pages released");
            }));
        }
    });
}

/// Drop this process's clean read-only file mappings from its page tables. Returns
/// how many bytes of mappings were released (not all of them were resident).
#[cfg(target_os = "linux")]
pub fn release_startup_pages() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for mapping in clean_read_only_file_mappings(&smaps) {
        let Ok(length) = usize::try_from(mapping.end - mapping.start) else {
            continue;
        };
        // SAFETY: the range is one whole mapping of this process, read from smaps just
        // now; it is private, read-only and holds no page this process wrote, so
        // dropping it discards nothing: each page is read again from the page cache at
        // its next access. Mappings are not unmapped or changed by this call.
        let rc = unsafe {
            libc::madvise(
                mapping.start as usize as *mut libc::c_void,
                length,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            released += length;
        }
    }
    released
}

#[cfg(not(target_os = "linux"))]
pub fn release_startup_pages() -> usize {
    0
}

/// One mapping's address range.
#[cfg(any(target_os = "linux", test))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

/// The mappings of `smaps` that may be dropped: backed by a file, private, not
/// writable, and with no anonymous (written) page.
#[cfg(any(target_os = "linux", test))]
pub fn clean_read_only_file_mappings(smaps: &str) -> Vec<Range> {
    let mut found = Vec::new();
    let mut current: Option<Range> = None;
    let mut anonymous_kb: Option<u64> = None;
    let mut finish = |range: Option<Range>, anonymous: Option<u64>| {
        if let (Some(range), Some(0)) = (range, anonymous) {
            found.push(range);
        }
    };
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            finish(current.take(), anonymous_kb.take());
            current = header;
            continue;
        }
        if let Some(value) = line.strip_prefix("Anonymous:") {
            anonymous_kb = value
                .trim()
                .strip_suffix("kB")
                .and_then(|kb| kb.trim().parse().ok());
        }
    }
    finish(current, anonymous_kb);
    found
}

/// `Some(Some(range))` for the header line of a mapping that may be dropped if it
/// holds no written page, `Some(None)` for the header of one that may not, `None` for
/// a line that is no header.
#[cfg(any(target_os = "linux", test))]
fn mapping_header(line: &str) -> Option<Option<Range>> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    // Headers have the permissions next; the fields below them ("Rss:") do not.
    if perms.len() != 4 || !perms.starts_with(['r', '-']) {
        return None;
    }
    let (_offset, _device, inode) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.next().unwrap_or("");
    let droppable = perms.as_bytes()[1] == b'-'
        && perms.as_bytes()[3] == b'p'
        && inode != "0"
        && path.starts_with('/');
    Some(droppable.then_some(Range { start, end }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c1a00000-55d0c1c52000 r--p 00000000 fd:01 1054 /usr/bin/fyn-runner
Size:               2376 kB
Rss:                1308 kB
Anonymous:             0 kB
55d0c1c52000-55d0c2309000 r-xp 00252000 fd:01 1054 /usr/bin/fyn-runner
Size:               6876 kB
Rss:                6120 kB
Anonymous:             0 kB
55d0c2309000-55d0c2340000 r--p 00909000 fd:01 1054 /usr/bin/fyn-runner
Size:                220 kB
Rss:                 220 kB
Anonymous:           220 kB
55d0c2340000-55d0c2342000 rw-p 00940000 fd:01 1054 /usr/bin/fyn-runner
Size:                  8 kB
Anonymous:             8 kB
55d0c3000000-55d0c3100000 rw-p 00000000 00:00 0 [heap]
Anonymous:          1024 kB
7f0000000000-7f0000001000 rw-s 00000000 fd:01 2000 /var/lib/fyn-runner/runner.db-shm
Anonymous:             0 kB
7f0000100000-7f0000200000 r-xp 00028000 fd:01 3000 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_clean_private_read_only_file_mappings_are_released() {
        let found = clean_read_only_file_mappings(SMAPS);
        assert_eq!(
            found,
            [
                // The binary's headers and read-only data, and its code.
                Range {
                    start: 0x55d0_c1a0_0000,
                    end: 0x55d0_c1c5_2000
                },
                Range {
                    start: 0x55d0_c1c5_2000,
                    end: 0x55d0_c230_9000
                },
                // libc's code.
                Range {
                    start: 0x7f00_0010_0000,
                    end: 0x7f00_0020_0000
                },
            ],
            "relocated read-only data, writable, shared, anonymous and vdso mappings stay"
        );
    }

    #[test]
    fn a_mapping_whose_anonymous_count_is_missing_or_unreadable_stays() {
        let smaps = "\
55d0c1a00000-55d0c1c52000 r--p 00000000 fd:01 1054 /usr/bin/fyn-runner
Rss:                1308 kB
55d0c1c52000-55d0c2309000 r-xp 00252000 fd:01 1054 /usr/bin/fyn-runner
Anonymous:          many kB
";
        assert!(clean_read_only_file_mappings(smaps).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_this_processes_pages_leaves_it_running() {
        let before = file_resident_kb();
        let released = release_startup_pages();
        assert!(released > 0, "this test binary has read-only file mappings");
        // Everything still runs: code, read-only data and libc fault back in.
        let text = format!("{:?}", vec![1, 2, 3]);
        assert_eq!(text, "[1, 2, 3]");
        assert!(file_resident_kb() < before, "{before} kB before");
    }

    #[cfg(target_os = "linux")]
    /// Resident pages of files (tests beside this one allocate, but do not load
    /// files on this scale).
    fn file_resident_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("RssFile:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse().ok())
            .expect("RssFile")
    }
}
