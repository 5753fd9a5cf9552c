//! systemd readiness notification (`sd_notify`): a datagram to `$NOTIFY_SOCKET`, which may be
//! an abstract socket (leading `@`). Our own few lines instead of a crate: the protocol is one
//! datagram.

use std::os::unix::net::UnixDatagram;

fn send(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// Tells systemd the service is ready (after the socket is listening). No-op outside systemd.
pub fn notify_ready() {
    if let Err(e) = send("READY=1") {
        tracing::warn!("sd_notify READY: {e}");
    }
}

/// Tells systemd the service is stopping.
pub fn notify_stopping() {
    if let Err(e) = send("STOPPING=1") {
        tracing::debug!("sd_notify STOPPING: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        // Tests share the environment: set, send, and read within this test only.
        std::env::set_var("NOTIFY_SOCKET", &path);
        let sent = send("READY=1").unwrap();
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(sent);
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(!send("READY=1").unwrap(), "no socket, no send");
    }
}
