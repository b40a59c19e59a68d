//! Server key responses (`/_matrix/key/v2/server` and the notary's `/_matrix/key/v2/query`):
//! building this server's, verifying another server's, and notary signatures.
//!
//! A response is kept as canonical JSON, not re-serialized from a typed value: a notary must
//! hand out the origin's response exactly as signed (unknown fields included), with its own
//! signature added beside the origin's.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, ServerName,
    serde::Base64,
    signatures::{PublicKeyMap, sign_json, verify_json},
};

use crate::SigningKey;

/// Why another server's key response was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    #[error("the key response is not canonical JSON: {0}")]
    NotJson(String),
    #[error("the key response is for {found}, not {expected}")]
    WrongServer { expected: String, found: String },
    #[error("the key response lacks a valid `{0}`")]
    Missing(&'static str),
    #[error("the key response's key {0} is not a 32-byte base64 ed25519 key")]
    BadKey(String),
    #[error("the key response is not validly signed by {server}: {reason}")]
    BadSignature { server: String, reason: String },
}

/// A key this server used before, published in `old_verify_keys`.
#[derive(Debug, Clone)]
pub struct OldKey {
    /// `ed25519:VERSION`.
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    pub expired_ts: i64,
}

/// What a verified key response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKeys {
    pub server_name: String,
    pub valid_until_ts: i64,
    /// Key ID → public key: valid for requests and events until `valid_until_ts`.
    pub verify_keys: BTreeMap<String, Base64>,
    /// Key ID → (public key, `expired_ts`): valid only for events from before `expired_ts`.
    pub old_verify_keys: BTreeMap<String, (Base64, i64)>,
}

/// This server's key response, signed with `current`.
pub fn build(
    server_name: &ServerName,
    current: &SigningKey,
    old: &[OldKey],
    valid_until_ts: i64,
) -> CanonicalJsonObject {
    let mut verify_keys = CanonicalJsonObject::new();
    verify_keys.insert(
        current.key_id(),
        object([("key", current.public_key_base64().into())]).into(),
    );
    let mut old_verify_keys = CanonicalJsonObject::new();
    for key in old.iter().filter(|k| k.key_id != current.key_id()) {
        old_verify_keys.insert(
            key.key_id.clone(),
            object([
                ("key", key.public_key.clone().into()),
                ("expired_ts", int(key.expired_ts)),
            ])
            .into(),
        );
    }
    let mut response = object([
        ("server_name", server_name.as_str().into()),
        ("valid_until_ts", int(valid_until_ts)),
        ("verify_keys", verify_keys.into()),
        ("old_verify_keys", old_verify_keys.into()),
    ]);
    sign_json(server_name.as_str(), current.pair(), &mut response).expect("a JSON object can be signed");
    response
}

/// Parses a key response body (at most what the caller was willing to read).
pub fn parse(body: &[u8]) -> Result<CanonicalJsonObject, KeysError> {
    serde_json::from_slice(body).map_err(|e| KeysError::NotJson(e.to_string()))
}

/// Checks that `response` is `expected`'s own key response, signed by its own `verify_keys`
/// (every signature by one of them must verify, and there must be at least one), and reads it.
/// Whether it is still valid (`valid_until_ts`) is the caller's question.
pub fn verify(response: &CanonicalJsonObject, expected: &ServerName) -> Result<ServerKeys, KeysError> {
    let server_name = match response.get("server_name") {
        Some(CanonicalJsonValue::String(s)) => s.clone(),
        _ => return Err(KeysError::Missing("server_name")),
    };
    if server_name != expected.as_str() {
        return Err(KeysError::WrongServer {
            expected: expected.to_string(),
            found: server_name,
        });
    }
    let valid_until_ts = match response.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
        _ => return Err(KeysError::Missing("valid_until_ts")),
    };
    let verify_keys = match response.get("verify_keys") {
        Some(CanonicalJsonValue::Object(keys)) => read_keys(keys, |_| Some(0))?
            .into_iter()
            .map(|(id, (key, _))| (id, key))
            .collect::<BTreeMap<_, _>>(),
        _ => return Err(KeysError::Missing("verify_keys")),
    };
    let old_verify_keys = match response.get("old_verify_keys") {
        None => BTreeMap::new(),
        Some(CanonicalJsonValue::Object(keys)) => read_keys(keys, |o| match o.get("expired_ts") {
            Some(CanonicalJsonValue::Integer(i)) => Some(i64::from(*i)),
            _ => None,
        })?,
        Some(_) => return Err(KeysError::Missing("old_verify_keys")),
    };
    check_signature(response, expected.as_str(), &verify_keys)?;
    Ok(ServerKeys {
        server_name,
        valid_until_ts,
        verify_keys,
        old_verify_keys,
    })
}

/// Adds a notary's signature to a response it passes on (beside the origin's).
pub fn add_notary_signature(response: &mut CanonicalJsonObject, notary: &ServerName, key: &SigningKey) {
    sign_json(notary.as_str(), key.pair(), response).expect("a JSON object can be signed");
}

/// Checks `signer`'s signature on `response` with `keys` (key ID → public key): a notary's
/// signature with the keys the operator configured for it.
pub fn check_signature(
    response: &CanonicalJsonObject,
    signer: &str,
    keys: &BTreeMap<String, Base64>,
) -> Result<(), KeysError> {
    let bad = |reason: String| KeysError::BadSignature {
        server: signer.to_owned(),
        reason,
    };
    // Only the signer's signatures: ruma checks every entity in `signatures`.
    let mut only = response.clone();
    let theirs = match response.get("signatures") {
        Some(CanonicalJsonValue::Object(all)) => all.get(signer).cloned(),
        _ => None,
    }
    .ok_or_else(|| bad("no signature".into()))?;
    only.insert(
        "signatures".into(),
        CanonicalJsonValue::Object(CanonicalJsonObject::from([(signer.to_owned(), theirs)])),
    );
    let map: PublicKeyMap = BTreeMap::from([(signer.to_owned(), keys.clone())]);
    verify_json(&map, &only).map_err(|e| bad(e.to_string()))
}

fn read_keys(
    keys: &CanonicalJsonObject,
    expired_ts: impl Fn(&CanonicalJsonObject) -> Option<i64>,
) -> Result<BTreeMap<String, (Base64, i64)>, KeysError> {
    let mut out = BTreeMap::new();
    for (id, entry) in keys {
        // Only ed25519 keys can be used; keys of other algorithms are skipped.
        if !id.starts_with("ed25519:") {
            continue;
        }
        let CanonicalJsonValue::Object(entry) = entry else {
            return Err(KeysError::BadKey(id.clone()));
        };
        let key = match entry.get("key") {
            Some(CanonicalJsonValue::String(s)) => Base64::parse(s).ok().filter(|k| k.as_bytes().len() == 32),
            _ => None,
        }
        .ok_or_else(|| KeysError::BadKey(id.clone()))?;
        let ts = expired_ts(entry).ok_or_else(|| KeysError::BadKey(id.clone()))?;
        out.insert(id.clone(), (key, ts));
    }
    Ok(out)
}

/// A timestamp as canonical JSON (clamped to the integer range canonical JSON allows).
fn int(value: i64) -> CanonicalJsonValue {
    CanonicalJsonValue::Integer(ruma::Int::new_saturating(value))
}

fn object<const N: usize>(entries: [(&str, CanonicalJsonValue); N]) -> CanonicalJsonObject {
    entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &ServerName {
        <&ServerName>::try_from(s).unwrap()
    }

    #[test]
    fn a_built_response_verifies_and_lists_old_keys() {
        let old = SigningKey::generate("old").unwrap();
        let key = SigningKey::generate("new").unwrap();
        let olds = [OldKey {
            key_id: old.key_id(),
            public_key: old.public_key_base64(),
            expired_ts: 1000,
        }];
        let response = build(name("a.example"), &key, &olds, 5000);
        let bytes = serde_json::to_vec(&response).unwrap();
        let keys = verify(&parse(&bytes).unwrap(), name("a.example")).unwrap();
        assert_eq!(keys.valid_until_ts, 5000);
        assert_eq!(keys.verify_keys.keys().collect::<Vec<_>>(), ["ed25519:new"]);
        assert_eq!(keys.old_verify_keys["ed25519:old"].1, 1000);
        assert_eq!(
            keys.old_verify_keys["ed25519:old"].0.encode(),
            old.public_key_base64()
        );
        // The typed view agrees.
        let typed: ruma::api::federation::discovery::ServerSigningKeys =
            serde_json::from_slice(&bytes).unwrap();
        assert_eq!(typed.old_verify_keys.len(), 1);
    }

    #[test]
    fn a_response_for_another_server_is_refused() {
        let key = SigningKey::generate("k").unwrap();
        let response = build(name("a.example"), &key, &[], 5000);
        assert!(matches!(
            verify(&response, name("b.example")),
            Err(KeysError::WrongServer { .. })
        ));
    }

    #[test]
    fn a_changed_or_unsigned_response_is_refused() {
        let key = SigningKey::generate("k").unwrap();
        let mut response = build(name("a.example"), &key, &[], 5000);
        response.insert("valid_until_ts".into(), CanonicalJsonValue::Integer(9999.into()));
        assert!(matches!(
            verify(&response, name("a.example")),
            Err(KeysError::BadSignature { .. })
        ));
        response.remove("signatures");
        assert!(matches!(
            verify(&response, name("a.example")),
            Err(KeysError::BadSignature { .. })
        ));
        // Signed by a key it does not list.
        let other = SigningKey::generate("other").unwrap();
        let mut response = build(name("a.example"), &key, &[], 5000);
        let listed = build(name("a.example"), &other, &[], 5000);
        response.insert("verify_keys".into(), listed["verify_keys"].clone());
        assert!(matches!(
            verify(&response, name("a.example")),
            Err(KeysError::BadSignature { .. })
        ));
    }

    #[test]
    fn malformed_responses_are_refused() {
        assert!(matches!(parse(b"not json"), Err(KeysError::NotJson(_))));
        assert!(matches!(parse(b"{\"a\": 1.5}"), Err(KeysError::NotJson(_))));
        let key = SigningKey::generate("k").unwrap();
        let mut response = build(name("a.example"), &key, &[], 5000);
        response.insert(
            "verify_keys".into(),
            object([("ed25519:k", object([("key", "c2hvcnQ".into())]).into())]).into(),
        );
        assert_eq!(
            verify(&response, name("a.example")),
            Err(KeysError::BadKey("ed25519:k".into()))
        );
        let mut response = build(name("a.example"), &key, &[], 5000);
        response.remove("valid_until_ts");
        assert_eq!(
            verify(&response, name("a.example")),
            Err(KeysError::Missing("valid_until_ts"))
        );
    }

    #[test]
    fn a_notary_signature_is_checked_with_the_notarys_keys() {
        let key = SigningKey::generate("k").unwrap();
        let notary = SigningKey::generate("n").unwrap();
        let mut response = build(name("a.example"), &key, &[], 5000);
        add_notary_signature(&mut response, name("notary.example"), &notary);
        // The origin's signature still verifies on its own.
        verify(&response, name("a.example")).unwrap();
        let notary_keys = BTreeMap::from([(
            notary.key_id(),
            Base64::parse(notary.public_key_base64()).unwrap(),
        )]);
        check_signature(&response, "notary.example", &notary_keys).unwrap();
        let wrong = BTreeMap::from([(notary.key_id(), Base64::parse(key.public_key_base64()).unwrap())]);
        assert!(check_signature(&response, "notary.example", &wrong).is_err());
        assert!(check_signature(&response, "other.example", &notary_keys).is_err());
    }
}
