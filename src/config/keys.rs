//! What the docs say about a key: its flag, its environment variable, its default and
//! what it means. [`KEYS`](super::KEYS) is made from the table in `settings.rs`;
//! `render` writes the commented file from it and a test holds
//! `docs/configuration.md` to it, so the three cannot drift apart.

/// One key of the config file and the flag it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    /// The key in the file; also the clap argument id of the flag.
    pub key: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    /// The built-in default as a flag would take it, or `None` where there is none.
    pub default: Option<&'static str>,
    /// A TOML value shown, commented out, when the key is not set.
    pub example: &'static str,
    pub help: &'static str,
}
