//! NetBird Signal client: encrypted offers, answers and candidates between peers.
//!
//! - [`message`] is the pure layer: typed messages, protobuf `Body` encoding, NaCl sealing.
//! - [`client`] is the async adapter: one task keeps the `ConnectStream` registration alive
//!   (reconnect with backoff, heartbeat watchdog) and feeds received messages into a channel;
//!   sending uses unary `Send` from any task through a cloneable [`SignalSender`].
//!
//! Facts: `shared/protocol/data-plane.md` section 1.

pub mod backoff;
pub mod client;
pub mod message;

pub use client::{
    SignalClient, SignalConfig, SignalError, SignalSender, SignalState, SignalStatus,
};
pub use message::{OfferAnswer, ReceivedSignal, Rosenpass, SessionId, SignalMessage};

/// Request metadata naming the registering peer (its base64 WireGuard public key).
pub const HEADER_PEER_ID: &str = "x-wiretrustee-peer-id";
/// Response header the server sends once the stream is registered (value `1`).
pub const HEADER_REGISTERED: &str = "x-wiretrustee-peer-registered";
