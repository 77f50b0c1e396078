//! The hardware record on the wire: the report (`hardware_full`), the field-level
//! change lists (`hardware_changes`, the `hardware_changed` event), and applying a
//! change list to a stored record (what a control plane does with it).
//!
//! One typed definition for the runner's core and runtime and for the dev-server, so
//! nothing crosses as untyped JSON. Collecting the report and caching it belong to
//! `crate::hardware`, which must be the only part that reads the machine.

mod changes;
mod report;

pub use changes::{ApplyError, FieldChange, HardwareChanges, apply_changes, diff_values};
pub use report::{CpuInfo, Gpu, GpuInventory, HardwareReport, JobDisk, MemoryInfo, OsInfo};
