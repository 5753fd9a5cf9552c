//! The async relay client.
//!
//! [`RelayClient`] owns one connection to one relay server. A task per connection reads the
//! WebSocket, answers health checks, tracks peer subscriptions and routes transport messages to
//! per-peer [`RelayConn`]s by channel; a writer task owns the socket's sending half. No lock is
//! shared with callers: they talk to the task through channels.
//!
//! When the connection is lost (error, server close, no health check for 35 s), every open
//! [`RelayConn`] is closed (its `recv` returns `None`), and a client made with `reconnect`
//! (the home relay) dials again with backoff; watch [`RelayClient::status`] to re-open conns.
//!
//! WebSocket crate: `tokio-tungstenite`, the tokio binding of `tungstenite`: maintained, used
//! widely (axum's WebSocket support is built on it), rustls TLS with system roots, and it serves
//! both our client and the testbed server with one dependency. QUIC is not implemented: upstream
//! races QUIC and WebSocket, and servers accept WebSocket alone.

use super::auth::{AuthError, RelayToken};
use super::messages::{self, FrameError, MsgType, PeerId, ServerMsg, MAX_MESSAGE};
use crate::crypto::PublicKey;
use crate::signal::backoff::Backoff;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long an early message (from a peer not yet opened locally) is kept.
pub const EARLY_MESSAGE_TTL: Duration = Duration::from_secs(5);
const EARLY_MESSAGE_CAPACITY: usize = 10_000;
/// Per-conn queue of received datagrams; when full, new ones are dropped (datagram semantics).
pub const CONN_QUEUE: usize = 256;
/// Queue of frames waiting for the writer.
const WRITE_QUEUE: usize = 256;

/// Where and how to reach one relay server.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `rel://host[:port]` or `rels://host[:port]` (from `NetbirdConfig.relay.urls`).
    pub url: String,
    /// Credentials from `NetbirdConfig.relay`.
    pub token: RelayToken,
    /// Reconnect after losing the connection (home relay); foreign relays are re-dialled on
    /// demand instead.
    pub reconnect: bool,
    /// Reconnect when no server health check arrives for this long (upstream 35 s).
    pub health_timeout: Duration,
    /// Limit for the WebSocket dial (upstream 30 s).
    pub dial_timeout: Duration,
    /// Limit for the auth response (upstream 8 s).
    pub auth_timeout: Duration,
    /// How long `open` waits for the peer to be online on this relay (upstream 30 s).
    pub open_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: Backoff,
}

impl RelayConfig {
    /// Upstream defaults for a home relay at `url`.
    pub fn new(url: impl Into<String>, token: RelayToken) -> Self {
        RelayConfig {
            url: url.into(),
            token,
            reconnect: true,
            health_timeout: Duration::from_secs(35),
            dial_timeout: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(8),
            open_timeout: Duration::from_secs(30),
            backoff: Backoff::relay(),
        }
    }
}

/// Relay connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Dialling or authenticating.
    Connecting,
    /// Authenticated.
    Connected,
    /// Lost; waiting out the backoff (or not reconnecting).
    Disconnected,
    /// Closed by us.
    Closed,
}

/// What `status` shows and what a connection manager watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// Current state.
    pub state: RelayState,
    /// Instance URL from the latest auth response: what goes into offers.
    pub instance_url: String,
    /// IP the relay socket is connected to (for `relayServerIP` in offers).
    pub server_ip: Option<IpAddr>,
    /// Successful connections so far; a change means conns must be re-opened.
    pub connects: u64,
    /// Why the last connection ended or failed.
    pub last_error: Option<String>,
}

/// Relay client errors.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay URL is not `rel://` or `rels://`.
    #[error("invalid relay URL {0:?}")]
    InvalidUrl(String),
    /// The token from the config is unusable.
    #[error(transparent)]
    Token(#[from] AuthError),
    /// Bad framing.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// WebSocket or TLS failure.
    #[error("relay websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// No answer in time.
    #[error("relay {0} timed out")]
    Timeout(&'static str),
    /// The server closed the connection instead of accepting the auth.
    #[error("relay refused authentication")]
    AuthRejected,
    /// The server sent something else than an auth response.
    #[error("unexpected relay message during auth")]
    UnexpectedMessage,
    /// A conn to this peer is already open or being opened.
    #[error("relay conn to {0} already open")]
    AlreadyOpen(PeerId),
    /// The peer went offline, the relay connection was lost or the client closed.
    #[error("relay conn closed")]
    Closed,
    /// The payload does not fit one relay message.
    #[error("payload too large for relay ({0} bytes)")]
    TooLarge(usize),
}

/// Converts a relay URL to its WebSocket URL: `rel://h:p` -> `ws://h:p/relay`,
/// `rels://h` -> `wss://h/relay` (default ports 80 / 443 are implied by the scheme).
pub fn ws_url(relay_url: &str) -> Result<String, RelayError> {
    let bad = || RelayError::InvalidUrl(relay_url.to_string());
    let (scheme, rest) = relay_url.split_once("://").ok_or_else(bad)?;
    let ws = match scheme {
        "rel" => "ws",
        "rels" => "wss",
        _ => return Err(bad()),
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(format!("{ws}://{host}/relay"))
}

enum Cmd {
    Open {
        peer: PeerId,
        reply: oneshot::Sender<Result<RelayConn, RelayError>>,
    },
    CloseConn {
        peer: PeerId,
        id: u64,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A connection to one relay server.
pub struct RelayClient {
    own: PeerId,
    /// The credentials the next reconnect authenticates with (management rotates them).
    token: Arc<std::sync::Mutex<RelayToken>>,
    cmd: mpsc::UnboundedSender<Cmd>,
    status: watch::Receiver<RelayStatus>,
    task: Option<JoinHandle<()>>,
}

impl RelayClient {
    /// Dials the relay, authenticates as `own` and waits for the auth response. Fails if the
    /// first connection fails; later losses are handled per `config.reconnect`.
    pub async fn connect(config: RelayConfig, own: &PublicKey) -> Result<RelayClient, RelayError> {
        let own_id = PeerId::from_public_key(own);
        let (ws, instance_url, server_ip) = dial(&config, &own_id).await?;
        tracing::info!("connected to relay");
        tracing::debug!(relay = %instance_url, "relay instance");
        let (status_tx, status_rx) = watch::channel(RelayStatus {
            state: RelayState::Connected,
            instance_url,
            server_ip,
            connects: 1,
            last_error: None,
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let token = Arc::new(std::sync::Mutex::new(config.token.clone()));
        let task = tokio::spawn(run(
            config,
            token.clone(),
            own_id,
            ws,
            cmd_tx.clone(),
            cmd_rx,
            status_tx,
        ));
        Ok(RelayClient {
            own: own_id,
            token,
            cmd: cmd_tx,
            status: status_rx,
            task: Some(task),
        })
    }

    /// Picks a home relay: dials every URL in parallel (at most 7 at once, like upstream) with
    /// `base` settings and keeps the first that authenticates; the others are closed.
    pub async fn connect_first(
        urls: &[String],
        base: RelayConfig,
        own: &PublicKey,
    ) -> Result<RelayClient, RelayError> {
        use futures::stream::FuturesUnordered;
        let mut last = RelayError::InvalidUrl(String::new());
        for batch in urls.chunks(7) {
            let mut pending: FuturesUnordered<_> = batch
                .iter()
                .map(|u| {
                    let mut cfg = base.clone();
                    cfg.url = u.clone();
                    RelayClient::connect(cfg, own)
                })
                .collect();
            while let Some(res) = pending.next().await {
                match res {
                    // Dropping `pending` abandons the slower dials.
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::debug!(error = %e, "relay candidate failed");
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }

    /// New credentials from management (relay tokens expire): the next reconnect uses them.
    pub fn update_token(&self, token: RelayToken) {
        if let Ok(mut t) = self.token.lock() {
            *t = token;
        }
    }

    /// The server's instance URL (from the latest auth response): advertise this in offers.
    pub fn instance_url(&self) -> String {
        self.status.borrow().instance_url.clone()
    }

    /// Our own relay peer id.
    pub fn peer_id(&self) -> PeerId {
        self.own
    }

    /// A watch of the connection state.
    pub fn status(&self) -> watch::Receiver<RelayStatus> {
        self.status.clone()
    }

    /// Opens a conn to `peer`: subscribes to its state and waits until the server reports it
    /// online (up to `open_timeout`).
    pub async fn open(&self, peer: &PublicKey) -> Result<RelayConn, RelayError> {
        self.open_id(PeerId::from_public_key(peer)).await
    }

    /// [`RelayClient::open`] by relay peer id.
    pub async fn open_id(&self, peer: PeerId) -> Result<RelayConn, RelayError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Open { peer, reply })
            .map_err(|_| RelayError::Closed)?;
        rx.await.map_err(|_| RelayError::Closed)?
    }

    /// Closes gracefully (`01 04`), ending every conn, and waits for the task.
    pub async fn close(mut self) {
        let (done, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Shutdown { done }).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        let (done, _) = oneshot::channel();
        let _ = self.cmd.send(Cmd::Shutdown { done });
    }
}

/// A datagram conn to one peer through a relay. Dropping it unsubscribes.
pub struct RelayConn {
    sender: RelayConnSender,
    id: u64,
    rx: mpsc::Receiver<Vec<u8>>,
    cmd: mpsc::UnboundedSender<Cmd>,
}

/// The sending half of a [`RelayConn`]; cheap to clone.
#[derive(Clone)]
pub struct RelayConnSender {
    peer: PeerId,
    frames: mpsc::Sender<Message>,
    closed: Arc<AtomicBool>,
}

impl RelayConnSender {
    /// Sends one datagram to the peer. Fails once the conn is closed.
    pub async fn send(&self, payload: &[u8]) -> Result<(), RelayError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(RelayError::Closed);
        }
        if messages::TRANSPORT_HEADER + payload.len() > MAX_MESSAGE {
            return Err(RelayError::TooLarge(payload.len()));
        }
        let frame = messages::transport(&self.peer, payload);
        self.frames
            .send(Message::Binary(frame.into()))
            .await
            .map_err(|_| RelayError::Closed)
    }

    /// True once the peer went offline or the relay connection ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl RelayConn {
    /// The remote peer's relay id.
    pub fn peer_id(&self) -> PeerId {
        self.sender.peer
    }

    /// Sends one datagram to the peer.
    pub async fn send(&self, payload: &[u8]) -> Result<(), RelayError> {
        self.sender.send(payload).await
    }

    /// Receives the next datagram from the peer; `None` once the conn is closed.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }

    /// A cloneable sending half, for a task other than the receiver.
    pub fn sender(&self) -> RelayConnSender {
        self.sender.clone()
    }

    /// True once the peer went offline or the relay connection ended.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Drop for RelayConn {
    fn drop(&mut self) {
        let _ = self.cmd.send(Cmd::CloseConn {
            peer: self.sender.peer,
            id: self.id,
        });
    }
}

fn socket_ip(ws: &Ws) -> Option<IpAddr> {
    let tcp = match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s,
        MaybeTlsStream::Rustls(s) => s.get_ref().0,
        _ => return None,
    };
    tcp.peer_addr().ok().map(|a| a.ip())
}

/// Dials and authenticates: returns the socket, the instance URL and the server IP.
async fn dial(
    config: &RelayConfig,
    own: &PeerId,
) -> Result<(Ws, String, Option<IpAddr>), RelayError> {
    let url = ws_url(&config.url)?;
    let auth = messages::auth(own, &config.token.to_wire()?)?;
    let (mut ws, _) = tokio::time::timeout(
        config.dial_timeout,
        // No Nagle: writes are already batched (see `write_queued`), and delaying small
        // datagrams (TCP ACKs inside the tunnel) costs throughput.
        tokio_tungstenite::connect_async_with_config(url.as_str(), None, true),
    )
    .await
    .map_err(|_| RelayError::Timeout("dial"))??;
    let ip = socket_ip(&ws);
    ws.send(Message::Binary(auth.into())).await?;
    let url = tokio::time::timeout(config.auth_timeout, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    return match messages::parse_server(&b)? {
                        ServerMsg::AuthResponse(url) => Ok(url),
                        _ => Err(RelayError::UnexpectedMessage),
                    };
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Text(_))) => return Err(RelayError::UnexpectedMessage),
                Some(Ok(Message::Close(_))) | None => return Err(RelayError::AuthRejected),
                Some(Err(e)) => return Err(e.into()),
            }
        }
    })
    .await
    .map_err(|_| RelayError::Timeout("auth"))??;
    Ok((ws, url, ip))
}

/// Early messages: one per peer, kept [`EARLY_MESSAGE_TTL`].
#[derive(Default)]
struct EarlyBuffer {
    msgs: HashMap<PeerId, (Instant, Vec<u8>)>,
}

impl EarlyBuffer {
    fn put(&mut self, peer: PeerId, msg: Vec<u8>, now: Instant) {
        if self.msgs.len() >= EARLY_MESSAGE_CAPACITY {
            self.msgs
                .retain(|_, (at, _)| now.duration_since(*at) <= EARLY_MESSAGE_TTL);
            if self.msgs.len() >= EARLY_MESSAGE_CAPACITY && !self.msgs.contains_key(&peer) {
                return;
            }
        }
        self.msgs.insert(peer, (now, msg));
    }

    fn pop(&mut self, peer: &PeerId, now: Instant) -> Option<Vec<u8>> {
        let (at, msg) = self.msgs.remove(peer)?;
        (now.duration_since(at) <= EARLY_MESSAGE_TTL).then_some(msg)
    }
}

enum Entry {
    Waiting {
        id: u64,
        reply: oneshot::Sender<Result<RelayConn, RelayError>>,
        deadline: Instant,
    },
    Open {
        id: u64,
        data: mpsc::Sender<Vec<u8>>,
        closed: Arc<AtomicBool>,
    },
}

impl Entry {
    fn id(&self) -> u64 {
        match self {
            Entry::Waiting { id, .. } | Entry::Open { id, .. } => *id,
        }
    }

    fn close(self) {
        match self {
            Entry::Waiting { reply, .. } => {
                let _ = reply.send(Err(RelayError::Closed));
            }
            Entry::Open { closed, .. } => closed.store(true, Ordering::Release),
        }
    }
}

/// Why a session ended.
enum End {
    Shutdown(oneshot::Sender<()>),
    Lost(String),
}

struct Session {
    config: RelayConfig,
    frames: mpsc::Sender<Message>,
    cmd: mpsc::UnboundedSender<Cmd>,
    conns: HashMap<PeerId, Entry>,
    early: EarlyBuffer,
    next_id: Arc<AtomicU64>,
}

/// The connection task: sessions and reconnects.
async fn run(
    mut config: RelayConfig,
    token: Arc<std::sync::Mutex<RelayToken>>,
    own: PeerId,
    first: Ws,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    status: watch::Sender<RelayStatus>,
) {
    let next_id = Arc::new(AtomicU64::new(1));
    let mut ws = Some(first);
    loop {
        if let Some(socket) = ws.take() {
            let end = session(&config, socket, &cmd_tx, &mut cmd_rx, &next_id).await;
            match end {
                End::Shutdown(done) => {
                    status.send_modify(|s| s.state = RelayState::Closed);
                    let _ = done.send(());
                    return;
                }
                End::Lost(why) => {
                    tracing::info!(reason = %why, "relay connection lost");
                    status.send_modify(|s| {
                        s.state = RelayState::Disconnected;
                        s.last_error = Some(why);
                    });
                    if !config.reconnect {
                        break;
                    }
                }
            }
        }
        let delay = config.backoff.next_random();
        // While waiting, refuse opens and honour shutdown.
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                cmd = cmd_rx.recv() => match cmd {
                    Some(Cmd::Open { reply, .. }) => { let _ = reply.send(Err(RelayError::Closed)); }
                    Some(Cmd::CloseConn { .. }) => {}
                    Some(Cmd::Shutdown { done }) => {
                        status.send_modify(|s| s.state = RelayState::Closed);
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
            }
        }
        status.send_modify(|s| s.state = RelayState::Connecting);
        if let Ok(t) = token.lock() {
            config.token = t.clone();
        }
        match dial(&config, &own).await {
            Ok((socket, url, ip)) => {
                tracing::info!("reconnected to relay");
                tracing::debug!(relay = %url, "relay instance");
                config.backoff.reset();
                status.send_modify(|s| {
                    s.state = RelayState::Connected;
                    s.instance_url = url;
                    s.server_ip = ip;
                    s.connects += 1;
                    s.last_error = None;
                });
                ws = Some(socket);
            }
            Err(e) => {
                tracing::debug!(error = %e, "relay reconnect failed");
                status.send_modify(|s| {
                    s.state = RelayState::Disconnected;
                    s.last_error = Some(e.to_string());
                });
            }
        }
    }
    // Not reconnecting: answer opens with Closed until shut down.
    while let Some(cmd) = cmd_rx.recv().await {
        match cmd {
            Cmd::Open { reply, .. } => {
                let _ = reply.send(Err(RelayError::Closed));
            }
            Cmd::CloseConn { .. } => {}
            Cmd::Shutdown { done } => {
                status.send_modify(|s| s.state = RelayState::Closed);
                let _ = done.send(());
                return;
            }
        }
    }
}

async fn writer(
    mut sink: futures::stream::SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Message>,
) {
    if let Err(e) = super::write_queued(&mut sink, &mut rx).await {
        tracing::debug!(error = %e, "relay write failed");
        return;
    }
    let _ = sink.close().await;
}

/// One authenticated connection: runs until it is lost or shut down.
async fn session(
    config: &RelayConfig,
    ws: Ws,
    cmd_tx: &mpsc::UnboundedSender<Cmd>,
    cmd_rx: &mut mpsc::UnboundedReceiver<Cmd>,
    next_id: &Arc<AtomicU64>,
) -> End {
    let (sink, mut stream) = ws.split();
    let (frames, frames_rx) = mpsc::channel(WRITE_QUEUE);
    let writer = tokio::spawn(writer(sink, frames_rx));
    let mut s = Session {
        config: config.clone(),
        frames,
        cmd: cmd_tx.clone(),
        conns: HashMap::new(),
        early: EarlyBuffer::default(),
        next_id: next_id.clone(),
    };
    let mut last_health = Instant::now();
    let end = loop {
        let health_deadline = last_health + config.health_timeout;
        let wake = s
            .conns
            .values()
            .filter_map(|e| match e {
                Entry::Waiting { deadline, .. } => Some(*deadline),
                Entry::Open { .. } => None,
            })
            .fold(health_deadline, std::cmp::min);
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Some(why) = s.on_message(&b, &mut last_health).await {
                        break End::Lost(why);
                    }
                }
                Some(Ok(Message::Close(_))) | None => break End::Lost("relay closed the connection".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break End::Lost(format!("relay read: {e}")),
            },
            cmd = cmd_rx.recv() => match cmd {
                Some(Cmd::Open { peer, reply }) => s.open(peer, reply).await,
                Some(Cmd::CloseConn { peer, id }) => s.close_conn(peer, id).await,
                Some(Cmd::Shutdown { done }) => {
                    let _ = s.frames.send(Message::Binary(messages::close().into())).await;
                    let _ = s.frames.send(Message::Close(None)).await;
                    break End::Shutdown(done);
                }
                None => break End::Lost("client gone".into()),
            },
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= health_deadline {
                    break End::Lost("no health check from relay".into());
                }
                s.expire_waiting(now).await;
            }
        }
    };
    for (_, e) in s.conns.drain() {
        e.close();
    }
    drop(s);
    if matches!(end, End::Shutdown(_)) {
        let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
    } else {
        writer.abort();
    }
    end
}

impl Session {
    async fn write(&self, frame: Vec<u8>) {
        if self
            .frames
            .send(Message::Binary(frame.into()))
            .await
            .is_err()
        {
            tracing::debug!("relay writer gone");
        }
    }

    /// Handles one server message; returns a reason to end the session.
    async fn on_message(&mut self, buf: &[u8], last_health: &mut Instant) -> Option<String> {
        let msg = match messages::parse_server(buf) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "dropping malformed relay message");
                return None;
            }
        };
        match msg {
            ServerMsg::HealthCheck => {
                *last_health = Instant::now();
                self.write(messages::health_check()).await;
            }
            ServerMsg::Transport { from, payload } => self.on_transport(from, payload),
            ServerMsg::PeersOnline(ids) => {
                for id in ids {
                    self.on_online(id);
                }
            }
            ServerMsg::PeersWentOffline(ids) => {
                for id in ids {
                    if matches!(self.conns.get(&id), Some(Entry::Open { .. })) {
                        tracing::debug!(peer = %id, "relay peer went offline");
                        if let Some(e) = self.conns.remove(&id) {
                            e.close();
                        }
                    }
                }
            }
            ServerMsg::Close => return Some("relay is closing".into()),
            ServerMsg::AuthResponse(_) => tracing::debug!("ignoring repeated auth response"),
        }
        None
    }

    fn on_transport(&mut self, from: PeerId, payload: &[u8]) {
        match self.conns.get(&from) {
            Some(Entry::Open { data, .. }) => {
                if data.try_send(payload.to_vec()).is_err() {
                    tracing::trace!(peer = %from, "relay conn queue full, dropping datagram");
                }
            }
            _ => self.early.put(from, payload.to_vec(), Instant::now()),
        }
    }

    fn on_online(&mut self, peer: PeerId) {
        let Some(Entry::Waiting { .. }) = self.conns.get(&peer) else {
            return;
        };
        let Some(Entry::Waiting { id, reply, .. }) = self.conns.remove(&peer) else {
            return;
        };
        let (data, rx) = mpsc::channel(CONN_QUEUE);
        if let Some(early) = self.early.pop(&peer, Instant::now()) {
            let _ = data.try_send(early);
        }
        let closed = Arc::new(AtomicBool::new(false));
        let conn = RelayConn {
            sender: RelayConnSender {
                peer,
                frames: self.frames.clone(),
                closed: closed.clone(),
            },
            id,
            rx,
            cmd: self.cmd.clone(),
        };
        self.conns.insert(peer, Entry::Open { id, data, closed });
        // If the opener gave up, the conn is dropped here and closes itself (CloseConn).
        let _ = reply.send(Ok(conn));
    }

    async fn open(&mut self, peer: PeerId, reply: oneshot::Sender<Result<RelayConn, RelayError>>) {
        if self.conns.contains_key(&peer) {
            let _ = reply.send(Err(RelayError::AlreadyOpen(peer)));
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.config.open_timeout;
        self.conns.insert(
            peer,
            Entry::Waiting {
                id,
                reply,
                deadline,
            },
        );
        for m in messages::id_list(MsgType::SubscribePeerState, &[peer]) {
            self.write(m).await;
        }
    }

    async fn close_conn(&mut self, peer: PeerId, id: u64) {
        if self.conns.get(&peer).map(Entry::id) == Some(id) {
            if let Some(e) = self.conns.remove(&peer) {
                e.close();
            }
            self.unsubscribe(peer).await;
        }
    }

    async fn unsubscribe(&self, peer: PeerId) {
        for m in messages::id_list(MsgType::UnsubscribePeerState, &[peer]) {
            self.write(m).await;
        }
    }

    async fn expire_waiting(&mut self, now: Instant) {
        let expired: Vec<PeerId> = self
            .conns
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Waiting { deadline, .. } if *deadline <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            if let Some(Entry::Waiting { reply, .. }) = self.conns.remove(&peer) {
                tracing::debug!(peer = %peer, "relay peer did not come online");
                let _ = reply.send(Err(RelayError::Timeout("open")));
            }
            self.unsubscribe(peer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_map_to_websocket_urls() {
        assert_eq!(
            ws_url("rel://10.0.0.1:8080").unwrap(),
            "ws://10.0.0.1:8080/relay"
        );
        assert_eq!(
            ws_url("rels://relay.example.com").unwrap(),
            "wss://relay.example.com/relay"
        );
        assert_eq!(
            ws_url("rels://relay.example.com:443/").unwrap(),
            "wss://relay.example.com:443/relay"
        );
        assert_eq!(ws_url("rel://[::1]:80").unwrap(), "ws://[::1]:80/relay");
        for bad in ["http://x", "relay.example.com", "rel://", "rels:// x"] {
            assert!(ws_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn early_buffer_keeps_one_per_peer_for_five_seconds() {
        let mut b = EarlyBuffer::default();
        let p = PeerId::from_key_text("p");
        let t0 = Instant::now();
        b.put(p, b"one".to_vec(), t0);
        b.put(p, b"two".to_vec(), t0);
        assert_eq!(b.pop(&p, t0), Some(b"two".to_vec()));
        assert_eq!(b.pop(&p, t0), None);
        b.put(p, b"old".to_vec(), t0);
        assert_eq!(b.pop(&p, t0 + Duration::from_secs(6)), None);
    }
}
