//! Sending, redacting and reading room events.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use ruma::api::client::{message::send_message_event, redact::redact_event};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::Auth,
        rooms::parse_room_id,
        ruma::{Ruma, RumaResponse},
    },
    rooms::{
        self,
        client_event::{Viewer, client_event, client_events},
        history::{self, MessagesRequest},
        send,
    },
    services::Services,
    store::Direction,
    sync::{filter::RoomEventFilter, token::StreamToken},
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
    Path((room_id, event_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let room = rooms::room(&svc, &room_id).await?;
    let row = history::event(&svc, &room_id, auth.user_id.as_str(), &event_id).await?;
    Ok(Json(
        client_event(&svc, &row, &room.row.room_version, Some(viewer(&auth))).await?,
    ))
}

fn viewer(auth: &Auth) -> Viewer<'_> {
    Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    }
}

#[derive(Deserialize)]
pub struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    dir: String,
    limit: Option<String>,
    filter: Option<String>,
}

/// `GET /rooms/{roomId}/messages`
pub async fn messages(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let room = rooms::room(&svc, &room_id).await?;
    let direction = match q.dir.as_str() {
        "b" => Direction::Backwards,
        "f" => Direction::Forwards,
        _ => return Err(ApiError::invalid_param("dir must be b or f")),
    };
    let limit = match &q.limit {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::invalid_param("limit must be an integer"))?,
        None => 10,
    }
    .clamp(1, 1000);
    let filter: RoomEventFilter = match &q.filter {
        Some(f) => RoomEventFilter::parse(f)?,
        None => RoomEventFilter::default(),
    };
    let req = MessagesRequest {
        from: q.from.as_deref().map(StreamToken::parse).transpose()?,
        to: q.to.as_deref().map(StreamToken::parse).transpose()?,
        direction,
        limit,
        filter,
    };
    let lazy_load = req.filter.lazy_load_members == Some(true);
    let page = history::messages(&svc, &room_id, auth.user_id.as_str(), req).await?;
    let version = &room.row.room_version;
    let mut out = json!({
        "start": page.start.to_string(),
        "chunk": client_events(&svc, &page.chunk, version, Some(viewer(&auth))).await?,
    });
    if let Some(end) = page.end {
        out["end"] = json!(end.to_string());
    }
    if lazy_load {
        out["state"] = json!(client_events(&svc, &page.state, version, Some(viewer(&auth))).await?);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
pub struct ContextQuery {
    limit: Option<String>,
}

/// `GET /rooms/{roomId}/context/{eventId}`
pub async fn context(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<ContextQuery>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let room = rooms::room(&svc, &room_id).await?;
    let limit = match &q.limit {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::invalid_param("limit must be an integer"))?,
        None => 10,
    }
    .clamp(0, 100) as usize;
    let context = history::context(&svc, &room_id, auth.user_id.as_str(), &event_id, limit).await?;
    let version = &room.row.room_version;
    let viewer = Some(viewer(&auth));
    Ok(Json(json!({
        "event": client_event(&svc, &context.event, version, viewer).await?,
        "events_before": client_events(&svc, &context.before, version, viewer).await?,
        "events_after": client_events(&svc, &context.after, version, viewer).await?,
        "start": context.start.to_string(),
        "end": context.end.to_string(),
        "state": client_events(&svc, &context.state, version, viewer).await?,
    })))
}
