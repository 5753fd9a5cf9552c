//! `completions <shell>`: shell completion scripts, for packages.

use clap::CommandFactory;
use std::process::ExitCode;

/// Prints the completion script for `shell`.
pub fn run(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = super::Cli::command();
    clap_complete::generate(shell, &mut cmd, "netbird-agent", &mut std::io::stdout());
    ExitCode::SUCCESS
}
