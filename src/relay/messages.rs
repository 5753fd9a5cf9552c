//! NetBird relay wire format (pure): peer ids and message framing.
//!
//! Every message is `version(0x01) || type || body`, one per WebSocket binary message.
//! Facts: `shared/protocol/data-plane.md` section 4.2-4.4.

use crate::crypto::PublicKey;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;

/// Protocol version byte.
pub const VERSION: u8 = 1;
/// Largest relay message.
pub const MAX_MESSAGE: usize = 8820;
/// Largest auth (handshake) message.
pub const MAX_HANDSHAKE: usize = 212;
/// Largest auth response.
pub const MAX_AUTH_RESPONSE: usize = 8192;
/// Length of a peer id.
pub const PEER_ID_LEN: usize = 36;
/// Magic bytes after the header of an auth message.
pub const AUTH_MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// Header bytes before a transport payload.
pub const TRANSPORT_HEADER: usize = 2 + PEER_ID_LEN;
/// Most peer ids one subscribe/online/offline message carries.
pub const MAX_IDS_PER_MESSAGE: usize = (MAX_MESSAGE - 2) / PEER_ID_LEN;

/// Message types (byte 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    /// Transport: `peerID(36) || payload`.
    Transport = 3,
    /// Close (graceful exit).
    Close = 4,
    /// Health check (server sends, client echoes).
    HealthCheck = 5,
    /// Auth: `magic || own peerID || token`.
    Auth = 6,
    /// Auth response: the server's instance URL.
    AuthResponse = 7,
    /// Subscribe to peer state: `peerID x n`.
    SubscribePeerState = 8,
    /// Unsubscribe from peer state: `peerID x n`.
    UnsubscribePeerState = 9,
    /// Peers online: `peerID x n`.
    PeersOnline = 10,
    /// Peers went offline: `peerID x n`.
    PeersWentOffline = 11,
}

/// A relay peer id: `"sha-" || SHA-256(base64 public key text)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; PEER_ID_LEN]);

impl PeerId {
    /// The id of a WireGuard public key (hashes its 44-character base64 text).
    pub fn from_public_key(key: &PublicKey) -> Self {
        Self::from_key_text(&key.to_base64())
    }

    /// The id of a key given as text, exactly as written.
    pub fn from_key_text(text: &str) -> Self {
        let mut id = [0u8; PEER_ID_LEN];
        id[..4].copy_from_slice(b"sha-");
        id[4..].copy_from_slice(&Sha256::digest(text.as_bytes()));
        PeerId(id)
    }

    /// Parses 36 raw bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; PEER_ID_LEN]>::try_from(b).ok().map(PeerId)
    }

    /// Raw bytes.
    pub fn as_bytes(&self) -> &[u8; PEER_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for PeerId {
    /// Shown as upstream logs it: `sha-` + base64 of the hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha-{}", B64.encode(&self.0[4..]))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// Framing errors (malformed input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than its header.
    #[error("relay message too short ({0} bytes)")]
    TooShort(usize),
    /// Unknown protocol version.
    #[error("unsupported relay protocol version {0}")]
    Version(u8),
    /// A type not valid in this direction.
    #[error("unexpected relay message type {0}")]
    Type(u8),
    /// Auth message without the magic bytes.
    #[error("invalid auth magic")]
    Magic,
    /// A peer-id list whose length is not a multiple of 36.
    #[error("invalid peer id list length {0}")]
    IdList(usize),
    /// Too large to send.
    #[error("relay message too large ({0} bytes)")]
    TooLarge(usize),
    /// Auth response with an empty or non-UTF-8 URL.
    #[error("invalid instance URL in auth response")]
    InstanceUrl,
}

/// A message the server sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    /// Auth accepted; the server's instance URL.
    AuthResponse(String),
    /// Data from peer `from`.
    Transport {
        /// Sender (rewritten by the server).
        from: PeerId,
        /// Payload.
        payload: &'a [u8],
    },
    /// The server is closing.
    Close,
    /// Health check; echo it.
    HealthCheck,
    /// Subscribed peers that are (or came) online.
    PeersOnline(Vec<PeerId>),
    /// Subscribed peers that went offline.
    PeersWentOffline(Vec<PeerId>),
}

/// A message a client sends to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    /// Authentication, first message.
    Auth {
        /// The client's own id.
        peer: PeerId,
        /// Opaque token bytes.
        token: &'a [u8],
    },
    /// Data for peer `to`.
    Transport {
        /// Destination.
        to: PeerId,
        /// Payload.
        payload: &'a [u8],
    },
    /// Graceful exit.
    Close,
    /// Health check echo.
    HealthCheck,
    /// Subscribe to peers' state.
    Subscribe(Vec<PeerId>),
    /// Unsubscribe from peers' state.
    Unsubscribe(Vec<PeerId>),
}

fn header(buf: &[u8]) -> Result<u8, FrameError> {
    if buf.len() < 2 {
        return Err(FrameError::TooShort(buf.len()));
    }
    if buf[0] != VERSION {
        return Err(FrameError::Version(buf[0]));
    }
    Ok(buf[1])
}

fn ids(body: &[u8]) -> Result<Vec<PeerId>, FrameError> {
    if !body.len().is_multiple_of(PEER_ID_LEN) {
        return Err(FrameError::IdList(body.len()));
    }
    Ok(body
        .chunks_exact(PEER_ID_LEN)
        .filter_map(PeerId::from_slice)
        .collect())
}

fn transport_id(buf: &[u8]) -> Result<PeerId, FrameError> {
    buf.get(2..TRANSPORT_HEADER)
        .and_then(PeerId::from_slice)
        .ok_or(FrameError::TooShort(buf.len()))
}

/// Parses a server-to-client message.
pub fn parse_server(buf: &[u8]) -> Result<ServerMsg<'_>, FrameError> {
    let t = header(buf)?;
    let body = &buf[2..];
    Ok(match t {
        3 => ServerMsg::Transport {
            from: transport_id(buf)?,
            payload: &buf[TRANSPORT_HEADER..],
        },
        4 => ServerMsg::Close,
        5 => ServerMsg::HealthCheck,
        7 => {
            let url = std::str::from_utf8(body).map_err(|_| FrameError::InstanceUrl)?;
            if url.is_empty() {
                return Err(FrameError::InstanceUrl);
            }
            ServerMsg::AuthResponse(url.to_string())
        }
        10 => ServerMsg::PeersOnline(ids(body)?),
        11 => ServerMsg::PeersWentOffline(ids(body)?),
        other => return Err(FrameError::Type(other)),
    })
}

/// Parses a client-to-server message.
pub fn parse_client(buf: &[u8]) -> Result<ClientMsg<'_>, FrameError> {
    let t = header(buf)?;
    let body = &buf[2..];
    Ok(match t {
        3 => ClientMsg::Transport {
            to: transport_id(buf)?,
            payload: &buf[TRANSPORT_HEADER..],
        },
        4 => ClientMsg::Close,
        5 => ClientMsg::HealthCheck,
        6 => {
            if body.len() < 4 + PEER_ID_LEN {
                return Err(FrameError::TooShort(buf.len()));
            }
            if body[..4] != AUTH_MAGIC {
                return Err(FrameError::Magic);
            }
            let peer = PeerId::from_slice(&body[4..4 + PEER_ID_LEN])
                .ok_or(FrameError::TooShort(buf.len()))?;
            ClientMsg::Auth {
                peer,
                token: &body[4 + PEER_ID_LEN..],
            }
        }
        8 => ClientMsg::Subscribe(ids(body)?),
        9 => ClientMsg::Unsubscribe(ids(body)?),
        other => return Err(FrameError::Type(other)),
    })
}

/// The auth message: `01 06 || magic || own id || token` (at most 212 bytes).
pub fn auth(peer: &PeerId, token: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = 2 + AUTH_MAGIC.len() + PEER_ID_LEN + token.len();
    if len > MAX_HANDSHAKE {
        return Err(FrameError::TooLarge(len));
    }
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&[VERSION, MsgType::Auth as u8]);
    m.extend_from_slice(&AUTH_MAGIC);
    m.extend_from_slice(&peer.0);
    m.extend_from_slice(token);
    Ok(m)
}

/// The auth response carrying `instance_url`.
pub fn auth_response(instance_url: &str) -> Result<Vec<u8>, FrameError> {
    let len = 2 + instance_url.len();
    if len > MAX_AUTH_RESPONSE {
        return Err(FrameError::TooLarge(len));
    }
    let mut m = vec![VERSION, MsgType::AuthResponse as u8];
    m.extend_from_slice(instance_url.as_bytes());
    Ok(m)
}

/// A transport message to (client side) or from (server side) `peer`.
pub fn transport(peer: &PeerId, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(TRANSPORT_HEADER + payload.len());
    m.extend_from_slice(&[VERSION, MsgType::Transport as u8]);
    m.extend_from_slice(&peer.0);
    m.extend_from_slice(payload);
    m
}

/// Overwrites the peer id of a transport message in place (the server's sender rewrite).
pub fn rewrite_transport_id(msg: &mut [u8], peer: &PeerId) -> Result<(), FrameError> {
    let len = msg.len();
    msg.get_mut(2..TRANSPORT_HEADER)
        .ok_or(FrameError::TooShort(len))?
        .copy_from_slice(&peer.0);
    Ok(())
}

/// The health check message `01 05`.
pub fn health_check() -> Vec<u8> {
    vec![VERSION, MsgType::HealthCheck as u8]
}

/// The close message `01 04`.
pub fn close() -> Vec<u8> {
    vec![VERSION, MsgType::Close as u8]
}

/// Peer-id list messages (subscribe, unsubscribe, online, offline), split to fit the size limit.
pub fn id_list(ty: MsgType, ids: &[PeerId]) -> Vec<Vec<u8>> {
    ids.chunks(MAX_IDS_PER_MESSAGE)
        .map(|chunk| {
            let mut m = Vec::with_capacity(2 + chunk.len() * PEER_ID_LEN);
            m.extend_from_slice(&[VERSION, ty as u8]);
            for id in chunk {
                m.extend_from_slice(&id.0);
            }
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_display_is_base64_of_hash() {
        let id = PeerId::from_key_text("0zZcx+wEq5YV8LnFok6F3GYfFgK3MRE6JGx+hVyeZTk=");
        let shown = id.to_string();
        assert!(shown.starts_with("sha-"));
        assert_eq!(B64.decode(&shown[4..]).unwrap(), &id.0[4..]);
    }

    #[test]
    fn framing_roundtrips() {
        let a = PeerId::from_key_text("a");
        let b = PeerId::from_key_text("b");
        let m = auth(&a, b"tok").unwrap();
        assert_eq!(
            parse_client(&m).unwrap(),
            ClientMsg::Auth {
                peer: a,
                token: b"tok"
            }
        );
        let mut t = transport(&b, b"data");
        assert_eq!(
            parse_client(&t).unwrap(),
            ClientMsg::Transport {
                to: b,
                payload: b"data"
            }
        );
        rewrite_transport_id(&mut t, &a).unwrap();
        assert_eq!(
            parse_server(&t).unwrap(),
            ServerMsg::Transport {
                from: a,
                payload: b"data"
            }
        );
        let r = auth_response("rels://relay.example:443").unwrap();
        assert_eq!(
            parse_server(&r).unwrap(),
            ServerMsg::AuthResponse("rels://relay.example:443".into())
        );
        let l = id_list(MsgType::PeersOnline, &[a, b]);
        assert_eq!(l.len(), 1);
        assert_eq!(
            parse_server(&l[0]).unwrap(),
            ServerMsg::PeersOnline(vec![a, b])
        );
        let l = id_list(MsgType::SubscribePeerState, &[b]);
        assert_eq!(parse_client(&l[0]).unwrap(), ClientMsg::Subscribe(vec![b]));
        assert_eq!(
            parse_server(&health_check()).unwrap(),
            ServerMsg::HealthCheck
        );
        assert_eq!(parse_client(&close()).unwrap(), ClientMsg::Close);
    }

    #[test]
    fn id_lists_split_at_244() {
        assert_eq!(MAX_IDS_PER_MESSAGE, 244);
        let many: Vec<PeerId> = (0..500)
            .map(|i| PeerId::from_key_text(&i.to_string()))
            .collect();
        let msgs = id_list(MsgType::PeersWentOffline, &many);
        assert_eq!(msgs.len(), 3);
        assert!(msgs.iter().all(|m| m.len() <= MAX_MESSAGE));
        let mut back = Vec::new();
        for m in &msgs {
            match parse_server(m).unwrap() {
                ServerMsg::PeersWentOffline(ids) => back.extend(ids),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(back, many);
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(parse_server(&[]), Err(FrameError::TooShort(0)));
        assert_eq!(parse_server(&[1]), Err(FrameError::TooShort(1)));
        assert_eq!(parse_server(&[2, 5]), Err(FrameError::Version(2)));
        assert_eq!(parse_server(&[1, 1]), Err(FrameError::Type(1)));
        assert_eq!(parse_server(&[1, 6]), Err(FrameError::Type(6)));
        assert_eq!(parse_client(&[1, 7]), Err(FrameError::Type(7)));
        assert_eq!(parse_server(&[1, 3, 0, 0]), Err(FrameError::TooShort(4)));
        assert_eq!(parse_server(&[1, 10, 0]), Err(FrameError::IdList(1)));
        assert_eq!(parse_server(&[1, 7]), Err(FrameError::InstanceUrl));
        assert_eq!(parse_server(&[1, 7, 0xff]), Err(FrameError::InstanceUrl));
        let mut bad = auth(&PeerId::from_key_text("a"), b"t").unwrap();
        bad[2] = 0;
        assert_eq!(parse_client(&bad), Err(FrameError::Magic));
        assert_eq!(parse_client(&[1, 6, 0x21]), Err(FrameError::TooShort(3)));
        assert!(matches!(
            auth(&PeerId::from_key_text("a"), &[0; 200]),
            Err(FrameError::TooLarge(_))
        ));
    }
}
