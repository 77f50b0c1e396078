//! Precedence: command-line flags, then `FYN_RUNNER_*` environment variables, then the
//! config file, then the built-in defaults.
//!
//! clap already merges the first two and the defaults into the parsed arguments, and
//! remembers where each value came from. So the file is applied afterwards, one
//! setting at a time, and only where clap fell back to the default (or had no value
//! at all). The settings table generates one [`apply_file`] call per setting
//! (`RunSettings::apply_file`).

use clap::ArgMatches;
use clap::parser::ValueSource;

/// Set `current` to the file's value, unless the operator gave the setting on the
/// command line or in its environment variable. Returns whether the file's value
/// was taken.
///
/// `id` is the clap argument id (for derived arguments, the field name — the same
/// as the config key). `V: Into<T>` lets an `Option<String>` argument take the
/// file's `String` directly. clap panics in debug builds on an id it does not know,
/// which turns a misspelt key into a test failure rather than a silently ignored
/// setting.
pub fn apply_file<T, V: Into<T>>(
    matches: &ArgMatches,
    id: &str,
    current: &mut T,
    from_file: Option<V>,
) -> bool {
    let Some(value) = from_file else {
        return false;
    };
    if given_explicitly(matches, id) {
        return false;
    }
    *current = value.into();
    true
}

/// Whether the value of `id` came from the command line or the environment, as
/// opposed to its default (or nowhere).
pub fn given_explicitly(matches: &ArgMatches, id: &str) -> bool {
    match matches.value_source(id) {
        None | Some(ValueSource::DefaultValue) => false,
        // ValueSource is non-exhaustive: anything but a default is the operator's.
        Some(_) => true,
    }
}
