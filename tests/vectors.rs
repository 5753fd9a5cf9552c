//! The shared NaCl box vectors (made with libsodium) must pass as given.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use netbird_agent::crypto::{self, PrivateKey, PublicKey};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/vectors/nacl_box.json"
    );
    let text = std::fs::read_to_string(path).expect("shared/vectors/nacl_box.json beside the repo");
    serde_json::from_str(&text).expect("valid JSON")
}

fn b64(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().expect("string")).expect("base64")
}

#[test]
fn keys_match() {
    let v = vectors();
    for who in ["client", "server"] {
        let sk =
            PrivateKey::from_base64(v[format!("{who}_private_b64")].as_str().unwrap()).unwrap();
        let pk: PublicKey = v[format!("{who}_public_b64")]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(sk.public_key(), pk, "{who}");
    }
}

#[test]
fn seal_matches_libsodium_and_opens_both_ways() {
    let v = vectors();
    let client = PrivateKey::from_base64(v["client_private_b64"].as_str().unwrap()).unwrap();
    let server = PrivateKey::from_base64(v["server_private_b64"].as_str().unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let plain = b64(&case["plaintext_b64"]);
        let nonce: [u8; 24] = b64(&case["nonce_b64"]).try_into().unwrap();
        let body = b64(&case["body_b64"]);
        let ours = crypto::seal_with_nonce(&plain, &server.public_key(), &client, nonce);
        assert_eq!(ours, body, "sealed body differs from libsodium's");
        assert_eq!(body.len(), plain.len() + crypto::SEAL_OVERHEAD);
        // The server opens with its private key and the client's public key ...
        assert_eq!(
            crypto::open(&body, &client.public_key(), &server).unwrap(),
            plain
        );
        // ... and the same shared key lets the client open what it sent.
        assert_eq!(
            crypto::open(&body, &server.public_key(), &client).unwrap(),
            plain
        );
    }
}

#[test]
fn must_fail_cases_are_rejected() {
    let v = vectors();
    let client = PrivateKey::from_base64(v["client_private_b64"].as_str().unwrap()).unwrap();
    let server = PrivateKey::from_base64(v["server_private_b64"].as_str().unwrap()).unwrap();
    let cases = v["must_fail"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let body = b64(&case["body_b64"]);
        assert!(
            crypto::open(&body, &client.public_key(), &server).is_err(),
            "{}",
            case["why"]
        );
    }
}
