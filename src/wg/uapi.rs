//! WireGuard cross-platform userspace configuration protocol ("UAPI"), as spoken by `wg` over
//! `/var/run/wireguard/<ifname>.sock`: `get=1` / `set=1` requests of `key=value` lines ended by
//! a blank line, keys in hex, answers ended by `errno=N` and a blank line.
//!
//! The text side (parse a `set`, format a `get`) is pure; [`UapiServer`] is the thin socket
//! adapter that serves any [`WgDevice`].

use super::{
    DeviceState, DeviceUpdate, PeerUpdate, PresharedKey, PrivateKeyBytes, WgDevice, WgError,
};
use crate::crypto::PublicKey;
use ipnet::IpNet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Directory of the UAPI sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// `errno` for an invalid request (EINVAL).
pub const ERRNO_INVALID: i32 = 22;
/// `errno` for a protocol error (EPROTO).
pub const ERRNO_PROTOCOL: i32 = 71;
/// `errno` for a failed operation on the device (EIO).
pub const ERRNO_IO: i32 = 5;
/// `errno` when the listen port is taken (EADDRINUSE).
pub const ERRNO_ADDR_IN_USE: i32 = 98;

/// Most bytes one request may carry (a 10,000-peer `set` is well below this).
const MAX_REQUEST_BYTES: usize = 32 << 20;

/// A `set` request that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid UAPI set request, line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number within the request body.
    pub line: usize,
    /// What was wrong (never contains key material).
    pub reason: String,
}

fn parse_key(v: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(v, &mut out).ok()?;
    Some(out)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Parses the body lines of a `set=1` request (without the `set=1` line and the blank line).
/// Nothing is applied unless the whole request parses.
pub fn parse_set<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<DeviceUpdate, ParseError> {
    let mut up = DeviceUpdate::default();
    let mut peer: Option<PeerUpdate> = None;
    for (i, line) in lines.into_iter().enumerate() {
        let err = |reason: &str| ParseError {
            line: i + 1,
            reason: reason.to_string(),
        };
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| err("line without '='"))?;
        match (k, peer.as_mut()) {
            ("public_key", _) => {
                let key = parse_key(v).ok_or_else(|| err("bad public_key"))?;
                if let Some(p) = peer.take() {
                    up.peers.push(p);
                }
                peer = Some(PeerUpdate::new(PublicKey(key)));
            }
            ("private_key", None) => {
                up.private_key = Some(PrivateKeyBytes(
                    parse_key(v).ok_or_else(|| err("bad private_key"))?,
                ));
            }
            ("listen_port", None) => {
                up.listen_port = Some(v.parse().map_err(|_| err("bad listen_port"))?);
            }
            ("fwmark", None) => {
                up.fwmark = Some(if v.is_empty() {
                    0
                } else {
                    v.parse().map_err(|_| err("bad fwmark"))?
                });
            }
            ("replace_peers", None) => {
                up.replace_peers = parse_bool(v).ok_or_else(|| err("bad replace_peers"))?;
            }
            ("remove", Some(p)) => p.remove = parse_bool(v).ok_or_else(|| err("bad remove"))?,
            ("update_only", Some(p)) => {
                p.update_only = parse_bool(v).ok_or_else(|| err("bad update_only"))?
            }
            ("preshared_key", Some(p)) => {
                p.preshared_key = Some(PresharedKey(
                    parse_key(v).ok_or_else(|| err("bad preshared_key"))?,
                ))
            }
            ("endpoint", Some(p)) => {
                p.endpoint = Some(v.parse::<SocketAddr>().map_err(|_| err("bad endpoint"))?)
            }
            ("persistent_keepalive_interval", Some(p)) => {
                p.persistent_keepalive = Some(
                    v.parse()
                        .map_err(|_| err("bad persistent_keepalive_interval"))?,
                )
            }
            ("replace_allowed_ips", Some(p)) => {
                p.replace_allowed_ips =
                    parse_bool(v).ok_or_else(|| err("bad replace_allowed_ips"))?
            }
            ("allowed_ip", Some(p)) => {
                let net: IpNet = v.parse().map_err(|_| err("bad allowed_ip"))?;
                p.allowed_ips.push(net.trunc());
            }
            ("protocol_version", Some(_)) => {
                if v != "1" {
                    return Err(err("unsupported protocol_version"));
                }
            }
            _ => return Err(err("unknown or misplaced key")),
        }
    }
    if let Some(p) = peer.take() {
        up.peers.push(p);
    }
    Ok(up)
}

/// Formats the body of a `get=1` answer (ending with `errno=0` and the blank line).
pub fn format_get(st: &DeviceState) -> String {
    let mut s = String::with_capacity(256 + st.peers.len() * 256);
    // Writing to a String cannot fail.
    if let Some(k) = &st.private_key {
        let _ = writeln!(s, "private_key={}", hex::encode(k.0));
    }
    let _ = writeln!(s, "listen_port={}", st.listen_port);
    if st.fwmark != 0 {
        let _ = writeln!(s, "fwmark={}", st.fwmark);
    }
    for p in &st.peers {
        let _ = writeln!(s, "public_key={}", hex::encode(p.public_key.0));
        if let Some(psk) = &p.preshared_key {
            if psk.0 != [0; 32] {
                let _ = writeln!(s, "preshared_key={}", hex::encode(psk.0));
            }
        }
        let _ = writeln!(s, "protocol_version=1");
        if let Some(ep) = p.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        let (sec, nsec) = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| (d.as_secs(), d.subsec_nanos()))
            .unwrap_or((0, 0));
        let _ = writeln!(s, "last_handshake_time_sec={sec}");
        let _ = writeln!(s, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(s, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            s,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive
        );
        for net in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={net}");
        }
    }
    s.push_str("errno=0\n\n");
    s
}

/// Maps a device error to the errno reported over UAPI.
pub fn errno_for(e: &WgError) -> i32 {
    match e {
        WgError::Invalid(_) => ERRNO_INVALID,
        WgError::Io(io) if io.kind() == std::io::ErrorKind::AddrInUse => ERRNO_ADDR_IN_USE,
        _ => ERRNO_IO,
    }
}

/// Serves one connection: any number of requests until EOF or a protocol error.
pub fn serve_connection<S: std::io::Read + Write>(
    stream: S,
    dev: &dyn WgDevice,
) -> std::io::Result<()> {
    let mut rd = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let op = line.trim_end_matches('\n').to_string();
        let mut body = Vec::new();
        let mut total = 0usize;
        loop {
            line.clear();
            let n = rd.read_line(&mut line)?;
            total += n;
            if n == 0 || total > MAX_REQUEST_BYTES {
                // EOF or oversized before the blank line: incomplete request, nothing applied.
                let _ = write!(rd.get_mut(), "errno={ERRNO_PROTOCOL}\n\n");
                return Ok(());
            }
            let l = line.trim_end_matches('\n');
            if l.is_empty() {
                break;
            }
            body.push(l.to_string());
        }
        let answer = match op.as_str() {
            "get=1" if body.is_empty() => match dev.state() {
                Ok(st) => format_get(&st),
                Err(e) => format!("errno={}\n\n", errno_for(&e)),
            },
            "set=1" => match parse_set(body.iter().map(String::as_str)) {
                Ok(up) => match dev.apply(&up) {
                    Ok(()) => "errno=0\n\n".to_string(),
                    Err(e) => {
                        tracing::warn!("UAPI set on {} failed: {e}", dev.name());
                        format!("errno={}\n\n", errno_for(&e))
                    }
                },
                Err(e) => {
                    tracing::warn!("UAPI: {e}");
                    format!("errno={ERRNO_INVALID}\n\n")
                }
            },
            _ => {
                let _ = write!(rd.get_mut(), "errno={ERRNO_PROTOCOL}\n\n");
                return Ok(());
            }
        };
        rd.get_mut().write_all(answer.as_bytes())?;
        rd.get_mut().flush()?;
    }
}

/// Path of the UAPI socket for `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// Serves the UAPI socket of one device on a background thread; removes the socket on drop.
pub struct UapiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UapiServer {
    /// Binds `/var/run/wireguard/<ifname>.sock` (directory 0755, socket 0600) and serves `dev`.
    /// Fails if another live process already serves that name.
    pub fn start(dev: Arc<dyn WgDevice>) -> Result<Self, WgError> {
        Self::start_at(socket_path(dev.name()), dev)
    }

    /// Like [`UapiServer::start`] at an explicit path (tests).
    pub fn start_at(path: PathBuf, dev: Arc<dyn WgDevice>) -> Result<Self, WgError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(WgError::Invalid(format!(
                    "{} is served by another process",
                    path.display()
                )));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wg-uapi".into())
            .spawn(move || accept_loop(listener, dev, stop2))?;
        Ok(UapiServer {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn accept_loop(listener: UnixListener, dev: Arc<dyn WgDevice>, stop: Arc<AtomicBool>) {
    // Blocking accept (no idle wake-ups); `Drop` wakes it with a connection of its own.
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok(_) if stop.load(Ordering::Relaxed) => return,
            Ok((stream, _)) => {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                // Requests are short; serving inline keeps them ordered and the thread count low.
                if let Err(e) = serve_connection(stream, dev.as_ref()) {
                    tracing::debug!("UAPI connection: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("UAPI accept: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // Wake the blocking accept; if the socket file is gone the thread cannot be woken
            // and is left to end with the process.
            if UnixStream::connect(&self.path).is_ok() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wg::{DeviceKind, PeerState};
    use std::sync::Mutex;

    const K1: &str = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
    const K2: &str = "58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376";

    #[test]
    fn parses_wg_set_request() {
        let body = format!(
            "private_key={K1}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\
             public_key={K2}\npreshared_key={K1}\nendpoint=[fd00::1]:51820\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
             allowed_ip=100.64.0.7/32\nallowed_ip=10.1.2.3/16\nprotocol_version=1\n\
             public_key={K1}\nremove=true"
        );
        let up = parse_set(body.lines()).unwrap();
        assert_eq!(up.private_key.unwrap().0.to_vec(), hex::decode(K1).unwrap());
        assert_eq!(up.listen_port, Some(51820));
        assert_eq!(up.fwmark, Some(0));
        assert!(up.replace_peers);
        assert_eq!(up.peers.len(), 2);
        let p = &up.peers[0];
        assert_eq!(p.public_key.0.to_vec(), hex::decode(K2).unwrap());
        assert_eq!(p.endpoint, Some("[fd00::1]:51820".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.replace_allowed_ips);
        assert_eq!(
            p.allowed_ips,
            vec![
                "100.64.0.7/32".parse::<IpNet>().unwrap(),
                "10.1.0.0/16".parse().unwrap()
            ]
        );
        assert!(up.peers[1].remove);
    }

    #[test]
    fn rejects_bad_lines_without_leaking_keys() {
        for bad in [
            "private_key=zz".to_string(),
            "listen_port=70000".to_string(),
            format!("public_key={K2}\nallowed_ip=1.2.3.4/33"),
            format!("public_key={K2}\nendpoint=nohost"),
            format!("public_key={K2}\nprotocol_version=2"),
            "allowed_ip=1.2.3.4/32".to_string(),
            "bogus=1".to_string(),
            "noequals".to_string(),
            format!("public_key={}", &K2[..62]),
        ] {
            let e = parse_set(bad.lines()).unwrap_err();
            assert!(!e.to_string().contains(K2), "{e}");
        }
    }

    fn sample_state() -> DeviceState {
        DeviceState {
            private_key: Some(PrivateKeyBytes([1; 32])),
            listen_port: 51820,
            fwmark: 7,
            peers: vec![PeerState {
                public_key: PublicKey([2; 32]),
                preshared_key: None,
                endpoint: Some("198.18.0.2:51820".parse().unwrap()),
                last_handshake: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
                rx_bytes: 10,
                tx_bytes: 20,
                persistent_keepalive: 25,
                allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
            }],
        }
    }

    #[test]
    fn formats_get_answer() {
        let s = format_get(&sample_state());
        let expected = format!(
            "private_key={}\nlisten_port=51820\nfwmark=7\npublic_key={}\nprotocol_version=1\n\
             endpoint=198.18.0.2:51820\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=5\ntx_bytes=20\nrx_bytes=10\n\
             persistent_keepalive_interval=25\nallowed_ip=100.64.0.2/32\nerrno=0\n\n",
            "01".repeat(32),
            "02".repeat(32)
        );
        assert_eq!(s, expected);
    }

    struct FakeDev {
        applied: Mutex<Vec<DeviceUpdate>>,
    }
    impl WgDevice for FakeDev {
        fn name(&self) -> &str {
            "fake0"
        }
        fn kind(&self) -> DeviceKind {
            DeviceKind::Userspace
        }
        fn apply(&self, u: &DeviceUpdate) -> Result<(), WgError> {
            if u.listen_port == Some(1) {
                return Err(WgError::Invalid("no".into()));
            }
            self.applied.lock().unwrap().push(u.clone());
            Ok(())
        }
        fn state(&self) -> Result<DeviceState, WgError> {
            Ok(sample_state())
        }
        fn close(&self) -> Result<(), WgError> {
            Ok(())
        }
    }

    /// An in-memory duplex stream: reads from `input`, collects writes.
    struct Duplex {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl std::io::Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(b)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run(dev: &FakeDev, req: &str) -> String {
        let mut d = Duplex {
            input: std::io::Cursor::new(req.as_bytes().to_vec()),
            output: Vec::new(),
        };
        serve_connection(&mut d, dev).unwrap();
        String::from_utf8(d.output).unwrap()
    }

    #[test]
    fn serves_get_and_set() {
        let dev = FakeDev {
            applied: Mutex::new(vec![]),
        };
        let out = run(&dev, "get=1\n\n");
        assert!(out.starts_with("private_key="));
        assert!(out.ends_with("errno=0\n\n"));
        let out = run(
            &dev,
            &format!("set=1\npublic_key={K2}\nallowed_ip=10.0.0.1/32\n\nget=1\n\n"),
        );
        assert!(out.starts_with("errno=0\n\nprivate_key="), "{out}");
        assert_eq!(dev.applied.lock().unwrap().len(), 1);
        // a bad request changes nothing and reports EINVAL
        let out = run(&dev, "set=1\nlisten_port=x\n\n");
        assert_eq!(out, "errno=22\n\n");
        let out = run(&dev, "set=1\nlisten_port=1\n\n");
        assert_eq!(out, "errno=22\n\n");
        assert_eq!(dev.applied.lock().unwrap().len(), 1);
        // unknown operation and truncated request
        assert_eq!(run(&dev, "frob=1\n\n"), "errno=71\n\n");
        assert_eq!(run(&dev, "set=1\nlisten_port=5"), "errno=71\n\n");
    }
}
