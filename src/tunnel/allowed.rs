//! Longest-prefix match from destination address to peer, for the device's routing of
//! outgoing packets. One hash map per prefix length, probed from the longest length down:
//! at most 33 (IPv4) or 129 (IPv6) lookups whatever the number of peers, and O(1) updates,
//! so 10,000 peers cost the same per packet as ten.

use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Prefix → value table with longest-prefix lookup.
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: BTreeMap<u8, HashMap<u32, T>>,
    v6: BTreeMap<u8, HashMap<u128, T>>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps {
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
        }
    }
}

fn mask4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

impl<T: Clone + PartialEq> AllowedIps<T> {
    /// Maps `net` to `value`, replacing what it mapped to.
    pub fn insert(&mut self, net: IpNet, value: T) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                self.v4
                    .entry(len)
                    .or_default()
                    .insert(mask4(u32::from(n.addr()), len), value);
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                self.v6
                    .entry(len)
                    .or_default()
                    .insert(mask6(u128::from(n.addr()), len), value);
            }
        }
    }

    /// Removes `net` if it maps to `value`.
    pub fn remove(&mut self, net: IpNet, value: &T) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                if let Some(m) = self.v4.get_mut(&len) {
                    let k = mask4(u32::from(n.addr()), len);
                    if m.get(&k) == Some(value) {
                        m.remove(&k);
                    }
                    if m.is_empty() {
                        self.v4.remove(&len);
                    }
                }
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                if let Some(m) = self.v6.get_mut(&len) {
                    let k = mask6(u128::from(n.addr()), len);
                    if m.get(&k) == Some(value) {
                        m.remove(&k);
                    }
                    if m.is_empty() {
                        self.v6.remove(&len);
                    }
                }
            }
        }
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .rev()
                    .find_map(|(len, m)| m.get(&mask4(a, *len)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .rev()
                    .find_map(|(len, m)| m.get(&mask6(a, *len)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_removal_is_per_value() {
        let mut t = AllowedIps::default();
        t.insert("10.0.0.0/8".parse().unwrap(), 1);
        t.insert("10.1.0.0/16".parse().unwrap(), 2);
        t.insert("10.1.2.3/32".parse().unwrap(), 3);
        t.insert("0.0.0.0/0".parse().unwrap(), 4);
        t.insert("fd00::/8".parse().unwrap(), 5);
        let l = |s: &str| t.lookup(s.parse().unwrap()).copied();
        assert_eq!(l("10.1.2.3"), Some(3));
        assert_eq!(l("10.1.9.9"), Some(2));
        assert_eq!(l("10.200.0.1"), Some(1));
        assert_eq!(l("192.0.2.1"), Some(4));
        assert_eq!(l("fd12::1"), Some(5));
        assert_eq!(l("2001:db8::1"), None);
        t.remove("10.1.0.0/16".parse().unwrap(), &99);
        assert_eq!(
            t.lookup("10.1.9.9".parse().unwrap()),
            Some(&2),
            "another value's prefix stays"
        );
        t.remove("10.1.0.0/16".parse().unwrap(), &2);
        assert_eq!(t.lookup("10.1.9.9".parse().unwrap()), Some(&1));
        // Host bits in the prefix are ignored.
        t.insert("172.16.5.5/12".parse().unwrap(), 7);
        assert_eq!(t.lookup("172.31.0.1".parse().unwrap()), Some(&7));
    }

    #[test]
    fn ten_thousand_peers() {
        let mut t = AllowedIps::default();
        for i in 0..10_000u32 {
            let ip =
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + i + 1);
            t.insert(IpNet::from(IpAddr::V4(ip)), i);
        }
        assert_eq!(t.lookup("100.64.39.16".parse().unwrap()), Some(&9999));
        assert_eq!(t.lookup("100.64.0.1".parse().unwrap()), Some(&0));
    }
}
