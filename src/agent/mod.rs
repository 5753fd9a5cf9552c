//! The connect loop that `up` starts: log in, keep the Sync stream, feed every map through the
//! engine and hand the result to the data plane, and publish a status snapshot. A management
//! outage never touches tunnels; only `PermissionDenied` or an address change tears down.

pub mod status;

use crate::config::Config;
use crate::engine::{Engine, MapDiff, NetworkState, ServicesConfig, SyncOutcome};
use crate::mgmt::backoff::Backoff;
use crate::mgmt::{run_sync, LoginError, LoginParams, MgmtClient, MgmtState};
use crate::system::{build_meta, probe_files, HostFacts, MetaOptions};
pub use status::{AgentState, ConnStatus, NetworkInfo, PeerStatus, ServiceStatus, StatusSnapshot};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the agent drives: the WireGuard interface and peer connections. The control plane
/// calls it with each applied map; implementations do their own IO.
pub trait DataPlane: Send {
    /// Brings the host in line with `state`; `diff` says what changed since the last call.
    fn apply(
        &mut self,
        state: &NetworkState,
        diff: &MapDiff,
        services: &ServicesConfig,
    ) -> Result<(), String>;
    /// Fills connection details (state, path, handshake, bytes) into the peer entries.
    fn fill_peer_status(&self, peers: &mut [PeerStatus]);
    /// Signal and relay connection lines for status.
    fn service_status(&self) -> (ServiceStatus, Vec<ServiceStatus>) {
        (ServiceStatus::default(), Vec::new())
    }
    /// Whether the interface is kernel WireGuard.
    fn kernel_interface(&self) -> bool {
        false
    }
    /// Notified when peer connection states change, for an immediate status refresh.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
    /// The UDP port WireGuard really listens on (a random one when the configured port was
    /// busy); `None` when there is no interface.
    fn listen_port(&self) -> Option<u16> {
        None
    }
    /// Removes everything this data plane created.
    fn teardown(&mut self);
}

/// A data plane that only records the map: for `register`, tests and control-plane-only runs.
#[derive(Debug, Default)]
pub struct RecordingDataPlane {
    /// How many maps were applied.
    pub applied: usize,
}

impl DataPlane for RecordingDataPlane {
    fn apply(&mut self, _: &NetworkState, _: &MapDiff, _: &ServicesConfig) -> Result<(), String> {
        self.applied += 1;
        Ok(())
    }
    fn fill_peer_status(&self, _: &mut [PeerStatus]) {}
    fn teardown(&mut self) {}
}

/// Builds a data plane for a config; called on each (re)start of the connect loop.
pub type DataPlaneFactory =
    Arc<dyn Fn(&Config) -> Result<Box<dyn DataPlane>, String> + Send + Sync>;

/// A running connect loop.
pub struct Agent {
    status: watch::Receiver<StatusSnapshot>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Agent {
    /// Starts the connect loop for `cfg` in the background.
    pub fn start(cfg: Config, data_plane: DataPlaneFactory) -> Agent {
        let (status_tx, status) = watch::channel(StatusSnapshot {
            state: AgentState::Connecting,
            management: ServiceStatus {
                url: cfg.management_url.clone(),
                ..Default::default()
            },
            public_key: cfg.public_key().to_base64(),
            interface: cfg.interface_name.clone(),
            wg_port: cfg.wireguard_port,
            ..Default::default()
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(connect_loop(cfg, data_plane, status_tx, stop_rx));
        Agent { status, stop, task }
    }

    /// The latest status.
    pub fn status(&self) -> StatusSnapshot {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<StatusSnapshot> {
        self.status.clone()
    }

    /// True once the loop has ended by itself (needs login, login failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the loop and waits for the data plane teardown.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn meta_for(
    cfg: &Config,
    facts: &HostFacts,
    overlay: Option<std::net::IpAddr>,
    files: Vec<crate::proto::management::File>,
) -> crate::proto::management::PeerSystemMeta {
    build_meta(
        facts,
        &MetaOptions {
            hostname_override: None,
            flags: cfg.flags.clone(),
            overlay: overlay.into_iter().collect(),
            files,
        },
    )
}

fn to_system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
    if t.seconds == 0 && t.nanos == 0 {
        return None;
    }
    let secs = u64::try_from(t.seconds).ok()?;
    Some(
        UNIX_EPOCH
            + Duration::from_secs(secs)
            + Duration::from_nanos(u64::try_from(t.nanos).unwrap_or(0)),
    )
}

fn refresh_status(snap: &mut StatusSnapshot, engine: &Engine, dp: Option<&dyn DataPlane>) {
    if let Some(st) = engine.state() {
        snap.ip = st.peer.address.map(|a| a.to_string()).unwrap_or_default();
        snap.fqdn = st.peer.fqdn.clone();
        snap.forwarding_rules = st.forwarding_rules.len();
        let mut networks: Vec<NetworkInfo> = Vec::new();
        for r in &st.routes {
            if networks.iter().any(|n| n.id == r.net_id) {
                continue;
            }
            let (range, domains) = match &r.target {
                crate::engine::map::RouteTarget::Network(n) => (n.to_string(), Vec::new()),
                crate::engine::map::RouteTarget::Domains(d) => (String::new(), d.clone()),
            };
            networks.push(NetworkInfo {
                id: r.net_id.clone(),
                range,
                domains,
                skip_auto_apply: r.skip_auto_apply,
            });
        }
        networks.sort_by(|a, b| a.id.cmp(&b.id));
        snap.networks = networks;
        let mut peers: Vec<PeerStatus> = st
            .peers
            .values()
            .chain(st.offline_peers.values())
            .map(|p| {
                let ip = p
                    .allowed_ips
                    .first()
                    .map(|n| n.addr().to_string())
                    .unwrap_or_default();
                let mut s = PeerStatus::idle(p.key, ip, p.fqdn.clone());
                // Keep the time of the last state change across refreshes.
                if let Some(prev) = snap.peers.iter().find(|o| o.key == p.key) {
                    s.conn_status_update = prev.conn_status_update;
                }
                s
            })
            .collect();
        peers.sort_by(|a, b| {
            let ka = a.ip.parse::<std::net::IpAddr>().ok();
            let kb = b.ip.parse::<std::net::IpAddr>().ok();
            ka.cmp(&kb).then(a.fqdn.cmp(&b.fqdn))
        });
        if let Some(dp) = dp {
            dp.fill_peer_status(&mut peers);
            let (signal, relays) = dp.service_status();
            snap.signal = signal;
            snap.relays = relays;
            snap.kernel_interface = dp.kernel_interface();
            if let Some(port) = dp.listen_port() {
                snap.wg_port = port;
            }
        }
        snap.peers = peers;
    }
    snap.session_expires_at = engine.session_expires_at().and_then(to_system_time);
}

/// Shortest gap between two status refreshes triggered by connection changes.
const STATUS_REFRESH_MIN_GAP: Duration = Duration::from_millis(100);

/// Outcome of one login attempt inside the loop.
enum LoginStep {
    Ok(Box<crate::proto::management::LoginResponse>),
    Retry(String),
    Stop(AgentState, String, bool),
}

async fn login_step(
    client: &MgmtClient,
    cfg: &Config,
    facts: &HostFacts,
    was_connected: bool,
) -> LoginStep {
    match client
        .login(
            meta_for(cfg, facts, None, Vec::new()),
            &LoginParams::default(),
        )
        .await
    {
        Ok(r) => LoginStep::Ok(Box::new(r)),
        Err(
            e @ (LoginError::NeedsLogin(_)
            | LoginError::LoginExpired(_)
            | LoginError::PendingApproval(_)),
        ) => {
            let state = if was_connected && matches!(e, LoginError::LoginExpired(_)) {
                AgentState::SessionExpired
            } else {
                AgentState::NeedsLogin
            };
            let pending = matches!(e, LoginError::PendingApproval(_));
            LoginStep::Stop(state, e.to_string(), pending)
        }
        Err(e) if e.is_transient() => LoginStep::Retry(e.to_string()),
        Err(e) => LoginStep::Stop(AgentState::LoginFailed, e.to_string(), false),
    }
}

async fn connect_loop(
    cfg: Config,
    factory: DataPlaneFactory,
    status: watch::Sender<StatusSnapshot>,
    mut stop: watch::Receiver<bool>,
) {
    let client = match MgmtClient::new(&cfg.management_url, cfg.private_key.clone()) {
        Ok(c) => c,
        Err(e) => {
            status.send_modify(|s| {
                s.state = AgentState::LoginFailed;
                s.management.error = e.to_string();
            });
            return;
        }
    };
    let facts = HostFacts::gather();
    let mut backoff = Backoff::new(Duration::from_secs(1), 1.7, Duration::from_secs(15), 1.0);
    let mut was_connected = false;
    loop {
        status.send_modify(|s| s.state = AgentState::Connecting);
        let login = tokio::select! {
            _ = stop.changed() => return,
            l = login_step(&client, &cfg, &facts, was_connected) => l,
        };
        let login = match login {
            LoginStep::Ok(l) => l,
            LoginStep::Retry(err) => {
                let wait = backoff.next_wait();
                tracing::warn!(
                    "login failed: {err}; retrying in {:.1}s",
                    wait.as_secs_f64()
                );
                status.send_modify(|s| {
                    s.management.connected = false;
                    s.management.error = err;
                });
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
            LoginStep::Stop(state, err, pending) => {
                tracing::warn!("{err}");
                status.send_modify(|s| {
                    s.state = state;
                    s.pending_approval = pending;
                    s.management.connected = false;
                    s.management.error = err;
                });
                return;
            }
        };
        backoff.reset();
        let mut engine = Engine::new(cfg.public_key());
        engine.on_login(&login);
        let mut dp = match factory(&cfg) {
            Ok(dp) => dp,
            Err(e) => {
                tracing::error!("cannot set up the data plane: {e}");
                status.send_modify(|s| {
                    s.state = AgentState::LoginFailed;
                    s.management.error = format!("data plane: {e}");
                });
                return;
            }
        };
        match run_session(
            &client,
            &cfg,
            &facts,
            &mut engine,
            dp.as_mut(),
            &status,
            &mut stop,
        )
        .await
        {
            SessionEnd::Stopped => {
                dp.teardown();
                status.send_modify(|s| {
                    s.state = AgentState::Idle;
                    s.management.connected = false;
                    s.peers.clear();
                });
                return;
            }
            SessionEnd::Restart => {
                tracing::info!("overlay address changed: restarting the connection");
                dp.teardown();
                was_connected = true;
            }
            SessionEnd::PermissionDenied(reason) => {
                dp.teardown();
                let expired = reason.contains("expired");
                tracing::warn!("management ended the session: {reason}");
                status.send_modify(|s| {
                    s.state = if expired {
                        AgentState::SessionExpired
                    } else {
                        AgentState::NeedsLogin
                    };
                    s.management.connected = false;
                    s.management.error = reason;
                    s.peers.clear();
                });
                return;
            }
        }
    }
}

enum SessionEnd {
    Stopped,
    Restart,
    PermissionDenied(String),
}

async fn run_session(
    client: &MgmtClient,
    cfg: &Config,
    facts: &HostFacts,
    engine: &mut Engine,
    dp: &mut dyn DataPlane,
    status: &watch::Sender<StatusSnapshot>,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let (tx, mut rx) = mpsc::channel(16);
    let (mstate_tx, mut mstate) = watch::channel(MgmtState::Idle);
    let files = probe_files(engine.checks());
    let meta = meta_for(cfg, facts, None, files);
    let sync_task = tokio::spawn(run_sync(
        client.clone(),
        move || meta.clone(),
        tx,
        mstate_tx,
    ));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut conn_changes = dp.changes();
    let mut last_refresh = tokio::time::Instant::now();
    let mut refresh_due: Option<tokio::time::Instant> = None;
    let mut last_checks: Vec<String> = engine.checks().to_vec();
    let end = loop {
        tokio::select! {
            _ = stop.changed() => break SessionEnd::Stopped,
            changed = mstate.changed() => {
                if changed.is_err() {
                    // The sync task ended: only PermissionDenied ends it.
                    let reason = match mstate.borrow().clone() {
                        MgmtState::NeedsLogin(r) => r,
                        _ => "sync session ended".to_string(),
                    };
                    break SessionEnd::PermissionDenied(reason);
                }
                let m = mstate.borrow().clone();
                status.send_modify(|s| match &m {
                    MgmtState::Connected => {
                        s.management.connected = true;
                        s.management.error.clear();
                    }
                    MgmtState::Connecting(err) => {
                        s.management.connected = false;
                        s.management.error = err.clone().unwrap_or_default();
                    }
                    MgmtState::NeedsLogin(r) => {
                        s.management.connected = false;
                        s.management.error = r.clone();
                    }
                    MgmtState::Idle => {}
                });
            }
            update = rx.recv() => {
                let Some(resp) = update else {
                    let reason = match mstate.borrow().clone() {
                        MgmtState::NeedsLogin(r) => r,
                        _ => "sync session ended".to_string(),
                    };
                    break SessionEnd::PermissionDenied(reason);
                };
                match engine.on_sync(&resp) {
                    SyncOutcome::Applied(diff) => {
                        if let Some(state) = engine.state() {
                            if let Err(e) = dp.apply(state, &diff, engine.services()) {
                                tracing::error!("applying network map serial {}: {e}", state.serial);
                            }
                            tracing::info!(
                                serial = state.serial,
                                peers = state.peers.len(),
                                added = diff.peers_added.len(),
                                removed = diff.peers_removed.len(),
                                changed = diff.peers_changed.len(),
                                "network map applied"
                            );
                        }
                        status.send_modify(|s| {
                            s.state = AgentState::Connected;
                            s.pending_approval = false;
                            refresh_status(s, engine, Some(&*dp));
                        });
                        if engine.checks() != last_checks.as_slice() {
                            last_checks = engine.checks().to_vec();
                            let meta = meta_for(cfg, facts, None, probe_files(&last_checks));
                            if let Err(e) = client.sync_meta(meta).await {
                                tracing::warn!("sending posture metadata: {e}");
                            }
                        }
                    }
                    SyncOutcome::StaleDropped { got, applied } => {
                        tracing::debug!("dropped network map serial {got} (applied {applied})");
                    }
                    SyncOutcome::ConfigOnly => {
                        if let Some(state) = engine.state() {
                            if let Err(e) = dp.apply(state, &MapDiff::default(), engine.services()) {
                                tracing::error!("applying services update: {e}");
                            }
                        }
                    }
                    SyncOutcome::RestartRequired => break SessionEnd::Restart,
                }
            }
            changed = async {
                match conn_changes.as_mut() {
                    Some(w) => w.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if !changed {
                    conn_changes = None;
                } else if refresh_due.is_none() {
                    // A connection came up or went down: show it soon, at most ten times
                    // a second, so bursts on large maps do not rebuild the status each time.
                    refresh_due = Some(last_refresh + STATUS_REFRESH_MIN_GAP);
                }
            }
            _ = async {
                match refresh_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                refresh_due = None;
                last_refresh = tokio::time::Instant::now();
                status.send_modify(|s| refresh_status(s, engine, Some(&*dp)));
            }
            _ = tick.tick() => {
                refresh_due = None;
                last_refresh = tokio::time::Instant::now();
                status.send_modify(|s| refresh_status(s, engine, Some(&*dp)));
            }
        }
    };
    sync_task.abort();
    end
}
