//! Account data, global and per room.

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use crate::{
    api::{
        extract::{Auth, JsonBody},
        rooms::parse_room_id,
    },
    error::{ApiError, ApiResult},
    rooms::tags,
    services::Services,
};

fn own_user(auth: &Auth, user_id: &str) -> ApiResult<()> {
    if auth.user_id.as_str() == user_id {
        Ok(())
    } else {
        Err(ApiError::forbidden("Cannot access another user's account data"))
    }
}

/// Types the server manages itself and clients must not set here.
fn check_settable(data_type: &str) -> ApiResult<()> {
    if matches!(data_type, "m.fully_read" | "m.push_rules") {
        // The spec's status for server-managed types is 405, with M_BAD_JSON.
        return Err(ApiError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("{data_type} is managed by the server and cannot be set here"),
        ));
    }
    Ok(())
}

async fn get(
    svc: &Services,
    user_id: &str,
    room_id: Option<&str>,
    data_type: &str,
) -> ApiResult<Json<Value>> {
    let content = svc
        .store
        .account_data(user_id, room_id, data_type)
        .await?
        .ok_or_else(|| ApiError::not_found("Account data not found"))?;
    Ok(Json(serde_json::from_str(&content).map_err(ApiError::internal)?))
}

async fn put(
    svc: &Services,
    user_id: &str,
    room_id: Option<&str>,
    data_type: &str,
    content: Value,
) -> ApiResult<Json<Value>> {
    check_settable(data_type)?;
    let text = serde_json::to_string(&content).map_err(ApiError::internal)?;
    svc.store
        .put_account_data(user_id, room_id, data_type, &text)
        .await?;
    svc.notifier.notify(vec![user_id.to_owned()]);
    Ok(Json(json!({})))
}

/// `GET /user/{userId}/account_data/{type}`
pub async fn get_global(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, t)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id)?;
    get(&svc, &user_id, None, &t).await
}

/// `PUT /user/{userId}/account_data/{type}`
pub async fn put_global(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, t)): Path<(String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id)?;
    put(&svc, &user_id, None, &t, content).await
}

/// `GET /user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, room_id, t)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id)?;
    let room_id = parse_room_id(&room_id)?;
    get(&svc, &user_id, Some(room_id.as_str()), &t).await
}

/// `PUT /user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn put_room(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, room_id, t)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id)?;
    let room_id = parse_room_id(&room_id)?;
    put(&svc, &user_id, Some(room_id.as_str()), &t, content).await
}

/// `GET /user/{userId}/rooms/{roomId}/tags`
pub async fn get_tags(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, room_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id)?;
    let room_id = parse_room_id(&room_id)?;
    Ok(Json(tags::tags(&svc, &user_id, room_id.as_str()).await?))
}

/// `PUT /user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn put_tag(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id)?;
    let room_id = parse_room_id(&room_id)?;
    tags::set_tag(&svc, &user_id, room_id.as_str(), &tag, Some(body)).await?;
    Ok(Json(json!({})))
}

/// `DELETE /user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn delete_tag(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id)?;
    let room_id = parse_room_id(&room_id)?;
    tags::set_tag(&svc, &user_id, room_id.as_str(), &tag, None).await?;
    Ok(Json(json!({})))
}
