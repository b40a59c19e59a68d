//! Membership changes: join, invite, leave, kick, ban, unban, forget; and power levels.

use std::collections::BTreeMap;

use ruma::{
    OwnedMxcUri, OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, RoomId, RoomOrAliasId, UserId,
    api::client::membership::joined_members::v3::RoomMember,
    events::room::member::{MembershipState, RoomMemberEvent, RoomMemberEventContent},
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    federation::remote_membership,
    ratelimit::Action,
    rooms::{
        self, EventSpec,
        client_event::{Viewer, client_events},
        history::raw,
        power, room,
        timeline::Appended,
    },
    services::Services,
};

/// `m.room.member` content for a user, with their current profile.
pub async fn member_event_content(
    svc: &Services,
    user_id: &UserId,
    membership: MembershipState,
) -> Result<RoomMemberEventContent> {
    let mut content = RoomMemberEventContent::new(membership);
    if let Some(user) = svc.store.user(user_id.as_str()).await? {
        content.displayname = user.displayname;
        content.avatar_url = user.avatar_url.map(OwnedMxcUri::from);
    }
    Ok(content)
}

/// `member_event_content` as JSON, for callers that add to it.
pub async fn member_content(svc: &Services, user_id: &UserId, membership: &str) -> Result<Value> {
    to_json(member_event_content(svc, user_id, MembershipState::from(membership)).await?)
}

fn to_json(content: RoomMemberEventContent) -> Result<Value> {
    serde_json::to_value(content).map_err(Error::internal)
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
    if membership_of(svc, room_id, user).await? == Some(MembershipState::Join) {
        return Ok(());
    }
    let content = to_json(member_event_content(svc, user, MembershipState::Join).await?)?;
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
    let mut content = member_event_content(svc, user, MembershipState::Knock).await?;
    content.reason = reason.map(str::to_owned);
    let content = to_json(content)?;
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
    let membership = MembershipState::from(membership);
    let mut content = if membership == MembershipState::Invite {
        member_event_content(svc, target, membership).await?
    } else {
        RoomMemberEventContent::new(membership)
    };
    content.reason = reason.map(str::to_owned);
    content.is_direct = is_direct.then_some(true);
    let content = to_json(content)?;
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
    match membership_of(svc, room_id, user).await? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
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

/// `POST /join/{roomIdOrAlias}` and `POST /rooms/{roomId}/join`: rate limited, idempotent.
pub async fn join_room(
    svc: &Services,
    user: &UserId,
    target: &RoomOrAliasId,
    via: &[OwnedServerName],
) -> Result<OwnedRoomId> {
    svc.rate_limiter.check(Action::Join, user.as_str())?;
    let mut via = via.to_vec();
    let room_id = if target.as_str().starts_with('#') {
        // Through the directory, which asks the alias's server for other servers' aliases; the
        // servers it names are where a remote join can go.
        let alias =
            RoomAliasId::parse(target.as_str()).map_err(|_| Error::invalid_param("Invalid room alias"))?;
        let resolved = rooms::directory::resolve_alias(svc, &alias).await?;
        via.extend(resolved.servers);
        resolved.room_id
    } else {
        resolve_room(svc, target.as_str()).await?
    };
    // A room this server is not in is joined through another server (federation).
    if !remote_membership::is_resident(svc, &room_id).await? {
        if svc.config.federation.enabled {
            remote_membership::join_remote(svc, user, &room_id, &via).await?;
            return Ok(room_id);
        }
        return Err(Error::not_found("Room not found"));
    }
    join(svc, user, &room_id).await?;
    Ok(room_id)
}

/// `POST /knock/{roomIdOrAlias}`: rate limited like joins. A room this server is not in is
/// knocked on through another server (`via`, the alias's servers, the room ID's).
pub async fn knock_room(
    svc: &Services,
    user: &UserId,
    target: &RoomOrAliasId,
    via: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<OwnedRoomId> {
    svc.rate_limiter.check(Action::Join, user.as_str())?;
    let mut via = via.to_vec();
    let room_id = if target.as_str().starts_with('#') {
        let alias =
            RoomAliasId::parse(target.as_str()).map_err(|_| Error::invalid_param("Invalid room alias"))?;
        let resolved = rooms::directory::resolve_alias(svc, &alias).await?;
        via.extend(resolved.servers);
        resolved.room_id
    } else {
        resolve_room(svc, target.as_str()).await?
    };
    if !remote_membership::is_resident(svc, &room_id).await? {
        if svc.config.federation.enabled {
            remote_membership::knock_remote(svc, user, &room_id, &via, reason).await?;
            return Ok(room_id);
        }
        return Err(Error::not_found("Room not found"));
    }
    knock(svc, user, &room_id, reason).await?;
    Ok(room_id)
}

/// What `POST /rooms/{roomId}/{action}` does to its target.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum MemberAction {
    Invite,
    Kick,
    Ban,
    Unban,
}

impl MemberAction {
    /// The action named in the path, if it is one.
    pub fn from_path(action: &str) -> Option<Self> {
        match action {
            "invite" => Some(Self::Invite),
            "kick" => Some(Self::Kick),
            "ban" => Some(Self::Ban),
            "unban" => Some(Self::Unban),
            _ => None,
        }
    }
}

/// `POST /rooms/{roomId}/{invite|kick|ban|unban}`: the target must be a valid user ID; kicking
/// needs a target in the room, unbanning a banned one; inviting someone invited is a no-op.
pub async fn act_on_member(
    svc: &Services,
    sender: &UserId,
    room_id: &RoomId,
    action: MemberAction,
    target: &str,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<()> {
    if action == MemberAction::Invite {
        svc.rate_limiter.check(Action::Invite, sender.as_str())?;
    }
    let target = UserId::parse(target).map_err(|_| Error::invalid_param("Invalid user ID"))?;
    let current = membership_of(svc, room_id, &target).await?;
    let membership = match action {
        MemberAction::Invite if current == Some(MembershipState::Invite) => return Ok(()),
        MemberAction::Invite => MembershipState::Invite,
        MemberAction::Kick => {
            if !matches!(
                current,
                Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
            ) {
                return Err(Error::forbidden("User is not in the room"));
            }
            MembershipState::Leave
        }
        MemberAction::Ban => MembershipState::Ban,
        MemberAction::Unban => {
            if current != Some(MembershipState::Ban) {
                return Err(Error::forbidden("User is not banned"));
            }
            MembershipState::Leave
        }
    };
    if action == MemberAction::Invite && target.server_name().as_str() != svc.server_name() {
        rooms::room(svc, room_id).await?;
        let mut content = member_event_content(svc, &target, MembershipState::Invite).await?;
        content.reason = reason.map(str::to_owned);
        content.is_direct = is_direct.then_some(true);
        return remote_membership::invite_remote(svc, sender, room_id, &target, to_json(content)?).await;
    }
    set_membership(
        svc,
        sender,
        room_id,
        &target,
        membership.as_str(),
        reason,
        is_direct && action == MemberAction::Invite,
    )
    .await?;
    Ok(())
}

/// A user's current membership in a room, if they have one.
async fn membership_of(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<Option<MembershipState>> {
    Ok(svc
        .store
        .membership(room_id.as_str(), user.as_str())
        .await?
        .map(MembershipState::from))
}

/// `POST /rooms/{roomId}/leave`: leaving a room one has already left is a no-op, as in other
/// servers; a banned user cannot leave.
pub async fn leave(svc: &Services, user: &UserId, room_id: &RoomId, reason: Option<&str>) -> Result<()> {
    if remote_membership::has_pending_remote_invite(svc, user, room_id).await? {
        // An invite into a room this server is not in: rejected through the inviter's server.
        return remote_membership::reject_remote_invite(svc, user, room_id).await;
    }
    match membership_of(svc, room_id, user).await? {
        Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {
            // Like any local event, the leave reaches the room's other servers through the
            // outbound queue (`federation::sender`), once each: no `send_leave` beside it, which
            // is for servers outside the room (rejecting a remote invite, above).
            set_membership(
                svc,
                user,
                room_id,
                user,
                MembershipState::Leave.as_str(),
                reason,
                false,
            )
            .await?;
            Ok(())
        }
        Some(MembershipState::Leave) => Ok(()),
        Some(_) => Err(Error::forbidden("You cannot leave this room")),
        None => {
            rooms::room(svc, room_id).await?;
            Err(Error::forbidden("You are not in this room"))
        }
    }
}

/// `GET /joined_rooms`
pub async fn joined_rooms(svc: &Services, user: &UserId) -> Result<Vec<OwnedRoomId>> {
    svc.store
        .rooms_of_user(user.as_str())
        .await?
        .into_iter()
        .filter(|(_, m, _)| m == MembershipState::Join.as_str())
        .map(|(room_id, _, _)| RoomId::parse(room_id).map_err(Error::internal))
        .collect()
}

/// `GET /rooms/{roomId}/members`: the member events in the state the viewer may read, oldest
/// first, kept by `membership` / dropped by `not_membership`.
pub async fn members_for_client(
    svc: &Services,
    viewer: Viewer<'_>,
    room_id: &RoomId,
    membership: Option<&MembershipState>,
    not_membership: Option<&MembershipState>,
) -> Result<Vec<Raw<RoomMemberEvent>>> {
    let room = rooms::room(svc, room_id).await?;
    let state = rooms::visible_state(svc, room_id, viewer.user_id).await?;
    let ids: Vec<String> = state
        .iter()
        .filter(|((t, _), _)| t == "m.room.member")
        .map(|(_, id)| id.clone())
        .collect();
    let mut rows = svc.store.events(&ids).await?;
    rows.sort_by_key(|r| r.stream_ordering);
    let events = client_events(svc, &rows, &room.row.room_version, Some(viewer)).await?;
    events
        .iter()
        .filter(|e| {
            let m = e["content"]["membership"].as_str().unwrap_or_default();
            membership.is_none_or(|w| w.as_str() == m) && not_membership.is_none_or(|n| n.as_str() != m)
        })
        .map(raw)
        .collect()
}

/// `GET /rooms/{roomId}/joined_members`: for members only, with each one's profile in the room.
pub async fn joined_members(
    svc: &Services,
    viewer: &UserId,
    room_id: &RoomId,
) -> Result<BTreeMap<OwnedUserId, RoomMember>> {
    rooms::room(svc, room_id).await?;
    rooms::require_joined(svc, room_id, viewer).await?;
    let mut joined = BTreeMap::new();
    // One query for all of them: a request's cost does not grow by a query per member.
    for (user_id, json) in svc.store.joined_member_events(room_id.as_str()).await? {
        let pdu: Value = serde_json::from_str(&json).map_err(Error::internal)?;
        let content = &pdu["content"];
        let text = |key: &str| content.get(key).and_then(Value::as_str).map(str::to_owned);
        let mut member = RoomMember::new();
        member.display_name = text("displayname");
        member.avatar_url = text("avatar_url").map(OwnedMxcUri::from);
        joined.insert(UserId::parse(user_id).map_err(Error::internal)?, member);
    }
    Ok(joined)
}
