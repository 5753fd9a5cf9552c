//! The few STUN messages we build and read ourselves (RFC 5389): Binding requests to a STUN
//! server for our reflexive address, the testbed server's Binding responses, and the XOR
//! address encoding TURN shares with them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The STUN magic cookie.
pub const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// A Binding request with this transaction id and no attributes.
pub fn binding_request(tid: [u8; 12]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00];
    m.extend_from_slice(&MAGIC);
    m.extend_from_slice(&tid);
    m
}

/// If `d` is a Binding request: its transaction id.
pub fn parse_binding_request(d: &[u8]) -> Option<[u8; 12]> {
    (d.len() >= 20 && d[0..2] == [0x00, 0x01] && d[4..8] == MAGIC)
        .then(|| d[8..20].try_into().ok())
        .flatten()
}

/// An XOR-MAPPED-ADDRESS style value (also XOR-PEER- and XOR-RELAYED-ADDRESS) for `addr`.
pub fn xor_address(addr: SocketAddr, tid: &[u8; 12]) -> Vec<u8> {
    let xport = addr.port() ^ 0x2112;
    let mut v = vec![0x00];
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(0x01);
            v.extend_from_slice(&xport.to_be_bytes());
            for (b, m) in ip.octets().iter().zip(MAGIC) {
                v.push(b ^ m);
            }
        }
        IpAddr::V6(ip) => {
            v.push(0x02);
            v.extend_from_slice(&xport.to_be_bytes());
            let key = MAGIC.iter().chain(tid.iter());
            for (b, k) in ip.octets().iter().zip(key) {
                v.push(b ^ k);
            }
        }
    }
    v
}

/// Decodes an XOR-*-ADDRESS value; `None` if it is malformed.
pub fn parse_xor_address(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) ^ 0x2112;
    let ip = match *v.get(1)? {
        0x01 => {
            let b = v.get(4..8)?;
            IpAddr::V4(Ipv4Addr::new(
                b[0] ^ MAGIC[0],
                b[1] ^ MAGIC[1],
                b[2] ^ MAGIC[2],
                b[3] ^ MAGIC[3],
            ))
        }
        0x02 => {
            let b = v.get(4..20)?;
            let mut o = [0u8; 16];
            for ((out, x), k) in o.iter_mut().zip(b).zip(MAGIC.iter().chain(tid.iter())) {
                *out = x ^ k;
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A Binding success response carrying `mapped` as XOR-MAPPED-ADDRESS.
pub fn binding_response(tid: [u8; 12], mapped: SocketAddr) -> Vec<u8> {
    let attr = xor_address(mapped, &tid);
    let mut m = vec![0x01, 0x01];
    m.extend_from_slice(&((attr.len() + 4) as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC);
    m.extend_from_slice(&tid);
    m.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    m.extend_from_slice(&attr);
    m
}

/// If `d` is a Binding success response: its transaction id and XOR-MAPPED-ADDRESS.
pub fn parse_binding_response(d: &[u8]) -> Option<([u8; 12], SocketAddr)> {
    if d.len() < 20 || d[0..2] != [0x01, 0x01] || d[4..8] != MAGIC {
        return None;
    }
    let tid: [u8; 12] = d[8..20].try_into().ok()?;
    let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let body = d.get(20..20 + len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let t = u16::from_be_bytes([body[i], body[i + 1]]);
        let l = usize::from(u16::from_be_bytes([body[i + 2], body[i + 3]]));
        let v = body.get(i + 4..i + 4 + l)?;
        if t == XOR_MAPPED_ADDRESS {
            return parse_xor_address(v, &tid).map(|a| (tid, a));
        }
        i += 4 + l.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_response_roundtrip() {
        let tid = [9; 12];
        assert_eq!(parse_binding_request(&binding_request(tid)), Some(tid));
        for addr in ["198.18.1.2:51820", "[2001:db8::5]:4000"] {
            let a: SocketAddr = addr.parse().unwrap();
            assert_eq!(
                parse_binding_response(&binding_response(tid, a)),
                Some((tid, a))
            );
        }
        assert_eq!(parse_binding_response(&[0; 10]), None);
        let mut bad = binding_response(tid, "1.2.3.4:5".parse().unwrap());
        bad[3] = 200;
        assert_eq!(parse_binding_response(&bad), None);
    }
}
