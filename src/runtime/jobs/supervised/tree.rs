//! A job's processes as its supervisor sees them. On Linux the supervisor is a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`): a process of the job whose parent dies is
//! handed to the supervisor instead of to init, so every descendant of the job —
//! one that left the process group with `setsid`, a double-forked daemon — stays a
//! descendant of the supervisor, and `/proc` shows which processes those are. Other
//! Unix systems have no subreaper: there the job is its process group, and a process
//! that leaves the group escapes (docs/operations.md says so).
//!
//! Must not: signal a process it cannot tie to the job (a pid alone proves nothing).

use std::io;

/// Make this process the reaper of its orphaned descendants.
pub fn become_subreaper() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER reads its integer argument only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `kill(-pgid, signal)`; a group that is gone already is no error.
pub fn signal_group(pgid: u32, signal: libc::c_int) {
    let Some(pgid) = i32::try_from(pgid).ok().filter(|pgid| *pgid > 1) else {
        return;
    };
    // SAFETY: kill(2) reads its two integers; `-pgid` with pgid > 1 names one process
    // group, never this process's own (the job's group was made for the job) nor every
    // process (-1).
    unsafe { libc::kill(-pgid, signal) };
}

/// `kill(pid, signal)` for a process known to be a descendant of this one.
pub fn signal_process(pid: u32, signal: libc::c_int) {
    let Some(pid) = i32::try_from(pid).ok().filter(|pid| *pid > 1) else {
        return;
    };
    // SAFETY: kill(2) reads its two integers; pid > 1 names one process.
    unsafe { libc::kill(pid, signal) };
}

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    pub pgrp: u32,
    pub zombie: bool,
    /// When it started, in clock ticks after boot: with the pid, who it is.
    pub start_ticks: u64,
}

/// The process `pid` now, if it exists (and `/proc` does).
pub fn stat_of(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Fields after the command name, which may itself hold spaces and parentheses.
fn parse_stat(pid: u32, text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        zombie: fields.first()? == &"Z",
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Every process `/proc` lists (none where there is no `/proc`).
pub fn all_processes() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat_of)
        .collect()
}

/// The living descendants of `root` (zombies left out: they are dead, and waiting to
/// be reaped).
pub fn descendants(root: u32) -> Vec<u32> {
    let all = all_processes();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for process in all.iter().filter(|p| p.ppid == parent) {
            if !found.contains(&process.pid) && process.pid != root {
                found.push(process.pid);
                frontier.push(process.pid);
            }
        }
    }
    found.retain(|pid| all.iter().any(|p| p.pid == *pid && !p.zombie));
    found
}

/// Whether the environment of `pid` names this job attempt (`FYN_JOB_ID`,
/// `FYN_JOB_ATTEMPT`, which every job process starts with).
pub fn carries_job_marker(pid: u32, job_id: &str, attempt: u32) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let id = format!("FYN_JOB_ID={job_id}");
    let attempt = format!("FYN_JOB_ATTEMPT={attempt}");
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    vars.contains(&id.as_bytes()) && vars.contains(&attempt.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_read_right() {
        let line =
            "4242 (a (b) c) S 7 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(4242, line).expect("parses");
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                ppid: 7,
                pgrp: 4242,
                zombie: false,
                start_ticks: 987654,
            }
        );
        assert!(parse_stat(1, "garbage").is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_found_with_its_parent() {
        let me = std::process::id();
        let stat = stat_of(me).expect("/proc has this process");
        assert_eq!(stat.pid, me);
        assert!(!stat.zombie);
        assert!(descendants(stat.ppid).contains(&me));
    }
}
