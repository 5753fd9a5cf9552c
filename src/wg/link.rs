//! Interface address, MTU and link state, and creation/deletion of `wireguard` links, over
//! rtnetlink. Synchronous (one request, wait for the ACK) so it works inside and outside a tokio
//! runtime; the message types come from `netlink-packet-route`.

use super::WgError;
use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols, Socket, SocketAddr};
use std::fmt::Debug;

/// Serializes `msg` as a netlink request with `flags` (`NLM_F_REQUEST | NLM_F_ACK` added).
pub fn encode<I: NetlinkSerializable + Debug>(msg: I, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// Sends one request on a fresh socket of `protocol` and collects the answers until the ACK
/// (or `NLMSG_DONE`). A NACK becomes an error carrying the errno.
pub fn request<I>(protocol: isize, msg: I, flags: u16) -> Result<Vec<I>, WgError>
where
    I: NetlinkSerializable + NetlinkDeserializable + Debug,
{
    let mut sock = Socket::new(protocol)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let seq = 1;
    let buf = encode(msg, flags, seq);
    sock.send(&buf, 0)?;
    let mut answers = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full()?;
        let mut off = 0;
        while off < data.len() {
            let msg = NetlinkMessage::<I>::deserialize(&data[off..])
                .map_err(|e| WgError::Netlink(format!("malformed answer: {e}")))?;
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(WgError::Netlink("zero-length answer".into()));
            }
            off += (len + 3) & !3;
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(answers),
                        Some(code) => {
                            Err(WgError::Io(std::io::Error::from_raw_os_error(-code.get())))
                        }
                    }
                }
                NetlinkPayload::Done(_) => return Ok(answers),
                _ => {}
            }
        }
    }
}

fn route(msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, WgError> {
    request(protocols::NETLINK_ROUTE, msg, flags)
}

/// The interface index of `name`.
pub fn index(name: &str) -> Result<u32, WgError> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    for a in route(RouteNetlinkMessage::GetLink(m), 0)? {
        if let RouteNetlinkMessage::NewLink(l) = a {
            return Ok(l.header.index);
        }
    }
    Err(WgError::Netlink(format!("no interface {name}")))
}

/// The request that sets the MTU of link `index`.
pub fn mtu_message(index: u32, mtu: u32) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    RouteNetlinkMessage::SetLink(m)
}

/// The request that brings link `index` up or down.
pub fn up_message(index: u32, up: bool) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.change_mask = LinkFlags::Up;
    if up {
        m.header.flags = LinkFlags::Up;
    }
    RouteNetlinkMessage::SetLink(m)
}

/// The request that adds `addr` (host address + prefix length) to link `index`.
pub fn address_message(index: u32, addr: &IpNet) -> RouteNetlinkMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = addr.prefix_len();
    m.header.family = match addr {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    m.attributes.push(AddressAttribute::Local(addr.addr()));
    m.attributes.push(AddressAttribute::Address(addr.addr()));
    RouteNetlinkMessage::NewAddress(m)
}

/// The request that creates a `wireguard` link named `name`.
pub fn create_wireguard_message(name: &str) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Wireguard,
        )]));
    RouteNetlinkMessage::NewLink(m)
}

/// Sets the MTU of `name`.
pub fn set_mtu(name: &str, mtu: u16) -> Result<(), WgError> {
    route(mtu_message(index(name)?, u32::from(mtu)), 0).map(|_| ())
}

/// Brings `name` up or down.
pub fn set_up(name: &str, up: bool) -> Result<(), WgError> {
    route(up_message(index(name)?, up), 0).map(|_| ())
}

/// Adds `addr` to `name`; an address already present is not an error.
pub fn add_address(name: &str, addr: &IpNet) -> Result<(), WgError> {
    match route(
        address_message(index(name)?, addr),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Err(WgError::Io(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Creates a kernel `wireguard` link `name`.
pub fn create_wireguard(name: &str) -> Result<(), WgError> {
    route(create_wireguard_message(name), NLM_F_CREATE | NLM_F_EXCL).map(|_| ())
}

/// Deletes link `name`; a missing link is not an error.
pub fn delete(name: &str) -> Result<(), WgError> {
    let idx = match index(name) {
        Ok(i) => i,
        Err(_) => return Ok(()),
    };
    let mut m = LinkMessage::default();
    m.header.index = idx;
    route(RouteNetlinkMessage::DelLink(m), 0).map(|_| ())
}

/// Sets MTU, adds the addresses and brings `name` up: what the agent does to its interface.
pub fn configure(name: &str, addrs: &[IpNet], mtu: u16) -> Result<(), WgError> {
    set_mtu(name, mtu)?;
    for a in addrs {
        add_address(name, a)?;
    }
    set_up(name, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLM_F_REQUEST;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_ne_bytes([b[off], b[off + 1]])
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    #[test]
    fn mtu_request_bytes() {
        let b = encode(mtu_message(7, 1280), 0, 9);
        // nlmsghdr: len, type RTM_SETLINK (19), flags REQUEST|ACK, seq 9
        assert_eq!(u32_at(&b, 0) as usize, b.len());
        assert_eq!(u16_at(&b, 4), 19);
        assert_eq!(u16_at(&b, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&b, 8), 9);
        // ifinfomsg: index at offset 16 + 4
        assert_eq!(u32_at(&b, 20), 7);
        // IFLA_MTU (4) attribute with value 1280
        assert_eq!(u16_at(&b, 32), 8);
        assert_eq!(u16_at(&b, 34), 4);
        assert_eq!(u32_at(&b, 36), 1280);
    }

    #[test]
    fn up_request_sets_flag_and_mask() {
        let b = encode(up_message(3, true), 0, 1);
        assert_eq!(u32_at(&b, 24) & 1, 1, "flags IFF_UP");
        assert_eq!(u32_at(&b, 28) & 1, 1, "change mask IFF_UP");
        let b = encode(up_message(3, false), 0, 1);
        assert_eq!(u32_at(&b, 24) & 1, 0);
        assert_eq!(u32_at(&b, 28) & 1, 1);
    }

    #[test]
    fn address_request_bytes() {
        let b = encode(
            address_message(5, &"100.64.0.5/16".parse().unwrap()),
            NLM_F_CREATE | NLM_F_EXCL,
            1,
        );
        assert_eq!(u16_at(&b, 4), 20, "RTM_NEWADDR");
        assert_eq!(b[16], libc::AF_INET as u8);
        assert_eq!(b[17], 16, "prefix length");
        assert_eq!(u32_at(&b, 20), 5, "index");
        // IFA_LOCAL (2) then IFA_ADDRESS (1), 4-byte address each
        assert_eq!((u16_at(&b, 24), u16_at(&b, 26)), (8, 2));
        assert_eq!(&b[28..32], &[100, 64, 0, 5]);
        assert_eq!((u16_at(&b, 32), u16_at(&b, 34)), (8, 1));
    }

    #[test]
    fn wireguard_link_request_names_kind() {
        let b = encode(
            create_wireguard_message("wt0"),
            NLM_F_CREATE | NLM_F_EXCL,
            1,
        );
        assert_eq!(u16_at(&b, 4), 16, "RTM_NEWLINK");
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("wt0\0"));
        assert!(text.contains("wireguard"));
    }
}
