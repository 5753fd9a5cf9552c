//! The TURN client against a real coturn (Debian's `turnserver`) on loopback: allocation with
//! NetBird-style REST credentials, rejected credentials, and datagrams relayed between two
//! allocations and between an allocation and a plain socket. Skipped when coturn is missing.

use netbird_agent::ice::turn::{TurnClient, TurnEvent};
use netbird_agent::testbed::coturn::Coturn;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

fn start_coturn() -> Option<Coturn> {
    if NEXT_PORT.load(Ordering::Relaxed) == 0 {
        NEXT_PORT.store(
            23478 + (std::process::id() % 1000) as u16 * 4,
            Ordering::Relaxed,
        );
    }
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    match Coturn::start(addr, "turn-test-secret") {
        Ok(c) => Some(c),
        Err(netbird_agent::testbed::coturn::CoturnError::Missing) => {
            println!("skipped: coturn (turnserver) is not installed");
            None
        }
        Err(e) => panic!("coturn did not start: {e}"),
    }
}

/// A TURN client with its own socket, driven synchronously.
struct Driven {
    client: TurnClient,
    sock: UdpSocket,
}

impl Driven {
    fn new(server: SocketAddr, user: String, pass: String) -> Driven {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.connect(server).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        Driven {
            client: TurnClient::new(server, user, pass, Instant::now()),
            sock,
        }
    }

    /// Runs I/O and timers for `dur`; returns events and relayed data received.
    fn pump(&mut self, dur: Duration) -> (Vec<TurnEvent>, Vec<(SocketAddr, Vec<u8>)>) {
        let end = Instant::now() + dur;
        let (mut events, mut data) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            while let Some(d) = self.client.poll_transmit() {
                self.sock.send(&d).expect("send");
            }
            if let Ok(n) = self.sock.recv(&mut buf) {
                if let Some(got) = self.client.handle_input(Instant::now(), &buf[..n]) {
                    data.push(got);
                }
            }
            if self
                .client
                .poll_timeout()
                .is_some_and(|t| t <= Instant::now())
            {
                self.client.handle_timeout(Instant::now());
            }
            while let Some(e) = self.client.poll_event() {
                events.push(e);
            }
        }
        (events, data)
    }

    fn allocate(&mut self) -> SocketAddr {
        let (events, _) = self.pump(Duration::from_millis(500));
        match events.first() {
            Some(TurnEvent::Allocated { relayed, .. }) => *relayed,
            other => panic!("no allocation: {other:?}"),
        }
    }

    fn send(&mut self, to: SocketAddr, data: &[u8]) {
        if let Some(d) = self.client.encode_to_peer(to, data, Instant::now()) {
            self.sock.send(&d).expect("send");
        }
    }
}

#[test]
fn allocations_relay_datagrams_both_ways() {
    let Some(turn) = start_coturn() else { return };
    let (user, pass) = turn.credentials(Duration::from_secs(600));
    let mut a = Driven::new(turn.addr(), user.clone(), pass.clone());
    let mut b = Driven::new(turn.addr(), user, pass);
    let ra = a.allocate();
    let rb = b.allocate();
    assert_eq!(ra.ip(), turn.addr().ip());
    assert_ne!(ra, rb);
    // Both sides need a permission for the other before anything passes; the first sends
    // install them, retries (as ICE does) get through.
    let mut got_b = Vec::new();
    let mut got_a = Vec::new();
    for i in 0..20u8 {
        a.send(rb, &[b'a', i]);
        b.send(ra, &[b'b', i]);
        got_b.extend(b.pump(Duration::from_millis(50)).1);
        got_a.extend(a.pump(Duration::from_millis(50)).1);
    }
    assert!(
        got_b.iter().any(|(from, d)| *from == ra && d[0] == b'a'),
        "B got nothing from A: {got_b:?}"
    );
    assert!(
        got_a.iter().any(|(from, d)| *from == rb && d[0] == b'b'),
        "A got nothing from B: {got_a:?}"
    );
    // Later datagrams travel as ChannelData (4-byte header) and still arrive intact.
    a.send(rb, b"late payload");
    let (_, late) = b.pump(Duration::from_millis(300));
    assert!(late.contains(&(ra, b"late payload".to_vec())), "{late:?}");
}

#[test]
fn a_plain_socket_reaches_the_allocation() {
    let Some(turn) = start_coturn() else { return };
    let (user, pass) = turn.credentials(Duration::from_secs(600));
    let mut a = Driven::new(turn.addr(), user, pass);
    let ra = a.allocate();
    let plain = UdpSocket::bind("127.0.0.1:0").expect("bind");
    plain
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let plain_addr = plain.local_addr().expect("addr");
    // Our send installs the permission for the plain socket's IP.
    a.send(plain_addr, b"hello plain");
    a.pump(Duration::from_millis(200));
    a.send(plain_addr, b"hello plain");
    let mut buf = [0u8; 64];
    let (n, from) = plain.recv_from(&mut buf).expect("relayed datagram");
    assert_eq!((&buf[..n], from), (&b"hello plain"[..], ra));
    plain.send_to(b"hello turn", ra).expect("send");
    let (_, data) = a.pump(Duration::from_millis(300));
    assert!(
        data.contains(&(plain_addr, b"hello turn".to_vec())),
        "{data:?}"
    );
}

#[test]
fn wrong_password_fails_the_allocation() {
    let Some(turn) = start_coturn() else { return };
    let (user, _) = turn.credentials(Duration::from_secs(600));
    let mut a = Driven::new(turn.addr(), user, "not-the-password".into());
    let (events, _) = a.pump(Duration::from_millis(500));
    assert_eq!(
        events,
        vec![TurnEvent::Failed("TURN credentials rejected".into())]
    );
    assert!(a.client.is_done());
}

#[test]
fn expired_credentials_are_refused() {
    let Some(turn) = start_coturn() else { return };
    let (user, pass) = netbird_agent::ice::turn::time_based_credentials(
        "turn-test-secret",
        Duration::ZERO,
        std::time::SystemTime::now() - Duration::from_secs(3600),
    );
    let mut a = Driven::new(turn.addr(), user, pass);
    let (events, _) = a.pump(Duration::from_millis(500));
    assert!(
        matches!(events.first(), Some(TurnEvent::Failed(_))),
        "{events:?}"
    );
}
