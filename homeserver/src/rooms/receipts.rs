//! Read receipts and the fully-read marker.

use ruma::{
    EventId, RoomId, UserId, api::client::receipt::create_receipt::v3::ReceiptType,
    events::receipt::ReceiptThread,
};
use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    ratelimit::Action,
    rooms::require_joined,
    services::Services,
    store::ReceiptRow,
    sync::notifier::Covered,
    util::now_ms,
};

pub const RECEIPT_TYPES: &[&str] = &["m.read", "m.read.private", "m.fully_read"];

/// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`: rate limited; a thread ID, when
/// given, must not be empty.
pub async fn receipt(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    receipt_type: &ReceiptType,
    event_id: &EventId,
    thread: &ReceiptThread,
) -> Result<()> {
    svc.rate_limiter.check(Action::Receipt, user.as_str())?;
    let thread_id = thread.as_str();
    if thread_id.is_some_and(str::is_empty) {
        return Err(Error::invalid_param("thread_id must not be empty"));
    }
    set_receipt(svc, user, room_id, receipt_type, event_id, thread_id).await
}

/// `POST /rooms/{roomId}/read_markers`: each marker given, as its receipt type. Rate limited
/// once for the request.
pub async fn read_markers(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    markers: [(ReceiptType, Option<&EventId>); 3],
) -> Result<()> {
    svc.rate_limiter.check(Action::Receipt, user.as_str())?;
    for (receipt_type, event_id) in markers {
        if let Some(event_id) = event_id {
            set_receipt(svc, user, room_id, &receipt_type, event_id, None).await?;
        }
    }
    Ok(())
}

/// Records a receipt (or, for `m.fully_read`, the room's fully-read marker).
async fn set_receipt(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    receipt_type: &ReceiptType,
    event_id: &EventId,
    thread_id: Option<&str>,
) -> Result<()> {
    let receipt_type = receipt_type.as_str();
    if !RECEIPT_TYPES.contains(&receipt_type) {
        return Err(Error::invalid_param(format!(
            "Unknown receipt type {receipt_type}"
        )));
    }
    require_joined(svc, room_id, user).await?;
    svc.store
        .event(event_id.as_str())
        .await?
        .filter(|e| e.room_id == room_id.as_str())
        .ok_or_else(|| Error::not_found("Event not found in this room"))?;
    if receipt_type == "m.fully_read" {
        if thread_id.is_some() {
            return Err(Error::invalid_param("m.fully_read cannot be threaded"));
        }
        let content = json!({ "event_id": event_id }).to_string();
        svc.store
            .put_account_data(user.as_str(), Some(room_id.as_str()), "m.fully_read", &content)
            .await?;
        svc.notifier.notify(vec![user.to_string()]);
        return Ok(());
    }
    let thread = thread_id.unwrap_or("");
    store_receipt(
        svc,
        room_id.as_str(),
        user.as_str(),
        receipt_type,
        thread,
        event_id.as_str(),
        now_ms(),
    )
    .await?;
    if receipt_type == "m.read" {
        crate::federation::sender::receipt(
            svc,
            room_id.as_str(),
            user.as_str(),
            event_id.as_str(),
            thread_id,
            now_ms(),
        )
        .await?;
    }
    Ok(())
}

/// Stores a receipt (local or from another server) and tells the sync engine where it landed,
/// in commit order.
pub async fn store_receipt(
    svc: &Services,
    room_id: &str,
    user_id: &str,
    receipt_type: &str,
    thread_id: &str,
    event_id: &str,
    ts: i64,
) -> Result<()> {
    let _in_order = svc.sync_engine.receipts_write().await;
    let position = svc
        .store
        .put_receipt(room_id, user_id, receipt_type, thread_id, event_id, ts)
        .await?;
    svc.sync_engine.receipt_stored(room_id, position);
    svc.push.unread.drop_entry(user_id, room_id);
    // Under the write lock: receipts are notified in stream order (`notifier::Covered`).
    svc.notifier
        .notify_at(vec![room_id.to_owned()], Covered::receipts(position));
    Ok(())
}

/// The `m.receipt` ephemeral event for a viewer: private receipts only their own.
pub fn receipt_event(rows: &[ReceiptRow], viewer: &str) -> Option<Value> {
    let mut content: Map<String, Value> = Map::new();
    for row in rows {
        if row.receipt_type == "m.read.private" && row.user_id != viewer {
            continue;
        }
        let mut receipt = json!({ "ts": row.ts });
        if !row.thread_id.is_empty() {
            receipt["thread_id"] = json!(row.thread_id);
        }
        let by_type = content.entry(row.event_id.clone()).or_insert_with(|| json!({}));
        by_type[&row.receipt_type][&row.user_id] = receipt;
    }
    (!content.is_empty()).then(|| json!({ "type": "m.receipt", "content": content }))
}
