//! Evaluating push rules against a new event for every local member of its room.
//!
//! Cost on the send path: one query for the joined members (with their member events, for
//! display names), one for the power levels and create events, one for the room version, then
//! per member an in-memory rule set walk (rule sets are cached parsed in `PushState`), and one
//! transaction writing the outcomes that notify. Delivery to push gateways is spawned.

use std::collections::BTreeMap;

use ruma::{
    OwnedUserId, RoomId, UInt, UserId,
    events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
    push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx},
    serde::Raw,
};
use serde_json::Value;

use crate::{
    error::{ApiError, ApiResult},
    push::pushers,
    services::Services,
    store::{NewEvent, PushActionRow},
};

/// Evaluates the push rules of every local user concerned by a just-appended event (joined
/// members except the sender, and the target of an invite) and stores the outcomes that notify.
/// Failures are logged: the event is already stored and its send must not fail.
pub async fn on_event_appended(svc: &Services, event: &NewEvent, stream_ordering: i64) {
    if let Err(error) = evaluate(svc, event, stream_ordering).await {
        tracing::error!(event_id = %event.event_id, error = %error.message, "push rule evaluation failed");
    }
}

/// The member event content's `displayname`, when set.
fn display_name(member_json: &str) -> Option<String> {
    let pdu: Value = serde_json::from_str(member_json).ok()?;
    pdu.get("content")?
        .get("displayname")?
        .as_str()
        .map(ToOwned::to_owned)
}

/// The thread an event belongs to: the root of its `m.thread` relation.
pub fn thread_of(content: &Value) -> Option<String> {
    let relation = content.get("m.relates_to")?;
    (relation.get("rel_type")?.as_str()? == "m.thread")
        .then(|| relation.get("event_id")?.as_str().map(ToOwned::to_owned))
        .flatten()
}

async fn evaluate(svc: &Services, event: &NewEvent, stream_ordering: i64) -> ApiResult<()> {
    let suffix = format!(":{}", svc.server_name());
    let members = svc.store.joined_member_events(&event.room_id).await?;
    let member_count = members.len();
    let names: BTreeMap<String, Option<String>> = members
        .into_iter()
        .map(|(user, json)| {
            let name = display_name(&json);
            (user, name)
        })
        .collect();

    let mut targets: Vec<&str> = names
        .keys()
        .map(String::as_str)
        .filter(|u| *u != event.sender && u.ends_with(&suffix))
        .collect();
    if event.membership.as_deref() == Some("invite")
        && let Some(invitee) = event.state_key.as_deref()
        && invitee != event.sender
        && invitee.ends_with(&suffix)
        && !names.contains_key(invitee)
    {
        targets.push(invitee);
    }
    if targets.is_empty() {
        return Ok(());
    }

    let room_id = RoomId::parse(&event.room_id).map_err(ApiError::internal)?;
    let power_levels = power_levels_ctx(svc, &room_id).await?;
    let raw: Raw<Value> = Raw::from_json_string(event.json.clone()).map_err(ApiError::internal)?;
    let content: Value = serde_json::from_str::<Value>(&event.json)
        .ok()
        .and_then(|v| v.get("content").cloned())
        .unwrap_or_default();
    let thread_id = thread_of(&content);

    let mut rows = Vec::new();
    let mut notified: Vec<(String, Vec<Action>)> = Vec::new();
    for user in targets {
        let Ok(user_id) = UserId::parse(user) else {
            continue;
        };
        let ruleset = super::ruleset(svc, &user_id).await?;
        let display = names
            .get(user)
            .cloned()
            .flatten()
            .unwrap_or_else(|| user_id.localpart().to_owned());
        let mut ctx = PushConditionRoomCtx::new(
            room_id.clone(),
            UInt::new(member_count as u64).unwrap_or_default(),
            user_id.clone(),
            display,
        );
        if let Some(levels) = &power_levels {
            ctx = ctx.with_power_levels(levels.clone());
        }
        let actions = ruleset.get_actions(&raw, &ctx).await;
        if !actions.iter().any(Action::should_notify) {
            continue;
        }
        let highlight = actions.iter().any(Action::is_highlight);
        rows.push(PushActionRow {
            event_id: event.event_id.clone(),
            room_id: event.room_id.clone(),
            user_id: user.to_owned(),
            stream_ordering,
            highlight,
            thread_id: thread_id.clone(),
            actions: serde_json::to_string(actions).map_err(ApiError::internal)?,
            ts: event.origin_server_ts,
        });
        notified.push((user.to_owned(), actions.to_vec()));
    }
    svc.store.insert_push_actions(&rows).await?;
    if !notified.is_empty() {
        pushers::spawn_delivery(svc.clone(), event.clone(), notified);
    }
    Ok(())
}

/// What `sender_notification_permission` needs: the room's power levels (or the spec's defaults
/// when it has none) and, from room version 12, its privileged creators.
async fn power_levels_ctx(
    svc: &Services,
    room_id: &RoomId,
) -> ApiResult<Option<PushConditionPowerLevelsCtx>> {
    let Some(room) = svc.store.room(room_id.as_str()).await? else {
        return Ok(None);
    };
    let rules = crate::rooms::rules_of(&room.room_version)?;
    let wanted = [
        ("m.room.power_levels".to_owned(), String::new()),
        ("m.room.create".to_owned(), String::new()),
    ];
    let mut levels_content = None;
    let mut creators: Vec<OwnedUserId> = Vec::new();
    for ((event_type, _), _, json) in svc.store.current_state_entries(room_id.as_str(), &wanted).await? {
        let pdu: Value = serde_json::from_str(&json).map_err(ApiError::internal)?;
        let content = pdu.get("content").cloned().unwrap_or_default();
        if event_type == "m.room.power_levels" {
            levels_content = serde_json::from_value::<RoomPowerLevelsEventContent>(content).ok();
        } else {
            creators.extend(
                pdu.get("sender")
                    .and_then(Value::as_str)
                    .and_then(|s| UserId::parse(s).ok()),
            );
            if let Some(extra) = content.get("additional_creators").and_then(Value::as_array) {
                creators.extend(
                    extra
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(|s| UserId::parse(s).ok()),
                );
            }
        }
    }
    let source = match levels_content {
        Some(content) => RoomPowerLevelsSource::Original(content),
        None => RoomPowerLevelsSource::None,
    };
    let levels = RoomPowerLevels::new(source, &rules.authorization, creators);
    Ok(Some(levels.into()))
}
