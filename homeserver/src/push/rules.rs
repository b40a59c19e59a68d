//! The push rule set of a user: the spec's predefined ("server-default") rules, and the stored
//! form, global account data `m.push_rules` = `{"global": <ruleset>}`.
//!
//! The predefined rules are ruma's `Ruleset::server_default`, which is exactly the list of the
//! spec's "Predefined Rules" section (since v1.17 without the legacy body-matching rules
//! `.m.rule.contains_display_name`, `.m.rule.roomnotif` and `.m.rule.contains_user_name`); the
//! tests below pin it to the spec's definitions.

use ruma::{
    RoomId, UserId,
    push::{
        Action, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule, NewPushRule,
        NewSimplePushRule, PushCondition, RemovePushRuleError, RuleKind, Ruleset,
    },
};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    services::Services,
};

pub const ACCOUNT_DATA_TYPE: &str = "m.push_rules";

/// The rules a user starts with.
pub fn server_default(user_id: &UserId) -> Ruleset {
    Ruleset::server_default(user_id)
}

/// The user's rule set from their stored `m.push_rules` content (`None`: never changed). The
/// server-default rules are refreshed from the current definitions, keeping the user's
/// `enabled` and `actions` choices for them.
pub fn from_account_data(user_id: &UserId, content: Option<&str>) -> Ruleset {
    let Some(content) = content else {
        return server_default(user_id);
    };
    #[derive(serde::Deserialize)]
    struct Stored {
        global: Ruleset,
    }
    match serde_json::from_str::<Stored>(content) {
        Ok(Stored { mut global }) => {
            global.update_with_server_default(server_default(user_id));
            global
        }
        Err(error) => {
            tracing::warn!(%user_id, %error, "stored push rules are unreadable; using the defaults");
            server_default(user_id)
        }
    }
}

/// A rule set as clients see it: every kind present, even when empty.
pub fn to_client_json(ruleset: &Ruleset) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(ruleset).map_err(Error::internal)?;
    for kind in ["override", "content", "room", "sender", "underride"] {
        if value.get(kind).is_none() {
            value[kind] = json!([]);
        }
    }
    Ok(value)
}

/// The `m.push_rules` account data content for a rule set.
pub fn to_account_data(ruleset: &Ruleset) -> Result<String> {
    serde_json::to_string(&json!({ "global": ruleset })).map_err(Error::internal)
}

/// A rule kind named in a path: `override`, `content`, `room`, `sender` or `underride`.
pub fn parse_kind(kind: &str) -> Result<RuleKind> {
    Ok(match kind {
        "override" => RuleKind::Override,
        "content" => RuleKind::Content,
        "room" => RuleKind::Room,
        "sender" => RuleKind::Sender,
        "underride" => RuleKind::Underride,
        _ => return Err(Error::invalid_param(format!("Unknown push rule kind {kind}"))),
    })
}

/// A user's rule set as clients see it (`GET /pushrules/global/`).
pub async fn client_rules(svc: &Services, user_id: &UserId) -> Result<Value> {
    to_client_json(&super::ruleset(svc, user_id).await?.set)
}

/// One rule as clients see it, or 404 `M_NOT_FOUND`.
pub async fn client_rule(svc: &Services, user_id: &UserId, kind: RuleKind, rule_id: &str) -> Result<Value> {
    client_rules(svc, user_id)
        .await?
        .get(kind.as_str())
        .and_then(Value::as_array)
        .and_then(|rules| {
            rules
                .iter()
                .find(|r| r.get("rule_id").and_then(Value::as_str) == Some(rule_id))
                .cloned()
        })
        .ok_or_else(|| Error::not_found("The push rule was not found"))
}

/// A rule's `enabled` or `actions` attribute as clients see it: `{attribute: value}`.
pub async fn rule_attribute(
    svc: &Services,
    user_id: &UserId,
    kind: RuleKind,
    rule_id: &str,
    attribute: &str,
) -> Result<Value> {
    let rule = client_rule(svc, user_id, kind, rule_id).await?;
    let value = rule.get(attribute).cloned().unwrap_or(Value::Null);
    Ok(json!({ attribute: value }))
}

/// The body of `PUT /pushrules/global/{kind}/{ruleId}`. Hand-read rather than ruma's request:
/// a missing `actions` or `pattern` is `M_MISSING_PARAM`, not `M_BAD_JSON`.
#[derive(Debug, serde::Deserialize)]
pub struct RuleBody {
    actions: Option<Vec<Action>>,
    conditions: Option<Vec<PushCondition>>,
    pattern: Option<String>,
}

/// A new rule of `kind` from its ID and body: a room rule's ID is a room ID, a sender rule's a
/// user ID.
pub fn new_rule(kind: RuleKind, rule_id: String, body: RuleBody) -> Result<NewPushRule> {
    let actions = body
        .actions
        .ok_or_else(|| Error::missing_param("Missing 'actions'"))?;
    Ok(match kind {
        RuleKind::Override => NewPushRule::Override(NewConditionalPushRule::new(
            rule_id,
            body.conditions.unwrap_or_default(),
            actions,
        )),
        RuleKind::Underride => NewPushRule::Underride(NewConditionalPushRule::new(
            rule_id,
            body.conditions.unwrap_or_default(),
            actions,
        )),
        RuleKind::Content => {
            let pattern = body
                .pattern
                .ok_or_else(|| Error::missing_param("Content rule missing 'pattern'"))?;
            NewPushRule::Content(NewPatternedPushRule::new(rule_id, pattern, actions))
        }
        RuleKind::Room => {
            let room_id = RoomId::parse(&rule_id)
                .map_err(|_| Error::invalid_param("A room rule's ID must be a room ID"))?;
            NewPushRule::Room(NewSimplePushRule::new(room_id, actions))
        }
        RuleKind::Sender => {
            let user_id = UserId::parse(&rule_id)
                .map_err(|_| Error::invalid_param("A sender rule's ID must be a user ID"))?;
            NewPushRule::Sender(NewSimplePushRule::new(user_id, actions))
        }
        _ => return Err(Error::invalid_param("Unknown push rule kind")),
    })
}

/// Adds or replaces a user-defined rule, placed `after`/`before` another when asked.
pub async fn put_rule(
    svc: &Services,
    user_id: &UserId,
    rule: NewPushRule,
    after: Option<&str>,
    before: Option<&str>,
) -> Result<()> {
    super::update_ruleset(svc, user_id, |ruleset| {
        ruleset.insert(rule, after, before).map_err(|e| match e {
            // As the spec's example (and Synapse) answer: 400 M_UNKNOWN.
            InsertPushRuleError::UnknownRuleId => Error::unknown(format!(
                "before/after rule not found: {}",
                before.or(after).unwrap_or_default()
            )),
            InsertPushRuleError::ServerDefaultRuleId => {
                Error::invalid_param("Rule IDs starting with '.' are reserved for server-default rules")
            }
            InsertPushRuleError::InvalidRuleId => {
                Error::invalid_param("Rule IDs may not contain '/' or '\\'")
            }
            other => Error::invalid_param(other.to_string()),
        })
    })
    .await
}

/// Deletes a user-defined rule; server-default rules cannot be deleted.
pub async fn delete_rule(svc: &Services, user_id: &UserId, kind: RuleKind, rule_id: &str) -> Result<()> {
    super::update_ruleset(svc, user_id, |ruleset| {
        ruleset.remove(kind, rule_id).map_err(|e| match e {
            RemovePushRuleError::ServerDefault => {
                Error::invalid_param("Server-default rules cannot be deleted")
            }
            _ => Error::not_found("The push rule was not found"),
        })
    })
    .await
}

/// Enables or disables a rule, server-default ones too.
pub async fn set_enabled(
    svc: &Services,
    user_id: &UserId,
    kind: RuleKind,
    rule_id: &str,
    enabled: bool,
) -> Result<()> {
    super::update_ruleset(svc, user_id, |ruleset| {
        ruleset
            .set_enabled(kind, rule_id, enabled)
            .map_err(|_| Error::not_found("The push rule was not found"))
    })
    .await
}

/// Replaces a rule's actions, server-default ones too.
pub async fn set_actions(
    svc: &Services,
    user_id: &UserId,
    kind: RuleKind,
    rule_id: &str,
    actions: Vec<Action>,
) -> Result<()> {
    super::update_ruleset(svc, user_id, |ruleset| {
        ruleset
            .set_actions(kind, rule_id, actions)
            .map_err(|_| Error::not_found("The push rule was not found"))
    })
    .await
}

#[cfg(test)]
mod tests {
    use ruma::user_id;
    use serde_json::{Value, json};

    use super::*;

    /// The definitions of the spec's predefined rules (client-server-api/modules/push.md,
    /// "Predefined Rules"), in order, for `@alice:example.org`.
    fn spec_rules() -> Value {
        let me = "@alice:example.org";
        json!({
            "override": [
                {"rule_id": ".m.rule.master", "default": true, "enabled": false, "conditions": [], "actions": []},
                {"rule_id": ".m.rule.suppress_notices", "default": true, "enabled": true,
                 "conditions": [{"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}],
                 "actions": []},
                {"rule_id": ".m.rule.invite_for_me", "default": true, "enabled": true,
                 "conditions": [
                    {"key": "type", "kind": "event_match", "pattern": "m.room.member"},
                    {"key": "content.membership", "kind": "event_match", "pattern": "invite"},
                    {"key": "state_key", "kind": "event_match", "pattern": me}],
                 "actions": ["notify", {"set_tweak": "sound", "value": "default"}]},
                {"rule_id": ".m.rule.member_event", "default": true, "enabled": true,
                 "conditions": [{"key": "type", "kind": "event_match", "pattern": "m.room.member"}],
                 "actions": []},
                {"rule_id": ".m.rule.is_user_mention", "default": true, "enabled": true,
                 "conditions": [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": me}],
                 "actions": ["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]},
                {"rule_id": ".m.rule.is_room_mention", "default": true, "enabled": true,
                 "conditions": [
                    {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": true},
                    {"kind": "sender_notification_permission", "key": "room"}],
                 "actions": ["notify", {"set_tweak": "highlight"}]},
                {"rule_id": ".m.rule.tombstone", "default": true, "enabled": true,
                 "conditions": [
                    {"kind": "event_match", "key": "type", "pattern": "m.room.tombstone"},
                    {"kind": "event_match", "key": "state_key", "pattern": ""}],
                 "actions": ["notify", {"set_tweak": "highlight"}]},
                {"rule_id": ".m.rule.reaction", "default": true, "enabled": true,
                 "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.reaction"}],
                 "actions": []},
                {"rule_id": ".m.rule.room.server_acl", "default": true, "enabled": true,
                 "conditions": [
                    {"kind": "event_match", "key": "type", "pattern": "m.room.server_acl"},
                    {"kind": "event_match", "key": "state_key", "pattern": ""}],
                 "actions": []},
                {"rule_id": ".m.rule.suppress_edits", "default": true, "enabled": true,
                 "conditions": [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
                 "actions": []}
            ],
            "content": [],
            "room": [],
            "sender": [],
            "underride": [
                {"rule_id": ".m.rule.call", "default": true, "enabled": true,
                 "conditions": [{"key": "type", "kind": "event_match", "pattern": "m.call.invite"}],
                 "actions": ["notify", {"set_tweak": "sound", "value": "ring"}]},
                {"rule_id": ".m.rule.encrypted_room_one_to_one", "default": true, "enabled": true,
                 "conditions": [
                    {"kind": "room_member_count", "is": "2"},
                    {"kind": "event_match", "key": "type", "pattern": "m.room.encrypted"}],
                 "actions": ["notify", {"set_tweak": "sound", "value": "default"}]},
                {"rule_id": ".m.rule.room_one_to_one", "default": true, "enabled": true,
                 "conditions": [
                    {"kind": "room_member_count", "is": "2"},
                    {"kind": "event_match", "key": "type", "pattern": "m.room.message"}],
                 "actions": ["notify", {"set_tweak": "sound", "value": "default"}]},
                {"rule_id": ".m.rule.message", "default": true, "enabled": true,
                 "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}],
                 "actions": ["notify"]},
                {"rule_id": ".m.rule.encrypted", "default": true, "enabled": true,
                 "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.encrypted"}],
                 "actions": ["notify"]}
            ]
        })
    }

    /// Order-insensitive comparison of JSON objects, order-sensitive for arrays.
    fn normalize(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                let sorted: std::collections::BTreeMap<_, _> =
                    map.into_iter().map(|(k, v)| (k, normalize(v))).collect();
                serde_json::to_value(sorted).unwrap()
            }
            Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
            other => other,
        }
    }

    #[test]
    fn defaults_are_the_spec_predefined_rules() {
        let ours = serde_json::to_value(server_default(user_id!("@alice:example.org"))).unwrap();
        let mut ours = normalize(ours);
        // Empty kinds may be left out of the serialization.
        for kind in ["override", "content", "room", "sender", "underride"] {
            if ours.get(kind).is_none() {
                ours[kind] = json!([]);
            }
        }
        assert_eq!(ours, normalize(spec_rules()));
    }

    #[test]
    fn stored_rules_keep_user_choices_and_refresh_defaults() {
        let alice = user_id!("@alice:example.org");
        let mut ruleset = server_default(alice);
        ruleset
            .set_enabled(ruma::push::RuleKind::Override, ".m.rule.master", true)
            .unwrap();
        let stored = to_account_data(&ruleset).unwrap();
        let loaded = from_account_data(alice, Some(&stored));
        let master = loaded
            .get(ruma::push::RuleKind::Override, ".m.rule.master")
            .unwrap();
        assert!(master.enabled());
        assert!(
            loaded
                .get(ruma::push::RuleKind::Underride, ".m.rule.message")
                .is_some()
        );
        // Unreadable content falls back to the defaults rather than failing evaluation.
        let fallback = from_account_data(alice, Some("{\"global\": 5}"));
        assert!(
            !fallback
                .get(ruma::push::RuleKind::Override, ".m.rule.master")
                .unwrap()
                .enabled()
        );
    }
}
