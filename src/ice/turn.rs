//! A TURN client for one UDP allocation (RFC 8656, the parts ICE needs), sans-IO.
//!
//! NetBird's management hands out TURN servers with time-limited credentials (coturn's REST
//! scheme: user = expiry time, password = base64 HMAC-SHA1). With them we allocate a relayed
//! address, which becomes a `relay` ICE candidate; checks and, if that pair wins, WireGuard
//! datagrams then travel through the server: to a peer as ChannelData once a channel is bound
//! (4 bytes of overhead), as Send indications before that.
//!
//! The `is` ICE agent leaves TURN to its caller, and the Rust TURN crates are async clients
//! that own their socket; this one is a plain state machine so the connectivity task drives it
//! with its own socket and timers, like the ICE agent.

use super::stun::{self, MAGIC};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ALLOCATE: u16 = 0x003;
const REFRESH: u16 = 0x004;
const SEND: u16 = 0x006;
const DATA: u16 = 0x007;
const CREATE_PERMISSION: u16 = 0x008;
const CHANNEL_BIND: u16 = 0x009;

const CLASS_REQUEST: u16 = 0x0000;
const CLASS_INDICATION: u16 = 0x0010;
const CLASS_SUCCESS: u16 = 0x0100;
const CLASS_ERROR: u16 = 0x0110;

const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_CHANNEL_NUMBER: u16 = 0x000c;
const ATTR_LIFETIME: u16 = 0x000d;
const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
const ATTR_DATA: u16 = 0x0013;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// Allocation lifetime we ask for (the server may grant less).
const REQUESTED_LIFETIME: u32 = 600;
/// Permissions last 300 s on the server; refreshed this often while the allocation lives.
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Channel bindings last 600 s; refreshed this often.
const CHANNEL_REFRESH: Duration = Duration::from_secs(480);
/// First retransmission timeout of a request; doubles per try.
const INITIAL_RTO: Duration = Duration::from_millis(500);
/// Tries of one request before it fails.
const MAX_TRIES: u32 = 6;
/// First channel number (RFC 8656: 0x4000..=0x4FFF).
const FIRST_CHANNEL: u16 = 0x4000;
const LAST_CHANNEL: u16 = 0x4fff;

/// What the client reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// The allocation exists: our relayed address, and our address as the server sees it.
    Allocated {
        /// The relayed transport address (the ICE `relay` candidate).
        relayed: SocketAddr,
        /// Our reflexive address toward the TURN server.
        mapped: Option<SocketAddr>,
    },
    /// The allocation failed or was lost; the client is finished.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Allocate,
    Refresh(u32),
    Permission(IpAddr),
    Bind(SocketAddr, u16),
}

#[derive(Debug)]
struct Pending {
    request: Request,
    message: Vec<u8>,
    next_send: Instant,
    rto: Duration,
    tries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Allocating,
    Allocated,
    Done,
}

/// One TURN allocation on one server over UDP. Feed it the server's datagrams
/// ([`TurnClient::handle_input`]), send what [`TurnClient::poll_transmit`] returns to the
/// server, and call [`TurnClient::handle_timeout`] at [`TurnClient::poll_timeout`].
#[derive(Debug)]
pub struct TurnClient {
    server: SocketAddr,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    key: Option<[u8; 16]>,
    phase: Phase,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    pending: HashMap<[u8; 12], Pending>,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<SocketAddr, (u16, bool, Instant)>,
    by_channel: HashMap<u16, SocketAddr>,
    next_channel: u16,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
}

impl TurnClient {
    /// Starts allocating on `server` with long-term credentials.
    pub fn new(server: SocketAddr, username: String, password: String, now: Instant) -> Self {
        let mut c = TurnClient {
            server,
            username,
            password,
            realm: None,
            nonce: None,
            key: None,
            phase: Phase::Allocating,
            relayed: None,
            refresh_at: None,
            pending: HashMap::new(),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_channel: HashMap::new(),
            next_channel: FIRST_CHANNEL,
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        c.request(Request::Allocate, now);
        c
    }

    /// The TURN server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Our relayed address once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// Whether the allocation is gone (failed or released).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// New credentials (NetBird rotates them); used from the next request on.
    pub fn update_credentials(&mut self, username: String, password: String) {
        if username != self.username || password != self.password {
            self.username = username;
            self.password = password;
            self.key = self.realm.as_deref().map(|r| self.long_term_key(r));
        }
    }

    /// Releases the allocation (Refresh with lifetime 0); the client is done afterwards.
    pub fn release(&mut self, now: Instant) {
        if self.phase == Phase::Allocated {
            let msg = self.build(Request::Refresh(0), rand::random());
            self.out.push_back(msg);
        }
        self.pending.clear();
        self.phase = Phase::Done;
        let _ = now;
    }

    /// The next datagram for the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    /// When [`TurnClient::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        let mut next = self.refresh_at;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for p in self.pending.values() {
            consider(p.next_send);
        }
        if self.phase == Phase::Allocated {
            for t in self.permissions.values() {
                consider(*t + PERMISSION_REFRESH);
            }
            for (_, _, t) in self.channels.values() {
                consider(*t + CHANNEL_REFRESH);
            }
        }
        next
    }

    /// Retransmits and refreshes what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        let mut failed = None;
        for p in self.pending.values_mut() {
            if p.next_send > now {
                continue;
            }
            if p.tries >= MAX_TRIES {
                failed = Some(p.request);
                continue;
            }
            p.tries += 1;
            p.next_send = now + p.rto;
            p.rto *= 2;
            self.out.push_back(p.message.clone());
        }
        if let Some(r) = failed {
            self.pending.retain(|_, p| p.request != r);
            match r {
                Request::Allocate | Request::Refresh(_) => {
                    self.fail(format!("TURN server {} did not answer", self.server))
                }
                Request::Permission(ip) => {
                    self.permissions.remove(&ip);
                }
                Request::Bind(peer, n) => {
                    self.channels.remove(&peer);
                    self.by_channel.remove(&n);
                }
            }
        }
        if self.phase != Phase::Allocated {
            return;
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = None;
            self.request(Request::Refresh(REQUESTED_LIFETIME), now);
        }
        let stale: Vec<IpAddr> = self
            .permissions
            .iter()
            .filter(|(_, t)| **t + PERMISSION_REFRESH <= now)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in stale {
            self.permissions.insert(ip, now);
            self.request(Request::Permission(ip), now);
        }
        let stale: Vec<(SocketAddr, u16)> = self
            .channels
            .iter()
            .filter(|(_, (_, _, t))| *t + CHANNEL_REFRESH <= now)
            .map(|(peer, (n, _, _))| (*peer, *n))
            .collect();
        for (peer, n) in stale {
            if let Some(c) = self.channels.get_mut(&peer) {
                c.2 = now;
            }
            self.request(Request::Bind(peer, n), now);
        }
    }

    /// Wraps `payload` for `peer` into a datagram for the server: ChannelData when a channel
    /// is bound, a Send indication before. Installs the permission and channel on first use.
    /// `None` until the allocation exists.
    pub fn encode_to_peer(
        &mut self,
        peer: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        if self.phase != Phase::Allocated {
            return None;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.permissions.entry(peer.ip()) {
            e.insert(now);
            self.request(Request::Permission(peer.ip()), now);
        }
        match self.channels.get(&peer).copied() {
            Some((n, true, _)) => return Some(channel_data(n, payload)),
            Some(_) => {}
            None if self.next_channel <= LAST_CHANNEL => {
                let n = self.next_channel;
                self.next_channel += 1;
                self.channels.insert(peer, (n, false, now));
                self.by_channel.insert(n, peer);
                self.request(Request::Bind(peer, n), now);
            }
            None => {}
        }
        let tid: [u8; 12] = rand::random();
        let mut m = Message::new(SEND | CLASS_INDICATION, tid);
        m.attr(ATTR_XOR_PEER_ADDRESS, &stun::xor_address(peer, &tid));
        m.attr(ATTR_DATA, payload);
        Some(m.finish(None))
    }

    /// Handles a datagram from the server. Returns relayed data from a peer (ChannelData or a
    /// Data indication); responses update the allocation and may queue events. Garbage is
    /// ignored.
    pub fn handle_input(&mut self, now: Instant, d: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        if is_channel_data(d) {
            let n = u16::from_be_bytes([d[0], d[1]]);
            let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
            let peer = *self.by_channel.get(&n)?;
            return d.get(4..4 + len).map(|p| (peer, p.to_vec()));
        }
        let msg = Parsed::parse(d)?;
        if msg.kind == DATA | CLASS_INDICATION {
            let peer = stun::parse_xor_address(msg.get(ATTR_XOR_PEER_ADDRESS)?, &msg.tid)?;
            return Some((peer, msg.get(ATTR_DATA)?.to_vec()));
        }
        let pending = self.pending.remove(&msg.tid)?;
        let class = msg.kind & 0x0110;
        if class == CLASS_SUCCESS {
            self.on_success(pending.request, &msg, now);
        } else if class == CLASS_ERROR {
            self.on_error(pending, &msg, now);
        } else {
            self.pending.insert(msg.tid, pending);
        }
        None
    }

    fn on_success(&mut self, request: Request, msg: &Parsed<'_>, now: Instant) {
        match request {
            Request::Allocate => {
                let Some(relayed) = msg
                    .get(ATTR_XOR_RELAYED_ADDRESS)
                    .and_then(|v| stun::parse_xor_address(v, &msg.tid))
                else {
                    self.fail("TURN allocation without a relayed address".into());
                    return;
                };
                let mapped = msg
                    .get(ATTR_XOR_MAPPED_ADDRESS)
                    .and_then(|v| stun::parse_xor_address(v, &msg.tid));
                self.phase = Phase::Allocated;
                self.relayed = Some(relayed);
                self.schedule_refresh(msg, now);
                self.events
                    .push_back(TurnEvent::Allocated { relayed, mapped });
            }
            Request::Refresh(0) => {}
            Request::Refresh(_) => self.schedule_refresh(msg, now),
            Request::Permission(_) => {}
            Request::Bind(peer, n) => {
                if let Some(c) = self.channels.get_mut(&peer) {
                    if c.0 == n {
                        c.1 = true;
                    }
                }
            }
        }
    }

    fn on_error(&mut self, pending: Pending, msg: &Parsed<'_>, now: Instant) {
        let code = msg.get(ATTR_ERROR_CODE).and_then(error_code).unwrap_or(0);
        match code {
            // Unauthenticated, or a stale nonce: learn realm/nonce and try again, once per
            // nonce (a second 401 with the same nonce means bad credentials).
            401 | 438 => {
                let nonce = msg.get(ATTR_NONCE).map(<[u8]>::to_vec);
                let retry = nonce.is_some() && (nonce != self.nonce || self.key.is_none());
                if let Some(realm) = msg.get(ATTR_REALM) {
                    let realm = String::from_utf8_lossy(realm).into_owned();
                    self.key = Some(self.long_term_key(&realm));
                    self.realm = Some(realm);
                }
                if retry && self.key.is_some() {
                    self.nonce = nonce;
                    self.request(pending.request, now);
                } else {
                    self.request_failed(pending.request, "TURN credentials rejected".into());
                }
            }
            // Allocation mismatch on Refresh: it is gone.
            _ => self.request_failed(pending.request, format!("TURN error {code}")),
        }
    }

    fn request_failed(&mut self, request: Request, why: String) {
        match request {
            Request::Allocate | Request::Refresh(_) => self.fail(why),
            Request::Permission(ip) => {
                tracing::debug!(%ip, "TURN permission refused: {why}");
                self.permissions.remove(&ip);
            }
            Request::Bind(peer, n) => {
                tracing::debug!(%peer, "TURN channel refused: {why}");
                self.channels.remove(&peer);
                self.by_channel.remove(&n);
            }
        }
    }

    fn fail(&mut self, why: String) {
        if self.phase != Phase::Done {
            self.phase = Phase::Done;
            self.pending.clear();
            self.events.push_back(TurnEvent::Failed(why));
        }
    }

    fn schedule_refresh(&mut self, msg: &Parsed<'_>, now: Instant) {
        let lifetime = msg
            .get(ATTR_LIFETIME)
            .and_then(|v| v.get(..4))
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .unwrap_or(REQUESTED_LIFETIME);
        // Refresh a minute early, or at half the lifetime if it is short.
        let secs = u64::from(lifetime);
        let early = if secs > 120 { secs - 60 } else { secs / 2 };
        self.refresh_at = Some(now + Duration::from_secs(early.max(1)));
    }

    fn long_term_key(&self, realm: &str) -> [u8; 16] {
        let mut h = Md5::new();
        h.update(format!("{}:{}:{}", self.username, realm, self.password).as_bytes());
        h.finalize().into()
    }

    fn request(&mut self, request: Request, now: Instant) {
        let tid: [u8; 12] = rand::random();
        let message = self.build(request, tid);
        self.out.push_back(message.clone());
        self.pending.insert(
            tid,
            Pending {
                request,
                message,
                next_send: now + INITIAL_RTO,
                rto: INITIAL_RTO * 2,
                tries: 1,
            },
        );
    }

    fn build(&self, request: Request, tid: [u8; 12]) -> Vec<u8> {
        let (method, attrs): (u16, Vec<(u16, Vec<u8>)>) = match request {
            Request::Allocate => (
                ALLOCATE,
                vec![
                    (ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
                    (ATTR_LIFETIME, REQUESTED_LIFETIME.to_be_bytes().to_vec()),
                ],
            ),
            Request::Refresh(lifetime) => (
                REFRESH,
                vec![(ATTR_LIFETIME, lifetime.to_be_bytes().to_vec())],
            ),
            Request::Permission(ip) => (
                CREATE_PERMISSION,
                vec![(
                    ATTR_XOR_PEER_ADDRESS,
                    stun::xor_address(SocketAddr::new(ip, 0), &tid),
                )],
            ),
            Request::Bind(peer, n) => (
                CHANNEL_BIND,
                vec![
                    (ATTR_CHANNEL_NUMBER, [n.to_be_bytes(), [0, 0]].concat()),
                    (ATTR_XOR_PEER_ADDRESS, stun::xor_address(peer, &tid)),
                ],
            ),
        };
        let mut m = Message::new(method | CLASS_REQUEST, tid);
        for (t, v) in &attrs {
            m.attr(*t, v);
        }
        match (&self.key, &self.realm, &self.nonce) {
            (Some(key), Some(realm), Some(nonce)) => {
                m.attr(ATTR_USERNAME, self.username.as_bytes());
                m.attr(ATTR_REALM, realm.as_bytes());
                m.attr(ATTR_NONCE, nonce);
                m.finish(Some(key))
            }
            _ => m.finish(None),
        }
    }
}

/// True for TURN ChannelData framing (first two bits 01, RFC 8656 12.4).
pub fn is_channel_data(d: &[u8]) -> bool {
    d.len() >= 4 && (0x40..=0x4f).contains(&d[0])
}

fn channel_data(n: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + payload.len() + 3);
    v.extend_from_slice(&n.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    // UDP needs no padding (RFC 8656 12.5), but coturn accepts and some servers expect it.
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn error_code(v: &[u8]) -> Option<u16> {
    let class = u16::from(*v.get(2)? & 0x07);
    let number = u16::from(*v.get(3)?);
    Some(class * 100 + number)
}

/// coturn's REST-API credentials, as NetBird management makes them: the user name is the
/// expiry as Unix seconds, the password base64(HMAC-SHA1(secret, user)).
pub fn time_based_credentials(secret: &str, ttl: Duration, now: SystemTime) -> (String, String) {
    use base64::Engine as _;
    let expiry = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(ttl)
        .as_secs();
    let user = expiry.to_string();
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(user.as_bytes());
    let pass = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (user, pass)
}

/// A STUN message being built.
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(kind: u16, tid: [u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&kind.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&tid);
        Message { buf }
    }

    fn attr(&mut self, t: u16, v: &[u8]) {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf.extend_from_slice(&(v.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(v);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn set_len(&mut self, len: usize) {
        self.buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    }

    /// Sets the length and, with a key, appends MESSAGE-INTEGRITY (HMAC-SHA1 over the message
    /// with the length already counting the integrity attribute, RFC 8489 14.5).
    fn finish(mut self, key: Option<&[u8; 16]>) -> Vec<u8> {
        match key {
            None => {
                let len = self.buf.len() - 20;
                self.set_len(len);
            }
            Some(key) => {
                let len = self.buf.len() - 20 + 24;
                self.set_len(len);
                let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                mac.update(&self.buf);
                let tag = mac.finalize().into_bytes();
                self.attr(ATTR_MESSAGE_INTEGRITY, &tag);
            }
        }
        self.buf
    }
}

/// A parsed STUN message: type, transaction id and attributes (first of each type wins).
struct Parsed<'a> {
    kind: u16,
    tid: [u8; 12],
    attrs: Vec<(u16, &'a [u8])>,
}

impl<'a> Parsed<'a> {
    fn parse(d: &'a [u8]) -> Option<Self> {
        if d.len() < 20 || d[0] & 0xc0 != 0 || d[4..8] != MAGIC {
            return None;
        }
        let kind = u16::from_be_bytes([d[0], d[1]]);
        let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
        let body = d.get(20..20 + len)?;
        let tid: [u8; 12] = d[8..20].try_into().ok()?;
        let mut attrs = Vec::new();
        let mut i = 0;
        while i + 4 <= body.len() {
            let t = u16::from_be_bytes([body[i], body[i + 1]]);
            let l = usize::from(u16::from_be_bytes([body[i + 2], body[i + 3]]));
            let v = body.get(i + 4..i + 4 + l)?;
            attrs.push((t, v));
            i += 4 + l.div_ceil(4) * 4;
        }
        Some(Parsed { kind, tid, attrs })
    }

    fn get(&self, t: u16) -> Option<&'a [u8]> {
        self.attrs.iter().find(|(k, _)| *k == t).map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests;
