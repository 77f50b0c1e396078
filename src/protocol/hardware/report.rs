//! The hardware inventory record.
//!
//! The JSON form of these types is stored by the dev-server and the control
//! plane, so field names are part of the wire contract: snake_case, and never
//! renamed. New fields must be additive (and `Option` or defaulted) so older
//! records still deserialize.

use serde::{Deserialize, Serialize};

/// Everything the runner reports about the machine it runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardwareReport {
    pub os: OsInfo,
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    pub job_disk: JobDisk,
    pub gpus: GpuInventory,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OsInfo {
    /// `NAME` from os-release, e.g. "Ubuntu".
    pub name: String,
    /// `VERSION_ID` from os-release, e.g. "24.04"; rolling distributions
    /// have none.
    pub version: Option<String>,
    /// Kernel release, e.g. "6.8.0-48-generic".
    pub kernel: String,
    /// CPU architecture as the kernel names it, e.g. "x86_64".
    pub arch: String,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub model: String,
    /// Vendor id, e.g. "GenuineIntel" or "AuthenticAMD".
    pub vendor: String,
    /// Hardware threads the kernel knows about.
    pub logical_cores: u32,
    pub physical_cores: Option<u32>,
    /// Nominal clock as printed in the model name ("... @ 2.10GHz"); not the
    /// current clock, which changes from second to second.
    pub base_frequency_mhz: Option<u64>,
    /// Highest clock the kernel's cpufreq driver allows ("CPU max MHz").
    pub max_frequency_mhz: Option<u64>,
    /// Cache sizes summed over all instances on the machine, as lscpu
    /// reports them.
    pub l1d_cache_bytes: Option<u64>,
    pub l1i_cache_bytes: Option<u64>,
    pub l2_cache_bytes: Option<u64>,
    pub l3_cache_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryInfo {
    pub total_bytes: u64,
}

/// The filesystem that holds the job area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDisk {
    pub mount_point: String,
    pub total_bytes: u64,
    /// Free space when the report was collected. Volatile: the cache
    /// comparison ignores it (see `crate::hardware::compare`).
    pub available_bytes: u64,
}

/// What the runner found out about GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GpuInventory {
    /// No `nvidia-smi` on this machine.
    None,
    Nvidia {
        driver_version: String,
        cuda_version: Option<String>,
        devices: Vec<Gpu>,
    },
    /// `nvidia-smi` exists but does not work (driver not loaded, version
    /// mismatch after an upgrade, ...). Jobs should not be sent GPU work.
    DriverProblem { detail: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_total_mib: u64,
    pub driver_version: String,
    /// e.g. "9.0"; kept as text because it is a version, not a number.
    pub compute_capability: String,
    pub pci_bus_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gpu_inventory_is_tagged_with_kind() {
        assert_eq!(
            serde_json::to_value(GpuInventory::None).unwrap(),
            json!({"kind": "none"})
        );
        assert_eq!(
            serde_json::to_value(GpuInventory::DriverProblem { detail: "x".into() }).unwrap(),
            json!({"kind": "driver_problem", "detail": "x"})
        );
        let nvidia = GpuInventory::Nvidia {
            driver_version: "580.159.04".into(),
            cuda_version: None,
            devices: vec![],
        };
        assert_eq!(
            serde_json::to_value(nvidia).unwrap(),
            json!({"kind": "nvidia", "driver_version": "580.159.04", "cuda_version": null, "devices": []})
        );
    }
}
