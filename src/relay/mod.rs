//! NetBird Relay client: peer-to-peer datagrams through a relay server over WebSocket.
//!
//! - [`messages`]: the pure wire format (peer ids, framing).
//! - [`auth`]: the HMAC token from `NetbirdConfig.relay` (client side) and its check (server).
//! - [`client`]: the async client: one task per relay server connection, per-peer conns.
//!
//! Transport: WebSocket only (`rel://` -> `ws://host:port/relay`, `rels://` -> `wss://`).
//! Upstream also speaks QUIC and races the two, but servers accept WebSocket alone, so this is
//! fully compatible. Facts: `shared/protocol/data-plane.md` section 4.

pub mod auth;
pub mod client;
pub mod messages;

pub use auth::RelayToken;
pub use client::{
    RelayClient, RelayConfig, RelayConn, RelayConnSender, RelayError, RelayState, RelayStatus,
};
pub use messages::PeerId;

use futures::{Sink, SinkExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Writes queued WebSocket messages to `sink` until a Close message was written or the queue
/// ends. Messages already waiting are fed together and flushed once, so a burst of datagrams
/// costs one write instead of one per datagram (this roughly doubles relayed throughput).
pub async fn write_queued<S>(sink: &mut S, rx: &mut mpsc::Receiver<Message>) -> Result<(), S::Error>
where
    S: Sink<Message> + Unpin,
{
    while let Some(first) = rx.recv().await {
        let mut closing = matches!(first, Message::Close(_));
        sink.feed(first).await?;
        while !closing {
            match rx.try_recv() {
                Ok(m) => {
                    closing = matches!(m, Message::Close(_));
                    sink.feed(m).await?;
                }
                Err(_) => break,
            }
        }
        sink.flush().await?;
        if closing {
            break;
        }
    }
    Ok(())
}
