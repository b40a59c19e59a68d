//! Membership changes: join, invite, leave, kick, ban, unban, forget; and power levels.

use ruma::{OwnedRoomId, RoomAliasId, RoomId, UserId};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    rooms::{EventSpec, power, room, timeline::Appended},
    services::Services,
};

/// `m.room.member` content for a user, with their current profile.
pub async fn member_content(svc: &Services, user_id: &UserId, membership: &str) -> Result<Value> {
    let mut content = json!({ "membership": membership });
    if let Some(user) = svc.store.user(user_id.as_str()).await? {
        if let Some(name) = user.displayname {
            content["displayname"] = json!(name);
        }
        if let Some(url) = user.avatar_url {
            content["avatar_url"] = json!(url);
        }
    }
    Ok(content)
}

/// Resolves `!room` or `#alias` to a room ID known here.
pub async fn resolve_room(svc: &Services, room_id_or_alias: &str) -> Result<OwnedRoomId> {
    if room_id_or_alias.starts_with('#') {
        let alias =
            RoomAliasId::parse(room_id_or_alias).map_err(|_| Error::invalid_param("Invalid room alias"))?;
        let (room_id, _) = svc
            .store
            .alias(alias.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        RoomId::parse(room_id).map_err(Error::internal)
    } else {
        RoomId::parse(room_id_or_alias).map_err(|_| Error::invalid_param("Invalid room ID"))
    }
}

pub async fn join(svc: &Services, user: &UserId, room_id: &RoomId) -> Result<()> {
    room(svc, room_id).await?;
    if svc
        .store
        .membership(room_id.as_str(), user.as_str())
        .await?
        .as_deref()
        == Some("join")
    {
        return Ok(());
    }
    let content = member_content(svc, user, "join").await?;
    svc.timeline
        .append(
            svc,
            room_id,
            user,
            EventSpec::state("m.room.member", user.as_str(), content),
            None,
        )
        .await?;
    svc.store.unforget_room(user.as_str(), room_id.as_str()).await?;
    Ok(())
}

/// Asks to join a room whose join rule allows knocking.
pub async fn knock(svc: &Services, user: &UserId, room_id: &RoomId, reason: Option<&str>) -> Result<()> {
    room(svc, room_id).await?;
    let mut content = member_content(svc, user, "knock").await?;
    if let Some(reason) = reason {
        content["reason"] = json!(reason);
    }
    svc.timeline
        .append(
            svc,
            room_id,
            user,
            EventSpec::state("m.room.member", user.as_str(), content),
            None,
        )
        .await?;
    Ok(())
}

/// Sends a membership event about `target`, sent by `sender` (invite, kick, ban, unban, leave).
pub async fn set_membership(
    svc: &Services,
    sender: &UserId,
    room_id: &RoomId,
    target: &UserId,
    membership: &str,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<Appended> {
    room(svc, room_id).await?;
    let mut content = if membership == "invite" {
        member_content(svc, target, membership).await?
    } else {
        json!({ "membership": membership })
    };
    if let Some(reason) = reason {
        content["reason"] = json!(reason);
    }
    if is_direct {
        content["is_direct"] = json!(true);
    }
    svc.timeline
        .append(
            svc,
            room_id,
            sender,
            EventSpec::state("m.room.member", target.as_str(), content),
            None,
        )
        .await
}

/// Forgets a room the user has left.
pub async fn forget(svc: &Services, user: &UserId, room_id: &RoomId) -> Result<()> {
    match svc
        .store
        .membership(room_id.as_str(), user.as_str())
        .await?
        .as_deref()
    {
        Some("join") | Some("invite") | Some("knock") => {
            Err(Error::unknown("You must leave the room before forgetting it"))
        }
        Some(_) => svc
            .store
            .forget_room(user.as_str(), room_id.as_str())
            .await
            .map_err(Into::into),
        None => Err(Error::not_found("You were never in this room")),
    }
}

/// A user's power level in a room; room creators in version 12 rooms rank above everyone.
pub async fn power_level(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<i64> {
    let r = room(svc, room_id).await?;
    let create = state_content(svc, room_id, "m.room.create", "").await?;
    let levels = power_levels(svc, room_id).await?;
    Ok(power::user_level(
        &r.rules.authorization,
        &r.row.creator,
        &create,
        levels.as_ref(),
        user.as_str(),
    ))
}

/// The level `m.room.power_levels` sets for an action key (`redact`, `kick`, …), with the
/// spec's default when absent.
pub async fn required_level(svc: &Services, room_id: &RoomId, key: &str, default: i64) -> Result<i64> {
    Ok(power::action_level(
        power_levels(svc, room_id).await?.as_ref(),
        key,
        default,
    ))
}

/// The current `m.room.power_levels` content, if the room has one.
pub async fn power_levels(svc: &Services, room_id: &RoomId) -> Result<Option<Value>> {
    let has_levels = svc
        .store
        .current_state_event(room_id.as_str(), "m.room.power_levels", "")
        .await?
        .is_some();
    Ok(match has_levels {
        true => Some(state_content(svc, room_id, "m.room.power_levels", "").await?),
        false => None,
    })
}

/// Content of a current state event, `{}` when absent.
pub async fn state_content(
    svc: &Services,
    room_id: &RoomId,
    event_type: &str,
    state_key: &str,
) -> Result<Value> {
    let Some(event_id) = svc
        .store
        .current_state_event(room_id.as_str(), event_type, state_key)
        .await?
    else {
        return Ok(json!({}));
    };
    let row = svc
        .store
        .event(&event_id)
        .await?
        .ok_or_else(|| Error::internal("state event missing"))?;
    let pdu: Value = serde_json::from_str(&row.json).map_err(Error::internal)?;
    Ok(pdu.get("content").cloned().unwrap_or_else(|| json!({})))
}
