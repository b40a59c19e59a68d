//! `/sync` and filters.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, Query, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::error::{ApiError, ApiResult},
    api::extract::{Auth, JsonBody},
    services::Services,
    sync::{SyncRequest, filter::Filter, sync as run_sync, token::StreamToken},
};

/// Longest long-poll a client can ask for.
const MAX_TIMEOUT_MS: u64 = 5 * 60 * 1000;

#[derive(Deserialize)]
pub struct SyncQuery {
    since: Option<String>,
    timeout: Option<String>,
    full_state: Option<String>,
    filter: Option<String>,
    set_presence: Option<String>,
}

/// `GET /sync`
pub async fn sync(
    State(svc): State<Services>,
    auth: Auth,
    Query(q): Query<SyncQuery>,
) -> ApiResult<Json<Value>> {
    let since = q.since.as_deref().map(StreamToken::parse).transpose()?;
    let timeout = match &q.timeout {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::invalid_param("timeout must be an integer"))?,
        None => 0,
    };
    let full_state = match q.full_state.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid_param("full_state must be true or false")),
    };
    let filter = match &q.filter {
        Some(f) => load_filter(&svc, auth.user_id.as_str(), f).await?,
        None => Filter::default(),
    };
    // Syncing counts as activity: the client says which state that means (online by default).
    let presence = q.set_presence.as_deref().unwrap_or("online");
    crate::users::presence::mark_active(&svc, auth.user_id.as_str(), presence).await?;
    let req = SyncRequest {
        since,
        timeout: Duration::from_millis(timeout.min(MAX_TIMEOUT_MS)),
        full_state,
        filter,
    };
    Ok(Json(
        run_sync(&svc, auth.user_id.as_str(), &auth.device_id, req).await?,
    ))
}

/// A filter given inline as JSON, or by the ID of a stored one.
async fn load_filter(svc: &Services, user_id: &str, filter: &str) -> ApiResult<Filter> {
    if filter.trim_start().starts_with('{') {
        return Ok(Filter::parse(filter)?);
    }
    let id: i64 = filter
        .parse()
        .map_err(|_| ApiError::invalid_param("Unknown filter"))?;
    let stored = svc
        .store
        .filter(user_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("Unknown filter"))?;
    // Checked again: filters stored before the limits existed may exceed them.
    Ok(Filter::parse(&stored)?)
}

fn own_user(auth: &Auth, user_id: &str) -> ApiResult<()> {
    if auth.user_id.as_str() == user_id {
        Ok(())
    } else {
        Err(ApiError::forbidden("Cannot access another user's filters"))
    }
}

/// `POST /user/{userId}/filter`
pub async fn create_filter(
    State(svc): State<Services>,
    auth: Auth,
    Path(user_id): Path<String>,
    JsonBody(filter): JsonBody<Filter>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id)?;
    filter.validate()?;
    let json = serde_json::to_string(&filter).map_err(ApiError::internal)?;
    let id = svc.store.insert_filter(&user_id, &json).await?;
    Ok(Json(json!({ "filter_id": id.to_string() })))
}

/// `GET /user/{userId}/filter/{filterId}`
pub async fn get_filter(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, filter_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    own_user(&auth, &user_id)?;
    let id: i64 = filter_id
        .parse()
        .map_err(|_| ApiError::not_found("Unknown filter"))?;
    let stored = svc
        .store
        .filter(&user_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("Unknown filter"))?;
    Ok(Json(serde_json::from_str(&stored).map_err(ApiError::internal)?))
}
