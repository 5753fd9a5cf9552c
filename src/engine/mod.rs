//! The pure core: holds the latest NetworkMap as typed values, applies the serial rules and
//! diffs maps into the smallest set of changes. No sockets, files or clocks in here.

pub mod map;
pub mod summary;

use crate::crypto::PublicKey;
use crate::proto::management as pb;
pub use map::NetworkState;
use std::collections::HashSet;

/// What changed between two maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapDiff {
    /// Peers new in the map.
    pub peers_added: Vec<PublicKey>,
    /// Peers gone from the map.
    pub peers_removed: Vec<PublicKey>,
    /// Peers whose allowed IPs, version or settings changed (re-created upstream).
    pub peers_changed: Vec<PublicKey>,
    /// Offline peer list differs.
    pub offline_changed: bool,
    /// Our own settings differ.
    pub peer_config_changed: bool,
    /// Routes differ.
    pub routes_changed: bool,
    /// Peer ACL differs.
    pub firewall_changed: bool,
    /// Route ACL differs.
    pub route_firewall_changed: bool,
    /// DNS differs.
    pub dns_changed: bool,
    /// Ingress forwarding differs.
    pub forwarding_changed: bool,
}

impl MapDiff {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.peers_added.is_empty()
            && self.peers_removed.is_empty()
            && self.peers_changed.is_empty()
            && !self.offline_changed
            && !self.peer_config_changed
            && !self.routes_changed
            && !self.firewall_changed
            && !self.route_firewall_changed
            && !self.dns_changed
            && !self.forwarding_changed
    }
}

/// Diffs `old` (None = nothing applied yet) against `new`.
pub fn diff(old: Option<&NetworkState>, new: &NetworkState) -> MapDiff {
    let empty = NetworkState::default();
    let old = old.unwrap_or(&empty);
    let mut d = MapDiff::default();
    for (k, p) in &new.peers {
        match old.peers.get(k) {
            None => d.peers_added.push(*k),
            Some(o) if o != p => d.peers_changed.push(*k),
            Some(_) => {}
        }
    }
    for k in old.peers.keys() {
        if !new.peers.contains_key(k) {
            d.peers_removed.push(*k);
        }
    }
    d.peers_added.sort_unstable();
    d.peers_changed.sort_unstable();
    d.peers_removed.sort_unstable();
    d.offline_changed = old.offline_peers != new.offline_peers;
    d.peer_config_changed = old.peer != new.peer;
    d.routes_changed = old.routes != new.routes;
    d.firewall_changed = old.firewall_rules != new.firewall_rules
        || old.firewall_allow_all != new.firewall_allow_all;
    d.route_firewall_changed = old.route_firewall_rules != new.route_firewall_rules
        || old.route_firewall_allow_all != new.route_firewall_allow_all;
    d.dns_changed = old.dns != new.dns;
    d.forwarding_changed = old.forwarding_rules != new.forwarding_rules;
    d
}

/// What [`Engine::on_sync`] did with one SyncResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// A map was applied; here is what changed.
    Applied(MapDiff),
    /// The map's serial is older than the applied one: dropped (peer config still applied).
    StaleDropped {
        /// Serial of the dropped map.
        got: u64,
        /// Serial applied.
        applied: u64,
    },
    /// No NetworkMap: only NetbirdConfig / session data was carried.
    ConfigOnly,
    /// Our overlay address changed: the client must restart (tear down, Login, Sync).
    RestartRequired,
}

/// Relay, STUN, TURN and signal settings from management, kept with the "empty list means
/// unchanged" and "absent relay means disabled" rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicesConfig {
    /// STUN URIs.
    pub stuns: Vec<String>,
    /// TURN URIs with credentials.
    pub turns: Vec<(String, String, String)>,
    /// Signal `host:port` and whether it uses TLS.
    pub signal: Option<(String, bool)>,
    /// Relay URLs, token payload and signature; None = relay disabled.
    pub relay: Option<(Vec<String>, String, String)>,
}

impl ServicesConfig {
    /// Merges a NetbirdConfig update. `from_login` takes the signal address too (it is ignored
    /// in Sync updates, as upstream does).
    pub fn update(&mut self, c: &pb::NetbirdConfig, from_login: bool) {
        if !c.stuns.is_empty() {
            self.stuns = c.stuns.iter().map(|s| s.uri.clone()).collect();
        }
        if !c.turns.is_empty() {
            self.turns = c
                .turns
                .iter()
                .map(|t| {
                    let uri = t
                        .host_config
                        .as_ref()
                        .map(|h| h.uri.clone())
                        .unwrap_or_default();
                    (uri, t.user.clone(), t.password.clone())
                })
                .collect();
        }
        if from_login {
            self.signal = c.signal.as_ref().map(|s| {
                (
                    s.uri.clone(),
                    s.protocol == pb::host_config::Protocol::Https as i32,
                )
            });
        }
        self.relay = c.relay.as_ref().map(|r| {
            (
                r.urls.clone(),
                r.token_payload.clone(),
                r.token_signature.clone(),
            )
        });
    }
}

/// The engine's view of the management session: latest map and services.
#[derive(Debug, Default)]
pub struct Engine {
    own_key: Option<PublicKey>,
    state: Option<NetworkState>,
    services: ServicesConfig,
    /// Posture-check paths most recently requested by the server.
    checks: Vec<String>,
    session_expires_at: Option<prost_types::Timestamp>,
}

impl Engine {
    /// A fresh engine for the peer with key `own_key`.
    pub fn new(own_key: PublicKey) -> Self {
        Engine {
            own_key: Some(own_key),
            ..Default::default()
        }
    }

    /// The applied map, if any.
    pub fn state(&self) -> Option<&NetworkState> {
        self.state.as_ref()
    }

    /// Services config (relay, STUN, TURN, signal).
    pub fn services(&self) -> &ServicesConfig {
        &self.services
    }

    /// Posture-check file paths asked for by the server.
    pub fn checks(&self) -> &[String] {
        &self.checks
    }

    /// Session deadline: None = unknown, Some(0) = never expires.
    pub fn session_expires_at(&self) -> Option<&prost_types::Timestamp> {
        self.session_expires_at.as_ref()
    }

    /// Records the LoginResponse parts the engine keeps.
    pub fn on_login(&mut self, resp: &pb::LoginResponse) {
        if let Some(c) = &resp.netbird_config {
            self.services.update(c, true);
        }
        if let Some(t) = &resp.session_expires_at {
            self.session_expires_at = Some(*t);
        }
        self.checks = flatten_checks(&resp.checks);
    }

    /// Applies one SyncResponse following NetBird's rules: config-only messages keep the map;
    /// peer config is applied before the serial check; strictly older serials are dropped; an
    /// address change requires a restart.
    pub fn on_sync(&mut self, resp: &pb::SyncResponse) -> SyncOutcome {
        if let Some(c) = &resp.netbird_config {
            self.services.update(c, false);
        }
        if let Some(t) = &resp.session_expires_at {
            self.session_expires_at = Some(*t);
        }
        let Some(map) = &resp.network_map else {
            return SyncOutcome::ConfigOnly;
        };
        if !resp.checks.is_empty() || map.serial > 0 {
            self.checks = flatten_checks(&resp.checks);
        }
        let own_key = self.own_key.unwrap_or(PublicKey([0; 32]));
        let new = NetworkState::from_proto(map, &own_key);
        for w in &new.warnings {
            tracing::warn!(serial = new.serial, "network map: {w}");
        }
        if let Some(old) = &mut self.state {
            if new.peer.address.is_some() && old.peer.address != new.peer.address {
                self.state = None;
                return SyncOutcome::RestartRequired;
            }
            if new.serial < old.serial {
                old.peer = new.peer;
                return SyncOutcome::StaleDropped {
                    got: new.serial,
                    applied: old.serial,
                };
            }
        }
        let d = diff(self.state.as_ref(), &new);
        self.state = Some(new);
        SyncOutcome::Applied(d)
    }
}

fn flatten_checks(checks: &[pb::Checks]) -> Vec<String> {
    let mut seen = HashSet::new();
    checks
        .iter()
        .flat_map(|c| c.files.iter())
        .filter(|f| seen.insert(f.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
