//! `up` and `login`: configure and log in through the daemon, then connect (`up`).

use super::common::{self, DaemonAddr};
use super::exit;
use super::register::read_setup_key;
use clap::Args;
use netbird_agent::proto::daemon as dpb;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags shared by `up` and `login`, with NetBird's names.
#[derive(Debug, Args, Clone)]
pub struct LoginFlags {
    /// Setup key for registration.
    #[arg(short = 'k', long, env = "NB_SETUP_KEY", hide_env_values = true)]
    pub setup_key: Option<String>,
    /// File holding the setup key.
    #[arg(long, env = "NB_SETUP_KEY_FILE", conflicts_with = "setup_key")]
    pub setup_key_file: Option<PathBuf>,
    /// Management URL.
    #[arg(short = 'm', long, env = "NB_MANAGEMENT_URL")]
    pub management_url: Option<String>,
    /// Admin (dashboard) URL.
    #[arg(long, env = "NB_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Hostname to register with.
    #[arg(short = 'n', long, env = "NB_HOSTNAME")]
    pub hostname: Option<String>,
    /// WireGuard interface name.
    #[arg(long, env = "NB_INTERFACE_NAME")]
    pub interface_name: Option<String>,
    /// WireGuard port.
    #[arg(long, env = "NB_WIREGUARD_PORT")]
    pub wireguard_port: Option<u16>,
    /// Interface MTU.
    #[arg(long, env = "NB_MTU")]
    pub mtu: Option<u16>,
    /// Pre-shared key applied to every peer.
    #[arg(long, env = "NB_PRESHARED_KEY", hide_env_values = true)]
    pub preshared_key: Option<String>,
    /// Extra DNS labels (comma separated).
    #[arg(long, env = "NB_EXTRA_DNS_LABELS", value_delimiter = ',')]
    pub extra_dns_labels: Vec<String>,
    /// Do not run the DNS resolver.
    #[arg(long, env = "NB_DISABLE_DNS", num_args = 0..=1, default_missing_value = "true")]
    pub disable_dns: Option<bool>,
    /// Do not install routes from other peers.
    #[arg(long, env = "NB_DISABLE_CLIENT_ROUTES", num_args = 0..=1, default_missing_value = "true")]
    pub disable_client_routes: Option<bool>,
    /// Do not route for other peers.
    #[arg(long, env = "NB_DISABLE_SERVER_ROUTES", num_args = 0..=1, default_missing_value = "true")]
    pub disable_server_routes: Option<bool>,
    /// Do not manage the firewall.
    #[arg(long, env = "NB_DISABLE_FIREWALL", num_args = 0..=1, default_missing_value = "true")]
    pub disable_firewall: Option<bool>,
    /// Block access to local networks from routed traffic.
    #[arg(long, env = "NB_BLOCK_LAN_ACCESS", num_args = 0..=1, default_missing_value = "true")]
    pub block_lan_access: Option<bool>,
    /// Drop all inbound traffic from peers.
    #[arg(long, env = "NB_BLOCK_INBOUND", num_args = 0..=1, default_missing_value = "true")]
    pub block_inbound: Option<bool>,
    /// Do not use IPv6 overlay addresses.
    #[arg(long, env = "NB_DISABLE_IPV6", num_args = 0..=1, default_missing_value = "true")]
    pub disable_ipv6: Option<bool>,
    /// Allow NetBird SSH to this peer.
    #[arg(long, env = "NB_ALLOW_SERVER_SSH", num_args = 0..=1, default_missing_value = "true")]
    pub allow_server_ssh: Option<bool>,
    /// Print the SSO URL instead of opening a browser.
    #[arg(long, env = "NB_NO_BROWSER")]
    pub no_browser: bool,
}

/// Arguments of `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    /// Login flags.
    pub login: LoginFlags,
    /// Run in the foreground without the daemon.
    #[arg(short = 'F', long, env = "NB_FOREGROUND_MODE")]
    pub foreground_mode: bool,
    /// Config directory for foreground mode.
    #[arg(long, env = "NB_AGENT_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    #[command(flatten)]
    /// Daemon address.
    pub daemon: DaemonAddr,
}

/// Arguments of `login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    /// Login flags.
    pub login: LoginFlags,
    #[command(flatten)]
    /// Daemon address.
    pub daemon: DaemonAddr,
}

fn is_desktop_session() -> bool {
    [
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "BROWSER",
        "DESKTOP_SESSION",
        "XDG_CURRENT_DESKTOP",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
        || matches!(
            std::env::var("XDG_SESSION_TYPE").as_deref(),
            Ok("x11" | "wayland" | "mir")
        )
}

/// Builds the daemon LoginRequest from the flags.
pub fn login_request(f: &LoginFlags) -> Result<dpb::LoginRequest, String> {
    let setup_key = read_setup_key(f.setup_key.as_deref(), f.setup_key_file.as_ref())
        .map_err(|e| format!("{e:#}"))?;
    if let Some(url) = &f.management_url {
        netbird_agent::config::normalize_url(url).map_err(|e| e.to_string())?;
    }
    Ok(dpb::LoginRequest {
        setup_key: setup_key.unwrap_or_default(),
        management_url: f.management_url.clone().unwrap_or_default(),
        admin_url: f.admin_url.clone().unwrap_or_default(),
        is_unix_desktop_client: is_desktop_session(),
        hostname: f.hostname.clone().unwrap_or_default(),
        interface_name: f.interface_name.clone(),
        wireguard_port: f.wireguard_port.map(i64::from),
        optional_pre_shared_key: f.preshared_key.clone(),
        server_ssh_allowed: f.allow_server_ssh,
        disable_client_routes: f.disable_client_routes,
        disable_server_routes: f.disable_server_routes,
        disable_dns: f.disable_dns,
        disable_firewall: f.disable_firewall,
        block_lan_access: f.block_lan_access,
        dns_labels: f.extra_dns_labels.clone(),
        block_inbound: f.block_inbound,
        mtu: f.mtu.map(i64::from),
        disable_ipv6: f.disable_ipv6,
        ..Default::default()
    })
}

async fn do_login(
    client: &mut netbird_agent::proto::daemon::daemon_service_client::DaemonServiceClient<
        tonic::transport::Channel,
    >,
    flags: &LoginFlags,
) -> Result<(), ExitCode> {
    let req = login_request(flags).map_err(|e| exit::fail(exit::USAGE, e))?;
    let resp = client
        .login(req)
        .await
        .map_err(|s| common::status_exit("login failed", &s))?
        .into_inner();
    if resp.needs_sso_login {
        println!("Please do the SSO login in your browser.");
        let uri = if resp.verification_uri_complete.is_empty() {
            &resp.verification_uri
        } else {
            &resp.verification_uri_complete
        };
        println!("If your browser didn't open automatically, use this URL to log in:\n\n{uri}\n");
        if !resp.user_code.is_empty() && !uri.contains(&resp.user_code) {
            println!("and enter the code {} to authenticate.", resp.user_code);
        }
        if !flags.no_browser {
            let _ = std::process::Command::new("xdg-open")
                .arg(uri)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
        }
        let host = flags.hostname.clone().unwrap_or_default();
        client
            .wait_sso_login(dpb::WaitSsoLoginRequest {
                user_code: resp.user_code,
                hostname: host,
            })
            .await
            .map_err(|s| common::status_exit("SSO login failed", &s))?;
    }
    Ok(())
}

/// Runs `login`.
pub fn run_login(args: LoginArgs) -> ExitCode {
    common::block_on(async move {
        let mut client = match common::daemon(&args.daemon).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        match do_login(&mut client, &args.login).await {
            Ok(()) => {
                println!("Logged in successfully");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }
    })
}

/// Runs `up`.
pub fn run(args: UpArgs) -> ExitCode {
    if args.foreground_mode {
        return super::foreground::run(&args.login, args.config_dir.as_deref());
    }
    common::block_on(async move {
        let mut client = match common::daemon(&args.daemon).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        match client.status(dpb::StatusRequest::default()).await {
            Ok(s) if s.get_ref().status == "Connected" => {
                return exit::fail(
                    exit::ALREADY,
                    "already connected (run `netbird-agent down` first)",
                );
            }
            Ok(_) => {}
            Err(s) => return common::status_exit("status", &s),
        }
        if let Err(code) = do_login(&mut client, &args.login).await {
            return code;
        }
        match client.up(dpb::UpRequest::default()).await {
            Ok(_) => {
                println!("Connected");
                ExitCode::SUCCESS
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                exit::fail(exit::ALREADY, "already up (run `netbird-agent down` first)")
            }
            Err(s) => common::status_exit("up failed", &s),
        }
    })
}
