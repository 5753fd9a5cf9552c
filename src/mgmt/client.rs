//! gRPC client for NetBird management: server key, login/registration, Sync, SyncMeta, Logout.

use super::error::{LoginError, MgmtError};
use crate::config::normalize_url;
use crate::crypto::{self, PrivateKey, PublicKey};
use crate::proto::management as pb;
use crate::proto::management::management_service_client::ManagementServiceClient;
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Largest message we decode; NetBird's maps for big accounts exceed tonic's 4 MiB default.
pub const MAX_DECODE_BYTES: usize = 16 * 1024 * 1024;
/// gRPC keepalive ping interval: the server sends GOAWAY for pings faster than every 15 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const SERVER_KEY_TIMEOUT: Duration = Duration::from_secs(5);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
const SYNC_META_TIMEOUT: Duration = Duration::from_secs(10);
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a login carries besides the metadata.
#[derive(Debug, Clone, Default)]
pub struct LoginParams {
    /// Setup key for registration (canonical UUID text is sent).
    pub setup_key: Option<String>,
    /// SSO JWT for registration or SSO login.
    pub jwt: Option<String>,
    /// Extra DNS labels.
    pub dns_labels: Vec<String>,
    /// SSH public key line to publish (empty clears it server-side).
    pub ssh_pub_key: String,
}

/// A connection to one management server for one peer key. Cheap to clone.
#[derive(Clone)]
pub struct MgmtClient {
    url: String,
    key: PrivateKey,
    grpc: ManagementServiceClient<Channel>,
}

impl std::fmt::Debug for MgmtClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtClient")
            .field("url", &self.url)
            .finish()
    }
}

/// Checks a setup key and returns the canonical lower-case hyphenated UUID NetBird sends.
pub fn canonical_setup_key(key: &str) -> Result<String, LoginError> {
    uuid::Uuid::parse_str(key.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| LoginError::MalformedSetupKey)
}

impl MgmtClient {
    /// Prepares a lazily connected channel to `url` (`http://` plaintext HTTP/2 or `https://`
    /// TLS with system roots). Nothing is dialled until the first call, so a dead server shows
    /// up as a transient error on that call, never here.
    pub fn new(url: &str, key: PrivateKey) -> Result<Self, MgmtError> {
        let url = normalize_url(url).map_err(|_| MgmtError::BadUrl(url.to_string()))?;
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|_| MgmtError::BadUrl(url.clone()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            endpoint = endpoint.tls_config(ClientTlsConfig::new().with_native_roots())?;
        }
        let grpc = ManagementServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_DECODE_BYTES);
        Ok(MgmtClient { url, key, grpc })
    }

    /// The normalised management URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Our public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Fetches the server's key. NetBird's `expiresAt` is meaningless, so this is called before
    /// every RPC and stream, as the Go client does.
    pub async fn server_key(&self) -> Result<PublicKey, MgmtError> {
        let resp = timeout(
            SERVER_KEY_TIMEOUT,
            self.grpc.clone().get_server_key(pb::Empty {}),
        )
        .await??;
        resp.into_inner()
            .key
            .parse()
            .map_err(MgmtError::BadServerKey)
    }

    /// Health probe.
    pub async fn is_healthy(&self) -> Result<(), MgmtError> {
        timeout(
            SERVER_KEY_TIMEOUT,
            self.grpc.clone().is_healthy(pb::Empty {}),
        )
        .await??;
        Ok(())
    }

    fn envelope<M: prost::Message>(&self, msg: &M, server: &PublicKey) -> pb::EncryptedMessage {
        pb::EncryptedMessage {
            wg_pub_key: self.key.public_key().to_base64(),
            body: crypto::seal_message(msg, server, &self.key),
            version: 0,
        }
    }

    /// Logs in, registering the peer when `params` carries a setup key or JWT. The setup key is
    /// validated locally first, so a malformed one never leaves the host.
    pub async fn login(
        &self,
        meta: pb::PeerSystemMeta,
        params: &LoginParams,
    ) -> Result<pb::LoginResponse, LoginError> {
        let setup_key = match params.setup_key.as_deref() {
            Some(k) if !k.trim().is_empty() => canonical_setup_key(k)?,
            _ => String::new(),
        };
        let server = self.server_key().await?;
        let req = pb::LoginRequest {
            setup_key,
            meta: Some(meta),
            jwt_token: params.jwt.clone().unwrap_or_default(),
            peer_keys: Some(pb::PeerKeys {
                ssh_pub_key: params.ssh_pub_key.trim().as_bytes().to_vec(),
                wg_pub_key: self.key.public_key().to_base64().into_bytes(),
            }),
            dns_labels: params.dns_labels.clone(),
        };
        let resp = timeout(
            LOGIN_TIMEOUT,
            self.grpc.clone().login(self.envelope(&req, &server)),
        )
        .await?
        .map_err(LoginError::from_status)?;
        crypto::open_message(&resp.into_inner().body, &server, &self.key)
            .map_err(|e| LoginError::Transport(MgmtError::BadMessage(e)))
    }

    /// Opens the Sync stream. Returns the server key used, for decrypting its messages.
    pub async fn open_sync(&self, meta: pb::PeerSystemMeta) -> Result<SyncStream, MgmtError> {
        let server = self.server_key().await?;
        let req = pb::SyncRequest { meta: Some(meta) };
        let stream = self
            .grpc
            .clone()
            .sync(self.envelope(&req, &server))
            .await?
            .into_inner();
        Ok(SyncStream {
            server,
            key: self.key.clone(),
            inner: stream,
        })
    }

    /// Sends fresh metadata (posture files) without reconnecting.
    pub async fn sync_meta(&self, meta: pb::PeerSystemMeta) -> Result<(), MgmtError> {
        let server = self.server_key().await?;
        let req = pb::SyncMetaRequest { meta: Some(meta) };
        timeout(
            SYNC_META_TIMEOUT,
            self.grpc.clone().sync_meta(self.envelope(&req, &server)),
        )
        .await??;
        Ok(())
    }

    /// The device-flow provider config. `Ok(None)` if management offers none (NotFound) or is
    /// too old to know the call (Unimplemented).
    pub async fn device_flow(&self) -> Result<Option<pb::DeviceAuthorizationFlow>, MgmtError> {
        let server = self.server_key().await?;
        let req = self.envelope(&pb::DeviceAuthorizationFlowRequest {}, &server);
        let answer = timeout(
            LOGIN_TIMEOUT,
            self.grpc.clone().get_device_authorization_flow(req),
        )
        .await?;
        self.open_optional(answer, &server)
    }

    /// The PKCE provider config, like [`Self::device_flow`].
    pub async fn pkce_flow(&self) -> Result<Option<pb::PkceAuthorizationFlow>, MgmtError> {
        let server = self.server_key().await?;
        let req = self.envelope(&pb::PkceAuthorizationFlowRequest {}, &server);
        let answer = timeout(
            LOGIN_TIMEOUT,
            self.grpc.clone().get_pkce_authorization_flow(req),
        )
        .await?;
        self.open_optional(answer, &server)
    }

    /// Decrypts an answer; NotFound and Unimplemented mean "not offered".
    fn open_optional<M: prost::Message + Default>(
        &self,
        answer: Result<tonic::Response<pb::EncryptedMessage>, tonic::Status>,
        server: &PublicKey,
    ) -> Result<Option<M>, MgmtError> {
        match answer {
            Ok(r) => crypto::open_message(&r.into_inner().body, server, &self.key)
                .map(Some)
                .map_err(MgmtError::BadMessage),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unimplemented) => {
                Ok(None)
            }
            Err(s) => Err(s.into()),
        }
    }

    /// Deregisters the peer: the server deletes it. "Not found" counts as success.
    pub async fn logout(&self) -> Result<(), MgmtError> {
        let server = self.server_key().await?;
        match timeout(
            LOGOUT_TIMEOUT,
            self.grpc
                .clone()
                .logout(self.envelope(&pb::Empty {}, &server)),
        )
        .await?
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s)
                if s.code() == tonic::Code::PermissionDenied
                    && s.message().contains("not registered") =>
            {
                Ok(())
            }
            Err(s) => Err(s.into()),
        }
    }
}

async fn timeout<F: std::future::Future>(d: Duration, f: F) -> Result<F::Output, MgmtError> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| MgmtError::Timeout(d))
}

/// An open Sync stream yielding decrypted SyncResponses.
pub struct SyncStream {
    server: PublicKey,
    key: PrivateKey,
    inner: tonic::Streaming<pb::EncryptedMessage>,
}

impl SyncStream {
    /// The next update. `Ok(None)` = the server closed the stream cleanly. A message that does
    /// not decrypt or decode is an error: the caller drops it and reconnects.
    pub async fn next(&mut self) -> Result<Option<pb::SyncResponse>, MgmtError> {
        match self.inner.message().await? {
            None => Ok(None),
            Some(m) => crypto::open_message(&m.body, &self.server, &self.key)
                .map(Some)
                .map_err(MgmtError::BadMessage),
        }
    }
}
