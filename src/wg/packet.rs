//! Classification of datagrams arriving on the shared WireGuard UDP socket.
//!
//! NetBird runs ICE on the WireGuard port, so the socket carries WireGuard messages, STUN
//! (ICE checks, server queries) and junk (upstream's 2-byte `nb` punch). The rule follows
//! upstream's userspace bind: a datagram is WireGuard when it is at least 32 bytes long and its
//! first four bytes, read as a little-endian u32, are a message type 1..=4.

/// STUN magic cookie (RFC 5389), at byte offset 4 of every STUN message.
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;

/// Smallest WireGuard message (a data message with an empty payload).
pub const MIN_WG_MESSAGE: usize = 32;

/// What a datagram on the shared socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramKind {
    /// A WireGuard message (handshake initiation/response, cookie reply, data).
    WireGuard,
    /// A STUN message (magic cookie at offset 4).
    Stun,
    /// Anything else (handed to the connectivity layer, which may ignore it).
    Other,
}

/// Classifies a datagram received on the WireGuard socket.
pub fn classify(d: &[u8]) -> DatagramKind {
    if d.len() >= MIN_WG_MESSAGE {
        let t = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        if (1..=4).contains(&t) {
            return DatagramKind::WireGuard;
        }
    }
    if d.len() >= 8 && u32::from_be_bytes([d[4], d[5], d[6], d[7]]) == STUN_MAGIC_COOKIE {
        return DatagramKind::Stun;
    }
    DatagramKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wireguard_messages() {
        for t in 1u8..=4 {
            let mut d = vec![0u8; 32];
            d[0] = t;
            assert_eq!(classify(&d), DatagramKind::WireGuard, "type {t}");
        }
        let mut hs = vec![0u8; 148];
        hs[0] = 1;
        assert_eq!(classify(&hs), DatagramKind::WireGuard);
    }

    #[test]
    fn short_or_wrong_type_is_not_wireguard() {
        let mut d = vec![0u8; 31];
        d[0] = 4;
        assert_eq!(classify(&d), DatagramKind::Other);
        let mut d = vec![0u8; 64];
        d[0] = 5;
        assert_eq!(classify(&d), DatagramKind::Other);
        // type 1 with a non-zero reserved byte is a different u32: not WireGuard
        let mut d = vec![0u8; 64];
        d[0] = 1;
        d[3] = 1;
        assert_eq!(classify(&d), DatagramKind::Other);
        assert_eq!(classify(b"nb"), DatagramKind::Other);
        assert_eq!(classify(&[]), DatagramKind::Other);
    }

    #[test]
    fn stun_binding_request() {
        // Binding request header: type 0x0001, length 0, cookie, 12-byte transaction id.
        let mut d = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        d.extend_from_slice(&[7u8; 12]);
        assert_eq!(classify(&d), DatagramKind::Stun);
        // A 32+ byte STUN message whose first LE u32 is 1..4 cannot occur: the STUN length field
        // (bytes 2..4) of a message with attributes is non-zero. One with attributes:
        d[2] = 0x00;
        d[3] = 0x08;
        d.extend_from_slice(&[0u8; 8]);
        assert_eq!(classify(&d), DatagramKind::Stun);
    }
}
