//! `service run`: the daemon in the foreground (systemd runs this).

use super::exit;
use clap::Args;
use netbird_agent::agent::{DataPlaneFactory, RecordingDataPlane};
use netbird_agent::config;
use netbird_agent::daemon::{self, access::AccessPolicy, Daemon, DaemonOptions, LogControl};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `service run`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Daemon socket.
    #[arg(
        long,
        env = "NB_DAEMON_ADDR",
        default_value = "unix:///var/run/netbird-agent.sock"
    )]
    pub daemon_addr: String,
    /// Config directory (default /var/lib/netbird-agent).
    #[arg(long, env = "NB_AGENT_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Members of this group may change state (besides root).
    #[arg(long, env = "NB_ADMIN_GROUP")]
    pub admin_group: Option<String>,
    /// Do not connect at startup even if the peer is registered.
    #[arg(long, env = "NB_DISABLE_AUTO_CONNECT")]
    pub disable_auto_connect: bool,
    /// Control plane only: do not create the WireGuard interface (tests, diagnostics).
    #[arg(long, hide = true, env = "NB_AGENT_NO_DATA_PLANE")]
    pub no_data_plane: bool,
}

/// The data plane the agent uses by default.
pub fn data_plane_factory(no_data_plane: bool) -> DataPlaneFactory {
    if no_data_plane {
        Arc::new(|_cfg| Ok(Box::new(RecordingDataPlane::default())))
    } else {
        Arc::new(|cfg| {
            Ok(Box::new(netbird_agent::wg::agent::UserspaceDataPlane::new(
                cfg,
            )?))
        })
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: RunArgs, log_control: Option<LogControl>) -> ExitCode {
    super::common::block_on(async move {
        let socket = PathBuf::from(
            args.daemon_addr
                .strip_prefix("unix://")
                .unwrap_or(&args.daemon_addr),
        );
        let access = match AccessPolicy::with_group(args.admin_group.as_deref()) {
            Ok(a) => a,
            Err(e) => return exit::fail(exit::USAGE, e),
        };
        let opts = DaemonOptions {
            socket: socket.clone(),
            config_dir: config::config_dir(args.config_dir.as_deref()),
            access,
            data_plane: data_plane_factory(args.no_data_plane),
            log_control,
            auto_connect: !args.disable_auto_connect,
        };
        let listener = match daemon::bind_socket(&socket) {
            Ok(l) => l,
            Err(e) => return exit::fail(exit::GENERAL, e),
        };
        // Signal handlers go in before READY, so a stop right after READY is handled cleanly.
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    return exit::fail(
                        exit::GENERAL,
                        format!("installing the SIGTERM handler: {e}"),
                    )
                }
            };
        let mut int = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        {
            Ok(s) => s,
            Err(e) => {
                return exit::fail(exit::GENERAL, format!("installing the SIGINT handler: {e}"))
            }
        };
        tracing::info!("daemon listening on {}", socket.display());
        netbird_agent::system::sdnotify::notify_ready();
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        };
        let shutdown = async {
            shutdown.await;
            netbird_agent::system::sdnotify::notify_stopping();
        };
        match daemon::serve(Daemon::new(opts), listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => exit::fail(exit::GENERAL, e),
        }
    })
}
