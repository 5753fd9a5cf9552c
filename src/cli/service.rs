//! `service install|uninstall|start|stop|restart|status|run`: the systemd unit and the daemon.

use super::daemon_run::{self, RunArgs};
use super::exit;
use clap::{Args, Subcommand};
use netbird_agent::daemon::LogControl;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The unit shipped with the agent.
pub const UNIT: &str = include_str!("../../systemd/netbird-agent.service");
/// Unit name.
pub const UNIT_NAME: &str = "netbird-agent.service";

/// `service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Write the systemd unit and enable it.
    Install {
        /// Where to write the unit.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
        /// Extra environment for the service, `KEY=VALUE` (repeatable).
        #[arg(long = "service-env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// Disable and remove the unit.
    Uninstall {
        /// Where the unit is.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
    /// Start the service.
    Start,
    /// Stop the service.
    Stop,
    /// Restart the service.
    Restart,
    /// Show the service state.
    Status,
    /// Run the daemon in the foreground (what the unit runs).
    Run(RunArgs),
}

/// Arguments of `service`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    /// What to do.
    pub cmd: ServiceCmd,
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> ExitCode {
    if !systemd_running() {
        return exit::fail(
            exit::STATE,
            "systemd is not running on this machine: run `netbird-agent service run` directly",
        );
    }
    match Command::new("systemctl").args(args).status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => exit::fail(
            exit::GENERAL,
            format!("systemctl {} failed ({s})", args.join(" ")),
        ),
        Err(e) => exit::fail(exit::GENERAL, format!("cannot run systemctl: {e}")),
    }
}

/// The unit text with extra `Environment=` lines.
pub fn unit_with_env(env: &[String]) -> Result<String, String> {
    let mut lines = String::new();
    for kv in env {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(format!("--service-env wants KEY=VALUE, got {kv:?}"));
        };
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid environment variable name {k:?}"));
        }
        lines.push_str(&format!("Environment=\"{k}={}\"\n", v.replace('"', "\\\"")));
    }
    Ok(UNIT.replacen(
        "Environment=SYSTEMD_UNIT=netbird-agent\n",
        &format!("Environment=SYSTEMD_UNIT=netbird-agent\n{lines}"),
        1,
    ))
}

/// Runs `service`.
pub fn run(args: ServiceArgs, log_control: Option<LogControl>) -> ExitCode {
    match args.cmd {
        ServiceCmd::Install { unit_dir, env } => {
            let unit = match unit_with_env(&env) {
                Ok(u) => u,
                Err(e) => return exit::fail(exit::USAGE, e),
            };
            if let Err(e) = std::fs::create_dir_all(&unit_dir)
                .and_then(|_| std::fs::write(unit_dir.join(UNIT_NAME), unit))
            {
                return exit::fail(
                    exit::GENERAL,
                    format!("writing {}: {e}", unit_dir.join(UNIT_NAME).display()),
                );
            }
            println!("Installed {}", unit_dir.join(UNIT_NAME).display());
            if systemd_running() {
                let code = systemctl(&["daemon-reload"]);
                if code != ExitCode::SUCCESS {
                    return code;
                }
                return systemctl(&["enable", UNIT_NAME]);
            }
            println!("systemd is not running here: the unit is installed but not enabled");
            ExitCode::SUCCESS
        }
        ServiceCmd::Uninstall { unit_dir } => {
            if systemd_running() {
                let _ = Command::new("systemctl")
                    .args(["disable", "--now", UNIT_NAME])
                    .status();
            }
            let path = unit_dir.join(UNIT_NAME);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    if systemd_running() {
                        let _ = Command::new("systemctl").arg("daemon-reload").status();
                    }
                    println!("Removed {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("Not installed");
                    ExitCode::SUCCESS
                }
                Err(e) => exit::fail(exit::GENERAL, format!("removing {}: {e}", path.display())),
            }
        }
        ServiceCmd::Start => systemctl(&["start", UNIT_NAME]),
        ServiceCmd::Stop => systemctl(&["stop", UNIT_NAME]),
        ServiceCmd::Restart => systemctl(&["restart", UNIT_NAME]),
        ServiceCmd::Status => systemctl(&["status", "--no-pager", UNIT_NAME]),
        ServiceCmd::Run(a) => daemon_run::run(a, log_control),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_are_added_and_validated() {
        let u = unit_with_env(&["NB_LOG_LEVEL=debug".into()]).unwrap();
        assert!(u.contains("Environment=\"NB_LOG_LEVEL=debug\""));
        assert!(unit_with_env(&["novalue".into()]).is_err());
        assert!(unit_with_env(&["BAD NAME=x".into()]).is_err());
    }
}
