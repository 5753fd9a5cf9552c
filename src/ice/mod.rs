//! ICE support around the `is` crate (str0m's sans-IO ICE agent, used by Firezone): it fits
//! our design because it never touches sockets, so its checks run on the shared WireGuard UDP
//! socket as NetBird requires (host and server-reflexive candidates then describe the very
//! mapping WireGuard uses). It ignores attributes after MESSAGE-INTEGRITY other than
//! FINGERPRINT, so the NetBird fork's 0x8100 attribute is tolerated, and its candidate parser
//! skips unknown extensions (`ufrag`, `cid`). Address discovery is ours: [`stun`] asks a STUN
//! server for our reflexive address through the WireGuard socket.

pub mod stun;
pub mod turn;

use std::net::{IpAddr, SocketAddr};

/// True for datagrams that look like STUN (magic cookie at offset 4, top two bits zero).
pub fn is_stun(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] & 0xc0 == 0 && d[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// Which kind of ICE server a URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerScheme {
    /// `stun:` (RFC 7064).
    Stun,
    /// `turn:` (RFC 7065).
    Turn,
    /// `turns:` (TURN over TLS).
    Turns,
}

/// An ICE server from NetbirdConfig: scheme, host (name or IP literal), port and transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUri {
    /// `stun`, `turn` or `turns`.
    pub scheme: ServerScheme,
    /// Host name or IP literal (brackets removed).
    pub host: String,
    /// Port (3478, or 5349 for `turns`, when absent).
    pub port: u16,
    /// `?transport=tcp` given.
    pub tcp: bool,
}

impl ServerUri {
    /// The address when the host is an IP literal.
    pub fn literal_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }

    /// Resolves the host (a literal needs no lookup).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(a) = self.literal_addr() {
            return Ok(vec![a]);
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }
}

/// Parses `stun:`, `turn:` and `turns:` URIs (RFC 7064/7065) as NetBird sends them, e.g.
/// `stun:stun.netbird.io:443`, `turn:198.18.0.1:3478?transport=udp`, `stun:[2001:db8::1]`.
pub fn parse_server_uri(uri: &str) -> Option<ServerUri> {
    let (scheme, rest) = uri.trim().split_once(':')?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "stun" => ServerScheme::Stun,
        "turn" => ServerScheme::Turn,
        "turns" => ServerScheme::Turns,
        _ => return None,
    };
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, q),
        None => (rest, ""),
    };
    let tcp = query
        .split('&')
        .any(|kv| kv.eq_ignore_ascii_case("transport=tcp"));
    let default_port = if scheme == ServerScheme::Turns {
        5349
    } else {
        3478
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), default_port),
        }
    };
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !valid_host || port == 0 {
        return None;
    }
    Some(ServerUri {
        scheme,
        host,
        port,
        tcp,
    })
}

/// Parses `stun:host:port` into an address when the host is an IP literal (names need
/// [`ServerUri::resolve`]).
pub fn parse_stun_uri(uri: &str) -> Option<SocketAddr> {
    parse_server_uri(uri)
        .filter(|u| u.scheme == ServerScheme::Stun)
        .and_then(|u| u.literal_addr())
}

/// Whether a remote candidate's address can be tried at all: not unspecified, multicast,
/// broadcast or port 0, and not inside the overlay (sending ICE into our own tunnel would
/// loop; upstream drops those too).
pub fn candidate_addr_usable(addr: SocketAddr, overlay: &[ipnet::IpNet]) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !broadcast
        && !overlay.iter().any(|n| n.contains(&ip))
}

/// Candidate text as NetBird sends it: pion's form without the `candidate:` prefix.
pub fn candidate_to_signal(c: &is::Candidate) -> String {
    let s = c.to_sdp_string();
    s.strip_prefix("candidate:").unwrap_or(&s).to_string()
}

/// Parses a candidate from signal (with or without the `candidate:` prefix); unknown
/// extensions are skipped by the parser.
pub fn candidate_from_signal(s: &str) -> Option<is::Candidate> {
    let s = s.trim();
    let full = if s.starts_with("candidate:") {
        s.to_string()
    } else {
        format!("candidate:{s}")
    };
    is::Candidate::from_sdp_string(&full).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_and_uris() {
        assert!(is_stun(&stun::binding_request([7; 12])));
        assert!(!is_stun(&[
            1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16
        ]));
        assert_eq!(
            parse_stun_uri("stun:198.18.0.1:3478"),
            Some("198.18.0.1:3478".parse().unwrap())
        );
        assert_eq!(
            parse_stun_uri("stun:198.18.0.1"),
            Some("198.18.0.1:3478".parse().unwrap())
        );
        assert_eq!(parse_stun_uri("turn:1.2.3.4:3478"), None);
    }

    #[test]
    fn server_uris_with_names_ports_and_transports() {
        let u = parse_server_uri("stun:stun.netbird.io:443").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.tcp),
            (ServerScheme::Stun, "stun.netbird.io", 443, false)
        );
        assert_eq!(u.literal_addr(), None);
        let t = parse_server_uri("turn:198.18.0.1:3478?transport=tcp").unwrap();
        assert_eq!(
            (t.scheme, t.literal_addr(), t.tcp),
            (
                ServerScheme::Turn,
                Some("198.18.0.1:3478".parse().unwrap()),
                true
            )
        );
        assert_eq!(
            parse_server_uri("turns:turn.example.com").unwrap().port,
            5349
        );
        assert_eq!(
            parse_server_uri("stun:[2001:db8::1]:3479")
                .unwrap()
                .literal_addr(),
            Some("[2001:db8::1]:3479".parse().unwrap())
        );
        for bad in [
            "",
            "stun:",
            "http://x",
            "stun:host:notaport",
            "stun:host:0",
            "stun:[::1",
            "stun:bad host:1",
            "turn:[::1]x",
        ] {
            assert_eq!(parse_server_uri(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn impossible_candidate_addresses_are_refused() {
        let overlay: Vec<ipnet::IpNet> = vec!["100.64.0.0/16".parse().unwrap()];
        let ok = |s: &str| candidate_addr_usable(s.parse().unwrap(), &overlay);
        assert!(ok("198.18.1.2:51820"));
        assert!(ok("[2001:db8::1]:51820"));
        assert!(!ok("0.0.0.0:51820"));
        assert!(!ok("198.18.1.2:0"));
        assert!(!ok("224.0.0.1:51820"));
        assert!(!ok("255.255.255.255:51820"));
        assert!(!ok("[::]:51820"));
        assert!(!ok("100.64.0.7:51820"), "inside the overlay");
    }

    #[test]
    fn netbird_candidates_parse_and_render() {
        let up = "3521345821 1 udp 2130706431 192.168.1.20 51820 typ host ufrag AbCdEfGhIjKlMnOp cid xYzxYzxYzxYzxYzxYzxYzxYzxYzxYzxY";
        let c = candidate_from_signal(up).expect("upstream shape parses");
        assert_eq!(c.addr(), "192.168.1.20:51820".parse().unwrap());
        let srflx = "candidate:1 1 udp 1694498815 198.18.1.2 51820 typ srflx raddr 0.0.0.0 rport 51820 ufrag X cid Y";
        assert!(candidate_from_signal(srflx).is_some());
        assert!(candidate_from_signal("garbage").is_none());
        let out = candidate_to_signal(&c);
        assert!(
            !out.starts_with("candidate:") && out.contains("typ host"),
            "{out}"
        );
    }
}
