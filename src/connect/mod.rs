//! Peer connectivity: runs one [`PeerConn`] state machine per remote peer and carries out its
//! effects with the signal client (offers, answers), the NetBird relay (home relay plus the
//! controller's relay when it differs) and the WireGuard device (which path each peer's
//! datagrams take). One task owns all of it; callers talk to it through [`ConnManager`].
//!
//! ICE runs on the WireGuard socket itself (the device hands us STUN datagrams and sends ours):
//! host candidates from the interfaces, a server-reflexive one from the STUN servers in
//! NetbirdConfig, a relayed one from a TURN allocation ([`turn`], its own socket) when no
//! NetBird relay can join the two peers, checks by the `is` agent; a connected pair becomes
//! the peer's path and wins over the NetBird relay.

use crate::crypto::{PrivateKey, PublicKey};
use crate::engine::ServicesConfig;
use crate::peer::{self, ActivePath, ConnConfig, Effect, PathKind, PeerConn};
use crate::relay::{RelayClient, RelayConfig, RelayConn, RelayToken};
use crate::signal::{
    OfferAnswer, ReceivedSignal, SignalClient, SignalConfig, SignalMessage, SignalState,
    SignalStatus,
};
mod turn;

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Sends one encrypted datagram on a custom path.
pub type DatagramSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Where the device sends one peer's encrypted datagrams.
#[derive(Clone)]
pub enum WgPath {
    /// A UDP address, from the shared WireGuard socket.
    Udp(SocketAddr),
    /// A custom sender (a relayed connection).
    Custom(DatagramSink),
}

impl std::fmt::Debug for WgPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WgPath::Udp(a) => write!(f, "Udp({a})"),
            WgPath::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// WireGuard statistics of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// What connectivity needs from the WireGuard device.
pub trait TunnelDevice: Send + Sync + 'static {
    /// Adds or updates a peer (allowed IPs replaced, session kept).
    fn upsert_peer(
        &self,
        key: &PublicKey,
        allowed_ips: &[IpNet],
        keepalive_secs: u16,
        psk: Option<[u8; 32]>,
    ) -> Result<(), String>;
    /// Removes a peer.
    fn remove_peer(&self, key: &PublicKey);
    /// Points a peer's datagrams at a path (None: nowhere).
    fn set_path(&self, key: &PublicKey, path: Option<WgPath>);
    /// Hands the device a datagram that arrived for `key` over a custom path.
    fn inject(&self, key: &PublicKey, datagram: &[u8]);
    /// Statistics of a peer.
    fn peer_stats(&self, key: &PublicKey) -> Option<PeerStats>;
    /// Sends a non-WireGuard datagram (STUN, ICE checks) from the WireGuard socket.
    /// Holds back our own WireGuard handshake initiations to `key` for `duration`, so the
    /// controller's handshake is the one that completes (upstream leaves the non-controller's
    /// endpoint unset for 5 s to the same end). Devices without the notion ignore it.
    fn hold_initiations(&self, _key: &PublicKey, _duration: Duration) {}
    /// Uses `path` for the peer only if it has neither a path nor an endpoint yet (WireGuard
    /// roaming for datagrams that arrive through a TURN allocation: the answer to a handshake
    /// must go back the way it came). Returns whether it was adopted.
    fn adopt_path(&self, _key: &PublicKey, _path: WgPath) -> bool {
        false
    }
    /// Drops the peer's WireGuard sessions so the next path starts with a fresh handshake.
    fn reset_session(&self, _key: &PublicKey) {}
    /// Where to report local traffic for peers that have no path (wakes idle connections).
    fn set_activity_sink(&self, _sink: mpsc::UnboundedSender<PublicKey>) {}
    fn send_raw(&self, dst: SocketAddr, data: &[u8]);
    /// Where datagrams arriving on the WireGuard socket that are not WireGuard go.
    fn set_raw_sink(&self, sink: RawSink);
    /// The WireGuard socket's port.
    fn listen_port(&self) -> u16;
}

/// Receives non-WireGuard datagrams (source, bytes) from the device.
pub type RawSink = mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>;

/// Connection details of one peer for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConnInfo {
    /// Current path.
    pub path: PathKind,
    /// Relay instance URL in use, if relayed.
    pub relay_address: String,
    /// When the path last changed.
    pub since: SystemTime,
    /// ICE pair of a direct path: (local type, local endpoint, remote type, remote endpoint).
    pub ice_pair: Option<(String, String, String, String)>,
    /// Round-trip time of the ICE pair.
    pub latency: Option<Duration>,
    /// The remote put the connection to sleep (GO_IDLE).
    pub idle: bool,
}

/// Connection lines for status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicesStatus {
    /// Signal address and whether it is connected.
    pub signal: Option<(String, bool, String)>,
    /// Home relay URL and whether it is connected.
    pub relay: Option<(String, bool, String)>,
}

enum Command {
    Peers(Vec<(PublicKey, Vec<IpNet>)>),
    Overlay(Vec<IpNet>),
    Services(ServicesConfig),
}

enum Event {
    HomeRelay(Result<RelayClient, String>),
    /// A relayed conn is open, on this relay instance and client (kept alive by the slot).
    RelayOpened(PublicKey, String, RelayConn, Arc<RelayClient>),
    RelayFailed(PublicKey, String),
    RelayClosed(PublicKey),
    /// STUN server names resolved, for the URI list they came from.
    StunResolved(Vec<String>, Vec<SocketAddr>),
    /// TURN servers resolved (address, user, password), for the config they came from.
    TurnResolved(
        Vec<(String, String, String)>,
        Vec<(SocketAddr, String, String)>,
    ),
}

#[derive(Default)]
struct Shared {
    peers: HashMap<PublicKey, PeerConnInfo>,
    services: ServicesStatus,
    /// Bumped whenever what `status` shows of a peer changes (path, pair, idle).
    changes: Option<watch::Sender<u64>>,
}

/// Handle to the connectivity task.
pub struct ConnManager {
    cmds: mpsc::UnboundedSender<Command>,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl ConnManager {
    /// Starts the task for our key and WireGuard port, driving `device`.
    pub fn start(key: PrivateKey, wg_port: u16, device: Arc<dyn TunnelDevice>) -> ConnManager {
        let (cmds, rx) = mpsc::unbounded_channel();
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Mutex::new(Shared {
            changes: Some(changes),
            ..Shared::default()
        }));
        let task = tokio::spawn(run(key, wg_port, device, rx, shared.clone()));
        ConnManager { cmds, shared, task }
    }

    /// Changes whenever a peer's connection state as `status` shows it changes, so status can
    /// be refreshed at once instead of on its next tick.
    pub fn changes(&self) -> Option<watch::Receiver<u64>> {
        self.shared
            .lock()
            .ok()
            .and_then(|s| s.changes.as_ref().map(|c| c.subscribe()))
    }

    /// The peers to connect to (full list; others are dropped).
    pub fn set_peers(&self, peers: Vec<(PublicKey, Vec<IpNet>)>) {
        let _ = self.cmds.send(Command::Peers(peers));
    }

    /// Our overlay networks: candidates inside them are refused (ICE must not run through
    /// the tunnel it is building).
    pub fn set_overlay(&self, nets: Vec<IpNet>) {
        let _ = self.cmds.send(Command::Overlay(nets));
    }

    /// Signal and relay settings.
    pub fn set_services(&self, services: ServicesConfig) {
        let _ = self.cmds.send(Command::Services(services));
    }

    /// Connection details of a peer.
    pub fn peer_info(&self, key: &PublicKey) -> Option<PeerConnInfo> {
        self.shared.lock().ok()?.peers.get(key).cloned()
    }

    /// Signal and relay lines.
    pub fn services_status(&self) -> ServicesStatus {
        self.shared
            .lock()
            .map(|s| s.services.clone())
            .unwrap_or_default()
    }
}

impl Drop for ConnManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct IceSession {
    agent: is::IceAgent,
    /// The local address checks arrive on (our first host candidate).
    local: SocketAddr,
    connected: bool,
    nominated: Option<SocketAddr>,
    /// The local address the nominated pair sends from (a TURN relayed address or ours).
    nominated_source: Option<SocketAddr>,
    /// When a STUN message for this agent last arrived; upstream ends ICE after
    /// [`ICE_DISCONNECTED_TIMEOUT`] without one, so we do the same.
    last_rx: Instant,
}

/// Upstream's `NB_ICE_DISCONNECTED_TIMEOUT_SEC` default: a connected agent that hears nothing
/// for this long is closed and the peer falls back to the relay.
const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(6);

struct Slot {
    conn: PeerConn,
    relay_url: Option<String>,
    /// The open relayed connection as a WireGuard path, used whenever the relay is the
    /// active path (also again after ICE drops).
    relay_path: Option<WgPath>,
    /// Whether WireGuard currently has a path to the peer.
    has_path: bool,
    /// The relay client the peer's relayed conn lives on: dropping the last handle to a
    /// foreign relay's client closes that connection, so the slot holds one.
    relay_client: Option<Arc<RelayClient>>,
    /// TURN allocation of the current ICE session, if TURN is gathered.
    turn: Option<turn::TurnHandle>,
    relay_task: Option<JoinHandle<()>>,
    ice: Option<IceSession>,
    pending_candidates: Vec<is::Candidate>,
}

fn kind_name(k: is::CandidateKind) -> &'static str {
    match k {
        is::CandidateKind::Host => "host",
        is::CandidateKind::ServerReflexive => "srflx",
        is::CandidateKind::PeerReflexive => "prflx",
        is::CandidateKind::Relayed => "relay",
    }
}

/// Types and endpoints of the nominated pair: the remote side from the candidate the agent
/// sends to; the local side is the candidate it was formed from (our host address, or our
/// reflexive one if the remote is outside our network).
fn selected_pair(
    ice: &IceSession,
    turn_relayed: Option<SocketAddr>,
) -> Option<(String, String, String, String)> {
    let dest = ice.nominated?;
    let remote = ice.agent.remote_candidates().find(|c| c.addr() == dest);
    let remote_kind = remote.map(|c| kind_name(c.kind())).unwrap_or("prflx");
    if let Some(relayed) = turn_relayed.filter(|r| ice.nominated_source == Some(*r)) {
        return Some((
            "relay".to_string(),
            relayed.to_string(),
            remote_kind.to_string(),
            dest.to_string(),
        ));
    }
    let local = if remote_kind == "host" {
        ice.agent
            .local_candidates()
            .find(|c| c.kind() == is::CandidateKind::Host)
    } else {
        ice.agent
            .local_candidates()
            .find(|c| c.kind() == is::CandidateKind::ServerReflexive)
            .or_else(|| {
                ice.agent
                    .local_candidates()
                    .find(|c| c.kind() == is::CandidateKind::Host)
            })
    };
    let (lk, la) = local
        .map(|c| (kind_name(c.kind()), c.addr().to_string()))
        .unwrap_or(("host", ice.local.to_string()));
    Some((
        lk.to_string(),
        la,
        remote_kind.to_string(),
        dest.to_string(),
    ))
}

/// Whether the nominated pair is relayed: our side is the TURN relayed address, or the
/// remote candidate is a relay one (upstream counts either as ICE-via-TURN).
fn pair_is_relayed(ice: &IceSession, turn: Option<&turn::TurnHandle>) -> bool {
    let local = turn
        .and_then(|t| t.relayed)
        .is_some_and(|r| ice.nominated_source == Some(r));
    let remote = ice.nominated.is_some_and(|d| {
        ice.agent
            .remote_candidates()
            .any(|c| c.addr() == d && c.kind() == is::CandidateKind::Relayed)
    });
    local || remote
}

/// The address of a literal `turn:` URI.
fn turn_uri_addr(uri: &str) -> Option<SocketAddr> {
    crate::ice::parse_server_uri(uri).and_then(|u| u.literal_addr())
}

/// Local IPv4 host addresses for candidates: interfaces that are up and have a MAC
/// (so neither loopback nor our own TUN device).
fn host_addresses(port: u16) -> Vec<SocketAddr> {
    crate::system::interface_addresses()
        .into_iter()
        .filter(|a| a.net.addr().is_ipv4())
        .map(|a| SocketAddr::new(a.net.addr(), port))
        .collect()
}

struct State {
    key: PrivateKey,
    wg_port: u16,
    device: Arc<dyn TunnelDevice>,
    shared: Arc<Mutex<Shared>>,
    events: mpsc::UnboundedSender<Event>,
    sig_forward: mpsc::UnboundedSender<ReceivedSignal>,
    signal: Option<SignalClient>,
    signal_addr: Option<(String, bool)>,
    relay_cfg: Option<(Vec<String>, RelayToken)>,
    home: Option<Arc<RelayClient>>,
    home_connecting: bool,
    foreign: HashMap<String, Arc<RelayClient>>,
    peers: HashMap<PublicKey, Slot>,
    stun_servers: Vec<SocketAddr>,
    /// The STUN URIs `stun_servers` was made from.
    stun_uris: Vec<String>,
    /// UDP TURN servers with credentials, resolved.
    turn_servers: Vec<(SocketAddr, String, String)>,
    /// The NetbirdConfig TURN entries `turn_servers` was made from.
    turn_cfg: Vec<(String, String, String)>,
    /// Where allocation tasks report.
    turn_tx: mpsc::UnboundedSender<(PublicKey, turn::TurnUpdate)>,
    /// Our overlay networks (see [`ConnManager::set_overlay`]).
    overlay: Vec<IpNet>,
    stun_tid: Option<[u8; 12]>,
    stun_next: Instant,
    srflx: Option<SocketAddr>,
    /// Signal registrations seen so far; a new one makes every peer re-offer at once.
    signal_registrations: u64,
    /// Whether the signal stream is registered: offers sent before it would be lost.
    signal_ready: bool,
}

fn to_wire(oa: &peer::OfferAnswer) -> OfferAnswer {
    OfferAnswer {
        ufrag: oa.ice.ufrag.clone(),
        pwd: oa.ice.pwd.clone(),
        wg_listen_port: oa.wg_listen_port,
        version: crate::UPSTREAM_COMPAT_VERSION.into(),
        relay_server_address: oa.relay_address.clone(),
        session_id: oa.ice.session_id,
        relay_server_ip: None,
        rosenpass: None,
    }
}

fn from_wire(oa: &OfferAnswer) -> peer::OfferAnswer {
    peer::OfferAnswer {
        ice: peer::IceParams {
            ufrag: oa.ufrag.clone(),
            pwd: oa.pwd.clone(),
            session_id: oa.session_id,
        },
        wg_listen_port: oa.wg_listen_port,
        relay_address: oa.relay_server_address.clone(),
    }
}

impl State {
    fn new_conn(&self, remote: PublicKey, now: Instant) -> PeerConn {
        let (ufrag, pwd) = peer::random_credentials(&mut rand::thread_rng());
        PeerConn::new(
            ConnConfig {
                local_key: self.key.public_key(),
                remote_key: remote,
                wg_port: self.wg_port,
                ufrag,
                pwd,
                force_relay: false,
            },
            self.home.as_ref().map(|h| h.instance_url()),
            now,
            rand::random(),
        )
    }

    fn publish(&self, key: &PublicKey) {
        let Some(slot) = self.peers.get(key) else {
            return;
        };
        let info = slot.conn.info();
        let since = SystemTime::now() - info.since.elapsed();
        if let Ok(mut s) = self.shared.lock() {
            let old = s.peers.insert(
                *key,
                PeerConnInfo {
                    path: info.path,
                    relay_address: if info.path == PathKind::Relay {
                        slot.relay_url.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    since,
                    ice_pair: if matches!(info.path, PathKind::IceDirect | PathKind::IceTurn) {
                        let relayed = slot.turn.as_ref().and_then(|t| t.relayed);
                        slot.ice.as_ref().and_then(|i| selected_pair(i, relayed))
                    } else {
                        None
                    },
                    latency: slot.ice.as_ref().and_then(|i| i.agent.nominated_pair_rtt()),
                    idle: info.idle,
                },
            );
            let visible =
                |p: &PeerConnInfo| (p.path, p.relay_address.clone(), p.ice_pair.clone(), p.idle);
            let changed = match (&old, s.peers.get(key)) {
                (Some(a), Some(b)) => visible(a) != visible(b),
                _ => true,
            };
            if changed {
                if let Some(c) = &s.changes {
                    c.send_modify(|v| *v = v.wrapping_add(1));
                }
            }
        }
    }

    fn run_effects(&mut self, key: PublicKey) {
        let Some(slot) = self.peers.get_mut(&key) else {
            return;
        };
        let effects = slot.conn.poll_effects();
        for e in effects {
            match e {
                Effect::SendOffer(oa) => self.send_signal(key, SignalMessage::Offer(to_wire(&oa))),
                Effect::SendAnswer(oa) => {
                    self.send_signal(key, SignalMessage::Answer(to_wire(&oa)))
                }
                Effect::StartIce {
                    remote,
                    controlling,
                    gather_turn,
                } => self.start_ice(key, remote, controlling, gather_turn),
                Effect::StopIce => {
                    if let Some(slot) = self.peers.get_mut(&key) {
                        slot.ice = None;
                        slot.turn = None;
                    }
                }
                Effect::OpenRelay(url) => self.open_relay(key, url),
                Effect::CloseRelay => {
                    if let Some(slot) = self.peers.get_mut(&key) {
                        if let Some(t) = slot.relay_task.take() {
                            t.abort();
                        }
                        slot.relay_url = None;
                        slot.relay_path = None;
                        slot.relay_client = None;
                    }
                }
                Effect::SetPath(None) => {
                    if let Some(slot) = self.peers.get_mut(&key) {
                        slot.has_path = false;
                    }
                    self.device.set_path(&key, None)
                }
                Effect::SetPath(Some(active)) => {
                    let Some(slot) = self.peers.get_mut(&key) else {
                        continue;
                    };
                    let via_turn = slot.turn.as_ref().filter(|t| {
                        t.relayed.is_some()
                            && slot.ice.as_ref().and_then(|i| i.nominated_source) == t.relayed
                    });
                    let path = match (active, via_turn) {
                        (ActivePath::Direct(addr), Some(t)) => {
                            Some(WgPath::Custom(t.path_to(addr)))
                        }
                        (ActivePath::Direct(addr), None) => Some(WgPath::Udp(addr)),
                        (ActivePath::Relay, _) => slot.relay_path.clone(),
                    };
                    if !slot.has_path && !slot.conn.is_controller() {
                        self.device
                            .hold_initiations(&key, NON_CONTROLLER_HANDSHAKE_HOLD);
                    }
                    slot.has_path = path.is_some();
                    self.device.set_path(&key, path);
                }
            }
        }
        self.publish(&key);
    }

    fn send_signal(&self, to: PublicKey, msg: SignalMessage) {
        if let Some(sig) = &self.signal {
            let sender = sig.sender();
            tokio::spawn(async move {
                if let Err(e) = sender.send(&to, &msg).await {
                    tracing::debug!(peer = %to, "signal send failed: {e}");
                }
            });
        }
    }

    fn open_relay(&mut self, key: PublicKey, url: String) {
        let events = self.events.clone();
        let own = self.key.public_key();
        let home = self.home.clone().filter(|h| h.instance_url() == url);
        let foreign = self.foreign.get(&url).cloned();
        let token = self.relay_cfg.as_ref().map(|(_, t)| t.clone());
        tokio::spawn(async move {
            let client = match (home, foreign, token) {
                (Some(h), _, _) => h,
                (None, Some(f), _) => f,
                (None, None, Some(token)) => {
                    let mut cfg = RelayConfig::new(url.clone(), token);
                    cfg.reconnect = false;
                    match RelayClient::connect(cfg, &own).await {
                        Ok(c) => Arc::new(c),
                        Err(e) => {
                            let _ = events.send(Event::RelayFailed(key, e.to_string()));
                            return;
                        }
                    }
                }
                (None, None, None) => {
                    let _ = events.send(Event::RelayFailed(key, "no relay credentials".into()));
                    return;
                }
            };
            match client.open(&key).await {
                Ok(conn) => {
                    let url = client.instance_url();
                    let _ = events.send(Event::RelayOpened(key, url, conn, client));
                }
                Err(e) => {
                    let _ = events.send(Event::RelayFailed(key, e.to_string()));
                }
            }
        });
    }

    fn on_relay_opened(
        &mut self,
        key: PublicKey,
        url: String,
        conn: RelayConn,
        client: Arc<RelayClient>,
    ) {
        let is_home = self.home.as_ref().is_some_and(|h| Arc::ptr_eq(h, &client));
        if !is_home {
            // A foreign relay (the controller's home): shared by every peer that meets there,
            // closed once none does (see `prune_foreign_relays`).
            self.foreign
                .entry(url.clone())
                .or_insert_with(|| client.clone());
        }
        let now = Instant::now();
        let Some(slot) = self.peers.get_mut(&key) else {
            return;
        };
        let sender = conn.sender();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
        let pump_out = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if sender.send(&b).await.is_err() {
                    break;
                }
            }
        });
        let device = self.device.clone();
        let events = self.events.clone();
        let mut conn = conn;
        let pump_in = tokio::spawn(async move {
            while let Some(d) = conn.recv().await {
                device.inject(&key, &d);
            }
            pump_out.abort();
            let _ = events.send(Event::RelayClosed(key));
        });
        if let Some(t) = slot.relay_task.replace(pump_in) {
            t.abort();
        }
        slot.relay_url = Some(url);
        slot.relay_client = Some(client);
        slot.relay_path = Some(WgPath::Custom(Arc::new(move |d: &[u8]| {
            let _ = tx.try_send(d.to_vec());
        })));
        // The state machine decides whether the relay becomes the active path (it does not
        // while ICE carries the peer); its SetPath effect points WireGuard at it.
        slot.conn.on_relay_connected(now);
        if slot.conn.info().path == PathKind::Relay {
            // Already the active path (a replaced relay connection): no SetPath follows.
            self.device.set_path(&key, slot.relay_path.clone());
        }
        tracing::info!(peer = %key, "relayed connection up");
        self.run_effects(key);
    }

    fn on_signal(&mut self, msg: ReceivedSignal) {
        let now = Instant::now();
        let Some(slot) = self.peers.get_mut(&msg.from) else {
            tracing::debug!("signal message from an unknown peer dropped");
            return;
        };
        match msg.message {
            SignalMessage::Offer(oa) => slot.conn.on_offer(from_wire(&oa), now),
            SignalMessage::Answer(oa) => slot.conn.on_answer(from_wire(&oa), now),
            SignalMessage::Candidate(text) => match crate::ice::candidate_from_signal(&text) {
                Some(c) if !crate::ice::candidate_addr_usable(c.addr(), &self.overlay) => {
                    tracing::debug!(peer = %msg.from, addr = %c.addr(), "impossible candidate dropped");
                }
                Some(c) => match slot.ice.as_mut() {
                    Some(ice) => ice.agent.add_remote_candidate(c),
                    None if slot.pending_candidates.len() < 64 => slot.pending_candidates.push(c),
                    None => {}
                },
                None => tracing::debug!(peer = %msg.from, "unparsable candidate dropped"),
            },
            SignalMessage::GoIdle => {
                tracing::info!(peer = %msg.from, "the peer went idle");
                slot.conn.on_remote_idle(now);
                // It removed its WireGuard peer: our old session would only send into the
                // void when the connection wakes, so start over with a handshake.
                self.device.reset_session(&msg.from);
            }
            SignalMessage::Mode { .. } | SignalMessage::Heartbeat => {}
        }
        self.run_effects(msg.from);
    }

    fn set_peers(&mut self, list: Vec<(PublicKey, Vec<IpNet>)>) {
        let now = Instant::now();
        let wanted: HashMap<PublicKey, Vec<IpNet>> = list.into_iter().collect();
        let gone: Vec<PublicKey> = self
            .peers
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            if let Some(mut slot) = self.peers.remove(&k) {
                if let Some(t) = slot.relay_task.take() {
                    t.abort();
                }
            }
            self.device.set_path(&k, None);
            if let Ok(mut s) = self.shared.lock() {
                s.peers.remove(&k);
            }
        }
        for k in wanted.keys() {
            if !self.peers.contains_key(k) {
                let conn = self.new_conn(*k, now);
                self.peers.insert(
                    *k,
                    Slot {
                        conn,
                        relay_url: None,
                        relay_path: None,
                        has_path: false,
                        relay_client: None,
                        turn: None,
                        relay_task: None,
                        ice: None,
                        pending_candidates: Vec::new(),
                    },
                );
                self.publish(k);
            }
        }
    }

    fn start_ice(
        &mut self,
        key: PublicKey,
        remote: peer::IceParams,
        controlling: bool,
        gather_turn: bool,
    ) {
        let hosts = host_addresses(self.device.listen_port());
        let Some(first) = hosts.first().copied() else {
            tracing::debug!("no host addresses for ICE");
            return;
        };
        let srflx = self.srflx;
        let Some(slot) = self.peers.get_mut(&key) else {
            return;
        };
        let (ufrag, pwd) = slot.conn.local_credentials();
        let mut agent = is::IceAgent::new(is::IceCreds {
            ufrag: ufrag.to_string(),
            pass: pwd.to_string(),
        });
        agent.set_controlling(controlling);
        agent.set_remote_credentials(is::IceCreds {
            ufrag: remote.ufrag,
            pass: remote.pwd,
        });
        let mut texts = Vec::new();
        for h in &hosts {
            if let Ok(c) = is::Candidate::host(*h, "udp") {
                if let Some(added) = agent.add_local_candidate(c) {
                    texts.push(crate::ice::candidate_to_signal(added));
                }
            }
        }
        if let Some(r) = srflx {
            if let Ok(c) = is::Candidate::server_reflexive(r, first, "udp") {
                if let Some(added) = agent.add_local_candidate(c) {
                    texts.push(crate::ice::candidate_to_signal(added));
                }
            }
        }
        for c in slot.pending_candidates.drain(..) {
            agent.add_remote_candidate(c);
        }
        slot.ice = Some(IceSession {
            agent,
            local: first,
            connected: false,
            nominated: None,
            nominated_source: None,
            last_rx: Instant::now(),
        });
        // A fresh allocation per ICE session, as pion's agent gathers one per agent.
        slot.turn = match self.turn_servers.first() {
            Some((server, user, password)) if gather_turn => Some(turn::TurnHandle::start(
                key,
                *server,
                user.clone(),
                password.clone(),
                self.device.clone(),
                self.turn_tx.clone(),
            )),
            _ => None,
        };
        for t in texts {
            self.send_signal(key, SignalMessage::Candidate(t));
        }
    }

    /// Local traffic for a peer without a path: wake its connection if it sleeps.
    fn on_activity(&mut self, key: PublicKey) {
        if let Some(slot) = self.peers.get_mut(&key) {
            if slot.conn.info().idle {
                tracing::info!(peer = %key, "traffic for an idle peer: reconnecting");
            }
            slot.conn.on_local_activity(Instant::now());
        }
        self.run_effects(key);
    }

    /// A report from a peer's TURN allocation.
    fn on_turn(&mut self, key: PublicKey, update: turn::TurnUpdate) {
        let now = Instant::now();
        let Some(slot) = self.peers.get_mut(&key) else {
            return;
        };
        match update {
            turn::TurnUpdate::Allocated { relayed, local } => {
                let Some(t) = slot.turn.as_mut() else {
                    return;
                };
                t.relayed = Some(relayed);
                let Some(ice) = slot.ice.as_mut() else {
                    return;
                };
                let text = is::Candidate::relayed(relayed, local, "udp")
                    .ok()
                    .and_then(|c| ice.agent.add_local_candidate(c).cloned())
                    .map(|c| crate::ice::candidate_to_signal(&c));
                if let Some(text) = text {
                    tracing::debug!(peer = %key, %relayed, "TURN relay candidate gathered");
                    self.send_signal(key, SignalMessage::Candidate(text));
                }
            }
            turn::TurnUpdate::Stun { from, data } => {
                let relayed = slot.turn.as_ref().and_then(|t| t.relayed);
                let (Some(ice), Some(relayed)) = (slot.ice.as_mut(), relayed) else {
                    return;
                };
                let Ok(msg) = is::stun::StunMessage::parse(&data) else {
                    return;
                };
                if ice.agent.accepts_message(&msg) {
                    ice.last_rx = now;
                    ice.agent.handle_packet(
                        now,
                        is::stun::StunPacket {
                            proto: is::Protocol::Udp,
                            source: from,
                            destination: relayed,
                            message: msg,
                        },
                    );
                }
            }
            turn::TurnUpdate::Failed(why) => {
                tracing::warn!(peer = %key, "TURN: {why}");
                slot.turn = None;
            }
        }
    }

    /// Uses new TURN servers from NetbirdConfig: UDP `turn:` URIs (TCP and TLS are not
    /// spoken here), IP literals at once and names once resolved. Same servers with new
    /// credentials only update the running allocations.
    fn set_turn_servers(&mut self, cfg: Vec<(String, String, String)>) {
        let same_uris = cfg.len() == self.turn_cfg.len()
            && cfg.iter().zip(&self.turn_cfg).all(|(a, b)| a.0 == b.0);
        self.turn_cfg = cfg.clone();
        if same_uris {
            for (server, user, password) in self.turn_servers.iter_mut() {
                if let Some((_, u, p)) = cfg
                    .iter()
                    .find(|(uri, _, _)| turn_uri_addr(uri) == Some(*server))
                {
                    *user = u.clone();
                    *password = p.clone();
                }
            }
            if let Some((_, u, p)) = cfg.first() {
                for slot in self.peers.values() {
                    if let Some(t) = &slot.turn {
                        t.update_credentials(u.clone(), p.clone());
                    }
                }
            }
            if !self.turn_servers.is_empty() || cfg.is_empty() {
                return;
            }
        }
        let usable: Vec<(crate::ice::ServerUri, String, String)> = cfg
            .iter()
            .filter_map(|(uri, u, p)| {
                let parsed = crate::ice::parse_server_uri(uri)
                    .filter(|x| x.scheme == crate::ice::ServerScheme::Turn && !x.tcp);
                if parsed.is_none() {
                    tracing::info!("TURN server {uri:?} not used (only UDP turn: is spoken)");
                }
                parsed.map(|x| (x, u.clone(), p.clone()))
            })
            .collect();
        self.turn_servers = usable
            .iter()
            .filter_map(|(x, u, p)| x.literal_addr().map(|a| (a, u.clone(), p.clone())))
            .collect();
        if usable.iter().all(|(x, _, _)| x.literal_addr().is_some()) {
            return;
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            for (x, u, p) in &usable {
                match x.resolve().await {
                    Ok(addrs) => {
                        if let Some(a) = addrs.into_iter().find(|a| a.is_ipv4()) {
                            out.push((a, u.clone(), p.clone()));
                        }
                    }
                    Err(e) => tracing::warn!("resolving TURN server {}: {e}", x.host),
                }
            }
            let _ = events.send(Event::TurnResolved(cfg, out));
        });
    }

    fn on_raw(&mut self, from: SocketAddr, data: Vec<u8>) {
        if let Some((tid, addr)) = crate::ice::stun::parse_binding_response(&data) {
            if Some(tid) == self.stun_tid {
                if self.srflx != Some(addr) {
                    tracing::info!("server-reflexive address learned");
                    self.srflx = Some(addr);
                    self.add_srflx_to_agents(addr);
                }
                return;
            }
        }
        let now = Instant::now();
        tracing::trace!(%from, len = data.len(), "STUN datagram on the WireGuard socket");
        for slot in self.peers.values_mut() {
            let Some(ice) = slot.ice.as_mut() else {
                continue;
            };
            let Ok(msg) = is::stun::StunMessage::parse(&data) else {
                return;
            };
            if ice.agent.accepts_message(&msg) {
                ice.last_rx = now;
                ice.agent.handle_packet(
                    now,
                    is::stun::StunPacket {
                        proto: is::Protocol::Udp,
                        source: from,
                        destination: ice.local,
                        message: msg,
                    },
                );
                return;
            }
        }
    }

    fn add_srflx_to_agents(&mut self, addr: SocketAddr) {
        let mut out = Vec::new();
        for (k, slot) in self.peers.iter_mut() {
            let Some(ice) = slot.ice.as_mut() else {
                continue;
            };
            if let Ok(c) = is::Candidate::server_reflexive(addr, ice.local, "udp") {
                if let Some(added) = ice.agent.add_local_candidate(c) {
                    out.push((*k, crate::ice::candidate_to_signal(added)));
                }
            }
        }
        for (k, t) in out {
            self.send_signal(k, SignalMessage::Candidate(t));
        }
    }

    /// Uses new STUN URIs: IP literals at once, names once resolved (real deployments use
    /// names such as `stun:stun.netbird.io:443`).
    fn set_stun_servers(&mut self, uris: Vec<String>) {
        let parsed: Vec<crate::ice::ServerUri> = uris
            .iter()
            .filter_map(|u| {
                let p = crate::ice::parse_server_uri(u)
                    .filter(|p| p.scheme == crate::ice::ServerScheme::Stun);
                if p.is_none() {
                    tracing::warn!("ignoring STUN server URI {u:?}");
                }
                p
            })
            .collect();
        self.stun_uris = uris.clone();
        self.stun_servers = parsed.iter().filter_map(|p| p.literal_addr()).collect();
        self.stun_next = Instant::now();
        if parsed.iter().all(|p| p.literal_addr().is_some()) {
            return;
        }
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut addrs = Vec::new();
            for p in &parsed {
                match p.resolve().await {
                    Ok(found) => addrs.extend(found.into_iter().filter(|a| a.is_ipv4())),
                    Err(e) => tracing::warn!("resolving STUN server {}: {e}", p.host),
                }
            }
            let _ = events.send(Event::StunResolved(uris, addrs));
        });
    }

    /// Drives every ICE agent: timers, outgoing checks, connection changes.
    fn drive_ice(&mut self, now: Instant) {
        if !self.stun_servers.is_empty() && now >= self.stun_next {
            let tid: [u8; 12] = rand::random();
            self.stun_tid = Some(tid);
            for s in &self.stun_servers {
                self.device
                    .send_raw(*s, &crate::ice::stun::binding_request(tid));
            }
            self.stun_next = now
                + if self.srflx.is_some() {
                    Duration::from_secs(25)
                } else {
                    Duration::from_secs(1)
                };
        }
        let keys: Vec<PublicKey> = self.peers.keys().copied().collect();
        for k in keys {
            let Some(slot) = self.peers.get_mut(&k) else {
                continue;
            };
            let Some(ice) = slot.ice.as_mut() else {
                continue;
            };
            ice.agent.handle_timeout(now);
            while let Some(t) = ice.agent.poll_transmit() {
                match slot.turn.as_ref() {
                    Some(turn) if turn.relayed == Some(t.source) => {
                        turn.send(t.destination, &t.contents)
                    }
                    _ => self.device.send_raw(t.destination, &t.contents),
                }
            }
            let mut lost = false;
            while let Some(ev) = ice.agent.poll_event() {
                match ev {
                    is::IceAgentEvent::NominatedSend {
                        source,
                        destination,
                        ..
                    } => {
                        ice.nominated = Some(destination);
                        ice.nominated_source = Some(source);
                        if ice.connected {
                            let relayed = pair_is_relayed(ice, slot.turn.as_ref());
                            slot.conn.on_ice_connected(destination, relayed, now);
                        }
                    }
                    is::IceAgentEvent::IceConnectionStateChange(st) if st.is_connected() => {
                        if !ice.connected {
                            tracing::info!(peer = %k, "ICE connected");
                        }
                        ice.connected = true;
                        if let Some(d) = ice.nominated {
                            let relayed = pair_is_relayed(ice, slot.turn.as_ref());
                            slot.conn.on_ice_connected(d, relayed, now);
                        }
                    }
                    is::IceAgentEvent::IceConnectionStateChange(st) if st.is_disconnected() => {
                        lost = true
                    }
                    _ => {}
                }
            }
            if ice.connected && now.duration_since(ice.last_rx) > ICE_DISCONNECTED_TIMEOUT {
                tracing::debug!(peer = %k, "no STUN on the selected pair for {ICE_DISCONNECTED_TIMEOUT:?}");
                lost = true;
            }
            if lost {
                tracing::info!(peer = %k, "ICE disconnected");
                slot.ice = None;
                slot.turn = None;
                slot.conn.on_ice_lost(now);
            }
            self.run_effects(k);
        }
    }

    fn set_services(&mut self, s: ServicesConfig) {
        if s.stuns != self.stun_uris {
            self.set_stun_servers(s.stuns.clone());
        }
        if s.turns != self.turn_cfg {
            self.set_turn_servers(s.turns.clone());
        }
        if let Some((addr, tls)) = s.signal.clone() {
            if self.signal_addr.as_ref() != Some(&(addr.clone(), tls)) {
                match SignalClient::start(SignalConfig::new(addr.clone(), tls), self.key.clone()) {
                    Ok((client, mut rx)) => {
                        self.signal = Some(client);
                        self.signal_addr = Some((addr, tls));
                        let sig_tx = self.sig_forward.clone();
                        tokio::spawn(async move {
                            while let Some(m) = rx.recv().await {
                                if sig_tx.send(m).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(e) => tracing::warn!("signal: {e}"),
                }
            }
        }
        match s.relay {
            Some((urls, payload, signature)) if !urls.is_empty() => {
                let token = RelayToken { payload, signature };
                let changed = self
                    .relay_cfg
                    .as_ref()
                    .map(|(u, _)| u != &urls)
                    .unwrap_or(true);
                self.relay_cfg = Some((urls.clone(), token.clone()));
                // Rotated credentials: running clients reconnect with them.
                for client in self.home.iter().chain(self.foreign.values()) {
                    client.update_token(token.clone());
                }
                if changed && !self.home_connecting {
                    self.home_connecting = true;
                    let events = self.events.clone();
                    let own = self.key.public_key();
                    tokio::spawn(async move {
                        let base =
                            RelayConfig::new(urls.first().cloned().unwrap_or_default(), token);
                        let r = RelayClient::connect_first(&urls, base, &own)
                            .await
                            .map_err(|e| e.to_string());
                        let _ = events.send(Event::HomeRelay(r));
                    });
                }
            }
            _ => {
                self.relay_cfg = None;
                self.home = None;
            }
        }
    }
}

/// How long the non-controller leaves the first handshake to the controller.
const NON_CONTROLLER_HANDSHAKE_HOLD: Duration = Duration::from_secs(5);

/// Longest sleep of the task when nothing is due (status refresh of the service lines).
const IDLE_WAKE: Duration = Duration::from_secs(1);

impl State {
    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::HomeRelay(Ok(client)) => {
                self.home_connecting = false;
                let url = client.instance_url();
                tracing::info!("home relay connected");
                self.home = Some(Arc::new(client));
                let now = Instant::now();
                for slot in self.peers.values_mut() {
                    slot.conn.on_home_relay(Some(url.clone()), now);
                }
            }
            Event::HomeRelay(Err(e)) => {
                self.home_connecting = false;
                tracing::warn!("home relay: {e}");
                if let Ok(mut s) = self.shared.lock() {
                    s.services.relay = self
                        .relay_cfg
                        .as_ref()
                        .map(|(u, _)| (u.join(","), false, e.clone()));
                }
            }
            Event::TurnResolved(cfg, servers) => {
                if cfg == self.turn_cfg {
                    self.turn_servers = servers;
                }
            }
            Event::StunResolved(uris, addrs) => {
                if uris == self.stun_uris {
                    self.stun_servers = addrs;
                    self.stun_next = Instant::now();
                }
            }
            Event::RelayOpened(k, url, conn, client) => self.on_relay_opened(k, url, conn, client),
            Event::RelayFailed(k, e) => {
                tracing::debug!(peer = %k, "relayed connection failed: {e}");
                if let Some(slot) = self.peers.get_mut(&k) {
                    slot.conn.on_relay_lost(Instant::now());
                }
                self.run_effects(k);
            }
            Event::RelayClosed(k) => {
                tracing::info!(peer = %k, "relayed connection closed");
                if let Some(slot) = self.peers.get_mut(&k) {
                    slot.relay_url = None;
                    slot.relay_path = None;
                    slot.relay_client = None;
                    slot.conn.on_relay_lost(Instant::now());
                }
                self.run_effects(k);
            }
        }
    }

    /// The signal stream changed state: a new registration makes every peer offer at once
    /// (the remote may have missed what we sent while we were away).
    fn on_signal_status(&mut self) {
        let Some(sig) = &self.signal else {
            return;
        };
        let status = sig.status().borrow().clone();
        self.signal_ready = status.state == SignalState::Connected;
        if status.registrations != self.signal_registrations {
            self.signal_registrations = status.registrations;
            let now = Instant::now();
            for slot in self.peers.values_mut() {
                slot.conn.on_signal_reconnected(now);
            }
        }
        self.publish_services();
    }

    /// Closes connections to foreign relays no peer meets on any more.
    fn prune_foreign_relays(&mut self) {
        self.foreign.retain(|url, client| {
            let used = Arc::strong_count(client) > 1;
            if !used {
                tracing::debug!(relay = %url, "closing the unused foreign relay connection");
            }
            used
        });
    }

    /// Refreshes the signal and relay lines of `status`.
    fn publish_services(&self) {
        let Some(sig) = &self.signal else {
            return;
        };
        let status = sig.status().borrow().clone();
        let connected = status.state == SignalState::Connected;
        let addr = self
            .signal_addr
            .as_ref()
            .map(|(a, _)| a.clone())
            .unwrap_or_default();
        let relay = self
            .home
            .as_ref()
            .map(|h| (h.instance_url(), true, String::new()));
        if let Ok(mut s) = self.shared.lock() {
            s.services.signal = Some((addr, connected, status.last_error.unwrap_or_default()));
            if relay.is_some() {
                s.services.relay = relay;
            }
        }
    }

    /// Runs everything that is due: STUN queries, ICE agents, and (once the signal stream is
    /// registered) each peer's offer guard.
    fn step(&mut self, now: Instant) {
        self.drive_ice(now);
        if !self.signal_ready {
            return;
        }
        let due: Vec<PublicKey> = self
            .peers
            .iter()
            .filter(|(_, slot)| slot.conn.poll_timeout() <= now)
            .map(|(k, _)| *k)
            .collect();
        let mut rng = rand::thread_rng();
        for k in due {
            if let Some(slot) = self.peers.get_mut(&k) {
                slot.conn.handle_timeout(now, &mut rng);
            }
            self.run_effects(k);
        }
    }

    /// When the task must wake next: the earliest ICE timer, STUN query or offer guard.
    fn next_deadline(&mut self, now: Instant) -> Instant {
        let mut next = now + IDLE_WAKE;
        if !self.stun_servers.is_empty() {
            next = next.min(self.stun_next);
        }
        for slot in self.peers.values_mut() {
            if let Some(t) = slot.ice.as_mut().and_then(|i| i.agent.poll_timeout()) {
                next = next.min(t);
            }
            if self.signal_ready {
                next = next.min(slot.conn.poll_timeout());
            }
        }
        next.max(now)
    }
}

async fn run(
    key: PrivateKey,
    wg_port: u16,
    device: Arc<dyn TunnelDevice>,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Mutex<Shared>>,
) {
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let (sig_forward, mut sig_rx) = mpsc::unbounded_channel();
    let (turn_tx, mut turn_rx) = mpsc::unbounded_channel();
    let mut st = State {
        key,
        wg_port,
        device,
        shared,
        events,
        sig_forward,
        signal: None,
        signal_addr: None,
        relay_cfg: None,
        home: None,
        home_connecting: false,
        foreign: HashMap::new(),
        peers: HashMap::new(),
        stun_servers: Vec::new(),
        stun_uris: Vec::new(),
        turn_servers: Vec::new(),
        turn_cfg: Vec::new(),
        turn_tx,
        overlay: Vec::new(),
        stun_tid: None,
        stun_next: Instant::now(),
        srflx: None,
        signal_registrations: 0,
        signal_ready: false,
    };
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
    st.device.set_raw_sink(raw_tx);
    let (activity_tx, mut activity_rx) = mpsc::unbounded_channel();
    st.device.set_activity_sink(activity_tx);
    let mut signal_status: Option<watch::Receiver<SignalStatus>> = None;
    loop {
        if signal_status.is_none() {
            signal_status = st.signal.as_ref().map(|s| s.status());
        }
        let deadline = st.next_deadline(Instant::now());
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => break,
                Some(Command::Peers(p)) => st.set_peers(p),
                Some(Command::Overlay(nets)) => st.overlay = nets,
                Some(Command::Services(s)) => {
                    let before = st.signal_addr.clone();
                    st.set_services(s);
                    if st.signal_addr != before {
                        signal_status = None;
                    }
                }
            },
            Some(m) = sig_rx.recv() => st.on_signal(m),
            Some((from, data)) = raw_rx.recv() => st.on_raw(from, data),
            Some((key, update)) = turn_rx.recv() => st.on_turn(key, update),
            Some(key) = activity_rx.recv() => st.on_activity(key),
            Some(ev) = event_rx.recv() => st.on_event(ev),
            changed = async {
                match signal_status.as_mut() {
                    Some(w) => w.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if changed {
                    st.on_signal_status();
                } else {
                    signal_status = None;
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                st.prune_foreign_relays();
                st.publish_services();
            }
        }
        // Whatever happened, let timers, ICE agents and guards act on it at once: an answer
        // or a check response must not wait for a periodic tick.
        st.step(Instant::now());
    }
}
