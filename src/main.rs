//! The `fyn-runner` binary: parse the command line, run it, exit with its code.

use clap::Parser;

fn main() {
    let cli = fyn_runner::cli::Cli::parse();
    let code = match fyn_runner::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("fyn-runner: {error:#}");
            1
        }
    };
    std::process::exit(code);
}
