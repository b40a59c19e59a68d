//! Server discovery and capabilities.

use axum::{Json, extract::State};
use hearth_federation::{DEFAULT_ROOM_VERSION, SUPPORTED_ROOM_VERSIONS};
use serde_json::{Map, Value, json};

use crate::{api::extract::Auth, services::Services};

/// `GET /_matrix/client/versions`: only versions whose required endpoints work here.
pub async fn versions() -> Json<Value> {
    Json(json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"],
        "unstable_features": {},
    }))
}

/// `GET /.well-known/matrix/client`
pub async fn well_known_client(State(svc): State<Services>) -> Json<Value> {
    let base = svc
        .config
        .public_baseurl
        .clone()
        .unwrap_or_else(|| format!("http://{}", svc.config.listen));
    Json(json!({ "m.homeserver": { "base_url": base } }))
}

/// `GET /.well-known/matrix/server`
pub async fn well_known_server(State(svc): State<Services>) -> Json<Value> {
    Json(json!({ "m.server": svc.server_name() }))
}

/// `GET /capabilities`
pub async fn capabilities(_auth: Auth) -> Json<Value> {
    let available: Map<String, Value> = SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| (v.to_string(), json!("stable")))
        .collect();
    Json(json!({
        "capabilities": {
            "m.change_password": { "enabled": true },
            "m.room_versions": { "default": DEFAULT_ROOM_VERSION.as_str(), "available": available },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
        }
    }))
}
