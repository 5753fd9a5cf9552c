//! The long-running Sync session: opens the stream, hands every update to the caller, and
//! reconnects with backoff. Only `PermissionDenied` ends it (deleted, expired, unregistered).

use super::backoff::Backoff;
use super::client::MgmtClient;
use super::error::MgmtError;
use crate::proto::management as pb;
use tokio::sync::{mpsc, watch};

/// Connection state to management, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MgmtState {
    /// Not started.
    Idle,
    /// Dialling or waiting to retry; carries the last error, if any.
    Connecting(Option<String>),
    /// The Sync stream is up.
    Connected,
    /// The server ended the session: login needed (reason from the server).
    NeedsLogin(String),
}

/// Runs the Sync session until management says the session is over (returns that error) or
/// the receiver of `updates` is dropped (returns Ok). Malformed or undecryptable messages are
/// logged and dropped and the stream is reopened; the caller keeps its last good map.
pub async fn run_sync<F>(
    client: MgmtClient,
    meta: F,
    updates: mpsc::Sender<pb::SyncResponse>,
    state: watch::Sender<MgmtState>,
) -> Result<(), MgmtError>
where
    F: Fn() -> pb::PeerSystemMeta,
{
    let mut backoff = Backoff::stream();
    let mut last_error: Option<String> = None;
    loop {
        state.send_replace(MgmtState::Connecting(last_error.clone()));
        let err = match client.open_sync(meta()).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Ok(Some(resp)) => {
                        if *state.borrow() != MgmtState::Connected {
                            tracing::info!("management sync stream connected");
                            state.send_replace(MgmtState::Connected);
                            backoff.reset();
                        }
                        if updates.send(resp).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => {
                        break MgmtError::Status(tonic::Status::unavailable(
                            "stream closed by server",
                        ))
                    }
                    Err(e) => break e,
                }
            },
            Err(e) => e,
        };
        if err.is_permission_denied() {
            let reason = match &err {
                MgmtError::Status(s) => s.message().to_string(),
                other => other.to_string(),
            };
            tracing::warn!("management ended the session: {reason}");
            state.send_replace(MgmtState::NeedsLogin(reason));
            return Err(err);
        }
        if updates.is_closed() {
            return Ok(());
        }
        let wait = backoff.next_wait();
        tracing::warn!(
            "management sync: {err}; reconnecting in {:.1}s",
            wait.as_secs_f64()
        );
        last_error = Some(err.to_string());
        state.send_replace(MgmtState::Connecting(last_error.clone()));
        tokio::time::sleep(wait).await;
    }
}
