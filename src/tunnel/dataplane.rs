//! The agent's data plane on the userspace device: the interface gets our overlay address,
//! every map peer becomes a WireGuard peer (keepalive 25 s, optional pre-shared key), and the
//! connectivity manager finds each peer a path.

use super::UserspaceTunnel;
use crate::agent::{ConnStatus, DataPlane, PeerStatus, ServiceStatus};
use crate::config::Config;
use crate::connect::{ConnManager, TunnelDevice};
use crate::crypto::PrivateKey;
use crate::engine::{MapDiff, NetworkState, ServicesConfig};
use crate::peer::PathKind;
use ipnet::IpNet;
use std::sync::Arc;

/// NetBird's persistent keepalive on every peer.
pub const KEEPALIVE_SECS: u16 = 25;
/// MTU when neither the config nor the server sets one.
pub const DEFAULT_MTU: u16 = 1280;

/// Userspace WireGuard plus connectivity.
pub struct UserspaceDataPlane {
    tunnel: Arc<UserspaceTunnel>,
    uapi: Option<super::uapi_server::UapiServer>,
    conn: Option<ConnManager>,
    address: Option<IpNet>,
    mtu: Option<u16>,
    psk: Option<[u8; 32]>,
}

impl UserspaceDataPlane {
    /// Creates the interface from the config.
    pub fn new(cfg: &Config) -> Result<Self, String> {
        let tunnel = Arc::new(
            UserspaceTunnel::create(&cfg.interface_name, cfg.wireguard_port, &cfg.private_key)
                .map_err(|e| e.to_string())?,
        );
        let device: Arc<dyn TunnelDevice> = tunnel.clone();
        let conn = ConnManager::start(cfg.private_key.clone(), tunnel.port(), device);
        let psk = match &cfg.pre_shared_key {
            Some(p) => Some(
                *PrivateKey::from_base64(p)
                    .map_err(|e| format!("pre-shared key: {e}"))?
                    .as_bytes(),
            ),
            None => None,
        };
        // `wg show <if>` works while the agent runs; failing to serve it is not fatal.
        let uapi = match super::uapi_server::UapiServer::start(
            std::path::Path::new(super::uapi_server::SOCKET_DIR),
            tunnel.clone(),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("not serving the WireGuard UAPI socket: {e}");
                None
            }
        };
        Ok(UserspaceDataPlane {
            tunnel,
            uapi,
            conn: Some(conn),
            address: None,
            mtu: cfg.mtu,
            psk,
        })
    }
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
                self.tunnel
                    .configure(addr, mtu)
                    .map_err(|e| e.to_string())?;
                self.address = Some(addr);
            }
        }
        for k in &diff.peers_removed {
            self.tunnel.remove_peer(k);
        }
        let v4_only = |ips: &[IpNet]| -> Vec<IpNet> {
            ips.iter()
                .filter(|n| matches!(n, IpNet::V4(_)))
                .copied()
                .collect()
        };
        let mut errors = Vec::new();
        for p in state.peers.values() {
            if let Err(e) =
                self.tunnel
                    .upsert_peer(&p.key, &v4_only(&p.allowed_ips), KEEPALIVE_SECS, self.psk)
            {
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
        for p in peers.iter_mut() {
            if let Some(info) = conn.peer_info(&p.key) {
                p.conn_status = if info.path == PathKind::None {
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
            if let Some(st) = self.tunnel.peer_stats(&p.key) {
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

    fn teardown(&mut self) {
        self.uapi.take();
        self.conn.take();
        self.tunnel.shutdown();
    }
}
