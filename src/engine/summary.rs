//! A human-readable summary of an applied NetworkMap, for the CLI.

use super::map::{NetworkState, RouteTarget};
use std::fmt::Write;

/// Renders the map summary: our address, peers, routes, rules and DNS.
pub fn render(state: &NetworkState) -> String {
    let mut out = String::new();
    let addr = state
        .peer
        .address
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "Serial: {}", state.serial);
    let _ = writeln!(out, "NetBird IP: {addr}");
    let _ = writeln!(
        out,
        "FQDN: {}",
        if state.peer.fqdn.is_empty() {
            "-"
        } else {
            &state.peer.fqdn
        }
    );
    let _ = writeln!(
        out,
        "Peers: {} ({} offline)",
        state.peers.len(),
        state.offline_peers.len()
    );
    let mut peers: Vec<_> = state.peers.values().collect();
    peers.sort_by(|a, b| {
        a.allowed_ips
            .first()
            .cmp(&b.allowed_ips.first())
            .then(a.fqdn.cmp(&b.fqdn))
    });
    for p in peers {
        let ips: Vec<String> = p.allowed_ips.iter().map(|i| i.to_string()).collect();
        let _ = writeln!(
            out,
            "  {} {} {}",
            if p.fqdn.is_empty() { "-" } else { &p.fqdn },
            ips.join(","),
            p.key
        );
    }
    let _ = writeln!(out, "Routes: {}", state.routes.len());
    for r in &state.routes {
        let target = match &r.target {
            RouteTarget::Network(n) => n.to_string(),
            RouteTarget::Domains(d) => d.join(","),
        };
        let _ = writeln!(
            out,
            "  {} {} via {} metric {}",
            r.net_id, target, r.peer, r.metric
        );
    }
    let rules = if state.firewall_allow_all {
        "allow all (server sent no rules)".to_string()
    } else {
        state.firewall_rules.len().to_string()
    };
    let _ = writeln!(out, "Firewall rules: {rules}");
    let _ = writeln!(
        out,
        "Route firewall rules: {}",
        state.route_firewall_rules.len()
    );
    let _ = writeln!(
        out,
        "DNS: {}, {} zone(s), {} nameserver group(s)",
        if state.dns.service_enable {
            "enabled"
        } else {
            "disabled"
        },
        state.dns.custom_zones.len(),
        state.dns.nameserver_groups.len()
    );
    let _ = writeln!(out, "Forwarding rules: {}", state.forwarding_rules.len());
    if !state.warnings.is_empty() {
        let _ = writeln!(out, "Skipped entries: {}", state.warnings.len());
    }
    out
}
