//! Writing the config file: every key with its meaning, set keys as values and the
//! rest commented out with their default, so the file documents itself.

use std::path::Path;

use super::keys::{KEYS, KeyDoc};
use super::{ConfigError, FileConfig};

const HEADER: &str = "\
# fyn-runner configuration, read by `fyn-runner run --config <this file>`.
#
# Precedence: command-line flags, then FYN_RUNNER_* environment variables, then this
# file, then the built-in defaults. Relative paths are taken relative to this file's
# folder. Keys not listed here are refused. See docs/configuration.md.
#
# The one-time registration token is deliberately not a setting: it is used once, to
# register, and never written to disk. Pass it with --token or FYN_RUNNER_TOKEN.
";

const WIDTH: usize = 88;

/// The commented TOML text of `config`. Fails only for a path that is not UTF-8,
/// which TOML cannot hold (writing it lossily would point the runner elsewhere).
pub fn render(config: &FileConfig) -> Result<String, ConfigError> {
    let mut out = String::from(HEADER);
    for doc in KEYS {
        out.push('\n');
        push_comment(&mut out, doc);
        match value_of(config, doc.key)? {
            Some(value) => out.push_str(&format!("{} = {value}\n", doc.key)),
            None => out.push_str(&format!("# {} = {}\n", doc.key, doc.example)),
        }
    }
    Ok(out)
}

fn push_comment(out: &mut String, doc: &KeyDoc) {
    let default = doc
        .default
        .map_or(String::new(), |d| format!("; default {d}"));
    let text = format!("{} ({}, {}{default})", doc.help, doc.flag, doc.env);
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > WIDTH && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// The TOML literal of one key's value, if set.
fn value_of(config: &FileConfig, key: &'static str) -> Result<Option<String>, ConfigError> {
    let text = |s: &String| toml::Value::String(s.clone()).to_string();
    let number = |n: u64| n.to_string();
    let path = |p: &Path| {
        p.to_str()
            .map(|s| toml::Value::String(s.to_owned()).to_string())
            .ok_or_else(|| ConfigError::NotUtf8 {
                key,
                path: p.to_owned(),
            })
    };
    Ok(match key {
        "server" => config.server.as_ref().map(text),
        "name" => config.name.as_ref().map(text),
        "slots" => config.slots.map(|n| n.to_string()),
        "state_dir" => config.state_dir.as_deref().map(path).transpose()?,
        "ca_file" => config.ca_file.as_deref().map(path).transpose()?,
        "allow_insecure_transport" => config.allow_insecure_transport.map(|b| b.to_string()),
        "drain_deadline" => config.drain_deadline.map(number),
        "hardware_recheck" => config.hardware_recheck.map(number),
        "job_retention_hours" => config.job_retention_hours.map(number),
        "trace_max_bytes" => config.trace_max_bytes.map(number),
        "trace_keep" => config.trace_keep.map(number),
        "no_trace" => config.no_trace.map(|b| b.to_string()),
        "log_format" => config.log_format.map(|f| format!("\"{}\"", f.as_str())),
        // KEYS and this match are held together by the round-trip test.
        _ => None,
    })
}
