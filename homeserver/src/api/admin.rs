//! `/_hearth/admin/v1`: audited admin reads of search-enabled rooms and the audit log
//! (spec/admin.md). Only reads: no endpoint changes or deletes an audit entry.

use axum::{
    Json,
    extract::{Path, Query, State},
};

use crate::{
    admin::{self, AdminMessages, AuditPage, PageQuery},
    api::{error::ApiResult, extract::Auth},
    services::Services,
};

type Pairs = Query<Vec<(String, String)>>;

/// `GET /_hearth/admin/v1/rooms/{roomId}/messages?reason=…&from=…&limit=…`
pub async fn room_messages(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
    Query(pairs): Pairs,
) -> ApiResult<Json<AdminMessages>> {
    let query = PageQuery::from_pairs(pairs);
    Ok(Json(
        admin::read_messages(&svc, &auth.user_id, &room_id, query).await?,
    ))
}

/// `GET /_hearth/admin/v1/audit`
pub async fn audit(
    State(svc): State<Services>,
    auth: Auth,
    Query(pairs): Pairs,
) -> ApiResult<Json<AuditPage>> {
    Ok(Json(
        admin::audit_log(&svc, &auth.user_id, PageQuery::from_pairs(pairs)).await?,
    ))
}

/// `GET /_hearth/admin/v1/rooms/{roomId}/audit`
pub async fn room_audit(
    State(svc): State<Services>,
    auth: Auth,
    Path(room_id): Path<String>,
    Query(pairs): Pairs,
) -> ApiResult<Json<AuditPage>> {
    Ok(Json(
        admin::room_audit_log(&svc, &auth.user_id, &room_id, PageQuery::from_pairs(pairs)).await?,
    ))
}
