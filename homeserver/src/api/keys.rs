//! End-to-end encryption keys and to-device messages: `/keys/*`, `/sendToDevice`.
//!
//! Bodies are read as JSON and checked by `e2ee::` rather than through ruma's typed requests:
//! ruma refuses a malformed key ID as a malformed body (`M_BAD_JSON`), and the spec wants
//! `M_INVALID_PARAM` for bad keys; `device_signing/upload` takes ruma's request behind `Uia`.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Path, Query, State},
};
use ruma::api::client::keys::upload_signing_keys;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    api::error::{ApiError, ApiResult},
    api::extract::{Auth, JsonBody, Uia},
    e2ee::{
        cross_signing::{self, SignaturesResponse, SigningKeys},
        device_lists,
        keys::{
            self, ClaimRequest, ClaimResponse, QueryRequest, QueryResponse, UploadRequest, UploadResponse,
        },
        to_device::{self, SendRequest},
    },
    services::Services,
};

/// `POST /keys/upload`
pub async fn upload(
    State(svc): State<Services>,
    auth: Auth,
    JsonBody(req): JsonBody<UploadRequest>,
) -> ApiResult<Json<UploadResponse>> {
    Ok(Json(
        keys::upload(&svc, auth.user_id.as_str(), &auth.device_id, req).await?,
    ))
}

/// `POST /keys/query`
pub async fn query(
    State(svc): State<Services>,
    auth: Auth,
    JsonBody(req): JsonBody<QueryRequest>,
) -> ApiResult<Json<QueryResponse>> {
    Ok(Json(keys::query(&svc, auth.user_id.as_str(), req).await?))
}

/// `POST /keys/claim`
pub async fn claim(
    State(svc): State<Services>,
    _auth: Auth,
    JsonBody(req): JsonBody<ClaimRequest>,
) -> ApiResult<Json<ClaimResponse>> {
    Ok(Json(keys::claim(&svc, req).await?))
}

#[derive(Deserialize)]
pub struct ChangesQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /keys/changes`
pub async fn changes(
    State(svc): State<Services>,
    auth: Auth,
    Query(q): Query<ChangesQuery>,
) -> ApiResult<Json<Value>> {
    let (Some(from), Some(to)) = (q.from, q.to) else {
        return Err(ApiError::missing_param("from and to are required"));
    };
    let changes = device_lists::keys_changes(&svc, auth.user_id.as_str(), &from, &to).await?;
    Ok(Json(json!({ "changed": changes.changed, "left": changes.left })))
}

/// `POST /keys/device_signing/upload` (user-interactive auth, when the spec asks for it)
pub async fn upload_signing_keys(
    State(svc): State<Services>,
    auth: Auth,
    uia: Uia<upload_signing_keys::v3::Request>,
) -> ApiResult<Json<Value>> {
    let parse = |raw: &Option<ruma::serde::Raw<_>>| -> ApiResult<Option<Value>> {
        raw.as_ref()
            .map(|r: &ruma::serde::Raw<_>| serde_json::from_str(r.json().get()))
            .transpose()
            .map_err(|e| ApiError::bad_json(e.to_string()))
    };
    let keys = SigningKeys {
        master: parse(&uia.request.master_key)?,
        self_signing: parse(&uia.request.self_signing_key)?,
        user_signing: parse(&uia.request.user_signing_key)?,
    };
    cross_signing::upload_signing_keys(&svc, &auth.user_id, keys, &uia.operation, uia.auth.as_ref()).await?;
    Ok(Json(json!({})))
}

/// `POST /keys/signatures/upload`
pub async fn upload_signatures(
    State(svc): State<Services>,
    auth: Auth,
    JsonBody(body): JsonBody<BTreeMap<String, Map<String, Value>>>,
) -> ApiResult<Json<SignaturesResponse>> {
    Ok(Json(
        cross_signing::upload_signatures(&svc, auth.user_id.as_str(), body).await?,
    ))
}

/// `PUT /sendToDevice/{eventType}/{txnId}`
pub async fn send_to_device(
    State(svc): State<Services>,
    auth: Auth,
    Path((event_type, txn_id)): Path<(String, String)>,
    JsonBody(req): JsonBody<SendRequest>,
) -> ApiResult<Json<Value>> {
    to_device::send(
        &svc,
        auth.user_id.as_str(),
        &auth.device_id,
        &event_type,
        &txn_id,
        req,
    )
    .await?;
    Ok(Json(json!({})))
}
