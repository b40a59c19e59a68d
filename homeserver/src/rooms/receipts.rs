//! Read receipts and the fully-read marker.

use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    rooms::require_joined,
    services::Services,
    store::ReceiptRow,
    util::now_ms,
};

pub const RECEIPT_TYPES: &[&str] = &["m.read", "m.read.private", "m.fully_read"];

/// Records a receipt (or, for `m.fully_read`, the room's fully-read marker).
pub async fn set_receipt(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    receipt_type: &str,
    event_id: &str,
    thread_id: Option<&str>,
) -> Result<()> {
    if !RECEIPT_TYPES.contains(&receipt_type) {
        return Err(Error::invalid_param(format!(
            "Unknown receipt type {receipt_type}"
        )));
    }
    require_joined(svc, room_id, user.as_str()).await?;
    svc.store
        .event(event_id)
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
    svc.store
        .put_receipt(
            room_id.as_str(),
            user.as_str(),
            receipt_type,
            thread,
            event_id,
            now_ms(),
        )
        .await?;
    svc.notifier.notify(vec![room_id.to_string()]);
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
