//! Room creation, membership and member lists.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use ruma::{OwnedRoomId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::error::{ApiError, ApiResult},
    api::extract::{Auth, JsonBody},
    rooms::{
        self,
        client_event::{Viewer, client_events},
        create::{CreateRoomRequest, create_room as create},
        membership::{self, resolve_room},
    },
    services::Services,
};

pub fn parse_room_id(room_id: &str) -> ApiResult<OwnedRoomId> {
    RoomId::parse(room_id).map_err(|_| ApiError::invalid_param("Invalid room ID"))
}

/// `POST /createRoom`
pub async fn create_room(
    State(svc): State<Services>,
    auth: Auth,
    JsonBody(body): JsonBody<CreateRoomRequest>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter
        .check(crate::ratelimit::Action::RoomCreation, auth.user_id.as_str())?;
    let room_id = create(&svc, &auth.user_id, body).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /join/{roomIdOrAlias}`
pub async fn join_by_id_or_alias(
    State(svc): State<Services>,
    auth: Auth,
    Path(target): Path<String>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter
        .check(crate::ratelimit::Action::Join, auth.user_id.as_str())?;
    let room_id = resolve_room(&svc, &target).await?;
    membership::join(&svc, &auth.user_id, &room_id).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /knock/{roomIdOrAlias}`
pub async fn knock(
    State(svc): State<Services>,
    auth: Auth,
    Path(target): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter
        .check(crate::ratelimit::Action::Join, auth.user_id.as_str())?;
    let room_id = resolve_room(&svc, &target).await?;
    membership::knock(&svc, &auth.user_id, &room_id, body.reason.as_deref()).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /rooms/{roomId}/join`
pub async fn join(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter
        .check(crate::ratelimit::Action::Join, auth.user_id.as_str())?;
    let room_id = parse_room_id(&room_id)?;
    membership::join(&svc, &auth.user_id, &room_id).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

#[derive(Deserialize)]
pub struct TargetBody {
    user_id: String,
    reason: Option<String>,
    #[serde(default)]
    is_direct: bool,
}

#[derive(Deserialize)]
pub struct ReasonBody {
    reason: Option<String>,
}

/// `POST /rooms/{roomId}/{invite|kick|ban|unban}`
pub async fn target_membership(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, action)): Path<(String, String)>,
    JsonBody(body): JsonBody<TargetBody>,
) -> ApiResult<Json<Value>> {
    if action == "invite" {
        svc.rate_limiter
            .check(crate::ratelimit::Action::Invite, auth.user_id.as_str())?;
    }
    let room_id = parse_room_id(&room_id)?;
    let target =
        UserId::parse(body.user_id.as_str()).map_err(|_| ApiError::invalid_param("Invalid user ID"))?;
    let current = svc.store.membership(room_id.as_str(), target.as_str()).await?;
    let membership = match action.as_str() {
        "invite" => "invite",
        "kick" => "leave",
        "ban" => "ban",
        "unban" => {
            if current.as_deref() != Some("ban") {
                return Err(ApiError::forbidden("User is not banned"));
            }
            "leave"
        }
        _ => return Err(ApiError::unrecognized(axum::http::StatusCode::NOT_FOUND)),
    };
    if action == "kick" && !matches!(current.as_deref(), Some("join" | "invite" | "knock")) {
        return Err(ApiError::forbidden("User is not in the room"));
    }
    if action == "invite" && current.as_deref() == Some("invite") {
        return Ok(Json(json!({})));
    }
    membership::set_membership(
        &svc,
        &auth.user_id,
        &room_id,
        &target,
        membership,
        body.reason.as_deref(),
        body.is_direct && action == "invite",
    )
    .await?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/leave`
pub async fn leave(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    match svc
        .store
        .membership(room_id.as_str(), auth.user_id.as_str())
        .await?
        .as_deref()
    {
        Some("join" | "invite" | "knock") => {
            membership::set_membership(
                &svc,
                &auth.user_id,
                &room_id,
                &auth.user_id,
                "leave",
                body.reason.as_deref(),
                false,
            )
            .await?;
        }
        // Leaving a room one has already left is a no-op, as in other servers.
        Some("leave") => {}
        Some(_) => return Err(ApiError::forbidden("You cannot leave this room")),
        None => {
            rooms::room(&svc, &room_id).await?;
            return Err(ApiError::forbidden("You are not in this room"));
        }
    }
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/forget`
pub async fn forget(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    membership::forget(&svc, &auth.user_id, &room_id).await?;
    Ok(Json(json!({})))
}

/// `GET /joined_rooms`
pub async fn joined_rooms(State(svc): State<Services>, auth: Auth) -> ApiResult<Json<Value>> {
    let rooms: Vec<String> = svc
        .store
        .rooms_of_user(auth.user_id.as_str())
        .await?
        .into_iter()
        .filter(|(_, m, _)| m == "join")
        .map(|(r, _, _)| r)
        .collect();
    Ok(Json(json!({ "joined_rooms": rooms })))
}

#[derive(Deserialize)]
pub struct MembersQuery {
    membership: Option<String>,
    not_membership: Option<String>,
}

/// `GET /rooms/{roomId}/members`
pub async fn members(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MembersQuery>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let room = rooms::room(&svc, &room_id).await?;
    let state = rooms::visible_state(&svc, &room_id, auth.user_id.as_str()).await?;
    let ids: Vec<String> = state
        .iter()
        .filter(|((t, _), _)| t == "m.room.member")
        .map(|(_, id)| id.clone())
        .collect();
    let mut rows = svc.store.events(&ids).await?;
    rows.sort_by_key(|r| r.stream_ordering);
    let viewer = Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    };
    let events = client_events(&svc, &rows, &room.row.room_version, Some(viewer)).await?;
    let chunk: Vec<Value> = events
        .into_iter()
        .filter(|e| {
            let m = e["content"]["membership"].as_str().unwrap_or_default();
            q.membership.as_deref().is_none_or(|w| w == m) && q.not_membership.as_deref() != Some(m)
        })
        .collect();
    Ok(Json(json!({ "chunk": chunk })))
}

/// `GET /rooms/{roomId}/joined_members`
pub async fn joined_members(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    rooms::room(&svc, &room_id).await?;
    rooms::require_joined(&svc, &room_id, auth.user_id.as_str()).await?;
    let mut joined = serde_json::Map::new();
    for user_id in svc.store.members_with(room_id.as_str(), "join").await? {
        let content = membership::state_content(&svc, &room_id, "m.room.member", &user_id).await?;
        let mut profile = serde_json::Map::new();
        for (from, to) in [("displayname", "display_name"), ("avatar_url", "avatar_url")] {
            if let Some(value) = content.get(from).filter(|v| v.is_string()) {
                profile.insert(to.into(), value.clone());
            }
        }
        joined.insert(user_id, Value::Object(profile));
    }
    Ok(Json(json!({ "joined": joined })))
}

#[derive(Deserialize)]
pub struct UpgradeBody {
    new_version: String,
    #[serde(default)]
    additional_creators: Vec<String>,
}

/// `POST /rooms/{roomId}/upgrade`
pub async fn upgrade(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<UpgradeBody>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let new_room = rooms::upgrade::upgrade_room(
        &svc,
        &auth.user_id,
        &room_id,
        &body.new_version,
        &body.additional_creators,
    )
    .await?;
    Ok(Json(json!({ "replacement_room": new_room })))
}
