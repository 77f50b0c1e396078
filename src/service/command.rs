//! The one seam to the outside: every `systemctl`, `launchctl` and `loginctl` call goes
//! through [`CommandRunner`], so tests replace it with [`RecordingRunner`] and check
//! the exact calls.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::process::{Command, ExitStatus, Output, Stdio};

use super::ServiceError;

pub trait CommandRunner {
    /// Run `program` with `args` to completion and collect its output.
    fn run(&self, program: &str, args: &[OsString]) -> io::Result<Output>;
}

impl<T: CommandRunner + ?Sized> CommandRunner for &T {
    fn run(&self, program: &str, args: &[OsString]) -> io::Result<Output> {
        (**self).run(program, args)
    }
}

/// Runs the real programs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[OsString]) -> io::Result<Output> {
        Command::new(program)
            .args(args)
            // Never wait on a prompt nobody sees (polkit can ask on the terminal).
            .stdin(Stdio::null())
            .output()
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub program: String,
    pub args: Vec<String>,
}

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// A fake that records every call and answers success with no output, unless a rule
/// given with [`RecordingRunner::respond`] or [`RecordingRunner::fail_to_spawn`]
/// matches the call's leading words.
#[derive(Debug, Default)]
pub struct RecordingRunner {
    calls: RefCell<Vec<Recorded>>,
    rules: RefCell<Vec<Rule>>,
}

#[derive(Debug)]
struct Rule {
    prefix: Vec<String>,
    answer: Answer,
}

#[derive(Debug, Clone)]
enum Answer {
    Exit {
        code: i32,
        stdout: String,
        stderr: String,
    },
    SpawnError,
}

impl RecordingRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer calls starting with the words of `prefix` (e.g. `"systemctl enable"`)
    /// with this exit code and output. The first matching rule wins.
    pub fn respond(&self, prefix: &str, code: i32, stdout: &str, stderr: &str) -> &Self {
        self.rules.borrow_mut().push(Rule {
            prefix: prefix.split_whitespace().map(str::to_owned).collect(),
            answer: Answer::Exit {
                code,
                stdout: stdout.to_owned(),
                stderr: stderr.to_owned(),
            },
        });
        self
    }

    /// Calls starting with `prefix` fail as if the program did not exist.
    pub fn fail_to_spawn(&self, prefix: &str) -> &Self {
        self.rules.borrow_mut().push(Rule {
            prefix: prefix.split_whitespace().map(str::to_owned).collect(),
            answer: Answer::SpawnError,
        });
        self
    }

    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.borrow().clone()
    }

    /// The calls as command lines, `"systemctl --user enable fyn-runner.service"`.
    pub fn lines(&self) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn answer_for(&self, call: &Recorded) -> Answer {
        let words: Vec<&str> = std::iter::once(call.program.as_str())
            .chain(call.args.iter().map(String::as_str))
            .collect();
        self.rules
            .borrow()
            .iter()
            .find(|rule| {
                rule.prefix.len() <= words.len()
                    && rule.prefix.iter().zip(&words).all(|(a, b)| a == b)
            })
            .map_or(
                Answer::Exit {
                    code: 0,
                    stdout: String::new(),
                    stderr: String::new(),
                },
                |rule| rule.answer.clone(),
            )
    }
}

impl CommandRunner for RecordingRunner {
    fn run(&self, program: &str, args: &[OsString]) -> io::Result<Output> {
        let call = Recorded {
            program: program.to_owned(),
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        };
        let answer = self.answer_for(&call);
        self.calls.borrow_mut().push(call);
        match answer {
            Answer::Exit {
                code,
                stdout,
                stderr,
            } => Ok(Output {
                status: exit_status(code),
                stdout: stdout.into_bytes(),
                stderr: stderr.into_bytes(),
            }),
            Answer::SpawnError => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{program}: no such file or directory"),
            )),
        }
    }
}

/// A process exit status that says `code`.
#[cfg(unix)]
fn exit_status(code: i32) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    // A wait status holds the exit code in its second byte.
    ExitStatus::from_raw((code & 0xff) << 8)
}

/// A process exit status that says `code`.
#[cfg(windows)]
fn exit_status(code: i32) -> ExitStatus {
    use std::os::windows::process::ExitStatusExt;
    // Windows keeps the exit code whole, as an unsigned 32-bit number.
    ExitStatus::from_raw(code as u32)
}

/// The command line as the operator would type it, for messages.
pub(crate) fn command_line(program: &str, args: &[OsString]) -> String {
    std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run a command that must succeed; a failure names the command and what it said.
pub(crate) fn run_checked(
    runner: &dyn CommandRunner,
    program: &str,
    args: &[OsString],
) -> Result<Output, ServiceError> {
    let output = runner
        .run(program, args)
        .map_err(|source| ServiceError::Spawn {
            command: command_line(program, args),
            source,
        })?;
    if output.status.success() {
        return Ok(output);
    }
    Err(ServiceError::CommandFailed {
        command: command_line(program, args),
        status: output.status.to_string(),
        stderr: said(&output),
    })
}

/// What a failed command said: its stderr, else its stdout.
fn said(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !stderr.is_empty() {
        return stderr;
    }
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if stdout.is_empty() {
        "(no output)".to_owned()
    } else {
        stdout
    }
}

/// Build an argument list from strings and paths alike.
pub(crate) fn args<const N: usize>(items: [&std::ffi::OsStr; N]) -> Vec<OsString> {
    items.iter().map(|s| s.to_os_string()).collect()
}
