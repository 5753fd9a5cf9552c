//! OAuth 2.0 device authorization grant (RFC 8628) as NetBird runs it: `audience` is always
//! sent, `slow_down` adds 5 s to the interval, a zero interval means 5 s.

use super::{choose_token, http_client, SsoError, TokenResponse};
use crate::proto::management as pb;
use serde::Deserialize;
use std::time::{Duration, Instant};

/// A started device login: what to show the user, and what to poll with.
#[derive(Debug, Clone)]
pub struct DeviceCode {
    /// Code the user types.
    pub user_code: String,
    /// Where the user goes.
    pub verification_uri: String,
    /// The same with the code filled in (or the plain URI).
    pub verification_uri_complete: String,
    device_code: String,
    interval: Duration,
    expires_at: Instant,
    cfg: pb::ProviderConfig,
}

#[derive(Deserialize)]
struct DeviceAuthResponse {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: String,
    #[serde(default)]
    expires_in: u64,
    #[serde(default)]
    interval: u64,
}

/// Validates the provider config for the device flow.
pub fn validate(cfg: &pb::ProviderConfig) -> Result<(), SsoError> {
    for (v, name) in [
        (&cfg.audience, "Audience"),
        (&cfg.client_id, "ClientID"),
        (&cfg.token_endpoint, "TokenEndpoint"),
        (&cfg.device_auth_endpoint, "DeviceAuthEndpoint"),
    ] {
        if v.is_empty() {
            return Err(SsoError::Incomplete(name));
        }
    }
    Ok(())
}

/// Starts the device flow.
pub async fn start(cfg: &pb::ProviderConfig) -> Result<DeviceCode, SsoError> {
    validate(cfg)?;
    let scope = if cfg.scope.is_empty() {
        "openid"
    } else {
        &cfg.scope
    };
    let resp = http_client()?
        .post(&cfg.device_auth_endpoint)
        .form(&[
            ("client_id", cfg.client_id.as_str()),
            ("audience", cfg.audience.as_str()),
            ("scope", scope),
        ])
        .send()
        .await
        .map_err(|e| SsoError::Http(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(SsoError::Http(format!(
            "device authorization answered {}",
            resp.status()
        )));
    }
    let d: DeviceAuthResponse = resp
        .json()
        .await
        .map_err(|e| SsoError::Http(format!("bad device authorization answer: {e}")))?;
    let interval = if d.interval == 0 { 5 } else { d.interval };
    let expires_in = if d.expires_in == 0 { 300 } else { d.expires_in };
    Ok(DeviceCode {
        verification_uri_complete: if d.verification_uri_complete.is_empty() {
            d.verification_uri.clone()
        } else {
            d.verification_uri_complete
        },
        verification_uri: d.verification_uri,
        user_code: d.user_code,
        device_code: d.device_code,
        interval: Duration::from_secs(interval),
        expires_at: Instant::now() + Duration::from_secs(expires_in),
        cfg: cfg.clone(),
    })
}

impl DeviceCode {
    /// Polls the token endpoint until the user finishes, the code expires or the provider
    /// refuses. Returns the JWT management expects.
    pub async fn wait_token(&self) -> Result<String, SsoError> {
        let client = http_client()?;
        let mut interval = self.interval;
        loop {
            tokio::time::sleep(interval).await;
            if Instant::now() >= self.expires_at {
                return Err(SsoError::Expired);
            }
            let resp = client
                .post(&self.cfg.token_endpoint)
                .form(&[
                    ("client_id", self.cfg.client_id.as_str()),
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", self.device_code.as_str()),
                ])
                .send()
                .await
                .map_err(|e| SsoError::Http(e.to_string()))?;
            if resp.status().is_server_error() {
                return Err(SsoError::Http(format!(
                    "token endpoint answered {}",
                    resp.status()
                )));
            }
            let t: TokenResponse = resp
                .json()
                .await
                .map_err(|e| SsoError::Http(format!("bad token answer: {e}")))?;
            match t.error.as_deref() {
                None => {
                    return choose_token(
                        &self.cfg,
                        t.access_token.as_deref(),
                        t.id_token.as_deref(),
                    )
                }
                Some("authorization_pending") => {}
                Some("slow_down") => interval += Duration::from_secs(5),
                Some("expired_token") => return Err(SsoError::Expired),
                Some(other) => {
                    return Err(SsoError::Denied(
                        t.error_description.unwrap_or_else(|| other.to_string()),
                    ))
                }
            }
        }
    }

    /// The polling interval in force.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}
