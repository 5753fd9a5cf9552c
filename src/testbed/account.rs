//! The testbed's account: peers, setup keys, groups, policies, routes and nameservers, and the
//! pure computation of each peer's NetworkMap the way NetBird's management does it
//! (`GetPeerConnectionResources`: policies between source and destination groups, one firewall
//! rule per peer IP, direction and port; bidirectional rules generate both directions).

use crate::crypto::PublicKey;
use crate::proto::management as pb;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Id of the group every peer belongs to.
pub const ALL_GROUP: &str = "group-all";

/// Account settings an admin can change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    /// New peers must be approved before they get a map.
    pub peer_approval_enabled: bool,
    /// SSO peers' logins expire.
    pub peer_login_expiration_enabled: bool,
    /// Login expiration in seconds.
    pub peer_login_expiration: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            peer_approval_enabled: false,
            peer_login_expiration_enabled: false,
            peer_login_expiration: 86400,
        }
    }
}

/// A registered peer.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Admin id.
    pub id: String,
    /// WireGuard key (identity).
    pub key: PublicKey,
    /// Display name (hostname at registration).
    pub name: String,
    /// DNS label, unique in the account.
    pub dns_label: String,
    /// Overlay address.
    pub ip: Ipv4Addr,
    /// Last reported metadata.
    pub meta: pb::PeerSystemMeta,
    /// A Sync stream is open.
    pub connected: bool,
    /// Login expired (SSO peers).
    pub login_expired: bool,
    /// Waiting for admin approval.
    pub approval_required: bool,
    /// Added with SSO (else setup key).
    pub added_with_sso: bool,
    /// Setup key it registered with.
    pub setup_key_id: Option<String>,
    /// Login expiration applies.
    pub login_expiration_enabled: bool,
}

/// A setup key; only the hash of its text is kept, as NetBird does.
#[derive(Debug, Clone)]
pub struct SetupKey {
    /// Admin id.
    pub id: String,
    /// Name.
    pub name: String,
    /// SHA-256 of the upper-cased key text.
    pub hash: [u8; 32],
    /// First characters, for display.
    pub prefix: String,
    /// `reusable` or `one-off`.
    pub reusable: bool,
    /// 0 = unlimited (reusable keys).
    pub usage_limit: u32,
    /// Times used.
    pub used_times: u32,
    /// Unix seconds; None = never.
    pub expires_at: Option<u64>,
    /// Revoked by an admin.
    pub revoked: bool,
    /// Groups new peers join.
    pub auto_groups: Vec<String>,
    /// Peers are removed when offline (not enforced by the testbed).
    pub ephemeral: bool,
    /// Registration may request extra DNS labels.
    pub allow_extra_dns_labels: bool,
}

impl SetupKey {
    /// Why the key cannot register a peer now, if it cannot.
    pub fn invalid_reason(&self, now: u64) -> Option<&'static str> {
        if self.revoked {
            Some("revoked")
        } else if self.expires_at.is_some_and(|e| e <= now) {
            Some("expired")
        } else if (!self.reusable && self.used_times >= 1)
            || (self.usage_limit > 0 && self.used_times >= self.usage_limit)
        {
            Some("used up")
        } else {
            None
        }
    }

    /// "valid", "revoked", "expired" or "overused", as the REST API shows it.
    pub fn state(&self, now: u64) -> &'static str {
        match self.invalid_reason(now) {
            None => "valid",
            Some("revoked") => "revoked",
            Some("expired") => "expired",
            Some(_) => "overused",
        }
    }
}

/// Hash of a setup key as NetBird stores it: SHA-256 of the upper-cased text.
pub fn hash_setup_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().to_uppercase().as_bytes()).into()
}

/// A group of peers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Group {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Member peer ids (the All group lists nothing: it has everyone).
    pub peers: Vec<String>,
}

/// Rule protocol.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleProtocol {
    /// Any.
    All,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP.
    Icmp,
}

/// A port range.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port.
    pub end: u16,
}

/// A policy rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyRule {
    /// Id.
    #[serde(default)]
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Enabled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `accept` or `drop`.
    #[serde(default = "accept")]
    pub action: String,
    /// Both directions.
    #[serde(default)]
    pub bidirectional: bool,
    /// Protocol.
    pub protocol: RuleProtocol,
    /// Single ports as text.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Port ranges.
    #[serde(default)]
    pub port_ranges: Vec<PortRange>,
    /// Source group ids.
    pub sources: Vec<String>,
    /// Destination group ids.
    pub destinations: Vec<String>,
}

fn yes() -> bool {
    true
}

fn accept() -> String {
    "accept".into()
}

/// An access policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Policy {
    /// Id.
    #[serde(default)]
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Enabled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Rules.
    pub rules: Vec<PolicyRule>,
}

/// A network route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    /// Id.
    #[serde(default)]
    pub id: String,
    /// HA group name (NetID).
    pub network_id: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Prefix (empty for DNS routes).
    #[serde(default)]
    pub network: String,
    /// Domains of a DNS route.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Routing peer id.
    #[serde(default)]
    pub peer: Option<String>,
    /// Routing peer groups.
    #[serde(default)]
    pub peer_groups: Vec<String>,
    /// Metric.
    #[serde(default = "default_metric")]
    pub metric: i64,
    /// Masquerade.
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// Enabled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Distribution groups.
    pub groups: Vec<String>,
    /// Keep resolved IPs.
    #[serde(default)]
    pub keep_route: bool,
    /// Not auto-applied.
    #[serde(default)]
    pub skip_auto_apply: bool,
}

fn default_metric() -> i64 {
    9999
}

/// A nameserver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Nameserver {
    /// Address.
    pub ip: String,
    /// `udp`.
    #[serde(default = "udp")]
    pub ns_type: String,
    /// Port.
    #[serde(default = "dns_port")]
    pub port: u16,
}

fn udp() -> String {
    "udp".into()
}

fn dns_port() -> u16 {
    53
}

/// A nameserver group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameserverGroup {
    /// Id.
    #[serde(default)]
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Servers.
    pub nameservers: Vec<Nameserver>,
    /// Distribution groups.
    pub groups: Vec<String>,
    /// Serves all domains.
    #[serde(default)]
    pub primary: bool,
    /// Match domains.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Enabled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Search domains.
    #[serde(default)]
    pub search_domains_enabled: bool,
}

/// The whole account.
#[derive(Debug, Clone)]
pub struct Account {
    /// Network serial: grows on every change.
    pub serial: u64,
    /// Overlay network.
    pub network: Ipv4Net,
    /// DNS domain of peers.
    pub dns_domain: String,
    /// Settings.
    pub settings: Settings,
    /// Peers by id.
    pub peers: BTreeMap<String, Peer>,
    /// Setup keys by id.
    pub setup_keys: BTreeMap<String, SetupKey>,
    /// Groups by id.
    pub groups: BTreeMap<String, Group>,
    /// Policies by id.
    pub policies: BTreeMap<String, Policy>,
    /// Routes by id.
    pub routes: BTreeMap<String, Route>,
    /// Nameserver groups by id.
    pub nameserver_groups: BTreeMap<String, NameserverGroup>,
    next_id: u64,
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Account {
    /// A new account like NetBird creates: an All group and a Default policy All <-> All.
    pub fn new(network: Ipv4Net, dns_domain: &str) -> Self {
        let mut a = Account {
            serial: 1,
            network,
            dns_domain: dns_domain.into(),
            settings: Settings::default(),
            peers: BTreeMap::new(),
            setup_keys: BTreeMap::new(),
            groups: BTreeMap::new(),
            policies: BTreeMap::new(),
            routes: BTreeMap::new(),
            nameserver_groups: BTreeMap::new(),
            next_id: 1,
        };
        a.groups.insert(
            ALL_GROUP.into(),
            Group {
                id: ALL_GROUP.into(),
                name: "All".into(),
                peers: Vec::new(),
            },
        );
        a.policies.insert(
            "policy-default".into(),
            Policy {
                id: "policy-default".into(),
                name: "Default".into(),
                description:
                    "This is a default rule that allows connections between all the resources"
                        .into(),
                enabled: true,
                rules: vec![PolicyRule {
                    id: "rule-default".into(),
                    name: "Default".into(),
                    enabled: true,
                    action: "accept".into(),
                    bidirectional: true,
                    protocol: RuleProtocol::All,
                    ports: Vec::new(),
                    port_ranges: Vec::new(),
                    sources: vec![ALL_GROUP.into()],
                    destinations: vec![ALL_GROUP.into()],
                }],
            },
        );
        a
    }

    /// A fresh id with a prefix.
    pub fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }

    /// Bumps the serial after a change.
    pub fn bump(&mut self) {
        self.serial += 1;
    }

    /// The peer with this key.
    pub fn peer_by_key(&self, key: &PublicKey) -> Option<&Peer> {
        self.peers.values().find(|p| p.key == *key)
    }

    /// The next free overlay address (skipping network and broadcast).
    pub fn allocate_ip(&self) -> Option<Ipv4Addr> {
        let used: BTreeSet<Ipv4Addr> = self.peers.values().map(|p| p.ip).collect();
        self.network.hosts().find(|ip| !used.contains(ip))
    }

    /// A DNS label from a hostname, made unique in the account.
    pub fn unique_label(&self, hostname: &str) -> String {
        let mut base: String = hostname
            .split('.')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        base = base.trim_matches('-').to_string();
        if base.is_empty() {
            base = "peer".into();
        }
        let taken = |l: &str| self.peers.values().any(|p| p.dns_label == l);
        if !taken(&base) {
            return base;
        }
        (1..)
            .map(|n| format!("{base}-{n}"))
            .find(|l| !taken(l))
            .unwrap_or(base)
    }

    /// Group ids a peer belongs to (All included).
    pub fn groups_of(&self, peer_id: &str) -> BTreeSet<String> {
        self.groups
            .values()
            .filter(|g| g.id == ALL_GROUP || g.peers.iter().any(|p| p == peer_id))
            .map(|g| g.id.clone())
            .collect()
    }

    fn peers_in_groups(&self, groups: &[String]) -> Vec<&Peer> {
        let mut out: Vec<&Peer> = Vec::new();
        let mut seen = BTreeSet::new();
        for gid in groups {
            let Some(g) = self.groups.get(gid) else {
                continue;
            };
            let members: Vec<&Peer> = if g.id == ALL_GROUP {
                self.peers.values().collect()
            } else {
                g.peers.iter().filter_map(|id| self.peers.get(id)).collect()
            };
            for p in members {
                if seen.insert(p.id.clone()) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Version of the agent of this peer.
    fn version_of(p: &Peer) -> &str {
        &p.meta.netbird_version
    }

    /// The DNS forwarder port: 22054 only if every peer reports >= 0.59.0.
    pub fn forwarder_port(&self) -> i64 {
        let new_enough = |v: &str| {
            let core = v.split('-').next().unwrap_or("");
            let parts: Vec<u64> = core.split('.').filter_map(|x| x.parse().ok()).collect();
            v == "development"
                || v.starts_with("dev-")
                || v.starts_with("ci-")
                || (parts.len() == 3 && (parts[0], parts[1]) >= (0, 59))
        };
        if self.peers.values().all(|p| new_enough(Self::version_of(p))) {
            22054
        } else {
            5353
        }
    }

    fn remote_config(&self, p: &Peer) -> pb::RemotePeerConfig {
        pb::RemotePeerConfig {
            wg_pub_key: p.key.to_base64(),
            allowed_ips: vec![format!("{}/32", p.ip)],
            ssh_config: Some(pb::SshConfig::default()),
            fqdn: format!("{}.{}", p.dns_label, self.dns_domain),
            agent_version: Self::version_of(p).to_string(),
        }
    }

    /// Our PeerConfig for `p`.
    pub fn peer_config(&self, p: &Peer) -> pb::PeerConfig {
        pb::PeerConfig {
            address: format!("{}/{}", p.ip, self.network.prefix_len()),
            ssh_config: Some(pb::SshConfig::default()),
            fqdn: format!("{}.{}", p.dns_label, self.dns_domain),
            auto_update: Some(pb::AutoUpdateSettings::default()),
            ..Default::default()
        }
    }

    /// Computes the NetworkMap for peer `peer_id` (None if unknown).
    pub fn network_map(&self, peer_id: &str) -> Option<pb::NetworkMap> {
        let me = self.peers.get(peer_id)?;
        let peer_config = Some(self.peer_config(me));
        if me.approval_required || me.login_expired {
            return Some(pb::NetworkMap {
                serial: self.serial,
                peer_config,
                remote_peers_is_empty: true,
                firewall_rules_is_empty: true,
                routes_firewall_rules_is_empty: true,
                dns_config: Some(pb::DnsConfig {
                    service_enable: true,
                    forwarder_port: self.forwarder_port(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let source_prefixes = me
            .meta
            .capabilities
            .contains(&(pb::PeerCapability::SourcePrefixes as i32));
        let mut peer_ids: Vec<String> = Vec::new();
        let mut peer_seen = BTreeSet::new();
        let mut rules: Vec<pb::FirewallRule> = Vec::new();
        let mut rule_seen = BTreeSet::new();
        for policy in self.policies.values().filter(|p| p.enabled) {
            for rule in policy.rules.iter().filter(|r| r.enabled) {
                let sources = self.peers_in_groups(&rule.sources);
                let dests = self.peers_in_groups(&rule.destinations);
                let in_src = sources.iter().any(|p| p.id == me.id);
                let in_dst = dests.iter().any(|p| p.id == me.id);
                let mut gen = |group: &[&Peer], direction: i32| {
                    for p in group
                        .iter()
                        .filter(|p| p.id != me.id && !p.approval_required)
                    {
                        if peer_seen.insert(p.id.clone()) {
                            peer_ids.push(p.id.clone());
                        }
                        for fr in expand_rule(rule, p.ip, direction, source_prefixes) {
                            let key = format!(
                                "{}{}{}{:?}{}{:?}",
                                rule.id,
                                fr.peer_ip,
                                direction,
                                fr.protocol,
                                fr.action,
                                (fr.port.clone(), &fr.port_info)
                            );
                            if rule_seen.insert(key) {
                                rules.push(fr);
                            }
                        }
                    }
                };
                if rule.bidirectional {
                    if in_src {
                        gen(&dests, pb::RuleDirection::In as i32);
                    }
                    if in_dst {
                        gen(&sources, pb::RuleDirection::Out as i32);
                    }
                }
                if in_src {
                    gen(&dests, pb::RuleDirection::Out as i32);
                }
                if in_dst {
                    gen(&sources, pb::RuleDirection::In as i32);
                }
            }
        }
        let (online, offline): (Vec<&Peer>, Vec<&Peer>) = peer_ids
            .iter()
            .filter_map(|id| self.peers.get(id))
            .partition(|p| !p.login_expired);
        let remote_peers: Vec<_> = online.iter().map(|p| self.remote_config(p)).collect();
        let offline_peers: Vec<_> = offline.iter().map(|p| self.remote_config(p)).collect();
        let my_groups = self.groups_of(&me.id);
        let routes = self.routes_for(me, &my_groups);
        let records: Vec<pb::SimpleRecord> = std::iter::once(me)
            .chain(online.iter().copied())
            .map(|p| pb::SimpleRecord {
                name: format!("{}.{}", p.dns_label, self.dns_domain),
                r#type: 1,
                class: "IN".into(),
                ttl: 300,
                r_data: p.ip.to_string(),
            })
            .collect();
        let nameserver_groups = self
            .nameserver_groups
            .values()
            .filter(|g| g.enabled && g.groups.iter().any(|gid| my_groups.contains(gid)))
            .map(|g| pb::NameServerGroup {
                name_servers: g
                    .nameservers
                    .iter()
                    .map(|n| pb::NameServer {
                        ip: n.ip.clone(),
                        ns_type: 1,
                        port: i64::from(n.port),
                    })
                    .collect(),
                primary: g.primary,
                domains: g.domains.clone(),
                search_domains_enabled: g.search_domains_enabled,
            })
            .collect();
        Some(pb::NetworkMap {
            serial: self.serial,
            peer_config,
            remote_peers_is_empty: remote_peers.is_empty(),
            remote_peers,
            routes,
            dns_config: Some(pb::DnsConfig {
                service_enable: true,
                name_server_groups: nameserver_groups,
                custom_zones: vec![pb::CustomZone {
                    domain: format!("{}.", self.dns_domain),
                    records,
                    search_domain_disabled: false,
                    non_authoritative: false,
                }],
                forwarder_port: self.forwarder_port(),
            }),
            offline_peers,
            firewall_rules_is_empty: rules.is_empty(),
            firewall_rules: rules,
            routes_firewall_rules: Vec::new(),
            routes_firewall_rules_is_empty: true,
            forwarding_rules: Vec::new(),
        })
    }

    fn routes_for(&self, me: &Peer, my_groups: &BTreeSet<String>) -> Vec<pb::Route> {
        let mut out = Vec::new();
        for r in self.routes.values().filter(|r| r.enabled) {
            let serves = r.peer.as_deref() == Some(me.id.as_str())
                || r.peer_groups.iter().any(|g| my_groups.contains(g));
            if !serves && !r.groups.iter().any(|g| my_groups.contains(g)) {
                continue;
            }
            let routers: Vec<&Peer> = match &r.peer {
                Some(pid) => self.peers.get(pid).into_iter().collect(),
                None => self.peers_in_groups(&r.peer_groups),
            };
            for router in routers {
                out.push(pb::Route {
                    id: format!("{}:{}", r.id, router.id),
                    network: r.network.clone(),
                    network_type: if !r.domains.is_empty() {
                        3
                    } else if r.network.contains(':') {
                        2
                    } else {
                        1
                    },
                    peer: router.key.to_base64(),
                    metric: r.metric,
                    masquerade: r.masquerade,
                    net_id: r.network_id.clone(),
                    domains: r.domains.clone(),
                    keep_route: r.keep_route,
                    skip_auto_apply: r.skip_auto_apply,
                });
            }
        }
        out
    }
}

fn expand_rule(
    rule: &PolicyRule,
    peer_ip: Ipv4Addr,
    direction: i32,
    source_prefixes: bool,
) -> Vec<pb::FirewallRule> {
    use pb::port_info::{PortSelection, Range};
    let protocol = match rule.protocol {
        RuleProtocol::All => pb::RuleProtocol::All,
        RuleProtocol::Tcp => pb::RuleProtocol::Tcp,
        RuleProtocol::Udp => pb::RuleProtocol::Udp,
        RuleProtocol::Icmp => pb::RuleProtocol::Icmp,
    } as i32;
    let base = pb::FirewallRule {
        peer_ip: peer_ip.to_string(),
        direction,
        action: if rule.action == "drop" {
            pb::RuleAction::Drop
        } else {
            pb::RuleAction::Accept
        } as i32,
        protocol,
        policy_id: rule.id.as_bytes().to_vec(),
        source_prefixes: if source_prefixes {
            let mut b = peer_ip.octets().to_vec();
            b.push(32);
            vec![b]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    if rule.ports.is_empty() && rule.port_ranges.is_empty() {
        return vec![base];
    }
    let mut out = Vec::new();
    for port in &rule.ports {
        let mut fr = base.clone();
        fr.port = port.clone();
        if let Ok(p) = port.parse::<u32>() {
            fr.port_info = Some(pb::PortInfo {
                port_selection: Some(PortSelection::Port(p)),
            });
        }
        out.push(fr);
    }
    if rule.ports.is_empty() {
        for r in &rule.port_ranges {
            let mut fr = base.clone();
            fr.port_info = Some(pb::PortInfo {
                port_selection: Some(PortSelection::Range(Range {
                    start: u32::from(r.start),
                    end: u32::from(r.end),
                })),
            });
            out.push(fr);
        }
    }
    out
}
