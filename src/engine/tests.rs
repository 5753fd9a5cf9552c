//! Engine unit tests: conversion, bad input, serial rules, diffing.

use super::*;
use crate::crypto::PrivateKey;
use pb::port_info::{PortSelection, Range};

fn remote(key: &PublicKey, ip: &str) -> pb::RemotePeerConfig {
    pb::RemotePeerConfig {
        wg_pub_key: key.to_base64(),
        allowed_ips: vec![format!("{ip}/32")],
        fqdn: format!("p{ip}.netbird.selfhosted"),
        agent_version: "0.77.1".into(),
        ..Default::default()
    }
}

fn map(serial: u64, address: &str, peers: Vec<pb::RemotePeerConfig>) -> pb::NetworkMap {
    pb::NetworkMap {
        serial,
        peer_config: Some(pb::PeerConfig {
            address: address.into(),
            fqdn: "me.netbird.selfhosted".into(),
            ..Default::default()
        }),
        remote_peers: peers,
        ..Default::default()
    }
}

fn sync(m: pb::NetworkMap) -> pb::SyncResponse {
    pb::SyncResponse {
        network_map: Some(m),
        ..Default::default()
    }
}

fn keys(n: usize) -> Vec<PublicKey> {
    (0..n)
        .map(|_| PrivateKey::generate().public_key())
        .collect()
}

#[test]
fn first_map_adds_every_peer_and_filters_own_key() {
    let me = PrivateKey::generate().public_key();
    let k = keys(2);
    let mut e = Engine::new(me);
    let out = e.on_sync(&sync(map(
        3,
        "100.64.0.1/16",
        vec![
            remote(&k[0], "100.64.0.2"),
            remote(&k[1], "100.64.0.3"),
            remote(&me, "100.64.0.1"),
        ],
    )));
    let SyncOutcome::Applied(d) = out else {
        panic!("{out:?}")
    };
    assert_eq!(d.peers_added.len(), 2);
    assert!(d.peer_config_changed);
    let st = e.state().unwrap();
    assert_eq!(st.serial, 3);
    assert!(!st.peers.contains_key(&me));
    assert_eq!(st.peer.address.unwrap().to_string(), "100.64.0.1/16");
}

#[test]
fn older_serial_is_dropped_equal_is_reapplied() {
    let me = PrivateKey::generate().public_key();
    let k = keys(2);
    let mut e = Engine::new(me);
    e.on_sync(&sync(map(
        10,
        "100.64.0.1/16",
        vec![remote(&k[0], "100.64.0.2")],
    )));
    let out = e.on_sync(&sync(map(
        9,
        "100.64.0.1/16",
        vec![remote(&k[1], "100.64.0.3")],
    )));
    assert_eq!(
        out,
        SyncOutcome::StaleDropped {
            got: 9,
            applied: 10
        }
    );
    assert!(e.state().unwrap().peers.contains_key(&k[0]));
    let out = e.on_sync(&sync(map(
        10,
        "100.64.0.1/16",
        vec![remote(&k[1], "100.64.0.3")],
    )));
    let SyncOutcome::Applied(d) = out else {
        panic!("{out:?}")
    };
    assert_eq!(d.peers_added, vec![k[1]]);
    assert_eq!(d.peers_removed, vec![k[0]]);
}

#[test]
fn stale_map_still_updates_peer_config() {
    let me = PrivateKey::generate().public_key();
    let mut e = Engine::new(me);
    e.on_sync(&sync(map(10, "100.64.0.1/16", vec![])));
    let mut old = map(5, "100.64.0.1/16", vec![]);
    old.peer_config.as_mut().unwrap().fqdn = "renamed.netbird.selfhosted".into();
    assert!(matches!(
        e.on_sync(&sync(old)),
        SyncOutcome::StaleDropped { .. }
    ));
    assert_eq!(e.state().unwrap().peer.fqdn, "renamed.netbird.selfhosted");
}

#[test]
fn address_change_requires_restart() {
    let me = PrivateKey::generate().public_key();
    let mut e = Engine::new(me);
    e.on_sync(&sync(map(1, "100.64.0.1/16", vec![])));
    assert_eq!(
        e.on_sync(&sync(map(2, "100.64.0.9/16", vec![]))),
        SyncOutcome::RestartRequired
    );
    assert!(e.state().is_none());
}

#[test]
fn config_only_message_keeps_the_map_and_updates_services() {
    let me = PrivateKey::generate().public_key();
    let k = keys(1);
    let mut e = Engine::new(me);
    e.on_login(&pb::LoginResponse {
        netbird_config: Some(pb::NetbirdConfig {
            stuns: vec![pb::HostConfig {
                uri: "stun:127.0.0.1:3478".into(),
                protocol: 0,
            }],
            signal: Some(pb::HostConfig {
                uri: "127.0.0.1:10000".into(),
                protocol: 3,
            }),
            relay: Some(pb::RelayConfig {
                urls: vec!["rel://127.0.0.1:8080".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    e.on_sync(&sync(map(
        4,
        "100.64.0.1/16",
        vec![remote(&k[0], "100.64.0.2")],
    )));
    // Empty STUN list = unchanged; absent relay = relay disabled; signal ignored after login.
    let out = e.on_sync(&pb::SyncResponse {
        netbird_config: Some(pb::NetbirdConfig {
            signal: Some(pb::HostConfig {
                uri: "evil:1".into(),
                protocol: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(out, SyncOutcome::ConfigOnly);
    assert_eq!(e.state().unwrap().peers.len(), 1);
    assert_eq!(e.services().stuns, vec!["stun:127.0.0.1:3478".to_string()]);
    assert_eq!(e.services().relay, None);
    assert_eq!(
        e.services().signal,
        Some(("127.0.0.1:10000".to_string(), true))
    );
}

#[test]
fn bad_entries_are_skipped_not_fatal() {
    let me = PrivateKey::generate().public_key();
    let k = keys(2);
    let mut m = map(1, "100.64.0.1/16", vec![remote(&k[0], "100.64.0.2")]);
    m.remote_peers.push(pb::RemotePeerConfig {
        wg_pub_key: "garbage".into(),
        ..Default::default()
    });
    let mut bad_ip = remote(&k[1], "100.64.0.3");
    bad_ip.allowed_ips.push("300.1.2.3/99".into());
    m.remote_peers.push(bad_ip);
    m.routes.push(pb::Route {
        id: "r1".into(),
        network: "10.0.0.0/33".into(),
        network_type: 1,
        ..Default::default()
    });
    m.routes.push(pb::Route {
        id: "r2".into(),
        network: "10.1.0.0/16".into(),
        network_type: 1,
        net_id: "lan".into(),
        ..Default::default()
    });
    m.firewall_rules.push(pb::FirewallRule {
        peer_ip: "not-an-ip".into(),
        protocol: 1,
        ..Default::default()
    });
    m.firewall_rules.push(pb::FirewallRule {
        peer_ip: "100.64.0.2".into(),
        protocol: 5,
        ..Default::default()
    });
    m.firewall_rules.push(pb::FirewallRule {
        peer_ip: "100.64.0.2".into(),
        protocol: 2,
        port_info: Some(pb::PortInfo {
            port_selection: Some(PortSelection::Range(Range { start: 80, end: 90 })),
        }),
        ..Default::default()
    });
    let mut e = Engine::new(me);
    let SyncOutcome::Applied(_) = e.on_sync(&sync(m)) else {
        panic!()
    };
    let st = e.state().unwrap();
    assert_eq!(st.peers.len(), 2);
    assert_eq!(st.peers[&k[1]].allowed_ips.len(), 1);
    assert_eq!(st.routes.len(), 1);
    assert_eq!(st.firewall_rules.len(), 1);
    assert_eq!(st.firewall_rules[0].ports, map::Ports::Range(80, 90));
    assert_eq!(st.firewall_rules[0].protocol, map::Protocol::Tcp);
    assert!(st.warnings.len() >= 5, "{:?}", st.warnings);
}

#[test]
fn source_prefixes_win_over_peer_ip_and_wildcard_means_any() {
    let me = PrivateKey::generate().public_key();
    let mut m = map(1, "100.64.0.1/16", vec![]);
    m.firewall_rules.push(pb::FirewallRule {
        peer_ip: "100.64.0.2".into(),
        protocol: 1,
        source_prefixes: vec![vec![100, 64, 0, 0, 24]],
        ..Default::default()
    });
    m.firewall_rules.push(pb::FirewallRule {
        peer_ip: "0.0.0.0".into(),
        protocol: 1,
        ..Default::default()
    });
    let st = NetworkState::from_proto(&m, &me);
    assert_eq!(
        st.firewall_rules[0].peer.unwrap().to_string(),
        "100.64.0.0/24"
    );
    assert_eq!(st.firewall_rules[1].peer, None);
}

#[test]
fn empty_rules_without_flag_mean_allow_all() {
    let me = PrivateKey::generate().public_key();
    let mut m = map(1, "100.64.0.1/16", vec![]);
    assert!(NetworkState::from_proto(&m, &me).firewall_allow_all);
    m.firewall_rules_is_empty = true;
    assert!(!NetworkState::from_proto(&m, &me).firewall_allow_all);
}

#[test]
fn remote_peers_is_empty_removes_all() {
    let me = PrivateKey::generate().public_key();
    let k = keys(3);
    let mut e = Engine::new(me);
    e.on_sync(&sync(map(
        1,
        "100.64.0.1/16",
        k.iter()
            .enumerate()
            .map(|(i, k)| remote(k, &format!("100.64.0.{}", i + 2)))
            .collect(),
    )));
    let mut m = map(2, "100.64.0.1/16", vec![remote(&k[0], "100.64.0.2")]);
    m.remote_peers_is_empty = true;
    let SyncOutcome::Applied(d) = e.on_sync(&sync(m)) else {
        panic!()
    };
    assert_eq!(d.peers_removed.len(), 3);
    assert!(e.state().unwrap().peers.is_empty());
}

#[test]
fn changed_peer_is_reported_unchanged_is_not() {
    let me = PrivateKey::generate().public_key();
    let k = keys(2);
    let mut e = Engine::new(me);
    e.on_sync(&sync(map(
        1,
        "100.64.0.1/16",
        vec![remote(&k[0], "100.64.0.2"), remote(&k[1], "100.64.0.3")],
    )));
    let mut changed = remote(&k[1], "100.64.0.3");
    changed.agent_version = "0.78.0".into();
    let SyncOutcome::Applied(d) = e.on_sync(&sync(map(
        2,
        "100.64.0.1/16",
        vec![remote(&k[0], "100.64.0.2"), changed],
    ))) else {
        panic!()
    };
    assert_eq!(d.peers_changed, vec![k[1]]);
    assert!(d.peers_added.is_empty() && d.peers_removed.is_empty());
    let SyncOutcome::Applied(d) = e.on_sync(&sync(map(
        2,
        "100.64.0.1/16",
        vec![remote(&k[0], "100.64.0.2"), {
            let mut c = remote(&k[1], "100.64.0.3");
            c.agent_version = "0.78.0".into();
            c
        }],
    ))) else {
        panic!()
    };
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn summary_lists_peers() {
    let me = PrivateKey::generate().public_key();
    let k = keys(1);
    let st = NetworkState::from_proto(
        &map(7, "100.64.0.1/16", vec![remote(&k[0], "100.64.0.2")]),
        &me,
    );
    let text = summary::render(&st);
    assert!(text.contains("Serial: 7"));
    assert!(text.contains("NetBird IP: 100.64.0.1/16"));
    assert!(text.contains("Peers: 1 (0 offline)"));
    assert!(text.contains(&k[0].to_base64()));
}
