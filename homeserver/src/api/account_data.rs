//! Account data, global and per room, and room tags.

use axum::extract::State;
use ruma::{
    api::client::{
        config::{
            get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
        },
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
};

use crate::{
    api::error::ApiResult,
    api::{
        extract::Auth,
        ruma::{Ruma, RumaResponse},
    },
    rooms::tags,
    services::Services,
    users::account_data,
};

/// `GET /user/{userId}/account_data/{type}`
pub async fn get_global(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_global_account_data::v3::Request>,
) -> ApiResult<RumaResponse<get_global_account_data::v3::Response>> {
    let data_type = req.event_type.to_string();
    let content = account_data::get(&svc, &auth.user_id, &req.user_id, None, &data_type).await?;
    Ok(get_global_account_data::v3::Response::new(Raw::from_json(content)).into())
}

/// `PUT /user/{userId}/account_data/{type}`
pub async fn put_global(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<set_global_account_data::v3::Request>,
) -> ApiResult<RumaResponse<set_global_account_data::v3::Response>> {
    let data_type = req.event_type.to_string();
    account_data::put(
        &svc,
        &auth.user_id,
        &req.user_id,
        None,
        &data_type,
        req.data.json(),
    )
    .await?;
    Ok(set_global_account_data::v3::Response::new().into())
}

/// `GET /user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_room_account_data::v3::Request>,
) -> ApiResult<RumaResponse<get_room_account_data::v3::Response>> {
    let data_type = req.event_type.to_string();
    let content =
        account_data::get(&svc, &auth.user_id, &req.user_id, Some(&req.room_id), &data_type).await?;
    Ok(get_room_account_data::v3::Response::new(Raw::from_json(content)).into())
}

/// `PUT /user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn put_room(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<set_room_account_data::v3::Request>,
) -> ApiResult<RumaResponse<set_room_account_data::v3::Response>> {
    let data_type = req.event_type.to_string();
    account_data::put(
        &svc,
        &auth.user_id,
        &req.user_id,
        Some(&req.room_id),
        &data_type,
        req.data.json(),
    )
    .await?;
    Ok(set_room_account_data::v3::Response::new().into())
}

/// `GET /user/{userId}/rooms/{roomId}/tags`
pub async fn get_tags(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_tags::v3::Request>,
) -> ApiResult<RumaResponse<get_tags::v3::Response>> {
    let tags = tags::tags(&svc, &auth.user_id, &req.user_id, &req.room_id).await?;
    Ok(get_tags::v3::Response::new(tags).into())
}

/// `PUT /user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn put_tag(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<create_tag::v3::Request>,
) -> ApiResult<RumaResponse<create_tag::v3::Response>> {
    tags::set_tag(
        &svc,
        &auth.user_id,
        &req.user_id,
        &req.room_id,
        &req.tag,
        Some(req.tag_info),
    )
    .await?;
    Ok(create_tag::v3::Response::new().into())
}

/// `DELETE /user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn delete_tag(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<delete_tag::v3::Request>,
) -> ApiResult<RumaResponse<delete_tag::v3::Response>> {
    tags::set_tag(&svc, &auth.user_id, &req.user_id, &req.room_id, &req.tag, None).await?;
    Ok(delete_tag::v3::Response::new().into())
}
