//! `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]` and
//! `GET /rooms/{roomId}/threads` (client-server API v1).

use axum::{Json, extract::State};
use ruma::api::client::{
    relations::{
        get_relating_events, get_relating_events_with_rel_type,
        get_relating_events_with_rel_type_and_event_type,
    },
    threads::get_threads::{self, v1::IncludeThreads},
};

use crate::{
    api::{error::ApiResult, extract::Auth, ruma::Ruma},
    rooms::{
        client_event::Viewer,
        relations::{self, RelationsRequest, RelationsResponse, ThreadsResponse},
    },
    services::Services,
};

fn viewer(auth: &Auth) -> Viewer<'_> {
    Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    }
}

/// `GET /rooms/{roomId}/relations/{eventId}`
pub async fn all(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_relating_events::v1::Request>,
) -> ApiResult<Json<RelationsResponse>> {
    let parsed = RelationsRequest {
        rel_type: None,
        event_type: None,
        from: req.from,
        to: req.to,
        dir: req.dir,
        limit: req.limit.map(u64::from),
        recurse: req.recurse,
    };
    Ok(Json(
        relations::relations(&svc, viewer(&auth), &req.room_id, &req.event_id, parsed).await?,
    ))
}

/// `GET /rooms/{roomId}/relations/{eventId}/{relType}`
pub async fn by_rel_type(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> ApiResult<Json<RelationsResponse>> {
    let parsed = RelationsRequest {
        rel_type: Some(req.rel_type.to_string()),
        event_type: None,
        from: req.from,
        to: req.to,
        dir: req.dir,
        limit: req.limit.map(u64::from),
        recurse: req.recurse,
    };
    Ok(Json(
        relations::relations(&svc, viewer(&auth), &req.room_id, &req.event_id, parsed).await?,
    ))
}

/// `GET /rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`
pub async fn by_rel_and_event_type(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> ApiResult<Json<RelationsResponse>> {
    let parsed = RelationsRequest {
        rel_type: Some(req.rel_type.to_string()),
        event_type: Some(req.event_type.to_string()),
        from: req.from,
        to: req.to,
        dir: req.dir,
        limit: req.limit.map(u64::from),
        recurse: req.recurse,
    };
    Ok(Json(
        relations::relations(&svc, viewer(&auth), &req.room_id, &req.event_id, parsed).await?,
    ))
}

/// `GET /rooms/{roomId}/threads`
pub async fn threads(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_threads::v1::Request>,
) -> ApiResult<Json<ThreadsResponse>> {
    let participated = matches!(req.include, IncludeThreads::Participated);
    Ok(Json(
        relations::threads(
            &svc,
            viewer(&auth),
            &req.room_id,
            participated,
            req.from.as_deref(),
            req.limit.map(u64::from),
        )
        .await?,
    ))
}
