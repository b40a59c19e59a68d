//! Room state: reading it and setting state events.

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::{Auth, JsonBody},
        rooms::parse_room_id,
    },
    ratelimit::Action,
    rooms::{
        self, EventSpec,
        client_event::{Viewer, client_events},
    },
    services::Services,
};

/// `GET /rooms/{roomId}/state`
pub async fn all(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let room = rooms::room(&svc, &room_id).await?;
    let ids: Vec<String> = rooms::visible_state(&svc, &room_id, auth.user_id.as_str())
        .await?
        .into_values()
        .collect();
    let mut rows = svc.store.events(&ids).await?;
    rows.sort_by_key(|r| r.stream_ordering);
    let viewer = Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    };
    Ok(Json(json!(
        client_events(&svc, &rows, &room.row.room_version, Some(viewer)).await?
    )))
}

async fn get(
    svc: &Services,
    auth: &Auth,
    room_id: &str,
    event_type: &str,
    state_key: &str,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(room_id)?;
    rooms::room(svc, &room_id).await?;
    let state = rooms::visible_state(svc, &room_id, auth.user_id.as_str()).await?;
    let event_id = state
        .get(&(event_type.to_owned(), state_key.to_owned()))
        .ok_or_else(|| ApiError::not_found("State event not found"))?;
    let row = svc
        .store
        .event(event_id)
        .await?
        .ok_or_else(|| ApiError::internal("state event missing"))?;
    let pdu: Value = serde_json::from_str(&row.json).map_err(ApiError::internal)?;
    if row.redacted_by.is_some() {
        let room = rooms::room(svc, &room_id).await?;
        let redacted =
            crate::rooms::client_event::client_event(svc, &row, &room.row.room_version, None).await?;
        return Ok(Json(redacted["content"].clone()));
    }
    Ok(Json(pdu.get("content").cloned().unwrap_or_else(|| json!({}))))
}

async fn put(
    svc: &Services,
    auth: &Auth,
    room_id: &str,
    event_type: &str,
    state_key: &str,
    content: Value,
) -> ApiResult<Json<Value>> {
    let room_id = parse_room_id(room_id)?;
    svc.rate_limiter.check(Action::Message, auth.user_id.as_str())?;
    rooms::room(svc, &room_id).await?;
    let appended = svc
        .timeline
        .append(
            svc,
            &room_id,
            &auth.user_id,
            EventSpec::state(event_type, state_key, content),
            None,
        )
        .await?;
    Ok(Json(json!({ "event_id": appended.event_id })))
}

/// `GET /rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn get_keyed(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, t, k)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    get(&svc, &auth, &room_id, &t, &k).await
}

/// `GET /rooms/{roomId}/state/{eventType}` (empty state key)
pub async fn get_empty(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, t)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    get(&svc, &auth, &room_id, &t, "").await
}

/// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn put_keyed(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, t, k)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    put(&svc, &auth, &room_id, &t, &k, content).await
}

/// `PUT /rooms/{roomId}/state/{eventType}` (empty state key)
pub async fn put_empty(
    State(svc): State<Services>,
    auth: Auth,
    Path((room_id, t)): Path<(String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    put(&svc, &auth, &room_id, &t, "", content).await
}
