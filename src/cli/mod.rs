//! Command-line interface. Each command lives in its own file with a clap `Args` struct and a
//! `run` function; this file only wires them together.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod wireguard;

/// NetBird-compatible peer agent for Linux.
#[derive(Debug, Parser)]
#[command(name = "netbird-agent", version, about, propagate_version = true)]
pub struct Cli {
    /// Log level filter (error, warn, info, debug, trace); `NB_LOG_LEVEL` also sets it.
    #[arg(long, global = true, env = "NB_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Standalone userspace WireGuard interface served over the UAPI socket (like wireguard-go).
    Wireguard(wireguard::Args),
}

/// Sets up logging to stderr in a form journald keeps.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Runs the parsed command and maps its result to an exit code.
pub fn run(cli: Cli) -> ExitCode {
    init_logging(&cli.log_level);
    match cli.command {
        Command::Wireguard(a) => wireguard::run(a),
    }
}
