//! The testbed's management gRPC service: same proto, same error codes and messages as
//! NetBird's server, one account, an update pushed to every connected peer on each change.

use super::account::{hash_setup_key, unix_now, Account, Peer};
use crate::crypto::{self, PrivateKey, PublicKey};
use crate::proto::management as pb;
use crate::proto::management::management_service_server::ManagementService;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Verifies an SSO JWT and returns the user id it names.
pub type JwtVerifier = Arc<dyn Fn(&str) -> Result<String, Status> + Send + Sync>;

type SyncSender = mpsc::Sender<Result<pb::EncryptedMessage, Status>>;

/// State shared by the gRPC service, the admin API and in-process admin handles.
pub struct Shared {
    /// The account.
    pub account: Mutex<Account>,
    /// Server identity key (stable across restarts).
    pub key: PrivateKey,
    /// Services advertised in NetbirdConfig.
    pub netbird_config: Mutex<pb::NetbirdConfig>,
    /// Open Sync streams by peer id, with a generation number.
    streams: Mutex<HashMap<String, (u64, SyncSender)>>,
    generation: Mutex<u64>,
    /// SSO token check, when an OIDC stand-in is configured.
    pub jwt_verifier: Mutex<Option<JwtVerifier>>,
    /// Device/PKCE flow config advertised to clients.
    pub device_flow: Mutex<Option<pb::DeviceAuthorizationFlow>>,
    /// PKCE flow config advertised to clients.
    pub pkce_flow: Mutex<Option<pb::PkceAuthorizationFlow>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// New shared state.
    pub fn new(account: Account, key: PrivateKey, netbird_config: pb::NetbirdConfig) -> Self {
        Shared {
            account: Mutex::new(account),
            key,
            netbird_config: Mutex::new(netbird_config),
            streams: Mutex::new(HashMap::new()),
            generation: Mutex::new(0),
            jwt_verifier: Mutex::new(None),
            device_flow: Mutex::new(None),
            pkce_flow: Mutex::new(None),
        }
    }

    /// Locks the account.
    pub fn account(&self) -> MutexGuard<'_, Account> {
        lock(&self.account)
    }

    fn seal(&self, to: &PublicKey, msg: &impl prost::Message) -> pb::EncryptedMessage {
        pb::EncryptedMessage {
            wg_pub_key: self.key.public_key().to_base64(),
            body: crypto::seal_message(msg, to, &self.key),
            version: 0,
        }
    }

    fn sync_response(
        &self,
        acc: &Account,
        peer_id: &str,
        with_config: bool,
    ) -> Option<pb::SyncResponse> {
        let map = acc.network_map(peer_id)?;
        let peer = acc.peers.get(peer_id)?;
        Some(pb::SyncResponse {
            netbird_config: with_config.then(|| lock(&self.netbird_config).clone()),
            peer_config: map.peer_config.clone(),
            network_map: Some(map),
            session_expires_at: Some(session_expiry(acc, peer)),
            ..Default::default()
        })
    }

    /// Sends the current map to every connected peer. Called after each change.
    pub fn push_all(&self) {
        let acc = self.account();
        let streams: Vec<(String, SyncSender)> = lock(&self.streams)
            .iter()
            .map(|(k, (_, s))| (k.clone(), s.clone()))
            .collect();
        for (peer_id, tx) in streams {
            let Some(peer) = acc.peers.get(&peer_id) else {
                continue;
            };
            if let Some(resp) = self.sync_response(&acc, &peer_id, false) {
                let _ = tx.try_send(Ok(self.seal(&peer.key, &resp)));
            }
        }
    }

    /// Sends a config-only update (credential refresh) to every connected peer.
    pub fn push_config(&self) {
        let acc = self.account();
        let cfg = lock(&self.netbird_config).clone();
        for (peer_id, (_, tx)) in lock(&self.streams).iter() {
            if let Some(peer) = acc.peers.get(peer_id) {
                let resp = pb::SyncResponse {
                    netbird_config: Some(cfg.clone()),
                    ..Default::default()
                };
                let _ = tx.try_send(Ok(self.seal(&peer.key, &resp)));
            }
        }
    }

    /// Ends a deleted peer's stream after a final empty map, as NetBird does.
    pub fn close_peer_stream(&self, peer_id: &str, key: &PublicKey, serial: u64) {
        if let Some((_, tx)) = lock(&self.streams).remove(peer_id) {
            let resp = pb::SyncResponse {
                network_map: Some(pb::NetworkMap {
                    serial,
                    remote_peers_is_empty: true,
                    firewall_rules_is_empty: true,
                    routes_firewall_rules_is_empty: true,
                    ..Default::default()
                }),
                remote_peers_is_empty: true,
                ..Default::default()
            };
            let _ = tx.try_send(Ok(self.seal(key, &resp)));
        }
    }

    /// Closes every Sync stream (server stop).
    pub fn close_all_streams(&self) {
        lock(&self.streams).clear();
        for p in self.account().peers.values_mut() {
            p.connected = false;
        }
    }
}

fn session_expiry(acc: &Account, peer: &Peer) -> prost_types::Timestamp {
    if peer.added_with_sso
        && peer.login_expiration_enabled
        && acc.settings.peer_login_expiration_enabled
    {
        let secs = unix_now() + acc.settings.peer_login_expiration;
        prost_types::Timestamp {
            seconds: i64::try_from(secs).unwrap_or(i64::MAX),
            nanos: 0,
        }
    } else {
        prost_types::Timestamp::default()
    }
}

/// The tonic service.
#[derive(Clone)]
pub struct MgmtService {
    shared: Arc<Shared>,
}

impl MgmtService {
    /// Wraps shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        MgmtService { shared }
    }

    fn open<M: prost::Message + Default>(
        &self,
        msg: &pb::EncryptedMessage,
    ) -> Result<(PublicKey, M), Status> {
        let peer: PublicKey = msg.wg_pub_key.parse().map_err(|_| {
            Status::invalid_argument(format!("provided wgPubKey {} is invalid", msg.wg_pub_key))
        })?;
        let m = crypto::open_message(&msg.body, &peer, &self.shared.key)
            .map_err(|_| Status::invalid_argument("invalid request message"))?;
        Ok((peer, m))
    }

    fn login_response(&self, acc: &Account, peer: &Peer) -> pb::LoginResponse {
        pb::LoginResponse {
            netbird_config: Some(lock(&self.shared.netbird_config).clone()),
            peer_config: Some(acc.peer_config(peer)),
            checks: Vec::new(),
            session_expires_at: Some(session_expiry(acc, peer)),
        }
    }
}

#[tonic::async_trait]
impl ManagementService for MgmtService {
    async fn login(
        &self,
        req: Request<pb::EncryptedMessage>,
    ) -> Result<Response<pb::EncryptedMessage>, Status> {
        let (key, login): (PublicKey, pb::LoginRequest) = self.open(req.get_ref())?;
        let Some(meta) = login.meta.clone() else {
            return Err(Status::failed_precondition(
                "peer system meta has to be provided to log in",
            ));
        };
        let user = if login.jwt_token.is_empty() {
            None
        } else {
            let verifier = lock(&self.shared.jwt_verifier).clone();
            match verifier {
                Some(v) => Some(v(&login.jwt_token)?),
                None => {
                    return Err(Status::invalid_argument(
                        "invalid jwt token, err: no identity provider configured",
                    ))
                }
            }
        };
        let mut acc = self.shared.account();
        if let Some(existing) = acc.peer_by_key(&key).cloned() {
            if existing.login_expired {
                if user.is_none() {
                    return Err(Status::permission_denied(
                        "peer login has expired, please log in once more",
                    ));
                }
                if let Some(p) = acc.peers.get_mut(&existing.id) {
                    p.login_expired = false;
                }
                acc.bump();
                drop(acc);
                self.shared.push_all();
                acc = self.shared.account();
            }
            let peer = acc
                .peer_by_key(&key)
                .cloned()
                .ok_or_else(|| Status::internal("peer vanished"))?;
            let resp = self.login_response(&acc, &peer);
            return Ok(Response::new(self.shared.seal(&key, &resp)));
        }
        // Registration.
        let mut auto_groups = Vec::new();
        let mut setup_key_id = None;
        let added_with_sso = user.is_some();
        if user.is_none() {
            if login.setup_key.is_empty() {
                return Err(Status::permission_denied(
                    "no peer auth method provided, please use a setup key or interactive SSO login",
                ));
            }
            let hash = hash_setup_key(&login.setup_key);
            let now = unix_now();
            let Some(sk) = acc.setup_keys.values().find(|k| k.hash == hash).cloned() else {
                return Err(Status::not_found("couldn't add peer: setup key is invalid"));
            };
            if sk.invalid_reason(now).is_some() {
                return Err(Status::not_found("couldn't add peer: setup key is invalid"));
            }
            if !login.dns_labels.is_empty() && !sk.allow_extra_dns_labels {
                return Err(Status::failed_precondition(
                    "couldn't add peer: setup key doesn't allow extra DNS labels",
                ));
            }
            auto_groups = sk.auto_groups.clone();
            setup_key_id = Some(sk.id.clone());
            if let Some(k) = acc.setup_keys.get_mut(&sk.id) {
                k.used_times += 1;
            }
        }
        let ip = acc
            .allocate_ip()
            .ok_or_else(|| Status::internal("failed handling request"))?;
        let id = acc.new_id("peer");
        let label = acc.unique_label(&meta.hostname);
        let approval_required = acc.settings.peer_approval_enabled;
        let peer = Peer {
            id: id.clone(),
            key,
            name: meta.hostname.clone(),
            dns_label: label,
            ip,
            meta,
            connected: false,
            login_expired: false,
            approval_required,
            added_with_sso,
            setup_key_id,
            login_expiration_enabled: added_with_sso,
        };
        acc.peers.insert(id.clone(), peer.clone());
        for g in auto_groups {
            if let Some(group) = acc.groups.get_mut(&g) {
                group.peers.push(id.clone());
            }
        }
        acc.bump();
        let resp = self.login_response(&acc, &peer);
        drop(acc);
        self.shared.push_all();
        Ok(Response::new(self.shared.seal(&key, &resp)))
    }

    type SyncStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::EncryptedMessage, Status>> + Send>>;

    async fn sync(
        &self,
        req: Request<pb::EncryptedMessage>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let (key, sync): (PublicKey, pb::SyncRequest) = self.open(req.get_ref())?;
        let (tx, rx) = mpsc::channel(64);
        let (peer_id, first, generation) = {
            let mut acc = self.shared.account();
            let Some(peer) = acc.peer_by_key(&key).cloned() else {
                return Err(Status::permission_denied("peer is not registered"));
            };
            if peer.login_expired {
                return Err(Status::permission_denied(
                    "peer login has expired, please log in once more",
                ));
            }
            if let Some(p) = acc.peers.get_mut(&peer.id) {
                if let Some(meta) = sync.meta {
                    p.meta = meta;
                }
                p.connected = true;
            }
            let first = self
                .shared
                .sync_response(&acc, &peer.id, true)
                .ok_or_else(|| Status::internal("failed handling request"))?;
            let mut gen = lock(&self.shared.generation);
            *gen += 1;
            (peer.id, first, *gen)
        };
        let _ = tx.try_send(Ok(self.shared.seal(&key, &first)));
        lock(&self.shared.streams).insert(peer_id.clone(), (generation, tx));
        let shared = self.shared.clone();
        let on_drop = move || {
            let mut streams = lock(&shared.streams);
            if streams.get(&peer_id).map(|(g, _)| *g) == Some(generation) {
                streams.remove(&peer_id);
                drop(streams);
                if let Some(p) = shared.account().peers.get_mut(&peer_id) {
                    p.connected = false;
                }
            }
        };
        Ok(Response::new(Box::pin(SyncOut {
            rx: ReceiverStream::new(rx),
            on_drop: Some(Box::new(on_drop)),
        })))
    }

    async fn get_server_key(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<pb::ServerKeyResponse>, Status> {
        Ok(Response::new(pb::ServerKeyResponse {
            key: self.shared.key.public_key().to_base64(),
            expires_at: None,
            version: 0,
        }))
    }

    async fn is_healthy(&self, _req: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_device_authorization_flow(
        &self,
        req: Request<pb::EncryptedMessage>,
    ) -> Result<Response<pb::EncryptedMessage>, Status> {
        let (key, _): (PublicKey, pb::DeviceAuthorizationFlowRequest) = self.open(req.get_ref())?;
        let flow = lock(&self.shared.device_flow).clone();
        match flow {
            Some(f) => Ok(Response::new(self.shared.seal(&key, &f))),
            None => Err(Status::not_found(
                "no device authorization flow information available",
            )),
        }
    }

    async fn get_pkce_authorization_flow(
        &self,
        req: Request<pb::EncryptedMessage>,
    ) -> Result<Response<pb::EncryptedMessage>, Status> {
        let (key, _): (PublicKey, pb::PkceAuthorizationFlowRequest) = self.open(req.get_ref())?;
        let flow = lock(&self.shared.pkce_flow).clone();
        match flow {
            Some(f) => Ok(Response::new(self.shared.seal(&key, &f))),
            None => Err(Status::not_found(
                "no pkce authorization flow information available",
            )),
        }
    }

    async fn sync_meta(
        &self,
        req: Request<pb::EncryptedMessage>,
    ) -> Result<Response<pb::Empty>, Status> {
        let (key, m): (PublicKey, pb::SyncMetaRequest) = self.open(req.get_ref())?;
        let mut acc = self.shared.account();
        let Some(id) = acc.peer_by_key(&key).map(|p| p.id.clone()) else {
            return Err(Status::permission_denied("peer is not registered"));
        };
        let meta = m
            .meta
            .ok_or_else(|| Status::failed_precondition("peer system meta has to be provided"))?;
        if let Some(p) = acc.peers.get_mut(&id) {
            p.meta = meta;
        }
        acc.bump();
        drop(acc);
        self.shared.push_all();
        Ok(Response::new(pb::Empty {}))
    }

    async fn logout(
        &self,
        req: Request<pb::EncryptedMessage>,
    ) -> Result<Response<pb::Empty>, Status> {
        let (key, _): (PublicKey, pb::Empty) = self.open(req.get_ref())?;
        let mut acc = self.shared.account();
        let Some(id) = acc.peer_by_key(&key).map(|p| p.id.clone()) else {
            return Err(Status::not_found("peer not found"));
        };
        acc.peers.remove(&id);
        for g in acc.groups.values_mut() {
            g.peers.retain(|p| *p != id);
        }
        acc.bump();
        let serial = acc.serial;
        drop(acc);
        self.shared.close_peer_stream(&id, &key, serial);
        self.shared.push_all();
        Ok(Response::new(pb::Empty {}))
    }

    type JobStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::EncryptedMessage, Status>> + Send>>;

    async fn job(
        &self,
        _req: Request<tonic::Streaming<pb::EncryptedMessage>>,
    ) -> Result<Response<Self::JobStream>, Status> {
        Err(Status::unimplemented(
            "jobs are not supported by the testbed",
        ))
    }

    async fn extend_auth_session(
        &self,
        _req: Request<pb::EncryptedMessage>,
    ) -> Result<Response<pb::EncryptedMessage>, Status> {
        Err(Status::unimplemented(
            "ExtendAuthSession is not supported by the testbed",
        ))
    }
}

/// A Sync response stream that marks the peer disconnected when the client goes away.
struct SyncOut {
    rx: ReceiverStream<Result<pb::EncryptedMessage, Status>>,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl tokio_stream::Stream for SyncOut {
    type Item = Result<pb::EncryptedMessage, Status>;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

impl Drop for SyncOut {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}
