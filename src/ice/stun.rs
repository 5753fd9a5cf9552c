//! The few STUN messages we build and read ourselves (RFC 5389): Binding requests to a STUN
//! server for our reflexive address, and the testbed server's Binding responses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
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

/// A Binding success response carrying `mapped` as XOR-MAPPED-ADDRESS.
pub fn binding_response(tid: [u8; 12], mapped: SocketAddr) -> Vec<u8> {
    let xport = mapped.port() ^ 0x2112;
    let mut attr = vec![0x00];
    match mapped.ip() {
        IpAddr::V4(ip) => {
            attr.push(0x01);
            attr.extend_from_slice(&xport.to_be_bytes());
            for (b, m) in ip.octets().iter().zip(MAGIC) {
                attr.push(b ^ m);
            }
        }
        IpAddr::V6(ip) => {
            attr.push(0x02);
            attr.extend_from_slice(&xport.to_be_bytes());
            let mut key = MAGIC.to_vec();
            key.extend_from_slice(&tid);
            for (b, k) in ip.octets().iter().zip(key) {
                attr.push(b ^ k);
            }
        }
    }
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
        if t == XOR_MAPPED_ADDRESS && l >= 8 {
            let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
            let ip = match v[1] {
                0x01 => IpAddr::V4(Ipv4Addr::new(
                    v[4] ^ MAGIC[0],
                    v[5] ^ MAGIC[1],
                    v[6] ^ MAGIC[2],
                    v[7] ^ MAGIC[3],
                )),
                0x02 if l >= 20 => {
                    let mut key = MAGIC.to_vec();
                    key.extend_from_slice(&tid);
                    let mut o = [0u8; 16];
                    for (j, b) in o.iter_mut().enumerate() {
                        *b = v[4 + j] ^ key[j];
                    }
                    IpAddr::V6(Ipv6Addr::from(o))
                }
                _ => return None,
            };
            return Some((tid, SocketAddr::new(ip, port)));
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
