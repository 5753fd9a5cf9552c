//! A userspace WireGuard device: a TUN interface, boringtun's `noise::Tunn` per peer, one UDP
//! socket on the WireGuard port, and per-peer paths chosen by the connectivity layer (a UDP
//! address, or a custom sender such as a relayed connection). Blocking IO on dedicated
//! threads: one reads the TUN device, one the UDP socket, one drives the WireGuard timers.
//!
//! Garbage, packets for unknown peers and packets from outside a peer's allowed IPs are
//! dropped and counted, never a panic.

pub mod allowed;
pub mod dataplane;
pub mod tun;
pub mod uapi;
pub mod uapi_server;

use crate::connect::{PeerStats, TunnelDevice, WgPath};
use crate::crypto::{PrivateKey, PublicKey};
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

const MAX_PACKET: usize = 65_536;

/// Drop counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams that were not WireGuard or failed to decrypt.
    pub bad_datagrams: AtomicU64,
    /// Packets from the TUN device with no matching peer.
    pub no_route: AtomicU64,
    /// Decrypted packets whose source is outside the peer's allowed IPs.
    pub not_allowed: AtomicU64,
}

struct Peer {
    key: PublicKey,
    index: u32,
    tunn: Mutex<Tunn>,
    allowed: RwLock<Vec<IpNet>>,
    path: RwLock<Option<WgPath>>,
    keepalive: u16,
    psk: Option<[u8; 32]>,
}

struct Keys {
    private: x25519::StaticSecret,
    public: x25519::PublicKey,
}

struct Inner {
    keys: RwLock<Keys>,
    tun: tun::Tun,
    udp: RwLock<Arc<UdpSocket>>,
    fwmark: std::sync::atomic::AtomicU32,
    peers: RwLock<HashMap<PublicKey, Arc<Peer>>>,
    routes: RwLock<allowed::AllowedIps<PublicKey>>,
    raw_sink: RwLock<Option<crate::connect::RawSink>>,
    by_index: RwLock<HashMap<u32, Arc<Peer>>>,
    next_index: AtomicU32,
    running: AtomicBool,
    counters: Counters,
}

/// The userspace device; dropping it stops the threads and removes the interface.
pub struct UserspaceTunnel {
    inner: Arc<Inner>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    name: String,
}

/// Device errors.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The TUN device could not be created.
    #[error("cannot create TUN device {0}: {1}")]
    Tun(String, std::io::Error),
    /// The UDP socket could not be bound.
    #[error("cannot bind the WireGuard UDP socket: {0}")]
    Udp(std::io::Error),
    /// Interface configuration failed.
    #[error("configuring {0}: {1}")]
    Config(String, String),
}

impl UserspaceTunnel {
    /// Creates TUN device `name` and binds the UDP socket on `port` (a random free port if
    /// it is taken, as NetBird does).
    pub fn create(name: &str, port: u16, key: &PrivateKey) -> Result<UserspaceTunnel, TunnelError> {
        let tun = tun::Tun::create(name).map_err(|e| TunnelError::Tun(name.into(), e))?;
        let udp = match bind_udp(port) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!("WireGuard port {port} is busy; using a random port");
                bind_udp(0).map_err(TunnelError::Udp)?
            }
            Err(e) => return Err(TunnelError::Udp(e)),
        };
        let private = x25519::StaticSecret::from(*key.as_bytes());
        let public = x25519::PublicKey::from(&private);
        let inner = Arc::new(Inner {
            keys: RwLock::new(Keys { private, public }),
            tun,
            udp: RwLock::new(Arc::new(udp)),
            fwmark: std::sync::atomic::AtomicU32::new(0),
            peers: RwLock::new(HashMap::new()),
            routes: RwLock::new(allowed::AllowedIps::default()),
            raw_sink: RwLock::new(None),
            by_index: RwLock::new(HashMap::new()),
            next_index: AtomicU32::new(1),
            running: AtomicBool::new(true),
            counters: Counters::default(),
        });
        let mut threads = Vec::new();
        for (name, f) in [
            ("wg-tun", tun_loop as fn(Arc<Inner>)),
            ("wg-udp", udp_loop as fn(Arc<Inner>)),
            ("wg-timers", timer_loop as fn(Arc<Inner>)),
        ] {
            let i = inner.clone();
            let t = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(i))
                .map_err(|e| TunnelError::Tun(name.into(), e))?;
            threads.push(t);
        }
        Ok(UserspaceTunnel {
            inner,
            threads: Mutex::new(threads),
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The UDP port actually bound.
    pub fn port(&self) -> u16 {
        self.inner.udp().local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Drop counters.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Sets the interface address and MTU and brings it up.
    pub fn configure(&self, address: IpNet, mtu: u16) -> Result<(), TunnelError> {
        let run = |args: &[&str]| -> Result<(), TunnelError> {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| TunnelError::Config(self.name.clone(), e.to_string()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(TunnelError::Config(
                    self.name.clone(),
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ))
            }
        };
        run(&["link", "set", "dev", &self.name, "mtu", &mtu.to_string()])?;
        run(&["addr", "replace", &address.to_string(), "dev", &self.name])?;
        run(&["link", "set", "dev", &self.name, "up"])
    }
}

impl UserspaceTunnel {
    /// Stops the threads and deletes the interface. Idempotent.
    pub fn shutdown(&self) {
        if !self.inner.running.swap(false, Ordering::SeqCst) {
            return;
        }
        let threads: Vec<_> = self
            .threads
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", "dev", &self.name])
            .output();
    }
}

impl Drop for UserspaceTunnel {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind_udp(port: u16) -> std::io::Result<UdpSocket> {
    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    udp.set_read_timeout(Some(Duration::from_millis(200)))?;
    set_socket_buffers(&udp);
    Ok(udp)
}

fn set_socket_buffers(s: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 7 * 1024 * 1024;
    for opt in [
        libc::SO_RCVBUFFORCE,
        libc::SO_SNDBUFFORCE,
        libc::SO_RCVBUF,
        libc::SO_SNDBUF,
    ] {
        // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the stated size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl Inner {
    fn udp(&self) -> Arc<UdpSocket> {
        match self.udp.read() {
            Ok(u) => u.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    fn send(&self, peer: &Peer, data: &[u8]) {
        let path = peer.path.read().ok().and_then(|p| p.clone());
        match path {
            Some(WgPath::Udp(addr)) => {
                let _ = self.udp().send_to(data, addr);
            }
            Some(WgPath::Custom(f)) => f(data),
            None => {}
        }
    }

    fn route(&self, dst: IpAddr) -> Option<Arc<Peer>> {
        let key = *self.routes.read().ok()?.lookup(dst)?;
        self.peers.read().ok()?.get(&key).cloned()
    }

    fn set_routes(&self, key: &PublicKey, old: &[IpNet], new: &[IpNet]) {
        if let Ok(mut r) = self.routes.write() {
            for n in old {
                r.remove(*n, key);
            }
            for n in new {
                r.insert(*n, *key);
            }
        }
    }

    /// Decrypts one datagram for `peer` and writes what comes out.
    fn receive(&self, peer: &Peer, datagram: &[u8], from: Option<SocketAddr>) {
        let mut out = vec![0u8; MAX_PACKET];
        let Ok(mut tunn) = peer.tunn.lock() else {
            return;
        };
        let mut first = true;
        loop {
            let input: &[u8] = if first { datagram } else { &[] };
            first = false;
            match tunn.decapsulate(from.map(|a| a.ip()), input, &mut out) {
                TunnResult::Done => break,
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %peer.key, "dropped datagram: {e:?}");
                    self.counters.bad_datagrams.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                TunnResult::WriteToNetwork(b) => {
                    let b = b.to_vec();
                    self.send(peer, &b);
                }
                TunnResult::WriteToTunnelV4(b, src) => {
                    self.deliver(peer, b, IpAddr::V4(src));
                    break;
                }
                TunnResult::WriteToTunnelV6(b, src) => {
                    self.deliver(peer, b, IpAddr::V6(src));
                    break;
                }
            }
        }
    }

    fn deliver(&self, peer: &Peer, packet: &[u8], src: IpAddr) {
        let ok = peer
            .allowed
            .read()
            .map(|a| a.iter().any(|n| n.contains(&src)))
            .unwrap_or(false);
        if !ok {
            self.counters.not_allowed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !packet.is_empty() {
            let _ = self.tun.write(packet);
        }
    }
}

fn tun_loop(inner: Arc<Inner>) {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; MAX_PACKET + 64];
    while inner.running.load(Ordering::Relaxed) {
        let n = match inner.tun.read_timeout(&mut buf, 200) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("TUN read: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(dst) = Tunn::dst_address(&buf[..n]) else {
            continue;
        };
        let Some(peer) = inner.route(dst) else {
            inner.counters.no_route.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let packet = {
            let Ok(mut tunn) = peer.tunn.lock() else {
                continue;
            };
            match tunn.encapsulate(&buf[..n], &mut out) {
                TunnResult::WriteToNetwork(b) => Some(b.to_vec()),
                _ => None,
            }
        };
        if let Some(p) = packet {
            inner.send(&peer, &p);
        }
    }
}

fn is_wireguard(d: &[u8]) -> bool {
    d.len() >= 32 && matches!(u32::from_le_bytes([d[0], d[1], d[2], d[3]]), 1..=4)
}

fn udp_loop(inner: Arc<Inner>) {
    let mut buf = vec![0u8; MAX_PACKET];
    while inner.running.load(Ordering::Relaxed) {
        let udp = inner.udp();
        let (n, from) = match udp.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => continue,
        };
        let d = &buf[..n];
        if !is_wireguard(d) {
            let sink = inner.raw_sink.read().ok().and_then(|s| s.clone());
            match sink {
                Some(s) if crate::ice::is_stun(d) => {
                    let _ = s.send((from, d.to_vec()));
                }
                _ => {
                    inner.counters.bad_datagrams.fetch_add(1, Ordering::Relaxed);
                }
            }
            continue;
        }
        let peer = match Tunn::parse_incoming_packet(d) {
            Ok(boringtun::noise::Packet::HandshakeInit(h)) => {
                let half = match inner.keys.read() {
                    Ok(k) => {
                        boringtun::noise::handshake::parse_handshake_anon(&k.private, &k.public, &h)
                            .ok()
                    }
                    Err(_) => None,
                };
                half.into_iter().next().and_then(|half| {
                    inner
                        .peers
                        .read()
                        .ok()?
                        .get(&PublicKey(half.peer_static_public))
                        .cloned()
                })
            }
            Ok(boringtun::noise::Packet::HandshakeResponse(p)) => inner
                .by_index
                .read()
                .ok()
                .and_then(|m| m.get(&(p.receiver_idx >> 8)).cloned()),
            Ok(boringtun::noise::Packet::PacketCookieReply(p)) => inner
                .by_index
                .read()
                .ok()
                .and_then(|m| m.get(&(p.receiver_idx >> 8)).cloned()),
            Ok(boringtun::noise::Packet::PacketData(p)) => inner
                .by_index
                .read()
                .ok()
                .and_then(|m| m.get(&(p.receiver_idx >> 8)).cloned()),
            Err(_) => None,
        };
        let Some(peer) = peer else {
            inner.counters.bad_datagrams.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // Roaming: a peer on a plain UDP path follows its latest source address.
        if let Ok(mut p) = peer.path.write() {
            if matches!(*p, Some(WgPath::Udp(_)) | None) {
                *p = Some(WgPath::Udp(from));
            }
        }
        inner.receive(&peer, d, Some(from));
    }
}

fn timer_loop(inner: Arc<Inner>) {
    let mut out = vec![0u8; MAX_PACKET];
    while inner.running.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let peers: Vec<Arc<Peer>> = inner
            .peers
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        for peer in peers {
            let packet = {
                let Ok(mut tunn) = peer.tunn.lock() else {
                    continue;
                };
                match tunn.update_timers(&mut out) {
                    TunnResult::WriteToNetwork(b) => Some(b.to_vec()),
                    _ => None,
                }
            };
            if let Some(p) = packet {
                inner.send(&peer, &p);
            }
        }
    }
}

impl TunnelDevice for UserspaceTunnel {
    fn upsert_peer(
        &self,
        key: &PublicKey,
        allowed_ips: &[IpNet],
        keepalive_secs: u16,
        psk: Option<[u8; 32]>,
    ) -> Result<(), String> {
        let existing = self
            .inner
            .peers
            .read()
            .map_err(|_| "lock")?
            .get(key)
            .cloned();
        if let Some(p) = existing {
            if let Ok(mut a) = p.allowed.write() {
                self.inner.set_routes(key, &a, allowed_ips);
                *a = allowed_ips.to_vec();
            }
            return Ok(());
        }
        let index = self.inner.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let private = self.inner.keys.read().map_err(|_| "lock")?.private.clone();
        let tunn = Tunn::new(
            private,
            x25519::PublicKey::from(*key.as_bytes()),
            psk,
            (keepalive_secs > 0).then_some(keepalive_secs),
            index,
            None,
        );
        let peer = Arc::new(Peer {
            key: *key,
            index,
            tunn: Mutex::new(tunn),
            allowed: RwLock::new(allowed_ips.to_vec()),
            path: RwLock::new(None),
            keepalive: keepalive_secs,
            psk,
        });
        self.inner
            .by_index
            .write()
            .map_err(|_| "lock")?
            .insert(index, peer.clone());
        self.inner
            .peers
            .write()
            .map_err(|_| "lock")?
            .insert(*key, peer);
        self.inner.set_routes(key, &[], allowed_ips);
        Ok(())
    }

    fn remove_peer(&self, key: &PublicKey) {
        let removed = self
            .inner
            .peers
            .write()
            .ok()
            .and_then(|mut p| p.remove(key));
        if let Some(p) = removed {
            if let Ok(mut m) = self.inner.by_index.write() {
                m.remove(&p.index);
            }
            let old = p.allowed.read().map(|a| a.clone()).unwrap_or_default();
            self.inner.set_routes(key, &old, &[]);
        }
    }

    fn set_path(&self, key: &PublicKey, path: Option<WgPath>) {
        let peer = self
            .inner
            .peers
            .read()
            .ok()
            .and_then(|p| p.get(key).cloned());
        let Some(peer) = peer else {
            return;
        };
        let is_new_path = path.is_some();
        if let Ok(mut p) = peer.path.write() {
            *p = path;
        }
        if !is_new_path {
            return;
        }
        // Without a session, start the handshake on the new path now: an initiation WireGuard
        // sent earlier (first packet queued, no path yet) went nowhere, and its own retry would
        // only come after REKEY_TIMEOUT (5 s).
        let mut out = vec![0u8; 256];
        let packet = match peer.tunn.lock() {
            Ok(mut tunn) if tunn.time_since_last_handshake().is_none() => {
                match tunn.format_handshake_initiation(&mut out, true) {
                    TunnResult::WriteToNetwork(b) => Some(b.to_vec()),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(p) = packet {
            self.inner.send(&peer, &p);
        }
    }

    fn inject(&self, key: &PublicKey, datagram: &[u8]) {
        let peer = self
            .inner
            .peers
            .read()
            .ok()
            .and_then(|p| p.get(key).cloned());
        match peer {
            Some(p) if is_wireguard(datagram) => self.inner.receive(&p, datagram, None),
            _ => {
                self.inner
                    .counters
                    .bad_datagrams
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn send_raw(&self, dst: SocketAddr, data: &[u8]) {
        let _ = self.inner.udp().send_to(data, dst);
    }

    fn set_raw_sink(&self, sink: crate::connect::RawSink) {
        if let Ok(mut s) = self.inner.raw_sink.write() {
            *s = Some(sink);
        }
    }

    fn listen_port(&self) -> u16 {
        self.port()
    }

    fn peer_stats(&self, key: &PublicKey) -> Option<PeerStats> {
        let peer = self.inner.peers.read().ok()?.get(key).cloned()?;
        let tunn = peer.tunn.lock().ok()?;
        let (since, tx, rx, _, _) = tunn.stats();
        Some(PeerStats {
            last_handshake: since.and_then(|d| SystemTime::now().checked_sub(d)),
            rx_bytes: rx as u64,
            tx_bytes: tx as u64,
        })
    }
}

impl UserspaceTunnel {
    /// Answers a UAPI `get=1`.
    pub fn uapi_get(&self) -> String {
        let private = self
            .inner
            .keys
            .read()
            .map(|k| k.private.to_bytes())
            .unwrap_or([0; 32]);
        let peers: Vec<Arc<Peer>> = self
            .inner
            .peers
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        let views: Vec<uapi::PeerView> = peers
            .iter()
            .map(|p| {
                let stats = self.peer_stats(&p.key).unwrap_or_default();
                uapi::PeerView {
                    key: p.key,
                    preshared_key: p.psk,
                    endpoint: match p.path.read().ok().and_then(|x| x.clone()) {
                        Some(WgPath::Udp(a)) => Some(a),
                        _ => None,
                    },
                    last_handshake: stats.last_handshake,
                    tx_bytes: stats.tx_bytes,
                    rx_bytes: stats.rx_bytes,
                    keepalive: p.keepalive,
                    allowed_ips: p.allowed.read().map(|a| a.clone()).unwrap_or_default(),
                }
            })
            .collect();
        uapi::format_get(
            &private,
            self.port(),
            self.inner.fwmark.load(Ordering::Relaxed),
            &views,
        )
    }

    /// Applies a UAPI `set=1` request.
    pub fn uapi_set(&self, req: uapi::SetRequest) -> Result<(), String> {
        if let Some(k) = req.private_key {
            let private = x25519::StaticSecret::from(k);
            let public = x25519::PublicKey::from(&private);
            if let Ok(mut keys) = self.inner.keys.write() {
                *keys = Keys {
                    private: private.clone(),
                    public,
                };
            }
            let peers: Vec<Arc<Peer>> = self
                .inner
                .peers
                .read()
                .map(|p| p.values().cloned().collect())
                .unwrap_or_default();
            for p in peers {
                if let Ok(mut t) = p.tunn.lock() {
                    t.set_static_private(private.clone(), public, None);
                }
            }
        }
        if let Some(port) = req.listen_port {
            if port != self.port() {
                let udp = bind_udp(port).map_err(|e| format!("listen port {port}: {e}"))?;
                if let Ok(mut u) = self.inner.udp.write() {
                    *u = Arc::new(udp);
                }
            }
        }
        if let Some(m) = req.fwmark {
            self.inner.fwmark.store(m, Ordering::Relaxed);
        }
        if req.replace_peers {
            let keys: Vec<PublicKey> = self
                .inner
                .peers
                .read()
                .map(|p| p.keys().copied().collect())
                .unwrap_or_default();
            for k in keys {
                self.remove_peer(&k);
            }
        }
        for change in req.peers {
            let Some(key) = change.key else { continue };
            if change.remove {
                self.remove_peer(&key);
                continue;
            }
            let existing = self
                .inner
                .peers
                .read()
                .ok()
                .and_then(|p| p.get(&key).cloned());
            if existing.is_none() && change.update_only {
                continue;
            }
            let mut allowed = match (&existing, change.replace_allowed_ips) {
                (Some(p), false) => p.allowed.read().map(|a| a.clone()).unwrap_or_default(),
                _ => Vec::new(),
            };
            allowed.extend(change.allowed_ips.iter().copied());
            let keepalive = change
                .keepalive
                .or(existing.as_ref().map(|p| p.keepalive))
                .unwrap_or(0);
            let psk = match change.preshared_key {
                Some(k) if k == [0; 32] => None,
                Some(k) => Some(k),
                None => existing.as_ref().and_then(|p| p.psk),
            };
            let path = existing
                .as_ref()
                .and_then(|p| p.path.read().ok().and_then(|x| x.clone()));
            if let Some(p) = &existing {
                if p.keepalive != keepalive || p.psk != psk {
                    self.remove_peer(&key);
                }
            }
            self.upsert_peer(&key, &allowed, keepalive, psk)?;
            let endpoint = change.endpoint.map(WgPath::Udp).or(path);
            if endpoint.is_some() {
                self.set_path(&key, endpoint);
            }
        }
        Ok(())
    }
}
