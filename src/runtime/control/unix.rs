//! Unix: a socket `control.sock` in the state directory, mode 0600.

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use super::ControlError;

pub const SOCKET_NAME: &str = "control.sock";

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

pub fn name(state_dir: &Path) -> String {
    socket_path(state_dir).display().to_string()
}

/// Whether a runner answers on the socket of `state_dir`.
pub fn answers(state_dir: &Path) -> bool {
    let path = socket_path(state_dir);
    path.exists() && std::os::unix::net::UnixStream::connect(&path).is_ok()
}

pub struct Listener(UnixListener);

impl Listener {
    pub async fn accept(&mut self) -> io::Result<UnixStream> {
        self.0.accept().await.map(|(stream, _)| stream)
    }
}

/// The socket file, removed when the runner stops.
pub struct Bound(PathBuf);

impl Bound {
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn bind(state_dir: &Path) -> Result<(Listener, Bound), ControlError> {
    let path = socket_path(state_dir);
    let shown = path.display().to_string();
    // A socket file with nobody behind it is left over from a crash: replace it.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| ControlError::Bind {
        path: shown.clone(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ControlError::Bind {
            path: shown,
            source,
        }
    })?;
    Ok((Listener(listener), Bound(path)))
}

pub async fn connect(state_dir: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(socket_path(state_dir)).await
}
