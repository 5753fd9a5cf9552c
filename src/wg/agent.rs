//! The agent's data plane on the userspace device: the interface gets our overlay address,
//! every map peer becomes a WireGuard peer (keepalive 25 s, optional pre-shared key), and the
//! connectivity manager finds each peer a path (ICE on the device's own socket, or a relay).

use super::uapi::UapiServer;
use super::userspace::{Options, PeerPath, UserspaceDevice};
use super::{link, DeviceUpdate, PeerUpdate, PresharedKey, WgDevice};
use crate::agent::{ConnStatus, DataPlane, PeerStatus, ServiceStatus};
use crate::config::Config;
use crate::connect::{ConnManager, DatagramSink, PeerStats, RawSink, TunnelDevice, WgPath};
use crate::crypto::{PrivateKey, PublicKey};
use crate::engine::{MapDiff, NetworkState, ServicesConfig};
use crate::peer::PathKind;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::sync::Arc;

/// NetBird's persistent keepalive on every peer.
pub const KEEPALIVE_SECS: u16 = 25;
/// MTU when neither the config nor the server sets one.
pub const DEFAULT_MTU: u16 = 1280;

/// A custom path (relay, TURN) as the device sees it.
struct SinkPath(DatagramSink);

impl PeerPath for SinkPath {
    fn send(&self, datagram: &[u8]) -> std::io::Result<()> {
        (self.0)(datagram);
        Ok(())
    }
}

impl TunnelDevice for UserspaceDevice {
    fn upsert_peer(
        &self,
        key: &PublicKey,
        allowed_ips: &[IpNet],
        keepalive_secs: u16,
        psk: Option<[u8; 32]>,
    ) -> Result<(), String> {
        let mut update = PeerUpdate::new(*key);
        update.replace_allowed_ips = true;
        update.allowed_ips = allowed_ips.to_vec();
        update.persistent_keepalive = Some(keepalive_secs);
        update.preshared_key = psk.map(PresharedKey);
        self.apply(&DeviceUpdate {
            peers: vec![update],
            ..Default::default()
        })
        .map_err(|e| e.to_string())
    }

    fn remove_peer(&self, key: &PublicKey) {
        if let Err(e) = WgDevice::remove_peer(self, key) {
            tracing::debug!(peer = %key, "removing WireGuard peer: {e}");
        }
    }

    fn set_path(&self, key: &PublicKey, path: Option<WgPath>) {
        let result = match &path {
            None => {
                self.clear_peer_route(key);
                Ok(())
            }
            Some(WgPath::Custom(sink)) => {
                self.set_peer_path(key, Some(Arc::new(SinkPath(sink.clone()))))
            }
            Some(WgPath::Udp(addr)) => {
                let mut update = PeerUpdate::new(*key);
                update.update_only = true;
                update.endpoint = Some(*addr);
                self.apply(&DeviceUpdate {
                    peers: vec![update],
                    ..Default::default()
                })
                .and_then(|()| self.set_peer_path(key, None))
            }
        };
        match result {
            Ok(()) if path.is_some() => self.initiate_handshake(key),
            Ok(()) => {}
            Err(e) => tracing::debug!(peer = %key, "setting the WireGuard path: {e}"),
        }
    }

    fn hold_initiations(&self, key: &PublicKey, duration: std::time::Duration) {
        UserspaceDevice::hold_initiations(self, key, duration);
    }

    fn adopt_path(&self, key: &PublicKey, path: WgPath) -> bool {
        let WgPath::Custom(sink) = path else {
            return false;
        };
        self.set_peer_path_if_unset(key, Arc::new(SinkPath(sink)))
    }

    fn inject(&self, _key: &PublicKey, datagram: &[u8]) {
        self.inject_datagram(datagram);
    }

    fn peer_stats(&self, key: &PublicKey) -> Option<PeerStats> {
        let state = self.state().ok()?;
        let p = state.peers.into_iter().find(|p| p.public_key == *key)?;
        Some(PeerStats {
            last_handshake: p.last_handshake,
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
        })
    }

    fn send_raw(&self, dst: SocketAddr, data: &[u8]) {
        if let Err(e) = self.send_foreign(data, dst) {
            tracing::trace!(%dst, "sending from the WireGuard socket: {e}");
        }
    }

    fn reset_session(&self, key: &PublicKey) {
        UserspaceDevice::reset_session(self, key);
    }

    fn set_activity_sink(&self, sink: tokio::sync::mpsc::UnboundedSender<PublicKey>) {
        self.set_activity_handler(Some(Arc::new(move |k: &PublicKey| {
            let _ = sink.send(*k);
        })));
    }

    fn set_raw_sink(&self, sink: RawSink) {
        self.set_foreign_handler(Some(Arc::new(move |d: &[u8], from: SocketAddr| {
            let _ = sink.send((from, d.to_vec()));
        })));
    }

    fn listen_port(&self) -> u16 {
        UserspaceDevice::listen_port(self)
    }
}

/// Userspace WireGuard plus connectivity, the agent's [`DataPlane`].
pub struct UserspaceDataPlane {
    device: Arc<UserspaceDevice>,
    uapi: Option<UapiServer>,
    conn: Option<ConnManager>,
    address: Option<IpNet>,
    mtu: Option<u16>,
    psk: Option<[u8; 32]>,
    /// The online peers of the last applied map.
    online: std::collections::HashSet<PublicKey>,
}

impl UserspaceDataPlane {
    /// Creates the interface from the config: its key, and its port (a random free one if the
    /// configured port is taken, as NetBird does).
    pub fn new(cfg: &Config) -> Result<Self, String> {
        let psk = match &cfg.pre_shared_key {
            Some(p) => Some(
                *PrivateKey::from_base64(p)
                    .map_err(|e| format!("pre-shared key: {e}"))?
                    .as_bytes(),
            ),
            None => None,
        };
        let create = |port: u16| {
            UserspaceDevice::create(
                &cfg.interface_name,
                Options {
                    listen_port: port,
                    ..Default::default()
                },
            )
        };
        let device = match create(cfg.wireguard_port) {
            Ok(d) => d,
            Err(e) if is_addr_in_use(&e) => {
                tracing::warn!(
                    "WireGuard port {} is busy; using a random port",
                    cfg.wireguard_port
                );
                create(0).map_err(|e| format!("interface {}: {e}", cfg.interface_name))?
            }
            Err(e) => return Err(format!("interface {}: {e}", cfg.interface_name)),
        };
        device
            .configure(Some(&cfg.private_key), None, None)
            .map_err(|e| format!("interface {}: {e}", cfg.interface_name))?;
        let tunnel: Arc<dyn TunnelDevice> = device.clone();
        let conn = ConnManager::start(cfg.private_key.clone(), device.listen_port(), tunnel);
        // `wg show <if>` works while the agent runs; failing to serve it is not fatal.
        let dyn_device: Arc<dyn WgDevice> = device.clone();
        let uapi = match UapiServer::start(dyn_device) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("not serving the WireGuard UAPI socket: {e}");
                None
            }
        };
        Ok(UserspaceDataPlane {
            device,
            uapi,
            conn: Some(conn),
            address: None,
            mtu: cfg.mtu,
            psk,
            online: Default::default(),
        })
    }
}

fn is_addr_in_use(e: &super::WgError) -> bool {
    matches!(e, super::WgError::Io(io) if io.kind() == std::io::ErrorKind::AddrInUse)
}

/// Only IPv4 allowed IPs: the overlay is IPv4 here, and the server may list a v6 /128 for
/// peers whose v6 overlay we do not have.
fn v4_only(ips: &[IpNet]) -> Vec<IpNet> {
    ips.iter()
        .filter(|n| matches!(n, IpNet::V4(_)))
        .copied()
        .collect()
}

impl DataPlane for UserspaceDataPlane {
    fn apply(
        &mut self,
        state: &NetworkState,
        diff: &MapDiff,
        services: &ServicesConfig,
    ) -> Result<(), String> {
        if let Some(addr) = state.peer.address {
            if self.address != Some(addr) {
                let mtu = self
                    .mtu
                    .or((state.peer.mtu > 0).then_some(state.peer.mtu))
                    .unwrap_or(DEFAULT_MTU);
                link::configure(self.device.name(), &[addr], mtu).map_err(|e| e.to_string())?;
                self.address = Some(addr);
                if let Some(conn) = &self.conn {
                    conn.set_overlay(vec![addr.trunc()]);
                }
            }
        }
        for k in &diff.peers_removed {
            TunnelDevice::remove_peer(self.device.as_ref(), k);
        }
        self.online = state.peers.keys().copied().collect();
        let mut errors = Vec::new();
        for p in state.peers.values() {
            if let Err(e) = TunnelDevice::upsert_peer(
                self.device.as_ref(),
                &p.key,
                &v4_only(&p.allowed_ips),
                KEEPALIVE_SECS,
                self.psk,
            ) {
                errors.push(format!("peer {}: {e}", p.key));
            }
        }
        if let Some(conn) = &self.conn {
            conn.set_services(services.clone());
            conn.set_peers(
                state
                    .peers
                    .values()
                    .map(|p| (p.key, v4_only(&p.allowed_ips)))
                    .collect(),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn fill_peer_status(&self, peers: &mut [PeerStatus]) {
        let Some(conn) = &self.conn else { return };
        let stats = self.device.state().map(|s| s.peers).unwrap_or_default();
        for p in peers.iter_mut() {
            // Every online peer of the map is being connected; one the connectivity task has
            // not taken up yet is Connecting too (offline and sleeping peers stay Idle).
            if self.online.contains(&p.key) {
                p.conn_status = ConnStatus::Connecting;
            }
            if let Some(info) = conn.peer_info(&p.key) {
                p.conn_status = if info.idle {
                    ConnStatus::Idle
                } else if info.path == PathKind::None {
                    ConnStatus::Connecting
                } else {
                    ConnStatus::Connected
                };
                p.conn_status_update = info.since;
                p.relayed = matches!(info.path, PathKind::Relay | PathKind::IceTurn);
                p.relay_address = info.relay_address;
                if let Some((lt, le, rt, re)) = info.ice_pair {
                    p.local_ice_type = lt;
                    p.local_endpoint = le;
                    p.remote_ice_type = rt;
                    p.remote_endpoint = re;
                }
                p.latency = info.latency;
            }
            if let Some(st) = stats.iter().find(|s| s.public_key == p.key) {
                p.last_handshake = st.last_handshake;
                p.rx_bytes = st.rx_bytes;
                p.tx_bytes = st.tx_bytes;
            }
        }
    }

    fn service_status(&self) -> (ServiceStatus, Vec<ServiceStatus>) {
        let Some(conn) = &self.conn else {
            return Default::default();
        };
        let s = conn.services_status();
        let line = |x: Option<(String, bool, String)>| {
            x.map(|(url, connected, error)| ServiceStatus {
                url,
                connected,
                error,
            })
        };
        (
            line(s.signal).unwrap_or_default(),
            line(s.relay).into_iter().collect(),
        )
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.conn.as_ref().and_then(|c| c.changes())
    }

    fn listen_port(&self) -> Option<u16> {
        Some(self.device.listen_port()).filter(|p| *p != 0)
    }

    fn teardown(&mut self) {
        self.uapi.take();
        self.conn.take();
        if let Err(e) = self.device.close() {
            tracing::warn!("closing {}: {e}", self.device.name());
        }
    }
}
