//! A real TURN server for the testbed: Debian's coturn (`turnserver`), run as a child process
//! with the REST-API shared secret NetBird's management uses, so the credentials we advertise
//! are the kind real deployments hand out.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The realm the testbed's coturn uses.
pub const REALM: &str = "netbird.testbed";

/// Errors starting coturn.
#[derive(Debug, thiserror::Error)]
pub enum CoturnError {
    /// `turnserver` is not installed.
    #[error("coturn is not installed (turnserver not found; apt-get install coturn)")]
    Missing,
    /// It started but never answered a STUN Binding request.
    #[error("coturn on {0} did not answer within 5 s")]
    NoAnswer(SocketAddr),
    /// Spawning or probing failed.
    #[error("coturn: {0}")]
    Io(#[from] std::io::Error),
}

/// A running coturn; killed and reaped on drop.
#[derive(Debug)]
pub struct Coturn {
    child: Child,
    addr: SocketAddr,
    secret: String,
}

impl Coturn {
    /// Starts `turnserver` on UDP `addr` (no TCP/TLS), relaying from the same IP, and waits
    /// until it answers. Peers anywhere are allowed (the lab's addresses are private).
    pub fn start(addr: SocketAddr, secret: &str) -> Result<Coturn, CoturnError> {
        let mut cmd = Command::new("turnserver");
        cmd.args([
            "-n",
            "--listening-ip",
            &addr.ip().to_string(),
            "--listening-port",
            &addr.port().to_string(),
            "--relay-ip",
            &addr.ip().to_string(),
            "--min-port",
            "49160",
            "--max-port",
            "49999",
            "--use-auth-secret",
            "--static-auth-secret",
            secret,
            "--realm",
            REALM,
            "--no-tcp",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--no-rfc5780",
            "--allow-loopback-peers",
            // As production TURN servers are configured: no relaying into private networks.
            // (Sending to an unroutable peer address fails, and coturn then tears down the
            // whole allocation.)
            "--denied-peer-ip",
            "10.0.0.0-10.255.255.255",
            "--denied-peer-ip",
            "172.16.0.0-172.31.255.255",
            "--denied-peer-ip",
            "192.168.0.0-192.168.255.255",
            "--no-software-attribute",
            "--simple-log",
        ])
        // coturn's own log, for debugging a lab: NB_TESTBED_COTURN_LOG=/path.
        .args(match std::env::var("NB_TESTBED_COTURN_LOG") {
            Ok(path) => vec!["--log-file".to_string(), path, "--verbose".to_string()],
            Err(_) => vec!["--log-file".to_string(), "stdout".to_string()],
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CoturnError::Missing),
            Err(e) => return Err(e.into()),
        };
        let mut c = Coturn {
            child,
            addr,
            secret: secret.to_string(),
        };
        c.wait_ready()?;
        Ok(c)
    }

    fn wait_ready(&mut self) -> Result<(), CoturnError> {
        let probe = UdpSocket::bind(SocketAddr::new(
            if self.addr.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            },
            0,
        ))?;
        probe.set_read_timeout(Some(Duration::from_millis(100)))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(CoturnError::Io(std::io::Error::other(format!(
                    "turnserver exited: {status}"
                ))));
            }
            let tid: [u8; 12] = rand::random();
            let _ = probe.send_to(&crate::ice::stun::binding_request(tid), self.addr);
            if let Ok((n, _)) = probe.recv_from(&mut buf) {
                if crate::ice::stun::parse_binding_response(&buf[..n]).is_some_and(|r| r.0 == tid) {
                    return Ok(());
                }
            }
        }
        Err(CoturnError::NoAnswer(self.addr))
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `turn:IP:PORT` for NetbirdConfig.
    pub fn uri(&self) -> String {
        format!("turn:{}?transport=udp", self.addr)
    }

    /// Credentials valid for `ttl`, as NetBird management makes them.
    pub fn credentials(&self, ttl: Duration) -> (String, String) {
        crate::ice::turn::time_based_credentials(&self.secret, ttl, SystemTime::now())
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
