//! netbird-agent: a NetBird-compatible peer agent for Linux.
//!
//! The shape follows `ARCHITECTURE.md`: a pure engine fed by events, thin OS adapters, and
//! protocol clients at the edge. See the module docs for each concern.

pub mod agent;
pub mod auth;
pub mod config;
pub mod connect;
pub mod crypto;
pub mod daemon;
pub mod debug;
pub mod engine;
pub mod ice;
#[cfg(feature = "testbed")]
pub mod lab;
pub mod mgmt;
pub mod peer;
pub mod relay;
pub mod signal;
pub mod status_view;
pub mod system;
#[cfg(feature = "testbed")]
pub mod testbed;
pub mod wg;

/// Generated protobuf types and gRPC stubs, wire-compatible with NetBird's.
pub mod proto {
    /// `management` package: the management service and its messages.
    #[allow(clippy::all, missing_docs)]
    pub mod management {
        tonic::include_proto!("management");
    }
    /// `daemon` package: the local daemon API the CLI talks to over the unix socket.
    #[allow(clippy::all, missing_docs)]
    pub mod daemon {
        tonic::include_proto!("daemon");
    }
    /// `signalexchange` package: the signal service and its messages.
    #[allow(clippy::all, missing_docs)]
    pub mod signalexchange {
        tonic::include_proto!("signalexchange");
    }
}

/// The upstream NetBird release whose protocol behaviour this agent implements. Reported as
/// `netbirdVersion`: management parses it as semver and gates features on it.
pub const UPSTREAM_COMPAT_VERSION: &str = "0.77.1";

/// This agent's own version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
