//! Userspace WireGuard: boringtun's `noise::Tunn` per peer on a TUN device, one shared UDP
//! socket on the listen port.
//!
//! Threads (2 hot ones, matching the 2-core target machine): one reads the TUN device and
//! encrypts, one reads the UDP socket and decrypts; a timer thread drives handshake retries,
//! re-keying and keepalives every 250 ms. Each peer's session sits behind its own mutex, held only
//! for the cryptographic step, so work on one peer never waits on another.
//!
//! **Paths.** A peer's encrypted datagrams go to its [`PeerPath`] when the connectivity layer
//! installed one (e.g. a relay connection), else to its UDP endpoint through the shared socket.
//! Datagrams arriving on a custom path are fed back with [`UserspaceDevice::inject_datagram`].
//!
//! **Shared socket.** Datagrams that are not WireGuard messages (see [`super::packet`]) are
//! handed to the [`ForeignHandler`] (the ICE layer), which can answer through
//! [`UserspaceDevice::send_foreign`] on the same socket and port.

use super::allowed_ips::AllowedIps;
use super::offload::{self, VnetHdr, VNET_HDR_LEN};
use super::packet::{classify, DatagramKind};
use super::tun::Tun;
use super::udp::{Socket, MAX_GSO_BYTES, MAX_GSO_SEGMENTS};
use super::{
    DeviceKind, DeviceState, DeviceUpdate, PeerState, PeerUpdate, PresharedKey, PrivateKeyBytes,
    WgDevice, WgError,
};
use crate::crypto::PublicKey;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use ipnet::IpNet;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Largest IP packet or datagram handled (buffers are sized for it).
pub const MAX_PACKET: usize = 65_535;
/// Room boringtun needs beyond the packet for the WireGuard header and tag.
const WG_OVERHEAD: usize = 32;
/// Handshake messages per second before boringtun demands cookies. Each handshake passes the
/// limiter twice (our demux, then `Tunn::decapsulate`), so this is twice the effective limit.
const HANDSHAKE_RATE_LIMIT: u64 = 200;
/// Timer tick, as boringtun's own device uses.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Size of the buffer that collects the encrypted datagrams of one TUN read.
const OUT_ARENA: usize = 4 * MAX_PACKET;
/// How long blocking reads wait before checking for shutdown.
const READ_TIMEOUT: Duration = Duration::from_millis(1000);

/// Sends one peer's encrypted WireGuard datagrams over a path other than the shared UDP socket
/// (a relay connection, a TURN allocation...). Called on data-plane threads: it must not block
/// for long; queue and drop when congested. It may be re-entered on the same thread (a datagram
/// given to [`UserspaceDevice::inject_datagram`] can be answered at once through the same path),
/// so never hold a lock across a call into the device.
pub trait PeerPath: Send + Sync {
    /// Sends one datagram to the peer.
    fn send(&self, datagram: &[u8]) -> io::Result<()>;
}

/// Told when local traffic is routed to a peer that has neither a path nor an endpoint (a
/// sleeping connection should wake up). Called on the TUN thread at most once a second per
/// peer: hand the key off and return.
pub type ActivityHandler = Arc<dyn Fn(&PublicKey) + Send + Sync>;

/// Receives non-WireGuard datagrams (STUN, junk) from the shared socket: `(datagram, source)`.
/// Called on the UDP thread: hand the data off (e.g. `try_send` into a channel) and return.
pub type ForeignHandler = Arc<dyn Fn(&[u8], SocketAddr) + Send + Sync>;

/// Creation options.
#[derive(Clone, Debug)]
pub struct Options {
    /// UDP socket receive/send buffer size in bytes (forced above `rmem_max` when root).
    pub socket_buffer: usize,
    /// Initial listen port (0 = any free port).
    pub listen_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket_buffer: 7 << 20,
            listen_port: 0,
        }
    }
}

/// Drop and error counters of a device (monotonic).
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams that claimed to be WireGuard but did not parse or authenticate.
    pub rx_invalid: AtomicU64,
    /// WireGuard datagrams for no known peer.
    pub rx_unknown_peer: AtomicU64,
    /// Decrypted packets whose source is outside the sender's allowed IPs.
    pub rx_not_allowed: AtomicU64,
    /// Non-WireGuard datagrams handed to the foreign handler.
    pub rx_foreign: AtomicU64,
    /// Non-WireGuard datagrams dropped (no handler, or arrived on a custom path).
    pub rx_foreign_dropped: AtomicU64,
    /// Datagrams larger than [`MAX_PACKET`] dropped.
    pub rx_oversized: AtomicU64,
    /// TUN packets that were not IPv4/IPv6.
    pub tx_invalid: AtomicU64,
    /// TUN packets whose destination no peer's allowed IPs cover.
    pub tx_no_route: AtomicU64,
    /// Datagrams for a peer without endpoint or path.
    pub tx_no_endpoint: AtomicU64,
    /// Send errors on the socket or a path.
    pub tx_errors: AtomicU64,
    /// Errors writing decrypted packets to the TUN device.
    pub tun_write_errors: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Where a peer's datagrams go.
#[derive(Default)]
struct Route {
    endpoint: Option<SocketAddr>,
    path: Option<Arc<dyn PeerPath>>,
}

struct Peer {
    key: PublicKey,
    index: u32,
    tunn: Mutex<Option<Tunn>>,
    psk: Mutex<Option<PresharedKey>>,
    /// Changed only under the peer table's write lock.
    allowed_ips: Mutex<Vec<IpNet>>,
    route: RwLock<Route>,
    keepalive: AtomicU16,
    last_sent_ms: AtomicU64,
    /// When (device clock, ms) the activity handler was last told about this peer.
    activity_ms: AtomicU64,
    /// Until when (device clock, ms) this peer's own handshake initiations are held back.
    hold_initiations_until_ms: AtomicU64,
    /// An initiation of ours was dropped (no path yet, or held): the next path kick must
    /// send a fresh one even though boringtun thinks a handshake is in progress.
    initiation_unsent: AtomicBool,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
}

#[derive(Default)]
struct PeerTable {
    by_key: HashMap<PublicKey, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    allowed: AllowedIps<Arc<Peer>>,
}

#[derive(Clone)]
struct StaticKeys {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    rate_limiter: Arc<RateLimiter>,
}

struct Inner {
    me: std::sync::Weak<Inner>,
    name: String,
    tun: RwLock<Option<Arc<Tun>>>,
    keys: RwLock<Option<StaticKeys>>,
    peers: RwLock<PeerTable>,
    socket: RwLock<Option<Arc<Socket>>>,
    socket_generation: AtomicU64,
    fwmark: AtomicU32,
    socket_buffer: usize,
    foreign: RwLock<Option<ForeignHandler>>,
    activity: RwLock<Option<ActivityHandler>>,
    counters: Counters,
    stop: AtomicBool,
    /// Set when the interface disappeared underneath us (`ip link del`).
    gone: AtomicBool,
    epoch: Instant,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A userspace WireGuard interface. Create with [`UserspaceDevice::create`]; it stops and removes
/// its interface on [`WgDevice::close`] or when the last handle is dropped.
pub struct UserspaceDevice {
    inner: Arc<Inner>,
}

impl UserspaceDevice {
    /// Creates TUN interface `name`, binds the UDP socket and starts the data-plane threads.
    /// Address, MTU and link state are set separately (see [`super::link`]).
    pub fn create(name: &str, opts: Options) -> Result<Arc<Self>, WgError> {
        let tun = Arc::new(Tun::create_with_offloads(name)?);
        tun.set_nonblocking()?;
        let socket = Arc::new(Socket::bind(
            opts.listen_port,
            0,
            opts.socket_buffer,
            1,
            READ_TIMEOUT,
        )?);
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            name: tun.name().to_string(),
            tun: RwLock::new(Some(tun.clone())),
            keys: RwLock::new(None),
            peers: RwLock::new(PeerTable::default()),
            socket: RwLock::new(Some(socket.clone())),
            socket_generation: AtomicU64::new(1),
            fwmark: AtomicU32::new(0),
            socket_buffer: opts.socket_buffer,
            foreign: RwLock::new(None),
            activity: RwLock::new(None),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            epoch: Instant::now(),
            threads: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        {
            let (i, t) = (inner.clone(), tun.clone());
            threads.push(spawn("wg-tun", move || i.tun_loop(&t))?);
        }
        {
            let i = inner.clone();
            threads.push(spawn("wg-udp", move || i.udp_loop(socket, tun))?);
        }
        {
            let i = inner.clone();
            threads.push(spawn("wg-timers", move || i.timer_loop())?);
        }
        inner.threads.lock().extend(threads);
        tracing::info!("userspace WireGuard interface {} created", inner.name);
        Ok(Arc::new(UserspaceDevice { inner }))
    }

    /// Installs (`Some`) or removes (`None`) a custom path for `peer`. Without one, the peer's
    /// datagrams go to its UDP endpoint. Fails if the peer is unknown.
    pub fn set_peer_path(
        &self,
        peer: &PublicKey,
        path: Option<Arc<dyn PeerPath>>,
    ) -> Result<(), WgError> {
        let p = self
            .inner
            .peers
            .read()
            .by_key
            .get(peer)
            .cloned()
            .ok_or_else(|| WgError::Invalid("no such peer".into()))?;
        p.route.write().path = path;
        Ok(())
    }

    /// Installs `path` for `peer` only if it has neither a custom path nor an endpoint.
    /// Returns whether it was installed.
    pub fn set_peer_path_if_unset(&self, peer: &PublicKey, path: Arc<dyn PeerPath>) -> bool {
        let Some(p) = self.inner.peers.read().by_key.get(peer).cloned() else {
            return false;
        };
        let mut route = p.route.write();
        if route.path.is_some() || route.endpoint.is_some() {
            return false;
        }
        route.path = Some(path);
        true
    }

    /// Feeds a datagram that arrived on a custom path (e.g. from a relay) into the device, as if
    /// received on the socket (but without endpoint roaming). Never panics on garbage.
    pub fn inject_datagram(&self, datagram: &[u8]) {
        let tun = self.inner.tun.read().clone();
        let Some(tun) = tun else { return };
        thread_local! {
            static INJECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        INJECT_BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut out) => {
                out.resize(MAX_PACKET + WG_OVERHEAD, 0);
                self.inner
                    .handle_datagram(datagram, None, &mut out, &tun, None);
            }
            // Re-entered from a path on this thread (see `PeerPath`): use a fresh buffer.
            Err(_) => {
                let mut out = vec![0u8; MAX_PACKET + WG_OVERHEAD];
                self.inner
                    .handle_datagram(datagram, None, &mut out, &tun, None);
            }
        });
    }

    /// Starts a handshake with `peer` now if it has no session. Used when a path appears: an
    /// initiation sent before (first packet queued, nowhere to send it) was lost, and WireGuard
    /// itself would only retry after REKEY_TIMEOUT (5 s).
    ///
    /// Only an initiation that went nowhere is replaced: one in flight on a path is left to
    /// finish, since a second one would make its response useless.
    pub fn initiate_handshake(&self, peer: &PublicKey) {
        let Some(p) = self.inner.peers.read().by_key.get(peer).cloned() else {
            return;
        };
        if self.inner.now_ms() < p.hold_initiations_until_ms.load(Ordering::Relaxed) {
            return;
        }
        let mut out = [0u8; 256];
        let initiation = {
            let mut g = p.tunn.lock();
            match g.as_mut() {
                Some(t) if t.time_since_last_handshake().is_none() => {
                    let force = p.initiation_unsent.swap(false, Ordering::Relaxed);
                    match t.format_handshake_initiation(&mut out, force) {
                        TunnResult::WriteToNetwork(b) => Some(b.to_vec()),
                        _ => None,
                    }
                }
                _ => None,
            }
        };
        if let Some(b) = initiation {
            self.inner.send_to_peer(&p, &b);
        }
    }

    /// Holds back `peer`'s own handshake initiations for `duration` (responses and data still
    /// go out). The side that is not the ICE controller waits so that the controller's
    /// handshake is not crossed by ours: boringtun drops its own pending handshake when it
    /// answers the other's, and two such crossings in a row stall the tunnel for 15 s.
    /// Upstream gets the same effect by leaving that side's endpoint unset for 5 s.
    pub fn hold_initiations(&self, peer: &PublicKey, duration: Duration) {
        if let Some(p) = self.inner.peers.read().by_key.get(peer) {
            let until = self.inner.now_ms() + duration.as_millis() as u64;
            p.hold_initiations_until_ms.store(until, Ordering::Relaxed);
        }
    }

    /// Installs the handler told about local traffic for peers without a path (see
    /// [`ActivityHandler`]). `None` removes it.
    pub fn set_activity_handler(&self, handler: Option<ActivityHandler>) {
        *self.inner.activity.write() = handler;
    }

    /// Drops `peer`'s WireGuard sessions (a fresh handshake is needed): for a remote that
    /// discarded its side, e.g. a lazy peer that went idle.
    pub fn reset_session(&self, peer: &PublicKey) {
        let Some(p) = self.inner.peers.read().by_key.get(peer).cloned() else {
            return;
        };
        let keys = self.inner.keys.read().clone();
        if let Some(keys) = keys {
            let psk = *p.psk.lock();
            *p.tunn.lock() = Some(Inner::new_tunn(&keys, &p.key, psk, p.index));
        }
    }

    /// Removes `peer`'s custom path and endpoint: its datagrams go nowhere until a new path
    /// is set (or it roams in).
    pub fn clear_peer_route(&self, peer: &PublicKey) {
        if let Some(p) = self.inner.peers.read().by_key.get(peer) {
            let mut r = p.route.write();
            r.path = None;
            r.endpoint = None;
        }
    }

    /// Installs the receiver of non-WireGuard datagrams (ICE). `None` drops them.
    pub fn set_foreign_handler(&self, handler: Option<ForeignHandler>) {
        *self.inner.foreign.write() = handler;
    }

    /// Sends a non-WireGuard datagram (STUN...) from the WireGuard socket and port.
    pub fn send_foreign(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        let s = self.inner.socket.read().clone();
        match s {
            Some(s) => s.send_to(datagram, to),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "device closed")),
        }
    }

    /// The UDP port actually bound (0 after close).
    pub fn listen_port(&self) -> u16 {
        self.inner.socket.read().as_ref().map_or(0, |s| s.port)
    }

    /// False once the device was closed or its interface was deleted from outside.
    pub fn is_alive(&self) -> bool {
        !self.inner.stopped() && !self.inner.gone.load(Ordering::Relaxed)
    }

    /// Drop and error counters.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_string()).spawn(f)
}

impl Drop for UserspaceDevice {
    fn drop(&mut self) {
        let _ = self.inner.shutdown();
    }
}

impl WgDevice for UserspaceDevice {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Userspace
    }

    fn apply(&self, u: &DeviceUpdate) -> Result<(), WgError> {
        self.inner.apply(u)
    }

    fn state(&self) -> Result<DeviceState, WgError> {
        Ok(self.inner.state())
    }

    fn close(&self) -> Result<(), WgError> {
        self.inner.shutdown()
    }
}

/// Decrypted packets of one receive batch, waiting to be coalesced and written.
#[derive(Default)]
struct RxBatch {
    arena: Vec<u8>,
    pkts: Vec<Range<usize>>,
    out: Vec<u8>,
    frames: Vec<Range<usize>>,
}

enum RxAction {
    Nothing,
    Network(Vec<Vec<u8>>),
    Tunnel { off: usize, len: usize, src: IpAddr },
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn shutdown(&self) -> Result<(), WgError> {
        if self.stop.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(s) = self.socket.read().as_ref() {
            s.wake();
        }
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        *self.socket.write() = None;
        // Dropping the last handle on the TUN descriptor removes the interface.
        *self.tun.write() = None;
        self.peers
            .write()
            .by_key
            .values()
            .for_each(|p| p.route.write().path = None);
        tracing::info!("userspace WireGuard interface {} removed", self.name);
        Ok(())
    }

    // ---- outbound: TUN -> peers -------------------------------------------------------------

    fn tun_loop(&self, tun: &Tun) {
        let vnet = tun.vnet_hdr();
        let mut buf = vec![0u8; MAX_PACKET + VNET_HDR_LEN];
        let mut arena: Vec<u8> = Vec::with_capacity(2 * MAX_PACKET);
        let mut segs: Vec<Range<usize>> = Vec::with_capacity(64);
        let mut out = vec![0u8; OUT_ARENA];
        let mut sent: Vec<(usize, usize)> = Vec::with_capacity(64);
        while !self.stopped() {
            let n = match tun.read(&mut buf) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(tun, READ_TIMEOUT);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                    tracing::info!("interface {} was removed", self.name);
                    self.gone.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::warn!("reading TUN {}: {e}", self.name);
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            segs.clear();
            if !vnet {
                segs.push(0..n);
                self.handle_tun_segments(&buf, &segs, &mut out, &mut sent);
                continue;
            }
            let Some(h) = VnetHdr::parse(&buf[..n]) else {
                inc(&self.counters.tx_invalid);
                continue;
            };
            if h.gso_type == offload::GSO_NONE {
                let pkt = &mut buf[VNET_HDR_LEN..n];
                if h.flags & offload::F_NEEDS_CSUM != 0
                    && offload::complete_checksum(pkt, &h).is_err()
                {
                    inc(&self.counters.tx_invalid);
                    continue;
                }
                segs.push(VNET_HDR_LEN..n);
                self.handle_tun_segments(&buf, &segs, &mut out, &mut sent);
            } else {
                arena.clear();
                if offload::tso_segment(&buf[VNET_HDR_LEN..n], &h, &mut arena, &mut segs).is_err() {
                    inc(&self.counters.tx_invalid);
                    continue;
                }
                self.handle_tun_segments(&arena, &segs, &mut out, &mut sent);
            }
        }
    }

    /// Encrypts packets `base[segs]` (one read from the TUN device: a single packet or the
    /// segments of one TSO packet, so one destination) and sends them as a batch.
    fn handle_tun_segments(
        &self,
        base: &[u8],
        segs: &[Range<usize>],
        out: &mut [u8],
        sent: &mut Vec<(usize, usize)>,
    ) {
        let Some(first) = segs.first() else { return };
        let Some(dst) = Tunn::dst_address(&base[first.clone()]) else {
            inc(&self.counters.tx_invalid);
            return;
        };
        let peer = self.peers.read().allowed.lookup(dst).cloned();
        let Some(peer) = peer else {
            inc(&self.counters.tx_no_route);
            return;
        };
        self.note_activity(&peer);
        sent.clear();
        {
            let mut g = peer.tunn.lock();
            let Some(t) = g.as_mut() else { return };
            let mut cursor = 0;
            for r in segs {
                let pkt = &base[r.clone()];
                // boringtun needs room for the packet, its overhead and padding, and at least
                // a handshake initiation.
                if out.len() - cursor < pkt.len() + WG_OVERHEAD + 16 + 148 {
                    inc(&self.counters.tx_errors);
                    break;
                }
                match t.encapsulate(pkt, &mut out[cursor..]) {
                    TunnResult::WriteToNetwork(p) => {
                        let len = p.len();
                        sent.push((cursor, len));
                        cursor += len;
                    }
                    TunnResult::Err(e) => tracing::trace!("encapsulate: {e:?}"),
                    _ => {}
                }
            }
        }
        self.send_batch(&peer, out, sent);
    }

    /// Sends datagrams `buf[off..off+len]` (contiguous, in order) to `peer`: through its path one
    /// by one, or to its endpoint in runs of equal size with UDP GSO.
    fn send_batch(&self, peer: &Peer, buf: &[u8], items: &[(usize, usize)]) {
        if items.is_empty() {
            return;
        }
        if let [(off, len)] = items {
            if is_initiation(&buf[*off..*off + *len])
                && self.now_ms() < peer.hold_initiations_until_ms.load(Ordering::Relaxed)
            {
                peer.initiation_unsent.store(true, Ordering::Relaxed);
                return;
            }
        }
        // Copy the route out of its lock: a path may re-enter the device (see `PeerPath`).
        let (path, endpoint) = {
            let r = peer.route.read();
            (r.path.clone(), r.endpoint)
        };
        let mut ok_bytes = 0u64;
        if let Some(p) = &path {
            for &(off, len) in items {
                match p.send(&buf[off..off + len]) {
                    Ok(()) => ok_bytes += len as u64,
                    Err(e) => {
                        inc(&self.counters.tx_errors);
                        tracing::trace!("send on path: {e}");
                    }
                }
            }
        } else if let Some(ep) = endpoint {
            let Some(sock) = self.socket.read().clone() else {
                return;
            };
            let mut i = 0;
            while i < items.len() {
                let (start, size) = items[i];
                let mut j = i + 1;
                let mut bytes = size;
                while j < items.len()
                    && j - i < MAX_GSO_SEGMENTS
                    && bytes + items[j].1 <= MAX_GSO_BYTES
                    && items[j].1 <= size
                {
                    bytes += items[j].1;
                    j += 1;
                    if items[j - 1].1 < size {
                        break; // a shorter datagram can only end a run
                    }
                }
                match sock.send_segments(&buf[start..start + bytes], size, ep) {
                    Ok(()) => ok_bytes += bytes as u64,
                    Err(e) => {
                        inc(&self.counters.tx_errors);
                        tracing::trace!("send to {ep}: {e}");
                    }
                }
                i = j;
            }
        } else {
            inc(&self.counters.tx_no_endpoint);
            if items.iter().any(|&(o, l)| is_initiation(&buf[o..o + l])) {
                peer.initiation_unsent.store(true, Ordering::Relaxed);
            }
            return;
        }
        if ok_bytes > 0 {
            peer.tx_bytes.fetch_add(ok_bytes, Ordering::Relaxed);
            peer.last_sent_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Local traffic for a peer without path or endpoint: tell the activity handler (at most
    /// once a second per peer).
    fn note_activity(&self, peer: &Peer) {
        {
            let r = peer.route.read();
            if r.path.is_some() || r.endpoint.is_some() {
                return;
            }
        }
        let now = self.now_ms();
        let last = peer.activity_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000 {
            return;
        }
        peer.activity_ms.store(now.max(1), Ordering::Relaxed);
        let handler = self.activity.read().clone();
        if let Some(h) = handler {
            h(&peer.key);
        }
    }

    fn send_to_peer(&self, peer: &Peer, data: &[u8]) {
        self.send_batch(peer, data, &[(0, data.len())]);
    }

    // ---- inbound: socket/paths -> TUN -------------------------------------------------------

    fn udp_loop(&self, sock: Arc<Socket>, tun: Arc<Tun>) {
        let mut buf = vec![0u8; MAX_PACKET];
        let mut out = vec![0u8; MAX_PACKET + WG_OVERHEAD];
        let mut rx = RxBatch::default();
        while !self.stopped() && self.socket_generation.load(Ordering::Relaxed) == sock.generation {
            match sock.recv(&mut buf) {
                Ok((n, seg, from)) => {
                    // With UDP GRO one read may carry several datagrams of `seg` bytes; their
                    // packets are coalesced (TCP GRO) and written together.
                    for d in buf[..n].chunks(seg) {
                        self.handle_datagram(d, Some(from), &mut out, &tun, Some(&mut rx));
                    }
                    self.flush_rx(&mut rx, &tun);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // ICMP errors (ECONNREFUSED...) surface here; they are not fatal.
                    tracing::trace!("UDP receive: {e}");
                }
            }
        }
    }

    /// Writes the packets collected in `rx` to the TUN device, coalesced where possible.
    fn flush_rx(&self, rx: &mut RxBatch, tun: &Tun) {
        if rx.pkts.is_empty() {
            return;
        }
        offload::gro_coalesce(&rx.arena, &rx.pkts, &mut rx.out, &mut rx.frames);
        for f in &rx.frames {
            if tun.write(&rx.out[f.clone()]).is_err() {
                inc(&self.counters.tun_write_errors);
            }
        }
        rx.arena.clear();
        rx.pkts.clear();
        rx.out.clear();
        rx.frames.clear();
    }

    /// Handles one datagram from the socket (`from = Some`) or a custom path (`None`). Decrypted
    /// packets go to `rx` when given and the TUN device offloads, else straight to the device.
    fn handle_datagram(
        &self,
        data: &[u8],
        from: Option<SocketAddr>,
        out: &mut [u8],
        tun: &Tun,
        rx: Option<&mut RxBatch>,
    ) {
        if data.len() > MAX_PACKET {
            inc(&self.counters.rx_oversized);
            return;
        }
        if classify(data) != DatagramKind::WireGuard {
            let handler = self.foreign.read().clone();
            match (handler, from) {
                (Some(h), Some(addr)) => {
                    inc(&self.counters.rx_foreign);
                    h(data, addr);
                }
                _ => inc(&self.counters.rx_foreign_dropped),
            }
            return;
        }
        let Some(peer) = self.find_peer(data, from, out) else {
            return;
        };
        // On an offloading TUN device the packet is written after a virtio_net_hdr: decrypt
        // right behind the room for it.
        let hdr = if tun.vnet_hdr() { VNET_HDR_LEN } else { 0 };
        let (head, out) = out.split_at_mut(hdr);
        let base = out.as_ptr() as usize;
        let action = {
            let mut g = peer.tunn.lock();
            let Some(t) = g.as_mut() else { return };
            match t.decapsulate(from.map(|a| a.ip()), data, out) {
                TunnResult::Done => RxAction::Nothing,
                TunnResult::Err(e) => {
                    inc(&self.counters.rx_invalid);
                    tracing::trace!("decapsulate: {e:?}");
                    return;
                }
                TunnResult::WriteToNetwork(p) => {
                    let mut pkts = vec![p.to_vec()];
                    // Flush packets queued while the handshake was pending.
                    while let TunnResult::WriteToNetwork(p) = t.decapsulate(None, &[], out) {
                        pkts.push(p.to_vec());
                    }
                    RxAction::Network(pkts)
                }
                TunnResult::WriteToTunnelV4(p, src) => RxAction::Tunnel {
                    off: p.as_ptr() as usize - base,
                    len: p.len(),
                    src: src.into(),
                },
                TunnResult::WriteToTunnelV6(p, src) => RxAction::Tunnel {
                    off: p.as_ptr() as usize - base,
                    len: p.len(),
                    src: src.into(),
                },
            }
        };
        // Authenticated: count it and follow the peer if it roamed (plain UDP route only).
        peer.rx_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(addr) = from {
            let r = peer.route.read();
            let roam = r.path.is_none() && r.endpoint != Some(addr);
            drop(r);
            if roam {
                peer.route.write().endpoint = Some(addr);
            }
        }
        match action {
            RxAction::Nothing => {}
            RxAction::Network(pkts) => {
                for p in pkts {
                    self.send_to_peer(&peer, &p);
                }
            }
            RxAction::Tunnel { off, len, src } => {
                let allowed = self
                    .peers
                    .read()
                    .allowed
                    .lookup(src)
                    .is_some_and(|p| Arc::ptr_eq(p, &peer));
                if !allowed {
                    inc(&self.counters.rx_not_allowed);
                    return;
                }
                let res = if let (true, Some(rx)) = (hdr != 0, rx) {
                    let start = rx.arena.len();
                    rx.arena.extend_from_slice(&out[off..off + len]);
                    rx.pkts.push(start..rx.arena.len());
                    Ok(len)
                } else if hdr == 0 {
                    tun.write(&out[off..off + len])
                } else if off == 0 {
                    // Checksums need no verification: WireGuard authenticated the packet.
                    VnetHdr {
                        flags: offload::F_DATA_VALID,
                        ..Default::default()
                    }
                    .write(head);
                    tun.write_vectored(head, &out[..len])
                } else {
                    Err(io::Error::other("unexpected packet offset"))
                };
                if res.is_err() {
                    inc(&self.counters.tun_write_errors);
                }
            }
        }
    }

    /// Finds the peer a WireGuard message is for: by receiver index, or for a handshake
    /// initiation by the initiator's static key (after the MAC/rate-limit check).
    fn find_peer(
        &self,
        data: &[u8],
        from: Option<SocketAddr>,
        out: &mut [u8],
    ) -> Option<Arc<Peer>> {
        let by_index = |idx: u32| {
            let p = self.peers.read().by_index.get(&(idx >> 8)).cloned();
            if p.is_none() {
                inc(&self.counters.rx_unknown_peer);
            }
            p
        };
        match Tunn::parse_incoming_packet(data) {
            Err(_) => {
                inc(&self.counters.rx_invalid);
                None
            }
            Ok(Packet::HandshakeInit(hs)) => {
                let keys = self.keys.read().clone();
                let Some(keys) = keys else {
                    inc(&self.counters.rx_unknown_peer);
                    return None;
                };
                match keys
                    .rate_limiter
                    .verify_packet(from.map(|a| a.ip()), data, out)
                {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        if let (Some(addr), Some(s)) = (from, self.socket.read().clone()) {
                            let _ = s.send_to(cookie, addr);
                        }
                        return None;
                    }
                    Err(_) => {
                        inc(&self.counters.rx_invalid);
                        return None;
                    }
                }
                match parse_handshake_anon(&keys.secret, &keys.public, &hs) {
                    Ok(half) => {
                        let p = self
                            .peers
                            .read()
                            .by_key
                            .get(&PublicKey(half.peer_static_public))
                            .cloned();
                        if p.is_none() {
                            inc(&self.counters.rx_unknown_peer);
                        }
                        p
                    }
                    Err(_) => {
                        inc(&self.counters.rx_invalid);
                        None
                    }
                }
            }
            Ok(Packet::HandshakeResponse(p)) => by_index(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => by_index(p.receiver_idx),
            Ok(Packet::PacketData(p)) => by_index(p.receiver_idx),
        }
    }

    // ---- timers ------------------------------------------------------------------------------

    fn timer_loop(&self) {
        let mut out = vec![0u8; MAX_PACKET + WG_OVERHEAD];
        let mut tick: u64 = 0;
        while !self.stopped() {
            std::thread::sleep(TIMER_TICK);
            tick += 1;
            if tick.is_multiple_of(4) {
                if let Some(k) = self.keys.read().as_ref() {
                    k.rate_limiter.reset_count();
                }
            }
            let peers: Vec<Arc<Peer>> = self.peers.read().by_key.values().cloned().collect();
            let now = self.now_ms();
            for p in peers {
                let mut pkts = Vec::new();
                {
                    let mut g = p.tunn.lock();
                    let Some(t) = g.as_mut() else { continue };
                    if let TunnResult::WriteToNetwork(x) = t.update_timers(&mut out) {
                        pkts.push(x.to_vec());
                    }
                    let ka = u64::from(p.keepalive.load(Ordering::Relaxed));
                    if ka > 0
                        && now.saturating_sub(p.last_sent_ms.load(Ordering::Relaxed)) >= ka * 1000
                    {
                        if let TunnResult::WriteToNetwork(x) = t.encapsulate(&[], &mut out) {
                            pkts.push(x.to_vec());
                        }
                    }
                }
                for x in pkts {
                    self.send_to_peer(&p, &x);
                }
            }
        }
    }

    fn send_keepalive(&self, peer: &Peer) {
        let mut out = vec![0u8; 256];
        let pkt = {
            let mut g = peer.tunn.lock();
            let Some(t) = g.as_mut() else { return };
            match t.encapsulate(&[], &mut out) {
                TunnResult::WriteToNetwork(x) => x.to_vec(),
                _ => return,
            }
        };
        self.send_to_peer(peer, &pkt);
    }

    // ---- configuration -----------------------------------------------------------------------

    fn new_tunn(
        keys: &StaticKeys,
        peer: &PublicKey,
        psk: Option<PresharedKey>,
        index: u32,
    ) -> Tunn {
        Tunn::new(
            keys.secret.clone(),
            x25519::PublicKey::from(peer.0),
            psk.map(|k| k.0),
            None,
            index,
            Some(keys.rate_limiter.clone()),
        )
    }

    fn apply(&self, u: &DeviceUpdate) -> Result<(), WgError> {
        if self.stopped() {
            return Err(WgError::Closed);
        }
        if let Some(k) = u.private_key {
            self.set_private_key(k);
        }
        if u.listen_port.is_some() || u.fwmark.is_some() {
            self.set_socket(u.listen_port, u.fwmark)?;
        }
        let mut keepalive_now = Vec::new();
        {
            let mut table = self.peers.write();
            if u.replace_peers {
                let all: Vec<PublicKey> = table.by_key.keys().copied().collect();
                for k in all {
                    remove_peer(&mut table, &k);
                }
            }
            for p in &u.peers {
                if let Some(peer) = self.update_peer(&mut table, p) {
                    keepalive_now.push(peer);
                }
            }
        }
        // As wireguard-go does: setting a keepalive sends one at once (starting the handshake).
        for p in keepalive_now {
            self.send_keepalive(&p);
        }
        Ok(())
    }

    fn set_private_key(&self, k: PrivateKeyBytes) {
        let table = self.peers.read();
        let mut keys = self.keys.write();
        if k.0 == [0; 32] {
            *keys = None;
            for p in table.by_key.values() {
                *p.tunn.lock() = None;
            }
            return;
        }
        let secret = x25519::StaticSecret::from(k.0);
        let public = x25519::PublicKey::from(&secret);
        if keys.as_ref().is_some_and(|cur| cur.public == public) {
            return;
        }
        let new = StaticKeys {
            secret,
            public,
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
        };
        for p in table.by_key.values() {
            let psk = *p.psk.lock();
            *p.tunn.lock() = Some(Self::new_tunn(&new, &p.key, psk, p.index));
        }
        *keys = Some(new);
    }

    fn set_socket(&self, port: Option<u16>, fwmark: Option<u32>) -> Result<(), WgError> {
        let cur = self.socket.read().clone();
        let Some(cur) = cur else {
            return Err(WgError::Closed);
        };
        let mark = fwmark.unwrap_or(self.fwmark.load(Ordering::Relaxed));
        let want = port.unwrap_or(cur.port);
        if want == cur.port || want == 0 {
            if let Some(m) = fwmark {
                cur.set_mark(m)?;
                self.fwmark.store(m, Ordering::Relaxed);
            }
            return Ok(());
        }
        let generation = self.socket_generation.load(Ordering::Relaxed) + 1;
        let new = Arc::new(Socket::bind(
            want,
            mark,
            self.socket_buffer,
            generation,
            READ_TIMEOUT,
        )?);
        let tun = self.tun.read().clone().ok_or(WgError::Closed)?;
        *self.socket.write() = Some(new.clone());
        self.fwmark.store(mark, Ordering::Relaxed);
        // The old receive thread sees the new generation within one read timeout and exits.
        self.socket_generation.store(generation, Ordering::Relaxed);
        let me = self.self_arc()?;
        let h = spawn("wg-udp", move || me.udp_loop(new, tun))?;
        let mut threads = self.threads.lock();
        threads.retain(|t| !t.is_finished());
        threads.push(h);
        Ok(())
    }

    /// A strong handle to `self` (for spawning threads after creation).
    fn self_arc(&self) -> Result<Arc<Inner>, WgError> {
        self.me.upgrade().ok_or(WgError::Closed)
    }

    /// Applies one peer update under the table lock. Returns the peer when a keepalive should
    /// be sent right away.
    fn update_peer(&self, table: &mut PeerTable, u: &PeerUpdate) -> Option<Arc<Peer>> {
        if u.remove {
            remove_peer(table, &u.public_key);
            return None;
        }
        let peer = match table.by_key.get(&u.public_key) {
            Some(p) => p.clone(),
            None => {
                if u.update_only {
                    return None;
                }
                let index = loop {
                    let i = rand::random::<u32>() & 0x00FF_FFFF;
                    if !table.by_index.contains_key(&i) {
                        break i;
                    }
                };
                let psk = u.preshared_key.filter(|k| k.0 != [0; 32]);
                let tunn = self
                    .keys
                    .read()
                    .as_ref()
                    .map(|k| Self::new_tunn(k, &u.public_key, psk, index));
                let p = Arc::new(Peer {
                    key: u.public_key,
                    index,
                    tunn: Mutex::new(tunn),
                    psk: Mutex::new(psk),
                    allowed_ips: Mutex::new(Vec::new()),
                    route: RwLock::new(Route::default()),
                    keepalive: AtomicU16::new(0),
                    last_sent_ms: AtomicU64::new(0),
                    hold_initiations_until_ms: AtomicU64::new(0),
                    activity_ms: AtomicU64::new(0),
                    initiation_unsent: AtomicBool::new(false),
                    rx_bytes: AtomicU64::new(0),
                    tx_bytes: AtomicU64::new(0),
                });
                table.by_key.insert(u.public_key, p.clone());
                table.by_index.insert(index, p.clone());
                p
            }
        };
        if let Some(k) = u.preshared_key {
            let new = Some(k).filter(|k| k.0 != [0; 32]);
            let mut cur = peer.psk.lock();
            if *cur != new {
                *cur = new;
                // boringtun fixes the PSK at creation: a new session for this peer only.
                if let Some(keys) = self.keys.read().as_ref() {
                    *peer.tunn.lock() = Some(Self::new_tunn(keys, &peer.key, new, peer.index));
                }
            }
        }
        if let Some(ep) = u.endpoint {
            peer.route.write().endpoint = Some(ep);
        }
        let mut send_keepalive = false;
        if let Some(ka) = u.persistent_keepalive {
            let old = peer.keepalive.swap(ka, Ordering::Relaxed);
            send_keepalive = ka > 0 && ka != old;
        }
        if u.replace_allowed_ips {
            let old: Vec<IpNet> = std::mem::take(&mut *peer.allowed_ips.lock());
            for net in old {
                if table
                    .allowed
                    .get(&net)
                    .is_some_and(|p| Arc::ptr_eq(p, &peer))
                {
                    table.allowed.remove(&net);
                }
            }
        }
        for net in &u.allowed_ips {
            let net = net.trunc();
            if let Some(prev) = table.allowed.insert(&net, peer.clone()) {
                if !Arc::ptr_eq(&prev, &peer) {
                    prev.allowed_ips.lock().retain(|n| *n != net);
                }
            }
            let mut mine = peer.allowed_ips.lock();
            if !mine.contains(&net) {
                mine.push(net);
            }
        }
        send_keepalive.then_some(peer)
    }

    fn state(&self) -> DeviceState {
        let private_key = self
            .keys
            .read()
            .as_ref()
            .map(|k| PrivateKeyBytes(k.secret.to_bytes()));
        let listen_port = self.socket.read().as_ref().map_or(0, |s| s.port);
        let table = self.peers.read();
        let now = SystemTime::now();
        let mut peers: Vec<PeerState> = table
            .by_key
            .values()
            .map(|p| {
                let since = p.tunn.lock().as_ref().and_then(|t| t.stats().0);
                let route = p.route.read();
                PeerState {
                    public_key: p.key,
                    preshared_key: *p.psk.lock(),
                    endpoint: route.endpoint,
                    last_handshake: since.and_then(|d| now.checked_sub(d)),
                    rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
                    persistent_keepalive: p.keepalive.load(Ordering::Relaxed),
                    allowed_ips: p.allowed_ips.lock().clone(),
                }
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        DeviceState {
            private_key,
            listen_port,
            fwmark: self.fwmark.load(Ordering::Relaxed),
            peers,
        }
    }
}

fn remove_peer(table: &mut PeerTable, key: &PublicKey) {
    if let Some(p) = table.by_key.remove(key) {
        table.by_index.remove(&p.index);
        for net in std::mem::take(&mut *p.allowed_ips.lock()) {
            if table.allowed.get(&net).is_some_and(|v| Arc::ptr_eq(v, &p)) {
                table.allowed.remove(&net);
            }
        }
        p.route.write().path = None;
    }
}

/// Waits until `tun` is readable or `timeout` passes.
fn wait_readable(tun: &Tun, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: tun.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    unsafe {
        libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int);
    }
}

/// A WireGuard handshake initiation (message type 1, 148 bytes).
fn is_initiation(d: &[u8]) -> bool {
    d.len() == 148 && d[..4] == [1, 0, 0, 0]
}
