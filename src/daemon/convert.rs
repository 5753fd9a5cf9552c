//! Status snapshot to the daemon proto's StatusResponse.

use crate::agent::{PeerStatus, StatusSnapshot};
use crate::proto::daemon as dpb;
use std::time::{SystemTime, UNIX_EPOCH};

fn ts(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn peer(p: &PeerStatus) -> dpb::PeerState {
    dpb::PeerState {
        ip: p.ip.clone(),
        pub_key: p.key.to_base64(),
        conn_status: p.conn_status.as_str().into(),
        conn_status_update: Some(ts(p.conn_status_update)),
        relayed: p.relayed,
        local_ice_candidate_type: p.local_ice_type.clone(),
        remote_ice_candidate_type: p.remote_ice_type.clone(),
        fqdn: p.fqdn.clone(),
        local_ice_candidate_endpoint: p.local_endpoint.clone(),
        remote_ice_candidate_endpoint: p.remote_endpoint.clone(),
        last_wireguard_handshake: p.last_handshake.map(ts),
        bytes_rx: i64::try_from(p.rx_bytes).unwrap_or(i64::MAX),
        bytes_tx: i64::try_from(p.tx_bytes).unwrap_or(i64::MAX),
        rosenpass_enabled: false,
        networks: p.networks.clone(),
        latency: p.latency.map(|l| prost_types::Duration {
            seconds: i64::try_from(l.as_secs()).unwrap_or(0),
            nanos: i32::try_from(l.subsec_nanos()).unwrap_or(0),
        }),
        relay_address: p.relay_address.clone(),
        ipv6: String::new(),
    }
}

/// Builds the StatusResponse; peers only when `full` is set.
pub fn status_response(s: &StatusSnapshot, full: bool) -> dpb::StatusResponse {
    let full_status = dpb::FullStatus {
        management_state: Some(dpb::ManagementState {
            url: s.management.url.clone(),
            connected: s.management.connected,
            error: s.management.error.clone(),
        }),
        signal_state: Some(dpb::SignalState {
            url: s.signal.url.clone(),
            connected: s.signal.connected,
            error: s.signal.error.clone(),
        }),
        local_peer_state: Some(dpb::LocalPeerState {
            ip: s.ip.clone(),
            pub_key: s.public_key.clone(),
            kernel_interface: s.kernel_interface,
            fqdn: s.fqdn.clone(),
            wg_port: i32::from(s.wg_port),
            ..Default::default()
        }),
        peers: if full {
            s.peers.iter().map(peer).collect()
        } else {
            Vec::new()
        },
        relays: s
            .relays
            .iter()
            .map(|r| dpb::RelayState {
                uri: r.url.clone(),
                available: r.connected,
                error: r.error.clone(),
                transport: "ws".into(),
            })
            .collect(),
        dns_servers: Vec::new(),
        number_of_forwarding_rules: i32::try_from(s.forwarding_rules).unwrap_or(i32::MAX),
        lazy_connection_enabled: false,
    };
    dpb::StatusResponse {
        status: s.state.as_str().into(),
        full_status: Some(full_status),
        daemon_version: crate::AGENT_VERSION.into(),
        session_expires_at: s.session_expires_at.map(ts),
    }
}
