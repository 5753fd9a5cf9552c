//! One peer's TURN allocation, driven by its own task and UDP socket (TURN does not share the
//! WireGuard socket; upstream uses separate sockets too). STUN from the peer goes back to the
//! connectivity task for the ICE agent; WireGuard datagrams go straight into the device.

use super::TunnelDevice;
use crate::crypto::PublicKey;
use crate::ice::turn::{TurnClient, TurnEvent};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// What the allocation task reports to the connectivity task.
#[derive(Debug)]
pub(super) enum TurnUpdate {
    /// Allocated: our relayed address and the local socket address it is reached through.
    Allocated {
        relayed: SocketAddr,
        local: SocketAddr,
    },
    /// A STUN message from `from` through the allocation.
    Stun { from: SocketAddr, data: Vec<u8> },
    /// The allocation failed or ended.
    Failed(String),
}

enum TurnCmd {
    Send(SocketAddr, Vec<u8>),
    Credentials(String, String),
}

/// Handle to one allocation; dropping it releases the allocation.
pub(super) struct TurnHandle {
    cmds: mpsc::Sender<TurnCmd>,
    task: JoinHandle<()>,
    /// Our relayed address, once allocated.
    pub relayed: Option<SocketAddr>,
}

/// How many datagrams may wait for the allocation's socket before new ones are dropped.
const QUEUE: usize = 1024;

impl TurnHandle {
    /// Starts allocating on `server` for `peer`.
    pub fn start(
        peer: PublicKey,
        server: SocketAddr,
        user: String,
        password: String,
        device: Arc<dyn TunnelDevice>,
        updates: mpsc::UnboundedSender<(PublicKey, TurnUpdate)>,
    ) -> TurnHandle {
        let (cmds, rx) = mpsc::channel(QUEUE);
        let span = tracing::debug_span!("turn", %peer, %server);
        let links = Links {
            device,
            updates,
            reply: cmds.downgrade(),
        };
        let task = tokio::spawn(run(peer, server, user, password, links, rx).instrument(span));
        TurnHandle {
            cmds,
            task,
            relayed: None,
        }
    }

    /// Sends `data` to `to` through the allocation (best effort: dropped when congested).
    pub fn send(&self, to: SocketAddr, data: &[u8]) {
        let _ = self.cmds.try_send(TurnCmd::Send(to, data.to_vec()));
    }

    /// A sender usable as a WireGuard path to `to`.
    pub fn path_to(&self, to: SocketAddr) -> super::DatagramSink {
        let cmds = self.cmds.clone();
        Arc::new(move |d: &[u8]| {
            let _ = cmds.try_send(TurnCmd::Send(to, d.to_vec()));
        })
    }

    /// New credentials for refreshes.
    pub fn update_credentials(&self, user: String, password: String) {
        let _ = self.cmds.try_send(TurnCmd::Credentials(user, password));
    }
}

impl Drop for TurnHandle {
    fn drop(&mut self) {
        // Closing the command channel makes the task release the allocation and end; abort
        // only if it is stuck.
        let task = self.task.abort_handle();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            task.abort();
        });
    }
}

/// Where the allocation task delivers what it receives.
struct Links {
    /// WireGuard datagrams go straight in here.
    device: Arc<dyn TunnelDevice>,
    /// STUN and allocation events go to the connectivity task.
    updates: mpsc::UnboundedSender<(PublicKey, TurnUpdate)>,
    /// Our own command queue, for answers sent back through the allocation.
    reply: mpsc::WeakSender<TurnCmd>,
}

async fn run(
    peer: PublicKey,
    server: SocketAddr,
    user: String,
    password: String,
    links: Links,
    mut cmds: mpsc::Receiver<TurnCmd>,
) {
    let Links {
        device,
        updates,
        reply,
    } = links;
    let fail = |why: String| {
        let _ = updates.send((peer, TurnUpdate::Failed(why)));
    };
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => return fail(format!("TURN socket: {e}")),
    };
    // Connected: only the server's datagrams reach us.
    if let Err(e) = sock.connect(server).await {
        return fail(format!("TURN server {server}: {e}"));
    }
    let local = sock.local_addr().unwrap_or(bind);
    let mut client = TurnClient::new(server, user, password, Instant::now());
    let mut buf = vec![0u8; 65536];
    let mut adopted: Option<SocketAddr> = None;
    loop {
        while let Some(d) = client.poll_transmit() {
            let _ = sock.send(&d).await;
        }
        while let Some(ev) = client.poll_event() {
            let update = match ev {
                TurnEvent::Allocated { relayed, .. } => {
                    tracing::debug!(%relayed, "TURN allocation ready");
                    TurnUpdate::Allocated { relayed, local }
                }
                TurnEvent::Failed(why) => TurnUpdate::Failed(why),
            };
            let _ = updates.send((peer, update));
        }
        if client.is_done() {
            return;
        }
        let deadline = client
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        tokio::select! {
            r = sock.recv(&mut buf) => match r {
                Ok(n) => {
                    if let Some((from, data)) = client.handle_input(Instant::now(), &buf[..n]) {
                        if crate::ice::is_stun(&data) {
                            let _ = updates.send((peer, TurnUpdate::Stun { from, data }));
                        } else {
                            if adopted != Some(from) {
                                // Before ICE picks a path here, answers (a handshake
                                // response) go back through the allocation they came by.
                                let reply = reply.clone();
                                let sink: super::DatagramSink = Arc::new(move |d: &[u8]| {
                                    if let Some(tx) = reply.upgrade() {
                                        let _ = tx.try_send(TurnCmd::Send(from, d.to_vec()));
                                    }
                                });
                                if device.adopt_path(&peer, super::WgPath::Custom(sink)) {
                                    tracing::debug!(%from, "answering through TURN until ICE decides");
                                }
                                adopted = Some(from);
                            }
                            device.inject(&peer, &data);
                        }
                    }
                }
                // ICMP errors surface on connected sockets; retransmission handles them.
                Err(e) => tracing::trace!("TURN receive: {e}"),
            },
            cmd = cmds.recv() => match cmd {
                Some(TurnCmd::Send(to, data)) => {
                    if let Some(d) = client.encode_to_peer(to, &data, Instant::now()) {
                        let _ = sock.send(&d).await;
                    }
                }
                Some(TurnCmd::Credentials(u, p)) => client.update_credentials(u, p),
                None => {
                    tracing::debug!("releasing the TURN allocation");
                    client.release(Instant::now());
                    while let Some(d) = client.poll_transmit() {
                        let _ = sock.send(&d).await;
                    }
                    return;
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => client.handle_timeout(Instant::now()),
        }
    }
}
