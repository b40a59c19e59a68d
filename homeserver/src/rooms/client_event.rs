//! Stored PDUs as clients see them (the spec's ClientEvent format).

use std::collections::{BTreeSet, HashMap};

use ruma::{CanonicalJsonObject, canonical_json::redact, room_version_rules::RoomVersionRules};
use serde_json::{Map, Value, json};

use crate::{error::Result, rooms::rules_of, services::Services, store::EventRow, util::now_ms};

/// Fields of a PDU that only servers care about.
const SERVER_ONLY: &[&str] = &[
    "auth_events",
    "prev_events",
    "depth",
    "hashes",
    "signatures",
    "origin",
    "unsigned",
];

/// Who is looking: the transaction ID is only shown to the device that sent the event.
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
}

/// The stored events that formatting others needs: the redactions that apply to them and the
/// state events they replace (for `prev_content`), fetched in one query for a whole batch —
/// one lookup per event made a large `/sync` hundreds of round trips.
#[derive(Default)]
pub struct Related(HashMap<String, EventRow>);

impl Related {
    /// The IDs of the events that formatting `rows` needs.
    pub fn ids_for<'a>(rows: impl IntoIterator<Item = &'a EventRow>) -> Vec<String> {
        let ids: BTreeSet<String> = rows
            .into_iter()
            .flat_map(|row| [&row.redacted_by, &row.replaces_state])
            .flatten()
            .cloned()
            .collect();
        ids.into_iter().collect()
    }

    /// Reads the events with these IDs (see `ids_for`).
    pub async fn fetch(svc: &Services, ids: Vec<String>) -> Result<Self> {
        if ids.is_empty() {
            return Ok(Self::default());
        }
        let found = svc.store.events(&ids).await?;
        Ok(Self(
            found.into_iter().map(|row| (row.event_id.clone(), row)).collect(),
        ))
    }
}

/// Formats an event for a client: redacted if a redaction applies, with `unsigned` filled in.
pub async fn client_event(
    svc: &Services,
    row: &EventRow,
    version: &str,
    viewer: Option<Viewer<'_>>,
) -> Result<Value> {
    let related = Related::fetch(svc, Related::ids_for([row])).await?;
    format_event(row, &rules_of(version)?, &related, viewer)
}

/// Formats an event whose related events are already fetched.
pub fn format_event(
    row: &EventRow,
    rules: &RoomVersionRules,
    related: &Related,
    viewer: Option<Viewer<'_>>,
) -> Result<Value> {
    let mut pdu: CanonicalJsonObject =
        serde_json::from_str(&row.json).map_err(crate::error::Error::internal)?;
    let mut unsigned = Map::new();
    if let Some(redaction_id) = &row.redacted_by {
        pdu = redact(pdu.clone(), &rules.redaction, None).unwrap_or(pdu);
        if let Some(redaction) = related.0.get(redaction_id) {
            let redaction_json: Value = serde_json::from_str(&redaction.json).unwrap_or_default();
            unsigned.insert("redacted_because".into(), strip(redaction_json, redaction, None));
        }
    }
    if let Some(replaced) = &row.replaces_state
        && let Some(prev) = related.0.get(replaced)
    {
        let prev_json: Value = serde_json::from_str(&prev.json).unwrap_or_default();
        if let Some(content) = prev_json.get("content") {
            let content = if prev.redacted_by.is_some() {
                json!({})
            } else {
                content.clone()
            };
            unsigned.insert("prev_content".into(), content);
            unsigned.insert("replaces_state".into(), json!(replaced));
        }
    }
    unsigned.insert("age".into(), json!((now_ms() - row.origin_server_ts).max(0)));
    let value = serde_json::to_value(pdu).map_err(crate::error::Error::internal)?;
    let mut value = strip(value, row, Some(unsigned));
    add_viewer_fields(&mut value, row, viewer);
    Ok(value)
}

/// The fields of a formatted event that depend on who looks and when: `unsigned.age`, and
/// `unsigned.transaction_id` for the device that sent it. Applied to a copy of an event
/// formatted once for everyone (`sync::recent`).
pub fn add_viewer_fields(event: &mut Value, row: &EventRow, viewer: Option<Viewer<'_>>) {
    let Some(unsigned) = event.get_mut("unsigned").and_then(Value::as_object_mut) else {
        return;
    };
    unsigned.insert("age".into(), json!(age(row)));
    if let Some(txn_id) = viewer.and_then(|viewer| transaction_id_for(row, viewer)) {
        unsigned.insert("transaction_id".into(), json!(txn_id));
    }
}

/// `unsigned.age`: milliseconds since the event was sent (never negative).
pub fn age(row: &EventRow) -> i64 {
    (now_ms() - row.origin_server_ts).max(0)
}

/// `unsigned.transaction_id`: only for the device that sent the event.
pub fn transaction_id_for<'r>(row: &'r EventRow, viewer: Viewer<'_>) -> Option<&'r str> {
    match (&row.txn_id, &row.txn_device_id) {
        (Some(txn_id), Some(device)) if viewer.user_id == row.sender && viewer.device_id == device => {
            Some(txn_id)
        }
        _ => None,
    }
}

/// Drops server-only fields and adds `event_id`, `room_id`, `unsigned`, and the top-level
/// `redacts` that clients of room versions ≥ 11 still read.
fn strip(mut value: Value, row: &EventRow, unsigned: Option<Map<String, Value>>) -> Value {
    if let Some(object) = value.as_object_mut() {
        for key in SERVER_ONLY {
            object.remove(*key);
        }
        object.insert("event_id".into(), json!(row.event_id));
        object.insert("room_id".into(), json!(row.room_id));
        if row.event_type == "m.room.redaction"
            && !object.contains_key("redacts")
            && let Some(redacts) = object.get("content").and_then(|c| c.get("redacts")).cloned()
        {
            object.insert("redacts".into(), redacts);
        }
        let unsigned = unsigned.unwrap_or_else(|| {
            let mut m = Map::new();
            m.insert("age".into(), json!((now_ms() - row.origin_server_ts).max(0)));
            m
        });
        object.insert("unsigned".into(), Value::Object(unsigned));
    }
    value
}

/// Formats several events of one room, with one query for everything they refer to.
pub async fn client_events(
    svc: &Services,
    rows: &[EventRow],
    version: &str,
    viewer: Option<Viewer<'_>>,
) -> Result<Vec<Value>> {
    let related = Related::fetch(svc, Related::ids_for(rows)).await?;
    let rules = rules_of(version)?;
    rows.iter()
        .map(|row| format_event(row, &rules, &related, viewer))
        .collect()
}

/// The stripped state event form used in invites (`invite_state`).
pub fn stripped_state(row: &EventRow) -> Value {
    let pdu: Value = serde_json::from_str(&row.json).unwrap_or_default();
    json!({
        "type": row.event_type,
        "state_key": row.state_key,
        "sender": row.sender,
        "content": pdu.get("content").cloned().unwrap_or_else(|| json!({})),
    })
}
