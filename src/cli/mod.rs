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
    let filter = tracing_subscriber::EnvFilter::try_new(filter_directives(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter_directives("info")));
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
        let f = tracing_subscriber::EnvFilter::try_new(filter_directives(lvl))
            .map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

/// The tracing filter for a log level. boringtun warns on every handshake retry
/// (`HANDSHAKE(REKEY_TIMEOUT)` every 5 s for each unreachable peer), which floods the journal,
/// so below `trace` only its errors are kept (upstream's WireGuard is equally quiet). A
/// filter that already names targets is used as given.
fn filter_directives(level: &str) -> String {
    let level = level.trim();
    if level.contains('=') || level.eq_ignore_ascii_case("trace") {
        level.to_string()
    } else {
        format!("{level},boringtun=error")
    }
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

#[cfg(test)]
mod log_tests {
    use super::filter_directives;

    #[test]
    fn boringtun_is_quiet_unless_asked_for() {
        assert_eq!(filter_directives("info"), "info,boringtun=error");
        assert_eq!(filter_directives("debug"), "debug,boringtun=error");
        assert_eq!(filter_directives("trace"), "trace");
        assert_eq!(
            filter_directives("info,boringtun=debug"),
            "info,boringtun=debug"
        );
        for l in ["info", "warn", "debug", "trace", "info,netbird_agent=debug"] {
            assert!(tracing_subscriber::EnvFilter::try_new(filter_directives(l)).is_ok());
        }
    }
}
