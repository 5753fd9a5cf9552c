//! placeholder
pub mod relay_server;
pub mod signal_server;
