//! Endpoints for test suites, absent (`404 M_UNRECOGNIZED`) unless configured:
//! `POST /_hearth/testing/v1/clock/advance` moves the clock of time-dependent rules forward
//! (`clock.rs`, `testing.adjustable_clock`); `GET /_hearth/testing/v1/sync_stats` serves the
//! `/sync` engine's counters (`sync/stats.rs`, `testing.sync_stats`); with the adjustable clock,
//! `POST /_hearth/testing/v1/push/prune` runs the hourly prune of push outcomes at once, at the
//! clock's time (`push/retention.rs`).

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

#[derive(Serialize)]
pub struct PruneResponse {
    pruned: u64,
}

/// `POST /_hearth/testing/v1/push/prune`: the retention's mark and prune, now.
pub async fn prune_push_outcomes(State(svc): State<Services>, _auth: Auth) -> ApiResult<Json<PruneResponse>> {
    let retention = crate::push::retention::retention_ms(&svc);
    let Some(retention) = retention.filter(|_| svc.config.testing.adjustable_clock) else {
        return Err(crate::error::Error::Unrecognized {
            method_not_allowed: false,
        }
        .into());
    };
    let pruned = crate::push::retention::prune(&svc, svc.clock.now_ms(), retention).await?;
    Ok(Json(PruneResponse { pruned }))
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
