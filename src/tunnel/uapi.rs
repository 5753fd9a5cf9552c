//! The WireGuard cross-platform userspace configuration protocol (`wg` talks it over
//! `/var/run/wireguard/<if>.sock`): parsing `set=1` requests into operations and formatting
//! `get=1` answers. Pure, so it is tested without sockets.

use crate::crypto::PublicKey;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// One peer change inside a `set` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerChange {
    /// Which peer.
    pub key: Option<PublicKey>,
    /// Remove it.
    pub remove: bool,
    /// Only change it if it exists.
    pub update_only: bool,
    /// New pre-shared key (all zero = none).
    pub preshared_key: Option<[u8; 32]>,
    /// New endpoint.
    pub endpoint: Option<SocketAddr>,
    /// New keepalive.
    pub keepalive: Option<u16>,
    /// Replace allowed IPs instead of adding.
    pub replace_allowed_ips: bool,
    /// Allowed IPs to add.
    pub allowed_ips: Vec<IpNet>,
}

/// A parsed `set` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetRequest {
    /// New private key.
    pub private_key: Option<[u8; 32]>,
    /// New listen port.
    pub listen_port: Option<u16>,
    /// New fwmark.
    pub fwmark: Option<u32>,
    /// Remove all peers first.
    pub replace_peers: bool,
    /// Peer changes in order.
    pub peers: Vec<PeerChange>,
}

/// Parse errors (answered with `errno=-22`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UapiError {
    /// A line is not `key=value` or names an unknown key.
    #[error("invalid line {0:?}")]
    Line(String),
    /// A value does not parse.
    #[error("invalid value for {0}")]
    Value(&'static str),
}

fn hex32(v: &str, what: &'static str) -> Result<[u8; 32], UapiError> {
    let b = hex::decode(v).map_err(|_| UapiError::Value(what))?;
    b.try_into().map_err(|_| UapiError::Value(what))
}

/// Parses the lines of a `set=1` request (without the `set=1` line and the blank end line).
pub fn parse_set<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    for line in lines {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| UapiError::Line(line.into()))?;
        let in_peer = !req.peers.is_empty();
        match (k, in_peer) {
            ("private_key", false) => req.private_key = Some(hex32(v, "private_key")?),
            ("listen_port", false) => {
                req.listen_port = Some(v.parse().map_err(|_| UapiError::Value("listen_port"))?)
            }
            ("fwmark", false) => {
                req.fwmark = Some(v.parse().map_err(|_| UapiError::Value("fwmark"))?)
            }
            ("replace_peers", false) => req.replace_peers = v == "true",
            ("public_key", _) => req.peers.push(PeerChange {
                key: Some(PublicKey(hex32(v, "public_key")?)),
                ..Default::default()
            }),
            (_, true) => {
                let p = req.peers.last_mut().ok_or(UapiError::Value("peer"))?;
                match k {
                    "remove" => p.remove = v == "true",
                    "update_only" => p.update_only = v == "true",
                    "preshared_key" => p.preshared_key = Some(hex32(v, "preshared_key")?),
                    "endpoint" => {
                        let v = v.trim_start_matches('[').replace("]:", ":");
                        p.endpoint = Some(
                            v.parse()
                                .or_else(|_| line[k.len() + 1..].parse())
                                .map_err(|_| UapiError::Value("endpoint"))?,
                        )
                    }
                    "persistent_keepalive_interval" => {
                        p.keepalive = Some(
                            v.parse()
                                .map_err(|_| UapiError::Value("persistent_keepalive_interval"))?,
                        )
                    }
                    "replace_allowed_ips" => p.replace_allowed_ips = v == "true",
                    "allowed_ip" => p
                        .allowed_ips
                        .push(v.parse().map_err(|_| UapiError::Value("allowed_ip"))?),
                    "protocol_version" if v == "1" => {}
                    _ => return Err(UapiError::Line(line.into())),
                }
            }
            _ => return Err(UapiError::Line(line.into())),
        }
    }
    Ok(req)
}

/// What `get` reports about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// Key.
    pub key: PublicKey,
    /// Pre-shared key, if any.
    pub preshared_key: Option<[u8; 32]>,
    /// Endpoint, if known.
    pub endpoint: Option<SocketAddr>,
    /// Last handshake.
    pub last_handshake: Option<SystemTime>,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Keepalive (0 = off).
    pub keepalive: u16,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNet>,
}

/// Formats a `get=1` answer, ending with `errno=0` and a blank line.
pub fn format_get(
    private_key: &[u8; 32],
    listen_port: u16,
    fwmark: u32,
    peers: &[PeerView],
) -> String {
    let mut s = format!(
        "private_key={}\nlisten_port={listen_port}\n",
        hex::encode(private_key)
    );
    if fwmark != 0 {
        s.push_str(&format!("fwmark={fwmark}\n"));
    }
    for p in peers {
        s.push_str(&format!("public_key={}\n", hex::encode(p.key.0)));
        if let Some(psk) = p.preshared_key {
            s.push_str(&format!("preshared_key={}\n", hex::encode(psk)));
        }
        s.push_str("protocol_version=1\n");
        if let Some(e) = p.endpoint {
            s.push_str(&format!("endpoint={e}\n"));
        }
        let (sec, nsec) = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| (d.as_secs(), d.subsec_nanos()))
            .unwrap_or((0, 0));
        s.push_str(&format!(
            "last_handshake_time_sec={sec}\nlast_handshake_time_nsec={nsec}\ntx_bytes={}\nrx_bytes={}\npersistent_keepalive_interval={}\n",
            p.tx_bytes, p.rx_bytes, p.keepalive
        ));
        for ip in &p.allowed_ips {
            s.push_str(&format!("allowed_ip={ip}\n"));
        }
    }
    s.push_str("errno=0\n\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_wg_set_request() {
        let key = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
        let req = parse_set([
            "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a",
            "listen_port=12912",
            "replace_peers=true",
            &format!("public_key={key}"),
            "endpoint=[abcd:23::33]:51820",
            "replace_allowed_ips=true",
            "allowed_ip=192.168.4.4/32",
            "persistent_keepalive_interval=25",
            "public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376",
            "endpoint=182.122.22.19:3233",
            "allowed_ip=192.168.4.6/32",
            "public_key=662e14fd594556f522604703340351258903b64f35553763f19426ab2a515c58",
            "remove=true",
        ])
        .unwrap();
        assert_eq!(req.listen_port, Some(12912));
        assert!(req.replace_peers);
        assert_eq!(req.peers.len(), 3);
        assert_eq!(
            req.peers[0].endpoint.unwrap().to_string(),
            "[abcd:23::33]:51820"
        );
        assert_eq!(req.peers[0].keepalive, Some(25));
        assert!(req.peers[0].replace_allowed_ips);
        assert_eq!(req.peers[1].allowed_ips[0].to_string(), "192.168.4.6/32");
        assert!(req.peers[2].remove);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_set(["nonsense"]).is_err());
        assert!(parse_set(["private_key=zz"]).is_err());
        assert!(
            parse_set(["endpoint=1.2.3.4:5"]).is_err(),
            "peer keys need a public_key first"
        );
        assert!(parse_set(["listen_port=70000"]).is_err());
    }

    #[test]
    fn formats_get() {
        let peer = PeerView {
            key: PublicKey([1; 32]),
            preshared_key: None,
            endpoint: Some("10.0.0.1:51820".parse().unwrap()),
            last_handshake: Some(UNIX_EPOCH + std::time::Duration::from_secs(100)),
            tx_bytes: 5,
            rx_bytes: 6,
            keepalive: 25,
            allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
        };
        let s = format_get(&[2; 32], 51820, 0, &[peer]);
        assert!(s.starts_with(&format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\n",
            hex::encode([2; 32]),
            hex::encode([1; 32])
        )));
        assert!(s.contains("last_handshake_time_sec=100\n"));
        assert!(s.contains("allowed_ip=100.64.0.2/32\n"));
        assert!(s.ends_with("errno=0\n\n"));
    }
}
