//! Serves the WireGuard userspace API on `/var/run/wireguard/<if>.sock` for a device, so `wg
//! show` and `wg set` work on it (standalone mode and the agent's own interface).

use super::{uapi, UserspaceTunnel};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default directory of UAPI sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// A running UAPI server; dropping it stops it and removes the socket.
pub struct UapiServer {
    path: PathBuf,
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UapiServer {
    /// Listens on `<dir>/<ifname>.sock` for `device`.
    pub fn start(dir: &Path, device: Arc<UserspaceTunnel>) -> std::io::Result<UapiServer> {
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let path = dir.join(format!("{}.sock", device.name()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let running = Arc::new(AtomicBool::new(true));
        let r = running.clone();
        let thread = std::thread::Builder::new()
            .name("wg-uapi".into())
            .spawn(move || {
                while r.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = serve(stream, &device) {
                                tracing::debug!("uapi client: {e}");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Err(e) => {
                            tracing::warn!("uapi accept: {e}");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })?;
        Ok(UapiServer {
            path,
            running,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, device: &UserspaceTunnel) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut op = String::new();
        if reader.read_line(&mut op)? == 0 {
            return Ok(());
        }
        match op.trim_end() {
            "get=1" => {
                let mut blank = String::new();
                reader.read_line(&mut blank)?;
                writer.write_all(device.uapi_get().as_bytes())?;
            }
            "set=1" => {
                let mut lines = Vec::new();
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l)? == 0 {
                        break;
                    }
                    let l = l.trim_end().to_string();
                    if l.is_empty() {
                        break;
                    }
                    lines.push(l);
                }
                let errno = match uapi::parse_set(lines.iter().map(String::as_str)) {
                    Ok(req) => match device.uapi_set(req) {
                        Ok(()) => 0,
                        Err(e) => {
                            tracing::warn!("uapi set: {e}");
                            -5
                        }
                    },
                    Err(e) => {
                        tracing::debug!("uapi set: {e}");
                        -22
                    }
                };
                writer.write_all(format!("errno={errno}\n\n").as_bytes())?;
            }
            "" => {}
            _ => {
                writer.write_all(b"errno=-22\n\n")?;
                return Ok(());
            }
        }
    }
}
