//! Relay client against the testbed relay server over loopback WebSocket.
#![cfg(feature = "testbed")]

use futures::{SinkExt, StreamExt};
use netbird_agent::crypto::{PrivateKey, PublicKey};
use netbird_agent::relay::auth;
use netbird_agent::relay::messages::{self, PeerId, ServerMsg};
use netbird_agent::relay::{RelayClient, RelayConfig, RelayError, RelayState, RelayToken};
use netbird_agent::signal::backoff::Backoff;
use netbird_agent::testbed::relay_server::{self, RelayServerHandle, RelayServerOptions};
use std::time::Duration;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-relay-secret";
/// Guard against hangs only; not a speed assertion.
const WAIT: Duration = Duration::from_secs(30);

async fn server() -> RelayServerHandle {
    relay_server::start("127.0.0.1:0".parse().unwrap(), SECRET, None)
        .await
        .unwrap()
}

fn config(server: &RelayServerHandle) -> RelayConfig {
    let mut c = RelayConfig::new(
        server.url(),
        relay_server::mint_token(SECRET, Duration::from_secs(3600)),
    );
    c.backoff = Backoff::new(
        Duration::from_millis(50),
        2.0,
        0.5,
        Duration::from_millis(500),
    );
    c
}

async fn client(server: &RelayServerHandle) -> (PublicKey, RelayClient) {
    let key = PrivateKey::generate().public_key();
    let c = RelayClient::connect(config(server), &key).await.unwrap();
    (key, c)
}

#[tokio::test]
async fn two_clients_exchange_datagrams_both_ways() {
    let srv = server().await;
    let (ka, a) = client(&srv).await;
    let (kb, b) = client(&srv).await;
    assert_eq!(a.instance_url(), srv.instance_url());
    assert_eq!(a.status().borrow().state, RelayState::Connected);
    assert_eq!(
        a.status().borrow().server_ip,
        Some("127.0.0.1".parse().unwrap())
    );

    let (ca, cb) = tokio::join!(a.open(&kb), b.open(&ka));
    let (mut ca, mut cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(ca.peer_id(), PeerId::from_public_key(&kb));

    for i in 0..10u8 {
        ca.send(&[i; 100]).await.unwrap();
        let got = timeout(WAIT, cb.recv()).await.unwrap().unwrap();
        assert_eq!(got, vec![i; 100]);
        cb.sender().send(&[i, i]).await.unwrap();
        let got = timeout(WAIT, ca.recv()).await.unwrap().unwrap();
        assert_eq!(got, vec![i, i]);
    }
    // A payload as large as a relay message allows still goes through.
    let big = vec![7u8; messages::MAX_MESSAGE - messages::TRANSPORT_HEADER];
    ca.send(&big).await.unwrap();
    assert_eq!(timeout(WAIT, cb.recv()).await.unwrap().unwrap(), big);
    assert!(matches!(
        ca.send(&[0; messages::MAX_MESSAGE]).await,
        Err(RelayError::TooLarge(_))
    ));
    // Opening the same peer twice is refused.
    assert!(matches!(a.open(&kb).await, Err(RelayError::AlreadyOpen(_))));
}

#[tokio::test]
async fn bad_tokens_are_rejected() {
    let srv = server().await;
    let key = PrivateKey::generate().public_key();

    let mut wrong_secret = config(&srv);
    wrong_secret.token = relay_server::mint_token("not-the-secret", Duration::from_secs(3600));
    let err = RelayClient::connect(wrong_secret, &key)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RelayError::AuthRejected), "{err}");

    let mut expired = config(&srv);
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60;
    expired.token = auth::mint(SECRET, past);
    let err = RelayClient::connect(expired, &key).await.err().unwrap();
    assert!(matches!(err, RelayError::AuthRejected), "{err}");

    let mut garbage = config(&srv);
    garbage.token = RelayToken {
        payload: "1900000000".into(),
        signature: "%%% not base64".into(),
    };
    let err = RelayClient::connect(garbage, &key).await.err().unwrap();
    assert!(matches!(err, RelayError::Token(_)), "{err}");
    assert_eq!(srv.peer_count(), 0);

    // The good token still works.
    RelayClient::connect(config(&srv), &key).await.unwrap();
}

#[tokio::test]
async fn health_checks_are_answered_and_silent_clients_cut() {
    let opts = RelayServerOptions {
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let srv = relay_server::start_with("127.0.0.1:0".parse().unwrap(), SECRET, None, opts)
        .await
        .unwrap();

    // A raw client that authenticates and never answers is cut by the server.
    let (mut raw, _) = tokio_tungstenite::connect_async(format!("ws://{}/relay", srv.addr()))
        .await
        .unwrap();
    let token = relay_server::mint_token(SECRET, Duration::from_secs(60));
    let id = PeerId::from_key_text("silent");
    raw.send(Message::Binary(
        messages::auth(&id, &token.to_wire().unwrap())
            .unwrap()
            .into(),
    ))
    .await
    .unwrap();
    let mut health_checks = 0;
    let cut = timeout(WAIT, async {
        while let Some(Ok(m)) = raw.next().await {
            if let Message::Binary(b) = m {
                if messages::parse_server(&b) == Ok(ServerMsg::HealthCheck) {
                    health_checks += 1;
                }
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "silent client was not cut");
    assert!(health_checks >= 1);

    // Our client echoes every check, so it survives many windows.
    let (_k, c) = client(&srv).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = c.status().borrow().clone();
    assert_eq!(st.state, RelayState::Connected);
    assert_eq!(st.connects, 1);
    assert_eq!(srv.peer_count(), 1);
}

#[tokio::test]
async fn client_reconnects_when_health_checks_stop() {
    // Default server: first health check after 25 s, longer than the client's window here.
    let srv = server().await;
    let key = PrivateKey::generate().public_key();
    let mut cfg = config(&srv);
    cfg.health_timeout = Duration::from_millis(300);
    let c = RelayClient::connect(cfg, &key).await.unwrap();
    let mut st = c.status();
    timeout(
        WAIT,
        st.wait_for(|s| s.connects >= 2 && s.state == RelayState::Connected),
    )
    .await
    .expect("no reconnect")
    .unwrap();
}

#[tokio::test]
async fn peer_going_offline_closes_the_conn() {
    let srv = server().await;
    let (ka, a) = client(&srv).await;
    let (kb, b) = client(&srv).await;
    let (ca, cb) = tokio::join!(a.open(&kb), b.open(&ka));
    let (mut ca, _cb) = (ca.unwrap(), cb.unwrap());
    b.close().await;
    let end = timeout(WAIT, ca.recv()).await.expect("conn not closed");
    assert_eq!(end, None);
    assert!(ca.is_closed());
    assert!(matches!(ca.send(b"x").await, Err(RelayError::Closed)));
    // A stays connected to the relay and can wait for B again.
    assert_eq!(a.status().borrow().state, RelayState::Connected);
}

#[tokio::test]
async fn early_message_is_delivered_when_the_conn_opens() {
    let srv = server().await;
    let (ka, a) = client(&srv).await;
    let (kb, b) = client(&srv).await;
    let ca = a.open(&kb).await.unwrap();
    ca.send(b"early").await.unwrap();
    // Give the datagram time to reach B's client before B opens (B buffers it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut cb = b.open(&ka).await.unwrap();
    let got = timeout(WAIT, cb.recv()).await.unwrap().unwrap();
    assert_eq!(got, b"early");
}

#[tokio::test]
async fn open_times_out_for_an_absent_peer() {
    let srv = server().await;
    let key = PrivateKey::generate().public_key();
    let mut cfg = config(&srv);
    cfg.open_timeout = Duration::from_millis(300);
    let c = RelayClient::connect(cfg, &key).await.unwrap();
    let absent = PrivateKey::generate().public_key();
    let err = c.open(&absent).await.err().unwrap();
    assert!(matches!(err, RelayError::Timeout("open")), "{err}");
    // The peer arriving later can be opened then.
    let mut cfg = config(&srv);
    cfg.open_timeout = Duration::from_secs(30);
    let late = RelayClient::connect(cfg, &absent).await.unwrap();
    let (r1, r2) = tokio::join!(c.open(&absent), late.open(&key));
    r1.unwrap();
    r2.unwrap();
}

#[tokio::test]
async fn server_stop_closes_clients() {
    let mut srv = server().await;
    let (_k, c) = client(&srv).await;
    let mut st = c.status();
    srv.stop().await;
    timeout(WAIT, st.wait_for(|s| s.state != RelayState::Connected))
        .await
        .expect("client did not notice")
        .unwrap();
}

#[tokio::test]
async fn rels_urls_speak_tls() {
    // The testbed speaks plain WebSocket, so a TLS handshake to it must fail cleanly (this also
    // proves the TLS stack initialises without a process-wide crypto provider being set).
    let srv = server().await;
    let mut cfg = config(&srv);
    cfg.url = format!("rels://{}", srv.addr());
    let key = PrivateKey::generate().public_key();
    let err = RelayClient::connect(cfg, &key).await.err().unwrap();
    assert!(matches!(err, RelayError::Ws(_)), "{err}");
}

#[tokio::test]
async fn connect_first_skips_dead_relays() {
    let srv = server().await;
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("rel://{}", dead.local_addr().unwrap());
    drop(dead);
    let key = PrivateKey::generate().public_key();
    let urls = vec![
        dead_url.clone(),
        "http://not-a-relay".to_string(),
        srv.url(),
    ];
    let c = RelayClient::connect_first(&urls, config(&srv), &key)
        .await
        .unwrap();
    assert_eq!(c.instance_url(), srv.instance_url());
    let err = RelayClient::connect_first(&[dead_url], config(&srv), &key)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RelayError::Ws(_)), "{err}");
}

#[tokio::test]
async fn home_relay_reconnects_after_a_relay_restart() {
    let mut srv = server().await;
    let (ka, a) = client(&srv).await;
    let (kb, b) = client(&srv).await;
    let (ca, cb) = tokio::join!(a.open(&kb), b.open(&ka));
    let (mut ca, _cb) = (ca.unwrap(), cb.unwrap());

    srv.restart().await.unwrap();
    // The relay dropped mid-session: the conn ends, the client comes back by itself.
    assert_eq!(
        timeout(WAIT, ca.recv()).await.expect("conn not closed"),
        None
    );
    for c in [&a, &b] {
        let mut st = c.status();
        timeout(
            WAIT,
            st.wait_for(|s| s.connects >= 2 && s.state == RelayState::Connected),
        )
        .await
        .expect("no reconnect")
        .unwrap();
    }
    drop((ca, _cb));
    let (ca, cb) = tokio::join!(a.open(&kb), b.open(&ka));
    let (ca, mut cb) = (ca.unwrap(), cb.unwrap());
    ca.send(b"again").await.unwrap();
    assert_eq!(timeout(WAIT, cb.recv()).await.unwrap().unwrap(), b"again");
}

/// Reads until the server closes; true if it did within the guard time.
async fn closed_by_server<S>(ws: &mut S) -> bool
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    timeout(WAIT, async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn server_refuses_bad_paths_and_bad_frames() {
    let srv = server().await;
    // Only /relay upgrades.
    let wrong = tokio_tungstenite::connect_async(format!("ws://{}/other", srv.addr())).await;
    assert!(wrong.is_err());

    // A first message that is not auth is refused.
    let url = format!("ws://{}/relay", srv.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let to = PeerId::from_key_text("x");
    ws.send(Message::Binary(messages::transport(&to, b"hi").into()))
        .await
        .unwrap();
    assert!(closed_by_server(&mut ws).await);

    // After a good auth, a frame with a bad version closes the connection.
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let token = relay_server::mint_token(SECRET, Duration::from_secs(60));
    ws.send(Message::Binary(
        messages::auth(&PeerId::from_key_text("y"), &token.to_wire().unwrap())
            .unwrap()
            .into(),
    ))
    .await
    .unwrap();
    let first = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(
        messages::parse_server(&first.into_data()),
        Ok(ServerMsg::AuthResponse(srv.instance_url().to_string()))
    );
    ws.send(Message::Binary(vec![2u8, 3].into())).await.unwrap();
    assert!(closed_by_server(&mut ws).await);
    timeout(WAIT, async {
        while srv.peer_count() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("closed peer still registered");
}

#[tokio::test]
async fn a_rotated_token_is_used_for_the_next_reconnect() {
    let mut srv = server().await;
    let short = |key: PublicKey| {
        let mut c = config(&srv);
        c.token = relay_server::mint_token(SECRET, Duration::from_secs(1));
        async move { RelayClient::connect(c, &key).await.unwrap() }
    };
    let rotated = short(PrivateKey::generate().public_key()).await;
    let stale = short(PrivateKey::generate().public_key()).await;
    // Management sends fresh credentials; only one client gets them.
    rotated.update_token(relay_server::mint_token(SECRET, Duration::from_secs(3600)));
    // Let the first token expire, then drop every connection.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    srv.restart().await.unwrap();
    let mut st = rotated.status();
    timeout(
        WAIT,
        st.wait_for(|s| s.connects >= 2 && s.state == RelayState::Connected),
    )
    .await
    .expect("the client with the rotated token reconnects")
    .unwrap();
    // The other one keeps failing with its expired token.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = stale.status().borrow().clone();
    assert_eq!(s.connects, 1, "{s:?}");
    assert_ne!(s.state, RelayState::Connected);
}
