//! The operator's surface on the real binary (issue 18): metrics and health probes
//! (`metrics`) and lifecycle hooks (`hooks`).
// Unix only: the runner is stopped with SIGTERM and hooks are shell scripts.
#![cfg(unix)]
#![allow(clippy::disallowed_methods)] // probes are waited for against the clock

mod hooks;
mod metrics;
mod support;
