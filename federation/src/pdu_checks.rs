//! The checks on a received PDU that need no state: its format for the room version, the
//! signatures of the servers that must sign it (keys passed in), and its content hash (a
//! mismatch means the event is kept redacted, not refused). Server-Server API §"Checks
//! performed on receipt of a PDU", steps 1 and 2.

use std::collections::BTreeSet;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedServerName,
    canonical_json::redact,
    room_version_rules::RoomVersionRules,
    signatures::{PublicKeyMap, Verified, required_server_signatures_to_verify_event, verify_event},
};
use serde_json::value::RawValue;

use crate::pdu::{MAX_PDU_BYTES, Pdu, PduError, event_id_of};

/// Most `prev_events` a received PDU may name (Synapse's and Hearth's bound).
pub const MAX_PREV_EVENTS: usize = 20;
/// Most `auth_events` a received PDU may name.
pub const MAX_AUTH_EVENTS: usize = 10;
/// Largest depth a PDU may carry (canonical JSON integers stop at 2^53 - 1).
const MAX_DEPTH: u64 = (1 << 53) - 1;

/// A PDU that passed the state-free checks.
#[derive(Debug, Clone)]
pub struct Checked {
    pub pdu: Pdu,
    /// The content hash did not match: the event is the redacted form of what was sent.
    pub redacted: bool,
}

/// Reads a received PDU as a canonical JSON object, without the fields a server must not trust
/// from the sender (`unsigned`, a v1-style `event_id`).
pub fn parse(raw: &RawValue) -> Result<CanonicalJsonObject, PduError> {
    if raw.get().len() > MAX_PDU_BYTES {
        return Err(PduError::TooLarge);
    }
    let mut object: CanonicalJsonObject =
        serde_json::from_str(raw.get()).map_err(|e| PduError::Json(e.to_string()))?;
    object.remove("unsigned");
    object.remove("event_id");
    Ok(object)
}

/// The servers whose signatures the event needs, each with the key IDs it signed with: the keys
/// a caller must look up before [`check`].
pub fn keys_needed(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<Vec<(OwnedServerName, Vec<String>)>, PduError> {
    let servers: BTreeSet<OwnedServerName> =
        required_server_signatures_to_verify_event(object, &rules.signatures)
            .map_err(|e| PduError::Json(e.to_string()))?;
    let signatures = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(s)) => s,
        _ => return Err(PduError::Field("signatures")),
    };
    Ok(servers
        .into_iter()
        .map(|server| {
            let key_ids = match signatures.get(server.as_str()) {
                Some(CanonicalJsonValue::Object(keys)) => keys
                    .keys()
                    .filter(|k| k.starts_with("ed25519:"))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            (server, key_ids)
        })
        .collect())
}

/// The format, signature and hash checks. A bad format or a missing or forged signature is an
/// error (the event is dropped); a content hash mismatch gives the redacted event.
pub fn check(
    mut object: CanonicalJsonObject,
    rules: &RoomVersionRules,
    keys: &PublicKeyMap,
) -> Result<Checked, PduError> {
    check_format(&object, rules)?;
    let verified = verify_event(keys, &object, rules).map_err(|e| PduError::Signing(e.to_string()))?;
    let redacted = verified == Verified::Signatures;
    if redacted {
        object = redact(object, &rules.redaction, None).map_err(|e| PduError::Json(e.to_string()))?;
    }
    let event_id = event_id_of(&object, rules)?;
    let pdu = Pdu::from_parts(event_id, object)?;
    Ok(Checked { pdu, redacted })
}

/// The fields a PDU of this room version must have, with their types and bounds.
fn check_format(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<(), PduError> {
    if serde_json::to_vec(object).map(|v| v.len()).unwrap_or(usize::MAX) > MAX_PDU_BYTES {
        return Err(PduError::TooLarge);
    }
    let string = |key: &'static str| match object.get(key) {
        Some(CanonicalJsonValue::String(s)) => Ok(s.as_str()),
        _ => Err(PduError::Field(key)),
    };
    let event_type = string("type")?;
    string("sender")?;
    let is_create = event_type == "m.room.create" && object.get("state_key").is_some();
    // Room version 12's create event has no room ID: the room ID is its hash.
    if is_create && rules.authorization.room_create_event_id_as_room_id {
        if object.contains_key("room_id") {
            return Err(PduError::Field("room_id"));
        }
    } else {
        string("room_id")?;
    }
    let count = |key: &'static str, max: usize| match object.get(key) {
        Some(CanonicalJsonValue::Array(a)) if a.len() <= max => Ok(()),
        _ => Err(PduError::Field(key)),
    };
    count("prev_events", MAX_PREV_EVENTS)?;
    count("auth_events", MAX_AUTH_EVENTS)?;
    match object.get("depth") {
        Some(CanonicalJsonValue::Integer(d)) if (0..=MAX_DEPTH as i64).contains(&i64::from(*d)) => {}
        _ => return Err(PduError::Field("depth")),
    }
    match object.get("hashes") {
        Some(CanonicalJsonValue::Object(h))
            if matches!(h.get("sha256"), Some(CanonicalJsonValue::String(_))) => {}
        _ => return Err(PduError::Field("hashes")),
    }
    if let Some(state_key) = object.get("state_key")
        && !matches!(state_key, CanonicalJsonValue::String(_))
    {
        return Err(PduError::Field("state_key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ruma::{
        MilliSecondsSinceUnixEpoch, RoomVersionId, UInt, owned_room_id, owned_user_id, serde::Base64,
    };
    use serde_json::json;

    use super::*;
    use crate::{SigningKey, pdu::PduTemplate};

    fn signed(key: &SigningKey, body: &str) -> (CanonicalJsonObject, RoomVersionRules) {
        let rules = RoomVersionId::V11.rules().unwrap();
        let pdu = PduTemplate {
            room_id: Some(owned_room_id!("!r:remote.test")),
            sender: owned_user_id!("@a:remote.test"),
            event_type: "m.room.message".into(),
            state_key: None,
            content: json!({ "msgtype": "m.text", "body": body }),
            prev_events: vec![],
            auth_events: vec![],
            depth: 3,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(1).unwrap()),
            redacts: None,
        }
        .finish(&rules, "remote.test", key)
        .unwrap();
        (pdu.json, rules)
    }

    fn keys_of(key: &SigningKey) -> PublicKeyMap {
        let mut set = BTreeMap::new();
        set.insert(key.key_id(), Base64::parse(key.public_key_base64()).unwrap());
        BTreeMap::from([("remote.test".to_owned(), set)])
    }

    #[test]
    fn a_well_signed_event_passes_whole() {
        let key = SigningKey::generate("a").unwrap();
        let (object, rules) = signed(&key, "hi");
        let needed = keys_needed(&object, &rules).unwrap();
        assert_eq!(needed[0].0.as_str(), "remote.test");
        assert_eq!(needed[0].1, vec![key.key_id()]);
        let checked = check(object, &rules, &keys_of(&key)).unwrap();
        assert!(!checked.redacted);
        assert_eq!(checked.pdu.content_value()["body"], "hi");
    }

    #[test]
    fn a_forged_signature_is_refused() {
        let key = SigningKey::generate("a").unwrap();
        let other = SigningKey::generate("a").unwrap();
        let (object, rules) = signed(&key, "hi");
        assert!(check(object, &rules, &keys_of(&other)).is_err());
    }

    #[test]
    fn a_changed_content_is_kept_redacted() {
        let key = SigningKey::generate("a").unwrap();
        let (mut object, rules) = signed(&key, "hi");
        // The signature covers the redacted form only: a changed body still verifies, but its
        // hash does not match.
        let Some(CanonicalJsonValue::Object(content)) = object.get_mut("content") else {
            panic!("content")
        };
        content.insert("body".into(), CanonicalJsonValue::String("changed".into()));
        let checked = check(object, &rules, &keys_of(&key)).unwrap();
        assert!(checked.redacted);
        assert_eq!(checked.pdu.content_value(), json!({}));
    }

    #[test]
    fn too_many_prev_events_is_bad_format() {
        let key = SigningKey::generate("a").unwrap();
        let (mut object, rules) = signed(&key, "hi");
        let ids = (0..21)
            .map(|i| CanonicalJsonValue::String(format!("$e{i}")))
            .collect();
        object.insert("prev_events".into(), CanonicalJsonValue::Array(ids));
        assert!(check(object, &rules, &keys_of(&key)).is_err());
    }
}
