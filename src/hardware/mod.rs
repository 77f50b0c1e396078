/*!
Hardware inventory: what the machine offers to jobs.

This module owns
- collecting the inventory of the running machine ([`collect`]): OS, CPU,
  memory, the disk that holds the job area, and NVIDIA GPUs;
- parsing the output of the tools involved (`lscpu -J`, `nvidia-smi`,
  `/proc/meminfo`, os-release) in [`parse`], as pure functions over text;
- the local cache of the last report (`hardware.json` in the state
  directory), the comparison with a fresh report, and the field-level change
  list the control plane applies to its stored copy ([`apply_changes`]).

It must not touch
- the network: sending reports belongs to the session layer;
- the lifecycle core (`crate::core`): the core decides *when* to collect,
  this module only says *what* is there;
- tokio: parsers and the probe are plain blocking code; async callers wrap
  [`collect`] in `tokio::task::spawn_blocking`.

# Volatile fields

`job_disk.available_bytes` changes all the time. It is reported and cached,
but [`compare`] ignores it (see [`VOLATILE_PATHS`]), so free space alone never
makes the inventory "changed", and it never appears in a [`HardwareChanges`]
list. Only `job_disk.total_bytes` and the mount point count as disk changes.
*/

pub mod cache;
pub mod parse;
pub mod probe;
mod render;

pub use cache::{
    CACHE_FILE_NAME, CacheError, CacheStatus, VOLATILE_PATHS, cache_path, compare, diff_reports,
    load_cache, write_cache,
};
// The record and its change lists are wire types, shared with the control plane.
pub use crate::protocol::{
    ApplyError, CpuInfo, FieldChange, Gpu, GpuInventory, HardwareChanges, HardwareReport, JobDisk,
    MemoryInfo, OsInfo, apply_changes, diff_values,
};
pub use parse::ParseError;
pub use probe::{
    CollectError, CommandOutput, CommandRunner, SystemCommandRunner, collect, collect_with,
};
pub use render::render_text;
