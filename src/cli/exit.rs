//! Exit codes scripts can rely on, and the one-line error printer.

use netbird_agent::mgmt::LoginError;
use std::process::ExitCode;

/// Unexpected failure.
pub const GENERAL: u8 = 1;
/// Bad command line or input (malformed URL, unreadable key file).
pub const USAGE: u8 = 2;
/// The config file cannot be read or written.
pub const CONFIG: u8 = 3;
/// Login needed: no setup key, peer deleted, login expired.
pub const NEEDS_LOGIN: u8 = 4;
/// The setup key is malformed, unknown, expired, revoked or used up.
pub const BAD_SETUP_KEY: u8 = 5;
/// Management (or the daemon) cannot be reached.
pub const UNAVAILABLE: u8 = 6;
/// Waiting for administrator approval.
pub const PENDING_APPROVAL: u8 = 7;

/// Prints `error: <msg>` on stderr and returns the exit code.
pub fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

/// The exit code for a login error.
pub fn code_for_login(e: &LoginError) -> u8 {
    match e {
        LoginError::NeedsLogin(_) | LoginError::LoginExpired(_) | LoginError::TokenRejected(_) => {
            NEEDS_LOGIN
        }
        LoginError::InvalidSetupKey(_)
        | LoginError::MalformedSetupKey
        | LoginError::DnsLabelsNotAllowed(_) => BAD_SETUP_KEY,
        LoginError::PendingApproval(_) => PENDING_APPROVAL,
        LoginError::Transport(_) | LoginError::AlreadyRegistered => UNAVAILABLE,
        LoginError::Rejected(_) => GENERAL,
    }
}
/// The daemon is not running or its socket is missing.
pub const DAEMON_UNAVAILABLE: u8 = 8;
/// The caller may not do this (not root nor in the admin group, or the socket refuses us).
pub const PERMISSION: u8 = 9;
/// Already in the requested state (`up` while connected).
pub const ALREADY: u8 = 10;
/// Not possible in the current state (`down` while not up).
pub const STATE: u8 = 11;
