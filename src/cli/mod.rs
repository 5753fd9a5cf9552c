//! Command-line interface. Each command lives in its own file with a clap `Args` struct and a
//! `run` function; this file only wires them together.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub mod common;
pub mod completions;
pub mod daemon_run;
pub mod debug;
pub mod exit;
pub mod foreground;
#[cfg(feature = "testbed")]
pub mod lab;
pub mod register;
pub mod service;
pub mod simple;
pub mod status;
#[cfg(feature = "testbed")]
pub mod testbed;
pub mod up;
pub mod wireguard;

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
    /// Log in through the daemon (with a setup key or SSO) and connect.
    Up(up::UpArgs),
    /// Disconnect and remove the interface, routes, rules and DNS changes.
    Down(simple::PlainArgs),
    /// Show the connection state (add -d for peers).
    Status(status::StatusArgs),
    /// Log in or register through the daemon without connecting.
    Login(up::LoginArgs),
    /// Deregister this peer: the server deletes it.
    #[command(alias = "deregister")]
    Logout(simple::PlainArgs),
    /// List and select the networks (routes) offered to this peer.
    #[command(alias = "routes")]
    Networks(simple::NetworksArgs),
    /// Debug bundles and log levels.
    Debug(debug::DebugArgs),
    /// Install and control the systemd service; `service run` runs the daemon.
    Service(service::ServiceArgs),
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// A standalone userspace WireGuard interface driven by `wg` (like wireguard-go).
    Wireguard(wireguard::Args),
    /// Print the version.
    Version,
    /// Run the daemon in the foreground (what the service runs).
    #[command(hide = true)]
    Daemon(daemon_run::RunArgs),
    /// Log in (registering with a setup key if needed), fetch the NetworkMap and print a summary,
    /// without the daemon.
    Register(register::RegisterArgs),
    /// Run the stand-in NetBird management server and admin API (testing and the lab).
    #[cfg(feature = "testbed")]
    Testbed(testbed::TestbedArgs),
    /// The built-in lab: testbed and agents behind NATs in network namespaces, a ping across
    /// the tunnel (root).
    #[cfg(feature = "testbed")]
    Lab(lab::LabArgs),
}

/// Sets up logging to stderr in a form journald keeps (level, peer spans, no colours when not
/// a terminal) and returns a handle that changes the filter at runtime.
pub fn init_logging(level: &str) -> netbird_agent::daemon::LogControl {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
    std::sync::Arc::new(move |lvl: &str| {
        let f = tracing_subscriber::EnvFilter::try_new(lvl).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

/// Runs the parsed command and maps its result to an exit code.
pub fn run(cli: Cli) -> ExitCode {
    let log_control = init_logging(&cli.log_level);
    match cli.command {
        Command::Up(a) => up::run(a),
        Command::Down(a) => simple::run_down(a),
        Command::Status(a) => status::run(a),
        Command::Login(a) => up::run_login(a),
        Command::Logout(a) => simple::run_logout(a),
        Command::Networks(a) => simple::run_networks(a),
        Command::Debug(a) => debug::run(a),
        Command::Service(a) => service::run(a, Some(log_control)),
        Command::Completions { shell } => completions::run(shell),
        Command::Wireguard(a) => wireguard::run(a),
        Command::Version => {
            println!("{}", netbird_agent::AGENT_VERSION);
            ExitCode::SUCCESS
        }
        Command::Daemon(a) => daemon_run::run(a, Some(log_control)),
        Command::Register(a) => register::run(a),
        #[cfg(feature = "testbed")]
        Command::Testbed(a) => testbed::run(a),
        #[cfg(feature = "testbed")]
        Command::Lab(a) => lab::run(a),
    }
}
