//! A job's files and key-value pairs as a `JobSpec` carries them: the inputs the runner
//! fetches into the job's `work/` before the process starts, the outputs it uploads
//! after the process ended, the key-value pairs the job reads at start, and the rules
//! (`docs/protocol.md` §5.5) both sides check. Shapes only: whether a URL may be used
//! (plain `http` to a host that is not loopback) is the runner's setting, not the
//! spec's.
//!
//! Must not import anything outside `protocol`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::job::JobSpecError;

/// At most this many inputs, and this many outputs, per job.
pub const MAX_JOB_FILES: usize = 128;
/// The longest URL of an input or an output, in bytes (a presigned object-store URL
/// with a session token is a few KiB).
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// The longest path (or glob) of an input or an output, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// At most this many key-value pairs in a spec, and per job on the runner.
pub const MAX_KV_KEYS: usize = 1024;
/// The longest key, in bytes.
pub const MAX_KV_KEY_BYTES: usize = 256;
/// The longest value, in bytes of UTF-8.
pub const MAX_KV_VALUE_BYTES: usize = 64 * 1024;

/// A file fetched into `work/<path>` before the job's process starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "InputFileOnWire")]
pub struct InputFile {
    /// `https://`, or `http://` (which the runner takes only to loopback unless its
    /// operator allowed it).
    pub url: String,
    /// Lowercase hex SHA-256 of the file's bytes: checked after the download, and the
    /// key of the runner's cache.
    pub sha256: String,
    /// Where in `work/` the file goes: relative, `/`-separated, never leaving `work/`.
    pub path: String,
    /// Make the file executable (mode 0755 instead of 0644).
    pub executable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputFileOnWire {
    url: String,
    sha256: String,
    path: String,
    executable: Option<bool>,
}

impl From<InputFileOnWire> for InputFile {
    fn from(wire: InputFileOnWire) -> Self {
        Self {
            url: wire.url,
            sha256: wire.sha256,
            path: wire.path,
            executable: wire.executable.unwrap_or(false),
        }
    }
}

/// A result uploaded by HTTP `PUT` after the process ended: one file (`path`, to
/// `url`), or every file a glob matches (`glob`, each to `url` followed by the file's
/// path below `work/`). Exactly one of `path` and `glob` is given; the frame decodes
/// either way, and `JobSpec::validate` refuses the spec otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    pub url: String,
}

/// What an output names, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputTarget<'a> {
    /// One file below `work/`; missing if it is not there.
    Path(&'a str),
    /// Every regular file below `work/` it matches (`*` and `?` stay within one
    /// component, `**` spans any number); missing if it matches none.
    Glob(&'a str),
}

impl OutputFile {
    /// The file or glob this output names; `None` only for a spec that failed
    /// validation (neither or both given).
    pub fn target(&self) -> Option<OutputTarget<'_>> {
        match (&self.path, &self.glob) {
            (Some(path), None) => Some(OutputTarget::Path(path)),
            (None, Some(glob)) => Some(OutputTarget::Glob(glob)),
            _ => None,
        }
    }

    /// What names the output in reports: its path, or its glob.
    pub fn declared(&self) -> &str {
        self.path.as_deref().or(self.glob.as_deref()).unwrap_or("")
    }

    /// Where the file at `matched` (a path below `work/`) is uploaded: `url` itself for
    /// a single file, `url` followed by the percent-encoded path for a glob.
    pub fn upload_url(&self, matched: &str) -> String {
        match self.target() {
            Some(OutputTarget::Glob(_)) => {
                let mut url = self.url.clone();
                let segments: Vec<String> = matched.split('/').map(percent_encode).collect();
                url.push_str(&segments.join("/"));
                url
            }
            _ => self.url.clone(),
        }
    }
}

/// Whether `path` (relative, `/`-separated) is one of the files `glob` names: `*`, `?`
/// and `[...]` match within one component, `**` any number of components, and a
/// leading dot needs no literal dot. One rule for the runner and the store.
pub fn glob_matches(glob: &str, path: &str) -> bool {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    glob::Pattern::new(glob).is_ok_and(|pattern| pattern.matches_with(path, options))
}

/// A URL as logs, traces and reports show it: without its query and fragment, where a
/// presigned URL keeps its signature and credentials.
pub fn url_without_query(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_owned(),
    }
}

/// RFC 3986 unreserved characters stay; every other byte is `%XX`.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Every rule of §5.5 for `inputs`, `outputs` and `kv`.
pub(super) fn validate_files(
    inputs: &[InputFile],
    outputs: &[OutputFile],
    kv: &BTreeMap<String, String>,
) -> Result<(), JobSpecError> {
    if inputs.len() > MAX_JOB_FILES {
        return Err(JobSpecError::BadInput {
            index: MAX_JOB_FILES,
            why: format!("at most {MAX_JOB_FILES} inputs"),
        });
    }
    if outputs.len() > MAX_JOB_FILES {
        return Err(JobSpecError::BadOutput {
            index: MAX_JOB_FILES,
            why: format!("at most {MAX_JOB_FILES} outputs"),
        });
    }
    for (index, input) in inputs.iter().enumerate() {
        validate_input(input).map_err(|why| JobSpecError::BadInput { index, why })?;
    }
    no_input_in_another(inputs)?;
    for (index, output) in outputs.iter().enumerate() {
        validate_output(output).map_err(|why| JobSpecError::BadOutput { index, why })?;
    }
    if kv.len() > MAX_KV_KEYS {
        return Err(JobSpecError::BadKv {
            key: String::new(),
            why: format!("at most {MAX_KV_KEYS} keys"),
        });
    }
    for (key, value) in kv {
        validate_kv(key, value).map_err(|why| JobSpecError::BadKv {
            key: key.clone(),
            why,
        })?;
    }
    Ok(())
}

fn validate_input(input: &InputFile) -> Result<(), String> {
    validate_url(&input.url)?;
    validate_sha256(&input.sha256)?;
    validate_file_path(&input.path, false).map_err(|why| format!("path {:?}: {why}", input.path))
}

fn validate_output(output: &OutputFile) -> Result<(), String> {
    validate_url(&output.url)?;
    match output.target() {
        Some(OutputTarget::Path(path)) => {
            validate_file_path(path, false).map_err(|why| format!("path {path:?}: {why}"))
        }
        Some(OutputTarget::Glob(glob)) => {
            validate_file_path(glob, true).map_err(|why| format!("glob {glob:?}: {why}"))?;
            if !output.url.ends_with('/') {
                return Err(
                    "the url of a glob must end with '/' (each file's path is appended)".into(),
                );
            }
            Ok(())
        }
        None => Err("give exactly one of path and glob".into()),
    }
}

/// Two inputs at one path, or one input inside another (`a` and `a/b`), cannot both
/// be placed.
fn no_input_in_another(inputs: &[InputFile]) -> Result<(), JobSpecError> {
    let mut paths: Vec<(&str, usize)> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| (input.path.as_str(), i))
        .collect();
    paths.sort_unstable();
    for pair in paths.windows(2) {
        let [(first, _), (second, index)] = pair else {
            continue;
        };
        let inside = second
            .strip_prefix(first)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if inside {
            return Err(JobSpecError::BadInput {
                index: *index,
                why: format!("path {second:?} collides with the input at {first:?}"),
            });
        }
    }
    Ok(())
}

/// `https://` or `http://`, a host, no user name or password (a URL is logged and
/// traced; credentials belong in the URL's signature, as presigned URLs carry them),
/// no fragment, at most `MAX_URL_BYTES`.
pub fn validate_url(text: &str) -> Result<(), String> {
    if text.len() > MAX_URL_BYTES {
        return Err(format!("url longer than {MAX_URL_BYTES} bytes"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("url {text:?}: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!("url {text:?}: use https:// (or http://)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("url {text:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url carries a user name or password".into());
    }
    if url.fragment().is_some() {
        return Err(format!("url {text:?} has a fragment"));
    }
    Ok(())
}

/// 64 lowercase hex digits.
pub fn validate_sha256(text: &str) -> Result<(), String> {
    let ok = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(format!("sha256 {text:?} is not 64 lowercase hex digits"))
    }
}

/// A path below `work/` written the one portable way: relative, `/` as the only
/// separator, no empty, `.` or `..` component, no drive (`C:`), no backslash, no NUL or
/// other control character, at most `MAX_PATH_BYTES`. A glob follows the same rules
/// and must also parse as one. (A symbolic link inside `work/` is the runner's to
/// refuse when it resolves the path.)
pub fn validate_file_path(path: &str, glob: bool) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("longer than {MAX_PATH_BYTES} bytes"));
    }
    if path.starts_with('/') {
        return Err("absolute: give a path relative to work/".into());
    }
    if path.contains('\\') {
        return Err("use '/' as the separator, not '\\'".into());
    }
    if path.as_bytes().get(1) == Some(&b':') {
        return Err("a drive letter is not a relative path".into());
    }
    if path.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if let Some(part) = path
        .split('/')
        .find(|part| matches!(*part, "" | "." | ".."))
    {
        return Err(match part {
            ".." => "climbs out with '..'".into(),
            _ => "has an empty or '.' component".into(),
        });
    }
    if glob {
        glob::Pattern::new(path).map_err(|e| format!("not a glob: {e}"))?;
    }
    Ok(())
}

/// A key is 1 to `MAX_KV_KEY_BYTES` bytes of `[A-Za-z0-9._:/-]` (a shell can pass it
/// unquoted); a value is at most `MAX_KV_VALUE_BYTES` bytes of UTF-8.
pub fn validate_kv(key: &str, value: &str) -> Result<(), String> {
    validate_kv_key(key)?;
    if value.len() > MAX_KV_VALUE_BYTES {
        return Err(format!(
            "value of {} bytes is over the {MAX_KV_VALUE_BYTES}-byte limit",
            value.len()
        ));
    }
    Ok(())
}

pub fn validate_kv_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KV_KEY_BYTES
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key {key:?} is not 1-{MAX_KV_KEY_BYTES} characters of [A-Za-z0-9._:/-]"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn input(path: &str) -> InputFile {
        InputFile {
            url: "https://store.example/a".into(),
            sha256: SHA.into(),
            path: path.into(),
            executable: false,
        }
    }

    fn check_inputs(inputs: &[InputFile]) -> Result<(), JobSpecError> {
        validate_files(inputs, &[], &BTreeMap::new())
    }

    #[test]
    fn paths_stay_inside_work_and_are_written_one_way() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "C:x",
            "a\0b",
            "a\nb",
            "a/",
        ] {
            assert!(validate_file_path(bad, false).is_err(), "{bad:?} passed");
        }
        for good in ["a", "a/b.txt", "..a", "a..b", "mesh/part-1.vtu", "x y"] {
            assert_eq!(validate_file_path(good, false), Ok(()), "{good:?}");
        }
        assert!(validate_file_path(&"a".repeat(MAX_PATH_BYTES + 1), false).is_err());
        assert!(validate_file_path("results/[", true).is_err());
        assert_eq!(validate_file_path("results/**/*.csv", true), Ok(()));
    }

    #[test]
    fn urls_are_http_or_https_with_a_host_and_no_credentials() {
        for bad in [
            "ftp://x/a",
            "file:///etc/passwd",
            "https://user:pw@x/a",
            "https://",
            "https://x/a#frag",
            "not a url",
        ] {
            assert!(validate_url(bad).is_err(), "{bad:?} passed");
        }
        for good in ["https://x/a?X-Amz-Signature=1", "http://127.0.0.1:9/a"] {
            assert_eq!(validate_url(good), Ok(()), "{good:?}");
        }
        let long = format!("https://x/{}", "a".repeat(MAX_URL_BYTES));
        assert!(validate_url(&long).is_err());
    }

    #[test]
    fn a_checksum_is_64_lowercase_hex_digits() {
        assert_eq!(validate_sha256(SHA), Ok(()));
        assert!(validate_sha256(&SHA.to_uppercase()).is_err());
        assert!(validate_sha256(&SHA[1..]).is_err());
        assert!(validate_sha256(&format!("{}g", &SHA[1..])).is_err());
    }

    #[test]
    fn inputs_may_not_collide() {
        assert!(check_inputs(&[input("a"), input("b"), input("ab")]).is_ok());
        assert!(check_inputs(&[input("a"), input("a")]).is_err());
        assert!(check_inputs(&[input("a/b"), input("a")]).is_err());
        assert!(check_inputs(&[input("a"), input("a/b/c")]).is_err());
        let many: Vec<InputFile> = (0..=MAX_JOB_FILES)
            .map(|i| input(&format!("f{i}")))
            .collect();
        assert!(check_inputs(&many).is_err());
    }

    #[test]
    fn an_output_names_one_path_or_one_glob() {
        let output = |path: Option<&str>, glob: Option<&str>, url: &str| OutputFile {
            path: path.map(str::to_owned),
            glob: glob.map(str::to_owned),
            url: url.to_owned(),
        };
        let check = |o: OutputFile| validate_files(&[], &[o], &BTreeMap::new()).map(|_| ());
        assert!(check(output(Some("out.txt"), None, "https://s/o")).is_ok());
        assert!(check(output(None, Some("*.csv"), "https://s/o/")).is_ok());
        assert!(check(output(None, Some("*.csv"), "https://s/o")).is_err());
        assert!(check(output(None, None, "https://s/o")).is_err());
        assert!(check(output(Some("a"), Some("b"), "https://s/o/")).is_err());
        let glob = output(None, Some("**/*.csv"), "https://s/o/");
        assert_eq!(
            glob.upload_url("run 1/a+b.csv"),
            "https://s/o/run%201/a%2Bb.csv"
        );
        assert!(glob_matches("**/*.csv", "run 1/a+b.csv"));
        assert!(glob_matches("**/*.csv", "top.csv"));
        assert!(glob_matches("results/*.csv", "results/a.csv"));
        assert!(!glob_matches("results/*.csv", "results/sub/a.csv"));
        assert!(!glob_matches("*.csv", "a.csvx"));
        let single = output(Some("x"), None, "https://s/o?sig=1");
        assert_eq!(single.upload_url("x"), "https://s/o?sig=1");
    }

    #[test]
    fn keys_are_shell_safe_and_values_bounded() {
        assert_eq!(validate_kv("run/step-1:a.b_c", "v"), Ok(()));
        for key in ["", "a b", "a=b", "ä", "$x"] {
            assert!(validate_kv(key, "v").is_err(), "{key:?}");
        }
        assert!(validate_kv(&"k".repeat(MAX_KV_KEY_BYTES + 1), "").is_err());
        assert!(validate_kv("k", &"v".repeat(MAX_KV_VALUE_BYTES)).is_ok());
        assert!(validate_kv("k", &"v".repeat(MAX_KV_VALUE_BYTES + 1)).is_err());
    }
}
