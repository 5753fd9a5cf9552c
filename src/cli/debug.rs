//! `debug bundle` and `debug log level`.

use super::common::{self, DaemonAddr};
use clap::{Args, Subcommand};
use netbird_agent::proto::daemon as dpb;
use std::process::ExitCode;

/// `debug` subcommands.
#[derive(Debug, Subcommand)]
pub enum DebugCmd {
    /// Write a debug bundle (status, redacted config, system state) and print its path.
    Bundle {
        /// Replace public IPs and MACs.
        #[arg(short = 'A', long)]
        anonymize: bool,
        /// Include routes, interfaces, rules and nftables.
        #[arg(short = 'S', long, default_value_t = true, action = clap::ArgAction::Set)]
        system_info: bool,
        /// Upload URL (not supported by this agent; reported as such).
        #[arg(long)]
        upload_bundle_url: Option<String>,
    },
    /// Set the daemon's log level (trace, debug, info, warn, error).
    Log {
        /// `level`.
        #[arg(value_parser = ["level"])]
        what: String,
        /// The level.
        level: String,
    },
}

/// Arguments of `debug`.
#[derive(Debug, Args)]
pub struct DebugArgs {
    #[command(subcommand)]
    /// What to do.
    pub cmd: DebugCmd,
    #[command(flatten)]
    /// Daemon address.
    pub daemon: DaemonAddr,
}

/// Runs `debug`.
pub fn run(args: DebugArgs) -> ExitCode {
    common::block_on(async move {
        let mut c = match common::daemon(&args.daemon).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        match args.cmd {
            DebugCmd::Bundle {
                anonymize,
                system_info,
                upload_bundle_url,
            } => {
                let req = dpb::DebugBundleRequest {
                    anonymize,
                    system_info,
                    upload_url: upload_bundle_url.unwrap_or_default(),
                    cli_version: netbird_agent::AGENT_VERSION.into(),
                    ..Default::default()
                };
                match c.debug_bundle(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        println!("Local file:\n{}", r.path);
                        if !r.upload_failure_reason.is_empty() {
                            eprintln!("Upload failed: {}", r.upload_failure_reason);
                        }
                        ExitCode::SUCCESS
                    }
                    Err(s) => common::status_exit("debug bundle", &s),
                }
            }
            DebugCmd::Log { level, .. } => {
                let lvl = match level.to_ascii_lowercase().as_str() {
                    "trace" => dpb::LogLevel::Trace,
                    "debug" => dpb::LogLevel::Debug,
                    "info" => dpb::LogLevel::Info,
                    "warn" | "warning" => dpb::LogLevel::Warn,
                    "error" => dpb::LogLevel::Error,
                    other => {
                        return super::exit::fail(
                            super::exit::USAGE,
                            format!("unknown log level {other:?}"),
                        )
                    }
                };
                match c
                    .set_log_level(dpb::SetLogLevelRequest { level: lvl as i32 })
                    .await
                {
                    Ok(_) => {
                        println!("Log level set successfully to {level}");
                        ExitCode::SUCCESS
                    }
                    Err(s) => common::status_exit("setting log level", &s),
                }
            }
        }
    })
}
