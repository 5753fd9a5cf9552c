//! Linux TUN device adapter.
//!
//! Opened directly with `open("/dev/net/tun")` + `ioctl(TUNSETIFF)` rather than through the `tun`
//! crate: we need a plain file descriptor that two threads read and write without a lock, our
//! own non-blocking/poll wake-up scheme, and room for `IFF_VNET_HDR` offloads; the crate's
//! abstractions (async wrappers, its own configuration of address/MTU) add nothing here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// `struct ifreq` with the flags member of the union (40 bytes on Linux).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Checks a Linux interface name: 1..=15 bytes, no `/`, whitespace, `:` or NUL.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// An open TUN interface (layer 3, no packet-information header).
pub struct Tun {
    fd: OwnedFd,
    name: String,
    vnet: bool,
}

impl Tun {
    /// Creates TUN interface `name` with offloads when the kernel has them: every packet then
    /// carries a `virtio_net_hdr` ([`Tun::vnet_hdr`]) and reads may return TSO packets (see
    /// [`super::offload`]). Falls back to a plain TUN device.
    pub fn create_with_offloads(name: &str) -> io::Result<Tun> {
        match Self::open(name, true) {
            Ok(t) => {
                let flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
                // SAFETY: TUNSETOFFLOAD takes an unsigned int argument by value.
                let rc = unsafe { libc::ioctl(t.fd.as_raw_fd(), TUNSETOFFLOAD as _, flags) };
                if rc == 0 {
                    return Ok(t);
                }
                tracing::debug!("TUN offloads unavailable: {}", io::Error::last_os_error());
                drop(t);
                Self::open(name, false)
            }
            Err(_) => Self::open(name, false),
        }
    }

    /// Creates (or attaches to) TUN interface `name` without offloads. The interface exists while
    /// the returned value (its file descriptor) lives.
    pub fn create(name: &str) -> io::Result<Tun> {
        Self::open(name, false)
    }

    fn open(name: &str, vnet: bool) -> io::Result<Tun> {
        if !valid_ifname(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let path = CString::new("/dev/net/tun").map_err(io::Error::other)?;
        // SAFETY: plain open(2) of a constant NUL-terminated path.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI | if vnet { IFF_VNET_HDR } else { 0 },
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let actual: Vec<u8> = req
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Ok(Tun {
            fd,
            name: String::from_utf8_lossy(&actual).into_owned(),
            vnet,
        })
    }

    /// True when every packet read or written carries a `virtio_net_hdr`.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet
    }

    /// Interface name as the kernel assigned it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Switches the descriptor to non-blocking mode (reads then return `WouldBlock`).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let rc =
            unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one IP packet.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one IP packet.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: `packet` is valid for reads of `packet.len()` bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one packet given in two parts (a virtio_net_hdr and the IP packet) with `writev`.
    pub fn write_vectored(&self, head: &[u8], packet: &[u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            },
        ];
        // SAFETY: both iovecs describe live, readable slices.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_ifname("wt0"));
        assert!(valid_ifname("wgb12345a"));
        assert!(valid_ifname("abcdefghijklmno"));
        assert!(!valid_ifname("abcdefghijklmnop"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("eth0:1"));
    }

    #[test]
    fn ifreq_is_40_bytes() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }
}
