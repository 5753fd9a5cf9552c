//! The async signal client: a registration task plus a cloneable sender.

use super::backoff::Backoff;
use super::message::{self, EncodeError, ReceivedSignal, SignalMessage};
use super::{HEADER_PEER_ID, HEADER_REGISTERED};
use crate::crypto::{PrivateKey, PublicKey};
use crate::proto::signalexchange::signal_exchange_client::SignalExchangeClient;
use crate::proto::signalexchange::EncryptedMessage;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

/// Capacity of the received-message channel; when full, new messages are dropped (logged), as
/// upstream's non-blocking hand-off does. Peers retry offers, so nothing is lost for good.
pub const RECEIVE_QUEUE: usize = 1024;

/// Per-attempt timeouts of [`SignalSender::send`] (upstream: 4 attempts, 10/10/10/15 s).
const SEND_ATTEMPT_TIMEOUTS: [Duration; 4] = [
    Duration::from_secs(10),
    Duration::from_secs(10),
    Duration::from_secs(10),
    Duration::from_secs(15),
];

/// Where and how to reach the signal server, and the liveness timings.
#[derive(Debug, Clone)]
pub struct SignalConfig {
    /// `host:port` (from `NetbirdConfig.signal.uri`); a full `http(s)://` URL is accepted too.
    pub addr: String,
    /// Use TLS with the system roots (`signal.protocol == HTTPS`).
    pub tls: bool,
    /// Silence after which a self-addressed heartbeat is sent (upstream 30 s).
    pub heartbeat_after: Duration,
    /// How long the heartbeat may take to come back before reconnecting (upstream 10 s).
    pub heartbeat_timeout: Duration,
    /// Limit for dialling and registering (waiting for the registered header).
    pub connect_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: Backoff,
}

impl SignalConfig {
    /// Upstream defaults for `addr`.
    pub fn new(addr: impl Into<String>, tls: bool) -> Self {
        SignalConfig {
            addr: addr.into(),
            tls,
            heartbeat_after: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::signal(),
        }
    }
}

/// Connection state of the registration stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalState {
    /// Dialling or waiting for the registered header.
    Connecting,
    /// Registered: messages are being received.
    Connected,
    /// Lost; waiting out the backoff before the next attempt.
    Disconnected,
    /// The client was closed.
    Closed,
}

/// What `status` shows and what a connection manager watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalStatus {
    /// Current state.
    pub state: SignalState,
    /// Number of successful registrations so far. A change means the stream was re-registered,
    /// so peers should send fresh offers, even if the `Disconnected` state was not observed.
    pub registrations: u64,
    /// Why the last session ended or failed.
    pub last_error: Option<String>,
}

/// Errors of the signal client.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The configured address is not usable.
    #[error("invalid signal address {0:?}: {1}")]
    InvalidAddress(String, String),
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The server answered with an error.
    #[error("signal rpc failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// No answer in time.
    #[error("signal request timed out")]
    Timeout,
    /// The registration stream was opened but not confirmed.
    #[error("signal server did not confirm the registration")]
    NotRegistered,
}

/// Sends messages with unary `Send`. Cheap to clone; usable from any task.
#[derive(Clone)]
pub struct SignalSender {
    rpc: SignalExchangeClient<Channel>,
    key: PrivateKey,
}

impl SignalSender {
    /// Seals `msg` for `to` and sends it, retrying like upstream (4 attempts; gives up at once
    /// when cancelled). Delivery is not confirmed: the server drops messages to absent peers.
    pub async fn send(&self, to: &PublicKey, msg: &SignalMessage) -> Result<(), SignalError> {
        let em = message::seal(msg, to, &self.key)?;
        let mut last = SignalError::Timeout;
        for (attempt, limit) in SEND_ATTEMPT_TIMEOUTS.iter().enumerate() {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
            match self.send_once(em.clone(), *limit).await {
                Ok(()) => return Ok(()),
                Err(SignalError::Rpc(s)) if s.code() == Code::Cancelled => {
                    return Err(SignalError::Rpc(s))
                }
                Err(e) => {
                    tracing::debug!(kind = msg.kind(), attempt, error = %e, "signal send failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn send_once(&self, em: EncryptedMessage, limit: Duration) -> Result<(), SignalError> {
        let mut rpc = self.rpc.clone();
        match tokio::time::timeout(limit, rpc.send(em)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(status.into()),
            Err(_) => Err(SignalError::Timeout),
        }
    }

    /// Our own public key (the sender of everything sent here).
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }
}

/// A running signal client. Dropping it stops the registration task.
pub struct SignalClient {
    sender: SignalSender,
    status: watch::Receiver<SignalStatus>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SignalClient {
    /// Starts the client (must run inside a tokio runtime). Returns the client and the channel
    /// of received messages. The first connection is made in the background; watch
    /// [`SignalClient::status`] for progress.
    pub fn start(
        config: SignalConfig,
        key: PrivateKey,
    ) -> Result<(SignalClient, mpsc::Receiver<ReceivedSignal>), SignalError> {
        let channel = endpoint(&config)?.connect_lazy();
        let sender = SignalSender {
            rpc: SignalExchangeClient::new(channel),
            key,
        };
        let (tx, rx) = mpsc::channel(RECEIVE_QUEUE);
        let (status_tx, status_rx) = watch::channel(SignalStatus {
            state: SignalState::Connecting,
            registrations: 0,
            last_error: None,
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(run(config, sender.clone(), tx, status_tx, shutdown_rx));
        Ok((
            SignalClient {
                sender,
                status: status_rx,
                shutdown: shutdown_tx,
                task: Some(task),
            },
            rx,
        ))
    }

    /// A cloneable sender for peer connection tasks.
    pub fn sender(&self) -> SignalSender {
        self.sender.clone()
    }

    /// Sends one message (see [`SignalSender::send`]).
    pub async fn send(&self, to: &PublicKey, msg: &SignalMessage) -> Result<(), SignalError> {
        self.sender.send(to, msg).await
    }

    /// A watch of the connection state.
    pub fn status(&self) -> watch::Receiver<SignalStatus> {
        self.status.clone()
    }

    /// Stops the registration task and waits for it.
    pub async fn close(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SignalClient {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn endpoint(config: &SignalConfig) -> Result<Endpoint, SignalError> {
    let bad =
        |e: &dyn std::fmt::Display| SignalError::InvalidAddress(config.addr.clone(), e.to_string());
    let url = if config.addr.contains("://") {
        config.addr.clone()
    } else if config.tls {
        format!("https://{}", config.addr)
    } else {
        format!("http://{}", config.addr)
    };
    let mut ep = Endpoint::from_shared(url)
        .map_err(|e| bad(&e))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if config.tls {
        ep = ep
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .map_err(|e| bad(&e))?;
    }
    Ok(ep)
}

/// The registration task: connect, receive until the session ends, back off, repeat.
async fn run(
    mut config: SignalConfig,
    sender: SignalSender,
    tx: mpsc::Sender<ReceivedSignal>,
    status: watch::Sender<SignalStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        status.send_modify(|s| s.state = SignalState::Connecting);
        let session = session(&mut config, &sender, &tx, &status);
        let err = tokio::select! {
            err = session => err,
            _ = shutdown.changed() => break,
        };
        tracing::info!(error = %err, "signal stream ended, reconnecting");
        status.send_modify(|s| {
            s.state = SignalState::Disconnected;
            s.last_error = Some(err.to_string());
        });
        let delay = config.backoff.next_random();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
    }
    status.send_modify(|s| s.state = SignalState::Closed);
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error("stream closed by server")]
    Closed,
    #[error("heartbeat not answered in time")]
    HeartbeatLost,
}

/// One registered stream: returns why it ended.
async fn session(
    config: &mut SignalConfig,
    sender: &SignalSender,
    tx: &mpsc::Sender<ReceivedSignal>,
    status: &watch::Sender<SignalStatus>,
) -> SessionEnd {
    let own = sender.key.public_key();
    let mut stream = match register(config, sender, &own).await {
        Ok(s) => s,
        Err(e) => return e.into(),
    };
    tracing::info!("registered with signal");
    config.backoff.reset();
    status.send_modify(|s| {
        s.state = SignalState::Connected;
        s.registrations += 1;
        s.last_error = None;
    });

    let mut last_rx = Instant::now();
    let mut heartbeat_deadline: Option<Instant> = None;
    loop {
        let wake = heartbeat_deadline.unwrap_or(last_rx + config.heartbeat_after);
        tokio::select! {
            next = stream.message() => match next {
                Ok(Some(em)) => {
                    last_rx = Instant::now();
                    heartbeat_deadline = None;
                    deliver(&em, sender, &own, tx);
                }
                Ok(None) => return SessionEnd::Closed,
                Err(status) => return SessionEnd::Signal(status.into()),
            },
            _ = tokio::time::sleep_until(wake) => {
                if heartbeat_deadline.is_some() {
                    return SessionEnd::HeartbeatLost;
                }
                tracing::debug!("signal quiet, sending heartbeat to self");
                heartbeat_deadline = Some(Instant::now() + config.heartbeat_timeout);
                let s = sender.clone();
                tokio::spawn(async move {
                    if let Err(e) = s.send_once(
                        match message::seal(&SignalMessage::Heartbeat, &own, &s.key) {
                            Ok(em) => em,
                            Err(_) => return,
                        },
                        Duration::from_secs(10),
                    ).await {
                        tracing::debug!(error = %e, "heartbeat send failed");
                    }
                });
            }
        }
    }
}

async fn register(
    config: &SignalConfig,
    sender: &SignalSender,
    own: &PublicKey,
) -> Result<tonic::Streaming<EncryptedMessage>, SignalError> {
    let mut req = tonic::Request::new(futures::stream::pending::<EncryptedMessage>());
    let id = MetadataValue::try_from(own.to_base64())
        .map_err(|e| SignalError::InvalidAddress(config.addr.clone(), e.to_string()))?;
    req.metadata_mut().insert(HEADER_PEER_ID, id);
    let mut rpc = sender.rpc.clone();
    let resp = tokio::time::timeout(config.connect_timeout, rpc.connect_stream(req))
        .await
        .map_err(|_| SignalError::Timeout)??;
    let registered = resp
        .metadata()
        .get(HEADER_REGISTERED)
        .and_then(|v| v.to_str().ok())
        == Some("1");
    if !registered {
        return Err(SignalError::NotRegistered);
    }
    Ok(resp.into_inner())
}

/// Opens one received message and hands it on; bad input is logged and dropped.
fn deliver(
    em: &EncryptedMessage,
    sender: &SignalSender,
    own: &PublicKey,
    tx: &mpsc::Sender<ReceivedSignal>,
) {
    let rs = match message::open(em, &sender.key) {
        Ok(rs) => rs,
        Err(e) => {
            tracing::warn!(error = %e, "dropping signal message");
            return;
        }
    };
    if rs.from == *own && rs.message == SignalMessage::Heartbeat {
        tracing::trace!("heartbeat came back");
        return;
    }
    tracing::debug!(kind = rs.message.kind(), "signal message received");
    match tx.try_send(rs) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!("signal receive queue full, dropping message")
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            tracing::debug!("signal receiver gone, dropping message")
        }
    }
}
