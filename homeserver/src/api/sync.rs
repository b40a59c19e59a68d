//! `/sync` and filters.

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::header,
    response::Response,
};
use ruma::api::client::filter::create_filter;

use crate::{
    api::error::ApiResult,
    api::{
        extract::{Auth, JsonBody},
        ruma::RumaResponse,
    },
    filter::Filter,
    services::Services,
    sync::{SyncQuery, filter, sync_for_client},
};

/// `GET /sync`: the answer's JSON as serialized once (identical long-polls share it).
pub async fn sync(
    State(svc): State<Services>,
    auth: Auth,
    Query(q): Query<SyncQuery>,
) -> ApiResult<Response> {
    let answer = sync_for_client(&svc, &auth.user_id, &auth.device_id, q).await?;
    let mut response = Response::new(Body::from(answer.body.clone()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `POST /user/{userId}/filter`. The body is our `Filter`: it keeps what ruma's type would refuse
/// (see `sync::SyncQuery`), and a list past its limits is `M_INVALID_PARAM`.
pub async fn create_filter(
    State(svc): State<Services>,
    auth: Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Filter>,
) -> ApiResult<RumaResponse<create_filter::v3::Response>> {
    let id = filter::upload(&svc, &auth.user_id, &user_id, &body).await?;
    Ok(create_filter::v3::Response::new(id).into())
}

/// `GET /user/{userId}/filter/{filterId}`
pub async fn get_filter(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, filter_id)): Path<(String, String)>,
) -> ApiResult<Json<Filter>> {
    Ok(Json(
        filter::download(&svc, &auth.user_id, &user_id, &filter_id).await?,
    ))
}
