//! Profiles and the user directory.

use axum::{
    Json,
    extract::{Path, State},
};
use ruma::{
    UserId,
    api::client::{
        profile::{get_profile, get_profile_field, set_profile_field},
        user_directory::search_users,
    },
};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::{Auth, JsonBody},
        ruma::{Ruma, RumaResponse},
    },
    services::Services,
    users::profile::{self, Field, Profile, ProfileUpdate},
};

/// `GET /profile/{userId}`
pub async fn get(
    State(svc): State<Services>,
    Ruma(req): Ruma<get_profile::v3::Request>,
) -> ApiResult<Json<Profile>> {
    Ok(Json(profile::profile(&svc, &req.user_id).await?))
}

/// `GET /profile/{userId}/{field}` for `displayname` and `avatar_url`.
pub async fn get_field(
    State(svc): State<Services>,
    Ruma(req): Ruma<get_profile_field::v3::Request>,
) -> ApiResult<Json<Profile>> {
    Ok(Json(profile::field(&svc, &req.user_id, &req.field).await?))
}

/// `PUT /profile/{userId}/{field}` for `displayname` and `avatar_url`. Our own body type (see
/// `ProfileUpdate`), so the path is read here.
pub async fn set_field(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, field)): Path<(String, String)>,
    JsonBody(update): JsonBody<ProfileUpdate>,
) -> ApiResult<RumaResponse<set_profile_field::v3::Response>> {
    let target = UserId::parse(user_id).map_err(|_| ApiError::invalid_param("Invalid user ID"))?;
    profile::set_field(&svc, &auth.user_id, &target, Field::parse(&field)?, update).await?;
    Ok(set_profile_field::v3::Response::new().into())
}

/// `POST /user_directory/search`
pub async fn search_users(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<search_users::v3::Request>,
) -> ApiResult<RumaResponse<search_users::v3::Response>> {
    let (results, limited) = profile::search(&svc, &auth.user_id, &req.search_term, req.limit.into()).await?;
    Ok(search_users::v3::Response::new(results, limited).into())
}
