//! `netbird-agent lab`: the built-in lab (testbed + agents behind NATs in network namespaces),
//! ending with a ping across the tunnel and each agent's status.

use super::exit;
use clap::Args;
use netbird_agent::lab::{install_interrupt_handler, Lab, LabOptions};
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `lab`.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// Number of peers, each behind its own NAT.
    #[arg(long, default_value_t = 2)]
    pub peers: usize,
    /// Seconds to wait for the first ping reply.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Seconds to wait after the first ping before printing status.
    #[arg(long, default_value_t = 1.5)]
    pub settle: f64,
    /// After the ping, run iperf3 from peer1 to peer2 across the tunnel for this many seconds.
    #[arg(long)]
    pub iperf: Option<u64>,
    /// Block UDP between the NATs, so peers must use the relay.
    #[arg(long)]
    pub block_udp: bool,
    /// Also run coturn in the WAN namespace and advertise it as the TURN server.
    #[arg(long)]
    pub turn: bool,
    /// Do not advertise the NetBird relay (with --block-udp and --turn: peers meet over TURN).
    #[arg(long)]
    pub no_relay: bool,
}

/// Runs the lab.
pub fn run(args: LabArgs) -> ExitCode {
    install_interrupt_handler();
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => return exit::fail(exit::GENERAL, format!("cannot find own binary: {e}")),
    };
    let opts = LabOptions {
        binary,
        peers: args.peers,
        timeout: Duration::from_secs(args.timeout),
        block_udp: args.block_udp,
        turn: args.turn,
        no_relay: args.no_relay,
    };
    println!(
        "lab: building {} peers behind NAT routers and starting the testbed",
        opts.peers
    );
    let mut lab = match Lab::start(opts) {
        Ok(l) => l,
        Err(e) => return exit::fail(exit::GENERAL, e),
    };
    let result = lab.run();
    // Status refreshes once a second: let it catch up with the handshake the ping caused.
    std::thread::sleep(Duration::from_secs_f64(args.settle.max(0.0)));
    for i in 1..=args.peers {
        println!("\n===== peer{i} status =====");
        match lab.status(i) {
            Ok(s) => print!("{s}"),
            Err(e) => println!("{e}"),
        }
    }
    if let (Ok(report), Some(secs)) = (&result, args.iperf) {
        if let Some(target) = report.overlay_ips.get(1) {
            match lab.iperf(target, secs) {
                Ok(gbps) => {
                    println!("\nlab: iperf3 peer1 -> peer2 across the tunnel: {gbps:.3} Gbit/s")
                }
                Err(e) => println!("\nlab: iperf3 failed: {e}"),
            }
        }
    }
    match result {
        Ok(report) => {
            println!(
                "\nlab: peer1 pinged peer2 ({}) across the tunnel, {:.2}s after the agents were started",
                report.overlay_ips.get(1).cloned().unwrap_or_default(),
                report.first_ping_after.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => exit::fail(exit::GENERAL, format!("lab: {e}")),
    }
}
