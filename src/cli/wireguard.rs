//! `netbird-agent wireguard <ifname>`: a standalone userspace WireGuard interface, like
//! `wireguard-go <ifname>`, configured with `wg set` / `wg-quick` over the UAPI socket.

use super::exit;
use clap::Args;
use netbird_agent::crypto::PrivateKey;
use netbird_agent::tunnel::uapi_server::{UapiServer, SOCKET_DIR};
use netbird_agent::tunnel::UserspaceTunnel;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `wireguard`.
#[derive(Debug, Args)]
pub struct WireguardArgs {
    /// Stay in the foreground (the default; kept for wireguard-go compatibility).
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Directory of the UAPI socket.
    #[arg(long, default_value = SOCKET_DIR)]
    pub socket_dir: PathBuf,
    /// Interface name.
    pub ifname: String,
}

/// Runs the interface until SIGTERM or SIGINT, then removes it and its socket.
pub fn run(args: WireguardArgs) -> ExitCode {
    let _ = args.foreground;
    // The real key comes from `wg set`; until then a random one keeps the device valid.
    let tunnel = match UserspaceTunnel::create(&args.ifname, 0, &PrivateKey::generate()) {
        Ok(t) => Arc::new(t),
        Err(e) => return exit::fail(exit::GENERAL, e),
    };
    let server = match UapiServer::start(&args.socket_dir, tunnel.clone()) {
        Ok(s) => s,
        Err(e) => return exit::fail(exit::GENERAL, format!("UAPI socket: {e}")),
    };
    tracing::info!(
        "{} up; configure it with `wg set {}`",
        args.ifname,
        args.ifname
    );
    let code = super::common::block_on(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => return exit::fail(exit::GENERAL, e),
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        ExitCode::SUCCESS
    });
    drop(server);
    tunnel.shutdown();
    code
}
