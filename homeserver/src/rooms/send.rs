//! Sending an event to a room on behalf of a client (`PUT /send`, `PUT /redact`): the
//! transaction, the rate limit (a retry of a sent transaction is answered even over the
//! limit), the edit and delete windows (`message_policy`), and the event handed to the timeline.

use ruma::{EventId, OwnedEventId, RoomId, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    ratelimit::Action,
    rooms::{self, EventSpec, checks::check_txn, message_policy},
    services::Services,
    store::Txn,
};

/// Who sends, from which device, with which transaction ID.
pub struct Sender<'a> {
    pub user_id: &'a UserId,
    pub device_id: &'a str,
}

/// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`: a message event, or (v1.18) a redaction with
/// its target in `content.redacts`.
pub async fn send_message(
    svc: &Services,
    sender: Sender<'_>,
    room_id: &RoomId,
    event_type: &str,
    txn_id: &str,
    content: Value,
) -> Result<OwnedEventId> {
    let txn = Txn {
        device_id: sender.device_id.to_owned(),
        scope: format!("send/{room_id}/{event_type}"),
        txn_id: txn_id.to_owned(),
    };
    let spec = if event_type == "m.room.redaction" {
        let target = content
            .get("redacts")
            .and_then(Value::as_str)
            .and_then(|id| EventId::parse(id).ok())
            .ok_or_else(|| Error::bad_json("A redaction needs content.redacts, an event ID"))?;
        let room = rooms::room(svc, room_id).await?;
        EventSpec::redaction(&room.rules, target, content)
    } else {
        EventSpec::message(event_type, content)
    };
    append(svc, sender, room_id, spec, txn).await
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`: the timeline checks that the target is an
/// event of this room that the sender may redact.
pub async fn redact(
    svc: &Services,
    sender: Sender<'_>,
    room_id: &RoomId,
    target: &EventId,
    txn_id: &str,
    reason: Option<String>,
) -> Result<OwnedEventId> {
    let room = rooms::room(svc, room_id).await?;
    let txn = Txn {
        device_id: sender.device_id.to_owned(),
        scope: format!("redact/{room_id}/{target}"),
        txn_id: txn_id.to_owned(),
    };
    let mut content = serde_json::Map::new();
    if let Some(reason) = reason {
        content.insert("reason".into(), Value::String(reason));
    }
    let spec = EventSpec::redaction(&room.rules, target.to_owned(), Value::Object(content));
    append(svc, sender, room_id, spec, txn).await
}

/// Rate limits a new transaction (not a retry) and appends.
async fn append(
    svc: &Services,
    sender: Sender<'_>,
    room_id: &RoomId,
    spec: EventSpec,
    txn: Txn,
) -> Result<OwnedEventId> {
    check_txn(&txn)?;
    if let Err(limited) = svc.rate_limiter.check(Action::Message, sender.user_id.as_str())
        && svc
            .store
            .event_for_txn(sender.user_id.as_str(), &txn)
            .await?
            .is_none()
    {
        return Err(limited);
    }
    // A retry of a sent edit or redaction is answered even once its window has passed.
    if let Err(expired) = message_policy::check_window(svc, sender.user_id, room_id, &spec).await
        && svc
            .store
            .event_for_txn(sender.user_id.as_str(), &txn)
            .await?
            .is_none()
    {
        return Err(expired);
    }
    let appended = svc
        .timeline
        .append(svc, room_id, sender.user_id, spec, Some(txn))
        .await?;
    Ok(appended.event_id)
}
