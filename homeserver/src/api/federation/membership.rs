//! Membership handlers of the Server-Server API: make_join, send_join (v2), make_leave,
//! send_leave (v2), make_knock, send_knock, invite (v2). Each: `Signed<T>` (X-Matrix verified, ruma's request), one call
//! into `federation::membership`, the answer.

use axum::{Json, extract::State};
use ruma::api::federation::membership::{
    create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
    prepare_knock_event, prepare_leave_event,
};
use serde_json::{Value, value::RawValue};

use super::Signed;
use crate::{
    api::error::{ApiError, ApiResult},
    federation::membership,
    services::Services,
};

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
pub async fn make_join(
    State(svc): State<Services>,
    signed: Signed<prepare_join_event::v1::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    Ok(Json(
        membership::make_join(&svc, &signed.origin, &r.room_id, &r.user_id, &r.ver).await?,
    ))
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
pub async fn send_join(
    State(svc): State<Services>,
    signed: Signed<create_join_event::v2::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    Ok(Json(
        membership::send_join(&svc, &signed.origin, &r.room_id, &r.event_id, &r.pdu).await?,
    ))
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
pub async fn make_leave(
    State(svc): State<Services>,
    signed: Signed<prepare_leave_event::v1::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    Ok(Json(
        membership::make_leave(&svc, &signed.origin, &r.room_id, &r.user_id).await?,
    ))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
pub async fn send_leave(
    State(svc): State<Services>,
    signed: Signed<create_leave_event::v2::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    Ok(Json(
        membership::send_leave(&svc, &signed.origin, &r.room_id, &r.event_id, &r.pdu).await?,
    ))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`
pub async fn make_knock(
    State(svc): State<Services>,
    signed: Signed<prepare_knock_event::v1::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    Ok(Json(
        membership::make_knock(&svc, &signed.origin, &r.room_id, &r.user_id, &r.ver).await?,
    ))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`
pub async fn send_knock(
    State(svc): State<Services>,
    signed: Signed<create_knock_event::v1::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    Ok(Json(
        membership::send_knock(&svc, &signed.origin, &r.room_id, &r.event_id, &r.pdu).await?,
    ))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
pub async fn invite(
    State(svc): State<Services>,
    signed: Signed<create_invite::v2::Request>,
) -> ApiResult<Json<Value>> {
    let r = signed.request;
    let stripped: Vec<Box<RawValue>> = r
        .invite_room_state
        .iter()
        .map(serde_json::value::to_raw_value)
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::from(crate::Error::bad_json(e.to_string())))?;
    Ok(Json(
        membership::invite(
            &svc,
            &signed.origin,
            &r.room_id,
            &r.event_id,
            &r.room_version,
            &r.event,
            &stripped,
        )
        .await?,
    ))
}
