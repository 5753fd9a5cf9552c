//! Admin actions on the testbed account, in process ([`Admin`]) and over HTTP with NetBird's
//! REST API shapes (`/api/setup-keys`, `/api/peers`, `/api/groups`, `/api/policies`,
//! `/api/routes`, `/api/dns/nameservers`, `/api/accounts`), token-authenticated.

use super::account::{
    hash_setup_key, unix_now, Group, NameserverGroup, Policy, Route, Settings, SetupKey,
};
use super::mgmt::{JwtVerifier, Shared};
use super::Running;
use crate::proto::management as pb;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// What a new setup key should be.
#[derive(Debug, Clone, Deserialize)]
pub struct SetupKeySpec {
    /// Name.
    pub name: String,
    /// `reusable` or `one-off`.
    #[serde(rename = "type")]
    pub key_type: String,
    /// Seconds until it expires (0 = never).
    #[serde(default)]
    pub expires_in: u64,
    /// Groups new peers join.
    #[serde(default)]
    pub auto_groups: Vec<String>,
    /// 0 = unlimited.
    #[serde(default)]
    pub usage_limit: u32,
    /// Ephemeral peers.
    #[serde(default)]
    pub ephemeral: bool,
    /// Extra DNS labels allowed.
    #[serde(default)]
    pub allow_extra_dns_labels: bool,
}

impl SetupKeySpec {
    /// A reusable key without expiry.
    pub fn reusable(name: &str) -> Self {
        SetupKeySpec {
            name: name.into(),
            key_type: "reusable".into(),
            expires_in: 0,
            auto_groups: Vec::new(),
            usage_limit: 0,
            ephemeral: false,
            allow_extra_dns_labels: false,
        }
    }

    /// A one-off key.
    pub fn one_off(name: &str) -> Self {
        SetupKeySpec {
            key_type: "one-off".into(),
            ..Self::reusable(name)
        }
    }
}

/// A key as created: the plain text is only shown once.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedSetupKey {
    /// Admin id.
    pub id: String,
    /// The key text (UUID, upper case as NetBird shows it).
    pub key: String,
}

/// A peer as the admin sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerInfo {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Overlay IP.
    pub ip: String,
    /// DNS label.
    pub dns_label: String,
    /// WireGuard key.
    pub key: String,
    /// Connected (Sync open).
    pub connected: bool,
    /// Login expired.
    pub login_expired: bool,
    /// Waiting for approval.
    pub approval_required: bool,
    /// Reported OS.
    pub os: String,
    /// Reported agent version.
    pub version: String,
    /// Reported hostname.
    pub hostname: String,
    /// Group ids.
    pub groups: Vec<String>,
}

/// Why an admin action failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    /// No such object.
    #[error("{0} not found")]
    NotFound(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

/// In-process admin handle.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }

    fn change<T>(
        &self,
        f: impl FnOnce(&mut super::account::Account) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let out = {
            let mut acc = self.shared.account();
            let out = f(&mut acc)?;
            acc.bump();
            out
        };
        self.shared.push_all();
        Ok(out)
    }

    /// Creates a setup key.
    pub fn create_setup_key(&self, spec: SetupKeySpec) -> Result<CreatedSetupKey, AdminError> {
        if spec.key_type != "reusable" && spec.key_type != "one-off" {
            return Err(AdminError::Invalid(format!(
                "invalid setup key type {:?}",
                spec.key_type
            )));
        }
        let text = uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase();
        let mut acc = self.shared.account();
        let id = acc.new_id("setupkey");
        acc.setup_keys.insert(
            id.clone(),
            SetupKey {
                id: id.clone(),
                name: spec.name,
                hash: hash_setup_key(&text),
                prefix: text.chars().take(5).collect(),
                reusable: spec.key_type == "reusable",
                usage_limit: spec.usage_limit,
                used_times: 0,
                expires_at: (spec.expires_in > 0).then(|| unix_now() + spec.expires_in),
                revoked: false,
                auto_groups: spec.auto_groups,
                ephemeral: spec.ephemeral,
                allow_extra_dns_labels: spec.allow_extra_dns_labels,
            },
        );
        Ok(CreatedSetupKey { id, key: text })
    }

    /// Revokes a setup key.
    pub fn revoke_setup_key(&self, id: &str) -> Result<(), AdminError> {
        let mut acc = self.shared.account();
        let k = acc
            .setup_keys
            .get_mut(id)
            .ok_or_else(|| AdminError::NotFound(format!("setup key {id}")))?;
        k.revoked = true;
        Ok(())
    }

    /// Makes a setup key expire now (for tests of expired keys).
    pub fn expire_setup_key(&self, id: &str) -> Result<(), AdminError> {
        let mut acc = self.shared.account();
        let k = acc
            .setup_keys
            .get_mut(id)
            .ok_or_else(|| AdminError::NotFound(format!("setup key {id}")))?;
        k.expires_at = Some(unix_now().saturating_sub(1));
        Ok(())
    }

    /// Setup keys in REST shape.
    pub fn list_setup_keys(&self) -> Vec<Value> {
        let acc = self.shared.account();
        let now = unix_now();
        acc.setup_keys
            .values()
            .map(|k| {
                json!({
                    "id": k.id, "name": k.name, "type": if k.reusable { "reusable" } else { "one-off" },
                    "valid": k.invalid_reason(now).is_none(), "revoked": k.revoked, "used_times": k.used_times,
                    "state": k.state(now), "auto_groups": k.auto_groups, "usage_limit": k.usage_limit,
                    "ephemeral": k.ephemeral, "allow_extra_dns_labels": k.allow_extra_dns_labels,
                    "key": format!("{}****", k.prefix),
                    "expires": k.expires_at.map(|e| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(e)).to_string()),
                })
            })
            .collect()
    }

    /// Every peer.
    pub fn list_peers(&self) -> Vec<PeerInfo> {
        let acc = self.shared.account();
        acc.peers
            .values()
            .map(|p| PeerInfo {
                id: p.id.clone(),
                name: p.name.clone(),
                ip: p.ip.to_string(),
                dns_label: format!("{}.{}", p.dns_label, acc.dns_domain),
                key: p.key.to_base64(),
                connected: p.connected,
                login_expired: p.login_expired,
                approval_required: p.approval_required,
                os: format!("{} {}", p.meta.os, p.meta.os_version),
                version: p.meta.netbird_version.clone(),
                hostname: p.meta.hostname.clone(),
                groups: acc.groups_of(&p.id).into_iter().collect(),
            })
            .collect()
    }

    /// The reported metadata of a peer.
    pub fn peer_meta(&self, id: &str) -> Option<pb::PeerSystemMeta> {
        self.shared.account().peers.get(id).map(|p| p.meta.clone())
    }

    /// Deletes a peer: its stream gets an empty map and is closed.
    pub fn delete_peer(&self, id: &str) -> Result<(), AdminError> {
        let (key, serial) = {
            let mut acc = self.shared.account();
            let p = acc
                .peers
                .remove(id)
                .ok_or_else(|| AdminError::NotFound(format!("peer {id}")))?;
            for g in acc.groups.values_mut() {
                g.peers.retain(|x| x != id);
            }
            acc.bump();
            (p.key, acc.serial)
        };
        self.shared.close_peer_stream(id, &key, serial);
        self.shared.push_all();
        Ok(())
    }

    /// Approves a peer waiting for approval.
    pub fn approve_peer(&self, id: &str) -> Result<(), AdminError> {
        self.change(|acc| {
            let p = acc
                .peers
                .get_mut(id)
                .ok_or_else(|| AdminError::NotFound(format!("peer {id}")))?;
            p.approval_required = false;
            Ok(())
        })
    }

    /// Marks a peer's login as expired: its stream is closed and its next login is refused.
    pub fn expire_peer_login(&self, id: &str) -> Result<(), AdminError> {
        let key = self.change(|acc| {
            let p = acc
                .peers
                .get_mut(id)
                .ok_or_else(|| AdminError::NotFound(format!("peer {id}")))?;
            p.login_expired = true;
            Ok(p.key)
        })?;
        let serial = self.shared.account().serial;
        self.shared.close_peer_stream(id, &key, serial);
        Ok(())
    }

    /// Changes account settings.
    pub fn set_settings(&self, s: Settings) -> Result<(), AdminError> {
        self.change(|acc| {
            acc.settings = s;
            Ok(())
        })
    }

    /// Current settings.
    pub fn settings(&self) -> Settings {
        self.shared.account().settings.clone()
    }

    /// Creates a group.
    pub fn create_group(&self, name: &str, peers: Vec<String>) -> Result<Group, AdminError> {
        self.change(|acc| {
            let id = acc.new_id("group");
            let g = Group {
                id: id.clone(),
                name: name.into(),
                peers,
            };
            acc.groups.insert(id, g.clone());
            Ok(g)
        })
    }

    /// Replaces a group's name and members.
    pub fn update_group(
        &self,
        id: &str,
        name: &str,
        peers: Vec<String>,
    ) -> Result<Group, AdminError> {
        self.change(|acc| {
            let g = acc
                .groups
                .get_mut(id)
                .ok_or_else(|| AdminError::NotFound(format!("group {id}")))?;
            g.name = name.into();
            g.peers = peers;
            Ok(g.clone())
        })
    }

    /// Deletes a group.
    pub fn delete_group(&self, id: &str) -> Result<(), AdminError> {
        self.change(|acc| {
            acc.groups
                .remove(id)
                .map(|_| ())
                .ok_or_else(|| AdminError::NotFound(format!("group {id}")))
        })
    }

    /// Groups.
    pub fn list_groups(&self) -> Vec<Group> {
        self.shared.account().groups.values().cloned().collect()
    }

    /// Creates a policy; ids are filled in.
    pub fn create_policy(&self, mut p: Policy) -> Result<Policy, AdminError> {
        self.change(|acc| {
            for r in &p.rules {
                for g in r.sources.iter().chain(&r.destinations) {
                    if !acc.groups.contains_key(g) {
                        return Err(AdminError::Invalid(format!("group {g} not found")));
                    }
                }
            }
            p.id = acc.new_id("policy");
            for r in &mut p.rules {
                if r.id.is_empty() {
                    r.id = acc.new_id("rule");
                }
            }
            acc.policies.insert(p.id.clone(), p.clone());
            Ok(p)
        })
    }

    /// Deletes a policy.
    pub fn delete_policy(&self, id: &str) -> Result<(), AdminError> {
        self.change(|acc| {
            acc.policies
                .remove(id)
                .map(|_| ())
                .ok_or_else(|| AdminError::NotFound(format!("policy {id}")))
        })
    }

    /// Policies.
    pub fn list_policies(&self) -> Vec<Policy> {
        self.shared.account().policies.values().cloned().collect()
    }

    /// Creates a route.
    pub fn create_route(&self, mut r: Route) -> Result<Route, AdminError> {
        if r.domains.is_empty() && r.network.parse::<ipnet::IpNet>().is_err() {
            return Err(AdminError::Invalid(format!(
                "invalid network {:?}",
                r.network
            )));
        }
        self.change(|acc| {
            r.id = acc.new_id("route");
            acc.routes.insert(r.id.clone(), r.clone());
            Ok(r)
        })
    }

    /// Deletes a route.
    pub fn delete_route(&self, id: &str) -> Result<(), AdminError> {
        self.change(|acc| {
            acc.routes
                .remove(id)
                .map(|_| ())
                .ok_or_else(|| AdminError::NotFound(format!("route {id}")))
        })
    }

    /// Routes.
    pub fn list_routes(&self) -> Vec<Route> {
        self.shared.account().routes.values().cloned().collect()
    }

    /// Creates a nameserver group.
    pub fn create_nameserver_group(
        &self,
        mut g: NameserverGroup,
    ) -> Result<NameserverGroup, AdminError> {
        for n in &g.nameservers {
            if n.ip.parse::<std::net::IpAddr>().is_err() {
                return Err(AdminError::Invalid(format!(
                    "invalid nameserver {:?}",
                    n.ip
                )));
            }
        }
        self.change(|acc| {
            g.id = acc.new_id("nsgroup");
            acc.nameserver_groups.insert(g.id.clone(), g.clone());
            Ok(g)
        })
    }

    /// Deletes a nameserver group.
    pub fn delete_nameserver_group(&self, id: &str) -> Result<(), AdminError> {
        self.change(|acc| {
            acc.nameserver_groups
                .remove(id)
                .map(|_| ())
                .ok_or_else(|| AdminError::NotFound(format!("nameserver group {id}")))
        })
    }

    /// Nameserver groups.
    pub fn list_nameserver_groups(&self) -> Vec<NameserverGroup> {
        self.shared
            .account()
            .nameserver_groups
            .values()
            .cloned()
            .collect()
    }

    /// The account serial.
    pub fn serial(&self) -> u64 {
        self.shared.account().serial
    }

    /// Bumps the serial and pushes maps (an unrelated account change).
    pub fn touch(&self) {
        let _ = self.change(|_| Ok(()));
    }

    /// Replaces the advertised services and pushes a config-only update.
    pub fn set_netbird_config(&self, cfg: pb::NetbirdConfig) {
        if let Ok(mut c) = self.shared.netbird_config.lock() {
            *c = cfg;
        }
        self.shared.push_config();
    }

    /// Installs the SSO token check and the flows advertised to clients.
    pub fn set_sso(
        &self,
        verifier: JwtVerifier,
        device: Option<pb::DeviceAuthorizationFlow>,
        pkce: Option<pb::PkceAuthorizationFlow>,
    ) {
        if let Ok(mut v) = self.shared.jwt_verifier.lock() {
            *v = Some(verifier);
        }
        if let Ok(mut d) = self.shared.device_flow.lock() {
            *d = device;
        }
        if let Ok(mut p) = self.shared.pkce_flow.lock() {
            *p = pkce;
        }
    }
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"message": self.1, "code": self.0.as_u16()})),
        )
            .into_response()
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, format!("{m} not found")),
            AdminError::Invalid(m) => ApiError(StatusCode::UNPROCESSABLE_ENTITY, m),
        }
    }
}

#[derive(Clone)]
struct Api {
    admin: Admin,
    token: Arc<String>,
}

fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .is_some_and(|t| t == api.token.as_str());
    if ok {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNAUTHORIZED, "token invalid".into()))
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn to_json<T: Serialize>(v: T) -> ApiResult {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(Deserialize)]
struct KeyUpdate {
    #[serde(default)]
    revoked: bool,
}

#[derive(Deserialize)]
struct PeerUpdate {
    #[serde(default)]
    approval_required: Option<bool>,
}

#[derive(Deserialize)]
struct GroupBody {
    name: String,
    #[serde(default)]
    peers: Vec<String>,
}

async fn setup_keys_list(State(api): State<Api>, h: HeaderMap) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.list_setup_keys())
}

async fn setup_keys_create(
    State(api): State<Api>,
    h: HeaderMap,
    Json(spec): Json<SetupKeySpec>,
) -> ApiResult {
    authorize(&api, &h)?;
    let created = api.admin.create_setup_key(spec)?;
    let mut v = api
        .admin
        .list_setup_keys()
        .into_iter()
        .find(|k| k["id"] == created.id)
        .unwrap_or_default();
    v["key"] = json!(created.key);
    Ok(Json(v))
}

async fn setup_key_update(
    State(api): State<Api>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(u): Json<KeyUpdate>,
) -> ApiResult {
    authorize(&api, &h)?;
    if u.revoked {
        api.admin.revoke_setup_key(&id)?;
    }
    api.admin
        .list_setup_keys()
        .into_iter()
        .find(|k| k["id"] == id)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("setup key {id} not found")))
}

async fn peers_list(State(api): State<Api>, h: HeaderMap) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.list_peers())
}

async fn peer_get(State(api): State<Api>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authorize(&api, &h)?;
    let p = api.admin.list_peers().into_iter().find(|p| p.id == id);
    p.map(to_json).unwrap_or_else(|| {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("peer {id} not found"),
        ))
    })
}

async fn peer_update(
    State(api): State<Api>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(u): Json<PeerUpdate>,
) -> ApiResult {
    authorize(&api, &h)?;
    if u.approval_required == Some(false) {
        api.admin.approve_peer(&id)?;
    }
    peer_get(State(api), h, Path(id)).await
}

async fn peer_delete(State(api): State<Api>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authorize(&api, &h)?;
    api.admin.delete_peer(&id)?;
    Ok(Json(json!({})))
}

async fn groups_list(State(api): State<Api>, h: HeaderMap) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.list_groups())
}

async fn groups_create(
    State(api): State<Api>,
    h: HeaderMap,
    Json(b): Json<GroupBody>,
) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.create_group(&b.name, b.peers)?)
}

async fn group_update(
    State(api): State<Api>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(b): Json<GroupBody>,
) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.update_group(&id, &b.name, b.peers)?)
}

async fn group_delete(State(api): State<Api>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authorize(&api, &h)?;
    api.admin.delete_group(&id)?;
    Ok(Json(json!({})))
}

async fn policies_list(State(api): State<Api>, h: HeaderMap) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.list_policies())
}

async fn policies_create(State(api): State<Api>, h: HeaderMap, Json(p): Json<Policy>) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.create_policy(p)?)
}

async fn policy_delete(State(api): State<Api>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authorize(&api, &h)?;
    api.admin.delete_policy(&id)?;
    Ok(Json(json!({})))
}

async fn routes_list(State(api): State<Api>, h: HeaderMap) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.list_routes())
}

async fn routes_create(State(api): State<Api>, h: HeaderMap, Json(r): Json<Route>) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.create_route(r)?)
}

async fn route_delete(State(api): State<Api>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authorize(&api, &h)?;
    api.admin.delete_route(&id)?;
    Ok(Json(json!({})))
}

async fn ns_list(State(api): State<Api>, h: HeaderMap) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.list_nameserver_groups())
}

async fn ns_create(
    State(api): State<Api>,
    h: HeaderMap,
    Json(g): Json<NameserverGroup>,
) -> ApiResult {
    authorize(&api, &h)?;
    to_json(api.admin.create_nameserver_group(g)?)
}

async fn ns_delete(State(api): State<Api>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authorize(&api, &h)?;
    api.admin.delete_nameserver_group(&id)?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct AccountUpdate {
    settings: Settings,
}

async fn accounts_list(State(api): State<Api>, h: HeaderMap) -> ApiResult {
    authorize(&api, &h)?;
    Ok(Json(
        json!([{"id": "testbed", "settings": api.admin.settings()}]),
    ))
}

async fn account_update(
    State(api): State<Api>,
    h: HeaderMap,
    Path(_id): Path<String>,
    Json(u): Json<AccountUpdate>,
) -> ApiResult {
    authorize(&api, &h)?;
    api.admin.set_settings(u.settings)?;
    Ok(Json(
        json!({"id": "testbed", "settings": api.admin.settings()}),
    ))
}

/// The admin API router.
pub fn router(admin: Admin, token: String) -> Router {
    let api = Api {
        admin,
        token: Arc::new(token),
    };
    Router::new()
        .route(
            "/api/setup-keys",
            get(setup_keys_list).post(setup_keys_create),
        )
        .route("/api/setup-keys/{id}", axum::routing::put(setup_key_update))
        .route("/api/peers", get(peers_list))
        .route(
            "/api/peers/{id}",
            get(peer_get).put(peer_update).delete(peer_delete),
        )
        .route("/api/groups", get(groups_list).post(groups_create))
        .route(
            "/api/groups/{id}",
            axum::routing::put(group_update).delete(group_delete),
        )
        .route("/api/policies", get(policies_list).post(policies_create))
        .route("/api/policies/{id}", axum::routing::delete(policy_delete))
        .route("/api/routes", get(routes_list).post(routes_create))
        .route("/api/routes/{id}", axum::routing::delete(route_delete))
        .route("/api/dns/nameservers", get(ns_list).post(ns_create))
        .route(
            "/api/dns/nameservers/{id}",
            axum::routing::delete(ns_delete),
        )
        .route("/api/accounts", get(accounts_list))
        .route("/api/accounts/{id}", axum::routing::put(account_update))
        .with_state(api)
}

pub(super) fn spawn_http(
    admin: Admin,
    token: String,
    listener: tokio::net::TcpListener,
) -> Running {
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(admin, token);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = result {
            tracing::warn!("testbed admin API: {e}");
        }
    });
    Running { stop, task }
}
