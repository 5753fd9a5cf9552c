//! SSO against the testbed's OIDC stand-in: the device flow and PKCE, in the library and end to
//! end through CLI -> daemon -> management, which verifies the JWT (once).

use netbird_agent::auth::{self, SsoError};
use netbird_agent::testbed::oidc::{OidcConfig, OidcServer};
use netbird_agent::testbed::{Testbed, TestbedConfig};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_netbird-agent");

/// Plays the browser: follows the stand-in's redirect to the local listener.
async fn browse(auth_url: &str) {
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = c.get(auth_url).send().await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let page = c.get(&loc).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Login successful"), "{page}");
}

#[tokio::test]
async fn device_flow_pending_slow_down_then_approved() {
    let oidc = OidcServer::start(OidcConfig::default()).await.unwrap();
    let cfg = oidc.device_flow().provider_config.unwrap();
    let code = auth::device::start(&cfg).await.unwrap();
    assert!(code.verification_uri_complete.contains(&code.user_code));
    assert!(oidc.slow_down_once(&code.user_code));
    let approve_later = {
        let user_code = code.user_code.clone();
        let oidc_ref = &oidc;
        async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert!(oidc_ref.approve(&user_code));
        }
    };
    let (token, _) = tokio::join!(code.wait_token(), approve_later);
    let token = token.unwrap();
    assert_eq!(token.split('.').count(), 3);
    let verify = oidc.verifier();
    assert!(verify(&token).is_ok());
    let again = verify(&token).unwrap_err();
    assert_eq!(
        again.code(),
        tonic::Code::Unauthenticated,
        "a JWT is accepted once"
    );
    // A tampered token fails the signature check.
    let mut bad = token.clone();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(verify(&bad).is_err());
}

#[tokio::test]
async fn device_flow_denied_and_expired() {
    let oidc = OidcServer::start(OidcConfig::default()).await.unwrap();
    let cfg = oidc.device_flow().provider_config.unwrap();
    let code = auth::device::start(&cfg).await.unwrap();
    oidc.deny(&code.user_code);
    assert!(matches!(code.wait_token().await, Err(SsoError::Denied(_))));

    let short = OidcServer::start(OidcConfig {
        device_code_ttl: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let cfg = short.device_flow().provider_config.unwrap();
    let code = auth::device::start(&cfg).await.unwrap();
    assert!(matches!(code.wait_token().await, Err(SsoError::Expired)));
}

#[tokio::test]
async fn device_flow_rejects_a_token_for_another_audience() {
    let oidc = OidcServer::start(OidcConfig::default()).await.unwrap();
    let mut cfg = oidc.device_flow().provider_config.unwrap();
    cfg.audience = "someone-else".into();
    let code = auth::device::start(&cfg).await.unwrap();
    oidc.approve(&code.user_code);
    assert!(matches!(
        code.wait_token().await,
        Err(SsoError::BadToken(_))
    ));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn pkce_flow_with_local_redirect() {
    let oidc = OidcServer::start(OidcConfig::default()).await.unwrap();
    // The first redirect port is busy: the flow takes the next one.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = oidc
        .pkce_flow(&[busy.local_addr().unwrap().port(), free_port()])
        .provider_config
        .unwrap();
    let pending = auth::pkce::start(&cfg).await.unwrap();
    assert!(pending.auth_url.contains("code_challenge_method=S256"));
    assert!(pending.auth_url.contains("prompt=login"));
    let url = pending.auth_url.clone();
    let (token, _) = tokio::join!(pending.wait_token(), browse(&url));
    assert!(oidc.verifier()(&token.unwrap()).is_ok());
}

#[tokio::test]
async fn pkce_flow_rejects_a_wrong_state() {
    let oidc = OidcServer::start(OidcConfig::default()).await.unwrap();
    let port = free_port();
    let cfg = oidc.pkce_flow(&[port]).provider_config.unwrap();
    let pending = auth::pkce::start(&cfg).await.unwrap();
    let forged = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = reqwest::get(format!("http://127.0.0.1:{port}/?code=abc&state=forged")).await;
    };
    let (r, _) = tokio::join!(pending.wait_token(), forged);
    assert!(matches!(r, Err(SsoError::Callback(_))), "{r:?}");
}

struct Daemon {
    child: std::process::Child,
    socket: String,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let child = Command::new(BIN)
        .args(["daemon", "--no-data-plane", "--daemon-addr"])
        .arg(format!("unix://{}", sock.display()))
        .arg("--config-dir")
        .arg(dir.path().join("state"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon {
        child,
        socket: format!("unix://{}", sock.display()),
        _dir: dir,
    }
}

/// Runs `up` without a setup key, returns the child and the URL it printed.
fn up_until_url(socket: &str, url: &str, desktop: bool) -> (std::process::Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["up", "--no-browser", "-m", url, "--daemon-addr", socket])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for v in [
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "BROWSER",
        "DESKTOP_SESSION",
        "XDG_CURRENT_DESKTOP",
        "XDG_SESSION_TYPE",
    ] {
        cmd.env_remove(v);
    }
    if desktop {
        cmd.env("DISPLAY", ":99");
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut seen = Vec::new();
    let link = loop {
        let line = lines.next().expect("a login URL is printed").unwrap();
        seen.push(line.clone());
        if line.starts_with("http") {
            break line;
        }
        assert!(seen.len() < 20, "{seen:?}");
    };
    assert!(seen.iter().any(|l| l.contains("SSO login")), "{seen:?}");
    std::thread::spawn(move || for _ in lines {});
    (child, link)
}

async fn sso_testbed(oidc: &OidcServer) -> Testbed {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    tb.admin().set_sso(
        oidc.verifier(),
        Some(oidc.device_flow()),
        Some(oidc.pkce_flow(&[free_port()])),
    );
    tb
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_up_with_device_flow_registers_through_sso() {
    let oidc = OidcServer::start(OidcConfig::default()).await.unwrap();
    let tb = sso_testbed(&oidc).await;
    let d = daemon();
    let url = tb.management_url();
    let sock = d.socket.clone();
    let (mut child, link) = tokio::task::spawn_blocking(move || up_until_url(&sock, &url, false))
        .await
        .unwrap();
    let user_code = link
        .split("user_code=")
        .nth(1)
        .expect("device URL carries the code")
        .to_string();
    assert!(oidc.approve(&user_code));
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let peers = tb.admin().list_peers();
    assert_eq!(peers.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_up_with_pkce_on_a_desktop() {
    let oidc = OidcServer::start(OidcConfig::default()).await.unwrap();
    let tb = sso_testbed(&oidc).await;
    let d = daemon();
    let url = tb.management_url();
    let sock = d.socket.clone();
    let (mut child, link) = tokio::task::spawn_blocking(move || up_until_url(&sock, &url, true))
        .await
        .unwrap();
    assert!(link.contains("code_challenge="), "{link}");
    browse(&link).await;
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    assert_eq!(tb.admin().list_peers().len(), 1);
}
