//! Room state for clients: reading what the viewer may see (through `rooms::access`) and
//! setting state events.

use ruma::{
    OwnedEventId, RoomId, UserId,
    events::{AnyStateEvent, StateEventType},
    serde::Raw,
};
use serde_json::{Value, value::RawValue};

use crate::{
    error::{Error, Result},
    ratelimit::Action,
    rooms::{
        self, EventSpec,
        client_event::{Viewer, client_event, client_events},
        history::raw,
    },
    services::Services,
};

/// `GET /rooms/{roomId}/state`: every state event the viewer may read, oldest first.
pub async fn all_for_client(
    svc: &Services,
    viewer: Viewer<'_>,
    room_id: &RoomId,
) -> Result<Vec<Raw<AnyStateEvent>>> {
    let room = rooms::room(svc, room_id).await?;
    let ids: Vec<String> = rooms::visible_state(svc, room_id, viewer.user_id)
        .await?
        .into_values()
        .collect();
    let mut rows = svc.store.events(&ids).await?;
    rows.sort_by_key(|r| r.stream_ordering);
    client_events(svc, &rows, &room.row.room_version, Some(viewer))
        .await?
        .iter()
        .map(raw)
        .collect()
}

/// `GET /rooms/{roomId}/state/{eventType}/{stateKey}`: the content of one state event the
/// viewer may read (redacted if a redaction applies).
pub async fn content_for_client(
    svc: &Services,
    viewer: &UserId,
    room_id: &RoomId,
    event_type: &StateEventType,
    state_key: &str,
) -> Result<Box<RawValue>> {
    let room = rooms::room(svc, room_id).await?;
    let state = rooms::visible_state(svc, room_id, viewer.as_str()).await?;
    let event_id = state
        .get(&(event_type.to_string(), state_key.to_owned()))
        .ok_or_else(|| Error::not_found("State event not found"))?;
    let row = svc
        .store
        .event(event_id)
        .await?
        .ok_or_else(|| Error::internal("state event missing"))?;
    let mut event: Value = if row.redacted_by.is_some() {
        client_event(svc, &row, &room.row.room_version, None).await?
    } else {
        serde_json::from_str(&row.json).map_err(Error::internal)?
    };
    let content = event
        .get_mut("content")
        .map(Value::take)
        .unwrap_or_else(|| Value::Object(Default::default()));
    serde_json::value::to_raw_value(&content).map_err(Error::internal)
}

/// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`: rate limited like messages.
pub async fn set(
    svc: &Services,
    sender: &UserId,
    room_id: &RoomId,
    event_type: &StateEventType,
    state_key: &str,
    content: Value,
) -> Result<OwnedEventId> {
    svc.rate_limiter.check(Action::Message, sender.as_str())?;
    rooms::room(svc, room_id).await?;
    let event_type = event_type.to_string();
    if event_type == rooms::message_policy::POLICY_EVENT_TYPE {
        rooms::message_policy::check_policy_content(&content)?;
    }
    let appended = svc
        .timeline
        .append(
            svc,
            room_id,
            sender,
            EventSpec::state(&event_type, state_key, content),
            None,
        )
        .await?;
    if event_type == "m.room.encryption" && state_key.is_empty() {
        rooms::privacy::after_encryption_enabled(svc, sender, room_id).await;
    }
    Ok(appended.event_id)
}
