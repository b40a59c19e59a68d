//! `m.room.server_acl`: which servers may take part in a room, for the outbound queue and for
//! what arrives in transactions.

use ruma::{ServerName, events::room::server_acl::RoomServerAclEventContent};

use crate::{error::Result, services::Services};

/// Whether the room's ACL (if any) lets `server` in. A malformed ACL denies nobody.
pub async fn allowed(svc: &Services, room_id: &str, server: &ServerName) -> Result<bool> {
    let Some(event_id) = svc
        .store
        .current_state_event(room_id, "m.room.server_acl", "")
        .await?
    else {
        return Ok(true);
    };
    let Some(row) = svc.store.event(&event_id).await? else {
        return Ok(true);
    };
    let content = serde_json::from_str::<serde_json::Value>(&row.json)
        .ok()
        .and_then(|pdu| pdu.get("content").cloned())
        .and_then(|c| serde_json::from_value::<RoomServerAclEventContent>(c).ok());
    Ok(content.is_none_or(|acl| acl.is_allowed(server)))
}
