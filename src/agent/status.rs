//! Status snapshot the daemon serves: overall state, management/signal/relay connections, our
//! interface and one entry per peer.

use crate::crypto::PublicKey;
use std::time::{Duration, SystemTime};

/// Overall daemon state, with NetBird's status strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AgentState {
    /// Not running (after `down`, or before `up`).
    #[default]
    Idle,
    /// Logging in or waiting to reconnect.
    Connecting,
    /// Logged in and syncing.
    Connected,
    /// A setup key or SSO login is needed.
    NeedsLogin,
    /// The last login attempt failed for a reason other than needing login.
    LoginFailed,
    /// The session was up and then expired.
    SessionExpired,
}

impl AgentState {
    /// The string NetBird's daemon reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            AgentState::Idle => "Idle",
            AgentState::Connecting => "Connecting",
            AgentState::Connected => "Connected",
            AgentState::NeedsLogin => "NeedsLogin",
            AgentState::LoginFailed => "LoginFailed",
            AgentState::SessionExpired => "SessionExpired",
        }
    }
}

/// A peer's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnStatus {
    /// Not connecting (offline, or lazy).
    #[default]
    Idle,
    /// Negotiating.
    Connecting,
    /// A path is up.
    Connected,
}

impl ConnStatus {
    /// The string NetBird reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnStatus::Idle => "Idle",
            ConnStatus::Connecting => "Connecting",
            ConnStatus::Connected => "Connected",
        }
    }
}

/// One peer's status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its key.
    pub key: PublicKey,
    /// Overlay IP (without prefix).
    pub ip: String,
    /// DNS name.
    pub fqdn: String,
    /// Connection state.
    pub conn_status: ConnStatus,
    /// When the state last changed.
    pub conn_status_update: SystemTime,
    /// Path goes through a relay (NetBird relay or TURN).
    pub relayed: bool,
    /// Local ICE candidate type of the selected pair.
    pub local_ice_type: String,
    /// Remote ICE candidate type.
    pub remote_ice_type: String,
    /// Local candidate endpoint.
    pub local_endpoint: String,
    /// Remote candidate endpoint.
    pub remote_endpoint: String,
    /// Relay server in use.
    pub relay_address: String,
    /// Last WireGuard handshake.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Round-trip latency of the path.
    pub latency: Option<Duration>,
    /// Networks routed through this peer.
    pub networks: Vec<String>,
}

impl PeerStatus {
    /// A fresh idle entry for a peer from the map.
    pub fn idle(key: PublicKey, ip: String, fqdn: String) -> Self {
        PeerStatus {
            key,
            ip,
            fqdn,
            conn_status: ConnStatus::Idle,
            conn_status_update: SystemTime::now(),
            relayed: false,
            local_ice_type: String::new(),
            remote_ice_type: String::new(),
            local_endpoint: String::new(),
            remote_endpoint: String::new(),
            relay_address: String::new(),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            latency: None,
            networks: Vec::new(),
        }
    }
}

/// A service connection line (management, signal, a relay).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceStatus {
    /// URL.
    pub url: String,
    /// Connected / available.
    pub connected: bool,
    /// Last error, if any.
    pub error: String,
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusSnapshot {
    /// Overall state.
    pub state: AgentState,
    /// Management connection.
    pub management: ServiceStatus,
    /// Signal connection.
    pub signal: ServiceStatus,
    /// Relays.
    pub relays: Vec<ServiceStatus>,
    /// Our public key.
    pub public_key: String,
    /// Our overlay address with prefix.
    pub ip: String,
    /// Our FQDN.
    pub fqdn: String,
    /// Interface name.
    pub interface: String,
    /// Kernel WireGuard (else userspace).
    pub kernel_interface: bool,
    /// WireGuard port.
    pub wg_port: u16,
    /// Peers, sorted by IP.
    pub peers: Vec<PeerStatus>,
    /// Session deadline (None = none).
    pub session_expires_at: Option<SystemTime>,
    /// Number of forwarding rules.
    pub forwarding_rules: usize,
    /// The SSO user is pending approval by an administrator.
    pub pending_approval: bool,
    /// Networks (routes) offered to this peer, one per HA group.
    pub networks: Vec<NetworkInfo>,
}

/// A network (route HA group) offered to this peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Network id (the route's NetID).
    pub id: String,
    /// Prefix, or empty for DNS routes.
    pub range: String,
    /// Domains of a DNS route.
    pub domains: Vec<String>,
    /// Not auto-applied (exit nodes) unless selected.
    pub skip_auto_apply: bool,
}
