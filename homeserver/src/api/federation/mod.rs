//! The Server-Server API, served on the federation listener (`federation.listen`, TLS 1.3):
//! version, server keys (own and notary), and the endpoints other servers call with an
//! X-Matrix signature (`Signed<T>`).

mod auth;
mod handlers;
mod media;
mod membership;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::StatusCode,
    routing::{get, post, put},
};
use tower_http::trace::TraceLayer;

pub use auth::Signed;

use crate::{api::error::ApiError, services::Services};

/// The federation listener's routes.
pub fn router(svc: Services) -> Router {
    let body_limit = svc.config.limits.max_request_bytes;
    Router::new()
        .route("/_matrix/federation/v1/version", get(handlers::version))
        .route("/_matrix/key/v2/server", get(handlers::server_keys))
        .route("/_matrix/key/v2/query", post(handlers::query_keys_batch))
        .route("/_matrix/key/v2/query/{server_name}", get(handlers::query_keys))
        .route(
            "/_matrix/federation/v1/query/profile",
            get(handlers::query_profile),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(membership::make_join),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            put(membership::send_join),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(membership::make_leave),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            put(membership::send_leave),
        )
        .route(
            "/_matrix/federation/v1/make_knock/{room_id}/{user_id}",
            get(membership::make_knock),
        )
        .route(
            "/_matrix/federation/v1/send_knock/{room_id}/{event_id}",
            put(membership::send_knock),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            put(membership::invite),
        )
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(handlers::send_transaction),
        )
        .route(
            "/_matrix/federation/v1/user/keys/query",
            post(handlers::user_keys_query),
        )
        .route(
            "/_matrix/federation/v1/user/keys/claim",
            post(handlers::user_keys_claim),
        )
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(handlers::user_devices),
        )
        .route(
            "/_matrix/federation/v1/query/directory",
            get(handlers::query_directory),
        )
        .route("/_matrix/federation/v1/event/{event_id}", get(handlers::event))
        .route(
            "/_matrix/federation/v1/state/{room_id}",
            get(handlers::room_state),
        )
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            get(handlers::room_state_ids),
        )
        .route(
            "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
            get(handlers::event_auth),
        )
        .route(
            "/_matrix/federation/v1/backfill/{room_id}",
            get(handlers::backfill),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(handlers::missing_events),
        )
        .route(
            "/_matrix/federation/v1/media/download/{media_id}",
            get(media::download),
        )
        .route(
            "/_matrix/federation/v1/media/thumbnail/{media_id}",
            get(media::thumbnail),
        )
        .route(
            "/_matrix/federation/v1/openid/userinfo",
            get(handlers::openid_userinfo),
        )
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(handlers::public_rooms).post(handlers::public_rooms_filtered),
        )
        .fallback(|| async { ApiError::unrecognized(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async { ApiError::unrecognized(StatusCode::METHOD_NOT_ALLOWED) })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http())
        .with_state(svc)
}
