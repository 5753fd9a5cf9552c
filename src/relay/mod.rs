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
