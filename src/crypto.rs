//! WireGuard key types and NetBird's `EncryptedMessage` sealing.
//!
//! NetBird encrypts every management and signal body with NaCl `crypto_box` (X25519, HSalsa20 key
//! derivation, XSalsa20-Poly1305) keyed by the two parties' WireGuard keys. The wire body is
//! `nonce(24) || tag(16) || ciphertext`: the nonce followed by libsodium's `crypto_box_easy`
//! output.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use crypto_box::aead::{Aead, AeadCore, OsRng};
use crypto_box::SalsaBox;
use std::fmt;
use std::str::FromStr;

/// Length of the random nonce that prefixes every sealed body.
pub const NONCE_LEN: usize = 24;
/// Bytes a sealed body adds to its plaintext (nonce + Poly1305 tag).
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

/// Errors from key parsing and message sealing/opening.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The text is not base64 of exactly 32 bytes.
    #[error("invalid WireGuard key: {0}")]
    InvalidKey(String),
    /// The body is shorter than its nonce.
    #[error("encrypted body too short ({0} bytes)")]
    TooShort(usize),
    /// Authentication failed: wrong key, tampering or garbage.
    #[error("could not decrypt message (wrong key or corrupted body)")]
    Decrypt,
    /// The plaintext did not decode as the expected protobuf message.
    #[error("malformed message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// A WireGuard public key (Curve25519), shown as standard base64 with padding (44 chars).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key as NetBird writes it everywhere: standard base64 with padding.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for PublicKey {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_key(s).map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard private key. Never printed: `Debug` and `Display` redact it.
#[derive(Clone)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh random key, clamped as `wg genkey` does.
    pub fn generate() -> Self {
        let secret = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
        PrivateKey(secret.to_bytes())
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PrivateKey(bytes)
    }

    /// Parses `wg genkey` output (standard base64 of 32 bytes).
    pub fn from_base64(s: &str) -> Result<Self, CryptoError> {
        decode_key(s).map(PrivateKey)
    }

    /// Base64 text for the config file. Callers must keep it out of logs.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Raw key bytes, for the WireGuard device.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

fn decode_key(s: &str) -> Result<[u8; 32], CryptoError> {
    let bytes = B64
        .decode(s.trim())
        .map_err(|_| CryptoError::InvalidKey("not base64".into()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| CryptoError::InvalidKey(format!("{} bytes, want 32", b.len())))
}

fn salsa_box(peer: &PublicKey, own: &PrivateKey) -> SalsaBox {
    SalsaBox::new(
        &crypto_box::PublicKey::from(peer.0),
        &crypto_box::SecretKey::from(own.0),
    )
}

/// Seals `plaintext` for `peer` with our key: `nonce || box`, a fresh random nonce each call.
pub fn seal(plaintext: &[u8], peer: &PublicKey, own: &PrivateKey) -> Vec<u8> {
    let nonce = SalsaBox::generate_nonce(&mut OsRng);
    seal_with_nonce(plaintext, peer, own, nonce.into())
}

/// Seals with a caller-chosen nonce; only for test vectors, never reuse a nonce in production.
pub fn seal_with_nonce(
    plaintext: &[u8],
    peer: &PublicKey,
    own: &PrivateKey,
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let sealed = salsa_box(peer, own)
        .encrypt(&nonce.into(), plaintext)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a `nonce || box` body sent by `peer` to us.
pub fn open(body: &[u8], peer: &PublicKey, own: &PrivateKey) -> Result<Vec<u8>, CryptoError> {
    if body.len() < NONCE_LEN {
        return Err(CryptoError::TooShort(body.len()));
    }
    let (nonce, sealed) = body.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Decrypt)?;
    salsa_box(peer, own)
        .decrypt(&nonce.into(), sealed)
        .map_err(|_| CryptoError::Decrypt)
}

/// Encodes a protobuf message and seals it.
pub fn seal_message<M: prost::Message>(msg: &M, peer: &PublicKey, own: &PrivateKey) -> Vec<u8> {
    seal(&msg.encode_to_vec(), peer, own)
}

/// Opens a body and decodes the protobuf message inside (unknown fields are skipped).
pub fn open_message<M: prost::Message + Default>(
    body: &[u8],
    peer: &PublicKey,
    own: &PrivateKey,
) -> Result<M, CryptoError> {
    let plain = open(body, peer, own)?;
    Ok(M::decode(plain.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_matches_known_pair() {
        let sk = PrivateKey::from_base64("lI/mA/YdwDa1xZbcCf484/PTDckPAkyF88gtssyrZ50=").unwrap();
        assert_eq!(
            sk.public_key().to_base64(),
            "NH42vYcGCVlEt60BKV4KaXevr1JQknXun2zsOQM9iA8="
        );
    }

    #[test]
    fn private_key_is_redacted_in_debug() {
        let sk = PrivateKey::generate();
        let shown = format!("{sk:?}");
        assert!(!shown.contains(&sk.to_base64()));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!("not base64!".parse::<PublicKey>().is_err());
        assert!("AAAA".parse::<PublicKey>().is_err());
    }

    #[test]
    fn seal_open_roundtrip_and_wrong_key() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        let c = PrivateKey::generate();
        let body = seal(b"hi", &b.public_key(), &a);
        assert_eq!(body.len(), 2 + SEAL_OVERHEAD);
        assert_eq!(open(&body, &a.public_key(), &b).unwrap(), b"hi");
        assert_eq!(open(&body, &c.public_key(), &b), Err(CryptoError::Decrypt));
    }
}
