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
    /// Signal server listen address.
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub signal_addr: SocketAddr,
    /// Relay server listen address.
    #[arg(long, default_value = "127.0.0.1:33080")]
    pub relay_addr: SocketAddr,
    /// STUN server listen address (UDP).
    #[arg(long, default_value = "127.0.0.1:3478")]
    pub stun_addr: SocketAddr,
    /// Secret the relay checks tokens with.
    #[arg(
        long,
        env = "NB_TESTBED_RELAY_SECRET",
        default_value = "testbed-relay-secret",
        hide_env_values = true
    )]
    pub relay_secret: String,
    /// Create a reusable setup key at start and print it.
    #[arg(long)]
    pub create_setup_key: bool,
    /// Run coturn on this UDP address and advertise it as the TURN server.
    #[arg(long)]
    pub turn_addr: Option<SocketAddr>,
    /// Do not advertise the NetBird relay (peers that cannot meet directly need TURN).
    #[arg(long)]
    pub no_relay: bool,
}

/// Runs the testbed until Ctrl-C or SIGTERM.
pub fn run(args: TestbedArgs) -> ExitCode {
    super::common::block_on(async move {
        let cfg = TestbedConfig {
            mgmt_addr: args.management_addr,
            admin_addr: Some(args.admin_addr),
            admin_token: args.admin_token,
            services: Some(netbird_agent::testbed::ServiceAddrs {
                signal: args.signal_addr,
                relay: args.relay_addr,
                relay_secret: args.relay_secret,
                stun: args.stun_addr,
                turn: args.turn_addr,
                advertise_relay: !args.no_relay,
            }),
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
        if let Some(s) = &tb.signal {
            println!("signal: {}", s.addr());
        }
        if let Some(r) = &tb.relay {
            println!("relay: {}", r.instance_url());
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
        let mut usr1 =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
                Ok(s) => s,
                Err(e) => return exit::fail(exit::GENERAL, e),
            };
        let mut tb = tb;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                // SIGUSR1 restarts the signal server (tests of signal outages).
                _ = usr1.recv() => {
                    if let Some(s) = tb.signal.as_mut() {
                        match s.restart().await {
                            Ok(()) => println!("signal restarted"),
                            Err(e) => eprintln!("signal restart failed: {e}"),
                        }
                    }
                }
            }
        }
        ExitCode::SUCCESS
    })
}
