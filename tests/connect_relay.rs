//! Two connectivity managers meet through the testbed's signal and relay servers: offers and
//! answers go over signal, both open the relayed connection on the controller's relay, and
//! datagrams the device hands to the path arrive at the other side's device.

use netbird_agent::connect::{ConnManager, PeerStats, TunnelDevice, WgPath};
use netbird_agent::crypto::{PrivateKey, PublicKey};
use netbird_agent::engine::ServicesConfig;
use netbird_agent::peer::PathKind;
use netbird_agent::testbed::{relay_server, signal_server};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct FakeDevice {
    paths: Mutex<HashMap<PublicKey, WgPath>>,
    received: Mutex<Vec<(PublicKey, Vec<u8>)>>,
}

impl TunnelDevice for FakeDevice {
    fn upsert_peer(
        &self,
        _: &PublicKey,
        _: &[ipnet::IpNet],
        _: u16,
        _: Option<[u8; 32]>,
    ) -> Result<(), String> {
        Ok(())
    }
    fn remove_peer(&self, _: &PublicKey) {}
    fn set_path(&self, key: &PublicKey, path: Option<WgPath>) {
        let mut p = self.paths.lock().unwrap();
        match path {
            Some(x) => {
                p.insert(*key, x);
            }
            None => {
                p.remove(key);
            }
        }
    }
    fn inject(&self, key: &PublicKey, datagram: &[u8]) {
        self.received
            .lock()
            .unwrap()
            .push((*key, datagram.to_vec()));
    }
    fn peer_stats(&self, _: &PublicKey) -> Option<PeerStats> {
        None
    }
    fn send_raw(&self, _: std::net::SocketAddr, _: &[u8]) {}
    fn set_raw_sink(&self, _: netbird_agent::connect::RawSink) {}
    fn listen_port(&self) -> u16 {
        51820
    }
}

impl FakeDevice {
    fn send(&self, to: &PublicKey, data: &[u8]) -> bool {
        match self.paths.lock().unwrap().get(to) {
            Some(WgPath::Custom(f)) => {
                f(data);
                true
            }
            _ => false,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_connect_through_the_relay_after_signalling() {
    let signal = signal_server::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let relay = relay_server::start("127.0.0.1:0".parse().unwrap(), "secret", None)
        .await
        .unwrap();
    let (payload, signature) = relay_server::mint_relay_token("secret", Duration::from_secs(3600));
    let services = ServicesConfig {
        stuns: vec![],
        turns: vec![],
        signal: Some((signal.addr().to_string(), false)),
        relay: Some((vec![relay.instance_url().to_string()], payload, signature)),
    };
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let (da, db) = (
        Arc::new(FakeDevice::default()),
        Arc::new(FakeDevice::default()),
    );
    let a = ConnManager::start(ka.clone(), 51820, da.clone());
    let b = ConnManager::start(kb.clone(), 51820, db.clone());
    for m in [&a, &b] {
        m.set_services(services.clone());
    }
    a.set_peers(vec![(
        kb.public_key(),
        vec!["100.64.0.2/32".parse().unwrap()],
    )]);
    b.set_peers(vec![(
        ka.public_key(),
        vec!["100.64.0.1/32".parse().unwrap()],
    )]);

    let relayed =
        |m: &ConnManager, k: &PublicKey| m.peer_info(k).is_some_and(|i| i.path == PathKind::Relay);
    for _ in 0..300 {
        if relayed(&a, &kb.public_key()) && relayed(&b, &ka.public_key()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        relayed(&a, &kb.public_key()),
        "{:?}",
        a.peer_info(&kb.public_key())
    );
    assert!(
        relayed(&b, &ka.public_key()),
        "{:?}",
        b.peer_info(&ka.public_key())
    );
    assert_eq!(
        a.peer_info(&kb.public_key()).unwrap().relay_address,
        relay.instance_url()
    );

    assert!(da.send(&kb.public_key(), b"from a"));
    assert!(db.send(&ka.public_key(), b"from b"));
    for _ in 0..50 {
        if !da.received.lock().unwrap().is_empty() && !db.received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        db.received.lock().unwrap().first().cloned(),
        Some((ka.public_key(), b"from a".to_vec()))
    );
    assert_eq!(
        da.received.lock().unwrap().first().cloned(),
        Some((kb.public_key(), b"from b".to_vec()))
    );
    let st = a.services_status();
    assert!(st.signal.is_some_and(|(_, up, _)| up));

    // Removing the peer drops its path.
    a.set_peers(vec![]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.peer_info(&kb.public_key()).is_none());
    assert!(!da.send(&kb.public_key(), b"x"));
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_with_different_home_relays_meet_on_the_controllers() {
    let signal = signal_server::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let relay1 = relay_server::start("127.0.0.1:0".parse().unwrap(), "secret", None)
        .await
        .unwrap();
    let relay2 = relay_server::start("127.0.0.1:0".parse().unwrap(), "secret", None)
        .await
        .unwrap();
    let (payload, signature) = relay_server::mint_relay_token("secret", Duration::from_secs(3600));
    let services = |relay: &str| ServicesConfig {
        stuns: vec![],
        turns: vec![],
        signal: Some((signal.addr().to_string(), false)),
        relay: Some((vec![relay.to_string()], payload.clone(), signature.clone())),
    };
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let (da, db) = (
        Arc::new(FakeDevice::default()),
        Arc::new(FakeDevice::default()),
    );
    let a = ConnManager::start(ka.clone(), 51820, da.clone());
    let b = ConnManager::start(kb.clone(), 51820, db.clone());
    a.set_services(services(relay1.instance_url()));
    b.set_services(services(relay2.instance_url()));
    a.set_peers(vec![(
        kb.public_key(),
        vec!["100.64.0.2/32".parse().unwrap()],
    )]);
    b.set_peers(vec![(
        ka.public_key(),
        vec!["100.64.0.1/32".parse().unwrap()],
    )]);
    let relayed =
        |m: &ConnManager, k: &PublicKey| m.peer_info(k).is_some_and(|i| i.path == PathKind::Relay);
    for _ in 0..300 {
        if relayed(&a, &kb.public_key()) && relayed(&b, &ka.public_key()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(relayed(&a, &kb.public_key()));
    assert!(relayed(&b, &ka.public_key()));
    // The controller (greater key) stays on its home relay; the other side dialled it.
    let a_controls = netbird_agent::peer::is_controller(&ka.public_key(), &kb.public_key());
    let meeting = if a_controls {
        relay1.instance_url()
    } else {
        relay2.instance_url()
    };
    assert_eq!(
        a.peer_info(&kb.public_key()).unwrap().relay_address,
        meeting
    );
    assert_eq!(
        b.peer_info(&ka.public_key()).unwrap().relay_address,
        meeting
    );
    // The connection to the foreign relay lasts: datagrams still pass a while later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(relayed(&a, &kb.public_key()) && relayed(&b, &ka.public_key()));
    da.received.lock().unwrap().clear();
    db.received.lock().unwrap().clear();
    assert!(da.send(&kb.public_key(), b"late from a"));
    assert!(db.send(&ka.public_key(), b"late from b"));
    for _ in 0..50 {
        if !da.received.lock().unwrap().is_empty() && !db.received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        db.received.lock().unwrap().first().cloned(),
        Some((ka.public_key(), b"late from a".to_vec()))
    );
    assert_eq!(
        da.received.lock().unwrap().first().cloned(),
        Some((kb.public_key(), b"late from b".to_vec()))
    );
}
