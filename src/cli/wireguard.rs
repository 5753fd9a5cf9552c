//! `netbird-agent wireguard [--foreground] <ifname>`: a standalone userspace WireGuard interface,
//! driven like `wireguard-go <ifname>` by `wg`, `wg set` and `wg-quick` over the UAPI socket
//! `/var/run/wireguard/<ifname>.sock`. Runs until SIGINT/SIGTERM, then removes the interface and
//! the socket. Without `--foreground` (and without `WG_PROCESS_FOREGROUND=1`) it detaches, as
//! wireguard-go does, once the interface and socket are up.

use netbird_agent::wg::uapi::{socket_path, UapiServer};
use netbird_agent::wg::userspace::{Options, UserspaceDevice};
use netbird_agent::wg::{link, WgDevice, DEFAULT_MTU};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `wireguard`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stay in the foreground (`WG_PROCESS_FOREGROUND=1` does the same).
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Interface name to create (at most 15 characters).
    pub ifname: String,
}

/// Runs the standalone device.
pub fn run(args: Args) -> ExitCode {
    let env_fg = std::env::var("WG_PROCESS_FOREGROUND").is_ok_and(|v| v == "1");
    let result = if args.foreground || env_fg {
        run_foreground(&args.ifname)
    } else {
        daemonize(&args.ifname)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netbird-agent wireguard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_foreground(ifname: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dev = UserspaceDevice::create(ifname, Options::default())?;
    if let Err(e) = link::set_mtu(ifname, DEFAULT_MTU) {
        tracing::warn!("setting MTU of {ifname}: {e}");
    }
    let dyn_dev: Arc<dyn WgDevice> = dev.clone();
    let server = UapiServer::start(dyn_dev)?;
    tracing::info!("{ifname} up; UAPI socket {}", server.path().display());
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tick.tick() => {
                    if !dev.is_alive() {
                        tracing::info!("{ifname} is gone; exiting");
                        break;
                    }
                }
            }
        }
        Ok::<(), std::io::Error>(())
    })?;
    tracing::info!("shutting down {ifname}");
    drop(server);
    dev.close()?;
    Ok(())
}

/// Starts a detached foreground child and returns once its UAPI socket exists.
fn daemonize(ifname: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args(["wireguard", "--foreground", ifname])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()?;
    let path = socket_path(ifname);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("device process exited early ({status})");
        }
        if path.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("device did not come up within 10 s")
}
