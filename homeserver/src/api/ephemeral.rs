//! Receipts, read markers, typing and presence.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, State},
};
use ruma::{
    UserId,
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
    },
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::{Auth, JsonBody},
        rooms::{Empty, parse_room_id},
        ruma::{Ruma, RumaResponse},
    },
    rooms::{receipts, typing},
    services::Services,
    users::presence,
};

/// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`
pub async fn receipt(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<create_receipt::v3::Request>,
) -> ApiResult<RumaResponse<create_receipt::v3::Response>> {
    receipts::receipt(
        &svc,
        &auth.user_id,
        &req.room_id,
        &req.receipt_type,
        &req.event_id,
        &req.thread,
    )
    .await?;
    Ok(create_receipt::v3::Response::new().into())
}

/// `POST /rooms/{roomId}/read_markers`
pub async fn read_markers(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<set_read_marker::v3::Request>,
) -> ApiResult<RumaResponse<set_read_marker::v3::Response>> {
    let markers = [
        (ReceiptType::FullyRead, req.fully_read.as_deref()),
        (ReceiptType::Read, req.read_receipt.as_deref()),
        (ReceiptType::ReadPrivate, req.private_read_receipt.as_deref()),
    ];
    receipts::read_markers(&svc, &auth.user_id, &req.room_id, markers).await?;
    Ok(set_read_marker::v3::Response::new().into())
}

/// The body of `/typing`: ours rather than ruma's, which refuses `typing: true` without a
/// `timeout` (the spec makes it optional; we default to 30 seconds).
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
) -> ApiResult<Json<Empty>> {
    let room_id = parse_room_id(&room_id)?;
    let timeout = body
        .typing
        .then(|| Duration::from_millis(body.timeout.unwrap_or(30_000)));
    typing::typing(&svc, &auth.user_id, &room_id, &user_id, timeout).await?;
    Ok(Json(Empty {}))
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
