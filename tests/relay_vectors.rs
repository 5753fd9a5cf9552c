//! The shared relay vectors (`shared/vectors/relay.json`), as given: must pass.

use netbird_agent::crypto::PublicKey;
use netbird_agent::relay::auth::{self, RelayToken};
use netbird_agent::relay::messages::{self, PeerId};

fn vectors() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors/relay.json");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("relay vectors missing at {path}: {e}"));
    serde_json::from_str(&text).expect("relay vectors are JSON")
}

fn hex_of(v: &serde_json::Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn peer_key(v: &serde_json::Value, i: usize) -> PublicKey {
    v["peers"][i]["wg_public_b64"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn peer_ids_match() {
    let v = vectors();
    let peers = v["peers"].as_array().unwrap();
    assert!(!peers.is_empty());
    for p in peers {
        let key: PublicKey = p["wg_public_b64"].as_str().unwrap().parse().unwrap();
        let id = PeerId::from_public_key(&key);
        assert_eq!(id.as_bytes().to_vec(), hex_of(&p["relay_peer_id_hex"]));
    }
}

#[test]
fn auth_message_matches() {
    let v = vectors();
    let token = RelayToken {
        payload: v["relay_config"]["tokenPayload"].as_str().unwrap().into(),
        signature: v["relay_config"]["tokenSignature"].as_str().unwrap().into(),
    };
    let id = PeerId::from_public_key(&peer_key(&v, 0));
    let msg = messages::auth(&id, &token.to_wire().unwrap()).unwrap();
    assert_eq!(msg, hex_of(&v["auth_message_from_peer0_hex"]));
}

#[test]
fn token_signature_matches_the_lab_secret() {
    let v = vectors();
    let payload: u64 = v["relay_config"]["tokenPayload"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let minted = auth::mint("lab-relay-secret", payload);
    assert_eq!(
        minted.signature,
        v["relay_config"]["tokenSignature"].as_str().unwrap()
    );
    // And the server-side check accepts it before expiry and refuses it after.
    let wire = minted.to_wire().unwrap();
    assert_eq!(auth::validate("lab-relay-secret", &wire, payload), Ok(()));
    assert_eq!(
        auth::validate("lab-relay-secret", &wire, payload + 1),
        Err(auth::AuthError::Expired)
    );
}

#[test]
fn transport_health_and_close_match() {
    let v = vectors();
    let id = PeerId::from_public_key(&peer_key(&v, 1));
    assert_eq!(
        messages::transport(&id, b"wireguard datagram"),
        hex_of(&v["transport_to_peer1_hex"])
    );
    assert_eq!(messages::health_check(), hex_of(&v["health_check_hex"]));
    assert_eq!(messages::close(), hex_of(&v["close_hex"]));
}
