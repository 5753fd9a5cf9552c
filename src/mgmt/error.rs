//! Errors of the management client, mapped from gRPC status codes to what a person can act on.

use crate::crypto::CryptoError;
use tonic::Code;

/// Why a login or registration did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The peer is not registered (or was deleted) and no setup key or SSO token was given.
    #[error("this peer needs to log in: run `netbird-agent up --setup-key <KEY>` or log in with SSO ({0})")]
    NeedsLogin(String),
    /// The SSO peer's login expired; a setup key cannot revive it.
    #[error("the peer's login has expired: log in again with SSO ({0})")]
    LoginExpired(String),
    /// The SSO user is waiting for an administrator's approval.
    #[error("the user is pending approval by an administrator of the NetBird account ({0})")]
    PendingApproval(String),
    /// The setup key is unknown, expired, revoked or used up.
    #[error("the setup key is invalid: it is unknown, expired, revoked or used up; ask your NetBird admin for a new one ({0})")]
    InvalidSetupKey(String),
    /// The setup key is not a UUID; nothing was sent.
    #[error("the setup key is malformed: a NetBird setup key is a UUID such as 2B9A4F5E-1C3D-4E5F-8A9B-0C1D2E3F4A5B")]
    MalformedSetupKey,
    /// The setup key does not allow extra DNS labels.
    #[error("the setup key does not allow extra DNS labels ({0})")]
    DnsLabelsNotAllowed(String),
    /// The server refused the JWT (expired, already used, bad audience).
    #[error("the SSO token was refused: {0}")]
    TokenRejected(String),
    /// Another login registered this key at the same time; retry a plain login.
    #[error("the peer was registered concurrently; retry")]
    AlreadyRegistered,
    /// Any other rejection for this input (bad request).
    #[error("management rejected the login: {0}")]
    Rejected(String),
    /// The server could not be reached or failed; retry with backoff.
    #[error(transparent)]
    Transport(#[from] MgmtError),
}

impl LoginError {
    /// True for errors worth retrying later with the same input.
    pub fn is_transient(&self) -> bool {
        matches!(self, LoginError::Transport(e) if e.is_transient())
            || matches!(self, LoginError::AlreadyRegistered)
    }

    /// Maps a Login status the way NetBird's server reports it (control-plane facts 2.2).
    pub fn from_status(status: tonic::Status) -> Self {
        let msg = status.message().to_string();
        let lower = msg.to_ascii_lowercase();
        match status.code() {
            Code::PermissionDenied if lower.contains("login has expired") => {
                LoginError::LoginExpired(msg)
            }
            Code::PermissionDenied if lower.contains("pending approval") => {
                LoginError::PendingApproval(msg)
            }
            Code::PermissionDenied => LoginError::NeedsLogin(msg),
            Code::NotFound if lower.contains("setup key") => LoginError::InvalidSetupKey(msg),
            Code::NotFound => LoginError::Rejected(msg),
            // A one-off key used up during registration comes back as FailedPrecondition.
            Code::FailedPrecondition if lower.contains("setup key is invalid") => {
                LoginError::InvalidSetupKey(msg)
            }
            Code::FailedPrecondition if lower.contains("already registered") => {
                LoginError::AlreadyRegistered
            }
            Code::FailedPrecondition if lower.contains("dns labels") => {
                LoginError::DnsLabelsNotAllowed(msg)
            }
            Code::FailedPrecondition | Code::InvalidArgument
                if lower.contains("jwt") || lower.contains("token") =>
            {
                LoginError::TokenRejected(msg)
            }
            Code::Unauthenticated => LoginError::TokenRejected(msg),
            Code::FailedPrecondition | Code::InvalidArgument => LoginError::Rejected(msg),
            _ => LoginError::Transport(MgmtError::Status(status)),
        }
    }
}

/// Transport-level and protocol errors talking to management.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// The URL does not parse or the channel cannot be built.
    #[error("invalid management URL {0:?}")]
    BadUrl(String),
    /// gRPC transport failure.
    #[error("cannot reach management: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server answered with an error status.
    #[error("management returned {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The server's key does not parse.
    #[error("management sent an invalid server key: {0}")]
    BadServerKey(CryptoError),
    /// A message from the server did not decrypt or decode.
    #[error("undecryptable or malformed message from management: {0}")]
    BadMessage(CryptoError),
    /// The call did not finish in time.
    #[error("management did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl MgmtError {
    /// True unless the server said this peer has no permission (which ends the session).
    pub fn is_transient(&self) -> bool {
        !self.is_permission_denied()
    }

    /// `PermissionDenied`: the session is over (deleted, expired, not registered).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, MgmtError::Status(s) if s.code() == Code::PermissionDenied)
    }
}

impl From<tonic::Status> for MgmtError {
    fn from(s: tonic::Status) -> Self {
        MgmtError::Status(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_actionable_errors() {
        let m = |code, msg: &str| LoginError::from_status(tonic::Status::new(code, msg));
        assert!(matches!(
            m(Code::NotFound, "couldn't add peer: setup key is invalid"),
            LoginError::InvalidSetupKey(_)
        ));
        assert!(matches!(
            m(
                Code::FailedPrecondition,
                "couldn't add peer: setup key is invalid"
            ),
            LoginError::InvalidSetupKey(_)
        ));
        assert!(matches!(
            m(Code::FailedPrecondition, "peer has been already registered"),
            LoginError::AlreadyRegistered
        ));
        assert!(matches!(
            m(
                Code::PermissionDenied,
                "peer login has expired, please log in once more"
            ),
            LoginError::LoginExpired(_)
        ));
        assert!(matches!(
            m(
                Code::PermissionDenied,
                "user pending approval cannot add peers"
            ),
            LoginError::PendingApproval(_)
        ));
        assert!(matches!(
            m(Code::PermissionDenied, "peer is not registered"),
            LoginError::NeedsLogin(_)
        ));
        assert!(m(Code::Unavailable, "down").is_transient());
    }
}
