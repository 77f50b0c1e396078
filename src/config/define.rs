//! `define_settings!`: from the one table in `settings.rs`, everything a setting is
//! made of, so that adding a setting is one entry and nothing can drift apart:
//!
//! - a struct per section (the `run` settings, the global ones) that is a clap
//!   `Args` — flag, environment variable, help, default, and the setting's check as
//!   the value parser;
//! - [`FileConfig`](super::FileConfig), every key optional, filled from the TOML file
//!   by the same check;
//! - [`KEYS`](super::KEYS), what the rendered file and `docs/configuration.md` say;
//! - the precedence merge (a file value only where clap took the default), the
//!   defaults, and the way back from settings to a file (`--print-config`, `install`).
//!
//! Written by hand as a declarative macro: clap's derive cannot take its attributes
//! from a table, and a layering crate (figment) loses the file's line numbers in its
//! errors.
//!
//! An entry reads
//!
//! ```text
//! key: kind<Type> [= "default"] {
//!     flag: "name", env: "VAR", example: "toml literal", help: "...",
//!     check: fn(Raw) -> Result<Type, String>, [arg: clap value parser,]
//! }
//! ```
//!
//! where `kind` is `optional` (no default: `Option<Type>`), `defaulted` (the default
//! is given as the text a flag would take, checked like one) or `switch` (a flag with
//! no value, false unless given).

/// The type a section's field has, by kind.
macro_rules! setting_field {
    (optional, $ty:ty) => { Option<$ty> };
    (defaulted, $ty:ty) => { $ty };
    (switch, $ty:ty) => { bool };
}

/// The clap argument of one setting, by kind.
macro_rules! setting_arg {
    (optional, $id:expr, $parser:expr $(, $default:literal)?) => {
        clap::Arg::new($id)
            .action(clap::ArgAction::Set)
            .value_parser($parser)
    };
    (defaulted, $id:expr, $parser:expr, $default:literal) => {
        clap::Arg::new($id)
            .action(clap::ArgAction::Set)
            .value_parser($parser)
            .default_value($default)
    };
    (switch, $id:expr, $parser:expr $(, $default:literal)?) => {
        clap::Arg::new($id).action(clap::ArgAction::SetTrue)
    };
}

/// A setting's value taken from clap's matches, by kind.
macro_rules! setting_take {
    (optional, $matches:expr, $id:expr, $ty:ty) => {
        $matches.get_one::<$ty>($id).cloned()
    };
    (defaulted, $matches:expr, $id:expr, $ty:ty) => {
        match $matches.get_one::<$ty>($id) {
            Some(value) => value.clone(),
            None => {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    format!("no value for --{}", $id),
                ))
            }
        }
    };
    (switch, $matches:expr, $id:expr, $ty:ty) => {
        $matches.get_flag($id)
    };
}

/// The built-in default of a setting, by kind.
macro_rules! setting_default {
    (optional, $parser:expr $(, $default:literal)?) => {
        None
    };
    (switch, $parser:expr $(, $default:literal)?) => {
        false
    };
    (defaulted, $parser:expr, $default:literal) => {
        // A literal of the table, checked like a flag; `every_default_passes_its_check`
        // holds each one to its check, so this cannot fail at run time.
        $parser
            .parse(std::ffi::OsStr::new($default))
            .expect(concat!("the default ", $default, " passes its own check"))
    };
}

/// The default as the docs and the rendered file state it.
macro_rules! setting_default_doc {
    (optional $(, $default:literal)?) => {
        None
    };
    (switch $(, $default:literal)?) => {
        Some("false")
    };
    (defaulted, $default:literal) => {
        Some($default)
    };
}

/// A section's value as the file holds it, by kind (a switch that is off is left out,
/// as it always was).
macro_rules! setting_to_file {
    (optional, $value:expr) => {
        $value
    };
    (defaulted, $value:expr) => {
        Some($value)
    };
    (switch, $value:expr) => {
        $value.then_some(true)
    };
}

/// The first expression given, else the second: an entry's own clap parser, else its
/// check as one.
macro_rules! first_of {
    ($given:expr ; $fallback:expr) => {
        $given
    };
    ( ; $fallback:expr) => {
        $fallback
    };
}

macro_rules! define_settings {
    (
        $(
            $(#[$section_doc:meta])*
            $section:ident (global: $global:expr) {
                $(
                    $key:ident : $kind:ident < $ty:ty > $(= $default:literal)? {
                        flag: $flag:literal,
                        env: $env:literal,
                        example: $example:literal,
                        help: $help:literal,
                        check: $check:expr
                        $(, arg: $arg_parser:expr)?
                        $(,)?
                    }
                )*
            }
        )*
    ) => {
        $(
            $(#[$section_doc])*
            #[derive(Debug, Clone, PartialEq, Eq)]
            pub struct $section {
                $(
                    #[doc = $help]
                    pub $key: setting_field!($kind, $ty),
                )*
            }

            impl clap::Args for $section {
                fn augment_args(cmd: clap::Command) -> clap::Command {
                    cmd $(
                        .arg(
                            setting_arg!(
                                $kind,
                                stringify!($key),
                                first_of!($($arg_parser)? ; $crate::config::value::arg_parser($check))
                                $(, $default)?
                            )
                            .long($flag)
                            .value_name($flag.to_uppercase().replace('-', "_"))
                            .env($env)
                            .help($help)
                            .global($global)
                        )
                    )*
                }

                fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                    Self::augment_args(cmd)
                }
            }

            impl clap::FromArgMatches for $section {
                fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                    Ok(Self {
                        $( $key: setting_take!($kind, matches, stringify!($key), $ty), )*
                    })
                }

                fn update_from_arg_matches(
                    &mut self,
                    matches: &clap::ArgMatches,
                ) -> Result<(), clap::Error> {
                    *self = Self::from_arg_matches(matches)?;
                    Ok(())
                }
            }

            impl Default for $section {
                /// Every setting at its built-in default.
                fn default() -> Self {
                    Self {
                        $(
                            $key: setting_default!(
                                $kind,
                                $crate::config::value::arg_parser($check)
                                $(, $default)?
                            ),
                        )*
                    }
                }
            }

            impl $section {
                /// Take from `file` what neither a flag nor an environment variable gave
                /// (`matches` says which did): flags > environment > file > defaults.
                pub fn apply_file(&mut self, matches: &clap::ArgMatches, file: &FileConfig) {
                    $(
                        $crate::config::apply_file(
                            matches,
                            stringify!($key),
                            &mut self.$key,
                            file.$key.clone(),
                        );
                    )*
                }

                /// Take every setting `file` has: for commands that act on the installed
                /// runner (`uninstall`) rather than on flags.
                pub fn overlay(&mut self, file: &FileConfig) {
                    $(
                        if let Some(value) = file.$key.clone() {
                            self.$key = value.into();
                        }
                    )*
                }

                /// Write these settings into `file`, as `--print-config` and `install`
                /// show them.
                pub fn write_into(&self, file: &mut FileConfig) {
                    $( file.$key = setting_to_file!($kind, self.$key.clone()); )*
                }
            }
        )*

        /// Every setting as the config file holds it, each optional: a key left out
        /// falls back to the environment or the built-in default. Relative paths are
        /// taken relative to the file's folder.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct FileConfig {
            $($(
                #[doc = $help]
                pub $key: Option<$ty>,
            )*)*
        }

        impl FileConfig {
            /// Set `key` from its TOML value. `Ok(false)`: no such key.
            pub(crate) fn set(
                &mut self,
                key: &str,
                value: &toml::de::DeValue<'_>,
            ) -> Result<bool, String> {
                $($(
                    if key == stringify!($key) {
                        let parser = $crate::config::value::arg_parser($check);
                        self.$key = Some(parser.parse_toml(value)?);
                        return Ok(true);
                    }
                )*)*
                Ok(false)
            }

            /// The TOML literal of `key`'s value, if set.
            pub(crate) fn toml_value(
                &self,
                key: &'static str,
            ) -> Result<Option<String>, ConfigError> {
                $($(
                    if key == stringify!($key) {
                        return self
                            .$key
                            .as_ref()
                            .map(|value| $crate::config::render::ToToml::to_toml(value, key))
                            .transpose();
                    }
                )*)*
                Ok(None)
            }
        }

        /// Every key, in the order the rendered file lists them.
        pub const KEYS: &[KeyDoc] = &[
            $($(
                KeyDoc {
                    key: stringify!($key),
                    flag: concat!("--", $flag),
                    env: $env,
                    default: setting_default_doc!($kind $(, $default)?),
                    example: $example,
                    help: $help,
                },
            )*)*
        ];

        #[cfg(test)]
        mod defined {
            use super::*;

            #[test]
            fn every_default_passes_its_check() {
                $($(
                    let _: setting_field!($kind, $ty) = setting_default!(
                        $kind,
                        $crate::config::value::arg_parser($check)
                        $(, $default)?
                    );
                )*)*
            }
        }
    };
}
