//! Hardware inventory against output captured on real machines
//! (`tests/fixtures/hardware/`, see the README there).

use std::cell::RefCell;
use std::fs;
use std::io;
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fyn_runner::hardware::parse::{
    NVIDIA_SMI_QUERY_FIELDS, ParseError, parse_cuda_version, parse_lscpu_json, parse_meminfo,
    parse_nvidia_smi_query, parse_os_release,
};
use fyn_runner::hardware::probe::probe_gpus;
use fyn_runner::hardware::{
    CacheError, CacheStatus, CollectError, CommandOutput, CommandRunner, CpuInfo, Gpu,
    GpuInventory, HardwareReport, JobDisk, MemoryInfo, OsInfo, apply_changes, collect,
    collect_with, compare, load_cache, render_text, write_cache,
};
use serde_json::json;

const H200: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/hardware/nvidia-h200-16c"
);
const KVM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/hardware/kvm-2c-nogpu"
);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn fixture(machine: &str, file: &str) -> String {
    let path = Path::new(machine).join(file);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture was captured with a wider field list
/// (index,uuid,name,memory.total,memory.used,driver_version,pci.bus_id,
/// compute_cap,power.limit,temperature.gpu,utilization.gpu); rebuild each line
/// in the order the runner queries.
fn h200_query_output() -> String {
    const RUNNER_ORDER: [usize; 7] = [0, 1, 2, 5, 3, 7, 6];
    fixture(H200, "nvidia-smi-query.csv")
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(", ").collect();
            assert_eq!(fields.len(), 11, "fixture layout changed: {line}");
            RUNNER_ORDER.map(|i| fields[i]).join(", ") + "\n"
        })
        .collect()
}

fn ok(stdout: &str) -> io::Result<CommandOutput> {
    Ok(CommandOutput {
        status: Some(0),
        stdout: stdout.to_owned(),
        stderr: String::new(),
    })
}

fn not_found() -> io::Result<CommandOutput> {
    Err(io::Error::new(io::ErrorKind::NotFound, "not installed"))
}

/// Answers commands from a closure and records what was asked.
struct FakeRunner<F> {
    answer: F,
    calls: RefCell<Vec<String>>,
}

impl<F: Fn(&str, &[&str]) -> io::Result<CommandOutput>> FakeRunner<F> {
    fn new(answer: F) -> Self {
        Self {
            answer,
            calls: RefCell::new(Vec::new()),
        }
    }
}

impl<F: Fn(&str, &[&str]) -> io::Result<CommandOutput>> CommandRunner for FakeRunner<F> {
    fn run(&self, program: &str, args: &[&str]) -> io::Result<CommandOutput> {
        let mut call = vec![program];
        call.extend(args);
        self.calls.borrow_mut().push(call.join(" "));
        (self.answer)(program, args)
    }
}

/// The H200 machine as its tools answered. `nvidia-smi --version` fails, as
/// on drivers that predate the flag, so the CUDA version comes from the
/// banner.
fn h200_runner() -> FakeRunner<impl Fn(&str, &[&str]) -> io::Result<CommandOutput>> {
    FakeRunner::new(|program, args| match (program, args) {
        ("lscpu", ["-J"]) => ok(&fixture(H200, "lscpu.json")),
        ("nvidia-smi", [query, "--format=csv,noheader,nounits"])
            if query.starts_with("--query-gpu=") =>
        {
            ok(&h200_query_output())
        }
        ("nvidia-smi", ["--version"]) => Ok(CommandOutput {
            status: Some(1),
            stdout: String::new(),
            stderr: "Unknown option: --version\n".into(),
        }),
        ("nvidia-smi", []) => ok(&fixture(H200, "nvidia-smi.txt")),
        other => panic!("unexpected command {other:?}"),
    })
}

/// nvidia-smi answers only the GPU query; everything else is scripted by
/// the test.
fn gpu_runner(
    query: impl Fn() -> io::Result<CommandOutput>,
) -> FakeRunner<impl Fn(&str, &[&str]) -> io::Result<CommandOutput>> {
    FakeRunner::new(move |program, args| match (program, args.first()) {
        ("nvidia-smi", Some(arg)) if arg.starts_with("--query-gpu=") => query(),
        other => panic!("unexpected command {other:?}"),
    })
}

fn h200_gpu() -> Gpu {
    Gpu {
        index: 0,
        uuid: "GPU-bec51b55-bb6f-5612-d41f-b88ced4de17f".into(),
        name: "NVIDIA H200".into(),
        memory_total_mib: 143771,
        driver_version: "580.159.04".into(),
        compute_capability: "9.0".into(),
        pci_bus_id: "00000000:00:06.0".into(),
    }
}

/// A complete report of the H200 machine, built from its fixtures.
fn h200_report() -> HardwareReport {
    let release = parse_os_release(&fixture(H200, "os-release.txt")).unwrap();
    let lscpu = parse_lscpu_json(&fixture(H200, "lscpu.json")).unwrap();
    HardwareReport {
        os: OsInfo {
            name: release.name,
            version: release.version_id,
            kernel: "6.18.44-fc-v657-gpu".into(),
            arch: "x86_64".into(),
            hostname: "vm".into(),
        },
        cpu: CpuInfo {
            model: lscpu.model_name.unwrap(),
            vendor: lscpu.vendor.unwrap(),
            logical_cores: lscpu.logical_cpus,
            physical_cores: lscpu.physical_cores,
            base_frequency_mhz: lscpu.base_mhz,
            max_frequency_mhz: lscpu.max_mhz,
            l1d_cache_bytes: lscpu.l1d_cache_bytes,
            l1i_cache_bytes: lscpu.l1i_cache_bytes,
            l2_cache_bytes: lscpu.l2_cache_bytes,
            l3_cache_bytes: lscpu.l3_cache_bytes,
        },
        memory: MemoryInfo {
            total_bytes: parse_meminfo(&fixture(H200, "proc-meminfo.txt")).unwrap(),
        },
        // From the machine's `df -B1`.
        job_disk: JobDisk {
            mount_point: "/".into(),
            total_bytes: 270_553_174_016,
            available_bytes: 68_702_359_552,
        },
        gpus: GpuInventory::Nvidia {
            driver_version: "580.159.04".into(),
            cuda_version: parse_cuda_version(&fixture(H200, "nvidia-smi.txt")),
            devices: parse_nvidia_smi_query(&h200_query_output()).unwrap(),
        },
    }
}

// ---- parsers -------------------------------------------------------------

#[test]
fn h200_gpu_query() {
    let gpus = parse_nvidia_smi_query(&h200_query_output()).unwrap();
    assert_eq!(gpus, vec![h200_gpu()]);
}

#[test]
fn several_gpus_keep_their_order_and_skip_blank_lines() {
    let csv = "0, GPU-a, NVIDIA H200, 580.159.04, 143771, 9.0, 00000000:00:06.0\n\n\
               1, GPU-b, NVIDIA H200, 580.159.04, 143771, 9.0, 00000000:00:07.0\n";
    let gpus = parse_nvidia_smi_query(csv).unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[1].index, 1);
    assert_eq!(gpus[1].uuid, "GPU-b");
    assert_eq!(gpus[1].pci_bus_id, "00000000:00:07.0");
}

#[test]
fn gpu_query_with_the_wrong_column_count_names_line_and_content() {
    // The fixture as captured has 11 columns, not the 7 the runner asks for.
    let raw = fixture(H200, "nvidia-smi-query.csv");
    let input = format!("{}{raw}", h200_query_output());
    let error = parse_nvidia_smi_query(&input).unwrap_err();
    let ParseError::FieldCount {
        line_number,
        expected,
        found,
        ref line,
        ..
    } = error
    else {
        panic!("wrong error: {error:?}");
    };
    assert_eq!((line_number, expected, found), (2, 7, 11));
    assert_eq!(line, raw.trim_end());
    let message = error.to_string();
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("GPU-bec51b55"), "{message}");
}

#[test]
fn gpu_query_with_non_numeric_memory_names_line_and_field() {
    let line = "0, GPU-bec51b55-bb6f-5612-d41f-b88ced4de17f, NVIDIA H200, 580.159.04, [N/A], 9.0, 00000000:00:06.0";
    let error = parse_nvidia_smi_query(&format!("\n{line}\n")).unwrap_err();
    assert!(
        matches!(
            &error,
            ParseError::InvalidNumber { line_number: 2, field: "memory.total", value, line: l, .. }
                if value == "[N/A]" && l == line
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("line 2") && message.contains("memory.total"),
        "{message}"
    );
}

#[test]
fn cuda_version_from_the_h200_banner() {
    assert_eq!(
        parse_cuda_version(&fixture(H200, "nvidia-smi.txt")).as_deref(),
        Some("13.0")
    );
}

#[test]
fn h200_lscpu() {
    let cpu = parse_lscpu_json(&fixture(H200, "lscpu.json")).unwrap();
    assert_eq!(
        cpu.model_name.as_deref(),
        Some("Intel(R) Xeon(R) Processor")
    );
    assert_eq!(cpu.vendor.as_deref(), Some("GenuineIntel"));
    assert_eq!(cpu.logical_cpus, 16);
    assert_eq!(cpu.physical_cores, Some(16));
    assert_eq!(cpu.l1d_cache_bytes, Some(768 * KIB));
    assert_eq!(cpu.l1i_cache_bytes, Some(512 * KIB));
    assert_eq!(cpu.l2_cache_bytes, Some(32 * MIB));
    assert_eq!(cpu.l3_cache_bytes, Some(300 * MIB));
    // This virtual CPU's model name has no "@ x.xxGHz" and there is no
    // cpufreq driver in the guest.
    assert_eq!((cpu.base_mhz, cpu.max_mhz), (None, None));
}

#[test]
fn kvm_lscpu() {
    let cpu = parse_lscpu_json(&fixture(KVM, "lscpu.json")).unwrap();
    assert_eq!(cpu.model_name.as_deref(), Some("AMD EPYC"));
    assert_eq!(cpu.vendor.as_deref(), Some("AuthenticAMD"));
    assert_eq!(cpu.logical_cpus, 2);
    assert_eq!(cpu.physical_cores, Some(2));
    assert_eq!(cpu.l1d_cache_bytes, Some(64 * KIB));
    assert_eq!(cpu.l1i_cache_bytes, Some(64 * KIB));
    assert_eq!(cpu.l2_cache_bytes, Some(2 * MIB));
    assert_eq!(cpu.l3_cache_bytes, Some(32 * MIB));
}

#[test]
fn lscpu_garbage_is_a_json_error() {
    let error = parse_lscpu_json("Architecture: x86_64").unwrap_err();
    assert!(matches!(error, ParseError::Json { .. }), "{error:?}");
    assert!(error.to_string().contains("lscpu"), "{error}");
}

#[test]
fn os_release_of_both_machines() {
    let ubuntu = parse_os_release(&fixture(H200, "os-release.txt")).unwrap();
    assert_eq!(ubuntu.name, "Ubuntu");
    assert_eq!(ubuntu.version_id.as_deref(), Some("24.04"));
    assert_eq!(ubuntu.pretty_name.as_deref(), Some("Ubuntu 24.04.3 LTS"));
    let debian = parse_os_release(&fixture(KVM, "os-release.txt")).unwrap();
    assert_eq!(debian.name, "Debian GNU/Linux");
    assert_eq!(debian.version_id.as_deref(), Some("12"));
    assert_eq!(debian.id.as_deref(), Some("debian"));
}

#[test]
fn meminfo_of_both_machines() {
    assert_eq!(
        parse_meminfo(&fixture(H200, "proc-meminfo.txt")).unwrap(),
        131_981_020 * KIB
    );
    assert_eq!(
        parse_meminfo(&fixture(KVM, "proc-meminfo.txt")).unwrap(),
        24_684_096 * KIB
    );
}

// ---- probe with injected tool output --------------------------------------

#[test]
fn h200_machine_through_the_probe() {
    let job_area = tempfile::tempdir().unwrap();
    let runner = h200_runner();
    let report = collect_with(job_area.path(), &runner).unwrap();

    assert_eq!(report.cpu.logical_cores, 16);
    assert_eq!(report.cpu.physical_cores, Some(16));
    assert_eq!(report.cpu.model, "Intel(R) Xeon(R) Processor");
    assert_eq!(report.cpu.l3_cache_bytes, Some(300 * MIB));
    assert_eq!(
        report.gpus,
        GpuInventory::Nvidia {
            driver_version: "580.159.04".into(),
            cuda_version: Some("13.0".into()),
            devices: vec![h200_gpu()],
        }
    );
    let query =
        format!("nvidia-smi --query-gpu={NVIDIA_SMI_QUERY_FIELDS} --format=csv,noheader,nounits");
    assert_eq!(
        NVIDIA_SMI_QUERY_FIELDS,
        "index,uuid,name,driver_version,memory.total,compute_cap,pci.bus_id"
    );
    assert!(runner.calls.borrow().contains(&query), "{:?}", runner.calls);
}

#[test]
fn cuda_version_from_nvidia_smi_version_flag() {
    let runner = FakeRunner::new(|program, args| match (program, args) {
        ("nvidia-smi", ["--version"]) => ok("NVIDIA-SMI version  : 580.159.04\n\
             NVML version        : 580.159\nDRIVER version      : 580.159.04\n\
             CUDA Version        : 13.0\n"),
        ("nvidia-smi", [query, _]) if query.starts_with("--query-gpu=") => ok(&h200_query_output()),
        other => panic!("the banner is not needed here: {other:?}"),
    });
    let GpuInventory::Nvidia { cuda_version, .. } = probe_gpus(&runner).unwrap() else {
        panic!("expected GPUs");
    };
    assert_eq!(cuda_version.as_deref(), Some("13.0"));
}

#[test]
fn kvm_machine_through_the_probe() {
    let job_area = tempfile::tempdir().unwrap();
    let runner = FakeRunner::new(|program, args| match (program, args) {
        ("lscpu", ["-J"]) => ok(&fixture(KVM, "lscpu.json")),
        ("nvidia-smi", _) => not_found(),
        other => panic!("unexpected command {other:?}"),
    });
    let report = collect_with(job_area.path(), &runner).unwrap();
    assert_eq!(report.gpus, GpuInventory::None);
    assert_eq!(report.cpu.logical_cores, 2);
    assert_eq!(report.cpu.model, "AMD EPYC");
    assert_eq!(report.cpu.l2_cache_bytes, Some(2 * MIB));
}

#[test]
fn missing_lscpu_falls_back_to_sysinfo() {
    let job_area = tempfile::tempdir().unwrap();
    let runner = FakeRunner::new(|_, _| not_found());
    let report = collect_with(job_area.path(), &runner).unwrap();
    assert!(report.cpu.logical_cores >= 1);
    assert!(!report.cpu.model.is_empty());
    assert_eq!(report.cpu.l1d_cache_bytes, None);
    assert_eq!(report.gpus, GpuInventory::None);
}

#[test]
fn failing_nvidia_smi_is_a_driver_problem_with_its_message() {
    let runner = gpu_runner(|| {
        Ok(CommandOutput {
            status: Some(9),
            // nvidia-smi reports this on stdout.
            stdout: "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA \
                     driver. Make sure that the latest NVIDIA driver is installed and running.\n"
                .into(),
            stderr: String::new(),
        })
    });
    let GpuInventory::DriverProblem { detail } = probe_gpus(&runner).unwrap() else {
        panic!("expected a driver problem");
    };
    assert!(detail.contains("exit status 9"), "{detail}");
    assert!(detail.contains("couldn't communicate"), "{detail}");
}

#[test]
fn nvidia_smi_that_cannot_start_is_a_driver_problem() {
    let runner = gpu_runner(|| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "permission denied",
        ))
    });
    let GpuInventory::DriverProblem { detail } = probe_gpus(&runner).unwrap() else {
        panic!("expected a driver problem");
    };
    assert!(detail.contains("permission denied"), "{detail}");
}

#[test]
fn nvidia_smi_listing_no_gpus_is_a_driver_problem() {
    let runner = gpu_runner(|| ok(""));
    assert!(matches!(
        probe_gpus(&runner).unwrap(),
        GpuInventory::DriverProblem { .. }
    ));
}

#[test]
fn garbage_from_nvidia_smi_is_an_error_naming_the_line() {
    let runner = gpu_runner(|| ok("this is not csv\n"));
    let error = probe_gpus(&runner).unwrap_err();
    assert!(
        matches!(
            error,
            CollectError::ToolOutput(ParseError::FieldCount { line_number: 1, .. })
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("line 1"), "{message}");
    assert!(message.contains("this is not csv"), "{message}");
}

#[test]
fn collect_on_this_machine() {
    let job_area = tempfile::tempdir().unwrap();
    let report = collect(&job_area.path().join("jobs")).unwrap();
    assert!(report.cpu.logical_cores >= 1);
    assert!(report.memory.total_bytes > 0);
    assert!(report.job_disk.total_bytes > 0);
    assert!(!report.os.kernel.is_empty());
    assert!(!job_area.path().join("jobs").exists());
}

// ---- report shape --------------------------------------------------------

#[test]
fn report_json_field_names() {
    let value = serde_json::to_value(h200_report()).unwrap();
    assert_eq!(value["os"]["name"], "Ubuntu");
    assert_eq!(value["os"]["version"], "24.04");
    assert_eq!(value["cpu"]["logical_cores"], 16);
    assert_eq!(value["cpu"]["l3_cache_bytes"], 300 * MIB);
    assert_eq!(value["memory"]["total_bytes"], 131_981_020 * KIB);
    assert_eq!(value["job_disk"]["mount_point"], "/");
    assert_eq!(value["gpus"]["kind"], "nvidia");
    assert_eq!(value["gpus"]["cuda_version"], "13.0");
    assert_eq!(
        value["gpus"]["devices"][0],
        json!({
            "index": 0,
            "uuid": "GPU-bec51b55-bb6f-5612-d41f-b88ced4de17f",
            "name": "NVIDIA H200",
            "memory_total_mib": 143771,
            "driver_version": "580.159.04",
            "compute_capability": "9.0",
            "pci_bus_id": "00000000:00:06.0"
        })
    );
    let back: HardwareReport = serde_json::from_value(value).unwrap();
    assert_eq!(back, h200_report());
}

#[test]
fn text_summary() {
    let text = render_text(&h200_report());
    for expected in [
        "Ubuntu 24.04",
        "Intel(R) Xeon(R) Processor",
        "16 logical / 16 physical",
        "L3 300 MiB",
        "125.9 GiB",
        "1 × NVIDIA, driver 580.159.04, CUDA 13.0",
        "NVIDIA H200, 143771 MiB, compute 9.0, PCI 00000000:00:06.0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

// ---- cache ---------------------------------------------------------------

#[cfg(unix)]
#[test]
fn cache_missing_then_written_then_read_back() {
    let state = tempfile::tempdir().unwrap();
    let report = h200_report();
    assert_eq!(load_cache(state.path()).unwrap(), None);
    assert_eq!(compare(None, &report), CacheStatus::Missing);

    write_cache(state.path(), &report).unwrap();
    let path = state.path().join("hardware.json");
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\n  \"cpu\": {"),
        "not pretty-printed:\n{text}"
    );
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let leftovers: Vec<_> = fs::read_dir(state.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temp file left behind: {leftovers:?}");

    let cached = load_cache(state.path()).unwrap();
    assert_eq!(cached.as_ref(), Some(&report));
    assert_eq!(compare(cached.as_ref(), &report), CacheStatus::Unchanged);
}

#[test]
fn free_disk_space_alone_is_unchanged() {
    let old = h200_report();
    let mut new = old.clone();
    new.job_disk.available_bytes -= 1 << 30;
    assert_eq!(compare(Some(&old), &new), CacheStatus::Unchanged);

    new.job_disk.total_bytes += 1 << 30;
    let CacheStatus::Changed(changes) = compare(Some(&old), &new) else {
        panic!("a bigger disk is a change");
    };
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["job_disk.total_bytes"]);
}

#[test]
fn changed_cpu_model_is_listed_with_old_and_new() {
    let old = h200_report();
    let mut new = old.clone();
    new.cpu.model = "Intel(R) Xeon(R) Platinum 8480+".into();
    let CacheStatus::Changed(changes) = compare(Some(&old), &new) else {
        panic!("expected a change");
    };
    assert_eq!(
        serde_json::to_value(&changes).unwrap(),
        json!([{
            "path": "cpu.model",
            "old": "Intel(R) Xeon(R) Processor",
            "new": "Intel(R) Xeon(R) Platinum 8480+"
        }])
    );
}

fn changes_between(
    old: &HardwareReport,
    new: &HardwareReport,
) -> fyn_runner::hardware::HardwareChanges {
    match compare(Some(old), new) {
        CacheStatus::Changed(changes) => changes,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn assert_round_trip(old: &HardwareReport, new: &HardwareReport) {
    let changes = changes_between(old, new);
    // Through JSON, as the control plane receives it.
    let changes = serde_json::from_str(&serde_json::to_string(&changes).unwrap()).unwrap();
    let stored = serde_json::to_value(old).unwrap();
    let patched = apply_changes(&stored, &changes).unwrap();
    assert_eq!(patched, serde_json::to_value(new).unwrap());
}

#[test]
fn gpu_appearing_and_disappearing_round_trips() {
    let with_gpu = h200_report();
    let mut without = with_gpu.clone();
    without.gpus = GpuInventory::None;

    let appeared = changes_between(&without, &with_gpu);
    assert!(
        appeared.iter().any(|c| c.path == "gpus.kind"
            && c.old == Some(json!("none"))
            && c.new == Some(json!("nvidia"))),
        "{appeared:?}"
    );
    assert_round_trip(&without, &with_gpu);
    assert_round_trip(&with_gpu, &without);

    let mut two = with_gpu.clone();
    if let GpuInventory::Nvidia { devices, .. } = &mut two.gpus {
        let mut second = h200_gpu();
        second.index = 1;
        second.uuid = "GPU-00000000-0000-0000-0000-000000000001".into();
        devices.push(second);
    }
    let added = changes_between(&with_gpu, &two);
    assert_eq!(added.len(), 1);
    assert_eq!(added.0[0].path, "gpus.devices.1");
    assert_eq!(added.0[0].old, None);
    assert_round_trip(&with_gpu, &two);
    assert_round_trip(&two, &with_gpu);
}

#[test]
fn driver_upgrade_round_trips() {
    let old = h200_report();
    let mut new = old.clone();
    if let GpuInventory::Nvidia {
        driver_version,
        cuda_version,
        devices,
    } = &mut new.gpus
    {
        *driver_version = "590.10.01".into();
        *cuda_version = None;
        devices[0].driver_version = "590.10.01".into();
    }
    assert_eq!(changes_between(&old, &new).len(), 3);
    assert_round_trip(&old, &new);
}

#[test]
fn corrupt_cache_is_an_error_naming_the_file_and_can_be_overwritten() {
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("hardware.json");
    fs::write(&path, "{\"os\": {\"name\": ").unwrap();

    let error = load_cache(state.path()).unwrap_err();
    assert!(matches!(&error, CacheError::Corrupt { path: p, .. } if *p == path));
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );

    write_cache(state.path(), &h200_report()).unwrap();
    assert_eq!(load_cache(state.path()).unwrap(), Some(h200_report()));
}

#[test]
fn writing_into_a_missing_state_dir_is_an_error_naming_the_file() {
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("absent");
    let error = write_cache(&missing, &h200_report()).unwrap_err();
    assert!(matches!(error, CacheError::Write { .. }), "{error:?}");
    assert!(error.to_string().contains("hardware.json"), "{error}");
}
