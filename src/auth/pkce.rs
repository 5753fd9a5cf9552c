//! Authorization-code flow with PKCE (RFC 7636) and a local redirect listener, as NetBird runs
//! it on desktops: S256 challenge of a 128-hex-char verifier, 48-hex-char state, the first
//! redirect URL whose port is free.

use super::{choose_token, http_client, SsoError, TokenResponse};
use crate::proto::management as pb;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rand::RngCore;
use reqwest::Url;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long the browser login may take.
pub const PKCE_TIMEOUT: Duration = Duration::from_secs(300);

/// A started PKCE login: open `auth_url` in a browser, then wait.
pub struct PkcePending {
    /// The URL the user opens.
    pub auth_url: String,
    listener: TcpListener,
    redirect_uri: String,
    verifier: String,
    state: String,
    cfg: pb::ProviderConfig,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// The S256 code challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    B64URL.encode(Sha256::digest(verifier.as_bytes()))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Starts the flow: binds the redirect listener and builds the authorization URL.
pub async fn start(cfg: &pb::ProviderConfig) -> Result<PkcePending, SsoError> {
    for (v, name) in [
        (&cfg.client_id, "ClientID"),
        (&cfg.token_endpoint, "TokenEndpoint"),
        (&cfg.authorization_endpoint, "AuthorizationEndpoint"),
    ] {
        if v.is_empty() {
            return Err(SsoError::Incomplete(name));
        }
    }
    let mut bound = None;
    for r in &cfg.redirect_ur_ls {
        let Ok(url) = Url::parse(r) else { continue };
        let Some(port) = url.port_or_known_default() else {
            continue;
        };
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
            bound = Some((l, r.clone()));
            break;
        }
    }
    let (listener, redirect_uri) = bound.ok_or(SsoError::Incomplete("a free RedirectURL port"))?;
    let verifier = random_hex(64);
    let state = random_hex(24);
    let mut url = Url::parse(&cfg.authorization_endpoint)
        .map_err(|e| SsoError::Http(format!("bad authorization endpoint: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &cfg.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair(
                "scope",
                if cfg.scope.is_empty() {
                    "openid"
                } else {
                    &cfg.scope
                },
            )
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge(&verifier))
            .append_pair("code_challenge_method", "S256")
            .append_pair("audience", &cfg.audience);
        if !cfg.disable_prompt_login {
            match cfg.login_flag {
                0 => {
                    q.append_pair("prompt", "login");
                }
                1 => {
                    q.append_pair("max_age", "0");
                }
                _ => {}
            }
        }
    }
    Ok(PkcePending {
        auth_url: url.to_string(),
        listener,
        redirect_uri,
        verifier,
        state,
        cfg: cfg.clone(),
    })
}

impl PkcePending {
    /// Waits for the browser to come back, checks the state and exchanges the code.
    pub async fn wait_token(self) -> Result<String, SsoError> {
        tokio::time::timeout(PKCE_TIMEOUT, self.wait_inner())
            .await
            .map_err(|_| SsoError::Expired)?
    }

    async fn wait_inner(self) -> Result<String, SsoError> {
        loop {
            let (mut conn, _) = self
                .listener
                .accept()
                .await
                .map_err(|e| SsoError::Callback(e.to_string()))?;
            let mut buf = vec![0u8; 8192];
            let n = match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => continue,
            };
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let Some(target) = head
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
            else {
                continue;
            };
            let Ok(url) = Url::parse(&format!("http://localhost{target}")) else {
                continue;
            };
            let get = |k: &str| {
                url.query_pairs()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.into_owned())
            };
            let result = if let Some(err) = get("error") {
                Err(SsoError::Callback(get("error_description").unwrap_or(err)))
            } else {
                match (get("code"), get("state")) {
                    (Some(code), Some(state)) if constant_time_eq(&state, &self.state) => {
                        self.exchange(&code).await
                    }
                    (Some(_), _) => Err(SsoError::Callback(
                        "the state does not match this login".into(),
                    )),
                    _ => continue,
                }
            };
            let page = match &result {
                Ok(_) => "<html><body><h1>Login successful</h1><p>You can close this window.</p></body></html>".to_string(),
                Err(e) => format!("<html><body><h1>Login failed</h1><p>{}</p></body></html>", html_escape(&e.to_string())),
            };
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}", page.len());
            let _ = conn.write_all(resp.as_bytes()).await;
            return result;
        }
    }

    async fn exchange(&self, code: &str) -> Result<String, SsoError> {
        let resp = http_client()?
            .post(&self.cfg.token_endpoint)
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("code_verifier", self.verifier.as_str()),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("client_id", self.cfg.client_id.as_str()),
            ])
            .send()
            .await
            .map_err(|e| SsoError::Http(e.to_string()))?;
        let t: TokenResponse = resp
            .json()
            .await
            .map_err(|e| SsoError::Http(format!("bad token answer: {e}")))?;
        if let Some(e) = t.error {
            return Err(SsoError::Denied(t.error_description.unwrap_or(e)));
        }
        choose_token(&self.cfg, t.access_token.as_deref(), t.id_token.as_deref())
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_matches_rfc7636_example() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn state_comparison() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
