//! `POST /search` (server-side search, spec/privacy-modes.md).

use axum::{Json, extract::State};
use ruma::api::client::search::search_events;
use serde_json::Value;

use crate::{
    api::{error::ApiResult, extract::Auth, ruma::Ruma},
    rooms::client_event::Viewer,
    search::query,
    services::Services,
};

/// `POST /search`: our own response shape, since ruma leaves out empty `results` and
/// `highlights`, which clients are sent as `[]`.
pub async fn search(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<search_events::v3::Request>,
) -> ApiResult<Json<Value>> {
    let viewer = Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    };
    Ok(Json(query::search(&svc, viewer, req).await?))
}
