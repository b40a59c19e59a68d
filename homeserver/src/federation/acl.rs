//! `m.room.server_acl`: which servers may take part in a room, for the outbound queue and for
//! what arrives in transactions.

use ruma::{ServerName, events::room::server_acl::RoomServerAclEventContent};

use crate::{error::Result, services::Services};

/// Whether the room's ACL (if any) lets `server` in. A malformed ACL denies nobody.
pub async fn allowed(svc: &Services, room_id: &str, server: &ServerName) -> Result<bool> {
    Ok(current(svc, room_id)
        .await?
        .is_none_or(|acl| acl.is_allowed(server)))
}

/// The room's current ACL, if it has a well-formed one.
pub async fn current(svc: &Services, room_id: &str) -> Result<Option<RoomServerAclEventContent>> {
    let Some(event_id) = svc
        .store
        .current_state_event(room_id, "m.room.server_acl", "")
        .await?
    else {
        return Ok(None);
    };
    Ok(svc
        .store
        .event(&event_id)
        .await?
        .and_then(|row| of_pdu(&row.json)))
}

/// The ACL an `m.room.server_acl` PDU sets (`None` when malformed).
pub fn of_pdu(json: &str) -> Option<RoomServerAclEventContent> {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|pdu| pdu.get("content").cloned())
        .and_then(|c| serde_json::from_value(c).ok())
}
