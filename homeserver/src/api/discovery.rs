//! Server discovery and capabilities.

use std::collections::BTreeMap;

use axum::extract::State;
use hearth_federation::{DEFAULT_ROOM_VERSION, SUPPORTED_ROOM_VERSIONS};
#[allow(deprecated)]
use ruma::api::{
    client::discovery::{
        discover_homeserver::{self, HomeserverInfo},
        get_capabilities::{
            self,
            v3::{
                Capabilities, ChangePasswordCapability, RoomVersionStability, RoomVersionsCapability,
                SetAvatarUrlCapability, SetDisplayNameCapability, ThirdPartyIdChangesCapability,
            },
        },
        get_supported_versions,
    },
    federation::discovery::discover_homeserver as discover_server,
};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::Auth,
        ruma::{Ruma, RumaResponse},
    },
    services::Services,
};

/// Only versions whose required endpoints work here.
const VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
    "v1.12",
];

/// `GET /_matrix/client/versions`
pub async fn versions(
    Ruma(_): Ruma<get_supported_versions::Request>,
) -> RumaResponse<get_supported_versions::Response> {
    get_supported_versions::Response::new(VERSIONS.iter().map(|v| (*v).to_owned()).collect()).into()
}

/// `GET /.well-known/matrix/client`
pub async fn well_known_client(
    State(svc): State<Services>,
    Ruma(_): Ruma<discover_homeserver::Request>,
) -> RumaResponse<discover_homeserver::Response> {
    discover_homeserver::Response::new(HomeserverInfo::new(svc.base_url())).into()
}

/// `GET /.well-known/matrix/server`
pub async fn well_known_server(
    State(svc): State<Services>,
    Ruma(_): Ruma<discover_server::Request>,
) -> ApiResult<RumaResponse<discover_server::Response>> {
    let server = svc.server_name().try_into().map_err(ApiError::internal)?;
    Ok(discover_server::Response::new(server).into())
}

/// `GET /capabilities`. Capabilities at their spec default (password changes, display names
/// and avatars enabled) are left out, which the spec reads the same.
#[allow(deprecated)]
pub async fn capabilities(
    _auth: Auth,
    Ruma(_): Ruma<get_capabilities::v3::Request>,
) -> RumaResponse<get_capabilities::v3::Response> {
    let available: BTreeMap<_, _> = SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| (v.clone(), RoomVersionStability::Stable))
        .collect();
    let mut capabilities = Capabilities::new();
    capabilities.change_password = ChangePasswordCapability::new(true);
    capabilities.room_versions = RoomVersionsCapability::new(DEFAULT_ROOM_VERSION, available);
    capabilities.set_displayname = SetDisplayNameCapability::new(true);
    capabilities.set_avatar_url = SetAvatarUrlCapability::new(true);
    capabilities.thirdparty_id_changes = ThirdPartyIdChangesCapability::new(false);
    get_capabilities::v3::Response::new(capabilities).into()
}
