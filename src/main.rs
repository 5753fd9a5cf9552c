//! `netbird-agent` binary: parses the command line and hands off to the library.

use clap::Parser;

mod cli;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::run(args)
}
