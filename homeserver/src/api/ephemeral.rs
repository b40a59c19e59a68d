//! Receipts, read markers, typing and presence.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, State},
};
use ruma::{
    api::client::{
        presence::{get_presence, set_presence},
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
    },
    presence::PresenceState,
};
use serde::Deserialize;

use crate::{
    api::error::ApiResult,
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

/// `PUT /presence/{userId}/status`
pub async fn set_presence(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<set_presence::v3::Request>,
) -> ApiResult<RumaResponse<set_presence::v3::Response>> {
    presence::set_own_presence(
        &svc,
        &auth.user_id,
        &req.user_id,
        req.presence.as_str(),
        req.status_msg.as_deref(),
    )
    .await?;
    Ok(set_presence::v3::Response::new().into())
}

/// `GET /presence/{userId}/status`: for oneself and users who share a room.
pub async fn get_presence(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_presence::v3::Request>,
) -> ApiResult<RumaResponse<get_presence::v3::Response>> {
    let found = presence::presence_of(&svc, &auth.user_id, &req.user_id).await?;
    let mut response = get_presence::v3::Response::new(PresenceState::from(found.presence.as_str()));
    response.last_active_ago = found.last_active_ago.map(Duration::from_millis);
    response.currently_active = found.currently_active;
    response.status_msg = found.status_msg;
    Ok(response.into())
}
