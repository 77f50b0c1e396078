//! `fyn-runner job`: what a job (a shell script above all) runs to talk to the runner
//! that runs it, through the socket `FYN_JOB_SOCKET` names.

use clap::{Args, Subcommand};

const EXIT_CODES: &str = "\
Exit codes: 0 done; 1 the runner refused (a bound passed, a bad key; the reason is on
stderr); 2 bad usage; 3 `kv get`: the key has no value; 5 no runner to talk to
(FYN_JOB_SOCKET unset, or its socket unreachable).";

/// For jobs: report progress and read or write key-value pairs, through the runner that
/// runs the job (the socket in FYN_JOB_SOCKET).
#[derive(Debug, Args)]
#[command(after_long_help = EXIT_CODES)]
pub struct JobArgs {
    #[command(subcommand)]
    pub action: JobAction,
}

#[derive(Debug, Subcommand)]
pub enum JobAction {
    /// Report progress: `fyn-runner job progress 0.42 "iteration 420"`. The runner
    /// passes on the latest report of each second.
    #[command(after_long_help = EXIT_CODES)]
    Progress {
        /// How far along, from 0 to 1; `-` for none (a message alone).
        #[arg(value_parser = fraction, allow_hyphen_values = true)]
        fraction: Fraction,
        /// What the job is doing (at most 1,024 bytes).
        message: Option<String>,
    },
    /// Key-value pairs the control plane keeps for this job.
    #[command(subcommand)]
    Kv(KvAction),
}

#[derive(Debug, Subcommand)]
pub enum KvAction {
    /// Write a pair; returns once the runner has recorded it.
    #[command(after_long_help = EXIT_CODES)]
    Put {
        /// 1 to 256 characters of [A-Za-z0-9._:/-].
        key: String,
        /// The value (at most 64 KiB).
        #[arg(required_unless_present = "stdin")]
        value: Option<String>,
        /// Read the value from standard input instead.
        #[arg(long, conflicts_with = "value")]
        stdin: bool,
    },
    /// Print a key's value: the one the job was started with, or its own last write.
    #[command(after_long_help = EXIT_CODES)]
    Get { key: String },
}

/// A progress fraction, or none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fraction(Option<f64>);

fn fraction(text: &str) -> Result<Fraction, String> {
    if text == "-" {
        return Ok(Fraction(None));
    }
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(Fraction(Some(f))),
        _ => Err(format!(
            "{text:?} is not a number from 0 to 1 (or - for none)"
        )),
    }
}

#[cfg(unix)]
pub fn run(args: JobArgs) -> anyhow::Result<i32> {
    use crate::runtime::job_endpoint::client::{self, ClientError};
    use crate::runtime::job_endpoint::wire::Request;

    let request = match args.action {
        JobAction::Progress { fraction, message } => Request::Progress {
            fraction: fraction.0,
            message,
        },
        JobAction::Kv(KvAction::Put { key, value, stdin }) => {
            let value = match value {
                Some(value) if !stdin => value,
                _ => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                    text
                }
            };
            Request::KvPut { key, value }
        }
        JobAction::Kv(KvAction::Get { key }) => Request::KvGet { key },
    };
    let is_get = matches!(request, Request::KvGet { .. });
    let answered = client::socket_from_env().and_then(|socket| client::ask(&socket, &request));
    match answered {
        Ok(answer) if is_get => match answer.value.flatten() {
            Some(value) => {
                println!("{value}");
                Ok(0)
            }
            None => Ok(3),
        },
        Ok(_) => Ok(0),
        Err(error) => {
            eprintln!("fyn-runner job: {error}");
            Ok(match error {
                ClientError::Refused(_) => 1,
                ClientError::BadAnswer(_) => 1,
                ClientError::NoSocket | ClientError::Unreachable { .. } => 5,
            })
        }
    }
}

#[cfg(not(unix))]
pub fn run(_args: JobArgs) -> anyhow::Result<i32> {
    eprintln!(
        "fyn-runner job: jobs get a local endpoint only on Unix; on Windows FYN_JOB_SOCKET is never set"
    );
    Ok(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fraction_is_a_number_from_zero_to_one_or_none() {
        assert_eq!(fraction("0.42"), Ok(Fraction(Some(0.42))));
        assert_eq!(fraction("1"), Ok(Fraction(Some(1.0))));
        assert_eq!(fraction("-"), Ok(Fraction(None)));
        for bad in ["1.5", "-0.1", "NaN", "42%", ""] {
            assert!(fraction(bad).is_err(), "{bad:?}");
        }
    }
}
