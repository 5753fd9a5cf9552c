//! Typed NetworkMap: the management proto turned into validated Rust values.
//!
//! Conversion never fails as a whole: an entry that does not parse (a peer with a bad key, an
//! allowed IP that is not a CIDR, a route with a bad prefix) is skipped and reported in
//! [`NetworkState::warnings`], so one bad entry from the server cannot take down the rest.

use crate::crypto::PublicKey;
use crate::proto::management as pb;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;

/// Our own settings from `PeerConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerSettings {
    /// Overlay address with the network prefix length, e.g. `100.64.0.5/16`.
    pub address: Option<IpNet>,
    /// Optional IPv6 overlay address.
    pub address_v6: Option<IpNet>,
    /// Our DNS name in the account.
    pub fqdn: String,
    /// Server-suggested MTU (0 = none).
    pub mtu: u16,
    /// Routing peers resolve DNS routes for clients.
    pub routing_peer_dns_resolution: bool,
    /// Lazy connections switched on server-side.
    pub lazy_connection: bool,
}

/// A peer we may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePeer {
    /// The peer's WireGuard key: its identity.
    pub key: PublicKey,
    /// Allowed IPs (its overlay /32, and /128 when both sides do IPv6).
    pub allowed_ips: Vec<IpNet>,
    /// Its DNS name.
    pub fqdn: String,
    /// Its agent version as reported to management.
    pub agent_version: String,
    /// Whether its NetBird SSH server is on.
    pub ssh_enabled: bool,
}

/// What a route carries traffic to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// A prefix.
    Network(IpNet),
    /// DNS route: the domains whose resolved addresses are routed.
    Domains(Vec<String>),
}

/// A network route offered by a routing peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Route id (resource id before the first `:`).
    pub id: String,
    /// HA group name.
    pub net_id: String,
    /// Destination.
    pub target: RouteTarget,
    /// Routing peer key.
    pub peer: String,
    /// Lower is preferred.
    pub metric: i64,
    /// Routing peer masquerades.
    pub masquerade: bool,
    /// Keep resolved IPs of a DNS route.
    pub keep_route: bool,
    /// Not selected unless the user selects it (exit nodes).
    pub skip_auto_apply: bool,
}

/// Rule verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let it through.
    Accept,
    /// Drop it.
    Drop,
}

/// Layer-4 protocol selector of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Any protocol.
    All,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (ICMPv6 in the ip6 table).
    Icmp,
    /// NetBird SSH (TCP).
    NetbirdSsh,
}

/// Destination port selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ports {
    /// Any port.
    Any,
    /// One port.
    Single(u16),
    /// An inclusive range.
    Range(u16, u16),
}

/// Direction of a peer ACL, relative to this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic from the source towards us.
    In,
    /// Traffic from us (ignored by the stateful firewall, kept for display).
    Out,
}

/// A peer ACL entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FirewallRule {
    /// Source (or, for OUT rules, destination) prefix; `None` = any.
    pub peer: Option<IpNet>,
    /// Direction relative to us.
    pub direction: Direction,
    /// Verdict.
    pub action: Action,
    /// Protocol.
    pub protocol: Protocol,
    /// Ports.
    pub ports: Ports,
    /// Policy id bytes, for logs.
    pub policy_id: Vec<u8>,
}

/// An ACL entry for routed traffic (routing peer side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFirewallRule {
    /// Sources.
    pub sources: Vec<IpNet>,
    /// Destination prefix (for dynamic routes `0.0.0.0/0` or domain-fed).
    pub destination: Option<IpNet>,
    /// Domains of a dynamic route.
    pub domains: Vec<String>,
    /// Verdict.
    pub action: Action,
    /// Protocol.
    pub protocol: Protocol,
    /// Ports.
    pub ports: Ports,
    /// Route the rule belongs to.
    pub route_id: String,
}

/// Ingress port forwarding (DNAT) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardingRule {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Incoming port(s).
    pub destination_ports: Ports,
    /// Target address inside the overlay.
    pub translated_address: IpAddr,
    /// Target port(s).
    pub translated_ports: Ports,
}

/// A nameserver of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameServer {
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
}

/// A nameserver group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameServerGroup {
    /// Servers, in order.
    pub servers: Vec<NameServer>,
    /// Serves all domains.
    pub primary: bool,
    /// Match domains.
    pub domains: Vec<String>,
    /// Add the domains to the search list.
    pub search_domains_enabled: bool,
}

/// A DNS record of a custom zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// Owner name (no trailing dot).
    pub name: String,
    /// RR type number.
    pub rtype: u16,
    /// TTL in seconds.
    pub ttl: u32,
    /// Record data as text.
    pub rdata: String,
}

/// A custom zone (the peers' zone and admin zones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomZone {
    /// Zone name (trailing dot).
    pub domain: String,
    /// Records.
    pub records: Vec<DnsRecord>,
    /// Not added to the search list.
    pub search_domain_disabled: bool,
    /// Falls through instead of answering NXDOMAIN.
    pub non_authoritative: bool,
}

/// DNS settings for the local resolver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsConfig {
    /// Run the resolver.
    pub service_enable: bool,
    /// Upstream groups.
    pub nameserver_groups: Vec<NameServerGroup>,
    /// Local zones.
    pub custom_zones: Vec<CustomZone>,
    /// Port routing peers' forwarders answer on (default 5353).
    pub forwarder_port: u16,
}

/// One NetworkMap, typed and validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkState {
    /// Account network serial.
    pub serial: u64,
    /// Our own settings.
    pub peer: PeerSettings,
    /// Peers to connect to, by key.
    pub peers: HashMap<PublicKey, RemotePeer>,
    /// Peers allowed by policy whose login expired: shown, never connected.
    pub offline_peers: HashMap<PublicKey, RemotePeer>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS.
    pub dns: DnsConfig,
    /// Peer ACL.
    pub firewall_rules: Vec<FirewallRule>,
    /// An old server sent no rules: allow all inbound.
    pub firewall_allow_all: bool,
    /// Routed-traffic ACL.
    pub route_firewall_rules: Vec<RouteFirewallRule>,
    /// An old server sent no route rules: allow all routed traffic.
    pub route_firewall_allow_all: bool,
    /// Ingress forwarding.
    pub forwarding_rules: Vec<ForwardingRule>,
    /// Entries skipped because they did not parse.
    pub warnings: Vec<String>,
}

impl PeerSettings {
    /// Parses a `PeerConfig`; a bad address is reported and left unset.
    pub fn from_proto(pc: &pb::PeerConfig, warnings: &mut Vec<String>) -> Self {
        let address = if pc.address.is_empty() {
            None
        } else {
            match pc.address.parse::<IpNet>() {
                Ok(a) => Some(a),
                Err(_) => {
                    warnings.push(format!("peer config: bad address {:?}", pc.address));
                    None
                }
            }
        };
        let address_v6 = match pc.address_v6.len() {
            0 => None,
            17 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(&pc.address_v6[..16]);
                IpNet::new(IpAddr::from(b), pc.address_v6[16]).ok()
            }
            n => {
                warnings.push(format!("peer config: address_v6 has {n} bytes, want 17"));
                None
            }
        };
        PeerSettings {
            address,
            address_v6,
            fqdn: pc.fqdn.clone(),
            mtu: u16::try_from(pc.mtu).unwrap_or(0),
            routing_peer_dns_resolution: pc.routing_peer_dns_resolution_enabled,
            lazy_connection: pc.lazy_connection_enabled,
        }
    }
}

fn parse_remote_peer(p: &pb::RemotePeerConfig, warnings: &mut Vec<String>) -> Option<RemotePeer> {
    let key = match p.wg_pub_key.parse::<PublicKey>() {
        Ok(k) => k,
        Err(e) => {
            warnings.push(format!("peer {:?} skipped: {e}", p.fqdn));
            return None;
        }
    };
    let mut allowed_ips = Vec::with_capacity(p.allowed_ips.len());
    for ip in &p.allowed_ips {
        match parse_prefix(ip) {
            Some(net) => allowed_ips.push(net),
            None => warnings.push(format!("peer {key}: bad allowed IP {ip:?} skipped")),
        }
    }
    Some(RemotePeer {
        key,
        allowed_ips,
        fqdn: p.fqdn.clone(),
        agent_version: p.agent_version.clone(),
        ssh_enabled: p.ssh_config.as_ref().is_some_and(|s| s.ssh_enabled),
    })
}

/// Parses `a.b.c.d/n`, or a bare address as a host prefix.
fn parse_prefix(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn parse_protocol(p: i32) -> Option<Protocol> {
    match pb::RuleProtocol::try_from(p).ok()? {
        pb::RuleProtocol::All => Some(Protocol::All),
        pb::RuleProtocol::Tcp => Some(Protocol::Tcp),
        pb::RuleProtocol::Udp => Some(Protocol::Udp),
        pb::RuleProtocol::Icmp => Some(Protocol::Icmp),
        pb::RuleProtocol::NetbirdSsh => Some(Protocol::NetbirdSsh),
        pb::RuleProtocol::Unknown | pb::RuleProtocol::Custom => None,
    }
}

fn parse_action(a: i32) -> Action {
    if a == pb::RuleAction::Drop as i32 {
        Action::Drop
    } else {
        Action::Accept
    }
}

fn parse_ports(info: Option<&pb::PortInfo>, legacy: &str) -> Option<Ports> {
    use pb::port_info::PortSelection;
    match info.and_then(|i| i.port_selection.as_ref()) {
        Some(PortSelection::Port(p)) => u16::try_from(*p).ok().map(Ports::Single),
        Some(PortSelection::Range(r)) => {
            let (s, e) = (u16::try_from(r.start).ok()?, u16::try_from(r.end).ok()?);
            (s <= e).then_some(Ports::Range(s, e))
        }
        None if legacy.is_empty() => Some(Ports::Any),
        None => legacy.parse().ok().map(Ports::Single),
    }
}

/// Decodes `address bytes (4 or 16) || prefix length`.
fn parse_prefix_bytes(b: &[u8]) -> Option<IpNet> {
    let addr = match b.len() {
        5 => IpAddr::from(<[u8; 4]>::try_from(&b[..4]).ok()?),
        17 => IpAddr::from(<[u8; 16]>::try_from(&b[..16]).ok()?),
        _ => return None,
    };
    IpNet::new(addr, *b.last()?).ok()
}

fn parse_firewall_rule(r: &pb::FirewallRule, warnings: &mut Vec<String>) -> Option<FirewallRule> {
    let Some(protocol) = parse_protocol(r.protocol) else {
        warnings.push(format!(
            "firewall rule with protocol {} skipped",
            r.protocol
        ));
        return None;
    };
    let Some(ports) = parse_ports(r.port_info.as_ref(), &r.port) else {
        warnings.push(format!("firewall rule with bad port {:?} skipped", r.port));
        return None;
    };
    let peer = if let Some(first) = r.source_prefixes.first() {
        match parse_prefix_bytes(first) {
            Some(p) => Some(p),
            None => {
                warnings.push("firewall rule with bad source prefix skipped".into());
                return None;
            }
        }
    } else {
        match r.peer_ip.parse::<IpAddr>() {
            Ok(ip) => Some(IpNet::from(ip)),
            Err(_) => {
                warnings.push(format!(
                    "firewall rule with bad peer IP {:?} skipped",
                    r.peer_ip
                ));
                return None;
            }
        }
    };
    // An unspecified address means any source.
    let peer = peer.filter(|p| !p.addr().is_unspecified());
    Some(FirewallRule {
        peer,
        direction: if r.direction == pb::RuleDirection::Out as i32 {
            Direction::Out
        } else {
            Direction::In
        },
        action: parse_action(r.action),
        protocol,
        ports,
        policy_id: r.policy_id.clone(),
    })
}

fn parse_route(r: &pb::Route, warnings: &mut Vec<String>) -> Option<Route> {
    let target = if r.network_type == 3 || (!r.domains.is_empty() && r.network.is_empty()) {
        if r.domains.is_empty() {
            warnings.push(format!("route {} has no domains, skipped", r.id));
            return None;
        }
        RouteTarget::Domains(r.domains.clone())
    } else {
        match r.network.parse::<IpNet>() {
            Ok(n) => RouteTarget::Network(n.trunc()),
            Err(_) => {
                warnings.push(format!(
                    "route {} with bad network {:?} skipped",
                    r.id, r.network
                ));
                return None;
            }
        }
    };
    Some(Route {
        id: r.id.clone(),
        net_id: r.net_id.clone(),
        target,
        peer: r.peer.clone(),
        metric: r.metric,
        masquerade: r.masquerade,
        keep_route: r.keep_route,
        skip_auto_apply: r.skip_auto_apply,
    })
}

fn parse_route_rule(
    r: &pb::RouteFirewallRule,
    warnings: &mut Vec<String>,
) -> Option<RouteFirewallRule> {
    let protocol = parse_protocol(r.protocol)?;
    let ports = parse_ports(r.port_info.as_ref(), "")?;
    let mut sources = Vec::with_capacity(r.source_ranges.len());
    for s in &r.source_ranges {
        match parse_prefix(s) {
            Some(n) => sources.push(n),
            None => warnings.push(format!(
                "route rule {}: bad source {s:?} skipped",
                r.route_id
            )),
        }
    }
    if sources.is_empty() {
        return None;
    }
    let destination = if r.destination.is_empty() {
        None
    } else {
        match parse_prefix(&r.destination) {
            Some(d) => Some(d),
            None => {
                warnings.push(format!(
                    "route rule {}: bad destination {:?}",
                    r.route_id, r.destination
                ));
                return None;
            }
        }
    };
    Some(RouteFirewallRule {
        sources,
        destination,
        domains: r.domains.clone(),
        action: parse_action(r.action),
        protocol,
        ports,
        route_id: r.route_id.clone(),
    })
}

fn parse_forwarding_rule(
    r: &pb::ForwardingRule,
    warnings: &mut Vec<String>,
) -> Option<ForwardingRule> {
    let addr = match r.translated_address.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(r.translated_address.as_slice()).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(r.translated_address.as_slice()).ok()?),
        n => {
            warnings.push(format!("forwarding rule with {n}-byte address skipped"));
            return None;
        }
    };
    let protocol =
        parse_protocol(r.protocol).filter(|p| matches!(p, Protocol::Tcp | Protocol::Udp))?;
    Some(ForwardingRule {
        protocol,
        destination_ports: parse_ports(r.destination_port.as_ref(), "")?,
        translated_address: addr,
        translated_ports: parse_ports(r.translated_port.as_ref(), "")?,
    })
}

fn parse_dns(d: &pb::DnsConfig, warnings: &mut Vec<String>) -> DnsConfig {
    let nameserver_groups = d
        .name_server_groups
        .iter()
        .map(|g| NameServerGroup {
            servers: g
                .name_servers
                .iter()
                .filter(|ns| ns.ns_type == 1 || ns.ns_type == 0)
                .filter_map(
                    |ns| match (ns.ip.parse::<IpAddr>(), u16::try_from(ns.port)) {
                        (Ok(ip), Ok(port)) => Some(NameServer {
                            ip,
                            port: if port == 0 { 53 } else { port },
                        }),
                        _ => {
                            warnings.push(format!("nameserver {:?}:{} skipped", ns.ip, ns.port));
                            None
                        }
                    },
                )
                .collect(),
            primary: g.primary,
            domains: g.domains.clone(),
            search_domains_enabled: g.search_domains_enabled,
        })
        .collect();
    let custom_zones = d
        .custom_zones
        .iter()
        .map(|z| CustomZone {
            domain: z.domain.clone(),
            records: z
                .records
                .iter()
                .filter(|r| r.class.is_empty() || r.class == "IN")
                .filter_map(|r| {
                    Some(DnsRecord {
                        name: r.name.clone(),
                        rtype: u16::try_from(r.r#type).ok()?,
                        ttl: u32::try_from(r.ttl).unwrap_or(300),
                        rdata: r.r_data.clone(),
                    })
                })
                .collect(),
            search_domain_disabled: z.search_domain_disabled,
            non_authoritative: z.non_authoritative,
        })
        .collect();
    DnsConfig {
        service_enable: d.service_enable,
        nameserver_groups,
        custom_zones,
        forwarder_port: match u16::try_from(d.forwarder_port) {
            Ok(0) | Err(_) => 5353,
            Ok(p) => p,
        },
    }
}

impl NetworkState {
    /// Converts a NetworkMap, skipping (and reporting) what does not parse. `own_key` is
    /// filtered out of the peer lists.
    pub fn from_proto(map: &pb::NetworkMap, own_key: &PublicKey) -> Self {
        let mut warnings = Vec::new();
        let peer = map
            .peer_config
            .as_ref()
            .map(|pc| PeerSettings::from_proto(pc, &mut warnings))
            .unwrap_or_default();
        let mut collect_peers = |list: &[pb::RemotePeerConfig]| {
            let mut out = HashMap::with_capacity(list.len());
            for p in list {
                if let Some(rp) = parse_remote_peer(p, &mut warnings) {
                    if rp.key != *own_key {
                        out.insert(rp.key, rp);
                    }
                }
            }
            out
        };
        let peers = if map.remote_peers_is_empty {
            HashMap::new()
        } else {
            collect_peers(&map.remote_peers)
        };
        let offline_peers = collect_peers(&map.offline_peers);
        let routes = map
            .routes
            .iter()
            .filter_map(|r| parse_route(r, &mut warnings))
            .collect();
        let dns = map
            .dns_config
            .as_ref()
            .map(|d| parse_dns(d, &mut warnings))
            .unwrap_or_default();
        let firewall_rules: Vec<_> = map
            .firewall_rules
            .iter()
            .filter_map(|r| parse_firewall_rule(r, &mut warnings))
            .collect();
        let route_firewall_rules: Vec<_> = map
            .routes_firewall_rules
            .iter()
            .filter_map(|r| parse_route_rule(r, &mut warnings))
            .collect();
        let forwarding_rules = map
            .forwarding_rules
            .iter()
            .filter_map(|r| parse_forwarding_rule(r, &mut warnings))
            .collect();
        NetworkState {
            serial: map.serial,
            peer,
            peers,
            offline_peers,
            routes,
            dns,
            firewall_allow_all: map.firewall_rules.is_empty() && !map.firewall_rules_is_empty,
            firewall_rules,
            route_firewall_allow_all: map.routes_firewall_rules.is_empty()
                && !map.routes_firewall_rules_is_empty,
            route_firewall_rules,
            forwarding_rules,
            warnings,
        }
    }
}
