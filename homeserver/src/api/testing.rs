//! Endpoints for test suites, absent (`404 M_UNRECOGNIZED`) unless configured:
//! `POST /_hearth/testing/v1/clock/advance` moves the clock of time-dependent rules forward
//! (`clock.rs`, `testing.adjustable_clock`); `GET /_hearth/testing/v1/sync_stats` serves the
//! `/sync` engine's counters (`sync/stats.rs`, `testing.sync_stats`).

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

/// `GET /_hearth/testing/v1/sync_stats`.
pub async fn sync_stats(
    State(svc): State<Services>,
    _auth: Auth,
) -> ApiResult<Json<crate::sync::stats::StatsSnapshot>> {
    if !svc.config.testing.sync_stats {
        return Err(crate::error::Error::Unrecognized {
            method_not_allowed: false,
        }
        .into());
    }
    Ok(Json(svc.sync_engine.stats.snapshot()))
}
