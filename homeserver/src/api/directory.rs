//! Room aliases and directory visibility.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use ruma::RoomAliasId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::{
        extract::{Auth, JsonBody},
        rooms::parse_room_id,
    },
    error::{ApiError, ApiResult},
    rooms::{
        self,
        directory::{self, DirectoryFilter},
        membership::{power_level, state_content},
    },
    services::Services,
};

fn parse_alias(alias: &str) -> ApiResult<ruma::OwnedRoomAliasId> {
    RoomAliasId::parse(alias).map_err(|_| ApiError::invalid_param("Invalid room alias"))
}

#[derive(Deserialize)]
pub struct AliasBody {
    room_id: String,
}

/// `PUT /directory/room/{roomAlias}`
pub async fn put_alias(
    State(svc): State<Services>,
    auth: Auth,
    Path(alias): Path<String>,
    JsonBody(body): JsonBody<AliasBody>,
) -> ApiResult<Json<Value>> {
    let alias = parse_alias(&alias)?;
    if alias.server_name().as_str() != svc.server_name() {
        return Err(ApiError::invalid_param("Alias must be on this server"));
    }
    let room_id = parse_room_id(&body.room_id)?;
    rooms::room(&svc, &room_id).await?;
    if !svc
        .store
        .create_alias(alias.as_str(), room_id.as_str(), auth.user_id.as_str())
        .await?
    {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "M_UNKNOWN",
            "Room alias already exists",
        ));
    }
    Ok(Json(json!({})))
}

/// `GET /directory/room/{roomAlias}`
pub async fn get_alias(State(svc): State<Services>, Path(alias): Path<String>) -> ApiResult<Json<Value>> {
    let alias = parse_alias(&alias)?;
    let (room_id, _) = svc
        .store
        .alias(alias.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("Room alias not found"))?;
    Ok(Json(
        json!({ "room_id": room_id, "servers": [svc.server_name()] }),
    ))
}

/// `DELETE /directory/room/{roomAlias}`: by its creator or a room moderator.
pub async fn delete_alias(
    State(svc): State<Services>,
    auth: Auth,
    Path(alias): Path<String>,
) -> ApiResult<Json<Value>> {
    let alias = parse_alias(&alias)?;
    let (room_id, creator) = svc
        .store
        .alias(alias.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("Room alias not found"))?;
    let room_id = parse_room_id(&room_id)?;
    let levels = state_content(&svc, &room_id, "m.room.power_levels", "").await?;
    let needed = levels["events"]["m.room.canonical_alias"]
        .as_i64()
        .or(levels["state_default"].as_i64())
        .unwrap_or(50);
    if creator != auth.user_id.as_str() && power_level(&svc, &room_id, &auth.user_id).await? < needed {
        return Err(ApiError::forbidden("You may not delete this alias"));
    }
    svc.store.delete_alias(alias.as_str()).await?;
    Ok(Json(json!({})))
}

/// `GET /rooms/{roomId}/aliases`
pub async fn room_aliases(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let room = rooms::room(&svc, &room_id).await?;
    if !room.row.is_public {
        rooms::require_joined(&svc, &room_id, auth.user_id.as_str()).await?;
    }
    Ok(Json(
        json!({ "aliases": svc.store.aliases_of_room(room_id.as_str()).await? }),
    ))
}

/// `GET /directory/list/room/{roomId}`
pub async fn get_visibility(
    State(svc): State<Services>,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room = rooms::room(&svc, &parse_room_id(&room_id)?).await?;
    Ok(Json(
        json!({ "visibility": if room.row.is_public { "public" } else { "private" } }),
    ))
}

#[derive(Deserialize)]
pub struct VisibilityBody {
    visibility: String,
}

/// `PUT /directory/list/room/{roomId}`
pub async fn set_visibility(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<VisibilityBody>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    rooms::room(&svc, &room_id).await?;
    let public = match body.visibility.as_str() {
        "public" => true,
        "private" => false,
        _ => return Err(ApiError::bad_json("visibility must be public or private")),
    };
    rooms::directory::publish(&svc, &room_id, &auth.user_id, public).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize, Default)]
pub struct PublicRoomsQuery {
    limit: Option<String>,
    since: Option<String>,
    server: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct PublicRoomsBody {
    limit: Option<u64>,
    since: Option<String>,
    filter: Option<DirectoryFilter>,
    #[serde(default)]
    #[allow(dead_code)]
    include_all_networks: bool,
}

/// `GET /publicRooms`
pub async fn public_rooms_get(
    State(svc): State<Services>,
    Query(q): Query<PublicRoomsQuery>,
) -> ApiResult<Json<Value>> {
    check_server(&svc, q.server.as_deref())?;
    let limit = q
        .limit
        .as_deref()
        .map(|l| l.parse::<u64>())
        .transpose()
        .map_err(|_| ApiError::invalid_param("limit must be a non-negative integer"))?;
    Ok(Json(
        directory::page(&svc, limit, q.since.as_deref(), &DirectoryFilter::default()).await?,
    ))
}

/// `POST /publicRooms`
pub async fn public_rooms_post(
    State(svc): State<Services>,
    _auth: Auth,
    Query(q): Query<PublicRoomsQuery>,
    JsonBody(body): JsonBody<PublicRoomsBody>,
) -> ApiResult<Json<Value>> {
    check_server(&svc, q.server.as_deref())?;
    let filter = body.filter.unwrap_or_default();
    Ok(Json(
        directory::page(&svc, body.limit, body.since.as_deref(), &filter).await?,
    ))
}

fn check_server(svc: &Services, server: Option<&str>) -> ApiResult<()> {
    match server {
        Some(s) if s != svc.server_name() => Err(ApiError::not_found(
            "Other servers' directories are not available yet",
        )),
        _ => Ok(()),
    }
}
