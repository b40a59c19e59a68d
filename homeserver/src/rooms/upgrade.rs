//! Room upgrades (client-server API §Room Upgrades): a new room of another version that carries
//! the old room's settings, and a tombstone pointing at it.

use hearth_federation::rules_for;
use ruma::{OwnedRoomId, RoomId, RoomVersionId, UserId};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    rooms::{
        EventSpec,
        membership::{member_content, power_level, state_content},
        room,
        timeline::NewRoom,
    },
    services::Services,
};

/// State copied to the replacement room, in this order (power levels come first, separately).
const TRANSFERRED: &[&str] = &[
    "m.room.server_acl",
    crate::rooms::privacy::PRIVACY_EVENT_TYPE,
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

pub async fn upgrade_room(
    svc: &Services,
    user: &UserId,
    old_room_id: &RoomId,
    new_version: &str,
    additional_creators: &[String],
) -> Result<OwnedRoomId> {
    let version = RoomVersionId::try_from(new_version)
        .ok()
        .filter(|v| rules_for(v).is_some())
        .ok_or_else(|| {
            Error::unsupported_room_version(format!("Room version {new_version} is not supported"))
        })?;
    let new_rules = rules_for(&version).expect("checked above");
    let old = room(svc, old_room_id).await?;
    crate::rooms::require_joined(svc, old_room_id, user).await?;

    let old_levels = state_content(svc, old_room_id, "m.room.power_levels", "").await?;
    let needed = old_levels["events"]["m.room.tombstone"]
        .as_i64()
        .or(old_levels["state_default"].as_i64())
        .unwrap_or(50);
    if power_level(svc, old_room_id, user).await? < needed {
        return Err(Error::forbidden("You may not upgrade this room"));
    }

    // 1. the replacement room's create event
    let old_create = state_content(svc, old_room_id, "m.room.create", "").await?;
    let tombstone_spot = svc.store.forward_extremities(old_room_id.as_str()).await?;
    let mut predecessor = json!({ "room_id": old_room_id });
    if !new_rules.authorization.room_create_event_id_as_room_id
        && let Some((event_id, _)) = tombstone_spot.first()
    {
        predecessor["event_id"] = json!(event_id);
    }
    let mut create = json!({ "room_version": version.as_str(), "predecessor": predecessor });
    if let Some(room_type) = old_create.get("type") {
        create["type"] = room_type.clone();
    }
    if !new_rules.authorization.use_room_create_sender {
        create["creator"] = json!(user);
    }
    let v12 = new_rules.authorization.explicitly_privilege_room_creators;
    if v12 && !additional_creators.is_empty() {
        for c in additional_creators {
            UserId::parse(c.as_str()).map_err(|_| Error::invalid_param(format!("Invalid user ID {c}")))?;
        }
        create["additional_creators"] = json!(additional_creators);
    }
    let mut events = Vec::new();

    // 2. the upgrader joins, 3. power levels, adjusted to who the creators are now
    events.push(EventSpec::state(
        "m.room.member",
        user.as_str(),
        member_content(svc, user, "join").await?,
    ));
    let mut levels = if old_levels.is_object() && !old_levels.as_object().is_some_and(|o| o.is_empty()) {
        old_levels.clone()
    } else {
        json!({})
    };
    if !levels["users"].is_object() {
        levels["users"] = json!({});
    }
    let users = levels["users"].as_object_mut().expect("made an object above");
    if v12 {
        users.remove(user.as_str());
        for c in additional_creators {
            users.remove(c);
        }
        let state_default = levels["state_default"].as_i64().unwrap_or(50);
        if levels["events"]["m.room.tombstone"]
            .as_i64()
            .is_none_or(|t| t <= state_default)
        {
            levels["events"]["m.room.tombstone"] = json!(state_default + 100);
        }
    } else {
        users.insert(user.to_string(), json!(100));
    }
    events.push(EventSpec::state("m.room.power_levels", "", levels));

    // 4. transferable state
    for event_type in TRANSFERRED {
        let content = state_content(svc, old_room_id, event_type, "").await?;
        if content.as_object().is_some_and(|c| !c.is_empty()) {
            events.push(EventSpec::state(event_type, "", content));
        }
    }

    crate::rooms::privacy::add_mode_to_initial_events(&svc.config.privacy, &mut events);

    // 5. local aliases move with the room
    let canonical = state_content(svc, old_room_id, "m.room.canonical_alias", "").await?;
    if canonical.as_object().is_some_and(|c| !c.is_empty()) {
        events.push(EventSpec::state("m.room.canonical_alias", "", canonical));
    }
    let room = NewRoom {
        version: &version,
        creator: user,
        content: create,
        initial: events,
        alias: None,
        is_public: old.row.is_public,
    };
    let new_room_id = svc.timeline.create_room(svc, room).await?;
    for alias in svc.store.aliases_of_room(old_room_id.as_str()).await? {
        let (_, creator) = svc.store.alias(&alias).await?.unwrap_or_default();
        svc.store.delete_alias(&alias).await?;
        svc.store
            .create_alias(&alias, new_room_id.as_str(), &creator)
            .await?;
    }
    if old.row.is_public {
        super::directory::set_published(svc, old_room_id, false).await?;
    }

    // 6. the tombstone, then 7. make the old room read-mostly
    let tombstone = json!({ "body": "This room has been replaced", "replacement_room": new_room_id });
    svc.timeline
        .append(
            svc,
            old_room_id,
            user,
            EventSpec::state("m.room.tombstone", "", tombstone),
            None,
        )
        .await?;
    let mut restricted: Value = old_levels.clone();
    if restricted.is_object() {
        let floor = (restricted["users_default"].as_i64().unwrap_or(0) + 1).max(50);
        for key in ["events_default", "invite"] {
            if restricted[key].as_i64().unwrap_or(0) < floor {
                restricted[key] = json!(floor);
            }
        }
        let restrict = EventSpec::state("m.room.power_levels", "", restricted);
        if let Err(e) = svc.timeline.append(svc, old_room_id, user, restrict, None).await {
            tracing::warn!(room_id = %old_room_id, error = %e, "could not restrict the upgraded room");
        }
    }
    Ok(new_room_id)
}
