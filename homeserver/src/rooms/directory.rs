//! Publishing rooms in the room directory.

use ruma::{RoomId, UserId};

use crate::{
    error::{ApiError, ApiResult},
    rooms::{
        access::require_joined,
        membership::{power_level, power_levels},
        power::state_event_level,
    },
    services::Services,
};

/// Publishes or unpublishes a room: only a joined member who may change the room's canonical
/// alias may (what Synapse checks; the spec leaves it to the server).
pub async fn set_published(svc: &Services, room_id: &RoomId, user: &UserId, public: bool) -> ApiResult<()> {
    require_joined(svc, room_id, user.as_str()).await?;
    let needed = state_event_level(
        power_levels(svc, room_id).await?.as_ref(),
        "m.room.canonical_alias",
    );
    if power_level(svc, room_id, user).await? < needed {
        return Err(ApiError::forbidden("You may not publish this room"));
    }
    svc.store.set_room_public(room_id.as_str(), public).await?;
    Ok(())
}
