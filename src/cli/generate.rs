//! What the package ships that is made from the clap definitions themselves, so it
//! cannot drift from them: shell completions (`clap_complete`) and man pages
//! (`clap_mangen`). Hidden subcommands (`completions SHELL`, `man --out-dir DIR`),
//! called by the package build (`scripts/package-deb`).
//!
//! Owns: nothing but the rendering. Must not: describe a flag itself.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use super::{Cli, write_stdout};

/// Completions for `shell` on standard output.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<i32> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "fyn-runner", &mut out);
    write_stdout(&String::from_utf8_lossy(&out))?;
    Ok(0)
}

/// The man pages: `fyn-runner.1` and one per visible subcommand
/// (`fyn-runner-run.1`, ...) into `out_dir`, or the main page on standard output.
pub fn man(out_dir: Option<&Path>) -> anyhow::Result<i32> {
    let command = Cli::command();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .context("rendering the man page")?;
            write_stdout(&String::from_utf8_lossy(&out))?;
        }
    }
    Ok(0)
}
