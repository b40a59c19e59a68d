//! Sending, redacting and reading room events.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use ruma::api::client::{
    context::get_context,
    message::{get_message_events, send_message_event},
    redact::redact_event,
    room::get_room_event,
};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::Auth,
        ruma::{Ruma, RumaResponse},
    },
    rooms::{
        client_event::Viewer,
        history::{self, ContextResponse, MessagesResponse},
        send,
    },
    services::Services,
};
/// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`: idempotent per device and txnId.
pub async fn send(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<send_message_event::v3::Request>,
) -> ApiResult<RumaResponse<send_message_event::v3::Response>> {
    let content = serde_json::from_str(req.body.json().get()).map_err(ApiError::internal)?;
    let event_id = send::send_message(
        &svc,
        sender(&auth),
        &req.room_id,
        &req.event_type.to_string(),
        req.txn_id.as_str(),
        content,
    )
    .await?;
    Ok(send_message_event::v3::Response::new(event_id).into())
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`
pub async fn redact(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<redact_event::v3::Request>,
) -> ApiResult<RumaResponse<redact_event::v3::Response>> {
    let event_id = send::redact(
        &svc,
        sender(&auth),
        &req.room_id,
        &req.event_id,
        req.txn_id.as_str(),
        req.reason,
    )
    .await?;
    Ok(redact_event::v3::Response::new(event_id).into())
}

fn sender(auth: &Auth) -> send::Sender<'_> {
    send::Sender {
        user_id: &auth.user_id,
        device_id: &auth.device_id,
    }
}

/// `GET /rooms/{roomId}/event/{eventId}`
pub async fn get_event(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_room_event::v3::Request>,
) -> ApiResult<RumaResponse<get_room_event::v3::Response>> {
    let event = history::event_for_client(&svc, viewer(&auth), &req.room_id, &req.event_id).await?;
    Ok(get_room_event::v3::Response::new(event).into())
}

fn viewer(auth: &Auth) -> Viewer<'_> {
    Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    }
}

/// `GET /rooms/{roomId}/messages`. The filter is also read as sent: ruma's type leaves out the
/// fields it does not know (`related_by_senders`, `related_by_rel_types`).
pub async fn messages(
    State(svc): State<Services>,
    auth: Auth,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    Ruma(req): Ruma<get_message_events::v3::Request>,
) -> ApiResult<Json<MessagesResponse>> {
    let raw_filter = query
        .ok()
        .and_then(|Query(pairs)| pairs.into_iter().find(|(k, _)| k == "filter").map(|(_, v)| v));
    Ok(Json(
        history::messages_for_client(&svc, viewer(&auth), req, raw_filter.as_deref()).await?,
    ))
}

/// `GET /rooms/{roomId}/context/{eventId}`
pub async fn context(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_context::v3::Request>,
) -> ApiResult<Json<ContextResponse>> {
    Ok(Json(history::context_for_client(&svc, viewer(&auth), req).await?))
}
