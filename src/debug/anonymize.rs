//! Anonymizer for debug bundles, following NetBird's rules: public IPv4 addresses become
//! sequential addresses from 198.51.100.0 and public IPv6 ones from 2001:db8:ffff::; private,
//! CGNAT, link-local, loopback and well-known resolver addresses are kept; MACs become
//! 02:00:00:00:00:NN; the mapping is consistent within one bundle.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Consistent replacements for one bundle.
#[derive(Debug)]
pub struct Anonymizer {
    v4: HashMap<Ipv4Addr, Ipv4Addr>,
    v6: HashMap<Ipv6Addr, Ipv6Addr>,
    macs: HashMap<String, String>,
    next_v4: u32,
    next_v6: u128,
}

impl Default for Anonymizer {
    fn default() -> Self {
        Anonymizer {
            v4: HashMap::new(),
            v6: HashMap::new(),
            macs: HashMap::new(),
            next_v4: u32::from(Ipv4Addr::new(198, 51, 100, 0)),
            next_v6: u128::from(
                "2001:db8:ffff::"
                    .parse::<Ipv6Addr>()
                    .unwrap_or(Ipv6Addr::UNSPECIFIED),
            ),
        }
    }
}

const KEPT_RESOLVERS: [&str; 12] = [
    "8.8.8.8",
    "8.8.4.4",
    "1.1.1.1",
    "1.0.0.1",
    "9.9.9.9",
    "149.112.112.112",
    "2001:4860:4860::8888",
    "2001:4860:4860::8844",
    "2606:4700:4700::1111",
    "2606:4700:4700::1001",
    "2620:fe::fe",
    "2620:fe::9",
];

fn keep_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || ip == Ipv4Addr::new(128, 0, 0, 0)
        || KEPT_RESOLVERS.contains(&ip.to_string().as_str())
}

fn keep_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xffc0) == 0xfe80
        || ip
            == "8000::"
                .parse::<Ipv6Addr>()
                .unwrap_or(Ipv6Addr::UNSPECIFIED)
        || KEPT_RESOLVERS.contains(&ip.to_string().as_str())
}

impl Anonymizer {
    /// The replacement for one address.
    pub fn ip(&mut self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) if keep_v4(v4) => ip,
            IpAddr::V4(v4) => {
                let next = &mut self.next_v4;
                IpAddr::V4(*self.v4.entry(v4).or_insert_with(|| {
                    let a = Ipv4Addr::from(*next);
                    *next += 1;
                    a
                }))
            }
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return self.ip(IpAddr::V4(v4));
                }
                if keep_v6(v6) {
                    return ip;
                }
                let next = &mut self.next_v6;
                IpAddr::V6(*self.v6.entry(v6).or_insert_with(|| {
                    *next += 1;
                    Ipv6Addr::from(*next)
                }))
            }
        }
    }

    fn mac(&mut self, mac: &str) -> String {
        let lower = mac.to_ascii_lowercase();
        if lower == "ff:ff:ff:ff:ff:ff"
            || lower == "00:00:00:00:00:00"
            || lower.starts_with("01:")
            || lower.starts_with("33:33")
        {
            return mac.to_string();
        }
        let n = self.macs.len() + 1;
        self.macs
            .entry(lower)
            .or_insert_with(|| format!("02:00:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff))
            .clone()
    }

    /// Rewrites every IPv4/IPv6 address and MAC found in `text`.
    pub fn text(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let is_tok = |c: char| c.is_ascii_hexdigit() || c == '.' || c == ':';
        let mut rest = text;
        while let Some(start) = rest.find(is_tok) {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            let end = tail.find(|c: char| !is_tok(c)).unwrap_or(tail.len());
            let token = &tail[..end];
            out.push_str(&self.token(token));
            rest = &tail[end..];
        }
        out.push_str(rest);
        out
    }

    fn token(&mut self, token: &str) -> String {
        let trimmed = token.trim_end_matches([':', '.']);
        let suffix = &token[trimmed.len()..];
        if trimmed.len() == 17
            && trimmed.split(':').count() == 6
            && trimmed.split(':').all(|p| p.len() == 2)
        {
            return format!("{}{suffix}", self.mac(trimmed));
        }
        if let Ok(ip) = trimmed.parse::<IpAddr>() {
            return format!("{}{suffix}", self.ip(ip));
        }
        // `a.b.c.d:port`
        if let Some((host, port)) = trimmed.rsplit_once(':') {
            if let (Ok(ip), true) = (
                host.parse::<Ipv4Addr>(),
                port.bytes().all(|b| b.is_ascii_digit()),
            ) {
                return format!("{}:{port}{suffix}", self.ip(IpAddr::V4(ip)));
            }
        }
        token.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses_are_replaced_consistently_private_kept() {
        let mut a = Anonymizer::default();
        let text = "peer 203.0.113.7:51820 via 192.168.1.1, dns 8.8.8.8, overlay 100.64.0.5/16, again 203.0.113.7 and 198.18.5.5";
        let out = a.text(text);
        assert!(!out.contains("203.0.113.7"), "{out}");
        assert!(out.contains("198.51.100.0:51820"), "{out}");
        assert_eq!(out.matches("198.51.100.0").count(), 2, "{out}");
        assert!(
            out.contains("192.168.1.1") && out.contains("8.8.8.8") && out.contains("100.64.0.5/16")
        );
        assert!(
            out.contains("198.51.100.1"),
            "a second public address gets the next one: {out}"
        );
    }

    #[test]
    fn macs_and_v6_are_replaced() {
        let mut a = Anonymizer::default();
        let out = a.text(
            "link/ether aa:bb:cc:dd:ee:ff brd ff:ff:ff:ff:ff:ff inet6 2a01:4f8::1/64 fe80::1/64",
        );
        assert!(out.contains("02:00:00:00:00:01"), "{out}");
        assert!(out.contains("ff:ff:ff:ff:ff:ff"));
        assert!(!out.contains("2a01:4f8::1"), "{out}");
        assert!(out.contains("fe80::1/64"));
    }

    #[test]
    fn plain_words_and_numbers_survive() {
        let mut a = Anonymizer::default();
        let text = "Status: Connected, bytes 1024, time 12:30:45, deadbeef";
        assert_eq!(a.text(text), text);
    }
}
