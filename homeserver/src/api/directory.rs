//! Room aliases, directory visibility and `/publicRooms`.

use axum::{
    Json,
    extract::{Query, State},
};
use ruma::api::client::{
    alias::{create_alias, delete_alias, get_alias},
    directory::{get_room_visibility, set_room_visibility},
    room::{Visibility, aliases},
};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::{Auth, JsonBody},
        ruma::{Ruma, RumaResponse},
    },
    rooms::directory::{self, Page, PublicRoomsBody, PublicRoomsQuery},
    services::Services,
};

/// `PUT /directory/room/{roomAlias}`
pub async fn put_alias(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<create_alias::v3::Request>,
) -> ApiResult<RumaResponse<create_alias::v3::Response>> {
    directory::create_alias(&svc, &auth.user_id, &req.room_alias, &req.room_id).await?;
    Ok(create_alias::v3::Response::new().into())
}

/// `GET /directory/room/{roomAlias}`
pub async fn get_alias(
    State(svc): State<Services>,
    Ruma(req): Ruma<get_alias::v3::Request>,
) -> ApiResult<RumaResponse<get_alias::v3::Response>> {
    let resolved = directory::resolve_alias(&svc, &req.room_alias).await?;
    Ok(get_alias::v3::Response::new(resolved.room_id, resolved.servers).into())
}

/// `DELETE /directory/room/{roomAlias}`
pub async fn delete_alias(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<delete_alias::v3::Request>,
) -> ApiResult<RumaResponse<delete_alias::v3::Response>> {
    directory::delete_alias(&svc, &auth.user_id, &req.room_alias).await?;
    Ok(delete_alias::v3::Response::new().into())
}

/// `GET /rooms/{roomId}/aliases`
pub async fn room_aliases(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<aliases::v3::Request>,
) -> ApiResult<RumaResponse<aliases::v3::Response>> {
    let aliases = directory::room_aliases(&svc, &auth.user_id, &req.room_id).await?;
    Ok(aliases::v3::Response::new(aliases).into())
}

/// `GET /directory/list/room/{roomId}`
pub async fn get_visibility(
    State(svc): State<Services>,
    Ruma(req): Ruma<get_room_visibility::v3::Request>,
) -> ApiResult<RumaResponse<get_room_visibility::v3::Response>> {
    let visibility = if directory::is_published(&svc, &req.room_id).await? {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(get_room_visibility::v3::Response::new(visibility).into())
}

/// `PUT /directory/list/room/{roomId}`
pub async fn set_visibility(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<RumaResponse<set_room_visibility::v3::Response>> {
    let public = match req.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        _ => return Err(ApiError::bad_json("visibility must be public or private")),
    };
    directory::publish(&svc, &req.room_id, &auth.user_id, public).await?;
    Ok(set_room_visibility::v3::Response::new().into())
}

/// `GET /publicRooms`: our own request and response types (see `rooms::directory`).
pub async fn public_rooms_get(
    State(svc): State<Services>,
    Query(query): Query<PublicRoomsQuery>,
) -> ApiResult<Json<Page>> {
    let limit = directory::parse_limit(query.limit.as_deref())?;
    let page = directory::public_rooms(
        &svc,
        query.server.as_deref(),
        limit,
        query.since.as_deref(),
        &Default::default(),
    )
    .await?;
    Ok(Json(page))
}

/// `POST /publicRooms`
pub async fn public_rooms_post(
    State(svc): State<Services>,
    _auth: Auth,
    Query(query): Query<PublicRoomsQuery>,
    JsonBody(body): JsonBody<PublicRoomsBody>,
) -> ApiResult<Json<Page>> {
    let page = directory::public_rooms(
        &svc,
        query.server.as_deref(),
        body.limit,
        body.since.as_deref(),
        &body.filter,
    )
    .await?;
    Ok(Json(page))
}
