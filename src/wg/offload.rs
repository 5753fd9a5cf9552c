//! TUN offloads (pure): the `virtio_net_hdr` that prefixes every packet on an `IFF_VNET_HDR`
//! TUN device, checksum completion, and TCP segmentation of the large "TSO" packets the kernel
//! hands us once TSO is enabled. One read then yields up to 64 KiB of TCP data that we cut into
//! MTU-sized segments ourselves, instead of one system call per packet.

use std::ops::Range;

/// Size of `struct virtio_net_hdr` (without `num_buffers`), the TUN default.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial and must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: checksums need not be verified (set on packets we write:
/// WireGuard already authenticated them, as the kernel module marks them).
pub const F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;

/// A parsed `virtio_net_hdr` (little-endian fields on x86/ARM hosts: native order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_*` flags.
    pub flags: u8,
    /// `GSO_*` type (ECN bit masked off).
    pub gso_type: u8,
    /// Length of the headers (L2..L4) of a GSO packet.
    pub hdr_len: u16,
    /// Payload bytes per segment of a GSO packet.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the header at the start of `b`.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        if b.len() < VNET_HDR_LEN {
            return None;
        }
        let u = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1] & 0x7f,
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Adds `data` to a running one's-complement sum (not yet folded).
pub fn sum(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, carry) = acc.overflowing_add(v);
        acc = s + u64::from(carry);
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

/// Folds a running sum to the 16-bit one's-complement checksum value (complemented).
pub fn finish(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Why a packet could not be processed.
#[derive(Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// Headers shorter than claimed, unknown GSO type or IP version, or non-TCP GSO.
    Malformed,
}

/// Completes a partial L4 checksum (`F_NEEDS_CSUM`) in place.
pub fn complete_checksum(pkt: &mut [u8], h: &VnetHdr) -> Result<(), OffloadError> {
    let start = usize::from(h.csum_start);
    let field = start + usize::from(h.csum_offset);
    if field + 2 > pkt.len() {
        return Err(OffloadError::Malformed);
    }
    // The field holds the pseudo-header sum; summing over it completes the checksum.
    let c = finish(sum(0, &pkt[start..]));
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Cuts a TSO packet (`pkt` without the vnet header) into segments of at most `gso_size` TCP
/// payload bytes, appended to `arena`; their ranges are pushed to `segs`. IP lengths, IPv4 ids
/// and header checksums, TCP sequence numbers, flags and checksums are fixed per segment.
pub fn tso_segment(
    pkt: &[u8],
    h: &VnetHdr,
    arena: &mut Vec<u8>,
    segs: &mut Vec<Range<usize>>,
) -> Result<(), OffloadError> {
    let v4 = match pkt.first().map(|b| b >> 4) {
        Some(4) if h.gso_type == GSO_TCPV4 => true,
        Some(6) if h.gso_type == GSO_TCPV6 => false,
        _ => return Err(OffloadError::Malformed),
    };
    let iphlen = if v4 {
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        if ihl < 20 || pkt.len() < ihl || pkt[9] != 6 {
            return Err(OffloadError::Malformed);
        }
        ihl
    } else {
        if pkt.len() < 40 || pkt[6] != 6 {
            return Err(OffloadError::Malformed);
        }
        40
    };
    if pkt.len() < iphlen + 20 {
        return Err(OffloadError::Malformed);
    }
    let thlen = usize::from(pkt[iphlen + 12] >> 4) * 4;
    let hlen = iphlen + thlen;
    let mss = usize::from(h.gso_size);
    if thlen < 20 || pkt.len() < hlen || mss == 0 {
        return Err(OffloadError::Malformed);
    }
    let payload = &pkt[hlen..];
    let seq0 = u32::from_be_bytes([
        pkt[iphlen + 4],
        pkt[iphlen + 5],
        pkt[iphlen + 6],
        pkt[iphlen + 7],
    ]);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let n = payload.len().div_ceil(mss).max(1);
    for i in 0..n {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let start = arena.len();
        arena.extend_from_slice(&pkt[..hlen]);
        arena.extend_from_slice(chunk);
        let seg = &mut arena[start..];
        let tcp_len = thlen + chunk.len();
        if v4 {
            let total = (hlen + chunk.len()) as u16;
            seg[2..4].copy_from_slice(&total.to_be_bytes());
            seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            seg[10..12].copy_from_slice(&[0, 0]);
            let c = finish(sum(0, &seg[..iphlen]));
            seg[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            seg[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        }
        let t = iphlen;
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        if i + 1 < n {
            seg[t + 13] &= !(0x01 | 0x08); // FIN, PSH only on the last segment
        }
        seg[t + 16..t + 18].copy_from_slice(&[0, 0]);
        let mut acc = if v4 {
            sum(0, &seg[12..20])
        } else {
            sum(0, &seg[8..40])
        };
        acc += 6 + tcp_len as u64;
        acc = sum(acc, &seg[t..]);
        let c = finish(acc);
        seg[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        segs.push(start..arena.len());
    }
    Ok(())
}

/// Largest IP packet GRO builds (the IPv4 total-length limit, with headroom).
const GRO_MAX_PACKET: usize = 65_000;

/// The TCP fields GRO compares, parsed once per packet.
struct TcpView {
    v4: bool,
    iphlen: usize,
    hlen: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

fn tcp_view(p: &[u8]) -> Option<TcpView> {
    let v4 = match p.first()? >> 4 {
        4 => true,
        6 => false,
        _ => return None,
    };
    let iphlen = if v4 {
        // Options, fragments and non-TCP are written as they are.
        if p.len() < 40 || p[0] & 0x0f != 5 || p[9] != 6 || (p[6] & 0x3f) != 0 || p[7] != 0 {
            return None;
        }
        if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
            return None;
        }
        20
    } else {
        if p.len() < 60 || p[6] != 6 {
            return None;
        }
        if usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
            return None;
        }
        40
    };
    let thlen = usize::from(p[iphlen + 12] >> 4) * 4;
    let hlen = iphlen + thlen;
    if thlen < 20 || p.len() < hlen {
        return None;
    }
    Some(TcpView {
        v4,
        iphlen,
        hlen,
        seq: u32::from_be_bytes([p[iphlen + 4], p[iphlen + 5], p[iphlen + 6], p[iphlen + 7]]),
        flags: p[iphlen + 13],
        payload: p.len() - hlen,
    })
}

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// Can `q` be appended to the group started by `first` whose last member is `last`?
fn same_flow(first: &[u8], f: &TcpView, q: &[u8], qv: &TcpView) -> bool {
    if f.v4 != qv.v4 || f.hlen != qv.hlen {
        return false;
    }
    let ip_same = if f.v4 {
        // TOS, DF/flags, TTL, protocol, addresses
        first[1] == q[1] && first[6] == q[6] && first[8] == q[8] && first[12..20] == q[12..20]
    } else {
        // version/class/flow label, hop limit, addresses
        first[0..4] == q[0..4] && first[7] == q[7] && first[8..40] == q[8..40]
    };
    let t = f.iphlen;
    // ports, ack number, and options must match; the window may differ (the last one is kept).
    ip_same
        && first[t..t + 4] == q[t..t + 4]
        && first[t + 8..t + 12] == q[t + 8..t + 12]
        && first[t + 20..f.hlen] == q[t + 20..qv.hlen]
}

/// Coalesces consecutive in-order TCP segments of one flow (as a TSO sender produced them)
/// into large packets for an `IFF_VNET_HDR` TUN device, the inverse of [`tso_segment`]. Each
/// output frame (`virtio_net_hdr` + packet) is appended to `out` and its range pushed to
/// `frames`; packets that cannot be merged are passed through with a plain header. Decrypted
/// WireGuard packets are authenticated, so single packets are marked `F_DATA_VALID`; merged
/// ones carry a partial checksum (`F_NEEDS_CSUM`) for the kernel to treat as verified.
pub fn gro_coalesce(
    arena: &[u8],
    pkts: &[Range<usize>],
    out: &mut Vec<u8>,
    frames: &mut Vec<Range<usize>>,
) {
    let mut i = 0;
    while i < pkts.len() {
        let first = &arena[pkts[i].clone()];
        let view = tcp_view(first).filter(|v| {
            v.payload > 0 && v.flags & !(TCP_ACK | TCP_PSH) == 0 && v.flags & TCP_ACK != 0
        });
        let Some(fv) = view else {
            push_plain(first, out, frames);
            i += 1;
            continue;
        };
        let mss = fv.payload;
        let mut total = first.len();
        let mut next_seq = fv.seq.wrapping_add(mss as u32);
        let mut last_flags = fv.flags;
        let mut j = i + 1;
        while j < pkts.len() && last_flags & TCP_PSH == 0 {
            let q = &arena[pkts[j].clone()];
            let Some(qv) = tcp_view(q) else { break };
            let prev_full = arena[pkts[j - 1].clone()].len() - fv.hlen == mss;
            if !prev_full
                || qv.payload == 0
                || qv.payload > mss
                || qv.seq != next_seq
                || qv.flags & !(TCP_ACK | TCP_PSH) != 0
                || qv.flags & TCP_ACK == 0
                || total + qv.payload > GRO_MAX_PACKET
                || !same_flow(first, &fv, q, &qv)
            {
                break;
            }
            total += qv.payload;
            next_seq = next_seq.wrapping_add(qv.payload as u32);
            last_flags = qv.flags;
            j += 1;
        }
        if j == i + 1 {
            push_plain(first, out, frames);
            i += 1;
            continue;
        }
        let start = out.len();
        out.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        let pkt_start = out.len();
        out.extend_from_slice(&first[..fv.hlen]);
        for r in &pkts[i..j] {
            out.extend_from_slice(&arena[r.start + fv.hlen..r.end]);
        }
        let last = &arena[pkts[j - 1].clone()];
        let p = &mut out[pkt_start..];
        let t = fv.iphlen;
        // flags (PSH of the last member) and window from the last segment
        p[t + 13] = last_flags;
        p[t + 14..t + 16].copy_from_slice(&last[t + 14..t + 16]);
        let tcp_len = total - fv.iphlen;
        if fv.v4 {
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let c = finish(sum(0, &p[..20]));
            p[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            p[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        }
        // partial checksum: the pseudo-header sum, not complemented
        let mut acc = if fv.v4 {
            sum(0, &p[12..20])
        } else {
            sum(0, &p[8..40])
        };
        acc += 6 + tcp_len as u64;
        let seed = !finish(acc);
        p[t + 16..t + 18].copy_from_slice(&seed.to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if fv.v4 { GSO_TCPV4 } else { GSO_TCPV6 },
            hdr_len: fv.hlen as u16,
            gso_size: mss as u16,
            csum_start: fv.iphlen as u16,
            csum_offset: 16,
        }
        .write(&mut out[start..pkt_start]);
        frames.push(start..out.len());
        i = j;
    }
}

fn push_plain(p: &[u8], out: &mut Vec<u8>, frames: &mut Vec<Range<usize>>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; VNET_HDR_LEN]);
    VnetHdr {
        flags: F_DATA_VALID,
        ..Default::default()
    }
    .write(&mut out[start..]);
    out.extend_from_slice(p);
    frames.push(start..out.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verifies the IPv4 header and TCP checksums of a packet (sum over it with the field = 0).
    fn tcp_ok(p: &[u8]) -> bool {
        let v4 = p[0] >> 4 == 4;
        let iph = if v4 { usize::from(p[0] & 15) * 4 } else { 40 };
        let mut acc = if v4 {
            sum(0, &p[12..20])
        } else {
            sum(0, &p[8..40])
        };
        acc += 6 + (p.len() - iph) as u64;
        acc = sum(acc, &p[iph..]);
        let tcp_ok = finish(acc) == 0;
        let ip_ok = !v4 || finish(sum(0, &p[..iph])) == 0;
        tcp_ok && ip_ok
    }

    fn tcp4_packet(payload: usize, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        p[0] = 0x45;
        let total = (40 + payload) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        p[20..22].copy_from_slice(&5201u16.to_be_bytes());
        p[22..24].copy_from_slice(&40000u16.to_be_bytes());
        p[24..28].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        p
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 example bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2 (complement 0x220d).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum(0, &d)), !0xddf2);
        assert_eq!(
            finish(sum(0, &d[..7])),
            finish(sum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0x00]))
        );
    }

    #[test]
    fn vnet_header_roundtrip() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1380,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }

    #[test]
    fn tso_v4_segments_are_valid_tcp() {
        let mut p = tcp4_packet(3000, 0x18 | 0x01); // PSH|ACK|FIN
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 16,
        };
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        tso_segment(&p, &h, &mut arena, &mut segs).unwrap();
        assert_eq!(segs.len(), 3);
        for (i, r) in segs.iter().enumerate() {
            let s = &arena[r.clone()];
            assert_eq!(s.len(), 1040);
            assert!(tcp_ok(s), "segment {i} checksum");
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(1000 * i as u32));
            assert_eq!(
                u16::from_be_bytes([s[4], s[5]]),
                0xfffeu16.wrapping_add(i as u16)
            );
            assert_eq!(s[33] & 0x09 != 0, i == 2, "PSH/FIN only on the last");
            assert_eq!(&s[40..], &p[40 + 1000 * i..40 + 1000 * (i + 1)]);
        }
        // malformed inputs are rejected, never panic
        p[9] = 17;
        assert!(tso_segment(&p, &h, &mut arena, &mut segs).is_err());
        assert!(tso_segment(&p[..30], &h, &mut arena, &mut segs).is_err());
        assert!(tso_segment(&[], &h, &mut arena, &mut segs).is_err());
    }

    #[test]
    fn tso_v6_and_short_tail() {
        let mut p = vec![0u8; 60 + 2500];
        p[0] = 0x60;
        p[6] = 6;
        p[7] = 64;
        p[8] = 0xfd;
        p[24] = 0xfd;
        p[39] = 2;
        p[52] = 5 << 4;
        p[53] = 0x10;
        let h = VnetHdr {
            gso_type: GSO_TCPV6,
            gso_size: 1200,
            ..Default::default()
        };
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        tso_segment(&p, &h, &mut arena, &mut segs).unwrap();
        let lens: Vec<usize> = segs.iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![1260, 1260, 160]);
        for r in &segs {
            let s = &arena[r.clone()];
            assert!(tcp_ok(s));
            assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
        }
    }

    #[test]
    fn completes_partial_checksum() {
        let mut p = tcp4_packet(100, 0x10);
        // seed the field with the pseudo-header sum, as the kernel does for CHECKSUM_PARTIAL
        let mut acc = sum(0, &p[12..20]);
        acc += 6 + (p.len() - 20) as u64;
        let seed = !finish(acc);
        p[36..38].copy_from_slice(&seed.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        complete_checksum(&mut p, &h).unwrap();
        // the IPv4 header checksum of the fixture is zero; fix it to check TCP alone
        let c = finish(sum(0, &p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(tcp_ok(&p));
        let bad = VnetHdr {
            csum_start: 200,
            ..h
        };
        assert!(complete_checksum(&mut p, &bad).is_err());
    }

    fn segments(payload: usize, mss: u16) -> (Vec<u8>, Vec<Range<usize>>, Vec<u8>) {
        let p = tcp4_packet(payload, 0x18);
        let h = VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: mss,
            ..Default::default()
        };
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        tso_segment(&p, &h, &mut arena, &mut segs).unwrap();
        (arena, segs, p)
    }

    #[test]
    fn gro_merges_what_tso_split() {
        let (arena, segs, orig) = segments(5000, 1200);
        assert_eq!(segs.len(), 5);
        let (mut out, mut frames) = (Vec::new(), Vec::new());
        gro_coalesce(&arena, &segs, &mut out, &mut frames);
        assert_eq!(frames.len(), 1);
        let f = &out[frames[0].clone()];
        let h = VnetHdr::parse(f).unwrap();
        assert_eq!(h.gso_type, GSO_TCPV4);
        assert_eq!(h.gso_size, 1200);
        assert_eq!(h.flags, F_NEEDS_CSUM);
        let mut p = f[VNET_HDR_LEN..].to_vec();
        assert_eq!(p.len(), orig.len());
        assert_eq!(&p[40..], &orig[40..], "payload intact");
        assert_eq!(p[33], 0x18, "PSH kept from the last segment");
        assert_eq!(finish(sum(0, &p[..20])), 0, "IPv4 header checksum");
        // completing the partial checksum yields a valid TCP checksum
        complete_checksum(
            &mut p,
            &VnetHdr {
                csum_start: 20,
                csum_offset: 16,
                ..h
            },
        )
        .unwrap();
        assert!(tcp_ok(&p));
    }

    #[test]
    fn gro_stops_at_gaps_and_other_flows() {
        let (mut arena, segs, _) = segments(4800, 1200);
        // a different flow between segments 2 and 3, and a lost segment 4 (skip it)
        let other = tcp4_packet(100, 0x10);
        let mut other = other;
        other[20] = 9;
        let start = arena.len();
        arena.extend_from_slice(&other);
        let order = vec![
            segs[0].clone(),
            segs[1].clone(),
            start..arena.len(),
            segs[2].clone(),
            segs[3].clone(),
        ];
        let (mut out, mut frames) = (Vec::new(), Vec::new());
        gro_coalesce(&arena, &order, &mut out, &mut frames);
        let kinds: Vec<(u8, usize)> = frames
            .iter()
            .map(|r| (out[r.start + 1], r.len() - VNET_HDR_LEN))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (GSO_TCPV4, 40 + 2400),
                (GSO_NONE, 140),
                (GSO_TCPV4, 40 + 2400)
            ]
        );
        // a gap in sequence numbers also ends a group
        let order = vec![segs[0].clone(), segs[2].clone()];
        let (mut out, mut frames) = (Vec::new(), Vec::new());
        gro_coalesce(&arena, &order, &mut out, &mut frames);
        assert_eq!(frames.len(), 2);
        assert_eq!(out[frames[0].start], F_DATA_VALID);
    }

    #[test]
    fn gro_passes_through_non_tcp_and_garbage() {
        let arena = vec![
            0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0xff,
        ];
        let pkts = vec![0..20, 20..21, 0..0];
        let (mut out, mut frames) = (Vec::new(), Vec::new());
        gro_coalesce(&arena, &pkts, &mut out, &mut frames);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].len(), VNET_HDR_LEN + 20);
    }
}
