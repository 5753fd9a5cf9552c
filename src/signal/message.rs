//! Typed signal messages and their wire form (pure: no IO).
//!
//! A [`SignalMessage`] is turned into a protobuf `Body`, sealed for the recipient with NaCl box and
//! wrapped in an `EncryptedMessage` (`key` = sender, `remoteKey` = recipient). Receiving is the
//! reverse; anything malformed gives a [`DecodeError`] and the caller drops the message.

use crate::crypto::{self, CryptoError, PrivateKey, PublicKey};
use crate::proto::signalexchange::{body, Body, EncryptedMessage, Mode, RosenpassConfig};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of an ICE session id carried in offers and answers.
pub const SESSION_ID_LEN: usize = 5;

/// An ICE session id: exactly 5 bytes; other lengths on the wire are treated as absent.
pub type SessionId = [u8; SESSION_ID_LEN];

/// Rosenpass parameters advertised in offers and answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rosenpass {
    /// The sender's Rosenpass public key.
    pub public_key: Vec<u8>,
    /// `ip:port` of the sender's Rosenpass service.
    pub server_addr: String,
}

/// Contents shared by OFFER and ANSWER.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OfferAnswer {
    /// ICE username fragment (no `:`); empty together with `pwd` means "no ICE with me".
    pub ufrag: String,
    /// ICE password (no `:`).
    pub pwd: String,
    /// The sender's actual WireGuard listen port (0 means the default 51820).
    pub wg_listen_port: u16,
    /// The sender's agent version (informational).
    pub version: String,
    /// Instance URL of the sender's home relay; `None` = no relay with the sender.
    pub relay_server_address: Option<String>,
    /// The sender's current ICE session id.
    pub session_id: Option<SessionId>,
    /// IP the sender's relay socket is connected to (dial fallback when DNS fails).
    pub relay_server_ip: Option<IpAddr>,
    /// Rosenpass parameters; `None` when the sender runs no Rosenpass.
    pub rosenpass: Option<Rosenpass>,
}

impl OfferAnswer {
    /// True when the sender advertises no ICE credentials (`":"`): relay only.
    pub fn ice_disabled(&self) -> bool {
        self.ufrag.is_empty() && self.pwd.is_empty()
    }
}

/// A decrypted, typed signal message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalMessage {
    /// Connection offer with ICE credentials and relay address.
    Offer(OfferAnswer),
    /// Answer to an offer, same contents.
    Answer(OfferAnswer),
    /// One ICE candidate in pion text form (without the `candidate:` prefix).
    Candidate(String),
    /// Legacy connection mode; receivers ignore it.
    Mode {
        /// Whether the sender wants a direct connection.
        direct: Option<bool>,
    },
    /// The sender put its connection to us idle (lazy connections).
    GoIdle,
    /// A liveness probe; a client sends it to itself.
    Heartbeat,
}

impl SignalMessage {
    /// Short name of the message type, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SignalMessage::Offer(_) => "offer",
            SignalMessage::Answer(_) => "answer",
            SignalMessage::Candidate(_) => "candidate",
            SignalMessage::Mode { .. } => "mode",
            SignalMessage::GoIdle => "go_idle",
            SignalMessage::Heartbeat => "heartbeat",
        }
    }
}

/// A message received from a remote peer, after opening and decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSignal {
    /// Sender (from `EncryptedMessage.key`, proven by the box opening).
    pub from: PublicKey,
    /// The message.
    pub message: SignalMessage,
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// ICE credentials must not contain `:` (the payload separator).
    #[error("ICE credentials must not contain ':'")]
    ColonInCredentials,
}

/// Why a received message was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// `EncryptedMessage.key` is not a valid public key.
    #[error("invalid sender key")]
    InvalidSender,
    /// `EncryptedMessage.remoteKey` is not our key.
    #[error("message not addressed to us")]
    NotForUs,
    /// The body did not open or did not decode.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// `Body.type` has a value we do not know.
    #[error("unknown body type {0}")]
    UnknownType(i32),
    /// An offer/answer payload is not `<ufrag>:<pwd>`.
    #[error("malformed credentials payload")]
    BadCredentials,
    /// `wgListenPort` does not fit a port number.
    #[error("invalid WireGuard port {0}")]
    BadPort(u32),
}

/// Encodes a typed message into its protobuf `Body`.
pub fn encode_body(msg: &SignalMessage) -> Result<Body, EncodeError> {
    let mut b = Body::default();
    match msg {
        SignalMessage::Offer(oa) | SignalMessage::Answer(oa) => {
            let ty = if matches!(msg, SignalMessage::Offer(_)) {
                body::Type::Offer
            } else {
                body::Type::Answer
            };
            if oa.ufrag.contains(':') || oa.pwd.contains(':') {
                return Err(EncodeError::ColonInCredentials);
            }
            b.set_type(ty);
            b.payload = format!("{}:{}", oa.ufrag, oa.pwd);
            b.wg_listen_port = u32::from(oa.wg_listen_port);
            b.net_bird_version = oa.version.clone();
            let rp = oa.rosenpass.clone().unwrap_or_default();
            b.rosenpass_config = Some(RosenpassConfig {
                rosenpass_pub_key: rp.public_key,
                rosenpass_server_addr: rp.server_addr,
            });
            b.relay_server_address = oa.relay_server_address.clone();
            b.session_id = oa.session_id.map(|s| s.to_vec());
            b.relay_server_ip = oa.relay_server_ip.map(|ip| match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            });
        }
        SignalMessage::Candidate(c) => {
            b.set_type(body::Type::Candidate);
            b.payload = c.clone();
        }
        SignalMessage::Mode { direct } => {
            b.set_type(body::Type::Mode);
            b.mode = Some(Mode { direct: *direct });
        }
        SignalMessage::GoIdle => b.set_type(body::Type::GoIdle),
        SignalMessage::Heartbeat => b.set_type(body::Type::Heartbeat),
    }
    Ok(b)
}

/// Decodes a protobuf `Body` into a typed message.
pub fn decode_body(b: &Body) -> Result<SignalMessage, DecodeError> {
    let ty = body::Type::try_from(b.r#type).map_err(|_| DecodeError::UnknownType(b.r#type))?;
    Ok(match ty {
        body::Type::Offer => SignalMessage::Offer(decode_offer_answer(b)?),
        body::Type::Answer => SignalMessage::Answer(decode_offer_answer(b)?),
        body::Type::Candidate => SignalMessage::Candidate(b.payload.clone()),
        body::Type::Mode => SignalMessage::Mode {
            direct: b.mode.as_ref().and_then(|m| m.direct),
        },
        body::Type::GoIdle => SignalMessage::GoIdle,
        body::Type::Heartbeat => SignalMessage::Heartbeat,
    })
}

fn decode_offer_answer(b: &Body) -> Result<OfferAnswer, DecodeError> {
    let mut parts = b.payload.split(':');
    let (ufrag, pwd) = match (parts.next(), parts.next(), parts.next()) {
        (Some(u), Some(p), None) => (u.to_string(), p.to_string()),
        _ => return Err(DecodeError::BadCredentials),
    };
    let wg_listen_port =
        u16::try_from(b.wg_listen_port).map_err(|_| DecodeError::BadPort(b.wg_listen_port))?;
    let session_id = b
        .session_id
        .as_deref()
        .and_then(|s| SessionId::try_from(s).ok());
    let relay_server_ip = b.relay_server_ip.as_deref().and_then(ip_from_bytes);
    let rosenpass = b
        .rosenpass_config
        .as_ref()
        .filter(|r| !r.rosenpass_pub_key.is_empty())
        .map(|r| Rosenpass {
            public_key: r.rosenpass_pub_key.clone(),
            server_addr: r.rosenpass_server_addr.clone(),
        });
    Ok(OfferAnswer {
        ufrag,
        pwd,
        wg_listen_port,
        version: b.net_bird_version.clone(),
        relay_server_address: b.relay_server_address.clone().filter(|a| !a.is_empty()),
        session_id,
        relay_server_ip,
        rosenpass,
    })
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    <[u8; 16]>::try_from(b)
        .ok()
        .map(|v6| IpAddr::V6(Ipv6Addr::from(v6)))
}

/// Encodes and seals `msg` from `own` to `to`, ready for `Send`.
pub fn seal(
    msg: &SignalMessage,
    to: &PublicKey,
    own: &PrivateKey,
) -> Result<EncryptedMessage, EncodeError> {
    let body = encode_body(msg)?;
    Ok(EncryptedMessage {
        key: own.public_key().to_base64(),
        remote_key: to.to_base64(),
        body: crypto::seal_message(&body, to, own),
    })
}

/// Opens and decodes a message received on the stream.
///
/// The recipient must be us; the sender key is taken from `key` and proven by the box.
pub fn open(em: &EncryptedMessage, own: &PrivateKey) -> Result<ReceivedSignal, DecodeError> {
    let from: PublicKey = em.key.parse().map_err(|_| DecodeError::InvalidSender)?;
    match em.remote_key.parse::<PublicKey>() {
        Ok(to) if to == own.public_key() => {}
        _ => return Err(DecodeError::NotForUs),
    }
    let body: Body = crypto::open_message(&em.body, &from, own)?;
    Ok(ReceivedSignal {
        from,
        message: decode_body(&body)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn offer() -> OfferAnswer {
        OfferAnswer {
            ufrag: "AbCdEfGhIjKlMnOp".into(),
            pwd: "abcdefghijklmnopqrstuvwxyzABCDEF".into(),
            wg_listen_port: 51820,
            version: "0.77.1".into(),
            relay_server_address: Some("rels://relay.example.com:443".into()),
            session_id: Some([1, 2, 3, 4, 5]),
            relay_server_ip: Some("192.0.2.7".parse().unwrap()),
            rosenpass: None,
        }
    }

    #[test]
    fn offer_body_fields_match_the_wire_layout() {
        let b = encode_body(&SignalMessage::Offer(offer())).unwrap();
        assert_eq!(b.r#type, 0);
        assert_eq!(
            b.payload,
            "AbCdEfGhIjKlMnOp:abcdefghijklmnopqrstuvwxyzABCDEF"
        );
        assert_eq!(b.wg_listen_port, 51820);
        assert_eq!(b.session_id.as_deref(), Some(&[1u8, 2, 3, 4, 5][..]));
        assert_eq!(b.relay_server_ip.as_deref(), Some(&[192u8, 0, 2, 7][..]));
        assert!(b.rosenpass_config.is_some(), "always present, key empty");
        assert!(b.mode.is_none() && b.features_supported.is_empty());
        // Field 8 (relayServerAddress) is tagged 0x42 on the wire.
        let bytes = b.encode_to_vec();
        let needle = b"rels://relay.example.com:443";
        let pos = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        assert_eq!(bytes[pos - 2], 0x42);
    }

    #[test]
    fn all_types_roundtrip() {
        let msgs = [
            SignalMessage::Offer(offer()),
            SignalMessage::Answer(OfferAnswer {
                relay_server_address: None,
                session_id: None,
                relay_server_ip: Some("2001:db8::1".parse().unwrap()),
                rosenpass: Some(Rosenpass {
                    public_key: vec![9; 8],
                    server_addr: "10.0.0.1:9999".into(),
                }),
                ..offer()
            }),
            SignalMessage::Candidate(
                "3521345821 1 udp 2130706431 192.168.1.20 51820 typ host".into(),
            ),
            SignalMessage::Mode { direct: Some(true) },
            SignalMessage::GoIdle,
            SignalMessage::Heartbeat,
        ];
        let types = [0, 1, 2, 4, 5, 6];
        for (m, t) in msgs.iter().zip(types) {
            let b = encode_body(m).unwrap();
            assert_eq!(b.r#type, t, "{}", m.kind());
            let wire = Body::decode(b.encode_to_vec().as_slice()).unwrap();
            assert_eq!(&decode_body(&wire).unwrap(), m);
        }
    }

    #[test]
    fn empty_credentials_mean_no_ice() {
        let b = Body {
            payload: ":".into(),
            ..Default::default()
        };
        match decode_body(&b).unwrap() {
            SignalMessage::Offer(oa) => assert!(oa.ice_disabled()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn colon_in_credentials_is_refused() {
        let m = SignalMessage::Offer(OfferAnswer {
            ufrag: "a:b".into(),
            ..offer()
        });
        assert_eq!(encode_body(&m), Err(EncodeError::ColonInCredentials));
    }

    #[test]
    fn session_id_of_other_lengths_is_absent() {
        for len in [0usize, 4, 6, 16] {
            let mut b = encode_body(&SignalMessage::Offer(offer())).unwrap();
            b.session_id = Some(vec![7; len]);
            match decode_body(&b).unwrap() {
                SignalMessage::Offer(oa) => assert_eq!(oa.session_id, None, "len {len}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn relay_ip_of_other_lengths_is_absent() {
        let mut b = encode_body(&SignalMessage::Answer(offer())).unwrap();
        b.relay_server_ip = Some(vec![1, 2, 3]);
        match decode_body(&b).unwrap() {
            SignalMessage::Answer(oa) => assert_eq!(oa.relay_server_ip, None),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let bad_payloads = ["nocolon", "a:b:c", ""];
        for p in bad_payloads {
            let b = Body {
                r#type: 1,
                payload: p.into(),
                ..Default::default()
            };
            assert_eq!(decode_body(&b), Err(DecodeError::BadCredentials), "{p:?}");
        }
        let b = Body {
            r#type: 3,
            ..Default::default()
        };
        assert_eq!(decode_body(&b), Err(DecodeError::UnknownType(3)));
        let b = Body {
            payload: "u:p".into(),
            wg_listen_port: 70000,
            ..Default::default()
        };
        assert_eq!(decode_body(&b), Err(DecodeError::BadPort(70000)));
    }

    #[test]
    fn seal_open_roundtrip() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        let em = seal(&SignalMessage::Offer(offer()), &b.public_key(), &a).unwrap();
        assert_eq!(em.key, a.public_key().to_base64());
        assert_eq!(em.remote_key, b.public_key().to_base64());
        let got = open(&em, &b).unwrap();
        assert_eq!(got.from, a.public_key());
        assert_eq!(got.message, SignalMessage::Offer(offer()));
    }

    #[test]
    fn undecryptable_and_garbage_are_errors() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        let c = PrivateKey::generate();
        let mut em = seal(&SignalMessage::GoIdle, &b.public_key(), &a).unwrap();
        // Claimed sender differs from the real one: the box does not open.
        em.key = c.public_key().to_base64();
        assert!(matches!(open(&em, &b), Err(DecodeError::Crypto(_))));
        // Tampered body.
        let mut em = seal(&SignalMessage::GoIdle, &b.public_key(), &a).unwrap();
        let last = em.body.len() - 1;
        em.body[last] ^= 1;
        assert_eq!(
            open(&em, &b),
            Err(DecodeError::Crypto(CryptoError::Decrypt))
        );
        // Too short.
        em.body = vec![0; 10];
        assert_eq!(
            open(&em, &b),
            Err(DecodeError::Crypto(CryptoError::TooShort(10)))
        );
        // Bad sender key text.
        em.key = "garbage".into();
        assert_eq!(open(&em, &b), Err(DecodeError::InvalidSender));
        // Not for us.
        let em = seal(&SignalMessage::GoIdle, &c.public_key(), &a).unwrap();
        assert_eq!(open(&em, &b), Err(DecodeError::NotForUs));
        // Opens, but the plaintext is not a Body.
        let body = crypto::seal(&[0xff, 0xff, 0xff], &b.public_key(), &a);
        let em = EncryptedMessage {
            key: a.public_key().to_base64(),
            remote_key: b.public_key().to_base64(),
            body,
        };
        assert!(matches!(
            open(&em, &b),
            Err(DecodeError::Crypto(CryptoError::Decode(_)))
        ));
    }

    #[test]
    fn self_addressed_heartbeat_opens() {
        let a = PrivateKey::generate();
        let em = seal(&SignalMessage::Heartbeat, &a.public_key(), &a).unwrap();
        assert_eq!(em.key, em.remote_key);
        assert_eq!(open(&em, &a).unwrap().message, SignalMessage::Heartbeat);
    }
}
