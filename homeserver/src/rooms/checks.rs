//! Bounds on what a client puts in a new event, checked before the event joins a batch: an
//! event the database cannot store must never reach the group commit, where it would fail its
//! neighbours' transaction too.
//!
//! - Event types and state keys: at most 255 bytes (the spec's "Size limits"); longer ones get
//!   413 `M_TOO_LARGE`, as an event over 65,536 bytes does (and as Synapse answers).
//! - Transaction IDs: at most 255 bytes, 400 `M_INVALID_PARAM`.
//! - No U+0000 in anything stored in a text column (type, state key, transaction ID, the IDs a
//!   relation or redaction names): PostgreSQL `TEXT` cannot hold it, so without this check such
//!   an event would fail on PostgreSQL alone. 400 `M_INVALID_PARAM` for path parameters.
//! - `m.relates_to.event_id` must be an event ID of at most 255 bytes and `rel_type` at most 255
//!   bytes without U+0000: both are indexed columns (a PostgreSQL btree refuses rows past ~2.7
//!   KB). The body is at fault: 400 `M_BAD_JSON`.

use ruma::EventId;
use serde_json::Value;

use crate::{
    error::{Error, Result},
    rooms::EventSpec,
    store::Txn,
};

/// Longest event type, state key, transaction ID or relation field, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// Checks a path parameter that ends up in a text column.
fn check_param(name: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid_param(format!("{name} may not contain U+0000")));
    }
    Ok(())
}

/// A client transaction: its ID bounded, nothing in it PostgreSQL cannot store. Call before the
/// first lookup of the transaction.
pub fn check_txn(txn: &Txn) -> Result<()> {
    check_param("The transaction ID", &txn.txn_id)?;
    check_param("The request path", &txn.scope)?;
    if txn.txn_id.len() > MAX_KEY_BYTES {
        return Err(Error::invalid_param(format!(
            "The transaction ID is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The parts of a new event that are stored in columns of their own.
pub fn check_event(spec: &EventSpec) -> Result<()> {
    check_param("The event type", &spec.event_type)?;
    if spec.event_type.len() > MAX_KEY_BYTES {
        return Err(Error::too_large(format!(
            "The event type is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    if let Some(state_key) = &spec.state_key {
        check_param("The state key", state_key)?;
        if state_key.len() > MAX_KEY_BYTES {
            return Err(Error::too_large(format!(
                "The state key is longer than {MAX_KEY_BYTES} bytes"
            )));
        }
    }
    if let Some(redacts) = &spec.redacts {
        check_event_id(redacts.as_str()).map_err(Error::invalid_param)?;
    }
    if let Some(relation) = spec.content.get("m.relates_to") {
        check_relation(relation).map_err(Error::bad_json)?;
    }
    Ok(())
}

/// `m.relates_to` fields that are stored in columns (others stay in the opaque JSON).
fn check_relation(relation: &Value) -> Result<(), String> {
    if let Some(event_id) = relation.get("event_id").and_then(Value::as_str) {
        check_event_id(event_id).map_err(|e| format!("m.relates_to.event_id: {e}"))?;
    }
    if let Some(rel_type) = relation.get("rel_type").and_then(Value::as_str)
        && (rel_type.len() > MAX_KEY_BYTES || rel_type.contains('\0'))
    {
        return Err(format!(
            "m.relates_to.rel_type must be at most {MAX_KEY_BYTES} bytes without U+0000"
        ));
    }
    if let Some(key) = relation.get("key").and_then(Value::as_str)
        && key.contains('\0')
    {
        return Err("m.relates_to.key may not contain U+0000".into());
    }
    Ok(())
}

/// An event ID as ruma parses it, within the spec's 255 bytes, without U+0000 (ruma checks
/// neither for IDs without a server name, the form of every room version from 3 on).
fn check_event_id(event_id: &str) -> Result<(), String> {
    if event_id.len() > MAX_KEY_BYTES {
        return Err(format!("event ID longer than {MAX_KEY_BYTES} bytes"));
    }
    if event_id.contains('\0') {
        return Err("event ID contains U+0000".into());
    }
    EventId::parse(event_id)
        .map(drop)
        .map_err(|e| format!("invalid event ID: {e}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(content: Value) -> EventSpec {
        EventSpec::message("m.room.message", content)
    }

    #[test]
    fn relations_must_name_event_ids_of_bounded_size() {
        let ok = json!({ "m.relates_to": { "rel_type": "m.thread", "event_id": "$abc" } });
        assert!(check_event(&message(ok)).is_ok());
        for bad in [
            json!({ "m.relates_to": { "event_id": format!("${}", "a".repeat(3000)) } }),
            json!({ "m.relates_to": { "event_id": "not an id" } }),
            json!({ "m.relates_to": { "event_id": "$a\u{0}b" } }),
            json!({ "m.relates_to": { "rel_type": "x".repeat(256), "event_id": "$abc" } }),
            json!({ "m.relates_to": { "rel_type": "m.\u{0}", "event_id": "$abc" } }),
        ] {
            assert_eq!(
                check_event(&message(bad.clone())).unwrap_err().errcode(),
                "M_BAD_JSON",
                "{bad}"
            );
        }
    }

    #[test]
    fn types_and_state_keys_are_bounded() {
        let long = "t".repeat(256);
        assert_eq!(
            check_event(&EventSpec::message(&long, json!({})))
                .unwrap_err()
                .errcode(),
            "M_TOO_LARGE"
        );
        assert_eq!(
            check_event(&EventSpec::state("m.x", &long, json!({})))
                .unwrap_err()
                .errcode(),
            "M_TOO_LARGE"
        );
        assert_eq!(
            check_event(&EventSpec::state("m.x", "a\u{0}", json!({})))
                .unwrap_err()
                .errcode(),
            "M_INVALID_PARAM"
        );
        assert!(check_event(&EventSpec::state(&"t".repeat(255), &"k".repeat(255), json!({}))).is_ok());
    }

    #[test]
    fn transaction_ids_are_bounded() {
        let txn = |txn_id: &str| Txn {
            device_id: "D".into(),
            scope: "send/!r:x/m.room.message".into(),
            txn_id: txn_id.into(),
        };
        assert!(check_txn(&txn(&"a".repeat(255))).is_ok());
        assert_eq!(
            check_txn(&txn(&"a".repeat(256))).unwrap_err().errcode(),
            "M_INVALID_PARAM"
        );
        assert_eq!(
            check_txn(&txn("a\u{0}")).unwrap_err().errcode(),
            "M_INVALID_PARAM"
        );
    }
}
