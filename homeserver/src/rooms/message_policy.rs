//! Hearth's edit and delete windows (spec/message-policy.md): a local user may edit
//! (`m.replace`) or redact their own event only within a window after its `origin_server_ts`.
//! The server-wide defaults are `messages.edit_window` / `messages.delete_window`; a room's
//! `org.hearth.room.message_policy` state event (`{"edit_window_ms": N | null,
//! "delete_window_ms": N | null}`, null = unlimited) overrides them field by field. Users with
//! the power to redact others' events are never limited. Past the window: 403 `M_FORBIDDEN`
//! with `"org.hearth.error": "window_expired"`.
//!
//! Checked for local clients' requests only (`rooms::send`); events from other servers are judged
//! by the spec's rules alone. Works alike in encrypted rooms: `m.relates_to` stays in clear.

use ruma::{RoomId, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    rooms::{self, EventSpec, power},
    services::Services,
};

/// The state event type of a room's message policy (state key `""`).
pub const POLICY_EVENT_TYPE: &str = "org.hearth.room.message_policy";

/// The `org.hearth.error` of a request refused for being past its window.
pub const WINDOW_EXPIRED: &str = "window_expired";

const EDIT_FIELD: &str = "edit_window_ms";
const DELETE_FIELD: &str = "delete_window_ms";

/// Checks the content of a new `org.hearth.room.message_policy`: each window absent, `null` or
/// a non-negative integer of milliseconds; 400 `M_BAD_JSON` otherwise.
pub fn check_policy_content(content: &Value) -> Result<()> {
    let object = content
        .as_object()
        .ok_or_else(|| Error::bad_json("The message policy must be an object"))?;
    for field in [EDIT_FIELD, DELETE_FIELD] {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(value) if value.as_u64().is_some() => {}
            Some(_) => {
                return Err(Error::bad_json(format!(
                    "{field} must be a non-negative integer (milliseconds) or null"
                )));
            }
        }
    }
    Ok(())
}

/// What a new event does to an earlier one that a window limits.
enum Limited<'a> {
    Edit(&'a str),
    Delete(String),
}

fn limited(spec: &EventSpec) -> Option<Limited<'_>> {
    if spec.state_key.is_some() {
        return None;
    }
    if spec.event_type == "m.room.redaction" {
        let target = spec
            .redacts
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| spec.content.get("redacts")?.as_str().map(ToOwned::to_owned))?;
        return Some(Limited::Delete(target));
    }
    let relation = spec.content.get("m.relates_to")?;
    (relation.get("rel_type")?.as_str()? == "m.replace")
        .then(|| relation.get("event_id")?.as_str())
        .flatten()
        .map(Limited::Edit)
}

/// Refuses an edit or redaction by `sender` of their own event past the room's window.
pub async fn check_window(svc: &Services, sender: &UserId, room_id: &RoomId, spec: &EventSpec) -> Result<()> {
    let Some(limit) = limited(spec) else {
        return Ok(());
    };
    let (target, field, default, what) = match &limit {
        Limited::Edit(target) => (*target, EDIT_FIELD, svc.config.messages.edit_window.0, "edit"),
        Limited::Delete(target) => (
            target.as_str(),
            DELETE_FIELD,
            svc.config.messages.delete_window.0,
            "delete",
        ),
    };
    // Someone else's event, or none of this room: the other rules decide.
    let Some(original) = svc
        .store
        .event(target)
        .await?
        .filter(|e| e.room_id == room_id.as_str() && e.sender == sender.as_str())
    else {
        return Ok(());
    };
    let keys = [
        (POLICY_EVENT_TYPE.to_owned(), String::new()),
        ("m.room.power_levels".to_owned(), String::new()),
        ("m.room.create".to_owned(), String::new()),
    ];
    let mut policy = None;
    let mut levels = None;
    let mut create = None;
    for ((event_type, _), _, json) in svc.store.current_state_entries(room_id.as_str(), &keys).await? {
        let pdu: Value = serde_json::from_str(&json).map_err(Error::internal)?;
        match event_type.as_str() {
            POLICY_EVENT_TYPE => policy = Some(pdu["content"].clone()),
            "m.room.power_levels" => levels = Some(pdu["content"].clone()),
            _ => create = Some(pdu),
        }
    }
    let window = match policy.as_ref().and_then(|p| p.get(field)) {
        Some(Value::Null) => None,
        Some(value) => value.as_u64().map_or(default, |ms| (ms > 0).then_some(ms)),
        None => default,
    };
    let Some(window) = window else {
        return Ok(());
    };
    if svc.clock.now_ms() - original.origin_server_ts <= window as i64 {
        return Ok(());
    }
    let room = rooms::room(svc, room_id).await?;
    let create = create.ok_or_else(|| Error::internal("room without a create event"))?;
    let level = power::user_level(
        &room.rules.authorization,
        create["sender"].as_str().unwrap_or_default(),
        &create["content"],
        levels.as_ref(),
        sender.as_str(),
    );
    if level >= power::action_level(levels.as_ref(), "redact", 50) {
        return Ok(());
    }
    Err(Error::forbidden_because(
        format!("The {what} window of this event ({window} ms) has passed"),
        WINDOW_EXPIRED,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn policy_content_takes_non_negative_integers_or_null() {
        for ok in [
            json!({}),
            json!({ "edit_window_ms": 0, "delete_window_ms": null }),
            json!({ "edit_window_ms": 300_000, "other": "kept" }),
        ] {
            assert!(check_policy_content(&ok).is_ok(), "{ok}");
        }
        for bad in [
            json!({ "edit_window_ms": -1 }),
            json!({ "edit_window_ms": "15m" }),
            json!({ "delete_window_ms": 1.5 }),
            json!({ "delete_window_ms": true }),
            json!([]),
        ] {
            assert_eq!(
                check_policy_content(&bad).unwrap_err().errcode(),
                "M_BAD_JSON",
                "{bad}"
            );
        }
    }
}
