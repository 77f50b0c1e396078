//! Windows: a local named pipe, `\\.\pipe\fyn-runner-<hash>`, where the hash stands
//! for the state directory, so each state directory has its own pipe as each has its
//! own socket on Unix. The pipe refuses remote clients and its access list lets in
//! only the runner's account, `SYSTEM` and Administrators. The first instance is
//! created with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so two runners cannot both own it.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions,
};
use windows_sys::Win32::Foundation::{ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY};
use windows_sys::Win32::Storage::FileSystem::{SECURITY_IDENTIFICATION, SECURITY_SQOS_PRESENT};

use super::ControlError;
use crate::platform::acl;

/// The pipe of the runner that owns `state_dir`. Windows paths are case-insensitive,
/// so the absolute path is lowercased before it is hashed (FNV-1a, 64 bits: stable
/// across builds, unlike std's hasher).
pub fn pipe_name(state_dir: &Path) -> String {
    let absolute = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let key = absolute
        .to_string_lossy()
        .trim_end_matches(['\\', '/'])
        .to_lowercase();
    format!(r"\\.\pipe\fyn-runner-{:016x}", fnv1a(key.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn name(state_dir: &Path) -> String {
    pipe_name(state_dir)
}

/// Whether a runner owns the pipe of `state_dir` (it exists; busy counts as yes).
pub fn answers(state_dir: &Path) -> bool {
    use std::os::windows::fs::OpenOptionsExt;
    // Identification only: whoever serves that name (it could be a squatter, if the
    // runner is not up) must not be able to act as this process, which may be SYSTEM.
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .security_qos_flags(SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION)
        .open(pipe_name(state_dir))
    {
        Ok(_) => true,
        Err(e) => e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32),
    }
}

fn create(name: &str, first: bool) -> io::Result<NamedPipeServer> {
    acl::with_private_attributes(|attributes| {
        // SAFETY: `attributes` points to a SECURITY_ATTRIBUTES whose descriptor lives
        // for this call, as the function requires.
        unsafe {
            ServerOptions::new()
                .first_pipe_instance(first)
                .reject_remote_clients(true)
                .create_with_security_attributes_raw(name, attributes)
        }
    })
}

/// Pipe instances: one waits for the next client while others are answered.
pub struct Listener {
    name: String,
    next: NamedPipeServer,
}

impl Listener {
    pub async fn accept(&mut self) -> io::Result<NamedPipeServer> {
        if let Err(error) = self.next.connect().await {
            // That instance may be unusable now: wait on a fresh one next time.
            self.next = create(&self.name, false)?;
            return Err(error);
        }
        let waiting = create(&self.name, false)?;
        Ok(std::mem::replace(&mut self.next, waiting))
    }
}

/// A pipe disappears with its last handle; nothing to remove.
pub struct Bound;

impl Bound {
    pub fn remove(self) {}
}

pub fn bind(state_dir: &Path) -> Result<(Listener, Bound), ControlError> {
    let name = pipe_name(state_dir);
    let next = create(&name, true).map_err(|source| {
        if source.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) {
            // The first-instance flag failed: another process has this pipe.
            ControlError::InUse {
                path: state_dir.display().to_string(),
            }
        } else {
            ControlError::Bind {
                path: name.clone(),
                source,
            }
        }
    })?;
    Ok((Listener { name, next }, Bound))
}

/// Connect, waiting a little while every instance is busy answering someone else.
pub async fn connect(state_dir: &Path) -> io::Result<NamedPipeClient> {
    let name = pipe_name(state_dir);
    let mut tries = 0;
    loop {
        match ClientOptions::new().open(&name) {
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_directory_has_its_own_pipe_whatever_its_case() {
        let a = pipe_name(Path::new(r"C:\ProgramData\fyn-runner\state"));
        assert!(a.starts_with(r"\\.\pipe\fyn-runner-"), "{a}");
        assert_eq!(a, pipe_name(Path::new(r"c:\programdata\FYN-RUNNER\state\")));
        assert_ne!(a, pipe_name(Path::new(r"C:\ProgramData\fyn-runner\other")));
    }
}
