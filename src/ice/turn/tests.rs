use super::*;

fn server() -> SocketAddr {
    "198.18.0.1:3478".parse().unwrap()
}

/// A server answer to the request `req` (its transaction id), with attributes.
fn answer(req: &[u8], kind: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let tid: [u8; 12] = req[8..20].try_into().unwrap();
    let mut m = Message::new(kind, tid);
    for (t, v) in attrs {
        m.attr(*t, v);
    }
    m.finish(None)
}

fn tid_of(req: &[u8]) -> [u8; 12] {
    req[8..20].try_into().unwrap()
}

fn error(code: u16) -> Vec<u8> {
    vec![0, 0, (code / 100) as u8, (code % 100) as u8]
}

/// Runs the 401 challenge and a successful Allocate; returns the client.
fn allocated(now: Instant) -> TurnClient {
    let mut c = TurnClient::new(server(), "1700000000".into(), "secret".into(), now);
    let first = c.poll_transmit().expect("allocate");
    assert_eq!(u16::from_be_bytes([first[0], first[1]]), ALLOCATE);
    let parsed = Parsed::parse(&first).unwrap();
    assert!(parsed.get(ATTR_MESSAGE_INTEGRITY).is_none());
    assert_eq!(
        parsed.get(ATTR_REQUESTED_TRANSPORT),
        Some(&[17, 0, 0, 0][..])
    );
    let challenge = answer(
        &first,
        ALLOCATE | CLASS_ERROR,
        &[
            (ATTR_ERROR_CODE, error(401)),
            (ATTR_REALM, b"netbird".to_vec()),
            (ATTR_NONCE, b"n0nce".to_vec()),
        ],
    );
    assert_eq!(c.handle_input(now, &challenge), None);
    let second = c.poll_transmit().expect("authenticated allocate");
    let p = Parsed::parse(&second).unwrap();
    assert_eq!(p.get(ATTR_USERNAME), Some(&b"1700000000"[..]));
    assert_eq!(p.get(ATTR_REALM), Some(&b"netbird"[..]));
    assert_eq!(p.get(ATTR_NONCE), Some(&b"n0nce"[..]));
    assert!(p.get(ATTR_MESSAGE_INTEGRITY).is_some());
    let tid = tid_of(&second);
    let ok = answer(
        &second,
        ALLOCATE | CLASS_SUCCESS,
        &[
            (
                ATTR_XOR_RELAYED_ADDRESS,
                stun::xor_address("198.18.0.1:50000".parse().unwrap(), &tid),
            ),
            (
                ATTR_XOR_MAPPED_ADDRESS,
                stun::xor_address("198.18.1.2:40000".parse().unwrap(), &tid),
            ),
            (ATTR_LIFETIME, 600u32.to_be_bytes().to_vec()),
        ],
    );
    c.handle_input(now, &ok);
    assert_eq!(
        c.poll_event(),
        Some(TurnEvent::Allocated {
            relayed: "198.18.0.1:50000".parse().unwrap(),
            mapped: Some("198.18.1.2:40000".parse().unwrap()),
        })
    );
    c
}

#[test]
fn long_term_integrity_matches_rfc5769_vector() {
    // RFC 5769 2.4: request with long-term authentication.
    let expected: [u8; 116] = [
        0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72,
        0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88,
        0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00,
        0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36,
        0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73,
        0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
        0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02,
        0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
    ];
    let user = "\u{30de}\u{30c8}\u{30ea}\u{30c3}\u{30af}\u{30b9}";
    let client = TurnClient {
        username: user.into(),
        password: "TheMatrIX".into(),
        ..TurnClient::new(server(), String::new(), String::new(), Instant::now())
    };
    let key = client.long_term_key("example.org");
    let tid: [u8; 12] = expected[8..20].try_into().unwrap();
    let mut m = Message::new(0x0001, tid);
    m.attr(ATTR_USERNAME, user.as_bytes());
    m.attr(ATTR_NONCE, b"f//499k954d6OL34oL9FSTvy64sA");
    m.attr(ATTR_REALM, b"example.org");
    assert_eq!(m.finish(Some(&key)), expected);
}

#[test]
fn challenge_then_allocate_then_refresh() {
    let now = Instant::now();
    let mut c = allocated(now);
    assert_eq!(c.relayed(), Some("198.18.0.1:50000".parse().unwrap()));
    // Refresh a minute before the 600 s lifetime ends.
    let due = c.poll_timeout().expect("refresh scheduled");
    assert_eq!(due - now, Duration::from_secs(540));
    c.handle_timeout(due);
    let refresh = c.poll_transmit().expect("refresh sent");
    assert_eq!(u16::from_be_bytes([refresh[0], refresh[1]]), REFRESH);
    assert!(Parsed::parse(&refresh)
        .unwrap()
        .get(ATTR_MESSAGE_INTEGRITY)
        .is_some());
    // A stale nonce is retried with the new one.
    let stale = answer(
        &refresh,
        REFRESH | CLASS_ERROR,
        &[
            (ATTR_ERROR_CODE, error(438)),
            (ATTR_NONCE, b"fresh".to_vec()),
        ],
    );
    c.handle_input(due, &stale);
    let again = c.poll_transmit().expect("refresh retried");
    assert_eq!(
        Parsed::parse(&again).unwrap().get(ATTR_NONCE),
        Some(&b"fresh"[..])
    );
    c.handle_input(
        due,
        &answer(
            &again,
            REFRESH | CLASS_SUCCESS,
            &[(ATTR_LIFETIME, 600u32.to_be_bytes().to_vec())],
        ),
    );
    assert_eq!(c.poll_event(), None);
    assert!(!c.is_done());
}

#[test]
fn rejected_credentials_fail_the_allocation() {
    let now = Instant::now();
    let mut c = TurnClient::new(server(), "u".into(), "wrong".into(), now);
    let first = c.poll_transmit().unwrap();
    let challenge = |req: &[u8]| {
        answer(
            req,
            ALLOCATE | CLASS_ERROR,
            &[
                (ATTR_ERROR_CODE, error(401)),
                (ATTR_REALM, b"r".to_vec()),
                (ATTR_NONCE, b"n".to_vec()),
            ],
        )
    };
    c.handle_input(now, &challenge(&first));
    let second = c.poll_transmit().unwrap();
    c.handle_input(now, &challenge(&second));
    assert_eq!(
        c.poll_event(),
        Some(TurnEvent::Failed("TURN credentials rejected".into()))
    );
    assert!(c.is_done());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn unanswered_allocate_is_retransmitted_then_fails() {
    let start = Instant::now();
    let mut c = TurnClient::new(server(), "u".into(), "p".into(), start);
    let mut sent = 0;
    while let Some(t) = c.poll_timeout() {
        while c.poll_transmit().is_some() {
            sent += 1;
        }
        c.handle_timeout(t);
        assert!(t - start < Duration::from_secs(60));
    }
    assert_eq!(sent, MAX_TRIES as usize);
    assert!(matches!(c.poll_event(), Some(TurnEvent::Failed(_))));
}

#[test]
fn data_to_a_peer_uses_send_until_the_channel_is_bound() {
    let now = Instant::now();
    let mut c = allocated(now);
    let peer: SocketAddr = "198.18.2.2:51820".parse().unwrap();
    let first = c
        .encode_to_peer(peer, b"hello", now)
        .expect("send indication");
    let p = Parsed::parse(&first).unwrap();
    assert_eq!(p.kind, SEND | CLASS_INDICATION);
    assert_eq!(p.get(ATTR_DATA), Some(&b"hello"[..]));
    assert_eq!(
        stun::parse_xor_address(p.get(ATTR_XOR_PEER_ADDRESS).unwrap(), &p.tid),
        Some(peer)
    );
    // The first send asked for a permission and a channel.
    let perm = c.poll_transmit().expect("permission");
    assert_eq!(u16::from_be_bytes([perm[0], perm[1]]), CREATE_PERMISSION);
    let bind = c.poll_transmit().expect("channel bind");
    assert_eq!(u16::from_be_bytes([bind[0], bind[1]]), CHANNEL_BIND);
    assert_eq!(
        Parsed::parse(&bind).unwrap().get(ATTR_CHANNEL_NUMBER),
        Some(&[0x40, 0x00, 0, 0][..])
    );
    c.handle_input(now, &answer(&perm, CREATE_PERMISSION | CLASS_SUCCESS, &[]));
    c.handle_input(now, &answer(&bind, CHANNEL_BIND | CLASS_SUCCESS, &[]));
    let framed = c.encode_to_peer(peer, b"hello", now).expect("channel data");
    assert_eq!(
        framed,
        [0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0]
    );
    assert!(is_channel_data(&framed));
    // Inbound, both framings.
    assert_eq!(
        c.handle_input(now, &framed),
        Some((peer, b"hello".to_vec()))
    );
    let tid = [3u8; 12];
    let mut m = Message::new(DATA | CLASS_INDICATION, tid);
    m.attr(ATTR_XOR_PEER_ADDRESS, &stun::xor_address(peer, &tid));
    m.attr(ATTR_DATA, b"hi");
    assert_eq!(
        c.handle_input(now, &m.finish(None)),
        Some((peer, b"hi".to_vec()))
    );
    // Permission and channel are refreshed while in use.
    let later = now + Duration::from_secs(300);
    c.handle_timeout(later);
    let kinds: Vec<u16> = std::iter::from_fn(|| c.poll_transmit())
        .map(|d| u16::from_be_bytes([d[0], d[1]]))
        .collect();
    assert!(kinds.contains(&CREATE_PERMISSION), "{kinds:x?}");
}

#[test]
fn garbage_never_panics() {
    let now = Instant::now();
    let mut c = allocated(now);
    let peer: SocketAddr = "198.18.2.2:51820".parse().unwrap();
    let good = c.encode_to_peer(peer, b"payload", now).unwrap();
    let mut inputs: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
    inputs.push(vec![0x40, 0x00, 0xff, 0xff, 1, 2]);
    inputs.push(vec![0x4f; 3]);
    let mut lying = good.clone();
    lying[3] = 0xff;
    inputs.push(lying);
    for seed in 0..500u32 {
        let len = (seed % 64) as usize;
        inputs.push(
            (0..len)
                .map(|i| (seed as usize * 31 + i * 7) as u8)
                .collect(),
        );
    }
    for d in inputs {
        let _ = c.handle_input(now, &d);
    }
    assert!(!c.is_done());
}

#[test]
fn credentials_follow_the_coturn_rest_scheme() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let (user, pass) = time_based_credentials("secret", Duration::from_secs(3600), now);
    assert_eq!(user, "1700003600");
    // base64(HMAC-SHA1("secret", "1700003600")), computed independently with
    // `printf %s 1700003600 | openssl dgst -sha1 -hmac secret -binary | base64`.
    assert_eq!(pass, "UFVPHi030d9a7dvQfHKkSHvih3o=");
}
