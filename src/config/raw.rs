//! Parsing the file's text: TOML to [`FileConfig`], each value through its setting's
//! check, every error naming the key, the file and the line. Pure: the text comes in,
//! nothing is read from the system (the file's path is only for messages and for
//! relative paths).

use std::path::Path;

use super::{ConfigError, FileConfig, KEYS};

/// Parse the text of the file at `path`.
pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    // A spanned table gives syntax errors their place, lets the token be refused with
    // its own reason, and gives every value error its key and line.
    let table = toml::de::DeTable::parse(text).map_err(|e| syntax_error(text, path, &e))?;
    let table = table.get_ref();
    if let Some((key, _)) = table.get_key_value("token") {
        let (line, _) = line_column(text, key.span().start);
        return Err(ConfigError::TokenInFile {
            path: path.to_owned(),
            line,
        });
    }
    let mut config = FileConfig::default();
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_column(text, offset);
            ConfigError::Invalid {
                path: path.to_owned(),
                key: name.to_owned(),
                line,
                column,
                message,
            }
        };
        match config.set(name, value.get_ref()) {
            Ok(true) => {}
            Ok(false) => return Err(invalid(key.span().start, unknown_key(name))),
            Err(message) => return Err(invalid(value.span().start, message)),
        }
    }
    if let Some(folder) = path.parent() {
        config.resolve_relative_paths(folder);
    }
    Ok(config)
}

/// The words serde's `deny_unknown_fields` used, which the docs show.
fn unknown_key(name: &str) -> String {
    let known: Vec<String> = KEYS.iter().map(|k| format!("`{}`", k.key)).collect();
    format!(
        "unknown field `{name}`, expected one of {}",
        known.join(", ")
    )
}

impl FileConfig {
    /// A service runs with `/` as its working folder, so a relative path in the file
    /// can only sensibly mean "next to this file".
    fn resolve_relative_paths(&mut self, folder: &Path) {
        for path in [
            &mut self.state_dir,
            &mut self.jobs_dir,
            &mut self.ca_file,
            &mut self.hook_on_connected,
            &mut self.hook_on_disconnected,
            &mut self.hook_on_drain,
            &mut self.hook_on_stopped,
            &mut self.hook_pre_job,
            &mut self.hook_post_job,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        }
    }
}

fn syntax_error(text: &str, path: &Path, error: &toml::de::Error) -> ConfigError {
    let (line, column) = error
        .span()
        .map_or((1, 1), |span| line_column(text, span.start));
    ConfigError::Syntax {
        path: path.to_owned(),
        line,
        column,
        message: error.message().trim().to_owned(),
    }
}

/// 1-based line and column of a byte offset (columns count characters).
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, text.find('=').unwrap_or(0)), (1, 3));
        assert_eq!(line_column(text, 10), (2, 4));
    }

    #[test]
    fn relative_paths_are_taken_next_to_the_file() {
        let config = parse(
            "state_dir = \"state\"\nca_file = \"/abs/ca.pem\"\n",
            Path::new("/etc/fyn-runner/config.toml"),
        )
        .expect("valid");
        assert_eq!(
            config.state_dir,
            Some(PathBuf::from("/etc/fyn-runner/state"))
        );
        assert_eq!(config.ca_file, Some(PathBuf::from("/abs/ca.pem")));
    }

    #[test]
    fn a_value_error_points_at_the_value() {
        let error = parse("\nslots = 0\n", Path::new("c.toml")).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "c.toml:2:9: key `slots`: must be between 1 and 1024, got 0"
        );
        let error = parse("trace_max_bytes = 0\n", Path::new("c.toml")).expect_err("refused");
        assert!(error.to_string().contains("between 1024 and"), "{error}");
    }
}
