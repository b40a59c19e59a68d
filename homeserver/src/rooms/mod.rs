//! Rooms: creating them, membership, redaction, and presenting stored events to clients.

pub mod checks;
pub mod client_event;
pub mod create;
pub mod directory;
pub mod membership;
pub mod receipts;
pub mod tags;
pub mod timeline;
pub mod typing;
pub mod upgrade;

use ruma::{RoomId, RoomVersionId, room_version_rules::RoomVersionRules};

pub use timeline::{EventSpec, Timeline};

use crate::{
    error::{ApiError, ApiResult},
    services::Services,
    store::RoomRow,
};

/// A room known to this server, with its version's rules.
pub struct Room {
    pub row: RoomRow,
    pub rules: RoomVersionRules,
}

/// Loads a room or answers 404 `M_NOT_FOUND`.
pub async fn room(svc: &Services, room_id: &RoomId) -> ApiResult<Room> {
    let row = svc
        .store
        .room(room_id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("Room not found"))?;
    let rules = rules_of(&row.room_version)?;
    Ok(Room { row, rules })
}

pub fn rules_of(version: &str) -> ApiResult<RoomVersionRules> {
    let version = RoomVersionId::try_from(version).map_err(ApiError::internal)?;
    hearth_federation::rules_for(&version)
        .ok_or_else(|| ApiError::internal("stored room has an unsupported version"))
}

/// Whether a user may read a room's events and state: members who are joined now, or who
/// were when they left (up to that point) — the `shared` history visibility of local rooms.
pub async fn require_joined(svc: &Services, room_id: &RoomId, user_id: &str) -> ApiResult<()> {
    match svc.store.membership(room_id.as_str(), user_id).await?.as_deref() {
        Some("join") => Ok(()),
        _ => Err(ApiError::forbidden("You are not joined to this room")),
    }
}

/// The room state a user may see: the current state while joined, the state when they left
/// after leaving (or being banned), and nothing if they never joined.
pub async fn visible_state(
    svc: &Services,
    room_id: &RoomId,
    user_id: &str,
) -> ApiResult<crate::store::StateMap> {
    let forbidden = || ApiError::forbidden("You are not joined to this room");
    match svc.store.membership(room_id.as_str(), user_id).await?.as_deref() {
        Some("join") => Ok(svc.store.current_state(room_id.as_str()).await?),
        Some("leave" | "ban") => {
            let event_id = svc
                .store
                .current_state_event(room_id.as_str(), "m.room.member", user_id)
                .await?
                .ok_or_else(forbidden)?;
            let left = svc.store.event(&event_id).await?.ok_or_else(forbidden)?;
            // Only those who were joined before leaving saw the room at all.
            let before = svc
                .store
                .state_group_before(room_id.as_str(), left.stream_ordering)
                .await?;
            let was_joined = match before {
                Some(group) => {
                    let state = svc.store.state_of_group(group).await?;
                    match state.get(&("m.room.member".to_owned(), user_id.to_owned())) {
                        Some(id) => svc.store.event(id).await?.is_some_and(|e| {
                            serde_json::from_str::<serde_json::Value>(&e.json)
                                .ok()
                                .and_then(|j| j["content"]["membership"].as_str().map(|m| m == "join"))
                                .unwrap_or(false)
                        }),
                        None => false,
                    }
                }
                None => false,
            };
            if !was_joined {
                return Err(forbidden());
            }
            Ok(svc.store.state_of_group(left.state_group).await?)
        }
        _ => Err(forbidden()),
    }
}

/// The stream position up to which a user may see a room: now when joined, else the point
/// they left; `None` if they never were a member.
pub async fn visible_until(svc: &Services, room_id: &RoomId, user_id: &str) -> ApiResult<Option<i64>> {
    let memberships = svc.store.rooms_of_user(user_id).await?;
    Ok(memberships
        .into_iter()
        .find(|(r, _, _)| r == room_id.as_str())
        .and_then(|(_, m, at)| match m.as_str() {
            "join" => Some(i64::MAX),
            "leave" | "ban" => Some(at),
            _ => None,
        }))
}
