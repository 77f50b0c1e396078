//! The `fyn-runner` binary: parse the command line, run it, exit with its code.

use clap::{CommandFactory, FromArgMatches};

fn main() {
    // A job's supervisor, which the runner starts from its own binary for every job
    // (never a person: it is not in --help). Before the command line is parsed, since
    // it is on the way to every job's start.
    #[cfg(unix)]
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "supervise")
    {
        std::process::exit(fyn_runner::runtime::jobs::supervise_main());
    }
    // The matches travel with the parsed flags: the config file fills in only what
    // no flag or variable gave, and only the matches know which those were.
    let matches = fyn_runner::cli::Cli::command().get_matches();
    let cli = match fyn_runner::cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let code = match fyn_runner::cli::run(cli, &matches) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("fyn-runner: {}", fyn_runner::cli::describe_error(&error));
            1
        }
    };
    std::process::exit(code);
}
