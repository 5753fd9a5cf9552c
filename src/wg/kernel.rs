//! Kernel WireGuard: a `wireguard` link created over rtnetlink and configured over generic
//! netlink (family `wireguard`, `WG_CMD_SET_DEVICE` / `WG_CMD_GET_DEVICE`), with the message
//! types of `netlink-packet-wireguard`.
//!
//! Building the messages is pure ([`set_device_messages`], [`state_from_messages`]) and
//! unit-tested by serializing them; the development machine has no WireGuard kernel module, so
//! the adapter itself ([`KernelDevice`]) is only exercised where the module exists.

use super::link;
use super::{
    DeviceKind, DeviceState, DeviceUpdate, PeerState, PeerUpdate, PresharedKey, PrivateKeyBytes,
    WgDevice, WgError,
};
use crate::crypto::PublicKey;
use ipnet::IpNet;
use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};
use netlink_sys::protocols::NETLINK_GENERIC;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

/// Soft limit on the attribute bytes of one `SET_DEVICE` message; the kernel reads requests into
/// a page-sized buffer, so `wg` splits large configurations the same way.
const MAX_MESSAGE_BYTES: usize = 3_500;

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = match net {
        IpNet::V4(_) => WireguardAddressFamily::Ipv4,
        IpNet::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

fn peer_attrs(u: &PeerUpdate) -> Vec<WireguardPeerAttribute> {
    let mut flags = WireguardPeerFlags::empty();
    if u.remove {
        flags |= WireguardPeerFlags::RemoveMe;
    }
    if u.update_only {
        flags |= WireguardPeerFlags::UpdateOnly;
    }
    if u.replace_allowed_ips && !u.remove {
        flags |= WireguardPeerFlags::ReplaceAllowedIps;
    }
    let mut a = vec![WireguardPeerAttribute::PublicKey(u.public_key.0)];
    if !flags.is_empty() {
        a.push(WireguardPeerAttribute::Flags(flags));
    }
    if u.remove {
        return a;
    }
    if let Some(k) = u.preshared_key {
        a.push(WireguardPeerAttribute::PresharedKey(k.0));
    }
    if let Some(ep) = u.endpoint {
        a.push(WireguardPeerAttribute::Endpoint(ep));
    }
    if let Some(ka) = u.persistent_keepalive {
        a.push(WireguardPeerAttribute::PersistentKeepalive(ka));
    }
    a
}

fn message(ifname: &str, attrs: Vec<WireguardAttribute>) -> WireguardMessage {
    let mut attributes = vec![WireguardAttribute::IfName(ifname.to_string())];
    attributes.extend(attrs);
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes,
    }
}

fn size(a: &WireguardPeer) -> usize {
    use netlink_packet_core::Emitable;
    std::slice::from_ref(a).buffer_len()
}

/// Builds the `WG_CMD_SET_DEVICE` messages for `u` on `ifname`. Interface fields go in the first
/// message; peers are split across messages, and a peer with many allowed IPs is continued in
/// later messages (without the replace flag, so the IPs add up), as `wg` does.
pub fn set_device_messages(ifname: &str, u: &DeviceUpdate) -> Vec<WireguardMessage> {
    let mut first = Vec::new();
    if let Some(k) = u.private_key {
        first.push(WireguardAttribute::PrivateKey(k.0));
    }
    if let Some(p) = u.listen_port {
        first.push(WireguardAttribute::ListenPort(p));
    }
    if let Some(m) = u.fwmark {
        first.push(WireguardAttribute::Fwmark(m));
    }
    if u.replace_peers {
        first.push(WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers,
        ));
    }
    let mut out = Vec::new();
    let mut current: Vec<WireguardPeer> = Vec::new();
    let mut current_bytes = 0usize;
    let flush = |out: &mut Vec<WireguardMessage>,
                 first: &mut Vec<WireguardAttribute>,
                 current: &mut Vec<WireguardPeer>,
                 bytes: &mut usize| {
        let mut attrs = std::mem::take(first);
        if !current.is_empty() {
            attrs.push(WireguardAttribute::Peers(std::mem::take(current)));
        }
        out.push(message(ifname, attrs));
        *bytes = 0;
    };
    for p in &u.peers {
        let mut attrs = peer_attrs(p);
        let mut ips: Vec<WireguardAllowedIp> = Vec::new();
        let mut continued = false;
        let base = size(&WireguardPeer(attrs.clone()));
        let mut chunk_bytes = base;
        let ip_list: &[IpNet] = if p.remove { &[] } else { &p.allowed_ips };
        for net in ip_list {
            let ip = allowed_ip(net);
            let ip_bytes = {
                use netlink_packet_core::Emitable;
                std::slice::from_ref(&ip).buffer_len()
            };
            if current_bytes + chunk_bytes + ip_bytes + 8 > MAX_MESSAGE_BYTES {
                // Close this peer's chunk and the message; continue the peer in the next one.
                if !ips.is_empty() {
                    let mut a = attrs.clone();
                    a.push(WireguardPeerAttribute::AllowedIps(std::mem::take(&mut ips)));
                    current.push(WireguardPeer(a));
                }
                flush(&mut out, &mut first, &mut current, &mut current_bytes);
                if !continued {
                    // Later chunks only add IPs to the (now existing) peer.
                    attrs = vec![
                        WireguardPeerAttribute::PublicKey(p.public_key.0),
                        WireguardPeerAttribute::Flags(WireguardPeerFlags::UpdateOnly),
                    ];
                    continued = true;
                }
                chunk_bytes = size(&WireguardPeer(attrs.clone()));
            }
            chunk_bytes += ip_bytes;
            ips.push(ip);
        }
        if current_bytes + chunk_bytes > MAX_MESSAGE_BYTES && !current.is_empty() {
            flush(&mut out, &mut first, &mut current, &mut current_bytes);
        }
        if !ips.is_empty() {
            attrs.push(WireguardPeerAttribute::AllowedIps(ips));
        }
        let peer = WireguardPeer(attrs);
        current_bytes += size(&peer);
        current.push(peer);
    }
    if !current.is_empty() || !first.is_empty() || out.is_empty() {
        flush(&mut out, &mut first, &mut current, &mut current_bytes);
    }
    out
}

/// Builds the `WG_CMD_GET_DEVICE` request for `ifname` (sent as a dump).
pub fn get_device_message(ifname: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(ifname.to_string())],
    }
}

/// Folds `WG_CMD_GET_DEVICE` answers (a peer may continue across messages) into a state.
pub fn state_from_messages(msgs: &[WireguardMessage]) -> DeviceState {
    let mut st = DeviceState {
        private_key: None,
        listen_port: 0,
        fwmark: 0,
        peers: Vec::new(),
    };
    for m in msgs {
        for a in &m.attributes {
            match a {
                WireguardAttribute::PrivateKey(k) if *k != [0; 32] => {
                    st.private_key = Some(PrivateKeyBytes(*k))
                }
                WireguardAttribute::ListenPort(p) => st.listen_port = *p,
                WireguardAttribute::Fwmark(f) => st.fwmark = *f,
                WireguardAttribute::Peers(peers) => {
                    for p in peers {
                        merge_peer(&mut st.peers, p);
                    }
                }
                _ => {}
            }
        }
    }
    st.peers.sort_by_key(|p| p.public_key);
    st
}

fn merge_peer(peers: &mut Vec<PeerState>, p: &WireguardPeer) {
    let Some(key) = p.0.iter().find_map(|a| match a {
        WireguardPeerAttribute::PublicKey(k) => Some(PublicKey(*k)),
        _ => None,
    }) else {
        return;
    };
    let idx = match peers.iter().position(|x| x.public_key == key) {
        Some(i) => i,
        None => {
            peers.push(PeerState {
                public_key: key,
                preshared_key: None,
                endpoint: None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                persistent_keepalive: 0,
                allowed_ips: Vec::new(),
            });
            peers.len() - 1
        }
    };
    let st = &mut peers[idx];
    for a in &p.0 {
        match a {
            WireguardPeerAttribute::PresharedKey(k) if *k != [0; 32] => {
                st.preshared_key = Some(PresharedKey(*k))
            }
            WireguardPeerAttribute::Endpoint(e) => st.endpoint = Some(*e),
            WireguardPeerAttribute::PersistentKeepalive(k) => st.persistent_keepalive = *k,
            WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 || t.nano_seconds > 0 => {
                st.last_handshake = Some(
                    UNIX_EPOCH
                        + Duration::new(
                            t.seconds.max(0) as u64,
                            t.nano_seconds.clamp(0, 999_999_999) as u32,
                        ),
                )
            }
            WireguardPeerAttribute::RxBytes(b) => st.rx_bytes = *b,
            WireguardPeerAttribute::TxBytes(b) => st.tx_bytes = *b,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    let addr = ip.0.iter().find_map(|x| match x {
                        WireguardAllowedIpAttr::IpAddr(a) => Some(*a),
                        _ => None,
                    });
                    let cidr = ip.0.iter().find_map(|x| match x {
                        WireguardAllowedIpAttr::Cidr(c) => Some(*c),
                        _ => None,
                    });
                    if let (Some(a), Some(c)) = (addr, cidr) {
                        if let Ok(net) = IpNet::new(a, c) {
                            st.allowed_ips.push(net);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Resolves the generic-netlink family id of `wireguard`.
fn family_id() -> Result<u16, WgError> {
    let req = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".to_string())],
    });
    for m in link::request(NETLINK_GENERIC, req, 0)? {
        for a in &m.payload.nlas {
            if let GenlCtrlAttrs::FamilyId(id) = a {
                return Ok(*id);
            }
        }
    }
    Err(WgError::KernelUnavailable(
        "no generic netlink family 'wireguard'".into(),
    ))
}

fn send(family: u16, msg: WireguardMessage, flags: u16) -> Result<Vec<WireguardMessage>, WgError> {
    let mut g = GenlMessage::from_payload(msg);
    g.set_resolved_family_id(family);
    Ok(link::request(NETLINK_GENERIC, g, flags)?
        .into_iter()
        .map(|m| m.payload)
        .collect())
}

/// A kernel WireGuard interface.
pub struct KernelDevice {
    name: String,
    family: u16,
    closed: AtomicBool,
}

impl KernelDevice {
    /// Creates the `wireguard` link `name` (an existing link of that name is deleted first, as
    /// upstream does). Fails with [`WgError::KernelUnavailable`] when the host lacks the module.
    pub fn create(name: &str) -> Result<Self, WgError> {
        let _ = link::delete(name);
        link::create_wireguard(name).map_err(|e| match e {
            WgError::Io(io)
                if matches!(
                    io.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EAFNOSUPPORT) | Some(libc::EINVAL)
                ) =>
            {
                WgError::KernelUnavailable(format!("cannot create wireguard link: {io}"))
            }
            other => other,
        })?;
        match family_id() {
            Ok(family) => Ok(KernelDevice {
                name: name.to_string(),
                family,
                closed: AtomicBool::new(false),
            }),
            Err(e) => {
                let _ = link::delete(name);
                Err(e)
            }
        }
    }
}

impl WgDevice for KernelDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Kernel
    }

    fn apply(&self, u: &DeviceUpdate) -> Result<(), WgError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(WgError::Closed);
        }
        for m in set_device_messages(&self.name, u) {
            send(self.family, m, 0)?;
        }
        Ok(())
    }

    fn state(&self) -> Result<DeviceState, WgError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(WgError::Closed);
        }
        let msgs = send(self.family, get_device_message(&self.name), NLM_F_DUMP)?;
        Ok(state_from_messages(&msgs))
    }

    fn close(&self) -> Result<(), WgError> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        link::delete(&self.name)
    }
}

impl Drop for KernelDevice {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, ParseableParametrized};
    use netlink_packet_generic::GenlHeader;

    fn key(b: u8) -> PublicKey {
        PublicKey([b; 32])
    }

    /// Serializes and re-parses a message: what the kernel would read.
    fn roundtrip(m: &WireguardMessage) -> (Vec<u8>, WireguardMessage) {
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        let header = GenlHeader {
            cmd: u8::from(m.cmd),
            version: 1,
        };
        let back = WireguardMessage::parse_with_param(&buf[..], header).expect("parses");
        (buf, back)
    }

    #[test]
    fn set_device_carries_interface_and_peer_fields() {
        let mut p = PeerUpdate::new(key(2));
        p.preshared_key = Some(PresharedKey([3; 32]));
        p.endpoint = Some("198.18.0.2:51820".parse().unwrap());
        p.persistent_keepalive = Some(25);
        p.replace_allowed_ips = true;
        p.allowed_ips = vec![
            "100.64.0.2/32".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ];
        let mut r = PeerUpdate::new(key(4));
        r.remove = true;
        let u = DeviceUpdate {
            private_key: Some(PrivateKeyBytes([1; 32])),
            listen_port: Some(51820),
            fwmark: Some(0x1BD00),
            replace_peers: false,
            peers: vec![p, r],
        };
        let msgs = set_device_messages("wt0", &u);
        assert_eq!(msgs.len(), 1);
        let (bytes, back) = roundtrip(&msgs[0]);
        // WGDEVICE_A_IFNAME = 2, "wt0\0": the first attribute on the wire
        assert_eq!(&bytes[0..8], &[8, 0, 2, 0, b'w', b't', b'0', 0]);
        assert_eq!(back.cmd, WireguardCmd::SetDevice);
        let a = &back.attributes;
        assert!(a.contains(&WireguardAttribute::PrivateKey([1; 32])));
        assert!(a.contains(&WireguardAttribute::ListenPort(51820)));
        assert!(a.contains(&WireguardAttribute::Fwmark(0x1BD00)));
        let peers = a
            .iter()
            .find_map(|x| match x {
                WireguardAttribute::Peers(p) => Some(p.clone()),
                _ => None,
            })
            .expect("peers attribute");
        assert_eq!(peers.len(), 2);
        let p0 = &peers[0].0;
        assert!(p0.contains(&WireguardPeerAttribute::PublicKey([2; 32])));
        assert!(p0.contains(&WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps
        )));
        assert!(p0.contains(&WireguardPeerAttribute::PresharedKey([3; 32])));
        assert!(p0.contains(&WireguardPeerAttribute::PersistentKeepalive(25)));
        assert!(p0.contains(&WireguardPeerAttribute::Endpoint(
            "198.18.0.2:51820".parse().unwrap()
        )));
        let ips = p0
            .iter()
            .find_map(|x| match x {
                WireguardPeerAttribute::AllowedIps(i) => Some(i.clone()),
                _ => None,
            })
            .expect("allowed ips");
        assert_eq!(ips.len(), 2);
        assert!(ips[1].0.contains(&WireguardAllowedIpAttr::Cidr(64)));
        assert_eq!(
            peers[1].0,
            vec![
                WireguardPeerAttribute::PublicKey([4; 32]),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe)
            ]
        );
    }

    #[test]
    fn large_updates_are_split_and_stay_complete() {
        let mut peers = Vec::new();
        for i in 0..200u8 {
            let mut p = PeerUpdate::new(key(i));
            p.allowed_ips = vec![IpNet::new([100, 64, 1, i].into(), 32).unwrap()];
            peers.push(p);
        }
        // one peer with 1,000 allowed IPs
        let mut big = PeerUpdate::new(key(255));
        big.replace_allowed_ips = true;
        big.allowed_ips = (0..1000u32)
            .map(|i| {
                IpNet::new(std::net::Ipv4Addr::from(0x0A00_0000 + (i << 8)).into(), 24).unwrap()
            })
            .collect();
        peers.push(big);
        let u = DeviceUpdate {
            replace_peers: true,
            peers,
            ..Default::default()
        };
        let msgs = set_device_messages("wt0", &u);
        assert!(msgs.len() > 5);
        let mut seen_ips = 0;
        let mut big_chunks = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            assert!(
                m.buffer_len() <= MAX_MESSAGE_BYTES + 200,
                "message {i} too big"
            );
            let (_, back) = roundtrip(m);
            let has_flag = back.attributes.contains(&WireguardAttribute::Flags(
                WireguardDeviceFlags::ReplacePeers,
            ));
            assert_eq!(has_flag, i == 0, "replace_peers only in the first message");
            for a in &back.attributes {
                if let WireguardAttribute::Peers(ps) = a {
                    for p in ps {
                        if p.0.contains(&WireguardPeerAttribute::PublicKey([255; 32])) {
                            big_chunks.push(p.0.clone());
                        }
                        for x in &p.0 {
                            if let WireguardPeerAttribute::AllowedIps(ips) = x {
                                seen_ips += ips.len();
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(seen_ips, 1200);
        assert!(big_chunks.len() > 1);
        assert!(big_chunks[0].contains(&WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps
        )));
        for c in &big_chunks[1..] {
            assert!(c.contains(&WireguardPeerAttribute::Flags(
                WireguardPeerFlags::UpdateOnly
            )));
        }
    }

    #[test]
    fn get_answers_fold_into_state() {
        use netlink_packet_wireguard::WireguardTimeSpec;
        let part = |ips: Vec<&str>, extra: Vec<WireguardPeerAttribute>| {
            let mut a = vec![WireguardPeerAttribute::PublicKey([9; 32])];
            a.extend(extra);
            a.push(WireguardPeerAttribute::AllowedIps(
                ips.iter()
                    .map(|s| allowed_ip(&s.parse().unwrap()))
                    .collect(),
            ));
            WireguardPeer(a)
        };
        let m1 = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::PrivateKey([1; 32]),
                WireguardAttribute::ListenPort(51820),
                WireguardAttribute::Peers(vec![part(
                    vec!["100.64.0.9/32"],
                    vec![
                        WireguardPeerAttribute::RxBytes(5),
                        WireguardPeerAttribute::TxBytes(6),
                        WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                            seconds: 1_700_000_000,
                            nano_seconds: 0,
                        }),
                    ],
                )]),
            ],
        };
        let m2 = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![part(
                vec!["10.0.0.0/8"],
                vec![],
            )])],
        };
        let (_, m1) = roundtrip(&m1);
        let st = state_from_messages(&[m1, m2]);
        assert_eq!(st.listen_port, 51820);
        assert_eq!(st.peers.len(), 1);
        let p = &st.peers[0];
        assert_eq!((p.rx_bytes, p.tx_bytes), (5, 6));
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(
            p.last_handshake,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
    }

    #[test]
    fn get_request_names_interface() {
        let (bytes, back) = roundtrip(&get_device_message("wt0"));
        assert_eq!(back.cmd, WireguardCmd::GetDevice);
        assert_eq!(&bytes[..], &[8, 0, 2, 0, b'w', b't', b'0', 0]);
    }
}
