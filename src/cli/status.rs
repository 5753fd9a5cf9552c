//! `status`: overall and per-peer state from the daemon, as text, JSON or YAML.

use super::common::{self, DaemonAddr};
use super::exit;
use clap::Args;
use netbird_agent::proto::daemon as dpb;
use netbird_agent::status_view::{build, render_text, Filters};
use std::process::ExitCode;

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show a block per peer.
    #[arg(short = 'd', long)]
    pub detail: bool,
    /// JSON output (NetBird's keys).
    #[arg(short = 'j', long, conflicts_with = "yaml")]
    pub json: bool,
    /// YAML output.
    #[arg(short = 'y', long)]
    pub yaml: bool,
    /// Only peers with these IPs.
    #[arg(short = 'I', long = "filter-by-ips", value_delimiter = ',')]
    pub ips: Vec<String>,
    /// Only peers with these names.
    #[arg(short = 'N', long = "filter-by-names", value_delimiter = ',')]
    pub names: Vec<String>,
    /// Only peers in this state (idle, connecting, connected).
    #[arg(short = 'S', long = "filter-by-status")]
    pub status: Option<String>,
    /// Only peers with this connection type (P2P, Relayed).
    #[arg(short = 'T', long = "filter-by-connection-type")]
    pub connection_type: Option<String>,
    /// Print only our overlay IP.
    #[arg(long)]
    pub ipv4: bool,
    #[command(flatten)]
    /// Daemon address.
    pub daemon: DaemonAddr,
}

/// Runs `status`.
pub fn run(args: StatusArgs) -> ExitCode {
    common::block_on(async move {
        let mut client = match common::daemon(&args.daemon).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let resp = match client
            .status(dpb::StatusRequest {
                get_full_peer_status: true,
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return common::status_exit("status", &s),
        };
        let filters = Filters {
            ips: args.ips,
            names: args.names,
            status: args.status,
            connection_type: args.connection_type,
        };
        let doc = build(&resp, &filters);
        if args.ipv4 {
            println!("{}", doc.ip.split('/').next().unwrap_or(""));
            return ExitCode::SUCCESS;
        }
        let out = if args.json {
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())
        } else if args.yaml {
            serde_yaml::to_string(&doc).map_err(|e| e.to_string())
        } else {
            Ok(render_text(&doc, args.detail, std::time::SystemTime::now()))
        };
        match out {
            Ok(text) => {
                print!("{text}");
                if args.json {
                    println!();
                }
                ExitCode::SUCCESS
            }
            Err(e) => exit::fail(exit::GENERAL, e),
        }
    })
}
