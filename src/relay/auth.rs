//! Relay auth tokens (pure): the HMAC-SHA256 token management hands out in
//! `NetbirdConfig.relay`, its wire form, and the server-side check.
//!
//! Token on the wire: `0x01 (HMAC-SHA256) || signature(32) || payload`, where payload is the
//! decimal Unix expiry time and signature = HMAC-SHA256(key = SHA256(secret), payload).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

/// Algorithm byte for HMAC-SHA256.
pub const ALGO_HMAC_SHA256: u8 = 1;
const SIG_LEN: usize = 32;
const MIN_PAYLOAD_LEN: usize = 10;

/// The relay credentials from `NetbirdConfig.relay` (both fields opaque to the client).
#[derive(Clone, PartialEq, Eq)]
pub struct RelayToken {
    /// `tokenPayload`: decimal expiry time.
    pub payload: String,
    /// `tokenSignature`: base64 HMAC.
    pub signature: String,
}

impl fmt::Debug for RelayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The signature is a bearer credential: keep it out of logs.
        write!(f, "RelayToken(expires {}, <redacted>)", self.payload)
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// `tokenSignature` is not base64.
    #[error("relay token signature is not base64")]
    SignatureEncoding,
    /// Empty token or unknown algorithm byte.
    #[error("unsupported relay token algorithm")]
    Algorithm,
    /// Too short for its signature or payload.
    #[error("relay token too short")]
    TooShort,
    /// The HMAC does not match.
    #[error("invalid relay token signature")]
    Signature,
    /// The payload is not a decimal time.
    #[error("invalid relay token payload")]
    Payload,
    /// The expiry time has passed.
    #[error("relay token expired")]
    Expired,
}

impl RelayToken {
    /// The token bytes sent in the auth message.
    pub fn to_wire(&self) -> Result<Vec<u8>, AuthError> {
        let sig = B64
            .decode(self.signature.trim())
            .map_err(|_| AuthError::SignatureEncoding)?;
        let mut t = Vec::with_capacity(1 + sig.len() + self.payload.len());
        t.push(ALGO_HMAC_SHA256);
        t.extend_from_slice(&sig);
        t.extend_from_slice(self.payload.as_bytes());
        Ok(t)
    }
}

fn mac(secret: &str, payload: &[u8]) -> Hmac<Sha256> {
    let key = Sha256::digest(secret.as_bytes());
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(payload);
    m
}

/// Mints a token expiring at `expires_unix` (what management does with the relay secret).
pub fn mint(secret: &str, expires_unix: u64) -> RelayToken {
    let payload = expires_unix.to_string();
    let sig = mac(secret, payload.as_bytes()).finalize().into_bytes();
    RelayToken {
        payload,
        signature: B64.encode(sig),
    }
}

/// Checks wire token bytes against `secret` at time `now_unix` (what the relay server does).
pub fn validate(secret: &str, token: &[u8], now_unix: u64) -> Result<(), AuthError> {
    let (&algo, rest) = token.split_first().ok_or(AuthError::Algorithm)?;
    if algo != ALGO_HMAC_SHA256 {
        return Err(AuthError::Algorithm);
    }
    if rest.len() < SIG_LEN {
        return Err(AuthError::TooShort);
    }
    let (sig, payload) = rest.split_at(SIG_LEN);
    if payload.len() < MIN_PAYLOAD_LEN {
        return Err(AuthError::TooShort);
    }
    mac(secret, payload)
        .verify_slice(sig)
        .map_err(|_| AuthError::Signature)?;
    let expiry: u64 = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(AuthError::Payload)?;
    if now_unix > expiry {
        return Err(AuthError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_validate_and_reject() {
        let t = mint("s3cret", 2_000_000_000);
        let wire = t.to_wire().unwrap();
        assert_eq!(validate("s3cret", &wire, 1_999_999_999), Ok(()));
        assert_eq!(
            validate("s3cret", &wire, 2_000_000_001),
            Err(AuthError::Expired)
        );
        assert_eq!(
            validate("other", &wire, 1_000_000_000),
            Err(AuthError::Signature)
        );
        let mut bad = wire.clone();
        bad[0] = 2;
        assert_eq!(validate("s3cret", &bad, 0), Err(AuthError::Algorithm));
        assert_eq!(validate("s3cret", &[], 0), Err(AuthError::Algorithm));
        assert_eq!(validate("s3cret", &wire[..20], 0), Err(AuthError::TooShort));
        let mut tampered = wire.clone();
        let last = tampered.len() - 1;
        tampered[last] = b'9';
        assert_eq!(validate("s3cret", &tampered, 0), Err(AuthError::Signature));
    }

    #[test]
    fn debug_hides_the_signature() {
        let t = mint("s3cret", 2_000_000_000);
        assert!(!format!("{t:?}").contains(&t.signature));
    }
}
