//! Minimal JWT handling. The client only checks shape and audience (NetBird's client does not
//! verify signatures; the server does). The testbed signs and verifies EdDSA (Ed25519) tokens.
//! Written here rather than with a JWT crate because the client needs only unverified claim
//! parsing and the testbed a single algorithm.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde_json::Value;

/// JWT problems.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("the token is not a JWT")]
    Malformed,
    /// `aud` does not contain the expected audience.
    #[error("the token's audience does not include {0:?}")]
    Audience(String),
    /// Bad signature.
    #[error("the token's signature is invalid")]
    Signature,
    /// `exp` in the past or missing.
    #[error("the token has expired or has no expiration")]
    Expired,
}

/// The claims of a JWT, without checking its signature.
pub fn claims_unverified(token: &str) -> Result<Value, JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::Malformed);
    }
    let payload = B64URL.decode(parts[1]).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed)
}

/// True if the `aud` claim (string or array) contains `audience`.
pub fn has_audience(claims: &Value, audience: &str) -> bool {
    match &claims["aud"] {
        Value::String(s) => s == audience,
        Value::Array(a) => a.iter().any(|v| v.as_str() == Some(audience)),
        _ => false,
    }
}

/// Checks what NetBird's client checks: a 3-part JWT whose audience contains `audience`.
pub fn check_token_audience(token: &str, audience: &str) -> Result<Value, JwtError> {
    let claims = claims_unverified(token)?;
    if audience.is_empty() || has_audience(&claims, audience) {
        Ok(claims)
    } else {
        Err(JwtError::Audience(audience.into()))
    }
}

/// Signs `claims` with EdDSA.
pub fn sign_eddsa(claims: &Value, key: &ed25519_dalek::SigningKey, kid: &str) -> String {
    use ed25519_dalek::Signer;
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", B64URL.encode(sig.to_bytes()))
}

/// Verifies an EdDSA JWT's signature, audience and expiry (`now` in Unix seconds).
pub fn verify_eddsa(
    token: &str,
    key: &ed25519_dalek::VerifyingKey,
    audience: &str,
    now: u64,
) -> Result<Value, JwtError> {
    let (input, sig) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let sig = B64URL.decode(sig).map_err(|_| JwtError::Malformed)?;
    let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| JwtError::Signature)?;
    key.verify_strict(input.as_bytes(), &sig)
        .map_err(|_| JwtError::Signature)?;
    let claims = check_token_audience(token, audience)?;
    match claims["exp"].as_u64() {
        Some(exp) if exp > now => Ok(claims),
        _ => Err(JwtError::Expired),
    }
}

/// The JWKS document publishing an Ed25519 public key.
pub fn jwks(key: &ed25519_dalek::VerifyingKey, kid: &str) -> Value {
    serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": B64URL.encode(key.to_bytes())}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject() {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let claims = serde_json::json!({"aud": ["netbird", "other"], "exp": 2000, "sub": "u1"});
        let t = sign_eddsa(&claims, &key, "k1");
        assert_eq!(
            verify_eddsa(&t, &key.verifying_key(), "netbird", 1000).unwrap()["sub"],
            "u1"
        );
        assert_eq!(
            verify_eddsa(&t, &key.verifying_key(), "wrong", 1000),
            Err(JwtError::Audience("wrong".into()))
        );
        assert_eq!(
            verify_eddsa(&t, &key.verifying_key(), "netbird", 3000),
            Err(JwtError::Expired)
        );
        let other = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        assert_eq!(
            verify_eddsa(&t, &other.verifying_key(), "netbird", 1000),
            Err(JwtError::Signature)
        );
        let mut tampered = t.clone();
        tampered.insert(t.find('.').unwrap() + 2, 'A');
        assert!(verify_eddsa(&tampered, &key.verifying_key(), "netbird", 1000).is_err());
        assert_eq!(claims_unverified("a.b"), Err(JwtError::Malformed));
        assert!(check_token_audience(&t, "other").is_ok());
    }
}
