//! PeerSystemMeta: what the host reports to management, and posture-check file probes.
//!
//! Gathering facts touches the OS ([`HostFacts::gather`]); turning facts into the proto message
//! is pure ([`build_meta`]) and unit-tested with made-up facts.

pub mod sdnotify;

use crate::config::LocalFlags;
use crate::proto::management as pb;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

/// An interface address as reported to management.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InterfaceAddress {
    /// Address with prefix length, e.g. `192.168.1.10/24`.
    pub net: IpNet,
    /// The interface's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// Facts about the host, gathered once per process (static ones) or per call (addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// OS hostname.
    pub hostname: String,
    /// uname sysname, e.g. `Linux`.
    pub kernel: String,
    /// uname machine, e.g. `x86_64`.
    pub platform: String,
    /// uname release, e.g. `6.1.0-13-amd64`.
    pub kernel_version: String,
    /// `NAME=` of /etc/os-release.
    pub os_name: String,
    /// `VERSION_ID=` of /etc/os-release.
    pub os_version: String,
    /// Addresses of interfaces that are up and have a MAC.
    pub addresses: Vec<InterfaceAddress>,
    /// DMI serial number.
    pub serial: String,
    /// DMI product name.
    pub product: String,
    /// DMI manufacturer.
    pub manufacturer: String,
    /// `Kubernetes`, `Docker` or empty.
    pub env_platform: String,
}

/// Options that shape the reported meta.
#[derive(Debug, Clone, Default)]
pub struct MetaOptions {
    /// Hostname override (login/registration only, as upstream).
    pub hostname_override: Option<String>,
    /// Local flags.
    pub flags: LocalFlags,
    /// Our overlay addresses, removed from the reported addresses.
    pub overlay: Vec<IpAddr>,
    /// Posture-check results.
    pub files: Vec<pb::File>,
}

/// Parses `KEY=value` lines of /etc/os-release, stripping quotes.
pub fn parse_os_release(text: &str) -> (String, String) {
    let mut name = String::new();
    let mut version = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
        match k.trim() {
            "NAME" => name = v,
            "VERSION_ID" => version = v,
            _ => {}
        }
    }
    (name, version)
}

/// Builds the PeerSystemMeta NetBird's server expects from host facts.
///
/// `netbirdVersion` is the upstream release whose protocol we implement (management gates
/// features on it); capabilities list only what we support: source prefixes (we read
/// `FirewallRule.sourcePrefixes`). We have no IPv6 overlay and no component-map support, so
/// capability 2 and 3 are not sent and `syncMessageVersion` stays 0.
pub fn build_meta(facts: &HostFacts, opts: &MetaOptions) -> pb::PeerSystemMeta {
    let hostname = opts
        .hostname_override
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| facts.hostname.clone());
    let mut seen = BTreeSet::new();
    let network_addresses = facts
        .addresses
        .iter()
        .filter(|a| !opts.overlay.contains(&a.net.addr()))
        .filter(|a| seen.insert((a.net, a.mac.clone())))
        .map(|a| pb::NetworkAddress {
            net_ip: a.net.to_string(),
            mac: a.mac.clone(),
        })
        .collect();
    let f = &opts.flags;
    pb::PeerSystemMeta {
        hostname,
        go_os: "linux".into(),
        kernel: facts.kernel.clone(),
        core: facts.os_version.clone(),
        platform: facts.platform.clone(),
        os: if facts.os_name.is_empty() {
            facts.kernel.clone()
        } else {
            facts.os_name.clone()
        },
        netbird_version: crate::UPSTREAM_COMPAT_VERSION.into(),
        ui_version: String::new(),
        kernel_version: facts.kernel_version.clone(),
        os_version: facts.os_version.clone(),
        network_addresses,
        sys_serial_number: facts.serial.clone(),
        sys_product_name: facts.product.clone(),
        sys_manufacturer: facts.manufacturer.clone(),
        environment: Some(pb::Environment {
            cloud: String::new(),
            platform: facts.env_platform.clone(),
        }),
        files: opts.files.clone(),
        flags: Some(pb::Flags {
            server_ssh_allowed: f.server_ssh_allowed,
            disable_client_routes: f.disable_client_routes,
            disable_server_routes: f.disable_server_routes,
            disable_dns: f.disable_dns,
            disable_firewall: f.disable_firewall,
            block_lan_access: f.block_lan_access,
            block_inbound: f.block_inbound,
            disable_i_pv6: f.disable_ipv6,
            ..Default::default()
        }),
        capabilities: vec![pb::PeerCapability::SourcePrefixes as i32],
        sync_message_version: 0,
    }
}

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn is_useful_dmi(v: &str) -> bool {
    !v.is_empty() && v.is_ascii() && v != "Default string" && v != "To Be Filled By O.E.M."
}

impl HostFacts {
    /// Reads the host: uname, /etc/os-release, interfaces, DMI (root-only files are skipped
    /// quietly), container markers. Never fails: unknown facts stay empty.
    pub fn gather() -> Self {
        let uts = nix::sys::utsname::uname().ok();
        let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            uts.as_ref()
                .map(|u| f(u).to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let (os_name, os_version) = fs::read_to_string("/etc/os-release")
            .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
            .map(|t| parse_os_release(&t))
            .unwrap_or_default();
        let dmi = Path::new("/sys/class/dmi/id");
        let serial = ["chassis_serial", "product_serial", "board_serial"]
            .iter()
            .map(|f| read_trimmed(&dmi.join(f)))
            .find(|v| is_useful_dmi(v))
            .unwrap_or_default();
        let product = [
            read_trimmed(&dmi.join("product_name")),
            read_trimmed(&dmi.join("board_name")),
        ]
        .into_iter()
        .find(|v| is_useful_dmi(v))
        .unwrap_or_default();
        let env_platform = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            "Kubernetes".to_string()
        } else if Path::new("/.dockerenv").exists() {
            "Docker".to_string()
        } else {
            String::new()
        };
        HostFacts {
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kernel: field(|u| u.sysname()),
            platform: field(|u| u.machine()),
            kernel_version: field(|u| u.release()),
            os_name,
            os_version,
            addresses: interface_addresses(),
            serial,
            product,
            manufacturer: read_trimmed(&dmi.join("sys_vendor")),
            env_platform,
        }
    }
}

/// Addresses of interfaces that are up and have a MAC, without loopback, link-local and
/// multicast addresses.
pub fn interface_addresses() -> Vec<InterfaceAddress> {
    use nix::net::if_::InterfaceFlags;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let list: Vec<_> = addrs.collect();
    let mac_of = |name: &str| -> Option<String> {
        list.iter()
            .filter(|a| a.interface_name == name)
            .find_map(|a| a.address.as_ref()?.as_link_addr()?.addr())
            .filter(|m| m.iter().any(|b| *b != 0))
            .map(|m| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            })
    };
    let mut out = Vec::new();
    for a in &list {
        if !a.flags.contains(InterfaceFlags::IFF_UP)
            || a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let (Some(addr), Some(mask)) = (a.address.as_ref(), a.netmask.as_ref()) else {
            continue;
        };
        let ip_and_prefix =
            if let (Some(v4), Some(m4)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                let m: u32 = m4.ip().into();
                Some((IpAddr::V4(v4.ip()), m.count_ones() as u8))
            } else if let (Some(v6), Some(m6)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                let m = u128::from(m6.ip());
                Some((IpAddr::V6(v6.ip()), m.count_ones() as u8))
            } else {
                None
            };
        let Some((ip, prefix)) = ip_and_prefix else {
            continue;
        };
        if !is_reportable(&ip) {
            continue;
        }
        let Some(mac) = mac_of(&a.interface_name) else {
            continue;
        };
        if let Ok(net) = IpNet::new(ip, prefix) {
            out.push(InterfaceAddress { net, mac });
        }
    }
    out.sort();
    out.dedup();
    out
}

fn is_reportable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_multicast() || v4.is_unspecified())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Evaluates posture-check paths: `exist` unless `stat` says "not found" (permission errors
/// count as existing), `processIsRunning` if some process's executable is exactly that path.
pub fn probe_files(paths: &[String]) -> Vec<pb::File> {
    let running = running_executables();
    paths
        .iter()
        .map(|p| pb::File {
            path: p.clone(),
            exist: match fs::metadata(p) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::NotFound,
            },
            process_is_running: running.contains(p),
        })
        .collect()
}

fn running_executables() -> BTreeSet<String> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read_link(e.path().join("exe")).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "box".into(),
            kernel: "Linux".into(),
            platform: "x86_64".into(),
            kernel_version: "6.1.0-13-amd64".into(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            addresses: vec![
                InterfaceAddress {
                    net: "192.168.1.10/24".parse().unwrap(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                },
                InterfaceAddress {
                    net: "192.168.1.10/24".parse().unwrap(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                },
                InterfaceAddress {
                    net: "100.64.0.5/16".parse().unwrap(),
                    mac: "11:22:33:44:55:66".into(),
                },
            ],
            serial: "SER1".into(),
            product: "Prod".into(),
            manufacturer: "Maker".into(),
            env_platform: String::new(),
        }
    }

    #[test]
    fn os_release_parsing() {
        let (n, v) = parse_os_release("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n");
        assert_eq!((n.as_str(), v.as_str()), ("Debian GNU/Linux", "12"));
    }

    #[test]
    fn meta_fields_follow_netbird() {
        let opts = MetaOptions {
            overlay: vec!["100.64.0.5".parse().unwrap()],
            flags: LocalFlags {
                disable_dns: true,
                block_inbound: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let m = build_meta(&facts(), &opts);
        assert_eq!(m.go_os, "linux");
        assert_eq!(m.hostname, "box");
        assert_eq!(m.kernel, "Linux");
        assert_eq!(m.platform, "x86_64");
        assert_eq!(m.kernel_version, "6.1.0-13-amd64");
        assert_eq!(m.os, "Debian GNU/Linux");
        assert_eq!((m.os_version.as_str(), m.core.as_str()), ("12", "12"));
        assert_eq!(m.netbird_version, crate::UPSTREAM_COMPAT_VERSION);
        assert_eq!(m.sync_message_version, 0);
        assert_eq!(
            m.capabilities,
            vec![pb::PeerCapability::SourcePrefixes as i32]
        );
        // Duplicate removed, overlay address removed.
        assert_eq!(m.network_addresses.len(), 1);
        assert_eq!(m.network_addresses[0].net_ip, "192.168.1.10/24");
        let f = m.flags.unwrap();
        assert!(f.disable_dns && f.block_inbound && !f.disable_firewall);
        assert_eq!(
            (m.sys_serial_number.as_str(), m.sys_manufacturer.as_str()),
            ("SER1", "Maker")
        );
    }

    #[test]
    fn hostname_override_applies() {
        let opts = MetaOptions {
            hostname_override: Some("other".into()),
            ..Default::default()
        };
        assert_eq!(build_meta(&facts(), &opts).hostname, "other");
    }

    #[test]
    fn gathered_facts_are_plausible() {
        let f = HostFacts::gather();
        assert_eq!(f.kernel, "Linux");
        assert!(!f.kernel_version.is_empty());
        assert!(!f.hostname.is_empty());
        for a in &f.addresses {
            assert!(!a.net.addr().is_loopback());
            assert_eq!(a.mac.len(), 17, "{a:?}");
        }
    }

    #[test]
    fn posture_probe_reports_existence_and_processes() {
        let me = std::env::current_exe()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let files = probe_files(&[me.clone(), "/definitely/not/here".into()]);
        assert!(files[0].exist && files[0].process_is_running);
        assert!(!files[1].exist && !files[1].process_is_running);
    }
}
