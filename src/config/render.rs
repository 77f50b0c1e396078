//! Writing the config file: every key with its meaning, set keys as values and the
//! rest commented out with their default, so the file documents itself.

use std::path::PathBuf;

use super::{ConfigError, FileConfig, KEYS, KeyDoc, LogFormat};

const HEADER: &str = "\
# fyn-runner configuration, read by `fyn-runner run --config <this file>`.
#
# Precedence: command-line flags, then FYN_RUNNER_* environment variables, then this
# file, then the built-in defaults. Relative paths are taken relative to this file's
# folder. Keys not listed here are refused. See docs/configuration.md.
#
# The one-time registration token is deliberately not a setting: it is used once, to
# register, and never written to disk. Pass it with --token-file or `--token -`.
";

const WIDTH: usize = 88;

/// The commented TOML text of `config`. Fails only for a path that is not UTF-8,
/// which TOML cannot hold (writing it lossily would point the runner elsewhere).
pub fn render(config: &FileConfig) -> Result<String, ConfigError> {
    let mut out = String::from(HEADER);
    for doc in KEYS {
        out.push('\n');
        push_comment(&mut out, doc);
        match config.toml_value(doc.key)? {
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

/// A setting's value as a TOML literal.
pub trait ToToml {
    /// Fails only for a path that is not UTF-8, which TOML cannot hold (writing it
    /// lossily would point the runner elsewhere).
    fn to_toml(&self, key: &'static str) -> Result<String, ConfigError>;
}

impl ToToml for String {
    fn to_toml(&self, _key: &'static str) -> Result<String, ConfigError> {
        Ok(toml::Value::String(self.clone()).to_string())
    }
}

impl ToToml for PathBuf {
    fn to_toml(&self, key: &'static str) -> Result<String, ConfigError> {
        self.to_str()
            .map(|s| toml::Value::String(s.to_owned()).to_string())
            .ok_or_else(|| ConfigError::NotUtf8 {
                key,
                path: self.clone(),
            })
    }
}

macro_rules! plain_to_toml {
    ($($ty:ty),*) => {$(
        impl ToToml for $ty {
            fn to_toml(&self, _key: &'static str) -> Result<String, ConfigError> {
                Ok(self.to_string())
            }
        }
    )*};
}

plain_to_toml!(u32, u64, bool);

impl ToToml for LogFormat {
    fn to_toml(&self, _key: &'static str) -> Result<String, ConfigError> {
        Ok(format!("\"{}\"", self.as_str()))
    }
}
