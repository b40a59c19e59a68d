//! Signed device keys, one-time keys and cross-signing keys for the E2EE tests: real ed25519
//! signatures over canonical JSON, as a client makes them.
#![allow(dead_code)]

use ruma::{CanonicalJsonObject, signatures::to_canonical_json_string_for_signing};
use serde_json::{Value, json};
use vodozemac::Ed25519Keypair;

use crate::common::{Client, PASSWORD, Server};

/// Signs `object` as `user_id` with `key_id`, adding to its `signatures`.
pub fn sign(object: &mut Value, user_id: &str, key_id: &str, key: &Ed25519Keypair) {
    let canonical: CanonicalJsonObject = serde_json::from_value({
        let mut o = object.clone();
        o.as_object_mut().unwrap().remove("signatures");
        o.as_object_mut().unwrap().remove("unsigned");
        o
    })
    .unwrap();
    let text = to_canonical_json_string_for_signing(&canonical).unwrap();
    let signature = key.sign(text.as_bytes()).to_base64();
    let map = object.as_object_mut().unwrap();
    let sigs = map.entry("signatures").or_insert_with(|| json!({}));
    let by_user = sigs
        .as_object_mut()
        .unwrap()
        .entry(user_id.to_owned())
        .or_insert_with(|| json!({}));
    by_user[key_id] = Value::String(signature);
}

/// A device's keys (ed25519 signing, curve25519 identity), held by the test.
pub struct Device {
    pub user_id: String,
    pub device_id: String,
    pub ed25519: Ed25519Keypair,
    /// The curve25519 identity key (public, base64); fixed so `device_keys` is the same each time.
    pub curve25519: String,
}

impl Device {
    pub fn new(client: &Client) -> Self {
        Self {
            user_id: client.user_id.clone(),
            device_id: client.device_id.clone(),
            ed25519: Ed25519Keypair::new(),
            curve25519: curve25519(),
        }
    }

    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.device_id)
    }

    /// The self-signed `device_keys` object.
    pub fn device_keys(&self) -> Value {
        let mut keys = json!({
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                self.key_id(): self.ed25519.public_key().to_base64(),
                format!("curve25519:{}", self.device_id): self.curve25519,
            },
        });
        sign(&mut keys, &self.user_id, &self.key_id(), &self.ed25519);
        keys
    }

    /// `n` signed curve25519 one-time keys with IDs `<prefix><i>`.
    pub fn one_time_keys(&self, prefix: &str, n: usize) -> Value {
        let mut keys = serde_json::Map::new();
        for i in 0..n {
            keys.insert(format!("signed_curve25519:{prefix}{i}"), self.signed_key(false));
        }
        Value::Object(keys)
    }

    pub fn signed_key(&self, fallback: bool) -> Value {
        let curve = vodozemac::Curve25519SecretKey::new();
        let mut key = json!({ "key": vodozemac::Curve25519PublicKey::from(&curve).to_base64() });
        if fallback {
            key["fallback"] = json!(true);
        }
        sign(&mut key, &self.user_id, &self.key_id(), &self.ed25519);
        key
    }
}

/// A fresh curve25519 public key, base64.
pub fn curve25519() -> String {
    vodozemac::Curve25519PublicKey::from(&vodozemac::Curve25519SecretKey::new()).to_base64()
}

/// A cross-signing key of `usage` for `user_id`, signed by `signer` when given.
pub fn cross_signing_key(
    user_id: &str,
    usage: &str,
    key: &Ed25519Keypair,
    signer: Option<&Ed25519Keypair>,
) -> Value {
    let public = key.public_key().to_base64();
    let mut object = json!({
        "user_id": user_id,
        "usage": [usage],
        "keys": { format!("ed25519:{public}"): public },
    });
    if let Some(signer) = signer {
        let id = format!("ed25519:{}", signer.public_key().to_base64());
        sign(&mut object, user_id, &id, signer);
    }
    object
}

/// The UIA password stage for `localpart`.
pub fn password_auth(localpart: &str, session: Option<&str>) -> Value {
    let mut auth = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": localpart },
        "password": PASSWORD,
    });
    if let Some(session) = session {
        auth["session"] = json!(session);
    }
    auth
}

/// Logs `localpart` in again: a second device.
pub async fn login(server: &Server, localpart: &str) -> Client {
    let resp = server
        .anon()
        .ok(
            reqwest::Method::POST,
            "/login",
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": localpart },
                "password": PASSWORD,
            })),
        )
        .await;
    server.client_with_token(
        resp["user_id"].as_str().unwrap(),
        resp["device_id"].as_str().unwrap(),
        resp["access_token"].as_str().unwrap(),
    )
}
