//! `netbird-agent testbed`: runs the stand-in management server (and admin API) in the
//! foreground, for the lab and manual testing. Loopback by default.

use super::exit;
use clap::Args;
use netbird_agent::testbed::{SetupKeySpec, Testbed, TestbedConfig};
use std::net::SocketAddr;
use std::process::ExitCode;

/// Arguments of `testbed`.
#[derive(Debug, Args)]
pub struct TestbedArgs {
    /// Management gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:33073")]
    pub management_addr: SocketAddr,
    /// Admin API listen address.
    #[arg(long, default_value = "127.0.0.1:33071")]
    pub admin_addr: SocketAddr,
    /// Admin API token.
    #[arg(
        long,
        env = "NB_TESTBED_ADMIN_TOKEN",
        default_value = "testbed-admin-token",
        hide_env_values = true
    )]
    pub admin_token: String,
    /// Create a reusable setup key at start and print it.
    #[arg(long)]
    pub create_setup_key: bool,
}

/// Runs the testbed until Ctrl-C or SIGTERM.
pub fn run(args: TestbedArgs) -> ExitCode {
    super::common::block_on(async move {
        let cfg = TestbedConfig {
            mgmt_addr: args.management_addr,
            admin_addr: Some(args.admin_addr),
            admin_token: args.admin_token,
            ..Default::default()
        };
        let tb = match Testbed::start(cfg).await {
            Ok(t) => t,
            Err(e) => return exit::fail(exit::GENERAL, e),
        };
        println!("management: {}", tb.management_url());
        if let Some(a) = tb.admin_url() {
            println!("admin API: {a}");
        }
        if args.create_setup_key {
            match tb
                .admin()
                .create_setup_key(SetupKeySpec::reusable("testbed"))
            {
                Ok(k) => println!("setup key: {}", k.key),
                Err(e) => return exit::fail(exit::GENERAL, e),
            }
        }
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
    })
}
