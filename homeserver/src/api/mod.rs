//! The HTTP surface: axum routes by spec area. Handlers are thin: they parse, authenticate,
//! call a domain service and serialize.

pub mod account;
pub mod account_data;
pub mod admin;
pub mod devices;
pub mod directory;
pub mod discovery;
pub mod ephemeral;
pub mod error;
pub mod extract;
pub mod federation;
pub mod keys;
pub mod media;
pub mod messages;
pub mod profile;
pub mod push;
mod refuse_nul;
pub mod relations;
pub mod room_keys;
pub mod rooms;
pub mod ruma;
pub mod search;
pub mod state;
pub mod sync;
pub mod testing;
pub mod ws;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderName, Method, StatusCode, header},
    routing::{get, post, put},
};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    trace::TraceLayer,
};

use crate::{api::error::ApiError, services::Services};

/// Client-Server endpoints that exist under both `/v3` and the older `/r0`.
fn client_routes() -> Router<Services> {
    Router::new()
        .route("/capabilities", get(discovery::capabilities))
        .route("/register", post(account::register))
        .route("/register/available", get(account::register_available))
        .route("/login", get(account::login_flows).post(account::login))
        .route("/refresh", post(account::refresh))
        .route("/logout", post(account::logout))
        .route("/logout/all", post(account::logout_all))
        .route("/account/whoami", get(account::whoami))
        .route("/account/password", post(account::change_password))
        .route("/account/deactivate", post(account::deactivate))
        .route("/devices", get(devices::list))
        .route(
            "/devices/{device_id}",
            get(devices::get).put(devices::update).delete(devices::delete),
        )
        .route("/delete_devices", post(devices::delete_many))
        .route("/profile/{user_id}", get(profile::get))
        .route("/user_directory/search", post(profile::search_users))
        .route("/search", post(search::search))
        .route(
            "/profile/{user_id}/{field}",
            get(profile::get_field).put(profile::set_field),
        )
        .route("/createRoom", post(rooms::create_room))
        .route("/join/{room_id_or_alias}", post(rooms::join_by_id_or_alias))
        .route("/knock/{room_id_or_alias}", post(rooms::knock))
        .route("/joined_rooms", get(rooms::joined_rooms))
        .route("/rooms/{room_id}/join", post(rooms::join))
        .route("/rooms/{room_id}/leave", post(rooms::leave))
        .route("/rooms/{room_id}/forget", post(rooms::forget))
        .route("/rooms/{room_id}/upgrade", post(rooms::upgrade))
        .route("/rooms/{room_id}/{action}", post(rooms::target_membership))
        .route("/rooms/{room_id}/members", get(rooms::members))
        .route("/rooms/{room_id}/joined_members", get(rooms::joined_members))
        .route("/rooms/{room_id}/state", get(state::all))
        .route(
            "/rooms/{room_id}/state/{event_type}",
            get(state::get).put(state::put),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}/",
            get(state::get).put(state::put),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}/{state_key}",
            get(state::get).put(state::put),
        )
        .route("/rooms/{room_id}/send/{event_type}/{txn_id}", put(messages::send))
        .route(
            "/rooms/{room_id}/redact/{event_id}/{txn_id}",
            put(messages::redact),
        )
        .route("/rooms/{room_id}/event/{event_id}", get(messages::get_event))
        .route("/rooms/{room_id}/messages", get(messages::messages))
        .route("/rooms/{room_id}/context/{event_id}", get(messages::context))
        .route("/rooms/{room_id}/aliases", get(directory::room_aliases))
        .route(
            "/directory/room/{alias}",
            get(directory::get_alias)
                .put(directory::put_alias)
                .delete(directory::delete_alias),
        )
        .route(
            "/directory/list/room/{room_id}",
            get(directory::get_visibility).put(directory::set_visibility),
        )
        .route(
            "/publicRooms",
            get(directory::public_rooms_get).post(directory::public_rooms_post),
        )
        .route("/account/3pid", get(account::threepids))
        .route(
            "/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
            post(ephemeral::receipt),
        )
        .route("/rooms/{room_id}/read_markers", post(ephemeral::read_markers))
        .route("/rooms/{room_id}/typing/{user_id}", put(ephemeral::typing))
        .route(
            "/presence/{user_id}/status",
            get(ephemeral::get_presence).put(ephemeral::set_presence),
        )
        .route(
            "/user/{user_id}/rooms/{room_id}/tags",
            get(account_data::get_tags),
        )
        .route(
            "/user/{user_id}/rooms/{room_id}/tags/{tag}",
            put(account_data::put_tag).delete(account_data::delete_tag),
        )
        .route("/sync", get(sync::sync))
        .route("/user/{user_id}/filter", post(sync::create_filter))
        .route(
            "/user/{user_id}/openid/request_token",
            post(account::request_openid_token),
        )
        .route("/user/{user_id}/filter/{filter_id}", get(sync::get_filter))
        .route(
            "/user/{user_id}/account_data/{data_type}",
            get(account_data::get_global).put(account_data::put_global),
        )
        .route(
            "/user/{user_id}/rooms/{room_id}/account_data/{data_type}",
            get(account_data::get_room).put(account_data::put_room),
        )
        .route("/pushrules", get(push::get_all))
        .route("/pushrules/", get(push::get_all))
        .route("/pushrules/{scope}", get(push::get_scope))
        .route("/pushrules/{scope}/", get(push::get_scope))
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}",
            get(push::get_rule).put(push::put_rule).delete(push::delete_rule),
        )
        .route(
            "/pushrules/{scope}/{kind}/{rule_id}/{attr}",
            get(push::get_attr).put(push::put_attr),
        )
        .route("/pushers", get(push::get_pushers))
        .route("/pushers/set", post(push::set_pusher))
        .route("/notifications", get(push::notifications))
        .route(
            "/room_keys/version",
            get(room_keys::latest_version).post(room_keys::create_version),
        )
        .route(
            "/room_keys/version/{version}",
            get(room_keys::get_version)
                .put(room_keys::update_version)
                .delete(room_keys::delete_version),
        )
        .route(
            "/room_keys/keys",
            get(room_keys::get_keys)
                .put(room_keys::put_keys)
                .delete(room_keys::delete_keys),
        )
        .route(
            "/room_keys/keys/{room_id}",
            get(room_keys::get_room_keys)
                .put(room_keys::put_room_keys)
                .delete(room_keys::delete_room_keys),
        )
        .route(
            "/room_keys/keys/{room_id}/{session_id}",
            get(room_keys::get_session_key)
                .put(room_keys::put_session_key)
                .delete(room_keys::delete_session_key),
        )
        .route("/keys/upload", post(keys::upload))
        .route("/keys/query", post(keys::query))
        .route("/keys/claim", post(keys::claim))
        .route("/keys/changes", get(keys::changes))
        .route("/keys/device_signing/upload", post(keys::upload_signing_keys))
        .route("/keys/signatures/upload", post(keys::upload_signatures))
        .route("/sendToDevice/{event_type}/{txn_id}", put(keys::send_to_device))
}

/// Client-Server endpoints that exist under `/v1` only.
fn v1_client_routes() -> Router<Services> {
    Router::new()
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}",
            get(relations::all),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}",
            get(relations::by_rel_type),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}",
            get(relations::by_rel_and_event_type),
        )
        .route(
            "/_matrix/client/v1/rooms/{room_id}/threads",
            get(relations::threads),
        )
}

/// The content repository: uploads and the deprecated endpoints under `/_matrix/media/…`, the
/// authenticated downloads under `/_matrix/client/v1/media/…`. Upload routes take bodies up to
/// `media.max_upload_bytes` instead of the global request limit.
fn media_routes(max_upload_bytes: u64) -> Router<Services> {
    let upload_limit = DefaultBodyLimit::max(usize::try_from(max_upload_bytes).unwrap_or(usize::MAX));
    let mut router = Router::new()
        .route("/_matrix/media/v1/create", post(media::create))
        .route(
            "/_matrix/media/v3/upload/{server_name}/{media_id}",
            put(media::upload_to).layer(upload_limit),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}",
            get(media::download),
        )
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}",
            get(media::download_named),
        )
        .route(
            "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}",
            get(media::thumbnail),
        )
        .route("/_matrix/client/v1/media/config", get(media::config))
        .route(
            "/_matrix/client/v1/media/preview_url",
            get(media::preview_url_disabled),
        );
    for version in ["v3", "r0"] {
        let base = format!("/_matrix/media/{version}");
        router = router
            .route(&format!("{base}/upload"), post(media::upload).layer(upload_limit))
            .route(&format!("{base}/config"), get(media::config))
            .route(&format!("{base}/preview_url"), get(media::preview_url_disabled))
            .route(
                &format!("{base}/download/{{server_name}}/{{media_id}}"),
                get(media::frozen),
            )
            .route(
                &format!("{base}/download/{{server_name}}/{{media_id}}/{{file_name}}"),
                get(media::frozen),
            )
            .route(
                &format!("{base}/thumbnail/{{server_name}}/{{media_id}}"),
                get(media::frozen),
            );
    }
    router
}

pub fn router(svc: Services) -> Router {
    let body_limit = svc.config.limits.max_request_bytes;
    let client = client_routes();
    let media = media_routes(svc.config.media.max_upload_bytes);
    Router::new()
        .route("/_matrix/client/versions", get(discovery::versions))
        .route("/.well-known/matrix/client", get(discovery::well_known_client))
        .route("/.well-known/matrix/server", get(discovery::well_known_server))
        .route(
            "/_matrix/client/v1/register/m.login.registration_token/validity",
            get(account::registration_token_validity),
        )
        .route("/_hearth/testing/v1/clock/advance", post(testing::advance_clock))
        .route("/_hearth/testing/v1/sync_stats", get(testing::sync_stats))
        .route(
            "/_hearth/testing/v1/push/prune",
            post(testing::prune_push_outcomes),
        )
        .route(
            "/_hearth/admin/v1/rooms/{room_id}/messages",
            get(admin::room_messages),
        )
        .route("/_hearth/admin/v1/rooms/{room_id}/audit", get(admin::room_audit))
        .route("/_hearth/admin/v1/audit", get(admin::audit))
        .route(
            "/_matrix/client/unstable/org.hearth.ws/v1/stream",
            get(ws::stream),
        )
        .merge(v1_client_routes())
        .nest("/_matrix/client/v3", client.clone())
        .nest("/_matrix/client/r0", client)
        .merge(media)
        .fallback(|| async { ApiError::unrecognized(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async { ApiError::unrecognized(StatusCode::METHOD_NOT_ALLOWED) })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(refuse_nul::RefuseNulLayer)
        .layer(cors())
        .layer(TraceLayer::new_for_http())
        .with_state(svc)
}

/// The CORS headers the spec asks every response to carry, so web clients work.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
        ])
}
