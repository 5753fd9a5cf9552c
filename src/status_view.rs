//! The `status` output: a document with NetBird's JSON/YAML keys, and the text rendering.
//! Pure functions from the daemon's StatusResponse, so they are unit-tested without a daemon.

use crate::proto::daemon as dpb;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// ICE candidate pair (types or endpoints).
#[derive(Debug, Serialize, Default, Clone)]
pub struct IcePair {
    /// Local side.
    pub local: String,
    /// Remote side.
    pub remote: String,
}

/// One peer in the document.
#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct PeerOut {
    /// DNS name.
    pub fqdn: String,
    /// Overlay IP.
    #[serde(rename = "netbirdIp")]
    pub ip: String,
    /// Public key.
    pub public_key: String,
    /// Idle / Connecting / Connected.
    pub status: String,
    /// RFC 3339 time of the last state change.
    pub last_status_update: String,
    /// P2P, Relayed or -.
    pub connection_type: String,
    /// Candidate types.
    pub ice_candidate_type: IcePair,
    /// Candidate endpoints.
    pub ice_candidate_endpoint: IcePair,
    /// Relay in use.
    pub relay_address: String,
    /// RFC 3339 time of the last handshake (zero time if none).
    pub last_wireguard_handshake: String,
    /// Bytes received.
    pub transfer_received: i64,
    /// Bytes sent.
    pub transfer_sent: i64,
    /// Latency in nanoseconds (Go's time.Duration).
    pub latency: i64,
    /// Rosenpass.
    pub quantum_resistance: bool,
    /// Routed networks.
    pub networks: Vec<String>,
}

/// Peer totals and details.
#[derive(Debug, Serialize, Default)]
pub struct PeersOut {
    /// All peers.
    pub total: usize,
    /// Connected peers.
    pub connected: usize,
    /// Per-peer details.
    pub details: Vec<PeerOut>,
}

/// A service connection.
#[derive(Debug, Serialize, Default)]
pub struct ConnOut {
    /// URL.
    pub url: String,
    /// Connected.
    pub connected: bool,
    /// Last error.
    pub error: String,
}

/// One relay.
#[derive(Debug, Serialize, Default)]
pub struct RelayOut {
    /// URI.
    pub uri: String,
    /// Available.
    pub available: bool,
    /// Last error.
    pub error: String,
}

/// Relay totals.
#[derive(Debug, Serialize, Default)]
pub struct RelaysOut {
    /// All relays.
    pub total: usize,
    /// Available relays.
    pub available: usize,
    /// Details.
    pub details: Vec<RelayOut>,
}

/// The whole document (`status --json` / `--yaml`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusOut {
    /// Peers.
    pub peers: PeersOut,
    /// CLI version.
    pub cli_version: String,
    /// Daemon version.
    pub daemon_version: String,
    /// Daemon status string.
    pub daemon_status: String,
    /// Management connection.
    pub management: ConnOut,
    /// Signal connection.
    pub signal: ConnOut,
    /// Relays.
    pub relays: RelaysOut,
    /// Overlay IP with prefix.
    #[serde(rename = "netbirdIp")]
    pub ip: String,
    /// Public key.
    pub public_key: String,
    /// Kernel WireGuard.
    pub uses_kernel_interface: bool,
    /// WireGuard port.
    pub wireguard_port: i32,
    /// FQDN.
    pub fqdn: String,
    /// Rosenpass.
    pub quantum_resistance: bool,
    /// Networks served.
    pub networks: Vec<String>,
    /// Forwarding rules count.
    pub forwarding_rules: i32,
    /// Lazy connections.
    pub lazy_connection_enabled: bool,
    /// Profile.
    pub profile_name: String,
    /// Session deadline, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_expires_at: Option<String>,
}

fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    match t {
        Some(t) if t.seconds > 0 => {
            let st = UNIX_EPOCH + Duration::from_secs(u64::try_from(t.seconds).unwrap_or(0));
            humantime::format_rfc3339_seconds(st).to_string()
        }
        _ => "0001-01-01T00:00:00Z".into(),
    }
}

/// Which peers to show.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    /// Only these IPs.
    pub ips: Vec<String>,
    /// Only these names (FQDN or its first label).
    pub names: Vec<String>,
    /// Only this status (idle, connecting, connected), case-insensitive.
    pub status: Option<String>,
    /// Only this connection type (P2P or Relayed), case-insensitive.
    pub connection_type: Option<String>,
}

impl Filters {
    fn keep(&self, p: &PeerOut) -> bool {
        (self.ips.is_empty() || self.ips.contains(&p.ip))
            && (self.names.is_empty()
                || self
                    .names
                    .iter()
                    .any(|n| p.fqdn == *n || p.fqdn.split('.').next() == Some(n.as_str())))
            && self
                .status
                .as_ref()
                .is_none_or(|s| s.eq_ignore_ascii_case(&p.status))
            && self
                .connection_type
                .as_ref()
                .is_none_or(|t| t.eq_ignore_ascii_case(&p.connection_type))
    }
}

/// Builds the document from the daemon's answer.
pub fn build(resp: &dpb::StatusResponse, filters: &Filters) -> StatusOut {
    let full = resp.full_status.clone().unwrap_or_default();
    let local = full.local_peer_state.clone().unwrap_or_default();
    let mgmt = full.management_state.clone().unwrap_or_default();
    let signal = full.signal_state.clone().unwrap_or_default();
    let all: Vec<PeerOut> = full
        .peers
        .iter()
        .map(|p| {
            let connected = p.conn_status == "Connected";
            PeerOut {
                fqdn: p.fqdn.clone(),
                ip: p.ip.clone(),
                public_key: p.pub_key.clone(),
                status: p.conn_status.clone(),
                last_status_update: rfc3339(p.conn_status_update.as_ref()),
                connection_type: match (connected, p.relayed) {
                    (false, _) => "-".into(),
                    (true, true) => "Relayed".into(),
                    (true, false) => "P2P".into(),
                },
                ice_candidate_type: IcePair {
                    local: p.local_ice_candidate_type.clone(),
                    remote: p.remote_ice_candidate_type.clone(),
                },
                ice_candidate_endpoint: IcePair {
                    local: p.local_ice_candidate_endpoint.clone(),
                    remote: p.remote_ice_candidate_endpoint.clone(),
                },
                relay_address: p.relay_address.clone(),
                last_wireguard_handshake: rfc3339(p.last_wireguard_handshake.as_ref()),
                transfer_received: p.bytes_rx,
                transfer_sent: p.bytes_tx,
                latency: p
                    .latency
                    .map(|l| {
                        l.seconds
                            .saturating_mul(1_000_000_000)
                            .saturating_add(i64::from(l.nanos))
                    })
                    .unwrap_or(0),
                quantum_resistance: p.rosenpass_enabled,
                networks: p.networks.clone(),
            }
        })
        .collect();
    let total = all.len();
    let connected = all.iter().filter(|p| p.status == "Connected").count();
    let details = all.into_iter().filter(|p| filters.keep(p)).collect();
    let relays: Vec<RelayOut> = full
        .relays
        .iter()
        .map(|r| RelayOut {
            uri: r.uri.clone(),
            available: r.available,
            error: r.error.clone(),
        })
        .collect();
    StatusOut {
        peers: PeersOut {
            total,
            connected,
            details,
        },
        cli_version: crate::AGENT_VERSION.into(),
        daemon_version: resp.daemon_version.clone(),
        daemon_status: resp.status.clone(),
        management: ConnOut {
            url: mgmt.url,
            connected: mgmt.connected,
            error: mgmt.error,
        },
        signal: ConnOut {
            url: signal.url,
            connected: signal.connected,
            error: signal.error,
        },
        relays: RelaysOut {
            total: relays.len(),
            available: relays.iter().filter(|r| r.available).count(),
            details: relays,
        },
        ip: local.ip,
        public_key: local.pub_key,
        uses_kernel_interface: local.kernel_interface,
        wireguard_port: local.wg_port,
        fqdn: local.fqdn,
        quantum_resistance: false,
        networks: local.networks,
        forwarding_rules: full.number_of_forwarding_rules,
        lazy_connection_enabled: full.lazy_connection_enabled,
        profile_name: "default".into(),
        session_expires_at: resp
            .session_expires_at
            .as_ref()
            .filter(|t| t.seconds > 0)
            .map(|t| rfc3339(Some(t))),
    }
}

fn ago(rfc: &str, now: SystemTime) -> String {
    let Ok(t) = humantime::parse_rfc3339(rfc) else {
        return "-".into();
    };
    if rfc.starts_with("0001") {
        return "-".into();
    }
    let secs = now.duration_since(t).unwrap_or_default().as_secs();
    let (m, s) = (secs / 60, secs % 60);
    if m > 0 {
        format!("{m} minutes, {s} seconds ago")
    } else {
        format!("{s} seconds ago")
    }
}

fn iec(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn conn_line(c: &ConnOut, detail: bool) -> String {
    if c.connected {
        if detail && !c.url.is_empty() {
            format!("Connected to {}", c.url)
        } else {
            "Connected".into()
        }
    } else if c.error.is_empty() {
        "Disconnected".into()
    } else {
        format!("Disconnected, reason: {}", c.error)
    }
}

/// Renders the text form; `detail` adds the per-peer blocks (`-d`).
pub fn render_text(s: &StatusOut, detail: bool, now: SystemTime) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    match s.daemon_status.as_str() {
        "NeedsLogin" | "LoginFailed" | "SessionExpired" => {
            let _ = writeln!(o, "Daemon status: {}\n", s.daemon_status);
            let _ = writeln!(
                o,
                "Run UP command to log in with SSO (interactive login):\n\n netbird-agent up \n"
            );
            let _ = writeln!(o, "If you are running a self-hosted version and no SSO provider has been configured in your Management Server,\nyou can use a setup-key:\n\n netbird-agent up --management-url <YOUR_MANAGEMENT_URL> --setup-key <YOUR_SETUP_KEY>\n");
            if !s.management.error.is_empty() {
                let _ = writeln!(o, "Reason: {}", s.management.error);
            }
            return o;
        }
        _ => {}
    }
    if detail {
        let _ = writeln!(o, "Peers detail:");
        for p in &s.peers.details {
            let connected = p.status == "Connected";
            let _ = writeln!(o, " {}:", if p.fqdn.is_empty() { &p.ip } else { &p.fqdn });
            let _ = writeln!(o, "  NetBird IP: {}", p.ip);
            let _ = writeln!(o, "  Public key: {}", p.public_key);
            let _ = writeln!(o, "  Status: {}", p.status);
            let _ = writeln!(o, "  -- detail --");
            let _ = writeln!(o, "  Connection type: {}", p.connection_type);
            let dash = |v: &str| {
                if connected && !v.is_empty() {
                    v.to_string()
                } else {
                    "-".to_string()
                }
            };
            let _ = writeln!(
                o,
                "  ICE candidate (Local/Remote): {}/{}",
                dash(&p.ice_candidate_type.local),
                dash(&p.ice_candidate_type.remote)
            );
            let _ = writeln!(
                o,
                "  ICE candidate endpoints (Local/Remote): {}/{}",
                dash(&p.ice_candidate_endpoint.local),
                dash(&p.ice_candidate_endpoint.remote)
            );
            let _ = writeln!(o, "  Relay server address: {}", dash(&p.relay_address));
            let _ = writeln!(
                o,
                "  Last connection update: {}",
                ago(&p.last_status_update, now)
            );
            let _ = writeln!(
                o,
                "  Last WireGuard handshake: {}",
                if connected {
                    ago(&p.last_wireguard_handshake, now)
                } else {
                    "-".into()
                }
            );
            let _ = writeln!(
                o,
                "  Transfer status (received/sent) {}/{}",
                iec(p.transfer_received),
                iec(p.transfer_sent)
            );
            let _ = writeln!(o, "  Quantum resistance: false");
            let _ = writeln!(
                o,
                "  Networks: {}",
                if p.networks.is_empty() {
                    "-".into()
                } else {
                    p.networks.join(", ")
                }
            );
            let _ = writeln!(
                o,
                "  Latency: {}",
                if connected && p.latency > 0 {
                    format!("{:.3}ms", p.latency as f64 / 1e6)
                } else {
                    "0s".into()
                }
            );
            let _ = writeln!(o);
        }
    }
    let _ = writeln!(o, "OS: linux/{}", std::env::consts::ARCH);
    let _ = writeln!(o, "Daemon version: {}", s.daemon_version);
    let _ = writeln!(o, "CLI version: {}", s.cli_version);
    let _ = writeln!(o, "Profile: {}", s.profile_name);
    let _ = writeln!(o, "Daemon status: {}", s.daemon_status);
    let _ = writeln!(o, "Management: {}", conn_line(&s.management, detail));
    let _ = writeln!(o, "Signal: {}", conn_line(&s.signal, detail));
    let _ = writeln!(
        o,
        "Relays: {}/{} Available",
        s.relays.available, s.relays.total
    );
    if detail {
        for r in &s.relays.details {
            let _ = writeln!(
                o,
                "  [{}] is {}",
                r.uri,
                if r.available {
                    "Available".to_string()
                } else {
                    format!("Unavailable, reason: {}", r.error)
                }
            );
        }
    }
    let _ = writeln!(o, "Nameservers: 0/0 Available");
    let _ = writeln!(
        o,
        "FQDN: {}",
        if s.fqdn.is_empty() { "N/A" } else { &s.fqdn }
    );
    let _ = writeln!(
        o,
        "NetBird IP: {}",
        if s.ip.is_empty() { "N/A" } else { &s.ip }
    );
    let _ = writeln!(
        o,
        "Interface type: {}",
        if s.ip.is_empty() {
            "N/A"
        } else if s.uses_kernel_interface {
            "Kernel"
        } else {
            "Userspace"
        }
    );
    let _ = writeln!(o, "Wireguard port: {}", s.wireguard_port);
    let _ = writeln!(o, "Quantum resistance: false");
    let _ = writeln!(o, "Lazy connection: {}", s.lazy_connection_enabled);
    let _ = writeln!(o, "SSH Server: Disabled");
    let _ = writeln!(
        o,
        "Networks: {}",
        if s.networks.is_empty() {
            "-".into()
        } else {
            s.networks.join(", ")
        }
    );
    if s.forwarding_rules > 0 {
        let _ = writeln!(o, "Forwarding rules: {}", s.forwarding_rules);
    }
    if let Some(exp) = &s.session_expires_at {
        let _ = writeln!(o, "Session expires: {exp}");
    }
    let _ = writeln!(
        o,
        "Peers count: {}/{} Connected",
        s.peers.connected, s.peers.total
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp() -> dpb::StatusResponse {
        dpb::StatusResponse {
            status: "Connected".into(),
            daemon_version: "0.1.0".into(),
            full_status: Some(dpb::FullStatus {
                management_state: Some(dpb::ManagementState {
                    url: "http://127.0.0.1:1".into(),
                    connected: true,
                    error: String::new(),
                }),
                local_peer_state: Some(dpb::LocalPeerState {
                    ip: "100.64.0.1/16".into(),
                    pub_key: "K".into(),
                    fqdn: "me.netbird.selfhosted".into(),
                    wg_port: 51820,
                    ..Default::default()
                }),
                peers: vec![
                    dpb::PeerState {
                        ip: "100.64.0.3".into(),
                        fqdn: "b.netbird.selfhosted".into(),
                        conn_status: "Idle".into(),
                        ..Default::default()
                    },
                    dpb::PeerState {
                        ip: "100.64.0.2".into(),
                        fqdn: "a.netbird.selfhosted".into(),
                        conn_status: "Connected".into(),
                        relayed: true,
                        bytes_rx: 2048,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            session_expires_at: None,
        }
    }

    #[test]
    fn json_uses_netbird_keys() {
        let doc = serde_json::to_value(build(&resp(), &Filters::default())).unwrap();
        assert_eq!(doc["netbirdIp"], "100.64.0.1/16");
        assert_eq!(doc["daemonStatus"], "Connected");
        assert_eq!(doc["management"]["connected"], true);
        assert_eq!(doc["peers"]["total"], 2);
        assert_eq!(doc["peers"]["connected"], 1);
        assert_eq!(doc["peers"]["details"][1]["connectionType"], "Relayed");
        assert_eq!(doc["peers"]["details"][1]["transferReceived"], 2048);
        assert!(doc.get("sessionExpiresAt").is_none());
    }

    #[test]
    fn filters_select_peers_but_totals_stay() {
        let f = Filters {
            status: Some("connected".into()),
            ..Default::default()
        };
        let doc = build(&resp(), &f);
        assert_eq!(doc.peers.details.len(), 1);
        assert_eq!(doc.peers.total, 2);
        let f = Filters {
            names: vec!["b".into()],
            ..Default::default()
        };
        assert_eq!(build(&resp(), &f).peers.details[0].ip, "100.64.0.3");
    }

    #[test]
    fn text_summary_and_detail() {
        let doc = build(&resp(), &Filters::default());
        let t = render_text(&doc, false, SystemTime::now());
        assert!(t.contains("Management: Connected\n"));
        assert!(t.contains("NetBird IP: 100.64.0.1/16"));
        assert!(t.contains("Peers count: 1/2 Connected"));
        assert!(!t.contains("Peers detail"));
        let t = render_text(&doc, true, SystemTime::now());
        assert!(t.contains(" a.netbird.selfhosted:\n"));
        assert!(t.contains("Connection type: Relayed"));
        assert!(t.contains("Transfer status (received/sent) 2.0 KiB/0 B"));
        assert!(t.contains("Management: Connected to http://127.0.0.1:1"));
    }

    #[test]
    fn needs_login_and_expiry_are_shown_as_such() {
        let mut r = resp();
        r.status = "NeedsLogin".into();
        let t = render_text(&build(&r, &Filters::default()), false, SystemTime::now());
        assert!(t.starts_with("Daemon status: NeedsLogin"));
        assert!(t.contains("--setup-key"));
        r.status = "SessionExpired".into();
        assert!(
            render_text(&build(&r, &Filters::default()), false, SystemTime::now())
                .starts_with("Daemon status: SessionExpired")
        );
    }
}
