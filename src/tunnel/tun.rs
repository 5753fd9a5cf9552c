//! A TUN device opened through /dev/net/tun (IFF_TUN | IFF_NO_PI). Our own few lines of ioctl
//! rather than a crate: we need a blocking fd with poll-based timeouts on dedicated threads,
//! nothing more. The interface disappears when the fd is closed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN device.
pub struct Tun {
    file: File,
}

impl Tun {
    /// Creates (or attaches to) TUN interface `name`.
    pub fn create(name: &str) -> std::io::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "invalid interface name",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads an ifreq of this layout from a valid pointer.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tun { file })
    }

    /// Reads one packet, waiting at most `timeout_ms`; `Ok(None)` on timeout.
    pub fn read_timeout(&self, buf: &mut [u8], timeout_ms: i32) -> std::io::Result<Option<usize>> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if rc == 0 {
            return Ok(None);
        }
        (&self.file).read(buf).map(Some)
    }

    /// Writes one packet.
    pub fn write(&self, packet: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(packet)
    }
}
