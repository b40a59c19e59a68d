//! Server-side key backups: `/room_keys/version[/{version}]` and
//! `/room_keys/keys[/{roomId}[/{sessionId}]]` (`e2ee::backup`).

use axum::extract::State;
use ruma::{
    UInt,
    api::client::backup::{
        add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
        delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session,
        delete_backup_version, get_backup_info, get_backup_keys, get_backup_keys_for_room,
        get_backup_keys_for_session, get_latest_backup_info, update_backup_version,
    },
};

use crate::{
    api::{
        error::ApiResult,
        extract::Auth,
        ruma::{Ruma, RumaResponse},
    },
    e2ee::backup::{self, KeysUpdated},
    services::Services,
};

fn uint(n: u64) -> UInt {
    UInt::new_saturating(n)
}

/// `POST /room_keys/version`
pub async fn create_version(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<create_backup_version::v3::Request>,
) -> ApiResult<RumaResponse<create_backup_version::v3::Response>> {
    let version = backup::create_version(&svc, &auth.user_id, req.algorithm.json()).await?;
    Ok(create_backup_version::v3::Response::new(version).into())
}

/// `GET /room_keys/version`
pub async fn latest_version(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(_): Ruma<get_latest_backup_info::v3::Request>,
) -> ApiResult<RumaResponse<get_latest_backup_info::v3::Response>> {
    let info = backup::latest_version(&svc, &auth.user_id).await?;
    Ok(
        get_latest_backup_info::v3::Response::new(info.algorithm, uint(info.count), info.etag, info.version)
            .into(),
    )
}

/// `GET /room_keys/version/{version}`
pub async fn get_version(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_backup_info::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_info::v3::Response>> {
    let info = backup::version_info(&svc, &auth.user_id, &req.version).await?;
    Ok(get_backup_info::v3::Response::new(info.algorithm, uint(info.count), info.etag, info.version).into())
}

/// `PUT /room_keys/version/{version}`
pub async fn update_version(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<update_backup_version::v3::Request>,
) -> ApiResult<RumaResponse<update_backup_version::v3::Response>> {
    backup::update_version(&svc, &auth.user_id, &req.version, req.algorithm.json()).await?;
    Ok(update_backup_version::v3::Response::new().into())
}

/// `DELETE /room_keys/version/{version}`
pub async fn delete_version(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<delete_backup_version::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_version::v3::Response>> {
    backup::delete_version(&svc, &auth.user_id, &req.version).await?;
    Ok(delete_backup_version::v3::Response::new().into())
}

/// `PUT /room_keys/keys`
pub async fn put_keys(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<add_backup_keys::v3::Request>,
) -> ApiResult<RumaResponse<add_backup_keys::v3::Response>> {
    let keys = req
        .rooms
        .iter()
        .flat_map(|(room_id, backup)| {
            backup
                .sessions
                .iter()
                .map(move |(session_id, data)| (&**room_id, session_id.as_str(), data.json()))
        })
        .collect::<Vec<_>>();
    let KeysUpdated { etag, count } = backup::put_keys(&svc, &auth.user_id, &req.version, &keys).await?;
    Ok(add_backup_keys::v3::Response::new(etag, uint(count)).into())
}

/// `PUT /room_keys/keys/{roomId}`
pub async fn put_room_keys(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<add_backup_keys_for_room::v3::Request>,
) -> ApiResult<RumaResponse<add_backup_keys_for_room::v3::Response>> {
    let keys = req
        .sessions
        .iter()
        .map(|(session_id, data)| (&*req.room_id, session_id.as_str(), data.json()))
        .collect::<Vec<_>>();
    let KeysUpdated { etag, count } = backup::put_keys(&svc, &auth.user_id, &req.version, &keys).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, uint(count)).into())
}

/// `PUT /room_keys/keys/{roomId}/{sessionId}`
pub async fn put_session_key(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<add_backup_keys_for_session::v3::Request>,
) -> ApiResult<RumaResponse<add_backup_keys_for_session::v3::Response>> {
    let keys = [(&*req.room_id, req.session_id.as_str(), req.session_data.json())];
    let KeysUpdated { etag, count } = backup::put_keys(&svc, &auth.user_id, &req.version, &keys).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, uint(count)).into())
}

/// `GET /room_keys/keys`
pub async fn get_keys(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_backup_keys::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_keys::v3::Response>> {
    let rooms = backup::all_keys(&svc, &auth.user_id, &req.version).await?;
    Ok(get_backup_keys::v3::Response::new(rooms).into())
}

/// `GET /room_keys/keys/{roomId}`
pub async fn get_room_keys(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_backup_keys_for_room::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_keys_for_room::v3::Response>> {
    let sessions = backup::room_keys(&svc, &auth.user_id, &req.version, &req.room_id).await?;
    Ok(get_backup_keys_for_room::v3::Response::new(sessions).into())
}

/// `GET /room_keys/keys/{roomId}/{sessionId}`
pub async fn get_session_key(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_backup_keys_for_session::v3::Request>,
) -> ApiResult<RumaResponse<get_backup_keys_for_session::v3::Response>> {
    let key = backup::session_key(&svc, &auth.user_id, &req.version, &req.room_id, &req.session_id).await?;
    Ok(get_backup_keys_for_session::v3::Response::new(key).into())
}

/// `DELETE /room_keys/keys`
pub async fn delete_keys(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<delete_backup_keys::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_keys::v3::Response>> {
    let KeysUpdated { etag, count } =
        backup::delete_keys(&svc, &auth.user_id, &req.version, None, None).await?;
    Ok(delete_backup_keys::v3::Response::new(etag, uint(count)).into())
}

/// `DELETE /room_keys/keys/{roomId}`
pub async fn delete_room_keys(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<delete_backup_keys_for_room::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_keys_for_room::v3::Response>> {
    let KeysUpdated { etag, count } =
        backup::delete_keys(&svc, &auth.user_id, &req.version, Some(&req.room_id), None).await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, uint(count)).into())
}

/// `DELETE /room_keys/keys/{roomId}/{sessionId}`
pub async fn delete_session_key(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<delete_backup_keys_for_session::v3::Request>,
) -> ApiResult<RumaResponse<delete_backup_keys_for_session::v3::Response>> {
    let KeysUpdated { etag, count } = backup::delete_keys(
        &svc,
        &auth.user_id,
        &req.version,
        Some(&req.room_id),
        Some(&req.session_id),
    )
    .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, uint(count)).into())
}
