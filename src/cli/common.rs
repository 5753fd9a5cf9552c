//! Shared CLI plumbing: the daemon address flag, the runtime, gRPC status to exit codes.

use super::exit;
use clap::Args;
use netbird_agent::daemon::client::{connect, ConnectError};
use netbird_agent::proto::daemon::daemon_service_client::DaemonServiceClient;
use std::path::PathBuf;
use std::process::ExitCode;
use tonic::transport::Channel;

/// Where the daemon listens.
#[derive(Debug, Args, Clone)]
pub struct DaemonAddr {
    /// Daemon socket, `unix:///path` or a plain path.
    #[arg(
        long,
        env = "NB_DAEMON_ADDR",
        default_value = "unix:///var/run/netbird-agent.sock",
        global = true
    )]
    pub daemon_addr: String,
}

impl DaemonAddr {
    /// The socket path.
    pub fn path(&self) -> Result<PathBuf, String> {
        let p = self
            .daemon_addr
            .strip_prefix("unix://")
            .unwrap_or(&self.daemon_addr);
        if self.daemon_addr.contains("://") && !self.daemon_addr.starts_with("unix://") {
            return Err(format!(
                "unsupported daemon address {:?}: use unix:///path",
                self.daemon_addr
            ));
        }
        if p.is_empty() {
            return Err("empty daemon address".into());
        }
        Ok(PathBuf::from(p))
    }
}

/// Runs an async CLI body on a fresh runtime.
pub fn block_on<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => exit::fail(exit::GENERAL, format!("cannot start runtime: {e}")),
    }
}

/// Connects to the daemon or returns the exit code with a one-line error printed.
pub async fn daemon(addr: &DaemonAddr) -> Result<DaemonServiceClient<Channel>, ExitCode> {
    let path = addr.path().map_err(|e| exit::fail(exit::USAGE, e))?;
    connect(&path).await.map_err(|e| match &e {
        ConnectError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            exit::fail(exit::PERMISSION, e)
        }
        _ => exit::fail(exit::DAEMON_UNAVAILABLE, e),
    })
}

/// Maps a daemon error status to a one-line message and exit code.
pub fn status_exit(what: &str, s: &tonic::Status) -> ExitCode {
    use tonic::Code;
    let code = match s.code() {
        Code::PermissionDenied
            if s.message().starts_with("uid ") || s.message().contains("credentials") =>
        {
            exit::PERMISSION
        }
        Code::PermissionDenied | Code::Unauthenticated => exit::NEEDS_LOGIN,
        Code::NotFound => exit::BAD_SETUP_KEY,
        Code::InvalidArgument => exit::USAGE,
        Code::AlreadyExists => exit::ALREADY,
        Code::FailedPrecondition => exit::STATE,
        Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
        _ => exit::GENERAL,
    };
    exit::fail(code, format!("{what}: {}", s.message()))
}
