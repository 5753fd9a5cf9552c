//! Stand-in NetBird servers for tests and the lab (cargo feature `testbed`): management (gRPC,
//! same proto and error behaviour as NetBird's) with an admin API shaped like NetBird's REST API.

pub mod account;
pub mod admin;
pub mod coturn;
pub mod mgmt;
pub mod oidc;
pub mod relay_server;
pub mod signal_server;
pub mod stun_server;

use crate::crypto::PrivateKey;
use crate::proto::management as pb;
use crate::proto::management::management_service_server::ManagementServiceServer;
use account::Account;
pub use admin::{Admin, CreatedSetupKey, PeerInfo, SetupKeySpec};
use ipnet::Ipv4Net;
use mgmt::{MgmtService, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Errors starting the testbed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// A helper service (coturn) could not be started.
    #[error("{0}")]
    Service(String),
}

/// Testbed settings.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// Management gRPC address (port 0 = any).
    pub mgmt_addr: SocketAddr,
    /// Admin HTTP API address, if wanted.
    pub admin_addr: Option<SocketAddr>,
    /// Token the admin API requires (`Authorization: Token <token>`).
    pub admin_token: String,
    /// Overlay network.
    pub network: Ipv4Net,
    /// DNS domain of peers.
    pub dns_domain: String,
    /// Services advertised to peers (STUN, TURN, signal, relay); filled in for the signal and
    /// relay servers started with `services`.
    pub netbird_config: pb::NetbirdConfig,
    /// Start the signal and relay servers too.
    pub services: Option<ServiceAddrs>,
}

/// Where the testbed's signal and relay servers listen.
#[derive(Debug, Clone)]
pub struct ServiceAddrs {
    /// Signal gRPC address.
    pub signal: SocketAddr,
    /// Relay WebSocket address.
    pub relay: SocketAddr,
    /// Secret the relay checks tokens with.
    pub relay_secret: String,
    /// STUN server address.
    pub stun: SocketAddr,
    /// Run coturn here and advertise it as the TURN server (with REST-API credentials made
    /// from `relay_secret`).
    pub turn: Option<SocketAddr>,
    /// Advertise the NetBird relay (off: peers that cannot meet directly need TURN).
    pub advertise_relay: bool,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        TestbedConfig {
            mgmt_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: None,
            admin_token: "testbed-admin-token".into(),
            network: Ipv4Net::new(std::net::Ipv4Addr::new(100, 64, 0, 0), 16).unwrap_or_default(),
            dns_domain: "netbird.selfhosted".into(),
            netbird_config: pb::NetbirdConfig::default(),
            services: None,
        }
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A running testbed.
pub struct Testbed {
    shared: Arc<Shared>,
    mgmt_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    admin_token: String,
    mgmt: Option<Running>,
    admin: Option<Running>,
    /// The signal server, when started.
    pub signal: Option<signal_server::SignalServerHandle>,
    /// The relay server, when started.
    pub relay: Option<relay_server::RelayServerHandle>,
    /// The STUN server, when started.
    pub stun: Option<stun_server::StunServerHandle>,
    /// coturn, when `ServiceAddrs::turn` asked for it.
    pub turn: Option<coturn::Coturn>,
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, TestbedError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TestbedError::Bind { addr, source })
}

fn spawn_mgmt(shared: Arc<Shared>, listener: tokio::net::TcpListener) -> Running {
    let (stop, rx) = oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let svc =
        ManagementServiceServer::new(MgmtService::new(shared)).max_decoding_message_size(16 << 20);
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = result {
            tracing::warn!("testbed management server: {e}");
        }
    });
    Running { stop, task }
}

impl Testbed {
    /// Starts management (and the admin API when configured).
    pub async fn start(cfg: TestbedConfig) -> Result<Testbed, TestbedError> {
        let account = Account::new(cfg.network, &cfg.dns_domain);
        let mut netbird_config = cfg.netbird_config.clone();
        let mut signal = None;
        let mut relay = None;
        let mut stun = None;
        let mut turn = None;
        if let Some(svc) = &cfg.services {
            let bind_err = |addr: SocketAddr| move |source| TestbedError::Bind { addr, source };
            let s = signal_server::start(svc.signal)
                .await
                .map_err(bind_err(svc.signal))?;
            netbird_config.signal = Some(pb::HostConfig {
                uri: s.addr().to_string(),
                protocol: pb::host_config::Protocol::Http as i32,
            });
            let r = relay_server::start(svc.relay, &svc.relay_secret, None)
                .await
                .map_err(bind_err(svc.relay))?;
            // A long-lived token: the testbed does not rotate relay credentials.
            let (payload, signature) = relay_server::mint_relay_token(
                &svc.relay_secret,
                std::time::Duration::from_secs(30 * 86400),
            );
            netbird_config.relay = svc.advertise_relay.then(|| pb::RelayConfig {
                urls: vec![r.instance_url().to_string()],
                token_payload: payload,
                token_signature: signature,
            });
            if let Some(addr) = svc.turn {
                let c = coturn::Coturn::start(addr, &svc.relay_secret)
                    .map_err(|e| TestbedError::Service(e.to_string()))?;
                let (user, password) = c.credentials(std::time::Duration::from_secs(30 * 86400));
                netbird_config.turns = vec![pb::ProtectedHostConfig {
                    host_config: Some(pb::HostConfig {
                        uri: c.uri(),
                        protocol: pb::host_config::Protocol::Udp as i32,
                    }),
                    user,
                    password,
                }];
                turn = Some(c);
            }
            let st = stun_server::start(svc.stun)
                .await
                .map_err(bind_err(svc.stun))?;
            netbird_config.stuns = vec![pb::HostConfig {
                uri: format!("stun:{}", st.addr()),
                protocol: pb::host_config::Protocol::Udp as i32,
            }];
            signal = Some(s);
            relay = Some(r);
            stun = Some(st);
        }
        let shared = Arc::new(Shared::new(account, PrivateKey::generate(), netbird_config));
        let listener = bind(cfg.mgmt_addr).await?;
        let mgmt_addr = listener.local_addr().map_err(|source| TestbedError::Bind {
            addr: cfg.mgmt_addr,
            source,
        })?;
        let mgmt = spawn_mgmt(shared.clone(), listener);
        let mut tb = Testbed {
            shared,
            mgmt_addr,
            admin_addr: None,
            admin_token: cfg.admin_token.clone(),
            mgmt: Some(mgmt),
            admin: None,
            signal,
            relay,
            stun,
            turn,
        };
        if let Some(addr) = cfg.admin_addr {
            let listener = bind(addr).await?;
            tb.admin_addr = listener.local_addr().ok();
            tb.admin = Some(admin::spawn_http(tb.admin(), cfg.admin_token, listener));
        }
        Ok(tb)
    }

    /// `http://127.0.0.1:PORT` of management.
    pub fn management_url(&self) -> String {
        format!("http://{}", self.mgmt_addr)
    }

    /// Base URL of the admin API.
    pub fn admin_url(&self) -> Option<String> {
        self.admin_addr.map(|a| format!("http://{a}"))
    }

    /// The admin API token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// In-process admin handle.
    pub fn admin(&self) -> Admin {
        Admin::new(self.shared.clone())
    }

    /// Stops management: listener closed, every Sync stream ended (as a crash would).
    pub async fn stop(&mut self) {
        if let Some(mut r) = self.mgmt.take() {
            self.shared.close_all_streams();
            let _ = r.stop.send(());
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut r.task)
                .await
                .is_err()
            {
                r.task.abort();
            }
        }
    }

    /// Starts management again on the same port with the same state and server key.
    pub async fn restart(&mut self) -> Result<(), TestbedError> {
        self.stop().await;
        let mut last = None;
        for _ in 0..50 {
            match bind(self.mgmt_addr).await {
                Ok(l) => {
                    self.mgmt = Some(spawn_mgmt(self.shared.clone(), l));
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        Err(last.unwrap_or(TestbedError::Bind {
            addr: self.mgmt_addr,
            source: std::io::Error::other("bind failed"),
        }))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for r in [self.mgmt.take(), self.admin.take()].into_iter().flatten() {
            let _ = r.stop.send(());
            r.task.abort();
        }
    }
}
