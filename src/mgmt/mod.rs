//! Management client: server key, login and registration, the Sync stream with reconnects,
//! SyncMeta and Logout. Errors map NetBird's status codes to states a person can act on.

pub mod backoff;
pub mod client;
pub mod error;
pub mod session;

pub use client::{canonical_setup_key, LoginParams, MgmtClient, SyncStream};
pub use error::{LoginError, MgmtError};
pub use session::{run_sync, MgmtState};
