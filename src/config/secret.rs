//! The one-time registration token: never a setting of the file, never printed. It
//! comes from a file (`--token-file`), standard input (`--token -`), or — visible to
//! every local user in `/proc/<pid>/cmdline` for as long as the process runs — the
//! command line or `FYN_RUNNER_TOKEN`.

use std::fmt;
use std::io::{self, BufRead};
use std::path::PathBuf;

/// A secret that never prints: `Debug` shows a placeholder and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given as a value (`--token VALUE` or `FYN_RUNNER_TOKEN`).
    Value(Secret),
    /// `--token -`: the first line of standard input.
    Stdin,
    /// `--token-file PATH`: the file's first line.
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token from {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the token from {what} is empty")]
    Empty { what: String },
}

impl TokenSource {
    /// `--token` and `--token-file` as given: `-` means standard input.
    pub fn from_flags(token: Option<String>, token_file: Option<PathBuf>) -> Option<Self> {
        match (token, token_file) {
            (_, Some(path)) => Some(Self::File(path)),
            (Some(value), None) if value == "-" => Some(Self::Stdin),
            (Some(value), None) => Some(Self::Value(Secret::new(value))),
            (None, None) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Value(_) => "--token".to_owned(),
            Self::Stdin => "standard input".to_owned(),
            Self::File(path) => path.display().to_string(),
        }
    }
}

/// Read the token: the first line of the file or of `stdin` (without its line end and
/// surrounding blanks), or the value as given.
pub fn read_token(source: &TokenSource, stdin: &mut dyn BufRead) -> Result<Secret, TokenError> {
    let what = source.describe();
    let read = |source| TokenError::Read {
        what: what.clone(),
        source,
    };
    let mut line = String::new();
    let token = match source {
        TokenSource::Value(secret) => secret.expose().to_owned(),
        TokenSource::Stdin => {
            stdin.read_line(&mut line).map_err(read)?;
            line
        }
        TokenSource::File(path) => {
            let file = std::fs::File::open(path).map_err(read)?;
            io::BufReader::new(file)
                .read_line(&mut line)
                .map_err(read)?;
            line
        }
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Empty { what });
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("tok-123");
        assert!(!format!("{s:?}").contains("tok-123"));
    }

    #[test]
    fn the_token_comes_from_a_file_or_standard_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "tok-from-file\n").expect("write");
        let mut no_input = io::empty();
        let from_file = TokenSource::from_flags(None, Some(file)).expect("given");
        assert_eq!(
            read_token(&from_file, &mut no_input)
                .expect("read")
                .expose(),
            "tok-from-file"
        );
        let stdin = TokenSource::from_flags(Some("-".into()), None).expect("given");
        assert_eq!(stdin, TokenSource::Stdin);
        let mut input = io::Cursor::new(b"  tok-from-stdin\r\nrest\n".to_vec());
        assert_eq!(
            read_token(&stdin, &mut input).expect("read").expose(),
            "tok-from-stdin"
        );
        let error = read_token(&stdin, &mut io::empty()).expect_err("empty");
        assert_eq!(error.to_string(), "the token from standard input is empty");
    }
}
