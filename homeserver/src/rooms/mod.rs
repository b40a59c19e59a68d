//! Rooms: creating them, membership, redaction, who may see what, and presenting stored events
//! to clients.

pub mod access;
pub mod checks;
pub mod client_event;
pub mod create;
pub mod directory;
pub mod history;
pub mod listener;
pub mod membership;
pub mod message_policy;
pub mod power;
pub mod privacy;
pub mod receipts;
pub mod relations;
pub mod send;
pub mod state;
pub mod tags;
pub mod timeline;
pub mod topo;
pub mod typing;
pub mod upgrade;
mod writer_thread;

use ruma::{RoomId, RoomVersionId, room_version_rules::RoomVersionRules};

pub use access::{require_joined, visible_state};
pub use timeline::{EventSpec, Timeline};

use crate::{
    error::{Error, Result},
    services::Services,
    store::RoomRow,
};

/// A room known to this server, with its version's rules.
pub struct Room {
    pub row: RoomRow,
    pub rules: RoomVersionRules,
}

/// Loads a room or answers 404 `M_NOT_FOUND`.
pub async fn room(svc: &Services, room_id: &RoomId) -> Result<Room> {
    let row = svc
        .store
        .room(room_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room not found"))?;
    let rules = rules_of(&row.room_version)?;
    Ok(Room { row, rules })
}

pub fn rules_of(version: &str) -> Result<RoomVersionRules> {
    let version = RoomVersionId::try_from(version).map_err(Error::internal)?;
    hearth_federation::rules_for(&version)
        .ok_or_else(|| Error::internal("stored room has an unsupported version"))
}
