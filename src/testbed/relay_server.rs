//! Stand-in NetBird relay server for tests and the lab (WebSocket transport).
//!
//! Same protocol as upstream `relay/server/*.go`: HTTP upgrade on `/relay`; the first message
//! must be an auth with a valid HMAC token (else the connection is closed); the answer is the
//! instance URL; transport messages are forwarded with the peer id rewritten to the sender's;
//! peer state subscriptions get "peers online" at once or on arrival and "went offline" on
//! departure; a newer connection with the same id replaces the older; health checks go out
//! every 25 s and a client silent for a whole window is cut; bad frames close the connection.

use crate::relay::auth::{self, RelayToken};
use crate::relay::messages::{self, ClientMsg, MsgType, PeerId};
use futures::{SinkExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// Per-connection queue of frames waiting to be written; full = frames to it are dropped.
const WRITE_QUEUE: usize = 256;

/// Mints relay credentials for `NetbirdConfig.relay`, valid for `ttl` from now:
/// `(tokenPayload, tokenSignature)`.
pub fn mint_relay_token(secret: &str, ttl: Duration) -> (String, String) {
    let t = auth::mint(secret, unix_now().saturating_add(ttl.as_secs()));
    (t.payload, t.signature)
}

/// [`mint_relay_token`] as the client-side type.
pub fn mint_token(secret: &str, ttl: Duration) -> RelayToken {
    let (payload, signature) = mint_relay_token(secret, ttl);
    RelayToken { payload, signature }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Timings of the relay server.
#[derive(Debug, Clone)]
pub struct RelayServerOptions {
    /// Interval between health checks (upstream 25 s).
    pub health_interval: Duration,
    /// Extra time a client has to answer before it is cut (upstream 20 s: a 45 s window).
    pub health_timeout: Duration,
    /// Limit for the auth message after the upgrade (upstream 10 s).
    pub handshake_timeout: Duration,
}

impl Default for RelayServerOptions {
    fn default() -> Self {
        RelayServerOptions {
            health_interval: Duration::from_secs(25),
            health_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

struct PeerEntry {
    conn: u64,
    tx: mpsc::Sender<Message>,
    kill: Option<oneshot::Sender<()>>,
    /// Peers this one wants "online" news about (cleared per peer once told).
    want_online: HashSet<PeerId>,
    /// Peers this one wants "went offline" news about.
    want_offline: HashSet<PeerId>,
}

struct Shared {
    secret: String,
    instance_url: String,
    opts: RelayServerOptions,
    peers: Mutex<HashMap<PeerId, PeerEntry>>,
    next_conn: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerId, PeerEntry>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn send_ids(tx: &mpsc::Sender<Message>, ty: MsgType, ids: &[PeerId]) {
    for m in messages::id_list(ty, ids) {
        let _ = tx.try_send(Message::Binary(m.into()));
    }
}

/// A running testbed relay server.
pub struct RelayServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// Starts a relay on `addr` accepting tokens minted with `secret`. `instance_url` is what the
/// auth response announces; `None` means `rel://<bound address>`.
pub async fn start(
    addr: SocketAddr,
    secret: &str,
    instance_url: Option<&str>,
) -> std::io::Result<RelayServerHandle> {
    start_with(addr, secret, instance_url, RelayServerOptions::default()).await
}

/// [`start`] with explicit timings.
pub async fn start_with(
    addr: SocketAddr,
    secret: &str,
    instance_url: Option<&str>,
    opts: RelayServerOptions,
) -> std::io::Result<RelayServerHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        secret: secret.to_string(),
        instance_url: instance_url
            .map(str::to_string)
            .unwrap_or_else(|| format!("rel://{addr}")),
        opts,
        peers: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx));
    Ok(RelayServerHandle {
        addr,
        shared,
        shutdown,
        task: Some(task),
    })
}

impl RelayServerHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A URL to dial this server with: `rel://<addr>`.
    pub fn url(&self) -> String {
        format!("rel://{}", self.addr)
    }

    /// The instance URL announced in auth responses.
    pub fn instance_url(&self) -> &str {
        &self.shared.instance_url
    }

    /// Number of authenticated peers.
    pub fn peer_count(&self) -> usize {
        self.shared.lock().len()
    }

    /// Closes every peer gracefully (`01 04`) and stops listening.
    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl RelayServerHandle {
    /// Stops and starts again on the same port (same secret, instance URL and timings), with
    /// no peers: a relay that dropped everyone and came back.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let fresh = start_with(
            self.addr,
            &self.shared.secret,
            Some(&self.shared.instance_url),
            self.shared.opts.clone(),
        )
        .await?;
        *self = fresh;
        Ok(())
    }
}

impl Drop for RelayServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            acc = listener.accept() => match acc {
                Ok((tcp, from)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(handle(tcp, from, shared.clone(), shutdown.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "relay testbed accept failed"),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

#[allow(clippy::result_large_err)] // the callback signature is tungstenite's
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == "/relay" {
        Ok(resp)
    } else {
        let mut e = ErrorResponse::new(Some("not found".into()));
        *e.status_mut() = StatusCode::NOT_FOUND;
        Err(e)
    }
}

async fn handle(
    tcp: TcpStream,
    from: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ws = match tokio_tungstenite::accept_hdr_async(tcp, check_path).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%from, error = %e, "relay testbed: upgrade failed");
            return;
        }
    };
    let (mut sink, mut stream) = ws.split();

    // Handshake: the first binary message must be a valid auth.
    let first = tokio::time::timeout(shared.opts.handshake_timeout, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Binary(b))) => return Some(b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let peer = match first.as_deref().map(messages::parse_client) {
        Some(Ok(ClientMsg::Auth { peer, token })) => {
            match auth::validate(&shared.secret, token, unix_now()) {
                Ok(()) => peer,
                Err(e) => {
                    tracing::info!(error = %e, "relay testbed: auth refused");
                    tracing::debug!(%from, "relay testbed: refused client");
                    let _ = sink.close().await;
                    return;
                }
            }
        }
        other => {
            let why = match other {
                Some(Err(e)) => e.to_string(),
                Some(Ok(_)) => "first message is not auth".into(),
                None => "no auth message in time".into(),
            };
            tracing::info!(reason = %why, "relay testbed: bad handshake");
            let _ = sink.close().await;
            return;
        }
    };

    let (tx, mut rx) = mpsc::channel::<Message>(WRITE_QUEUE);
    let writer = tokio::spawn(async move {
        let _ = crate::relay::write_queued(&mut sink, &mut rx).await;
        let _ = sink.close().await;
    });
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (kill_tx, mut kill_rx) = oneshot::channel();
    register(&shared, peer, conn, tx.clone(), kill_tx);
    tracing::debug!(%peer, %from, "relay testbed: peer connected");
    if let Ok(m) = messages::auth_response(&shared.instance_url) {
        let _ = tx.send(Message::Binary(m.into())).await;
    }

    let opts = shared.opts.clone();
    let mut hc =
        tokio::time::interval_at(Instant::now() + opts.health_interval, opts.health_interval);
    let mut last_ack = Instant::now();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let parsed = messages::parse_client(&b).map(|m| match m {
                        ClientMsg::Transport { to, .. } => Some(to),
                        other => {
                            on_control(&shared, peer, &tx, other, &mut last_ack);
                            None
                        }
                    });
                    match parsed {
                        Ok(Some(to)) => forward(&shared, peer, to, &b),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::info!(error = %e, "relay testbed: bad frame, closing");
                            tracing::debug!(%peer, "relay testbed: closed peer");
                            break;
                        }
                    }
                    if is_close(&b) {
                        tracing::debug!(%peer, "relay testbed: peer exited gracefully");
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = hc.tick() => {
                if last_ack.elapsed() > opts.health_interval + opts.health_timeout {
                    tracing::info!("relay testbed: health check timeout, cutting peer");
                    tracing::debug!(%peer, "relay testbed: cut peer");
                    break;
                }
                let _ = tx.try_send(Message::Binary(messages::health_check().into()));
            }
            _ = &mut kill_rx => {
                tracing::debug!(%peer, "relay testbed: replaced by a newer connection");
                break;
            }
            _ = shutdown.changed() => {
                let _ = tx.send(Message::Binary(messages::close().into())).await;
                break;
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    drop(tx);
    deregister(&shared, peer, conn);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

fn is_close(b: &[u8]) -> bool {
    b.len() >= 2 && b[1] == MsgType::Close as u8
}

fn on_control(
    shared: &Shared,
    me: PeerId,
    tx: &mpsc::Sender<Message>,
    msg: ClientMsg<'_>,
    last_ack: &mut Instant,
) {
    match msg {
        ClientMsg::HealthCheck => *last_ack = Instant::now(),
        ClientMsg::Subscribe(ids) => {
            let mut peers = shared.lock();
            let online: Vec<PeerId> = ids
                .iter()
                .filter(|id| peers.contains_key(*id))
                .copied()
                .collect();
            if let Some(e) = peers.get_mut(&me) {
                e.want_online.extend(ids.iter().copied());
                e.want_offline.extend(ids.iter().copied());
            }
            drop(peers);
            if !online.is_empty() {
                send_ids(tx, MsgType::PeersOnline, &online);
            }
        }
        ClientMsg::Unsubscribe(ids) => {
            if let Some(e) = shared.lock().get_mut(&me) {
                for id in &ids {
                    e.want_online.remove(id);
                    e.want_offline.remove(id);
                }
            }
        }
        ClientMsg::Auth { .. } => tracing::debug!("relay testbed: ignoring repeated auth"),
        ClientMsg::Close | ClientMsg::Transport { .. } => {}
    }
}

/// Forwards a transport frame to `to`, rewriting the id to the sender's.
fn forward(shared: &Shared, from: PeerId, to: PeerId, frame: &[u8]) {
    let tx = shared.lock().get(&to).map(|e| e.tx.clone());
    let Some(tx) = tx else {
        tracing::trace!(%to, "relay testbed: destination not here, dropping");
        return;
    };
    let mut out = frame.to_vec();
    if messages::rewrite_transport_id(&mut out, &from).is_ok() {
        let _ = tx.try_send(Message::Binary(out.into()));
    }
}

fn register(
    shared: &Shared,
    peer: PeerId,
    conn: u64,
    tx: mpsc::Sender<Message>,
    kill: oneshot::Sender<()>,
) {
    let mut peers = shared.lock();
    let old = peers.insert(
        peer,
        PeerEntry {
            conn,
            tx,
            kill: Some(kill),
            want_online: HashSet::new(),
            want_offline: HashSet::new(),
        },
    );
    if let Some(mut old) = old {
        if let Some(k) = old.kill.take() {
            let _ = k.send(());
        }
    }
    for (id, e) in peers.iter_mut() {
        if *id != peer && e.want_online.remove(&peer) {
            send_ids(&e.tx, MsgType::PeersOnline, &[peer]);
        }
    }
}

fn deregister(shared: &Shared, peer: PeerId, conn: u64) {
    let mut peers = shared.lock();
    if peers.get(&peer).map(|e| e.conn) != Some(conn) {
        return;
    }
    peers.remove(&peer);
    for e in peers.values_mut() {
        if e.want_offline.contains(&peer) {
            send_ids(&e.tx, MsgType::PeersWentOffline, &[peer]);
        }
    }
    tracing::debug!(%peer, "relay testbed: peer disconnected");
}
