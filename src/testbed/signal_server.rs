//! Stand-in NetBird signal server for tests and the lab.
//!
//! Same semantics as upstream `signal/server/signal.go` and `signal/peer/peer.go`: streams are
//! registered by the `x-wiretrustee-peer-id` metadata, confirmed with the
//! `x-wiretrustee-peer-registered: 1` header, never read; `Send` forwards to the recipient's
//! stream or drops silently; a newer registration of the same key replaces (and ends) the older.

use crate::proto::signalexchange::signal_exchange_server::{SignalExchange, SignalExchangeServer};
use crate::proto::signalexchange::EncryptedMessage;
use crate::signal::{HEADER_PEER_ID, HEADER_REGISTERED};
use futures::Stream;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

/// How long a forward may wait on a slow receiver before its stream is cancelled (upstream 10 s).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-stream queue of messages waiting to be written.
const STREAM_QUEUE: usize = 64;

type Item = Result<EncryptedMessage, Status>;

struct Registered {
    id: u64,
    tx: mpsc::Sender<Item>,
}

#[derive(Clone, Default)]
struct Registry {
    peers: Arc<Mutex<HashMap<String, Registered>>>,
    next_id: Arc<AtomicU64>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Registered>> {
        // A poisoned map is still a valid map: keep serving.
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, peer: &str, tx: mpsc::Sender<Item>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let old = self.lock().insert(peer.to_string(), Registered { id, tx });
        if let Some(old) = old {
            tracing::debug!("signal testbed: peer registered again, ending older stream");
            let _ = old
                .tx
                .try_send(Err(Status::cancelled("peer registered again")));
        }
        id
    }

    fn deregister(&self, peer: &str, id: u64) {
        let mut peers = self.lock();
        if peers.get(peer).map(|r| r.id) == Some(id) {
            peers.remove(peer);
        }
    }

    fn lookup(&self, peer: &str) -> Option<(u64, mpsc::Sender<Item>)> {
        self.lock().get(peer).map(|r| (r.id, r.tx.clone()))
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

/// The response stream of one registration; deregisters itself when dropped.
struct PeerStream {
    rx: mpsc::Receiver<Item>,
    registry: Registry,
    peer: String,
    id: u64,
}

impl Stream for PeerStream {
    type Item = Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        tracing::debug!("signal testbed: peer stream closed");
        self.registry.deregister(&self.peer, self.id);
    }
}

struct Service {
    registry: Registry,
}

#[tonic::async_trait]
impl SignalExchange for Service {
    async fn send(
        &self,
        req: Request<EncryptedMessage>,
    ) -> Result<Response<EncryptedMessage>, Status> {
        let msg = req.into_inner();
        if let Some((id, tx)) = self.registry.lookup(&msg.remote_key) {
            let registry = self.registry.clone();
            let peer = msg.remote_key.clone();
            match tx.send_timeout(Ok(msg), SEND_TIMEOUT).await {
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    tracing::debug!("signal testbed: receiver too slow, cancelling its stream");
                    registry.deregister(&peer, id);
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => {}
            }
        }
        Ok(Response::new(EncryptedMessage::default()))
    }

    type ConnectStreamStream = Pin<Box<dyn Stream<Item = Item> + Send + 'static>>;

    async fn connect_stream(
        &self,
        req: Request<Streaming<EncryptedMessage>>,
    ) -> Result<Response<Self::ConnectStreamStream>, Status> {
        let peer = req
            .metadata()
            .get(HEADER_PEER_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                Status::failed_precondition(format!("missing connection header: {HEADER_PEER_ID}"))
            })?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let id = self.registry.register(&peer, tx);
        tracing::debug!("signal testbed: peer registered");
        let stream = PeerStream {
            rx,
            registry: self.registry.clone(),
            peer,
            id,
        };
        let mut resp = Response::new(Box::pin(stream) as Self::ConnectStreamStream);
        resp.metadata_mut().insert(
            HEADER_REGISTERED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        Ok(resp)
    }
}

struct Running {
    registry: Registry,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A running (or stopped) testbed signal server.
pub struct SignalServerHandle {
    addr: SocketAddr,
    running: Option<Running>,
}

/// Starts a signal server on `addr` (port 0 picks a free port).
pub async fn start(addr: SocketAddr) -> std::io::Result<SignalServerHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    Ok(SignalServerHandle {
        addr,
        running: Some(serve(listener)),
    })
}

fn serve(listener: TcpListener) -> Running {
    let registry = Registry::default();
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let svc = SignalExchangeServer::new(Service {
        registry: registry.clone(),
    });
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let res = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_rx.await;
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "signal testbed server failed");
        }
    });
    Running {
        registry,
        shutdown,
        task,
    }
}

impl SignalServerHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of registered streams.
    pub fn peer_count(&self) -> usize {
        self.running
            .as_ref()
            .map(|r| r.registry.lock().len())
            .unwrap_or(0)
    }

    /// Stops the server: ends every stream and closes the listener and connections.
    pub async fn stop(&mut self) {
        let Some(r) = self.running.take() else { return };
        let _ = r.shutdown.send(());
        // Ending the streams lets the graceful shutdown finish.
        r.registry.clear();
        let mut task = r.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    /// Stops and starts again on the same port with an empty registry, like a real restart.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.running = Some(serve(listener));
        Ok(())
    }
}

impl Drop for SignalServerHandle {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown.send(());
            r.registry.clear();
            r.task.abort();
        }
    }
}
