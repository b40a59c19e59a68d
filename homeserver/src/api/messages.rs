//! Sending, redacting and reading room events.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use ruma::EventId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::{
        extract::{Auth, JsonBody},
        rooms::parse_room_id,
    },
    error::{ApiError, ApiResult},
    ratelimit::Action,
    rooms::{
        self, EventSpec,
        client_event::{Viewer, client_event, client_events},
        history::{self, MessagesRequest},
    },
    services::Services,
    store::{Direction, Txn},
    sync::{filter::RoomEventFilter, token::StreamToken},
};

/// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`: idempotent per device and txnId.
pub async fn send(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, event_type, txn_id)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let txn = Txn {
        device_id: auth.device_id.clone(),
        scope: format!("send/{room_id}/{event_type}"),
        txn_id,
    };
    rooms::checks::check_txn(&txn)?;
    // A retry of a sent transaction is answered even when the sender is over the limit.
    if let Err(limited) = svc.rate_limiter.check(Action::Message, auth.user_id.as_str())
        && svc
            .store
            .event_for_txn(auth.user_id.as_str(), &txn)
            .await?
            .is_none()
    {
        return Err(limited);
    }
    let spec = if event_type == "m.room.redaction" {
        // Allowed here in every room version since v1.18; the target is in `content.redacts`.
        let target = content
            .get("redacts")
            .and_then(Value::as_str)
            .and_then(|id| EventId::parse(id).ok())
            .ok_or_else(|| ApiError::bad_json("A redaction needs content.redacts, an event ID"))?;
        let room = rooms::room(&svc, &room_id).await?;
        EventSpec::redaction(&room.rules, target, content)
    } else {
        EventSpec::message(&event_type, content)
    };
    let appended = svc
        .timeline
        .append(&svc, &room_id, &auth.user_id, spec, Some(txn))
        .await?;
    Ok(Json(json!({ "event_id": appended.event_id })))
}

#[derive(Deserialize)]
pub struct RedactBody {
    reason: Option<String>,
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`: the timeline checks that the target is an
/// event of this room that the sender may redact.
pub async fn redact(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, event_id, txn_id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<RedactBody>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let target =
        EventId::parse(event_id.as_str()).map_err(|_| ApiError::invalid_param("Invalid event ID"))?;
    let room = rooms::room(&svc, &room_id).await?;
    let txn = Txn {
        device_id: auth.device_id.clone(),
        scope: format!("redact/{room_id}/{target}"),
        txn_id,
    };
    rooms::checks::check_txn(&txn)?;
    if let Some(existing) = svc.store.event_for_txn(auth.user_id.as_str(), &txn).await? {
        return Ok(Json(json!({ "event_id": existing })));
    }
    svc.rate_limiter.check(Action::Message, auth.user_id.as_str())?;
    rooms::require_joined(&svc, &room_id, auth.user_id.as_str()).await?;
    let mut content = json!({});
    if let Some(reason) = body.reason {
        content["reason"] = json!(reason);
    }
    let spec = EventSpec::redaction(&room.rules, target, content);
    let appended = svc
        .timeline
        .append(&svc, &room_id, &auth.user_id, spec, Some(txn))
        .await?;
    Ok(Json(json!({ "event_id": appended.event_id })))
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
