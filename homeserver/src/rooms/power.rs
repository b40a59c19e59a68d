//! Power levels read from a room's state contents (client-server API §"m.room.power_levels";
//! room version 12 ranks the room's creators above every level). Pure functions, so the
//! timeline (against its draft) and the handlers (against current state) read them alike.

use ruma::room_version_rules::AuthorizationRules;
use serde_json::Value;

/// A user's power level, from the `m.room.create` event (its sender and content) and the
/// `m.room.power_levels` content, if the room has one.
pub fn user_level(
    rules: &AuthorizationRules,
    create_sender: &str,
    create: &Value,
    levels: Option<&Value>,
    user: &str,
) -> i64 {
    if rules.explicitly_privilege_room_creators
        && (create_sender == user
            || create
                .get("additional_creators")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|c| c == user)))
    {
        return i64::MAX;
    }
    match levels {
        Some(levels) => levels
            .get("users")
            .and_then(|u| u.get(user))
            .or_else(|| levels.get("users_default"))
            .and_then(Value::as_i64)
            .unwrap_or(0),
        // Without a power levels event the creator has 100, everyone else 0.
        None if create_sender == user => 100,
        None => 0,
    }
}

/// The level an action key (`redact`, `kick`, `state_default`, …) needs, with the spec's
/// default when absent.
pub fn action_level(levels: Option<&Value>, key: &str, default: i64) -> i64 {
    levels
        .and_then(|l| l.get(key))
        .and_then(Value::as_i64)
        .unwrap_or(default)
}

/// The level sending a state event of `event_type` needs: its entry in `events`, else
/// `state_default` (50 with a power levels event, 0 without).
pub fn state_event_level(levels: Option<&Value>, event_type: &str) -> i64 {
    levels
        .and_then(|l| l.get("events"))
        .and_then(|e| e.get(event_type))
        .and_then(Value::as_i64)
        .unwrap_or_else(|| action_level(levels, "state_default", if levels.is_some() { 50 } else { 0 }))
}

#[cfg(test)]
mod tests {
    use ruma::room_version_rules::RoomVersionRules;
    use serde_json::json;

    use super::*;

    #[test]
    fn creators_outrank_everyone_from_version_12() {
        let levels = json!({ "users": { "@a:x": 100 } });
        let v12 = RoomVersionRules::V12.authorization;
        let v11 = RoomVersionRules::V11.authorization;
        let create = json!({ "additional_creators": ["@b:x"] });
        assert_eq!(user_level(&v12, "@c:x", &create, Some(&levels), "@b:x"), i64::MAX);
        assert_eq!(user_level(&v12, "@c:x", &create, Some(&levels), "@c:x"), i64::MAX);
        assert_eq!(user_level(&v11, "@c:x", &create, Some(&levels), "@c:x"), 0);
        assert_eq!(user_level(&v11, "@c:x", &create, Some(&levels), "@a:x"), 100);
    }

    #[test]
    fn defaults_apply_when_absent() {
        let v11 = RoomVersionRules::V11.authorization;
        assert_eq!(user_level(&v11, "@c:x", &json!({}), None, "@c:x"), 100);
        assert_eq!(user_level(&v11, "@c:x", &json!({}), None, "@d:x"), 0);
        assert_eq!(action_level(None, "redact", 50), 50);
        let levels = json!({ "state_default": 70, "events": { "m.room.canonical_alias": 20 } });
        assert_eq!(state_event_level(Some(&levels), "m.room.canonical_alias"), 20);
        assert_eq!(state_event_level(Some(&levels), "m.room.name"), 70);
        assert_eq!(state_event_level(Some(&json!({})), "m.room.name"), 50);
    }
}
