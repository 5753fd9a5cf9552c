//! OIDC stand-in for SSO tests: device authorization, token (device code and authorization
//! code with PKCE S256), an authorization endpoint that logs the configured user in at once,
//! and a JWKS with the Ed25519 key that signs the JWTs. Management verifies tokens with
//! [`OidcServer::verifier`], which accepts each token once, as NetBird's session store does.

use crate::auth::jwt;
use crate::proto::management as pb;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Stand-in settings.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Audience put into tokens.
    pub audience: String,
    /// Client id.
    pub client_id: String,
    /// The user who logs in.
    pub user_email: String,
    /// Device-code lifetime in seconds.
    pub device_code_ttl: u64,
    /// Polling interval told to clients.
    pub interval: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            audience: "netbird-testbed".into(),
            client_id: "netbird-client".into(),
            user_email: "admin@netbird.selfhosted".into(),
            device_code_ttl: 300,
            interval: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DeviceState {
    Pending,
    SlowDownOnce,
    Approved,
    Denied,
}

struct Inner {
    cfg: OidcConfig,
    key: ed25519_dalek::SigningKey,
    issuer: String,
    devices: Mutex<HashMap<String, (String, DeviceState, u64)>>,
    codes: Mutex<HashMap<String, String>>,
    used: Mutex<HashSet<String>>,
}

/// A running stand-in.
pub struct OidcServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

fn now() -> u64 {
    super::account::unix_now()
}

impl Inner {
    fn token(&self) -> String {
        let claims = json!({
            "iss": self.issuer, "aud": [self.cfg.audience], "sub": "user-1", "email": self.cfg.user_email,
            "iat": now(), "exp": now() + 3600, "jti": uuid::Uuid::new_v4().to_string(),
        });
        jwt::sign_eddsa(&claims, &self.key, "testbed-key")
    }

    fn token_body(&self) -> serde_json::Value {
        let t = self.token();
        json!({"access_token": t, "id_token": t, "token_type": "Bearer", "expires_in": 3600})
    }
}

fn oauth_error(code: &str, desc: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": code, "error_description": desc})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct DeviceReq {
    client_id: String,
}

async fn device_authorize(State(s): State<Arc<Inner>>, Form(r): Form<DeviceReq>) -> Response {
    if r.client_id != s.cfg.client_id {
        return oauth_error("invalid_client", "unknown client");
    }
    let device_code = uuid::Uuid::new_v4().to_string();
    let user_code = format!(
        "{:04X}-{:04X}",
        rand::random::<u16>(),
        rand::random::<u16>()
    );
    s.devices.lock().unwrap_or_else(|e| e.into_inner()).insert(
        device_code.clone(),
        (
            user_code.clone(),
            DeviceState::Pending,
            now() + s.cfg.device_code_ttl,
        ),
    );
    let verify = format!("{}/device", s.issuer);
    Json(json!({
        "device_code": device_code, "user_code": user_code, "verification_uri": verify,
        "verification_uri_complete": format!("{verify}?user_code={user_code}"),
        "expires_in": s.cfg.device_code_ttl, "interval": s.cfg.interval,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct TokenReq {
    grant_type: String,
    #[serde(default)]
    device_code: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    code_verifier: String,
}

async fn token(State(s): State<Arc<Inner>>, Form(r): Form<TokenReq>) -> Response {
    match r.grant_type.as_str() {
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let mut devices = s.devices.lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = devices.get_mut(&r.device_code) else {
                return oauth_error("invalid_grant", "unknown device code");
            };
            if entry.2 <= now() {
                return oauth_error("expired_token", "the device code expired");
            }
            match entry.1 {
                DeviceState::Pending => {
                    oauth_error("authorization_pending", "waiting for the user")
                }
                DeviceState::SlowDownOnce => {
                    entry.1 = DeviceState::Pending;
                    oauth_error("slow_down", "polling too fast")
                }
                DeviceState::Denied => oauth_error("access_denied", "the user denied the login"),
                DeviceState::Approved => {
                    devices.remove(&r.device_code);
                    Json(s.token_body()).into_response()
                }
            }
        }
        "authorization_code" => {
            let challenge = s
                .codes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&r.code);
            match challenge {
                Some(c) if c == crate::auth::pkce::challenge(&r.code_verifier) => {
                    Json(s.token_body()).into_response()
                }
                Some(_) => oauth_error("invalid_grant", "PKCE verification failed"),
                None => oauth_error("invalid_grant", "unknown code"),
            }
        }
        _ => oauth_error("unsupported_grant_type", "unsupported grant type"),
    }
}

async fn authorize(
    State(s): State<Arc<Inner>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(redirect), Some(challenge)) = (q.get("redirect_uri"), q.get("code_challenge")) else {
        return oauth_error(
            "invalid_request",
            "redirect_uri and code_challenge are required",
        );
    };
    if q.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return oauth_error("invalid_request", "only S256 is supported");
    }
    let code = uuid::Uuid::new_v4().simple().to_string();
    s.codes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(code.clone(), challenge.clone());
    let state = q.get("state").cloned().unwrap_or_default();
    let sep = if redirect.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{redirect}{sep}code={code}&state={state}")).into_response()
}

async fn jwks(State(s): State<Arc<Inner>>) -> Json<serde_json::Value> {
    Json(jwt::jwks(&s.key.verifying_key(), "testbed-key"))
}

impl OidcServer {
    /// Starts the stand-in.
    pub async fn start(cfg: OidcConfig) -> std::io::Result<OidcServer> {
        let listener = tokio::net::TcpListener::bind(cfg.addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            issuer: format!("http://{addr}"),
            cfg,
            key: ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng),
            devices: Mutex::new(HashMap::new()),
            codes: Mutex::new(HashMap::new()),
            used: Mutex::new(HashSet::new()),
        });
        let app = Router::new()
            .route("/oauth/device/code", post(device_authorize))
            .route("/oauth/token", post(token))
            .route("/authorize", get(authorize))
            .route("/.well-known/jwks.json", get(jwks))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(OidcServer { inner, addr, task })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Approves the device login with this user code.
    pub fn approve(&self, user_code: &str) -> bool {
        self.set_state(user_code, DeviceState::Approved)
    }

    /// Denies it.
    pub fn deny(&self, user_code: &str) -> bool {
        self.set_state(user_code, DeviceState::Denied)
    }

    /// Answers the next poll with `slow_down`.
    pub fn slow_down_once(&self, user_code: &str) -> bool {
        self.set_state(user_code, DeviceState::SlowDownOnce)
    }

    fn set_state(&self, user_code: &str, st: DeviceState) -> bool {
        let mut d = self.inner.devices.lock().unwrap_or_else(|e| e.into_inner());
        match d.values_mut().find(|(u, _, _)| u == user_code) {
            Some(e) => {
                e.1 = st;
                true
            }
            None => false,
        }
    }

    /// The provider config management advertises for the device flow.
    pub fn device_flow(&self) -> pb::DeviceAuthorizationFlow {
        pb::DeviceAuthorizationFlow {
            provider: 0,
            provider_config: Some(pb::ProviderConfig {
                client_id: self.inner.cfg.client_id.clone(),
                audience: self.inner.cfg.audience.clone(),
                device_auth_endpoint: self.url("/oauth/device/code"),
                token_endpoint: self.url("/oauth/token"),
                scope: "openid email".into(),
                use_id_token: false,
                ..Default::default()
            }),
        }
    }

    /// The provider config for PKCE, with loopback redirect URLs on these ports.
    pub fn pkce_flow(&self, redirect_ports: &[u16]) -> pb::PkceAuthorizationFlow {
        pb::PkceAuthorizationFlow {
            provider_config: Some(pb::ProviderConfig {
                client_id: self.inner.cfg.client_id.clone(),
                audience: self.inner.cfg.audience.clone(),
                token_endpoint: self.url("/oauth/token"),
                authorization_endpoint: self.url("/authorize"),
                scope: "openid email".into(),
                redirect_ur_ls: redirect_ports
                    .iter()
                    .map(|p| format!("http://localhost:{p}/"))
                    .collect(),
                use_id_token: true,
                ..Default::default()
            }),
        }
    }

    /// A verifier for management: signature, audience, expiry, and each token only once.
    pub fn verifier(&self) -> super::mgmt::JwtVerifier {
        let inner = self.inner.clone();
        Arc::new(move |token: &str| {
            let claims = jwt::verify_eddsa(
                token,
                &inner.key.verifying_key(),
                &inner.cfg.audience,
                now(),
            )
            .map_err(|e| tonic::Status::invalid_argument(format!("invalid jwt token, err: {e}")))?;
            if !inner
                .used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(token.to_string())
            {
                return Err(tonic::Status::unauthenticated("JWT already used"));
            }
            Ok(claims["sub"].as_str().unwrap_or("user").to_string())
        })
    }
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
