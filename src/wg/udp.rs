//! The shared WireGuard UDP socket: dual-stack when possible, large buffers, and batched IO
//! through UDP GSO (one `sendmsg` carries many equal-sized datagrams) and UDP GRO (one
//! `recvmsg` returns many coalesced datagrams). Both fall back to one datagram per call when the
//! kernel refuses them.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Most segments the kernel accepts in one GSO send (`UDP_MAX_SEGMENTS` on older kernels).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Most payload bytes of one GSO send (a UDP length limit).
pub const MAX_GSO_BYTES: usize = 65_000;

/// The UDP socket with the port it is bound to.
pub struct Socket {
    sock: UdpSocket,
    v6: bool,
    /// The bound port.
    pub port: u16,
    /// Incremented on each rebind; a receive thread exits when its socket is no longer current.
    pub generation: u64,
    gso: AtomicBool,
    gro: bool,
}

/// Turns a v4-mapped IPv6 source into the IPv4 address it stands for.
pub fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

fn setsockopt_int(fd: i32, level: libc::c_int, opt: libc::c_int, val: libc::c_int) -> bool {
    // SAFETY: setsockopt with a valid int option value on an open socket.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Converts a kernel-filled socket address to std's type (IPv4/IPv6 only).
fn sockaddr_to_std(st: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(st.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is large and
            // aligned enough for any socket address.
            let a = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

impl Socket {
    /// Binds `[::]:port` (dual-stack) or, without IPv6, `0.0.0.0:port`; sets buffers (forced past
    /// the sysctl limits when privileged), the firewall mark and a read timeout.
    pub fn bind(
        port: u16,
        fwmark: u32,
        buf: usize,
        generation: u64,
        read_timeout: Duration,
    ) -> io::Result<Socket> {
        use socket2::{Domain, Protocol, Socket as S2, Type};
        let bind_v4 = || -> io::Result<(S2, bool)> {
            let s = S2::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            Ok((s, false))
        };
        let (sock, v6) = match S2::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
            Ok(s) => {
                s.set_only_v6(false)?;
                match s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into()) {
                    Ok(()) => (s, true),
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
                    Err(_) => bind_v4()?,
                }
            }
            Err(_) => bind_v4()?,
        };
        let fd = sock.as_raw_fd();
        let size = buf.min(i32::MAX as usize) as libc::c_int;
        if !setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size) {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size);
        }
        if !setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size) {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size);
        }
        if fwmark != 0 {
            sock.set_mark(fwmark)?;
        }
        sock.set_read_timeout(Some(read_timeout))?;
        let gro = setsockopt_int(fd, libc::SOL_UDP, UDP_GRO, 1);
        let sock: UdpSocket = sock.into();
        let port = sock.local_addr()?.port();
        Ok(Socket {
            sock,
            v6,
            port,
            generation,
            gso: AtomicBool::new(true),
            gro,
        })
    }

    /// Wakes a thread blocked in [`Socket::recv`] (it then sees an error or zero bytes).
    pub fn wake(&self) {
        // SAFETY: shutdown(2) on a socket we own; harmless if it fails.
        unsafe {
            libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RD);
        }
    }

    /// Sets the firewall mark.
    pub fn set_mark(&self, mark: u32) -> io::Result<()> {
        socket2::SockRef::from(&self.sock).set_mark(mark)
    }

    fn dest(&self, to: SocketAddr) -> io::Result<SocketAddr> {
        match (to, self.v6) {
            (SocketAddr::V4(a), true) => Ok(SocketAddr::V6(SocketAddrV6::new(
                a.ip().to_ipv6_mapped(),
                a.port(),
                0,
                0,
            ))),
            (SocketAddr::V6(_), false) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "IPv6 destination on an IPv4-only socket",
            )),
            _ => Ok(to),
        }
    }

    /// Sends one datagram.
    pub fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.sock.send_to(data, self.dest(to)?)
    }

    /// Sends `buf` as datagrams of `seg` bytes (the last may be shorter) to `to`, with one GSO
    /// call when the kernel supports it.
    pub fn send_segments(&self, buf: &[u8], seg: usize, to: SocketAddr) -> io::Result<()> {
        if seg == 0 || buf.len() <= seg {
            return self.send_to(buf, to).map(|_| ());
        }
        if self.gso.load(Ordering::Relaxed) {
            match self.send_gso(buf, seg, to) {
                Ok(()) => return Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                    ) =>
                {
                    tracing::debug!("UDP GSO unavailable ({e}); sending datagrams one by one");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        for d in buf.chunks(seg) {
            self.send_to(d, to)?;
        }
        Ok(())
    }

    fn send_gso(&self, buf: &[u8], seg: usize, to: SocketAddr) -> io::Result<()> {
        let addr = socket2::SockAddr::from(self.dest(to)?);
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // u64 storage keeps the control buffer aligned for cmsghdr.
        let mut control = [0u64; 4];
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        // SAFETY: a zeroed msghdr is a valid empty header; every pointer set below outlives the
        // sendmsg call, and the control buffer (32 bytes) is larger than `space` (24 bytes).
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = addr.as_ptr() as *mut libc::c_void;
            msg.msg_namelen = addr.len();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg as u16);
            if libc::sendmsg(self.sock.as_raw_fd(), &msg, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Receives into `buf`: returns `(bytes, segment size, source)`. With GRO the bytes may hold
    /// several datagrams of `segment size` each (the last may be shorter); otherwise the segment
    /// size equals the byte count.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, usize, SocketAddr)> {
        if !self.gro {
            let (n, from) = self.sock.recv_from(buf)?;
            return Ok((n, n, unmap(from)));
        }
        let mut storage: MaybeUninit<libc::sockaddr_storage> = MaybeUninit::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: a zeroed msghdr is valid; all pointers outlive the call; the kernel writes at
        // most msg_namelen / msg_controllen bytes into the buffers given.
        let (n, seg, namelen) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = storage.as_mut_ptr().cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(self.sock.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            let mut seg = n;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    if v > 0 {
                        seg = v as usize;
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            (n, seg, msg.msg_namelen)
        };
        // SAFETY: zero-initialised storage the kernel filled `namelen` bytes of.
        let storage = unsafe { storage.assume_init() };
        let from = sockaddr_to_std(&storage, namelen)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "non-IP source"))?;
        Ok((n, seg.max(1), unmap(from)))
    }
}
