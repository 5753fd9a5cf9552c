//! The management client against the testbed server over loopback gRPC: registration, every
//! setup-key error, login, Sync with serial ordering, reconnect after a server restart,
//! deletion and login expiry, metadata.

use netbird_agent::crypto::PrivateKey;
use netbird_agent::engine::{Engine, SyncOutcome};
use netbird_agent::mgmt::{run_sync, LoginError, LoginParams, MgmtClient, MgmtState};
use netbird_agent::proto::management as pb;
use netbird_agent::system::{build_meta, HostFacts, MetaOptions};
use netbird_agent::testbed::account::{Policy, PolicyRule, RuleProtocol};
use netbird_agent::testbed::{SetupKeySpec, Testbed, TestbedConfig};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

fn meta(host: &str) -> pb::PeerSystemMeta {
    build_meta(
        &HostFacts::gather(),
        &MetaOptions {
            hostname_override: Some(host.into()),
            ..Default::default()
        },
    )
}

fn with_key(k: &str) -> LoginParams {
    LoginParams {
        setup_key: Some(k.into()),
        ..Default::default()
    }
}

async fn testbed() -> Testbed {
    Testbed::start(TestbedConfig::default())
        .await
        .expect("testbed starts")
}

async fn register(tb: &Testbed, key: &str, host: &str) -> (MgmtClient, pb::LoginResponse) {
    let c = MgmtClient::new(&tb.management_url(), PrivateKey::generate()).unwrap();
    let r = c
        .login(meta(host), &with_key(key))
        .await
        .expect("registration succeeds");
    (c, r)
}

async fn next_map(stream: &mut netbird_agent::mgmt::SyncStream) -> pb::SyncResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an update arrives")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test]
async fn register_then_login_without_key() {
    let tb = testbed().await;
    let key = tb
        .admin()
        .create_setup_key(SetupKeySpec::reusable("k"))
        .unwrap();
    let (c, resp) = register(&tb, &key.key, "alpha").await;
    let pc = resp.peer_config.unwrap();
    assert!(
        pc.address.starts_with("100.64.") && pc.address.ends_with("/16"),
        "{}",
        pc.address
    );
    assert_eq!(pc.fqdn, "alpha.netbird.selfhosted");
    assert_eq!(
        resp.session_expires_at.unwrap(),
        prost_types::Timestamp::default()
    );
    // Known peer: a plain login works and a key would be ignored.
    c.login(meta("alpha"), &LoginParams::default())
        .await
        .expect("plain login of a known peer");
    let peers = tb.admin().list_peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].key, c.public_key().to_base64());
    // The server stored our metadata as NetBird reads it.
    let m = tb.admin().peer_meta(&peers[0].id).unwrap();
    assert_eq!(m.go_os, "linux");
    assert_eq!(m.hostname, "alpha");
    assert_eq!(m.netbird_version, netbird_agent::UPSTREAM_COMPAT_VERSION);
    assert!(!m.kernel_version.is_empty());
}

#[tokio::test]
async fn every_setup_key_error_is_distinct() {
    let tb = testbed().await;
    let admin = tb.admin();
    let new_client = || MgmtClient::new(&tb.management_url(), PrivateKey::generate()).unwrap();

    // No key at all: the server asks for a login method.
    let e = new_client()
        .login(meta("x"), &LoginParams::default())
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::NeedsLogin(_)), "{e:?}");
    // Malformed: refused locally, nothing sent.
    let e = new_client()
        .login(meta("x"), &with_key("not-a-uuid"))
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::MalformedSetupKey), "{e:?}");
    // Unknown key.
    let e = new_client()
        .login(meta("x"), &with_key(&uuid::Uuid::new_v4().to_string()))
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::InvalidSetupKey(_)), "{e:?}");
    // One-off key used twice.
    let once = admin
        .create_setup_key(SetupKeySpec::one_off("once"))
        .unwrap();
    new_client()
        .login(meta("a"), &with_key(&once.key))
        .await
        .unwrap();
    let e = new_client()
        .login(meta("b"), &with_key(&once.key))
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::InvalidSetupKey(_)), "{e:?}");
    // Revoked.
    let revoked = admin.create_setup_key(SetupKeySpec::reusable("r")).unwrap();
    admin.revoke_setup_key(&revoked.id).unwrap();
    let e = new_client()
        .login(meta("c"), &with_key(&revoked.key))
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::InvalidSetupKey(_)), "{e:?}");
    // Expired.
    let expired = admin.create_setup_key(SetupKeySpec::reusable("e")).unwrap();
    admin.expire_setup_key(&expired.id).unwrap();
    let e = new_client()
        .login(meta("d"), &with_key(&expired.key))
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::InvalidSetupKey(_)), "{e:?}");
    // Usage limit reached.
    let limited = admin
        .create_setup_key(SetupKeySpec {
            usage_limit: 1,
            ..SetupKeySpec::reusable("l")
        })
        .unwrap();
    new_client()
        .login(meta("e"), &with_key(&limited.key))
        .await
        .unwrap();
    let e = new_client()
        .login(meta("f"), &with_key(&limited.key))
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::InvalidSetupKey(_)), "{e:?}");
    // Extra DNS labels the key does not allow.
    let plain = admin.create_setup_key(SetupKeySpec::reusable("p")).unwrap();
    let params = LoginParams {
        setup_key: Some(plain.key.clone()),
        dns_labels: vec!["extra".into()],
        ..Default::default()
    };
    let e = new_client().login(meta("g"), &params).await.unwrap_err();
    assert!(matches!(e, LoginError::DnsLabelsNotAllowed(_)), "{e:?}");
    // The key text is accepted in either case: the server hashes the upper-cased text.
    new_client()
        .login(meta("h"), &with_key(&plain.key.to_lowercase()))
        .await
        .unwrap();
    // Each error's message tells a person what to do.
    let msg = LoginError::InvalidSetupKey(String::new()).to_string();
    assert!(
        msg.contains("unknown, expired, revoked or used up"),
        "{msg}"
    );
}

#[tokio::test]
async fn unreachable_server_is_a_transient_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let c = MgmtClient::new(&url, PrivateKey::generate()).unwrap();
    let e = c
        .login(meta("x"), &LoginParams::default())
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(MgmtClient::new("ftp://nope", PrivateKey::generate()).is_err());
}

#[tokio::test]
async fn sync_delivers_maps_with_growing_serials_and_peers_see_each_other() {
    let tb = testbed().await;
    let admin = tb.admin();
    let key = admin.create_setup_key(SetupKeySpec::reusable("k")).unwrap();
    let (a, _) = register(&tb, &key.key, "alpha").await;
    let mut sa = a.open_sync(meta("alpha")).await.unwrap();
    let first = next_map(&mut sa).await;
    assert!(
        first.netbird_config.is_some(),
        "the first message carries the full config"
    );
    let m = first.network_map.unwrap();
    assert!(m.remote_peers.is_empty() && m.remote_peers_is_empty);
    let s1 = m.serial;

    let (b, _) = register(&tb, &key.key, "beta").await;
    let upd = next_map(&mut sa).await;
    let m = upd.network_map.clone().unwrap();
    assert!(m.serial > s1);
    assert_eq!(m.remote_peers.len(), 1);
    assert_eq!(m.remote_peers[0].wg_pub_key, b.public_key().to_base64());
    assert_eq!(m.remote_peers[0].fqdn, "beta.netbird.selfhosted");
    // The default All<->All policy gives one IN and one OUT rule per peer; we report
    // capability 1, so source prefixes are filled.
    assert_eq!(m.firewall_rules.len(), 2, "{:?}", m.firewall_rules);
    assert!(m
        .firewall_rules
        .iter()
        .all(|r| r.source_prefixes.len() == 1));
    let zone = &m.dns_config.as_ref().unwrap().custom_zones[0];
    assert_eq!(zone.domain, "netbird.selfhosted.");
    assert!(zone
        .records
        .iter()
        .any(|r| r.name == "beta.netbird.selfhosted" && r.r#type == 1));

    // Replace the default policy with a TCP port range from a group: new map, higher serial.
    let serial_before = m.serial;
    for p in admin.list_policies() {
        admin.delete_policy(&p.id).unwrap();
    }
    let peers = admin.list_peers();
    let g = admin
        .create_group("web", peers.iter().map(|p| p.id.clone()).collect())
        .unwrap();
    admin
        .create_policy(Policy {
            id: String::new(),
            name: "web".into(),
            description: String::new(),
            enabled: true,
            rules: vec![PolicyRule {
                id: String::new(),
                name: "web".into(),
                enabled: true,
                action: "accept".into(),
                bidirectional: false,
                protocol: RuleProtocol::Tcp,
                ports: vec![],
                port_ranges: vec![netbird_agent::testbed::account::PortRange {
                    start: 8000,
                    end: 8080,
                }],
                sources: vec![g.id.clone()],
                destinations: vec![g.id.clone()],
            }],
        })
        .unwrap();
    let mut engine = Engine::new(a.public_key());
    let mut last = None;
    for _ in 0..6 {
        let resp = next_map(&mut sa).await;
        let serial = resp.network_map.as_ref().unwrap().serial;
        assert!(serial > serial_before);
        if let SyncOutcome::Applied(_) = engine.on_sync(&resp) {
            last = Some(resp);
        }
        if engine.state().is_some_and(|s| {
            s.firewall_rules
                .iter()
                .any(|r| r.ports == netbird_agent::engine::map::Ports::Range(8000, 8080))
        }) {
            break;
        }
    }
    assert!(last.is_some());
    let st = engine.state().unwrap();
    assert_eq!(st.peers.len(), 1);
    assert!(st
        .firewall_rules
        .iter()
        .all(|r| r.protocol == netbird_agent::engine::map::Protocol::Tcp));
    // An older map (a replayed earlier message) is dropped by the engine.
    assert!(matches!(
        engine.on_sync(&upd),
        SyncOutcome::StaleDropped { .. }
    ));
    drop(b);
}

#[tokio::test]
async fn sync_session_reconnects_after_server_restart_and_resyncs() {
    let mut tb = testbed().await;
    let key = tb
        .admin()
        .create_setup_key(SetupKeySpec::reusable("k"))
        .unwrap();
    let (a, _) = register(&tb, &key.key, "alpha").await;
    let (tx, mut rx) = mpsc::channel(16);
    let (state_tx, mut state) = watch::channel(MgmtState::Idle);
    let task = tokio::spawn(run_sync(a.clone(), || meta("alpha"), tx, state_tx));
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let serial = first.network_map.unwrap().serial;
    assert_eq!(*state.borrow_and_update(), MgmtState::Connected);

    tb.stop().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while *state.borrow_and_update() == MgmtState::Connected {
            state.changed().await.unwrap();
        }
    })
    .await
    .expect("the session notices the server went away");
    tb.restart().await.unwrap();
    tb.admin().touch();
    let again = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("resynced after restart")
        .unwrap();
    assert!(
        again.netbird_config.is_some(),
        "a reconnect starts with a full initial message"
    );
    assert!(again.network_map.unwrap().serial >= serial);
    assert_eq!(*state.borrow(), MgmtState::Connected);
    task.abort();
}

#[tokio::test]
async fn deleted_peer_gets_an_empty_map_then_permission_denied() {
    let tb = testbed().await;
    let admin = tb.admin();
    let key = admin.create_setup_key(SetupKeySpec::reusable("k")).unwrap();
    let (a, _) = register(&tb, &key.key, "alpha").await;
    let (tx, mut rx) = mpsc::channel(16);
    let (state_tx, state) = watch::channel(MgmtState::Idle);
    let task = tokio::spawn(run_sync(a.clone(), || meta("alpha"), tx, state_tx));
    rx.recv().await.unwrap();
    let id = admin.list_peers()[0].id.clone();
    admin.delete_peer(&id).unwrap();
    let last = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let m = last.network_map.unwrap();
    assert!(m.remote_peers_is_empty && m.firewall_rules_is_empty);
    let end = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("session ends")
        .unwrap();
    assert!(end.unwrap_err().is_permission_denied());
    assert!(matches!(&*state.borrow(), MgmtState::NeedsLogin(r) if r.contains("not registered")));
    let e = a
        .login(meta("alpha"), &LoginParams::default())
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::NeedsLogin(_)), "{e:?}");
}

#[tokio::test]
async fn expired_login_is_reported_as_such() {
    let tb = testbed().await;
    let admin = tb.admin();
    let key = admin.create_setup_key(SetupKeySpec::reusable("k")).unwrap();
    let (a, _) = register(&tb, &key.key, "alpha").await;
    admin.expire_peer_login(&admin.list_peers()[0].id).unwrap();
    let e = a
        .login(meta("alpha"), &with_key(&key.key))
        .await
        .unwrap_err();
    assert!(matches!(e, LoginError::LoginExpired(_)), "{e:?}");
    let e = a
        .open_sync(meta("alpha"))
        .await
        .err()
        .expect("sync refused");
    assert!(e.is_permission_denied());
}

#[tokio::test]
async fn logout_deletes_the_peer() {
    let tb = testbed().await;
    let key = tb
        .admin()
        .create_setup_key(SetupKeySpec::reusable("k"))
        .unwrap();
    let (a, _) = register(&tb, &key.key, "alpha").await;
    a.logout().await.unwrap();
    assert!(tb.admin().list_peers().is_empty());
    // A second logout ("not found") is still success.
    a.logout().await.unwrap();
}

#[tokio::test]
async fn undecryptable_requests_are_invalid_argument() {
    use netbird_agent::proto::management::management_service_client::ManagementServiceClient;
    let tb = testbed().await;
    let mut raw = ManagementServiceClient::connect(tb.management_url())
        .await
        .unwrap();
    let e = raw
        .login(pb::EncryptedMessage {
            wg_pub_key: "garbage".into(),
            body: vec![1, 2, 3],
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = raw
        .login(pb::EncryptedMessage {
            wg_pub_key: PrivateKey::generate().public_key().to_base64(),
            body: vec![0; 64],
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}
