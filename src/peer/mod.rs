//! One remote peer's connection logic, sans-IO: who offers and when, how offers and answers
//! drive the ICE agent and the relay, and which path WireGuard uses. Inputs are events with the
//! current time; outputs are [`Effect`]s the caller carries out (send a signal message, start
//! or stop ICE, open a relay connection, point WireGuard somewhere).
//!
//! The rules follow NetBird's Go client so upstream peers behave with us as with each other:
//! both sides offer, every offer is answered, the controller is the side with the greater
//! base64 key, ICE session ids stay stable across retries and change only on a real restart,
//! and the highest-priority working path (direct ICE > ICE via TURN > relay) carries WireGuard.

pub mod guard;

use crate::crypto::PublicKey;
use guard::Guard;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// ICE credentials and session of one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceParams {
    /// ICE username fragment (empty = no ICE with this side).
    pub ufrag: String,
    /// ICE password.
    pub pwd: String,
    /// 5-byte ICE session id; None if absent or of another length.
    pub session_id: Option<[u8; 5]>,
}

/// The parts of an OFFER or ANSWER the connection logic uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferAnswer {
    /// ICE parameters.
    pub ice: IceParams,
    /// WireGuard listen port of the sender.
    pub wg_listen_port: u16,
    /// Relay instance URL the sender is on (None = no relay with it).
    pub relay_address: Option<String>,
}

/// Which path carries the peer's WireGuard traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKind {
    /// Nothing.
    None,
    /// NetBird relay.
    Relay,
    /// ICE through a TURN relay candidate.
    IceTurn,
    /// Direct ICE.
    IceDirect,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send an OFFER with our parameters.
    SendOffer(OfferAnswer),
    /// Send an ANSWER with our parameters.
    SendAnswer(OfferAnswer),
    /// Create an ICE agent (dropping any existing one) with these remote parameters; `controlling`
    /// says our role.
    StartIce {
        /// Remote ufrag/pwd.
        remote: IceParams,
        /// Our role.
        controlling: bool,
        /// Whether TURN candidates should be gathered: not when both sides have a NetBird
        /// relay to meet on (upstream skips TURN then, 3.3 of the data-plane facts).
        gather_turn: bool,
    },
    /// Destroy the ICE agent.
    StopIce,
    /// Open a relayed connection to the peer on this relay instance URL.
    OpenRelay(String),
    /// Close the relayed connection.
    CloseRelay,
    /// Point the peer's WireGuard traffic at a path (None = remove the endpoint).
    SetPath(Option<ActivePath>),
}

/// The path WireGuard uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivePath {
    /// Send to this address from the shared WireGuard socket.
    Direct(SocketAddr),
    /// Send through the relayed connection.
    Relay,
}

/// Status of the connection for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Current best path.
    pub path: PathKind,
    /// Whether ICE is connected.
    pub ice_connected: bool,
    /// Whether the relay conn is up.
    pub relay_connected: bool,
    /// When the path last changed.
    pub since: Instant,
    /// The remote sent GO_IDLE and nothing woke the connection since.
    pub idle: bool,
}

/// Static settings of one connection.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Our key.
    pub local_key: PublicKey,
    /// The peer's key.
    pub remote_key: PublicKey,
    /// Our WireGuard port.
    pub wg_port: u16,
    /// Our ICE ufrag (stable for this connection).
    pub ufrag: String,
    /// Our ICE password.
    pub pwd: String,
    /// ICE disabled locally (relay only).
    pub force_relay: bool,
}

/// True if we are the controller: our base64 key text is greater, byte-wise.
pub fn is_controller(local: &PublicKey, remote: &PublicKey) -> bool {
    local.to_base64().as_bytes() > remote.to_base64().as_bytes()
}

/// One peer connection's state.
#[derive(Debug)]
pub struct PeerConn {
    cfg: ConnConfig,
    controller: bool,
    /// Our current ICE session id (changes on each new agent).
    session_id: [u8; 5],
    /// The last session id seen from the peer.
    remote_session: Option<[u8; 5]>,
    ice_running: bool,
    ice_connected: Option<(PathKind, SocketAddr)>,
    /// Our home relay instance URL, if connected to one.
    home_relay: Option<String>,
    /// Relay address we opened for this peer.
    relay_open: Option<String>,
    relay_connected: bool,
    remote_wants_ice: bool,
    path: PathKind,
    active: Option<ActivePath>,
    since: Instant,
    guard: Guard,
    /// The remote went idle (lazy connection): no offers until it or local traffic wakes us.
    idle: bool,
    effects: Vec<Effect>,
}

impl PeerConn {
    /// A new connection; the guard fires at once so the first offer goes out on the first
    /// `handle_timeout`.
    pub fn new(
        cfg: ConnConfig,
        home_relay: Option<String>,
        now: Instant,
        session_id: [u8; 5],
    ) -> Self {
        let controller = is_controller(&cfg.local_key, &cfg.remote_key);
        PeerConn {
            cfg,
            controller,
            session_id,
            remote_session: None,
            ice_running: false,
            ice_connected: None,
            home_relay,
            relay_open: None,
            relay_connected: false,
            remote_wants_ice: true,
            path: PathKind::None,
            active: None,
            since: now,
            guard: Guard::new(now),
            idle: false,
            effects: Vec::new(),
        }
    }

    /// Whether we are the controller (ICE controlling, relay meeting point is ours).
    pub fn is_controller(&self) -> bool {
        self.controller
    }

    /// Our ICE ufrag and password for this connection.
    pub fn local_credentials(&self) -> (&str, &str) {
        (&self.cfg.ufrag, &self.cfg.pwd)
    }

    /// Our current ICE session id.
    pub fn session_id(&self) -> [u8; 5] {
        self.session_id
    }

    fn local_params(&self) -> OfferAnswer {
        let (ufrag, pwd) = if self.cfg.force_relay {
            (String::new(), String::new())
        } else {
            (self.cfg.ufrag.clone(), self.cfg.pwd.clone())
        };
        OfferAnswer {
            ice: IceParams {
                ufrag,
                pwd,
                session_id: Some(self.session_id),
            },
            wg_listen_port: self.cfg.wg_port,
            relay_address: self.home_relay.clone(),
        }
    }

    /// Status details.
    pub fn info(&self) -> ConnInfo {
        ConnInfo {
            path: self.path,
            ice_connected: self.ice_connected.is_some(),
            relay_connected: self.relay_connected,
            since: self.since,
            idle: self.idle,
        }
    }

    /// Drains the effects produced so far.
    pub fn poll_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// When `handle_timeout` wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        self.guard.next_tick()
    }

    fn fully_connected(&self) -> bool {
        let ice_ok = !self.remote_wants_ice || self.cfg.force_relay || self.ice_connected.is_some();
        let relay_ok = self.relay_open.is_none() || self.relay_connected;
        ice_ok && relay_ok && self.path != PathKind::None
    }

    /// Runs the reconnect guard: offers when not fully connected.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut impl rand::Rng) {
        if now < self.guard.next_tick() {
            return;
        }
        let relay_only = self.path == PathKind::Relay && self.ice_connected.is_none();
        let offer = if self.idle || self.fully_connected() {
            false
        } else if relay_only {
            self.guard.take_relay_only_offer()
        } else {
            true
        };
        self.guard.schedule_next(now, rng);
        if offer {
            self.effects.push(Effect::SendOffer(self.local_params()));
        }
    }

    /// An OFFER arrived: always answer, then act on its contents.
    pub fn on_offer(&mut self, remote: OfferAnswer, now: Instant) {
        self.idle = false;
        self.effects.push(Effect::SendAnswer(self.local_params()));
        self.on_remote_params(remote, now);
    }

    /// An ANSWER arrived.
    pub fn on_answer(&mut self, remote: OfferAnswer, now: Instant) {
        self.idle = false;
        self.on_remote_params(remote, now);
    }

    fn on_remote_params(&mut self, remote: OfferAnswer, now: Instant) {
        // Relay: meet on the controller's home relay.
        if let Some(remote_relay) = &remote.relay_address {
            let target = if self.controller {
                self.home_relay.clone()
            } else {
                Some(remote_relay.clone())
            };
            if let Some(target) = target {
                if self.relay_open.as_deref() != Some(target.as_str()) {
                    if self.relay_open.is_some() {
                        self.effects.push(Effect::CloseRelay);
                        self.relay_connected = false;
                    }
                    self.relay_open = Some(target.clone());
                    self.effects.push(Effect::OpenRelay(target));
                }
            }
        }
        // ICE.
        let wants_ice = !remote.ice.ufrag.is_empty() && !remote.ice.pwd.is_empty();
        self.remote_wants_ice = wants_ice;
        if !wants_ice || self.cfg.force_relay {
            if self.ice_running {
                self.stop_ice(now);
            }
            return;
        }
        if self.ice_running {
            match remote.ice.session_id {
                None => return,
                Some(id) if Some(id) == self.remote_session => return,
                Some(_) => {
                    // The peer restarted its session: start over with a new one of ours.
                    self.stop_ice(now);
                    self.session_id = next_session_id(self.session_id);
                }
            }
        }
        self.remote_session = remote.ice.session_id;
        self.ice_running = true;
        let gather_turn = !(self.home_relay.is_some() && remote.relay_address.is_some());
        self.effects.push(Effect::StartIce {
            remote: remote.ice,
            controlling: self.controller,
            gather_turn,
        });
    }

    fn stop_ice(&mut self, now: Instant) {
        self.ice_running = false;
        self.effects.push(Effect::StopIce);
        if self.ice_connected.take().is_some() {
            self.reselect(now);
        }
    }

    /// The ICE agent connected on a pair; `relayed` if either candidate is a TURN relay.
    pub fn on_ice_connected(&mut self, remote_addr: SocketAddr, relayed: bool, now: Instant) {
        let kind = if relayed {
            PathKind::IceTurn
        } else {
            PathKind::IceDirect
        };
        self.ice_connected = Some((kind, remote_addr));
        self.reselect(now);
    }

    /// The ICE agent lost its path (disconnected or failed): it is dropped and renegotiated.
    pub fn on_ice_lost(&mut self, now: Instant) {
        self.ice_running = false;
        self.remote_session = None;
        self.session_id = next_session_id(self.session_id);
        if self.ice_connected.take().is_some() {
            self.reselect(now);
        }
        self.guard.restart_fast(now);
    }

    /// The relayed connection to the peer came up.
    pub fn on_relay_connected(&mut self, now: Instant) {
        self.relay_connected = true;
        self.reselect(now);
    }

    /// The relayed connection went away.
    pub fn on_relay_lost(&mut self, now: Instant) {
        self.relay_connected = false;
        self.relay_open = None;
        self.reselect(now);
        self.guard.restart_fast(now);
    }

    /// Our home relay changed (connected, reconnected elsewhere, or lost).
    pub fn on_home_relay(&mut self, url: Option<String>, now: Instant) {
        if self.home_relay != url {
            self.home_relay = url;
            self.guard.restart_fast(now);
        }
    }

    /// The remote sent GO_IDLE: it closed its side of an inactive lazy connection. Close ours
    /// too and stop offering until the remote offers again or local traffic needs the peer
    /// (upstream: a non-lazy agent should not keep waking a lazy one).
    pub fn on_remote_idle(&mut self, now: Instant) {
        if self.idle {
            return;
        }
        self.idle = true;
        if self.ice_running {
            self.ice_running = false;
            self.effects.push(Effect::StopIce);
        }
        self.ice_connected = None;
        self.remote_session = None;
        self.session_id = next_session_id(self.session_id);
        if self.relay_open.take().is_some() {
            self.effects.push(Effect::CloseRelay);
        }
        self.relay_connected = false;
        self.reselect(now);
    }

    /// Local traffic for this peer while it has no path: an idle connection wakes up and
    /// offers at once.
    pub fn on_local_activity(&mut self, now: Instant) {
        if self.idle {
            self.idle = false;
            self.guard.restart_fast(now);
        }
    }

    /// Signal reconnected: upstream resets every guard so fresh offers go out.
    pub fn on_signal_reconnected(&mut self, now: Instant) {
        self.guard.restart_fast(now);
    }

    fn reselect(&mut self, now: Instant) {
        let (best, path) = match (self.ice_connected, self.relay_connected) {
            (Some((kind, addr)), _) => (kind, Some(ActivePath::Direct(addr))),
            (None, true) => (PathKind::Relay, Some(ActivePath::Relay)),
            (None, false) => (PathKind::None, None),
        };
        if best != self.path {
            self.since = now;
            self.path = best;
        }
        if path != self.active {
            self.active = path.clone();
            self.effects.push(Effect::SetPath(path));
        }
    }
}

/// A different session id, derived so it never repeats the previous one.
fn next_session_id(prev: [u8; 5]) -> [u8; 5] {
    let mut id: [u8; 5] = rand::random();
    if id == prev {
        id[0] ^= 0xff;
    }
    id
}

/// Random ICE credentials as upstream makes them: 16 and 32 letters, never `:`.
pub fn random_credentials(rng: &mut impl rand::Rng) -> (String, String) {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut pick = |n: usize| {
        (0..n)
            .map(|_| LETTERS[rng.gen_range(0..LETTERS.len())] as char)
            .collect::<String>()
    };
    (pick(16), pick(32))
}

/// How long after the last event a relay-only peer keeps re-offering.
pub const RELAY_ONLY_OFFER_LIMIT: usize = 3;
/// Interval for offers once the relay-only budget is used.
pub const RELAY_ONLY_SLOW_INTERVAL: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests;
