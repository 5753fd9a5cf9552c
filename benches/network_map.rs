//! Decode + apply + diff of a NetworkMap with 100, 1,000 and 10,000 peers.
//! Target (issue 2): the 10,000-peer diff under 5 ms on one core.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use netbird_agent::crypto::{PrivateKey, PublicKey};
use netbird_agent::engine::{diff, Engine, NetworkState};
use netbird_agent::proto::management as pb;
use prost::Message;

fn network_map(serial: u64, keys: &[PublicKey], version: &str) -> pb::NetworkMap {
    let peers = keys
        .iter()
        .enumerate()
        .map(|(i, k)| pb::RemotePeerConfig {
            wg_pub_key: k.to_base64(),
            allowed_ips: vec![format!("100.64.{}.{}/32", (i + 2) / 256, (i + 2) % 256)],
            fqdn: format!("peer-{i}.netbird.selfhosted"),
            agent_version: version.into(),
            ..Default::default()
        })
        .collect();
    let rules = (0..keys.len())
        .map(|i| pb::FirewallRule {
            peer_ip: format!("100.64.{}.{}", (i + 2) / 256, (i + 2) % 256),
            direction: 0,
            action: 0,
            protocol: 1,
            ..Default::default()
        })
        .collect();
    pb::NetworkMap {
        serial,
        peer_config: Some(pb::PeerConfig {
            address: "100.64.0.1/16".into(),
            fqdn: "me.netbird.selfhosted".into(),
            ..Default::default()
        }),
        remote_peers: peers,
        firewall_rules: rules,
        dns_config: Some(pb::DnsConfig {
            service_enable: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let me = PrivateKey::generate().public_key();
    let mut group = c.benchmark_group("network_map");
    for n in [100usize, 1_000, 10_000] {
        let keys: Vec<PublicKey> = (0..n)
            .map(|_| PrivateKey::generate().public_key())
            .collect();
        let old_map = network_map(1, &keys, "0.77.1");
        // The update changes 1 % of peers and replaces another 1 %.
        let mut new_map = network_map(2, &keys, "0.77.1");
        for p in new_map.remote_peers.iter_mut().take(n / 100 + 1) {
            p.agent_version = "0.78.0".into();
        }
        for p in new_map.remote_peers.iter_mut().rev().take(n / 100 + 1) {
            p.wg_pub_key = PrivateKey::generate().public_key().to_base64();
        }
        let bytes = pb::SyncResponse {
            network_map: Some(new_map.clone()),
            ..Default::default()
        }
        .encode_to_vec();
        let old_state = NetworkState::from_proto(&old_map, &me);
        let new_state = NetworkState::from_proto(&new_map, &me);

        group.bench_with_input(BenchmarkId::new("decode", n), &bytes, |b, bytes| {
            b.iter(|| pb::SyncResponse::decode(black_box(bytes.as_slice())))
        });
        group.bench_with_input(BenchmarkId::new("apply", n), &new_map, |b, m| {
            b.iter(|| NetworkState::from_proto(black_box(m), &me))
        });
        group.bench_with_input(BenchmarkId::new("diff", n), &new_state, |b, new| {
            b.iter(|| diff(Some(black_box(&old_state)), black_box(new)))
        });
        group.bench_with_input(
            BenchmarkId::new("decode_apply_diff", n),
            &bytes,
            |b, bytes| {
                b.iter_batched(
                    || {
                        let mut e = Engine::new(me);
                        e.on_sync(&pb::SyncResponse {
                            network_map: Some(old_map.clone()),
                            ..Default::default()
                        });
                        e
                    },
                    |mut e| {
                        let resp = pb::SyncResponse::decode(bytes.as_slice()).ok();
                        resp.map(|r| e.on_sync(&r))
                    },
                    criterion::BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
