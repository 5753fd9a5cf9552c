//! Small daemon commands: `down`, `logout`, `networks`, `version`.

use super::common::{self, DaemonAddr};
use clap::{Args, Subcommand};
use netbird_agent::proto::daemon as dpb;
use std::process::ExitCode;

/// Arguments of `down` and `logout`.
#[derive(Debug, Args)]
pub struct PlainArgs {
    #[command(flatten)]
    /// Daemon address.
    pub daemon: DaemonAddr,
}

/// Runs `down`: disconnect and remove everything the connection made.
pub fn run_down(args: PlainArgs) -> ExitCode {
    common::block_on(async move {
        let mut c = match common::daemon(&args.daemon).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        match c.down(dpb::DownRequest {}).await {
            Ok(_) => {
                println!("Disconnected");
                ExitCode::SUCCESS
            }
            Err(s) => common::status_exit("down failed", &s),
        }
    })
}

/// Runs `logout` (alias `deregister`): the server deletes this peer.
pub fn run_logout(args: PlainArgs) -> ExitCode {
    common::block_on(async move {
        let mut c = match common::daemon(&args.daemon).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        match c.logout(dpb::LogoutRequest::default()).await {
            Ok(_) => {
                println!("Deregistered successfully");
                ExitCode::SUCCESS
            }
            Err(s) => common::status_exit("logout failed", &s),
        }
    })
}

/// `networks` subcommands.
#[derive(Debug, Subcommand)]
pub enum NetworksCmd {
    /// List networks offered to this peer.
    #[command(alias = "ls")]
    List,
    /// Select networks (ids, or `all`).
    Select {
        /// Network ids or `all`.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Add to the selection instead of replacing it.
        #[arg(short = 'a', long)]
        append: bool,
    },
    /// Deselect networks (ids, or `all`).
    Deselect {
        /// Network ids or `all`.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Arguments of `networks`.
#[derive(Debug, Args)]
pub struct NetworksArgs {
    #[command(subcommand)]
    /// What to do.
    pub cmd: NetworksCmd,
    #[command(flatten)]
    /// Daemon address.
    pub daemon: DaemonAddr,
}

/// Runs `networks`.
pub fn run_networks(args: NetworksArgs) -> ExitCode {
    common::block_on(async move {
        let mut c = match common::daemon(&args.daemon).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let select = |ids: Vec<String>, append: bool| dpb::SelectNetworksRequest {
            all: ids.iter().any(|i| i == "all"),
            network_i_ds: ids.into_iter().filter(|i| i != "all").collect(),
            append,
        };
        match args.cmd {
            NetworksCmd::List => match c.list_networks(dpb::ListNetworksRequest {}).await {
                Ok(r) => {
                    let routes = r.into_inner().routes;
                    if routes.is_empty() {
                        println!("No networks available.");
                    } else {
                        println!("Available Networks:");
                        for n in routes {
                            let range = if n.range.is_empty() {
                                n.domains.join(", ")
                            } else {
                                n.range
                            };
                            println!(
                                "\n  - ID: {}\n    Range: {}\n    Status: {}",
                                n.id,
                                range,
                                if n.selected {
                                    "Selected"
                                } else {
                                    "Not Selected"
                                }
                            );
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(s) => common::status_exit("listing networks", &s),
            },
            NetworksCmd::Select { ids, append } => {
                match c.select_networks(select(ids, append)).await {
                    Ok(_) => {
                        println!("Networks selected successfully.");
                        ExitCode::SUCCESS
                    }
                    Err(s) => common::status_exit("selecting networks", &s),
                }
            }
            NetworksCmd::Deselect { ids } => match c.deselect_networks(select(ids, false)).await {
                Ok(_) => {
                    println!("Networks deselected successfully.");
                    ExitCode::SUCCESS
                }
                Err(s) => common::status_exit("deselecting networks", &s),
            },
        }
    })
}
