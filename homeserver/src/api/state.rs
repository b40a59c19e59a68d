//! Room state: reading it and setting state events.

use axum::extract::State;
use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::Auth,
        ruma::{Ruma, RumaResponse},
    },
    rooms::{client_event::Viewer, state},
    services::Services,
};

/// `GET /rooms/{roomId}/state`
pub async fn all(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_state_events::v3::Request>,
) -> ApiResult<RumaResponse<get_state_events::v3::Response>> {
    let viewer = Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    };
    let events = state::all_for_client(&svc, viewer, &req.room_id).await?;
    Ok(get_state_events::v3::Response::new(events).into())
}

/// `GET /rooms/{roomId}/state/{eventType}[/{stateKey}]` (no key: the empty state key)
pub async fn get(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_state_event_for_key::v3::Request>,
) -> ApiResult<RumaResponse<get_state_event_for_key::v3::Response>> {
    let content =
        state::content_for_client(&svc, &auth.user_id, &req.room_id, &req.event_type, &req.state_key).await?;
    Ok(get_state_event_for_key::v3::Response::new(content).into())
}

/// `PUT /rooms/{roomId}/state/{eventType}[/{stateKey}]` (no key: the empty state key)
pub async fn put(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<send_state_event::v3::Request>,
) -> ApiResult<RumaResponse<send_state_event::v3::Response>> {
    // State content is the client's data: kept as it came.
    let content = serde_json::from_str(req.body.json().get()).map_err(ApiError::internal)?;
    let event_id = state::set(
        &svc,
        &auth.user_id,
        &req.room_id,
        &req.event_type,
        &req.state_key,
        content,
    )
    .await?;
    Ok(send_state_event::v3::Response::new(event_id).into())
}
