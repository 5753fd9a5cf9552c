//! The daemon: serves NetBird's daemon API on a unix socket and owns the connect loop.
//!
//! Reads (Status, GetConfig, ListNetworks, GetLogLevel) are open to every local user, as
//! upstream's socket is 0666; everything that changes state needs root or the admin group,
//! checked from the socket's peer credentials.

pub mod access;
pub mod client;
pub mod convert;

use crate::agent::{Agent, AgentState, DataPlaneFactory, StatusSnapshot};
use crate::config::{self, Config, CONFIG_FILE, UPSTREAM_CONFIG_PATHS};
use crate::mgmt::{LoginError, LoginParams, MgmtClient};
use crate::proto::daemon as dpb;
use crate::proto::daemon::daemon_service_server::{DaemonService, DaemonServiceServer};
use crate::system::{build_meta, HostFacts, MetaOptions};
use access::AccessPolicy;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/var/run/netbird-agent.sock";
/// How long a blocking `Up` waits for the connection.
pub const UP_WAIT: Duration = Duration::from_secs(50);

/// Changes the log filter at runtime; returns an error text for a bad level.
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon answers on the socket.
    #[error("another daemon is already listening on {0}")]
    AlreadyRunning(PathBuf),
    /// Socket creation failed.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// The gRPC server failed.
    #[error("daemon server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// How the daemon is set up.
#[derive(Clone)]
pub struct DaemonOptions {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Config directory.
    pub config_dir: PathBuf,
    /// Who may change state.
    pub access: AccessPolicy,
    /// Builds the data plane for each connection.
    pub data_plane: DataPlaneFactory,
    /// Runtime log-level control.
    pub log_control: Option<LogControl>,
    /// Start the connection at startup if the peer is set up and auto-connect is on.
    pub auto_connect: bool,
}

/// An SSO login waiting for the user.
enum PendingSso {
    Device(crate::auth::device::DeviceCode),
    Pkce(crate::auth::pkce::PkcePending),
}

struct SsoLogin {
    flow: PendingSso,
    client: MgmtClient,
    meta: crate::proto::management::PeerSystemMeta,
    dns_labels: Vec<String>,
}

struct Inner {
    opts: DaemonOptions,
    sso: Mutex<Option<SsoLogin>>,
    agent: Mutex<Option<Agent>>,
    /// State when no agent runs (Idle, NeedsLogin after logout).
    idle_state: std::sync::Mutex<AgentState>,
    log_level: std::sync::Mutex<dpb::LogLevel>,
    deselected: std::sync::Mutex<BTreeSet<String>>,
}

/// The DaemonService implementation.
#[derive(Clone)]
pub struct Daemon {
    inner: Arc<Inner>,
}

impl Daemon {
    /// A daemon with these options (not yet listening).
    pub fn new(opts: DaemonOptions) -> Self {
        Daemon {
            inner: Arc::new(Inner {
                opts,
                sso: Mutex::new(None),
                agent: Mutex::new(None),
                idle_state: std::sync::Mutex::new(AgentState::Idle),
                log_level: std::sync::Mutex::new(dpb::LogLevel::Info),
                deselected: std::sync::Mutex::new(BTreeSet::new()),
            }),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.inner.opts.config_dir.join(CONFIG_FILE)
    }

    fn load_config(&self) -> Result<Config, Status> {
        let imports: Vec<PathBuf> = UPSTREAM_CONFIG_PATHS.iter().map(PathBuf::from).collect();
        Config::load_or_create(&self.config_path(), &imports)
            .map(|(c, _)| c)
            .map_err(|e| Status::internal(format!("config: {e}")))
    }

    fn set_idle_state(&self, s: AgentState) {
        if let Ok(mut g) = self.inner.idle_state.lock() {
            *g = s;
        }
    }

    fn idle_state(&self) -> AgentState {
        self.inner
            .idle_state
            .lock()
            .map(|g| *g)
            .unwrap_or(AgentState::Idle)
    }

    /// The current status snapshot.
    pub async fn snapshot(&self) -> StatusSnapshot {
        let agent = self.inner.agent.lock().await;
        match agent.as_ref() {
            Some(a) => a.status(),
            None => {
                let mut s = StatusSnapshot {
                    state: self.idle_state(),
                    ..Default::default()
                };
                if let Ok((cfg, _)) =
                    Config::load_or_create(&self.config_path(), &[]).map_err(|_| ())
                {
                    s.management.url = cfg.management_url.clone();
                    s.public_key = cfg.public_key().to_base64();
                    s.interface = cfg.interface_name.clone();
                    s.wg_port = cfg.wireguard_port;
                }
                s
            }
        }
    }

    /// Starts the connection if it is not running. Returns false if it already runs.
    async fn start_agent(&self) -> Result<bool, Status> {
        let mut agent = self.inner.agent.lock().await;
        if let Some(a) = agent.as_ref() {
            if !a.is_finished() {
                return Ok(false);
            }
        }
        if let Some(old) = agent.take() {
            old.stop().await;
        }
        let cfg = self.load_config()?;
        *agent = Some(Agent::start(cfg, self.inner.opts.data_plane.clone()));
        Ok(true)
    }

    /// Stops the connection and tears down what it made.
    pub async fn stop_agent(&self) {
        if let Some(a) = self.inner.agent.lock().await.take() {
            a.stop().await;
        }
        self.set_idle_state(AgentState::Idle);
    }

    async fn wait_for_outcome(&self, limit: Duration) -> Result<(), Status> {
        let rx = {
            let agent = self.inner.agent.lock().await;
            match agent.as_ref() {
                Some(a) => a.subscribe(),
                None => return Err(Status::failed_precondition("not up")),
            }
        };
        let mut rx = rx;
        let wait = async {
            loop {
                let s = rx.borrow_and_update().clone();
                match s.state {
                    AgentState::Connected => return Ok(()),
                    AgentState::NeedsLogin | AgentState::SessionExpired => {
                        return Err(Status::permission_denied(format!(
                            "login needed: {}",
                            s.management.error
                        )))
                    }
                    AgentState::LoginFailed => {
                        return Err(Status::internal(format!(
                            "login failed: {}",
                            s.management.error
                        )))
                    }
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(Status::aborted("connection stopped"));
                }
            }
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(
                "not connected yet; it keeps trying in the background",
            )),
        }
    }
}

impl Daemon {
    /// Selects (or deselects) networks: `all`, or the listed ids; selecting without `append`
    /// deselects every other network.
    async fn change_selection(
        &self,
        r: dpb::SelectNetworksRequest,
        select: bool,
    ) -> Result<Response<dpb::SelectNetworksResponse>, Status> {
        let all: Vec<String> = self
            .snapshot()
            .await
            .networks
            .into_iter()
            .map(|n| n.id)
            .collect();
        let mut d = self
            .inner
            .deselected
            .lock()
            .map_err(|_| Status::internal("lock"))?;
        match (select, r.all) {
            (true, true) => d.clear(),
            (false, true) => d.extend(all),
            (true, false) => {
                if !r.append {
                    d.extend(all);
                }
                for id in &r.network_i_ds {
                    d.remove(id);
                }
            }
            (false, false) => d.extend(r.network_i_ds.iter().cloned()),
        }
        Ok(Response::new(dpb::SelectNetworksResponse {}))
    }

    /// Starts an SSO flow (PKCE on desktops when offered, else the device flow) and answers
    /// the CLI with what to show the user.
    async fn start_sso(
        &self,
        client: MgmtClient,
        meta: crate::proto::management::PeerSystemMeta,
        dns_labels: Vec<String>,
        desktop: bool,
    ) -> Result<Response<dpb::LoginResponse>, Status> {
        let unavailable = |e: crate::mgmt::MgmtError| Status::unavailable(e.to_string());
        let pkce = if desktop {
            client.pkce_flow().await.map_err(unavailable)?
        } else {
            None
        };
        let (flow, resp) = if let Some(cfg) = pkce.and_then(|p| p.provider_config) {
            let p = crate::auth::pkce::start(&cfg)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            let resp = dpb::LoginResponse {
                needs_sso_login: true,
                user_code: String::new(),
                verification_uri: p.auth_url.clone(),
                verification_uri_complete: p.auth_url.clone(),
            };
            (PendingSso::Pkce(p), resp)
        } else if let Some(cfg) = client
            .device_flow()
            .await
            .map_err(unavailable)?
            .and_then(|d| d.provider_config)
        {
            let d = crate::auth::device::start(&cfg)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            let resp = dpb::LoginResponse {
                needs_sso_login: true,
                user_code: d.user_code.clone(),
                verification_uri: d.verification_uri.clone(),
                verification_uri_complete: d.verification_uri_complete.clone(),
            };
            (PendingSso::Device(d), resp)
        } else {
            return Err(Status::failed_precondition(
                crate::auth::SsoError::NotConfigured.to_string(),
            ));
        };
        *self.inner.sso.lock().await = Some(SsoLogin {
            flow,
            client,
            meta,
            dns_labels,
        });
        Ok(Response::new(resp))
    }
}

fn login_status(e: LoginError) -> Status {
    let msg = e.to_string();
    match e {
        LoginError::MalformedSetupKey => Status::invalid_argument(msg),
        LoginError::InvalidSetupKey(_) => Status::not_found(msg),
        LoginError::NeedsLogin(_)
        | LoginError::LoginExpired(_)
        | LoginError::PendingApproval(_) => Status::permission_denied(msg),
        LoginError::DnsLabelsNotAllowed(_) | LoginError::Rejected(_) => {
            Status::failed_precondition(msg)
        }
        LoginError::TokenRejected(_) => Status::unauthenticated(msg),
        LoginError::AlreadyRegistered | LoginError::Transport(_) => Status::unavailable(msg),
    }
}

fn apply_login_request(cfg: &mut Config, r: &dpb::LoginRequest) -> Result<(), Status> {
    if !r.management_url.is_empty() {
        cfg.management_url = config::normalize_url(&r.management_url)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    if !r.admin_url.is_empty() {
        cfg.admin_url = config::normalize_url(&r.admin_url)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    if let Some(i) = &r.interface_name {
        if i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) {
            return Err(Status::invalid_argument(format!(
                "invalid interface name {i:?}"
            )));
        }
        cfg.interface_name = i.clone();
    }
    if let Some(p) = r.wireguard_port {
        cfg.wireguard_port = u16::try_from(p)
            .map_err(|_| Status::invalid_argument(format!("invalid WireGuard port {p}")))?;
    }
    if let Some(m) = r.mtu {
        let m = u16::try_from(m).ok().filter(|m| (576..=8192).contains(m));
        cfg.mtu = Some(m.ok_or_else(|| Status::invalid_argument("MTU must be 576..8192"))?);
    }
    if let Some(psk) = &r.optional_pre_shared_key {
        if psk.is_empty() {
            cfg.pre_shared_key = None;
        } else {
            crate::crypto::PrivateKey::from_base64(psk).map_err(|_| {
                Status::invalid_argument("the pre-shared key must be 32 bytes of base64")
            })?;
            cfg.pre_shared_key = Some(psk.clone());
        }
    }
    let f = &mut cfg.flags;
    let set = |dst: &mut bool, v: Option<bool>| {
        if let Some(v) = v {
            *dst = v;
        }
    };
    set(&mut f.disable_client_routes, r.disable_client_routes);
    set(&mut f.disable_server_routes, r.disable_server_routes);
    set(&mut f.disable_dns, r.disable_dns);
    set(&mut f.disable_firewall, r.disable_firewall);
    set(&mut f.block_lan_access, r.block_lan_access);
    set(&mut f.block_inbound, r.block_inbound);
    set(&mut f.disable_ipv6, r.disable_ipv6);
    set(&mut f.server_ssh_allowed, r.server_ssh_allowed);
    if r.clean_dns_labels {
        cfg.dns_labels.clear();
    }
    if !r.dns_labels.is_empty() {
        cfg.dns_labels = r.dns_labels.clone();
    }
    if !r.hostname.is_empty() {
        cfg.hostname = Some(r.hostname.clone());
    }
    Ok(())
}

#[tonic::async_trait]
impl DaemonService for Daemon {
    async fn login(
        &self,
        req: Request<dpb::LoginRequest>,
    ) -> Result<Response<dpb::LoginResponse>, Status> {
        self.inner.opts.access.require_admin(&req)?;
        let r = req.into_inner();
        {
            let agent = self.inner.agent.lock().await;
            if agent
                .as_ref()
                .is_some_and(|a| !a.is_finished() && a.status().state == AgentState::Connected)
            {
                return Err(Status::failed_precondition(
                    "already connected: run `down` first to log in again",
                ));
            }
        }
        let mut cfg = self.load_config()?;
        apply_login_request(&mut cfg, &r)?;
        cfg.save(&self.config_path())
            .map_err(|e| Status::internal(e.to_string()))?;
        let client = MgmtClient::new(&cfg.management_url, cfg.private_key.clone())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let meta = build_meta(
            &HostFacts::gather(),
            &MetaOptions {
                hostname_override: cfg.hostname.clone(),
                flags: cfg.flags.clone(),
                ..Default::default()
            },
        );
        let setup_key = Some(r.setup_key.trim().to_string()).filter(|k| !k.is_empty());
        // Already registered? A plain login answers that without using the key.
        match client
            .login(
                meta.clone(),
                &LoginParams {
                    dns_labels: cfg.dns_labels.clone(),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) => {
                self.set_idle_state(AgentState::Idle);
                return Ok(Response::new(dpb::LoginResponse::default()));
            }
            Err(LoginError::NeedsLogin(_) | LoginError::LoginExpired(_)) => {}
            Err(e) => return Err(login_status(e)),
        }
        let Some(setup_key) = setup_key else {
            self.set_idle_state(AgentState::NeedsLogin);
            return self
                .start_sso(
                    client,
                    meta,
                    cfg.dns_labels.clone(),
                    r.is_unix_desktop_client,
                )
                .await;
        };
        let params = LoginParams {
            setup_key: Some(setup_key),
            dns_labels: cfg.dns_labels.clone(),
            ..Default::default()
        };
        match client.login(meta, &params).await {
            Ok(_) => {
                self.set_idle_state(AgentState::Idle);
                Ok(Response::new(dpb::LoginResponse::default()))
            }
            Err(e) => {
                self.set_idle_state(AgentState::LoginFailed);
                Err(login_status(e))
            }
        }
    }

    async fn wait_sso_login(
        &self,
        req: Request<dpb::WaitSsoLoginRequest>,
    ) -> Result<Response<dpb::WaitSsoLoginResponse>, Status> {
        self.inner.opts.access.require_admin(&req)?;
        let r = req.into_inner();
        let login = {
            let mut pending = self.inner.sso.lock().await;
            let matches = match pending.as_ref().map(|p| &p.flow) {
                Some(PendingSso::Device(d)) => d.user_code == r.user_code,
                Some(PendingSso::Pkce(_)) => r.user_code.is_empty(),
                None => return Err(Status::failed_precondition("no SSO login is in progress")),
            };
            if !matches {
                return Err(Status::invalid_argument(
                    "the user code does not match the SSO login in progress",
                ));
            }
            pending
                .take()
                .ok_or_else(|| Status::failed_precondition("no SSO login is in progress"))?
        };
        let token = match login.flow {
            PendingSso::Device(d) => d.wait_token().await,
            PendingSso::Pkce(p) => p.wait_token().await,
        };
        let token = match token {
            Ok(t) => t,
            Err(crate::auth::SsoError::Expired) => {
                self.set_idle_state(AgentState::NeedsLogin);
                return Err(Status::deadline_exceeded(
                    crate::auth::SsoError::Expired.to_string(),
                ));
            }
            Err(e) => {
                self.set_idle_state(AgentState::LoginFailed);
                return Err(Status::permission_denied(e.to_string()));
            }
        };
        let email = crate::auth::jwt::claims_unverified(&token)
            .ok()
            .and_then(|c| c["email"].as_str().map(String::from))
            .unwrap_or_default();
        let params = LoginParams {
            jwt: Some(token),
            dns_labels: login.dns_labels,
            ..Default::default()
        };
        match login.client.login(login.meta, &params).await {
            Ok(_) => {
                self.set_idle_state(AgentState::Idle);
                Ok(Response::new(dpb::WaitSsoLoginResponse { email }))
            }
            Err(e) => {
                self.set_idle_state(AgentState::LoginFailed);
                Err(login_status(e))
            }
        }
    }

    async fn up(&self, req: Request<dpb::UpRequest>) -> Result<Response<dpb::UpResponse>, Status> {
        self.inner.opts.access.require_admin(&req)?;
        let r = req.into_inner();
        if !self.start_agent().await? {
            return Err(Status::already_exists("already up"));
        }
        if !r.r#async {
            self.wait_for_outcome(UP_WAIT).await?;
        }
        Ok(Response::new(dpb::UpResponse {}))
    }

    async fn status(
        &self,
        req: Request<dpb::StatusRequest>,
    ) -> Result<Response<dpb::StatusResponse>, Status> {
        let r = req.into_inner();
        if r.wait_for_ready == Some(true) {
            let _ = self.wait_for_outcome(Duration::from_secs(10)).await;
        }
        let snap = self.snapshot().await;
        Ok(Response::new(convert::status_response(
            &snap,
            r.get_full_peer_status,
        )))
    }

    async fn down(
        &self,
        req: Request<dpb::DownRequest>,
    ) -> Result<Response<dpb::DownResponse>, Status> {
        self.inner.opts.access.require_admin(&req)?;
        if self.inner.agent.lock().await.is_none() {
            return Err(Status::failed_precondition("not up"));
        }
        self.stop_agent().await;
        Ok(Response::new(dpb::DownResponse {}))
    }

    async fn get_config(
        &self,
        _req: Request<dpb::GetConfigRequest>,
    ) -> Result<Response<dpb::GetConfigResponse>, Status> {
        let cfg =
            Config::load(&self.config_path()).map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(dpb::GetConfigResponse {
            management_url: cfg.management_url.clone(),
            config_file: self.config_path().display().to_string(),
            log_file: String::new(),
            pre_shared_key: if cfg.pre_shared_key.is_some() {
                "**********".into()
            } else {
                String::new()
            },
            admin_url: cfg.admin_url.clone(),
            interface_name: cfg.interface_name.clone(),
            wireguard_port: i64::from(cfg.wireguard_port),
            mtu: i64::from(cfg.mtu.unwrap_or(1280)),
            disable_auto_connect: false,
            server_ssh_allowed: cfg.flags.server_ssh_allowed,
            block_inbound: cfg.flags.block_inbound,
            disable_dns: cfg.flags.disable_dns,
            disable_client_routes: cfg.flags.disable_client_routes,
            disable_server_routes: cfg.flags.disable_server_routes,
            block_lan_access: cfg.flags.block_lan_access,
            disable_ipv6: cfg.flags.disable_ipv6,
        }))
    }

    async fn list_networks(
        &self,
        _req: Request<dpb::ListNetworksRequest>,
    ) -> Result<Response<dpb::ListNetworksResponse>, Status> {
        let snap = self.snapshot().await;
        let deselected = self
            .inner
            .deselected
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        let routes = snap
            .networks
            .iter()
            .map(|n| dpb::Network {
                id: n.id.clone(),
                range: n.range.clone(),
                selected: !deselected.contains(&n.id) && !n.skip_auto_apply,
                domains: n.domains.clone(),
                resolved_i_ps: Default::default(),
            })
            .collect();
        Ok(Response::new(dpb::ListNetworksResponse { routes }))
    }

    async fn select_networks(
        &self,
        req: Request<dpb::SelectNetworksRequest>,
    ) -> Result<Response<dpb::SelectNetworksResponse>, Status> {
        self.inner.opts.access.require_admin(&req)?;
        self.change_selection(req.into_inner(), true).await
    }

    async fn deselect_networks(
        &self,
        req: Request<dpb::SelectNetworksRequest>,
    ) -> Result<Response<dpb::SelectNetworksResponse>, Status> {
        self.inner.opts.access.require_admin(&req)?;
        self.change_selection(req.into_inner(), false).await
    }

    async fn forwarding_rules(
        &self,
        _req: Request<dpb::EmptyRequest>,
    ) -> Result<Response<dpb::ForwardingRulesResponse>, Status> {
        Ok(Response::new(dpb::ForwardingRulesResponse {
            rules: Vec::new(),
        }))
    }

    async fn debug_bundle(
        &self,
        req: Request<dpb::DebugBundleRequest>,
    ) -> Result<Response<dpb::DebugBundleResponse>, Status> {
        self.inner.opts.access.require_admin(&req)?;
        let r = req.into_inner();
        let snap = self.snapshot().await;
        let status =
            crate::status_view::build(&convert::status_response(&snap, true), &Default::default());
        let input = crate::debug::BundleInput {
            status_text: crate::status_view::render_text(
                &status,
                true,
                std::time::SystemTime::now(),
            ),
            config: Config::load(&self.config_path()).ok(),
            system_info: r.system_info,
            anonymize: r.anonymize,
        };
        let dir = std::env::temp_dir();
        let path = tokio::task::spawn_blocking(move || crate::debug::write_bundle(&dir, &input))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(dpb::DebugBundleResponse {
            path: path.display().to_string(),
            uploaded_key: String::new(),
            upload_failure_reason: if r.upload_url.is_empty() {
                String::new()
            } else {
                "uploading is not supported by this agent; send the local file instead".into()
            },
        }))
    }

    async fn get_log_level(
        &self,
        _req: Request<dpb::GetLogLevelRequest>,
    ) -> Result<Response<dpb::GetLogLevelResponse>, Status> {
        let level = self
            .inner
            .log_level
            .lock()
            .map(|l| *l)
            .unwrap_or(dpb::LogLevel::Info);
        Ok(Response::new(dpb::GetLogLevelResponse {
            level: level as i32,
        }))
    }

    async fn set_log_level(
        &self,
        req: Request<dpb::SetLogLevelRequest>,
    ) -> Result<Response<dpb::SetLogLevelResponse>, Status> {
        self.inner.opts.access.require_admin(&req)?;
        let level = dpb::LogLevel::try_from(req.into_inner().level)
            .map_err(|_| Status::invalid_argument("unknown log level"))?;
        let filter = match level {
            dpb::LogLevel::Panic | dpb::LogLevel::Fatal | dpb::LogLevel::Error => "error",
            dpb::LogLevel::Warn => "warn",
            dpb::LogLevel::Info => "info",
            dpb::LogLevel::Debug => "debug",
            dpb::LogLevel::Trace => "trace",
            dpb::LogLevel::Unknown => return Err(Status::invalid_argument("unknown log level")),
        };
        if let Some(ctl) = &self.inner.opts.log_control {
            ctl(filter).map_err(Status::invalid_argument)?;
        }
        if let Ok(mut l) = self.inner.log_level.lock() {
            *l = level;
        }
        Ok(Response::new(dpb::SetLogLevelResponse {}))
    }

    async fn get_active_profile(
        &self,
        _req: Request<dpb::GetActiveProfileRequest>,
    ) -> Result<Response<dpb::GetActiveProfileResponse>, Status> {
        Ok(Response::new(dpb::GetActiveProfileResponse {
            profile_name: "default".into(),
            username: String::new(),
            id: "default".into(),
        }))
    }

    async fn logout(
        &self,
        req: Request<dpb::LogoutRequest>,
    ) -> Result<Response<dpb::LogoutResponse>, Status> {
        self.inner.opts.access.require_admin(&req)?;
        self.stop_agent().await;
        let cfg = self.load_config()?;
        let client = MgmtClient::new(&cfg.management_url, cfg.private_key.clone())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        client
            .logout()
            .await
            .map_err(|e| Status::unavailable(format!("deregistering: {e}")))?;
        self.set_idle_state(AgentState::NeedsLogin);
        Ok(Response::new(dpb::LogoutResponse {}))
    }
}

/// Binds the socket: removes a stale one (only if nothing answers on it), listens, chmod 0666.
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(DaemonError::AlreadyRunning(path.into())),
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| DaemonError::Listen {
        path: path.into(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(|source| {
        DaemonError::Listen {
            path: path.into(),
            source,
        }
    })?;
    Ok(listener)
}

/// Serves the daemon API on `listener` until `shutdown` resolves, then stops the connection
/// (tearing down everything it made) and removes the socket.
pub async fn serve(
    daemon: Daemon,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let socket = daemon.inner.opts.socket.clone();
    if daemon.inner.opts.auto_connect && Config::load(&daemon.config_path()).is_ok() {
        if let Err(e) = daemon.start_agent().await {
            tracing::warn!("auto-connect: {}", e.message());
        }
    }
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let svc = DaemonServiceServer::new(daemon.clone());
    let result = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    daemon.stop_agent().await;
    let _ = std::fs::remove_file(&socket);
    result.map_err(DaemonError::from)
}
