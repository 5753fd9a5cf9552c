//! `netbird-agent register`: log in (registering with a setup key if needed), receive the first
//! NetworkMap over Sync and print its summary. Runs in the foreground without the daemon.

use super::exit;
use anyhow::Context;
use clap::Args;
use netbird_agent::config::{self, Config, CONFIG_FILE, UPSTREAM_CONFIG_PATHS};
use netbird_agent::engine::{summary, Engine, SyncOutcome};
use netbird_agent::mgmt::{LoginError, LoginParams, MgmtClient};
use netbird_agent::system::{build_meta, HostFacts, MetaOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Management URL, e.g. https://api.netbird.io:443 or http://127.0.0.1:33073.
    #[arg(short = 'm', long, env = "NB_MANAGEMENT_URL")]
    pub management_url: Option<String>,
    /// Setup key to register this peer with.
    #[arg(short = 'k', long, env = "NB_SETUP_KEY", hide_env_values = true)]
    pub setup_key: Option<String>,
    /// File holding the setup key.
    #[arg(long, env = "NB_SETUP_KEY_FILE", conflicts_with = "setup_key")]
    pub setup_key_file: Option<PathBuf>,
    /// Hostname to register with instead of the OS hostname.
    #[arg(short = 'n', long, env = "NB_HOSTNAME")]
    pub hostname: Option<String>,
    /// Config directory (default /var/lib/netbird-agent, or NB_AGENT_CONFIG_DIR).
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// How long to wait for the first NetworkMap.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    pub timeout: u64,
}

/// Reads a setup key from the flag or the file, trimmed.
pub fn read_setup_key(key: Option<&str>, file: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    if let Some(k) = key {
        return Ok(Some(k.trim().to_string()));
    }
    match file {
        Some(f) => Ok(Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading setup key file {}", f.display()))?
                .trim()
                .to_string(),
        )),
        None => Ok(None),
    }
}

/// Runs `register`.
pub fn run(args: RegisterArgs) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return exit::fail(exit::GENERAL, format!("cannot start runtime: {e}")),
    };
    rt.block_on(register(args))
}

async fn register(args: RegisterArgs) -> ExitCode {
    let setup_key = match read_setup_key(args.setup_key.as_deref(), args.setup_key_file.as_ref()) {
        Ok(k) => k,
        Err(e) => return exit::fail(exit::USAGE, format!("{e:#}")),
    };
    let dir = config::config_dir(args.config_dir.as_deref());
    let path = dir.join(CONFIG_FILE);
    let imports: Vec<PathBuf> = UPSTREAM_CONFIG_PATHS.iter().map(PathBuf::from).collect();
    let (mut cfg, created) = match Config::load_or_create(&path, &imports) {
        Ok(c) => c,
        Err(e) => return exit::fail(exit::CONFIG, format!("{e}")),
    };
    if let Some(url) = &args.management_url {
        match config::normalize_url(url) {
            Ok(u) => cfg.management_url = u,
            Err(e) => return exit::fail(exit::USAGE, e.to_string()),
        }
    }
    if created || args.management_url.is_some() {
        if let Err(e) = cfg.save(&path) {
            return exit::fail(exit::CONFIG, e.to_string());
        }
    }
    let client = match MgmtClient::new(&cfg.management_url, cfg.private_key.clone()) {
        Ok(c) => c,
        Err(e) => return exit::fail(exit::USAGE, e.to_string()),
    };
    let facts = HostFacts::gather();
    let opts = MetaOptions {
        hostname_override: args.hostname.clone(),
        flags: cfg.flags.clone(),
        ..Default::default()
    };
    let meta = build_meta(&facts, &opts);
    println!("Management: {}", client.url());
    println!("Public key: {}", cfg.public_key());

    let params = LoginParams::default();
    let login = match client.login(meta.clone(), &params).await {
        Err(LoginError::NeedsLogin(_)) if setup_key.is_some() => {
            let params = LoginParams {
                setup_key: setup_key.clone(),
                dns_labels: cfg.dns_labels.clone(),
                ..Default::default()
            };
            client.login(meta.clone(), &params).await
        }
        other => other,
    };
    let login = match login {
        Ok(l) => l,
        Err(e) => return exit::fail(exit::code_for_login(&e), e.to_string()),
    };
    println!("Login: ok");
    let mut engine = Engine::new(cfg.public_key());
    engine.on_login(&login);

    let sync_meta = build_meta(
        &facts,
        &MetaOptions {
            flags: cfg.flags.clone(),
            ..Default::default()
        },
    );
    let first_map = async {
        let mut stream = client.open_sync(sync_meta).await?;
        loop {
            match stream.next().await? {
                Some(resp) => {
                    if let SyncOutcome::Applied(_) = engine.on_sync(&resp) {
                        return Ok::<_, netbird_agent::mgmt::MgmtError>(());
                    }
                }
                None => {
                    return Err(netbird_agent::mgmt::MgmtError::Status(
                        tonic::Status::unavailable("sync stream closed before the first map"),
                    ))
                }
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(args.timeout), first_map).await {
        Err(_) => exit::fail(
            exit::UNAVAILABLE,
            format!("no NetworkMap within {}s", args.timeout),
        ),
        Ok(Err(e)) if e.is_permission_denied() => exit::fail(exit::NEEDS_LOGIN, e.to_string()),
        Ok(Err(e)) => exit::fail(exit::UNAVAILABLE, e.to_string()),
        Ok(Ok(())) => {
            if let Some(state) = engine.state() {
                print!("{}", summary::render(state));
            }
            ExitCode::SUCCESS
        }
    }
}
