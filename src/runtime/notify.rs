//! The service manager's side channel (`sd_notify`): readiness when the runner reaches
//! Active, the phase as `STATUS=`, `STOPPING=1` when it starts to drain, and
//! `EXTEND_TIMEOUT_USEC` while a legitimate drain is under way so systemd does not kill
//! the runner in the middle of it. Best effort: a missing or broken socket changes
//! nothing about the runner.
//!
//! `sd_notify` is systemd's, so this is Linux only. Elsewhere [`Notifier::new`] always
//! gives a disabled notifier: launchd has no such channel, and the Windows service
//! tells the service control manager its state itself (`crate::service::windows`).

pub use imp::Notifier;

#[cfg(target_os = "linux")]
mod imp {
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;

    use tracing::debug;

    pub struct Notifier {
        target: Option<(UnixDatagram, Target)>,
    }

    enum Target {
        Path(PathBuf),
        Abstract(Vec<u8>),
    }

    impl Notifier {
        /// Notify through `socket` (the `NOTIFY_SOCKET` value), if there is one.
        pub fn new(socket: Option<&str>) -> Self {
            let target = socket.filter(|s| !s.is_empty()).and_then(|s| {
                let target = match s.strip_prefix('@') {
                    Some(name) => Target::Abstract(name.as_bytes().to_vec()),
                    None => Target::Path(PathBuf::from(s)),
                };
                UnixDatagram::unbound().ok().map(|sock| (sock, target))
            });
            Self { target }
        }

        pub fn enabled(&self) -> bool {
            self.target.is_some()
        }

        pub fn send(&self, message: &str) {
            let Some((socket, target)) = &self.target else {
                return;
            };
            let result = match target {
                Target::Path(path) => socket.send_to(message.as_bytes(), path),
                Target::Abstract(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name)
                        .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "service manager notification failed");
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn messages_reach_a_path_socket() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("notify");
            let listener = UnixDatagram::bind(&path).expect("bind");
            let notifier = Notifier::new(path.to_str());
            assert!(notifier.enabled());
            notifier.send("READY=1\nSTATUS=Active");
            let mut buf = [0u8; 64];
            let n = listener.recv(&mut buf).expect("received");
            assert_eq!(&buf[..n], b"READY=1\nSTATUS=Active");
            assert!(!Notifier::new(None).enabled());
            assert!(!Notifier::new(Some("")).enabled());
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    /// No systemd here: nothing to notify.
    pub struct Notifier;

    impl Notifier {
        pub fn new(_socket: Option<&str>) -> Self {
            Self
        }

        pub fn enabled(&self) -> bool {
            false
        }

        pub fn send(&self, _message: &str) {}
    }
}
