//! SSO login: the OAuth 2.0 device flow (RFC 8628) and the authorization-code flow with PKCE
//! (RFC 7636), as NetBird's client runs them against the provider management advertises. The
//! resulting JWT goes into `LoginRequest.jwtToken`. Tokens are never logged.

pub mod device;
pub mod jwt;
pub mod pkce;

use crate::proto::management as pb;

/// SSO failures, each with a message a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// Management offers no flow of this kind.
    #[error("the management server offers no SSO login: use a setup key (`up --setup-key <KEY>`)")]
    NotConfigured,
    /// The provider config lacks a required field.
    #[error("the SSO provider configuration is incomplete: {0} is empty")]
    Incomplete(&'static str),
    /// HTTP failure talking to the identity provider.
    #[error("cannot reach the identity provider: {0}")]
    Http(String),
    /// The provider said no.
    #[error("the identity provider refused the login: {0}")]
    Denied(String),
    /// The code expired before the user finished.
    #[error("the login code expired before the login was completed: run the login again")]
    Expired,
    /// The token is not what management expects.
    #[error("the identity provider returned an unusable token: {0}")]
    BadToken(#[from] jwt::JwtError),
    /// The browser came back with a wrong state or an error.
    #[error("the browser login failed: {0}")]
    Callback(String),
}

/// Picks the token NetBird sends: the ID token if the provider config says so, else the
/// access token; it must carry the expected audience.
pub fn choose_token(
    cfg: &pb::ProviderConfig,
    access: Option<&str>,
    id: Option<&str>,
) -> Result<String, SsoError> {
    let token = if cfg.use_id_token { id } else { access }
        .ok_or_else(|| SsoError::Denied("no token in the answer".into()))?;
    let audience = if cfg.audience.is_empty() {
        &cfg.client_id
    } else {
        &cfg.audience
    };
    jwt::check_token_audience(token, audience)?;
    Ok(token.to_string())
}

/// A token endpoint's JSON answer (success or OAuth error).
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub(crate) access_token: Option<String>,
    #[serde(default)]
    pub(crate) id_token: Option<String>,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default)]
    pub(crate) error_description: Option<String>,
}

pub(crate) fn http_client() -> Result<reqwest::Client, SsoError> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| SsoError::Http(e.to_string()))
}
