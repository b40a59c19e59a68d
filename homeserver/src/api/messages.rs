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
        membership::{power_level, required_level},
    },
    services::Services,
    store::{Direction, Txn},
    sync::{filter::RoomEventFilter, latest_events, token::StreamToken},
};

/// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`: idempotent per device and txnId.
pub async fn send(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, event_type, txn_id)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    if event_type == "m.room.redaction" {
        return Err(ApiError::bad_json("Use the redact endpoint to redact events"));
    }
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
    let spec = EventSpec::message(&event_type, content);
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

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`
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
    let original = svc
        .store
        .event(target.as_str())
        .await?
        .filter(|e| e.room_id == room_id.as_str())
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    // Room versions ≥ 3 leave this check to the server: a user may redact their own events,
    // or anyone's with the `redact` power level.
    if original.sender != auth.user_id.as_str()
        && power_level(&svc, &room_id, &auth.user_id).await?
            < required_level(&svc, &room_id, "redact", 50).await?
    {
        return Err(ApiError::forbidden("You may not redact this event"));
    }
    let mut content = json!({});
    if let Some(reason) = body.reason {
        content["reason"] = json!(reason);
    }
    let in_content = room.rules.redaction.content_field_redacts;
    if in_content {
        content["redacts"] = json!(target);
    }
    let spec = EventSpec {
        event_type: "m.room.redaction".into(),
        state_key: None,
        content,
        redacts: (!in_content).then_some(target),
    };
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
    let visible = rooms::visible_until(&svc, &room_id, auth.user_id.as_str())
        .await?
        .ok_or_else(|| ApiError::forbidden("You are not in this room"))?;
    let row = svc
        .store
        .event(&event_id)
        .await?
        .filter(|e| e.room_id == room_id.as_str() && e.stream_ordering <= visible)
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    let viewer = Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    };
    Ok(Json(
        client_event(&svc, &row, &room.row.room_version, Some(viewer)).await?,
    ))
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
    let visible = rooms::visible_until(&svc, &room_id, auth.user_id.as_str())
        .await?
        .ok_or_else(|| ApiError::forbidden("You are not in this room"))?;
    let backwards = match q.dir.as_str() {
        "b" => true,
        "f" => false,
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
    let now = StreamToken::current(&svc).await?;
    let upper = now.events.min(visible);
    let from = match &q.from {
        Some(t) => StreamToken::parse(t)?,
        None if backwards => now,
        None => now.at_events(0),
    };
    let to = q.to.as_deref().map(StreamToken::parse).transpose()?;

    let (rows, end) = if backwards {
        let upto = from.events.min(upper);
        let floor = to.map(|t| t.events).unwrap_or(0);
        let (mut rows, _) = latest_events(&svc, room_id.as_str(), floor, upto, limit, &filter).await?;
        rows.reverse();
        let end = rows.last().map(|r| r.stream_ordering - 1);
        (rows, end)
    } else {
        let ceiling = to.map(|t| t.events).unwrap_or(upper).min(upper);
        let mut rows = Vec::new();
        let mut cursor = from.events;
        'pages: loop {
            let page = svc
                .store
                .room_events(room_id.as_str(), cursor, ceiling, 100, Direction::Forwards)
                .await?;
            let exhausted = page.len() < 100;
            for row in page {
                cursor = row.stream_ordering;
                if filter.allows_event(&row) {
                    rows.push(row);
                    if rows.len() == limit {
                        break 'pages;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        let end = rows.last().map(|r| r.stream_ordering);
        (rows, end)
    };
    let viewer = Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    };
    let chunk = client_events(&svc, &rows, &room.row.room_version, Some(viewer)).await?;
    let mut out = json!({ "start": from.to_string(), "chunk": chunk });
    if let Some(end) = end
        && rows.len() == limit
    {
        out["end"] = json!(from.at_events(end).to_string());
    }
    if filter.lazy_load_members == Some(true) {
        // The member events of the chunk's senders, so the client can show their names.
        let keys: Vec<(String, String)> = rows
            .iter()
            .map(|r| ("m.room.member".to_owned(), r.sender.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let ids: Vec<String> = svc
            .store
            .current_state_entries(room_id.as_str(), &keys)
            .await?
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        let members = svc.store.events(&ids).await?;
        out["state"] = json!(client_events(&svc, &members, &room.row.room_version, Some(viewer)).await?);
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
    let visible = rooms::visible_until(&svc, &room_id, auth.user_id.as_str())
        .await?
        .ok_or_else(|| ApiError::forbidden("You are not in this room"))?;
    let limit = match &q.limit {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::invalid_param("limit must be an integer"))?,
        None => 10,
    }
    .clamp(0, 100);
    let event = svc
        .store
        .event(&event_id)
        .await?
        .filter(|e| e.room_id == room_id.as_str() && e.stream_ordering <= visible)
        .ok_or_else(|| ApiError::not_found("Event not found"))?;
    let upper = svc.store.max_stream_ordering().await?.min(visible);
    let before_n = limit / 2;
    let after_n = limit - before_n;
    let before = svc
        .store
        .room_events(
            room_id.as_str(),
            0,
            event.stream_ordering - 1,
            before_n,
            Direction::Backwards,
        )
        .await?;
    let after = svc
        .store
        .room_events(
            room_id.as_str(),
            event.stream_ordering,
            upper,
            after_n,
            Direction::Forwards,
        )
        .await?;
    let viewer = Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    };
    let version = &room.row.room_version;
    let start = before
        .last()
        .map(|r| r.stream_ordering - 1)
        .unwrap_or(event.stream_ordering - 1);
    let end = after
        .last()
        .map(|r| r.stream_ordering)
        .unwrap_or(event.stream_ordering);
    let state_ids: Vec<String> = svc
        .store
        .state_of_group(event.state_group)
        .await?
        .into_values()
        .collect();
    let mut state = svc.store.events(&state_ids).await?;
    state.sort_by_key(|r| r.stream_ordering);
    let now = StreamToken::current(&svc).await?;
    Ok(Json(json!({
        "event": client_event(&svc, &event, version, Some(viewer)).await?,
        "events_before": client_events(&svc, &before, version, Some(viewer)).await?,
        "events_after": client_events(&svc, &after, version, Some(viewer)).await?,
        "start": now.at_events(start).to_string(),
        "end": now.at_events(end).to_string(),
        "state": client_events(&svc, &state, version, Some(viewer)).await?,
    })))
}
