//! Device management.

use axum::{Json, extract::State};
use ruma::api::client::device::{delete_device, delete_devices, get_device, get_devices, update_device};

use crate::{
    api::error::ApiResult,
    api::{
        extract::{Auth, Uia},
        ruma::{Ruma, RumaResponse},
    },
    services::Services,
    users::devices::{self, DeviceInfo, DeviceList},
};

/// `GET /devices`
pub async fn list(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(_): Ruma<get_devices::v3::Request>,
) -> ApiResult<Json<DeviceList>> {
    Ok(Json(devices::list(&svc, &auth.user_id).await?))
}

/// `GET /devices/{deviceId}`
pub async fn get(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_device::v3::Request>,
) -> ApiResult<Json<DeviceInfo>> {
    Ok(Json(devices::get(&svc, &auth.user_id, &req.device_id).await?))
}

/// `PUT /devices/{deviceId}`
pub async fn update(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<update_device::v3::Request>,
) -> ApiResult<RumaResponse<update_device::v3::Response>> {
    devices::rename(&svc, &auth.user_id, &req.device_id, req.display_name.as_deref()).await?;
    Ok(update_device::v3::Response::new().into())
}

/// `DELETE /devices/{deviceId}` (user-interactive auth)
pub async fn delete(
    State(svc): State<Services>,
    auth: Auth,
    uia: Uia<delete_device::v3::Request>,
) -> ApiResult<RumaResponse<delete_device::v3::Response>> {
    devices::delete(
        &svc,
        &auth.user_id,
        &uia.request.device_id,
        &uia.operation,
        uia.auth.as_ref(),
    )
    .await?;
    Ok(delete_device::v3::Response::new().into())
}

/// `POST /delete_devices` (user-interactive auth)
pub async fn delete_many(
    State(svc): State<Services>,
    auth: Auth,
    uia: Uia<delete_devices::v3::Request>,
) -> ApiResult<RumaResponse<delete_devices::v3::Response>> {
    devices::delete_many(
        &svc,
        &auth.user_id,
        &uia.request.devices,
        &uia.operation,
        uia.auth.as_ref(),
    )
    .await?;
    Ok(delete_devices::v3::Response::new().into())
}
