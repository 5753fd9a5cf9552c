//! Signal client against the testbed signal server over loopback.
#![cfg(feature = "testbed")]

use netbird_agent::crypto::PrivateKey;
use netbird_agent::proto::signalexchange::signal_exchange_client::SignalExchangeClient;
use netbird_agent::proto::signalexchange::signal_exchange_server::{
    SignalExchange, SignalExchangeServer,
};
use netbird_agent::proto::signalexchange::EncryptedMessage;
use netbird_agent::signal::{
    OfferAnswer, ReceivedSignal, SignalClient, SignalConfig, SignalMessage, SignalState,
    SignalStatus,
};
use netbird_agent::testbed::signal_server::{self, SignalServerHandle};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

/// Guard against hangs only; not a speed assertion.
const WAIT: Duration = Duration::from_secs(30);

fn config(server: &SignalServerHandle) -> SignalConfig {
    let mut c = SignalConfig::new(server.addr().to_string(), false);
    // Fast reconnects keep the restart test short.
    c.backoff = netbird_agent::signal::backoff::Backoff::new(
        Duration::from_millis(50),
        1.7,
        1.0,
        Duration::from_millis(500),
    );
    c
}

async fn wait_status(rx: &mut watch::Receiver<SignalStatus>, f: impl Fn(&SignalStatus) -> bool) {
    timeout(WAIT, rx.wait_for(|s| f(s)))
        .await
        .expect("status wait timed out")
        .expect("status channel closed");
}

async fn recv(rx: &mut mpsc::Receiver<ReceivedSignal>) -> ReceivedSignal {
    timeout(WAIT, rx.recv())
        .await
        .expect("receive timed out")
        .expect("channel closed")
}

fn offer(ufrag: &str) -> OfferAnswer {
    OfferAnswer {
        ufrag: ufrag.into(),
        pwd: "abcdefghijklmnopqrstuvwxyzABCDEF".into(),
        wg_listen_port: 51820,
        version: "test".into(),
        relay_server_address: Some("rel://127.0.0.1:1234".into()),
        session_id: Some([1, 2, 3, 4, 5]),
        relay_server_ip: None,
        rosenpass: None,
    }
}

struct Peer {
    key: PrivateKey,
    client: SignalClient,
    rx: mpsc::Receiver<ReceivedSignal>,
    status: watch::Receiver<SignalStatus>,
}

async fn peer(server: &SignalServerHandle) -> Peer {
    let key = PrivateKey::generate();
    let (client, rx) = SignalClient::start(config(server), key.clone()).unwrap();
    let mut status = client.status();
    wait_status(&mut status, |s| s.state == SignalState::Connected).await;
    Peer {
        key,
        client,
        rx,
        status,
    }
}

async fn exchange(a: &mut Peer, b: &mut Peer, tag: &str) {
    let (ak, bk) = (a.key.public_key(), b.key.public_key());
    a.client
        .send(&bk, &SignalMessage::Offer(offer(tag)))
        .await
        .unwrap();
    let got = recv(&mut b.rx).await;
    assert_eq!(got.from, ak);
    assert_eq!(got.message, SignalMessage::Offer(offer(tag)));

    let answer = OfferAnswer {
        relay_server_address: None,
        ..offer(tag)
    };
    b.client
        .send(&ak, &SignalMessage::Answer(answer.clone()))
        .await
        .unwrap();
    let got = recv(&mut a.rx).await;
    assert_eq!(got.from, bk);
    assert_eq!(got.message, SignalMessage::Answer(answer));

    let cand = format!("1 1 udp 2130706431 127.0.0.1 51820 typ host ufrag {tag}");
    a.client
        .sender()
        .send(&bk, &SignalMessage::Candidate(cand.clone()))
        .await
        .unwrap();
    let got = recv(&mut b.rx).await;
    assert_eq!(got.message, SignalMessage::Candidate(cand));
}

#[tokio::test]
async fn offer_answer_candidate_roundtrip() {
    let server = signal_server::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut a = peer(&server).await;
    let mut b = peer(&server).await;
    assert_eq!(server.peer_count(), 2);
    exchange(&mut a, &mut b, "first").await;
}

#[tokio::test]
async fn clients_reconnect_after_server_restart() {
    let mut server = signal_server::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut a = peer(&server).await;
    let mut b = peer(&server).await;
    exchange(&mut a, &mut b, "before").await;

    server.restart().await.unwrap();
    for p in [&mut a, &mut b] {
        wait_status(&mut p.status, |s| {
            s.registrations >= 2 && s.state == SignalState::Connected
        })
        .await;
    }
    exchange(&mut a, &mut b, "after").await;
}

#[tokio::test]
async fn malformed_messages_are_dropped_and_the_stream_survives() {
    let server = signal_server::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let a = peer(&server).await;
    let mut b = peer(&server).await;
    let (ak, bk) = (a.key.public_key(), b.key.public_key());

    let mut raw = SignalExchangeClient::connect(format!("http://{}", server.addr()))
        .await
        .unwrap();
    let garbage = [
        // Not a key at all.
        EncryptedMessage {
            key: "not a key".into(),
            remote_key: bk.to_base64(),
            body: vec![1, 2, 3],
        },
        // Valid sender, body too short.
        EncryptedMessage {
            key: ak.to_base64(),
            remote_key: bk.to_base64(),
            body: vec![0; 8],
        },
        // Valid sender, random body that does not open.
        EncryptedMessage {
            key: ak.to_base64(),
            remote_key: bk.to_base64(),
            body: vec![0x5a; 200],
        },
        // Opens, but is not a Body.
        EncryptedMessage {
            key: ak.to_base64(),
            remote_key: bk.to_base64(),
            body: netbird_agent::crypto::seal(&[0xff; 5], &bk, &a.key),
        },
    ];
    for g in garbage {
        raw.send(g).await.unwrap();
    }
    a.client.send(&bk, &SignalMessage::GoIdle).await.unwrap();
    let got = recv(&mut b.rx).await;
    assert_eq!(got.from, ak);
    assert_eq!(got.message, SignalMessage::GoIdle);
    assert_eq!(b.status.borrow().state, SignalState::Connected);
    assert_eq!(b.status.borrow().registrations, 1);
}

#[tokio::test]
async fn newer_registration_replaces_older() {
    let server = signal_server::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let a = peer(&server).await;
    let key = PrivateKey::generate();
    let (old, _old_rx) = SignalClient::start(config(&server), key.clone()).unwrap();
    let mut old_status = old.status();
    wait_status(&mut old_status, |s| s.state == SignalState::Connected).await;
    let (new, mut new_rx) = SignalClient::start(config(&server), key.clone()).unwrap();
    let mut new_status = new.status();
    wait_status(&mut new_status, |s| s.state == SignalState::Connected).await;
    // The older stream is ended by the newer registration.
    wait_status(&mut old_status, |s| s.state != SignalState::Connected).await;
    old.close().await;
    // `old` may have stolen the registration back before it closed; `new` then re-registers
    // after its backoff. Deliveries reach `new` once it holds the registration.
    let got = timeout(WAIT, async {
        loop {
            a.client
                .send(&key.public_key(), &SignalMessage::GoIdle)
                .await
                .unwrap();
            if let Ok(Some(m)) = timeout(Duration::from_millis(300), new_rx.recv()).await {
                return m;
            }
        }
    })
    .await
    .expect("replacement never received");
    assert_eq!(got.message, SignalMessage::GoIdle);
}

#[tokio::test]
async fn heartbeat_keeps_a_quiet_stream_registered() {
    let server = signal_server::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut c = config(&server);
    c.heartbeat_after = Duration::from_millis(100);
    c.heartbeat_timeout = Duration::from_secs(5);
    let (client, mut rx) = SignalClient::start(c, PrivateKey::generate()).unwrap();
    let mut status = client.status();
    wait_status(&mut status, |s| s.state == SignalState::Connected).await;
    // Several heartbeat rounds pass; each comes back, so the stream is never replaced.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = status.borrow().clone();
    assert_eq!(s.state, SignalState::Connected);
    assert_eq!(s.registrations, 1);
    // Self heartbeats are consumed by the client, not delivered.
    assert!(rx.try_recv().is_err());
}

/// A signal server that registers streams but delivers nothing (or omits the header).
struct BlackHole {
    send_header: bool,
}

#[tonic::async_trait]
impl SignalExchange for BlackHole {
    async fn send(
        &self,
        _req: tonic::Request<EncryptedMessage>,
    ) -> Result<tonic::Response<EncryptedMessage>, tonic::Status> {
        Ok(tonic::Response::new(EncryptedMessage::default()))
    }

    type ConnectStreamStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<EncryptedMessage, tonic::Status>> + Send>,
    >;

    async fn connect_stream(
        &self,
        _req: tonic::Request<tonic::Streaming<EncryptedMessage>>,
    ) -> Result<tonic::Response<Self::ConnectStreamStream>, tonic::Status> {
        let mut resp =
            tonic::Response::new(Box::pin(futures::stream::pending()) as Self::ConnectStreamStream);
        if self.send_header {
            resp.metadata_mut().insert(
                "x-wiretrustee-peer-registered",
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        Ok(resp)
    }
}

async fn black_hole(send_header: bool) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SignalExchangeServer::new(BlackHole { send_header }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn fast_config(addr: std::net::SocketAddr) -> SignalConfig {
    let mut c = SignalConfig::new(addr.to_string(), false);
    c.backoff = netbird_agent::signal::backoff::Backoff::new(
        Duration::from_millis(50),
        1.7,
        1.0,
        Duration::from_millis(500),
    );
    c.heartbeat_after = Duration::from_millis(100);
    c.heartbeat_timeout = Duration::from_millis(200);
    c
}

#[tokio::test]
async fn unanswered_heartbeat_forces_reconnect() {
    let addr = black_hole(true).await;
    let (client, _rx) = SignalClient::start(fast_config(addr), PrivateKey::generate()).unwrap();
    let mut status = client.status();
    wait_status(&mut status, |s| s.registrations >= 3).await;
    let err = status.borrow().last_error.clone();
    // Between sessions the error names the heartbeat; while connected it is cleared.
    assert!(err.is_none() || err.unwrap().contains("heartbeat"));
}

#[tokio::test]
async fn missing_registered_header_is_a_failure() {
    let addr = black_hole(false).await;
    let (client, _rx) = SignalClient::start(fast_config(addr), PrivateKey::generate()).unwrap();
    let mut status = client.status();
    wait_status(&mut status, |s| {
        s.state == SignalState::Disconnected
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("confirm"))
    })
    .await;
    assert_eq!(status.borrow().registrations, 0);
}

#[tokio::test]
async fn tls_to_a_plaintext_server_fails_cleanly() {
    let server = signal_server::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut c = config(&server);
    c.tls = true;
    let (client, _rx) = SignalClient::start(c, PrivateKey::generate()).unwrap();
    let mut status = client.status();
    wait_status(&mut status, |s| {
        s.state == SignalState::Disconnected && s.last_error.is_some()
    })
    .await;
    assert_eq!(status.borrow().registrations, 0);
    assert_eq!(server.peer_count(), 0);
}

#[tokio::test]
async fn invalid_address_is_an_error() {
    let c = SignalConfig::new("bad host name:port", false);
    assert!(SignalClient::start(c, PrivateKey::generate()).is_err());
}
