//! `up --foreground-mode`: log in and run the connection in this process, without the daemon,
//! until Ctrl-C or SIGTERM (then tear down).

use super::exit;
use super::up::{login_request, LoginFlags};
use netbird_agent::agent::{Agent, AgentState};
use netbird_agent::config::{self, Config, CONFIG_FILE, UPSTREAM_CONFIG_PATHS};
use netbird_agent::mgmt::{LoginError, LoginParams, MgmtClient};
use netbird_agent::system::{build_meta, HostFacts, MetaOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Runs the agent in the foreground.
pub fn run(flags: &LoginFlags, config_dir: Option<&Path>) -> ExitCode {
    let flags = flags.clone();
    let dir = config::config_dir(config_dir);
    super::common::block_on(async move {
        let req = match login_request(&flags) {
            Ok(r) => r,
            Err(e) => return exit::fail(exit::USAGE, e),
        };
        let path = dir.join(CONFIG_FILE);
        let imports: Vec<PathBuf> = UPSTREAM_CONFIG_PATHS.iter().map(PathBuf::from).collect();
        let mut cfg = match Config::load_or_create(&path, &imports) {
            Ok((c, _)) => c,
            Err(e) => return exit::fail(exit::CONFIG, e),
        };
        if !req.management_url.is_empty() {
            match config::normalize_url(&req.management_url) {
                Ok(u) => cfg.management_url = u,
                Err(e) => return exit::fail(exit::USAGE, e),
            }
        }
        if let Some(i) = &req.interface_name {
            cfg.interface_name = i.clone();
        }
        if let Some(p) = flags.wireguard_port {
            cfg.wireguard_port = p;
        }
        if let Err(e) = cfg.save(&path) {
            return exit::fail(exit::CONFIG, e);
        }
        let client = match MgmtClient::new(&cfg.management_url, cfg.private_key.clone()) {
            Ok(c) => c,
            Err(e) => return exit::fail(exit::USAGE, e),
        };
        let meta = build_meta(
            &HostFacts::gather(),
            &MetaOptions {
                hostname_override: flags.hostname.clone(),
                flags: cfg.flags.clone(),
                ..Default::default()
            },
        );
        let key = Some(req.setup_key.clone()).filter(|k| !k.is_empty());
        let login = match client.login(meta.clone(), &LoginParams::default()).await {
            Err(LoginError::NeedsLogin(_)) if key.is_some() => {
                client
                    .login(
                        meta,
                        &LoginParams {
                            setup_key: key,
                            dns_labels: req.dns_labels.clone(),
                            ..Default::default()
                        },
                    )
                    .await
            }
            other => other,
        };
        if let Err(e) = login {
            return exit::fail(exit::code_for_login(&e), e);
        }
        let agent = Agent::start(cfg, super::daemon_run::data_plane_factory(false));
        let mut rx = agent.subscribe();
        let mut last = AgentState::Idle;
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    return exit::fail(exit::GENERAL, format!("installing SIGTERM handler: {e}"))
                }
            };
        let code = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
                _ = term.recv() => break ExitCode::SUCCESS,
                changed = rx.changed() => {
                    if changed.is_err() {
                        break exit::fail(exit::GENERAL, "connection loop ended");
                    }
                    let s = rx.borrow_and_update().clone();
                    if s.state != last {
                        last = s.state;
                        eprintln!("status: {}{}", s.state.as_str(), if s.ip.is_empty() { String::new() } else { format!(" ({})", s.ip) });
                        if matches!(s.state, AgentState::NeedsLogin | AgentState::LoginFailed | AgentState::SessionExpired) {
                            break exit::fail(exit::NEEDS_LOGIN, s.management.error);
                        }
                    }
                }
            }
        };
        agent.stop().await;
        code
    })
}
