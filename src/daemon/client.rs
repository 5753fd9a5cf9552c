//! Client side of the daemon socket, for the CLI.

use crate::proto::daemon::daemon_service_client::DaemonServiceClient;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Why the CLI cannot talk to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No socket file.
    #[error("the daemon is not running: {0} does not exist (start it with `netbird-agent service start` or `netbird-agent service run`)")]
    NoSocket(PathBuf),
    /// The socket exists but refuses us.
    #[error("cannot connect to the daemon at {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// gRPC setup failed.
    #[error("cannot talk to the daemon: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Connects to the daemon socket (10 s timeout).
pub async fn connect(path: &Path) -> Result<DaemonServiceClient<Channel>, ConnectError> {
    if !path.exists() {
        return Err(ConnectError::NoSocket(path.into()));
    }
    // Probe first so permission and refusal errors are reported as such.
    if let Err(source) = tokio::net::UnixStream::connect(path).await {
        return Err(ConnectError::Io {
            path: path.into(),
            source,
        });
    }
    let path_owned = path.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the unix socket.
    let channel = Endpoint::from_static("http://daemon.local")
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path_owned.clone();
            async move { tokio::net::UnixStream::connect(p).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(DaemonServiceClient::new(channel))
}
