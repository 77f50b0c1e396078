/*!
The I/O shell: performs the core's effects and feeds results back as events; must
not decide lifecycle questions.

Owns: the durable store (`store`, SQLite), the runner's identity files (`identity`),
the helpers that keep secrets private on disk (`secure_fs`), and the processes of jobs
(`jobs`).

Must not: decide what to persist or when. The core (`crate::core`) emits `Durable`
writes; this module makes them durable, exactly as asked, and reports failures.
*/
#![allow(clippy::disallowed_methods)] // the I/O shell owns the clock and randomness (clippy.toml)

pub mod account_fs;
pub mod accounting;
pub mod control;
pub mod driver;
mod hardware_check;
pub mod hooks;
pub mod identity;
pub mod install;
#[cfg(unix)]
pub mod job_endpoint;
pub mod jobs;
mod memory;
pub mod metrics;
mod notices;
pub mod orphans;
pub mod secure_fs;
pub mod settings;
pub mod signals;
pub mod status;
pub mod store;
pub mod timers;
pub mod transfer;
pub mod ws;

pub use control::Control;
pub use driver::{RunnerHandle, StartError, Transition, leave, start, start_install};
pub use settings::{HardwareSource, RunnerSettings, Secret, SettingsError, TraceLimits};
pub use status::RunnerStatus;
