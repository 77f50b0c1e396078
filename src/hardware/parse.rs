//! Pure parsers for the text that system tools and `/proc` files produce.
//!
//! No I/O and no async here: every function takes the captured text and
//! returns data, so each one is tested against output captured on real
//! machines (`tests/fixtures/hardware/`).

use std::collections::HashMap;

use serde::Deserialize;

use crate::protocol::Gpu;

/// The `--query-gpu` field list [`parse_nvidia_smi_query`] expects, in order.
pub const NVIDIA_SMI_QUERY_FIELDS: &str =
    "index,uuid,name,driver_version,memory.total,compute_cap,pci.bus_id";

const NVIDIA_SMI_FIELD_COUNT: usize = 7;

const NVIDIA_SMI_QUERY: &str = "nvidia-smi --query-gpu output";
const LSCPU: &str = "lscpu -J output";
const OS_RELEASE: &str = "os-release";
const MEMINFO: &str = "/proc/meminfo";

/// Tool output that does not have the expected shape. Every variant names the
/// input it came from and, for line-based formats, the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(
        "{input}, line {line_number}: expected {expected} comma-separated fields, found {found}: {line:?}"
    )]
    FieldCount {
        input: &'static str,
        line_number: usize,
        expected: usize,
        found: usize,
        line: String,
    },
    #[error("{input}, line {line_number}: {field} is not a whole number ({value:?}): {line:?}")]
    InvalidNumber {
        input: &'static str,
        line_number: usize,
        field: &'static str,
        value: String,
        line: String,
    },
    #[error("{input}, line {line_number}: unrecognized line {line:?}")]
    InvalidLine {
        input: &'static str,
        line_number: usize,
        line: String,
    },
    #[error("{input}: field {field:?} has an unrecognized value {value:?}")]
    InvalidValue {
        input: &'static str,
        field: String,
        value: String,
    },
    #[error("{input}: missing {field}")]
    MissingField {
        input: &'static str,
        field: &'static str,
    },
    #[error("{input}: invalid JSON: {source}")]
    Json {
        input: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Parses `nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY_FIELDS> --format=csv,noheader,nounits`.
/// Blank lines are skipped; no output at all means no GPUs.
pub fn parse_nvidia_smi_query(csv: &str) -> Result<Vec<Gpu>, ParseError> {
    csv.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| parse_gpu_line(index + 1, line))
        .collect()
}

fn parse_gpu_line(line_number: usize, line: &str) -> Result<Gpu, ParseError> {
    // nvidia-smi never quotes CSV fields, and none of the queried fields can
    // contain a comma, so a plain split is exact.
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [
        index,
        uuid,
        name,
        driver_version,
        memory_total,
        compute_cap,
        pci_bus_id,
    ] = fields[..]
    else {
        return Err(ParseError::FieldCount {
            input: NVIDIA_SMI_QUERY,
            line_number,
            expected: NVIDIA_SMI_FIELD_COUNT,
            found: fields.len(),
            line: line.to_owned(),
        });
    };
    let invalid_number = |field: &'static str, value: &str| ParseError::InvalidNumber {
        input: NVIDIA_SMI_QUERY,
        line_number,
        field,
        value: value.to_owned(),
        line: line.to_owned(),
    };
    Ok(Gpu {
        index: index.parse().map_err(|_| invalid_number("index", index))?,
        uuid: uuid.to_owned(),
        name: name.to_owned(),
        memory_total_mib: memory_total
            .parse()
            .map_err(|_| invalid_number("memory.total", memory_total))?,
        driver_version: driver_version.to_owned(),
        compute_capability: compute_cap.to_owned(),
        pci_bus_id: pci_bus_id.to_owned(),
    })
}

/// Finds the CUDA version in either the `nvidia-smi` banner
/// (`CUDA Version: 13.0`) or `nvidia-smi --version` (`CUDA Version : 13.0`).
/// `None` when the text has no usable version (e.g. `N/A`).
pub fn parse_cuda_version(nvidia_smi_text: &str) -> Option<String> {
    const LABEL: &str = "CUDA Version";
    nvidia_smi_text
        .match_indices(LABEL)
        .find_map(|(at, _)| version_after_label(&nvidia_smi_text[at + LABEL.len()..]))
}

fn version_after_label(rest: &str) -> Option<String> {
    let value = rest.trim_start().strip_prefix(':')?.trim_start();
    let version: String = value
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then_some(version)
}

/// What `lscpu -J` says about the CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LscpuInfo {
    pub model_name: Option<String>,
    pub vendor: Option<String>,
    pub logical_cpus: u32,
    /// Cores per socket × sockets; `None` when lscpu does not report sockets
    /// (some ARM systems print clusters instead).
    pub physical_cores: Option<u32>,
    /// From the model name's "@ 2.10GHz" suffix, where the vendor prints one.
    pub base_mhz: Option<u64>,
    pub max_mhz: Option<u64>,
    /// Totals across the machine; `None` when absent or in the pre-2.34
    /// per-instance format (see [`parse_cache_size`]).
    pub l1d_cache_bytes: Option<u64>,
    pub l1i_cache_bytes: Option<u64>,
    pub l2_cache_bytes: Option<u64>,
    pub l3_cache_bytes: Option<u64>,
}

#[derive(Deserialize)]
struct LscpuDocument {
    lscpu: Vec<LscpuEntry>,
}

#[derive(Deserialize)]
struct LscpuEntry {
    field: String,
    data: Option<String>,
    // Some util-linux versions nest entries (e.g. caches under
    // "Caches (sum of all):"); flattening makes both layouts look alike.
    #[serde(default)]
    children: Vec<LscpuEntry>,
}

/// Parses `lscpu -J`, flat or hierarchical. Run lscpu with `LC_ALL=C`: the
/// field names are translated otherwise.
pub fn parse_lscpu_json(json: &str) -> Result<LscpuInfo, ParseError> {
    let document: LscpuDocument =
        serde_json::from_str(json).map_err(|source| ParseError::Json {
            input: LSCPU,
            source,
        })?;
    let mut fields = HashMap::new();
    flatten_lscpu(&document.lscpu, &mut fields);
    let get = |names: &[&str]| names.iter().find_map(|name| fields.get(*name).copied());

    let logical_cpus = get(&["CPU(s)"]).ok_or(ParseError::MissingField {
        input: LSCPU,
        field: "CPU(s)",
    })?;
    let model_name = get(&["Model name"]).map(str::to_owned);
    let cache = |names: &[&str]| match names.iter().find_map(|name| fields.get_key_value(*name)) {
        Some((field, value)) => parse_cache_size(field, value),
        None => Ok(None),
    };
    Ok(LscpuInfo {
        logical_cpus: parse_lscpu_number("CPU(s)", logical_cpus)?,
        physical_cores: physical_cores(get(&["Core(s) per socket"]), get(&["Socket(s)"])),
        base_mhz: model_name.as_deref().and_then(base_mhz_from_model_name),
        max_mhz: get(&["CPU max MHz"]).and_then(parse_mhz),
        vendor: get(&["Vendor ID"]).map(str::to_owned),
        model_name,
        l1d_cache_bytes: cache(&["L1d cache", "L1d"])?,
        l1i_cache_bytes: cache(&["L1i cache", "L1i"])?,
        l2_cache_bytes: cache(&["L2 cache", "L2"])?,
        l3_cache_bytes: cache(&["L3 cache", "L3"])?,
    })
}

fn flatten_lscpu<'a>(entries: &'a [LscpuEntry], fields: &mut HashMap<&'a str, &'a str>) {
    for entry in entries {
        let name = entry.field.trim().trim_end_matches(':');
        if let Some(data) = entry.data.as_deref() {
            // First wins: on hybrid CPUs lscpu repeats fields per core type,
            // and the first block describes the boot CPU.
            fields.entry(name).or_insert(data.trim());
        }
        flatten_lscpu(&entry.children, fields);
    }
}

fn parse_lscpu_number(field: &str, value: &str) -> Result<u32, ParseError> {
    value.parse().map_err(|_| ParseError::InvalidValue {
        input: LSCPU,
        field: field.to_owned(),
        value: value.to_owned(),
    })
}

fn physical_cores(cores_per_socket: Option<&str>, sockets: Option<&str>) -> Option<u32> {
    let cores: u32 = cores_per_socket?.parse().ok()?;
    let sockets: u32 = sockets?.parse().ok()?;
    cores.checked_mul(sockets)
}

fn parse_mhz(value: &str) -> Option<u64> {
    round_mhz(value.parse().ok()?)
}

fn round_mhz(mhz: f64) -> Option<u64> {
    (mhz.is_finite() && mhz > 0.0).then(|| mhz.round() as u64)
}

/// Intel (and some other vendors) print the nominal clock in the model name:
/// "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz".
fn base_mhz_from_model_name(model: &str) -> Option<u64> {
    let (_, clock) = model.rsplit_once('@')?;
    let clock = clock.trim();
    let (number, scale) = if let Some(ghz) = clock.strip_suffix("GHz") {
        (ghz, 1000.0)
    } else {
        (clock.strip_suffix("MHz")?, 1.0)
    };
    round_mhz(number.trim().parse::<f64>().ok()? * scale)
}

/// Parses an lscpu cache size such as "768 KiB (16 instances)",
/// "105 MiB (1 instance)" or "65536 (2 instances)" (with `--bytes`) into
/// bytes. Since util-linux 2.34 these are totals over all instances.
///
/// Older lscpu prints "32K": the size of *one* instance, with no count, so
/// the total is unknowable from this field; that form yields `Ok(None)`
/// rather than a wrong number.
pub fn parse_cache_size(field: &str, value: &str) -> Result<Option<u64>, ParseError> {
    let invalid = || ParseError::InvalidValue {
        input: LSCPU,
        field: field.to_owned(),
        value: value.to_owned(),
    };
    let size = value.split('(').next().unwrap_or_default().trim();
    let mut parts = size.split_whitespace();
    let (Some(number), unit, None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    if unit.is_none() && number.ends_with(['K', 'M', 'G']) {
        return Ok(None);
    }
    let multiplier: u64 = match unit.unwrap_or("B") {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(invalid()),
    };
    // lscpu rounds to one decimal ("1.3 MiB"), so fractions are real input.
    let number: f64 = number.parse().map_err(|_| invalid())?;
    if !number.is_finite() || number < 0.0 {
        return Err(invalid());
    }
    Ok(Some((number * multiplier as f64).round() as u64))
}

/// The parts of os-release(5) the runner reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    /// `NAME`; os-release(5) says to assume "Linux" when it is missing.
    pub name: String,
    pub version_id: Option<String>,
    pub pretty_name: Option<String>,
    pub id: Option<String>,
}

/// Parses `/etc/os-release` (shell-style `KEY=value` lines, values optionally
/// quoted).
pub fn parse_os_release(text: &str) -> Result<OsRelease, ParseError> {
    let mut values = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ParseError::InvalidLine {
                input: OS_RELEASE,
                line_number: index + 1,
                line: raw.to_owned(),
            });
        };
        values.insert(key.trim(), unquote(value.trim()));
    }
    let mut take = |key: &str| values.remove(key).filter(|value| !value.is_empty());
    Ok(OsRelease {
        name: take("NAME").unwrap_or_else(|| "Linux".to_owned()),
        version_id: take("VERSION_ID"),
        pretty_name: take("PRETTY_NAME"),
        id: take("ID"),
    })
}

fn unquote(value: &str) -> String {
    if let Some(inner) = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        unescape_double_quoted(inner)
    } else if let Some(inner) = value
        .strip_prefix('\'')
        .and_then(|rest| rest.strip_suffix('\''))
    {
        inner.to_owned()
    } else {
        value.to_owned()
    }
}

fn unescape_double_quoted(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            _ => out.push(c),
        }
    }
    out
}

/// Returns `MemTotal` from `/proc/meminfo` in bytes (the kernel's "kB" is
/// KiB).
pub fn parse_meminfo(text: &str) -> Result<u64, ParseError> {
    let (index, line) = text
        .lines()
        .enumerate()
        .find(|(_, line)| line.starts_with("MemTotal:"))
        .ok_or(ParseError::MissingField {
            input: MEMINFO,
            field: "MemTotal",
        })?;
    let value = line.trim_start_matches("MemTotal:").trim();
    let invalid = || ParseError::InvalidNumber {
        input: MEMINFO,
        line_number: index + 1,
        field: "MemTotal",
        value: value.to_owned(),
        line: line.to_owned(),
    };
    let kib: u64 = value
        .strip_suffix("kB")
        .ok_or_else(invalid)?
        .trim()
        .parse()
        .map_err(|_| invalid())?;
    kib.checked_mul(1024).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_in_all_known_forms() {
        let size = |value| parse_cache_size("L2 cache", value).unwrap();
        assert_eq!(size("768 KiB (16 instances)"), Some(768 * 1024));
        assert_eq!(size("105 MiB (1 instance)"), Some(105 * 1024 * 1024));
        assert_eq!(size("1.5 MiB"), Some(1536 * 1024));
        assert_eq!(size("65536 (2 instances)"), Some(65536));
        assert_eq!(size("32K"), None, "legacy per-instance form");
    }

    #[test]
    fn unknown_cache_unit_is_an_error_naming_the_field() {
        let error = parse_cache_size("L3 cache", "3 PB (1 instance)").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("L3 cache"), "{message}");
        assert!(message.contains("3 PB"), "{message}");
    }

    #[test]
    fn base_clock_comes_from_the_model_name() {
        assert_eq!(
            base_mhz_from_model_name("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"),
            Some(2500)
        );
        assert_eq!(base_mhz_from_model_name("AMD EPYC"), None);
    }

    #[test]
    fn cuda_version_from_the_version_flag_output() {
        let text = "NVIDIA-SMI version  : 580.159.04\nNVML version        : 580.159\n\
                    DRIVER version      : 580.159.04\nCUDA Version        : 13.0\n";
        assert_eq!(parse_cuda_version(text).as_deref(), Some("13.0"));
    }

    #[test]
    fn cuda_version_not_available() {
        assert_eq!(parse_cuda_version("| CUDA Version: N/A |"), None);
        assert_eq!(parse_cuda_version("no banner"), None);
    }

    #[test]
    fn hierarchical_lscpu_is_flattened() {
        let json = r#"{"lscpu": [
            {"field": "CPU(s):", "data": "8"},
            {"field": "Vendor ID:", "data": "GenuineIntel", "children": [
                {"field": "Model name:", "data": "Intel(R) Core(TM) i7 CPU @ 3.00GHz", "children": [
                    {"field": "Core(s) per socket:", "data": "4"},
                    {"field": "Socket(s):", "data": "1"},
                    {"field": "CPU max MHz:", "data": "4700.0000"}
                ]}
            ]},
            {"field": "Caches (sum of all):", "data": null, "children": [
                {"field": "L1d:", "data": "128 KiB (4 instances)"},
                {"field": "L3:", "data": "8 MiB (1 instance)"}
            ]}
        ]}"#;
        let info = parse_lscpu_json(json).unwrap();
        assert_eq!(info.logical_cpus, 8);
        assert_eq!(info.physical_cores, Some(4));
        assert_eq!(info.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(info.base_mhz, Some(3000));
        assert_eq!(info.max_mhz, Some(4700));
        assert_eq!(info.l1d_cache_bytes, Some(128 * 1024));
        assert_eq!(info.l1i_cache_bytes, None);
        assert_eq!(info.l3_cache_bytes, Some(8 * 1024 * 1024));
    }

    #[test]
    fn lscpu_without_cpu_count_is_an_error() {
        let error = parse_lscpu_json(r#"{"lscpu": []}"#).unwrap_err();
        assert!(matches!(
            error,
            ParseError::MissingField {
                field: "CPU(s)",
                ..
            }
        ));
    }

    #[test]
    fn os_release_quoting_and_defaults() {
        let release = parse_os_release(
            "# comment\nNAME='Arch Linux'\nPRETTY_NAME=\"Say \\\"hi\\\"\"\nID=arch\n",
        )
        .unwrap();
        assert_eq!(release.name, "Arch Linux");
        assert_eq!(release.pretty_name.as_deref(), Some("Say \"hi\""));
        assert_eq!(release.id.as_deref(), Some("arch"));
        assert_eq!(release.version_id, None);
        assert_eq!(parse_os_release("").unwrap().name, "Linux");
    }

    #[test]
    fn os_release_line_without_equals_is_an_error_with_line_number() {
        let error = parse_os_release("NAME=x\ngarbage\n").unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
    }

    #[test]
    fn meminfo_errors() {
        assert!(matches!(
            parse_meminfo("MemFree: 1 kB\n"),
            Err(ParseError::MissingField { .. })
        ));
        let error = parse_meminfo("MemTotal: lots kB\n").unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
    }
}
