//! Federation handlers: extract, authenticate (`Signed<T>` where the spec asks), one domain
//! call, respond.

use axum::{Json, extract::State};
use ruma::{
    CanonicalJsonObject,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        device::get_devices,
        directory::{get_public_rooms, get_public_rooms_filtered},
        discovery::{get_remote_server_keys, get_remote_server_keys_batch, get_server_version},
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
        keys::{claim_keys, get_keys},
        query::{get_profile_information, get_room_information},
        transactions::send_transaction_message,
    },
};
use serde_json::{Value, json};

use super::Signed;
use crate::{
    api::{
        error::{ApiError, ApiResult},
        ruma::{Ruma, RumaResponse},
    },
    federation::{answers, keys, reads, transactions},
    rooms::directory::{self, DirectoryFilter, Page},
    services::Services,
    users::profile,
};

/// `GET /_matrix/federation/v1/version`.
pub async fn version(
    Ruma(_): Ruma<get_server_version::v1::Request>,
) -> RumaResponse<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Hearth".into());
    server.version = Some(env!("CARGO_PKG_VERSION").into());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    response.into()
}

/// `GET /_matrix/key/v2/server`: this server's keys, signed by its current key.
pub async fn server_keys(State(svc): State<Services>) -> Json<CanonicalJsonObject> {
    Json(keys::own_response(&svc))
}

/// `GET /_matrix/key/v2/query/{serverName}`: the notary, for one server.
pub async fn query_keys(
    State(svc): State<Services>,
    Ruma(request): Ruma<get_remote_server_keys::v2::Request>,
) -> ApiResult<Json<Value>> {
    let min = i64::from(request.minimum_valid_until_ts.get());
    let found = keys::notary_query(&svc, vec![(request.server_name, Some(min))]).await?;
    Ok(Json(json!({ "server_keys": found })))
}

/// `POST /_matrix/key/v2/query`: the notary, for several servers. A server's criteria ask for
/// keys valid until the latest `minimum_valid_until_ts` among its key IDs.
pub async fn query_keys_batch(
    State(svc): State<Services>,
    Ruma(request): Ruma<get_remote_server_keys_batch::v2::Request>,
) -> ApiResult<Json<Value>> {
    if request.server_keys.len() > keys::MAX_NOTARY_SERVERS {
        return Err(ApiError::invalid_param(format!(
            "at most {} servers per key query",
            keys::MAX_NOTARY_SERVERS
        )));
    }
    let queries = request
        .server_keys
        .into_iter()
        .map(|(server, criteria)| {
            let min = criteria
                .values()
                .filter_map(|c| c.minimum_valid_until_ts)
                .map(|ts| i64::from(ts.get()))
                .max();
            (server, min)
        })
        .collect();
    let found = keys::notary_query(&svc, queries).await?;
    Ok(Json(json!({ "server_keys": found })))
}

/// `GET /_matrix/federation/v1/query/profile`: a local user's profile (or one field of it).
pub async fn query_profile(
    State(svc): State<Services>,
    signed: Signed<get_profile_information::v1::Request>,
) -> ApiResult<Json<profile::Profile>> {
    let request = signed.request;
    if request.user_id.server_name().as_str() != svc.server_name() {
        return Err(ApiError::invalid_param("The user is not on this server"));
    }
    let found = match &request.field {
        Some(field) => profile::field(&svc, &request.user_id, field).await?,
        None => profile::profile(&svc, &request.user_id).await?,
    };
    Ok(Json(found))
}

/// `PUT /_matrix/federation/v1/send/{txnId}`: a transaction of PDUs and EDUs.
pub async fn send_transaction(
    State(svc): State<Services>,
    signed: Signed<send_transaction_message::v1::Request>,
) -> ApiResult<RumaResponse<send_transaction_message::v1::Response>> {
    Ok(transactions::receive(&svc, &signed.origin, signed.request)
        .await?
        .into())
}

/// `POST /_matrix/federation/v1/user/keys/query`.
pub async fn user_keys_query(
    State(svc): State<Services>,
    signed: Signed<get_keys::v1::Request>,
) -> ApiResult<Json<Value>> {
    Ok(Json(answers::keys_query(&svc, signed.request.device_keys).await?))
}

/// `POST /_matrix/federation/v1/user/keys/claim`.
pub async fn user_keys_claim(
    State(svc): State<Services>,
    signed: Signed<claim_keys::v1::Request>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        answers::keys_claim(&svc, signed.request.one_time_keys).await?,
    ))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`.
pub async fn user_devices(
    State(svc): State<Services>,
    signed: Signed<get_devices::v1::Request>,
) -> ApiResult<Json<Value>> {
    Ok(Json(answers::user_devices(&svc, &signed.request.user_id).await?))
}

/// `GET /_matrix/federation/v1/query/directory?room_alias=`.
pub async fn query_directory(
    State(svc): State<Services>,
    signed: Signed<get_room_information::v1::Request>,
) -> ApiResult<Json<Value>> {
    Ok(Json(answers::directory(&svc, &signed.request.room_alias).await?))
}

/// `GET /_matrix/federation/v1/event/{eventId}`.
pub async fn event(
    State(svc): State<Services>,
    signed: Signed<get_event::v1::Request>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        reads::event(&svc, &signed.origin, &signed.request.event_id).await?,
    ))
}

/// `GET /_matrix/federation/v1/state/{roomId}?event_id=`.
pub async fn room_state(
    State(svc): State<Services>,
    signed: Signed<get_room_state::v1::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    Ok(Json(
        reads::state(&svc, &signed.origin, &r.room_id, &r.event_id).await?,
    ))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=`.
pub async fn room_state_ids(
    State(svc): State<Services>,
    signed: Signed<get_room_state_ids::v1::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    Ok(Json(
        reads::state_ids(&svc, &signed.origin, &r.room_id, &r.event_id).await?,
    ))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`.
pub async fn event_auth(
    State(svc): State<Services>,
    signed: Signed<get_event_authorization::v1::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    Ok(Json(
        reads::event_auth(&svc, &signed.origin, &r.room_id, &r.event_id).await?,
    ))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}?v=&limit=`.
pub async fn backfill(
    State(svc): State<Services>,
    signed: Signed<get_backfill::v1::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    let from = r.v.into_iter().map(|id| id.to_string()).collect();
    Ok(Json(
        reads::backfill(&svc, &signed.origin, &r.room_id, from, r.limit.into()).await?,
    ))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`.
pub async fn missing_events(
    State(svc): State<Services>,
    signed: Signed<get_missing_events::v1::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    let ids = |list: Vec<ruma::OwnedEventId>| list.into_iter().map(|id| id.to_string()).collect();
    Ok(Json(
        reads::missing_events(
            &svc,
            &signed.origin,
            &r.room_id,
            ids(r.earliest_events),
            ids(r.latest_events),
            r.limit.into(),
            r.min_depth.into(),
        )
        .await?,
    ))
}

/// `GET /_matrix/federation/v1/publicRooms`: this server's directory.
pub async fn public_rooms(
    State(svc): State<Services>,
    signed: Signed<get_public_rooms::v1::Request>,
) -> ApiResult<Json<Page>> {
    let r = signed.request;
    let limit = r.limit.map(u64::from);
    Ok(Json(
        directory::public_rooms(&svc, None, limit, r.since.as_deref(), &Default::default()).await?,
    ))
}

/// `POST /_matrix/federation/v1/publicRooms`: this server's directory, filtered.
pub async fn public_rooms_filtered(
    State(svc): State<Services>,
    signed: Signed<get_public_rooms_filtered::v1::Request>,
) -> ApiResult<Json<Page>> {
    let r = signed.request;
    let room_types = (!r.filter.room_types.is_empty()).then(|| {
        serde_json::to_value(&r.filter.room_types)
            .ok()
            .and_then(|v| serde_json::from_value::<Vec<Option<String>>>(v).ok())
            .unwrap_or_default()
    });
    let filter = DirectoryFilter {
        generic_search_term: r.filter.generic_search_term,
        room_types,
    };
    let limit = r.limit.map(u64::from);
    Ok(Json(
        directory::public_rooms(&svc, None, limit, r.since.as_deref(), &filter).await?,
    ))
}

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=…`: not X-Matrix signed — the
/// token is the credential. Missing, unknown or expired → 401 `M_UNKNOWN_TOKEN`.
pub async fn openid_userinfo(
    State(svc): State<Services>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let token = params.get("access_token").map(String::as_str).unwrap_or_default();
    let sub = crate::users::openid::userinfo(&svc, token).await?;
    Ok(Json(json!({ "sub": sub })))
}
