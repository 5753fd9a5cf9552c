//! Root-only library tests of the userspace device in network namespaces: custom per-peer paths
//! (two devices joined only by `PeerPath` + `inject_datagram`, no UDP between them), the
//! foreign-datagram hand-off and `send_foreign` on the shared socket, garbage resistance, and
//! peer churn. Skipped with a printed reason when not root or `ip`/`ping` are
//! missing.

use netbird_agent::crypto::{PrivateKey, PublicKey};
use netbird_agent::wg::userspace::{Options, PeerPath, UserspaceDevice};
use netbird_agent::wg::{link, PeerConfig, WgDevice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::Duration;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    ["ip", "ping"]
        .iter()
        .find(|t| !have(t))
        .map(|t| format!("missing tool {t}"))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace deleted on drop.
struct Netns(String);
impl Netns {
    fn new() -> Netns {
        let name = format!(
            "nbwp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip")
            .success());
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    fn run(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
    /// Runs `f` on a new thread that has entered this namespace (threads it spawns inherit it).
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            // SAFETY: setns on a valid namespace descriptor affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }
}
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A path that hands datagrams straight to another device, as a relay connection would.
struct DirectPath {
    to: Mutex<Weak<UserspaceDevice>>,
    sent: AtomicU32,
}
impl PeerPath for DirectPath {
    fn send(&self, d: &[u8]) -> std::io::Result<()> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        // Take the target out of the lock first: injecting may call back into this path
        // (a handshake answer) on the same thread.
        let dev = self.to.lock().expect("lock").upgrade();
        if let Some(dev) = dev {
            dev.inject_datagram(d);
        }
        Ok(())
    }
}

fn make_dev(ns: &Netns, ifname: &str, addr: &str) -> Arc<UserspaceDevice> {
    let (ifname, addr) = (ifname.to_string(), addr.to_string());
    ns.within(move || {
        let d = UserspaceDevice::create(&ifname, Options::default()).expect("device");
        link::configure(&ifname, &[addr.parse().expect("cidr")], 1420).expect("link");
        d
    })
}

fn peer(key: PublicKey, ip: &str) -> PeerConfig {
    PeerConfig {
        public_key: key,
        allowed_ips: vec![ip.parse().expect("net")],
        preshared_key: None,
        endpoint: None,
        persistent_keepalive: 0,
    }
}

#[test]
fn devices_joined_only_by_custom_paths_pass_traffic() {
    if let Some(r) = skip_reason() {
        println!("skipped: {r}");
        return;
    }
    let (n1, n2) = (Netns::new(), Netns::new());
    let a = make_dev(&n1, "nbpa0", "100.64.33.1/24");
    let b = make_dev(&n2, "nbpb0", "100.64.33.2/24");
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    a.configure(Some(&ka), None, None).expect("configure a");
    b.configure(Some(&kb), None, None).expect("configure b");
    a.upsert_peer(&peer(kb.public_key(), "100.64.33.2/32"))
        .expect("peer");
    b.upsert_peer(&peer(ka.public_key(), "100.64.33.1/32"))
        .expect("peer");
    let pa = Arc::new(DirectPath {
        to: Mutex::new(Arc::downgrade(&b)),
        sent: AtomicU32::new(0),
    });
    let pb = Arc::new(DirectPath {
        to: Mutex::new(Arc::downgrade(&a)),
        sent: AtomicU32::new(0),
    });
    a.set_peer_path(&kb.public_key(), Some(pa.clone()))
        .expect("path a");
    b.set_peer_path(&ka.public_key(), Some(pb.clone()))
        .expect("path b");
    assert!(a
        .set_peer_path(&PrivateKey::generate().public_key(), None)
        .is_err());

    let pinged = n1.run(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "100.64.33.2"]);
    assert!(
        pinged,
        "ping over custom paths failed: a {:?} sent {} / b {:?} sent {}",
        a.counters(),
        pa.sent.load(Ordering::Relaxed),
        b.counters(),
        pb.sent.load(Ordering::Relaxed)
    );
    assert!(n2.run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "100.64.33.1"]));
    assert!(pa.sent.load(Ordering::Relaxed) >= 4);
    assert!(pb.sent.load(Ordering::Relaxed) >= 4);
    let st = a.state().expect("state");
    assert!(st.peers[0].last_handshake.is_some());
    assert!(st.peers[0].rx_bytes > 0 && st.peers[0].tx_bytes > 0);

    // Removing the path leaves the peer without endpoint: traffic stops, nothing panics.
    a.set_peer_path(&kb.public_key(), None).expect("clear path");
    assert!(!n1.run(&["ping", "-c", "1", "-W", "1", "100.64.33.2"]));
    a.close().expect("close");
    b.close().expect("close");
    assert!(
        !n1.run(&["ip", "link", "show", "nbpa0"]),
        "interface not removed"
    );
}

#[test]
fn foreign_datagrams_reach_handler_and_garbage_is_counted() {
    if let Some(r) = skip_reason() {
        println!("skipped: {r}");
        return;
    }
    let ns = Netns::new();
    let dev = make_dev(&ns, "nbpf0", "100.64.34.1/24");
    dev.configure(Some(&PrivateKey::generate()), Some(0), None)
        .expect("key");
    let port = dev.listen_port();
    assert_ne!(port, 0);
    let (tx, rx) = mpsc::channel::<(Vec<u8>, SocketAddr)>();
    let tx = Mutex::new(tx);
    dev.set_foreign_handler(Some(Arc::new(move |d: &[u8], from: SocketAddr| {
        let _ = tx.lock().map(|t| t.send((d.to_vec(), from)));
    })));
    let d2 = dev.clone();
    let (got, reply, junk_counts) = ns.within(move || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        stun.extend_from_slice(&[9u8; 12]);
        s.send_to(&stun, ("127.0.0.1", port)).expect("send");
        let got = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("handler got STUN");
        d2.send_foreign(b"pong-from-wg-port", got.1)
            .expect("send_foreign");
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).expect("reply");
        assert_eq!(from.port(), port, "reply must come from the WireGuard port");
        // Garbage: bad WireGuard messages of every type, unknown peers, oversized-looking junk.
        for t in 1u8..=4 {
            for len in [32usize, 92, 148, 1500] {
                let mut d = vec![0xA5u8; len];
                d[..4].copy_from_slice(&[t, 0, 0, 0]);
                s.send_to(&d, ("127.0.0.1", port)).expect("garbage");
            }
        }
        s.send_to(b"nb", ("127.0.0.1", port)).expect("punch");
        std::thread::sleep(Duration::from_millis(300));
        let c = d2.counters();
        (
            got,
            buf[..n].to_vec(),
            (
                c.rx_invalid.load(Ordering::Relaxed),
                c.rx_unknown_peer.load(Ordering::Relaxed),
                c.rx_foreign.load(Ordering::Relaxed),
            ),
        )
    });
    assert_eq!(got.0[4..8], [0x21, 0x12, 0xA4, 0x42]);
    assert_eq!(reply, b"pong-from-wg-port");
    let (invalid, unknown, foreign) = junk_counts;
    assert_eq!(
        invalid + unknown,
        16,
        "every garbage datagram dropped and counted"
    );
    assert_eq!(foreign, 2, "STUN and the punch went to the handler");
    assert!(dev.state().is_ok(), "device still answers");
}

#[test]
fn churn_of_peer_changes_keeps_table_consistent() {
    if let Some(r) = skip_reason() {
        println!("skipped: {r}");
        return;
    }
    let ns = Netns::new();
    let dev = make_dev(&ns, "nbpc0", "100.64.35.1/16");
    dev.configure(Some(&PrivateKey::generate()), None, None)
        .expect("key");
    // Random bytes stand in for public keys: the device never needs them to be valid points.
    let keys: Vec<PublicKey> = (0..3_000).map(|_| PublicKey(rand::random())).collect();
    for (i, k) in keys.iter().enumerate() {
        let ip = std::net::Ipv4Addr::from(0x6440_0000u32 + i as u32 + 2);
        dev.upsert_peer(&PeerConfig {
            persistent_keepalive: 25,
            endpoint: Some(SocketAddr::from(([198, 18, 1, 1], 51820))),
            ..peer(*k, &format!("{ip}/32"))
        })
        .expect("add");
    }
    // 500 changes: move allowed IPs, change keepalive, remove and re-add.
    for i in 0..500usize {
        let k = keys[i * 5];
        match i % 3 {
            0 => dev.remove_peer(&k).expect("remove"),
            1 => dev
                .upsert_peer(&peer(k, &format!("10.{}.{}.0/24", i / 256, i % 256)))
                .expect("update"),
            _ => dev.upsert_peer(&peer(k, "100.127.0.0/16")).expect("readd"),
        }
    }
    let st = dev.state().expect("state");
    let removed = (0..500).filter(|i| i % 3 == 0).count();
    assert_eq!(st.peers.len(), 3_000 - removed);
    // 100.127.0.0/16 was moved between peers: exactly one owns it at the end.
    let owners = st
        .peers
        .iter()
        .filter(|p| p.allowed_ips.contains(&"100.127.0.0/16".parse().unwrap()))
        .count();
    assert_eq!(owners, 1);
    dev.close().expect("close");
}

/// Like [`DirectPath`], remembering the WireGuard message type of every datagram.
struct TypedPath {
    inner: DirectPath,
    types: Mutex<Vec<u8>>,
}
impl PeerPath for TypedPath {
    fn send(&self, d: &[u8]) -> std::io::Result<()> {
        if let Some(t) = d.first() {
            self.types.lock().expect("lock").push(*t);
        }
        self.inner.send(d)
    }
}

#[test]
fn held_side_answers_but_does_not_initiate() {
    if let Some(r) = skip_reason() {
        println!("skipped: {r}");
        return;
    }
    let (n1, n2) = (Netns::new(), Netns::new());
    let a = make_dev(&n1, "nbha0", "100.64.35.1/24");
    let b = make_dev(&n2, "nbhb0", "100.64.35.2/24");
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    a.configure(Some(&ka), None, None).expect("configure a");
    b.configure(Some(&kb), None, None).expect("configure b");
    a.upsert_peer(&peer(kb.public_key(), "100.64.35.2/32"))
        .expect("peer");
    b.upsert_peer(&peer(ka.public_key(), "100.64.35.1/32"))
        .expect("peer");
    let typed = |to: &Arc<UserspaceDevice>| {
        Arc::new(TypedPath {
            inner: DirectPath {
                to: Mutex::new(Arc::downgrade(to)),
                sent: AtomicU32::new(0),
            },
            types: Mutex::new(Vec::new()),
        })
    };
    let (pa, pb) = (typed(&b), typed(&a));
    a.set_peer_path(&kb.public_key(), Some(pa.clone()))
        .expect("path a");
    b.set_peer_path(&ka.public_key(), Some(pb.clone()))
        .expect("path b");
    // B is the non-controller: its own handshakes are held back.
    b.hold_initiations(&ka.public_key(), Duration::from_secs(60));
    b.initiate_handshake(&ka.public_key());
    assert!(
        !n2.run(&["ping", "-c", "1", "-W", "1", "100.64.35.1"]),
        "B must not have started a handshake"
    );
    assert!(
        !pb.types.lock().expect("lock").contains(&1),
        "B sent an initiation while held: {:?}",
        pb.types.lock().expect("lock")
    );
    // The controller starts it; B answers, and B's traffic flows.
    a.initiate_handshake(&kb.public_key());
    assert!(n2.run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "100.64.35.1"]));
    let b_sent = pb.types.lock().expect("lock").clone();
    assert!(b_sent.contains(&2), "B answered: {b_sent:?}");
    assert!(!b_sent.contains(&1), "B never initiated: {b_sent:?}");
    a.close().expect("close");
    b.close().expect("close");
}

#[test]
fn traffic_without_a_path_is_reported_and_a_reset_session_handshakes_again() {
    if let Some(r) = skip_reason() {
        println!("skipped: {r}");
        return;
    }
    let (n1, n2) = (Netns::new(), Netns::new());
    let a = make_dev(&n1, "nbia0", "100.64.36.1/24");
    let b = make_dev(&n2, "nbib0", "100.64.36.2/24");
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    a.configure(Some(&ka), None, None).expect("configure a");
    b.configure(Some(&kb), None, None).expect("configure b");
    a.upsert_peer(&peer(kb.public_key(), "100.64.36.2/32"))
        .expect("peer");
    b.upsert_peer(&peer(ka.public_key(), "100.64.36.1/32"))
        .expect("peer");
    let pa = Arc::new(DirectPath {
        to: Mutex::new(Arc::downgrade(&b)),
        sent: AtomicU32::new(0),
    });
    let pb = Arc::new(DirectPath {
        to: Mutex::new(Arc::downgrade(&a)),
        sent: AtomicU32::new(0),
    });
    a.set_peer_path(&kb.public_key(), Some(pa.clone()))
        .expect("path a");
    b.set_peer_path(&ka.public_key(), Some(pb.clone()))
        .expect("path b");
    let woken = Arc::new(AtomicU32::new(0));
    let w = woken.clone();
    let kb_pub = kb.public_key();
    a.set_activity_handler(Some(Arc::new(move |k: &PublicKey| {
        if *k == kb_pub {
            w.fetch_add(1, Ordering::Relaxed);
        }
    })));
    assert!(n1.run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "100.64.36.2"]));
    assert_eq!(
        woken.load(Ordering::Relaxed),
        0,
        "a peer with a path is not reported"
    );
    let first = a.state().expect("state").peers[0].last_handshake;
    assert!(first.is_some());

    // Path and endpoint gone: traffic goes nowhere and is reported.
    a.clear_peer_route(&kb.public_key());
    assert!(!n1.run(&["ping", "-c", "1", "-W", "1", "100.64.36.2"]));
    assert!(
        woken.load(Ordering::Relaxed) >= 1,
        "traffic for a pathless peer reported"
    );

    // B forgets A (as an idle lazy peer does); A resets its session and gets a path again:
    // the next packet starts a fresh handshake and gets through.
    b.reset_session(&ka.public_key());
    a.reset_session(&kb.public_key());
    std::thread::sleep(Duration::from_millis(1100));
    a.set_peer_path(&kb.public_key(), Some(pa.clone()))
        .expect("path again");
    assert!(n1.run(&["ping", "-c", "1", "-W", "2", "100.64.36.2"]));
    let second = a.state().expect("state").peers[0].last_handshake;
    assert!(second > first, "a new handshake: {first:?} -> {second:?}");
    a.close().expect("close");
    b.close().expect("close");
}
