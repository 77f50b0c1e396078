//! Human-readable summary for `fyn-runner hardware`.

use crate::protocol::{CpuInfo, Gpu, GpuInventory, HardwareReport, JobDisk, OsInfo};

/// A multi-line summary of the report, for people rather than programs (the
/// JSON form is the stable one).
pub fn render_text(report: &HardwareReport) -> String {
    let mut lines = vec![os_line(&report.os)];
    lines.extend(cpu_lines(&report.cpu));
    lines.push(format!(
        "Memory:    {}",
        format_bytes(report.memory.total_bytes)
    ));
    lines.push(disk_line(&report.job_disk));
    lines.extend(gpu_lines(&report.gpus));
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn os_line(os: &OsInfo) -> String {
    let name = match &os.version {
        Some(version) => format!("{} {version}", os.name),
        None => os.name.clone(),
    };
    format!(
        "Host:      {} — {name}, kernel {}, {}",
        os.hostname, os.kernel, os.arch
    )
}

fn cpu_lines(cpu: &CpuInfo) -> Vec<String> {
    let mut cores = format!("{} logical", cpu.logical_cores);
    if let Some(physical) = cpu.physical_cores {
        cores.push_str(&format!(" / {physical} physical"));
    }
    let mut lines = vec![format!(
        "CPU:       {} ({}), {cores} cores",
        cpu.model, cpu.vendor
    )];
    let clocks: Vec<String> = [
        ("base", cpu.base_frequency_mhz),
        ("max", cpu.max_frequency_mhz),
    ]
    .into_iter()
    .filter_map(|(label, mhz)| Some(format!("{label} {} MHz", mhz?)))
    .collect();
    if !clocks.is_empty() {
        lines.push(format!("           {}", clocks.join(", ")));
    }
    let caches: Vec<String> = [
        ("L1d", cpu.l1d_cache_bytes),
        ("L1i", cpu.l1i_cache_bytes),
        ("L2", cpu.l2_cache_bytes),
        ("L3", cpu.l3_cache_bytes),
    ]
    .into_iter()
    .filter_map(|(label, bytes)| Some(format!("{label} {}", format_bytes(bytes?))))
    .collect();
    if !caches.is_empty() {
        lines.push(format!("Caches:    {} (machine total)", caches.join(", ")));
    }
    lines
}

fn disk_line(disk: &JobDisk) -> String {
    format!(
        "Job disk:  {} — {} available of {}",
        disk.mount_point,
        format_bytes(disk.available_bytes),
        format_bytes(disk.total_bytes)
    )
}

fn gpu_lines(gpus: &GpuInventory) -> Vec<String> {
    match gpus {
        GpuInventory::None => vec!["GPUs:      none (no nvidia-smi)".to_owned()],
        GpuInventory::DriverProblem { detail } => {
            vec![format!("GPUs:      NVIDIA driver problem: {detail}")]
        }
        GpuInventory::Nvidia {
            driver_version,
            cuda_version,
            devices,
        } => {
            let cuda = cuda_version.as_deref().unwrap_or("unknown");
            let mut lines = vec![format!(
                "GPUs:      {} × NVIDIA, driver {driver_version}, CUDA {cuda}",
                devices.len()
            )];
            lines.extend(devices.iter().map(gpu_line));
            lines
        }
    }
}

fn gpu_line(gpu: &Gpu) -> String {
    format!(
        "  [{}] {}, {} MiB, compute {}, PCI {}, {}",
        gpu.index, gpu.name, gpu.memory_total_mib, gpu.compute_capability, gpu.pci_bus_id, gpu.uuid
    )
}

/// Binary units, one decimal unless the value is whole ("768 KiB",
/// "125.9 GiB").
fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(768 * 1024), "768 KiB");
        assert_eq!(format_bytes(131_981_020 * 1024), "125.9 GiB");
        assert_eq!(format_bytes(300 * 1024 * 1024), "300 MiB");
    }
}
