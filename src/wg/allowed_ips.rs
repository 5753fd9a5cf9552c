//! Allowed-IP table: longest-prefix match from an IP address to a peer.
//!
//! Backed by `ip_network_table` (a tree bitmap, the same structure boringtun uses), so a lookup
//! costs a handful of memory reads whatever the number of peers. Networks are stored truncated
//! to their prefix (`10.0.0.1/24` is `10.0.0.0/24`), as `wg` shows them.

use ip_network::IpNetwork;
use ip_network_table::IpNetworkTable;
use ipnet::IpNet;
use std::net::IpAddr;

/// Maps networks to values (peers) with longest-prefix lookup.
pub struct AllowedIps<T> {
    table: IpNetworkTable<T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Converts an `ipnet` network to the table's type, truncating host bits. `ipnet` guarantees a
/// valid prefix length, so this only returns `None` for impossible input.
fn to_network(net: &IpNet) -> Option<IpNetwork> {
    match net.trunc() {
        IpNet::V4(n) => ip_network::Ipv4Network::new_truncate(n.addr(), n.prefix_len())
            .ok()
            .map(IpNetwork::V4),
        IpNet::V6(n) => ip_network::Ipv6Network::new_truncate(n.addr(), n.prefix_len())
            .ok()
            .map(IpNetwork::V6),
    }
}

impl<T> AllowedIps<T> {
    /// An empty table.
    pub fn new() -> Self {
        AllowedIps {
            table: IpNetworkTable::new(),
        }
    }

    /// Maps `net` to `value`, returning the value it replaced (an allowed IP belongs to one peer).
    pub fn insert(&mut self, net: &IpNet, value: T) -> Option<T> {
        self.table.insert(to_network(net)?, value)
    }

    /// Removes `net` (exact match), returning its value.
    pub fn remove(&mut self, net: &IpNet) -> Option<T> {
        self.table.remove(to_network(net)?)
    }

    /// The value mapped to exactly `net`.
    pub fn get(&self, net: &IpNet) -> Option<&T> {
        self.table.exact_match(to_network(net)?)
    }

    /// Longest-prefix match for `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        match ip {
            IpAddr::V4(a) => self.table.longest_match_ipv4(a).map(|(_, v)| v),
            IpAddr::V6(a) => {
                // A v4-mapped destination is looked up as IPv4, as WireGuard does.
                if let Some(v4) = a.to_ipv4_mapped() {
                    self.table.longest_match_ipv4(v4).map(|(_, v)| v)
                } else {
                    self.table.longest_match_ipv6(a).map(|(_, v)| v)
                }
            }
        }
    }

    /// Keeps only the entries for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.table.retain(|_, v| keep(v));
    }

    /// Number of networks (v4 + v6).
    pub fn len(&self) -> usize {
        let (a, b) = self.table.len();
        a + b
    }

    /// True when no network is mapped.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Normalizes a network the way `wg` shows it (host bits cleared).
pub fn normalize(net: &IpNet) -> IpNet {
    net.trunc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(&n("0.0.0.0/0"), 1);
        t.insert(&n("10.0.0.0/8"), 2);
        t.insert(&n("10.1.0.0/16"), 3);
        t.insert(&n("10.1.2.3/32"), 4);
        assert_eq!(t.lookup("8.8.8.8".parse().unwrap()), Some(&1));
        assert_eq!(t.lookup("10.9.9.9".parse().unwrap()), Some(&2));
        assert_eq!(t.lookup("10.1.9.9".parse().unwrap()), Some(&3));
        assert_eq!(t.lookup("10.1.2.3".parse().unwrap()), Some(&4));
        assert_eq!(t.lookup("::1".parse().unwrap()), None);
    }

    #[test]
    fn host_bits_are_truncated_and_reinsert_moves_owner() {
        let mut t = AllowedIps::new();
        t.insert(&n("10.0.0.1/24"), "a");
        assert_eq!(t.get(&n("10.0.0.0/24")), Some(&"a"));
        assert_eq!(t.insert(&n("10.0.0.0/24"), "b"), Some("a"));
        assert_eq!(t.lookup("10.0.0.77".parse().unwrap()), Some(&"b"));
        assert_eq!(t.remove(&n("10.0.0.5/24")), Some("b"));
        assert!(t.is_empty());
    }

    #[test]
    fn ipv6_and_mapped_lookup() {
        let mut t = AllowedIps::new();
        t.insert(&n("fd00::/64"), 6);
        t.insert(&n("100.64.0.0/10"), 4);
        assert_eq!(t.lookup("fd00::1234".parse().unwrap()), Some(&6));
        assert_eq!(t.lookup("fd01::1".parse().unwrap()), None);
        let mapped = IpAddr::V6(Ipv4Addr::new(100, 64, 1, 1).to_ipv6_mapped());
        assert_eq!(t.lookup(mapped), Some(&4));
        assert_eq!(t.lookup(IpAddr::V6(Ipv6Addr::LOCALHOST)), None);
    }

    #[test]
    fn ten_thousand_peers_each_found() {
        let mut t = AllowedIps::new();
        for i in 0..10_000u32 {
            let ip = Ipv4Addr::from(0x6440_0000 + i + 1);
            t.insert(&IpNet::new(ip.into(), 32).unwrap(), i);
        }
        t.insert(&n("10.0.0.0/8"), 99_999);
        assert_eq!(t.len(), 10_001);
        for i in (0..10_000u32).step_by(7) {
            let ip = Ipv4Addr::from(0x6440_0000 + i + 1);
            assert_eq!(t.lookup(ip.into()), Some(&i));
        }
        t.retain(|v| v % 2 == 0);
        assert_eq!(t.lookup(Ipv4Addr::from(0x6440_0000 + 2).into()), None);
        assert_eq!(t.lookup(Ipv4Addr::from(0x6440_0000 + 3).into()), Some(&2));
    }
}
