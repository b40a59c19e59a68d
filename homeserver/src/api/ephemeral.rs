//! Receipts, read markers, typing and presence.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, State},
};
use ruma::UserId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::{Auth, JsonBody},
        rooms::parse_room_id,
    },
    rooms::{self, receipts::set_receipt, typing::set_typing},
    services::Services,
    users::presence,
};

#[derive(Deserialize)]
pub struct ReceiptBody {
    thread_id: Option<String>,
}

/// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`
pub async fn receipt(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, receipt_type, event_id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<ReceiptBody>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter
        .check(crate::ratelimit::Action::Receipt, auth.user_id.as_str())?;
    let room_id = parse_room_id(&room_id)?;
    if body.thread_id.as_deref().is_some_and(str::is_empty) {
        return Err(ApiError::invalid_param("thread_id must not be empty"));
    }
    set_receipt(
        &svc,
        &auth.user_id,
        &room_id,
        &receipt_type,
        &event_id,
        body.thread_id.as_deref(),
    )
    .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct ReadMarkersBody {
    #[serde(rename = "m.fully_read")]
    fully_read: Option<String>,
    #[serde(rename = "m.read")]
    read: Option<String>,
    #[serde(rename = "m.read.private")]
    read_private: Option<String>,
}

/// `POST /rooms/{roomId}/read_markers`
pub async fn read_markers(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<ReadMarkersBody>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter
        .check(crate::ratelimit::Action::Receipt, auth.user_id.as_str())?;
    let room_id = parse_room_id(&room_id)?;
    let markers = [
        ("m.fully_read", body.fully_read),
        ("m.read", body.read),
        ("m.read.private", body.read_private),
    ];
    for (receipt_type, event_id) in markers {
        if let Some(event_id) = event_id {
            set_receipt(&svc, &auth.user_id, &room_id, receipt_type, &event_id, None).await?;
        }
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

/// `PUT /rooms/{roomId}/typing/{userId}`
pub async fn typing(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<TypingBody>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter
        .check(crate::ratelimit::Action::Typing, auth.user_id.as_str())?;
    let room_id = parse_room_id(&room_id)?;
    if user_id != auth.user_id.as_str() {
        return Err(ApiError::forbidden("Cannot set another user's typing state"));
    }
    rooms::room(&svc, &room_id).await?;
    rooms::require_joined(&svc, &room_id, auth.user_id.as_str()).await?;
    let timeout = body
        .typing
        .then(|| Duration::from_millis(body.timeout.unwrap_or(30_000)));
    set_typing(&svc, room_id.as_str(), auth.user_id.as_str(), timeout);
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct PresenceBody {
    presence: String,
    status_msg: Option<String>,
}

/// `PUT /presence/{userId}/status`
pub async fn set_presence(
    State(svc): State<Services>,
    auth: Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<PresenceBody>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter
        .check(crate::ratelimit::Action::Presence, auth.user_id.as_str())?;
    if user_id != auth.user_id.as_str() {
        return Err(ApiError::forbidden("Cannot set another user's presence"));
    }
    presence::set_presence(&svc, &user_id, &body.presence, body.status_msg.as_deref()).await?;
    Ok(Json(json!({})))
}

/// `GET /presence/{userId}/status`: for oneself and users who share a room.
pub async fn get_presence(
    State(svc): State<Services>,
    auth: Auth,
    Path(user_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let target = UserId::parse(user_id.as_str()).map_err(|_| ApiError::invalid_param("Invalid user ID"))?;
    if target != auth.user_id
        && svc
            .store
            .shared_rooms(auth.user_id.as_str(), target.as_str())
            .await?
            .is_empty()
    {
        return Err(ApiError::forbidden("You do not share a room with this user"));
    }
    match svc.store.presence(target.as_str()).await? {
        Some(row) => Ok(Json(presence::presence_content(&row))),
        None if svc.store.user(target.as_str()).await?.is_some() => {
            Ok(Json(json!({ "presence": "offline" })))
        }
        None => Err(ApiError::not_found("Unknown user")),
    }
}
