//! `POST /_hearth/testing/v1/clock/advance`: moves the clock of time-dependent rules forward
//! (`clock.rs`). Answers `404 M_UNRECOGNIZED` unless `testing.adjustable_clock` is on.

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};

use crate::{
    api::{
        error::ApiResult,
        extract::{Auth, JsonBody},
    },
    services::Services,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvanceRequest {
    ms: i64,
}

#[derive(Serialize)]
pub struct AdvanceResponse {
    now_ms: i64,
}

pub async fn advance_clock(
    State(svc): State<Services>,
    _auth: Auth,
    JsonBody(body): JsonBody<AdvanceRequest>,
) -> ApiResult<Json<AdvanceResponse>> {
    Ok(Json(AdvanceResponse {
        now_ms: svc.clock.advance(body.ms)?,
    }))
}
