//! ICE support around the `is` crate (str0m's sans-IO ICE agent, used by Firezone): it fits
//! our design because it never touches sockets, so its checks run on the shared WireGuard UDP
//! socket as NetBird requires (host and server-reflexive candidates then describe the very
//! mapping WireGuard uses). It ignores attributes after MESSAGE-INTEGRITY other than
//! FINGERPRINT, so the NetBird fork's 0x8100 attribute is tolerated, and its candidate parser
//! skips unknown extensions (`ufrag`, `cid`). Address discovery is ours: [`stun`] asks a STUN
//! server for our reflexive address through the WireGuard socket.

pub mod stun;

use std::net::{IpAddr, SocketAddr};

/// True for datagrams that look like STUN (magic cookie at offset 4, top two bits zero).
pub fn is_stun(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] & 0xc0 == 0 && d[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// Parses `stun:host:port` (RFC 7064) into an address when the host is an IP literal.
pub fn parse_stun_uri(uri: &str) -> Option<SocketAddr> {
    let rest = uri.strip_prefix("stun:")?;
    let rest = rest.split('?').next()?;
    if let Ok(a) = rest.parse::<SocketAddr>() {
        return Some(a);
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (rest, 3478),
    };
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
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
