//! Room creation, membership and member lists.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use ruma::{
    OwnedRoomId, RoomId, RoomOrAliasId,
    api::client::{
        knock::knock_room,
        membership::{
            forget_room, get_member_events, join_room_by_id, join_room_by_id_or_alias, joined_members,
            joined_rooms, leave_room,
        },
        room::{create_room as create_room_api, upgrade_room},
    },
};
use serde::{Deserialize, Serialize};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::{Auth, JsonBody},
        ruma::{Ruma, RumaResponse},
    },
    rooms::{
        client_event::Viewer,
        create::{CreateRoomRequest, create_room as create},
        membership::{self, MemberAction},
        upgrade::upgrade_room as upgrade_to,
    },
    services::Services,
};

pub fn parse_room_id(room_id: &str) -> ApiResult<OwnedRoomId> {
    RoomId::parse(room_id).map_err(|_| ApiError::invalid_param("Invalid room ID"))
}

/// `POST /createRoom`. The body keeps its own type: its checks and their error codes
/// (`M_UNSUPPORTED_ROOM_VERSION`, `M_INVALID_ROOM_STATE`, …) are ours.
pub async fn create_room(
    State(svc): State<Services>,
    auth: Auth,
    JsonBody(body): JsonBody<CreateRoomRequest>,
) -> ApiResult<RumaResponse<create_room_api::v3::Response>> {
    let room_id = create(&svc, &auth.user_id, body).await?;
    Ok(create_room_api::v3::Response::new(room_id).into())
}

/// `POST /join/{roomIdOrAlias}`
pub async fn join_by_id_or_alias(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<join_room_by_id_or_alias::v3::Request>,
) -> ApiResult<RumaResponse<join_room_by_id_or_alias::v3::Response>> {
    let room_id = membership::join_room(&svc, &auth.user_id, &req.room_id_or_alias, &req.via).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id).into())
}

/// `POST /knock/{roomIdOrAlias}`
pub async fn knock(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<knock_room::v3::Request>,
) -> ApiResult<RumaResponse<knock_room::v3::Response>> {
    let room_id = membership::knock_room(
        &svc,
        &auth.user_id,
        &req.room_id_or_alias,
        &req.via,
        req.reason.as_deref(),
    )
    .await?;
    Ok(knock_room::v3::Response::new(room_id).into())
}

/// `POST /rooms/{roomId}/join`
pub async fn join(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<join_room_by_id::v3::Request>,
) -> ApiResult<RumaResponse<join_room_by_id::v3::Response>> {
    let room_id =
        membership::join_room(&svc, &auth.user_id, <&RoomOrAliasId>::from(&*req.room_id), &[]).await?;
    Ok(join_room_by_id::v3::Response::new(room_id).into())
}

/// The body of `/invite`, `/kick`, `/ban` and `/unban`: one route serves all four, so the body
/// is ours (ruma has one type per action); the user ID is checked by the domain
/// (`M_INVALID_PARAM`).
#[derive(Deserialize)]
pub struct TargetBody {
    user_id: String,
    reason: Option<String>,
    #[serde(default)]
    is_direct: bool,
}

/// `{}`: the answer of the membership actions.
#[derive(Serialize)]
pub struct Empty {}

/// `POST /rooms/{roomId}/{invite|kick|ban|unban}`
pub async fn target_membership(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, action)): Path<(String, String)>,
    JsonBody(body): JsonBody<TargetBody>,
) -> ApiResult<Json<Empty>> {
    let action = MemberAction::from_path(&action).ok_or(ApiError::unrecognized(StatusCode::NOT_FOUND))?;
    let room_id = parse_room_id(&room_id)?;
    membership::act_on_member(
        &svc,
        &auth.user_id,
        &room_id,
        action,
        &body.user_id,
        body.reason.as_deref(),
        body.is_direct,
    )
    .await?;
    Ok(Json(Empty {}))
}

/// `POST /rooms/{roomId}/leave`
pub async fn leave(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<leave_room::v3::Request>,
) -> ApiResult<RumaResponse<leave_room::v3::Response>> {
    membership::leave(&svc, &auth.user_id, &req.room_id, req.reason.as_deref()).await?;
    Ok(leave_room::v3::Response::new().into())
}

/// `POST /rooms/{roomId}/forget`
pub async fn forget(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<forget_room::v3::Request>,
) -> ApiResult<RumaResponse<forget_room::v3::Response>> {
    membership::forget(&svc, &auth.user_id, &req.room_id).await?;
    Ok(forget_room::v3::Response::new().into())
}

/// `GET /joined_rooms`
pub async fn joined_rooms(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(_): Ruma<joined_rooms::v3::Request>,
) -> ApiResult<RumaResponse<joined_rooms::v3::Response>> {
    let rooms = membership::joined_rooms(&svc, &auth.user_id).await?;
    Ok(joined_rooms::v3::Response::new(rooms).into())
}

/// `GET /rooms/{roomId}/members`
pub async fn members(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_member_events::v3::Request>,
) -> ApiResult<RumaResponse<get_member_events::v3::Response>> {
    let viewer = Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    };
    let chunk = membership::members_for_client(
        &svc,
        viewer,
        &req.room_id,
        req.membership.as_ref(),
        req.not_membership.as_ref(),
    )
    .await?;
    Ok(get_member_events::v3::Response::new(chunk).into())
}

/// `GET /rooms/{roomId}/joined_members`
pub async fn joined_members(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<joined_members::v3::Request>,
) -> ApiResult<RumaResponse<joined_members::v3::Response>> {
    let joined = membership::joined_members(&svc, &auth.user_id, &req.room_id).await?;
    Ok(joined_members::v3::Response::new(joined).into())
}

/// The body of `/upgrade`. Ours rather than ruma's: an invalid creator ID is `M_INVALID_PARAM`,
/// checked by the upgrade (ruma's would be `M_BAD_JSON`).
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
) -> ApiResult<RumaResponse<upgrade_room::v3::Response>> {
    let room_id = parse_room_id(&room_id)?;
    let new_room = upgrade_to(
        &svc,
        &auth.user_id,
        &room_id,
        &body.new_version,
        &body.additional_creators,
    )
    .await?;
    Ok(upgrade_room::v3::Response::new(new_room).into())
}
