//! Device management.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::extract::{Auth, JsonBody, UiaBody},
    error::{ApiError, ApiResult},
    services::Services,
    store::DeviceRow,
    users::uia,
};

/// A device as the spec shows it: absent fields are left out, never `null`.
fn device_json(device: &DeviceRow) -> Value {
    let mut out = json!({ "device_id": device.device_id });
    if let Some(name) = &device.display_name {
        out["display_name"] = json!(name);
    }
    if let Some(ts) = device.last_seen_ts {
        out["last_seen_ts"] = json!(ts);
    }
    if let Some(ip) = &device.last_seen_ip {
        out["last_seen_ip"] = json!(ip);
    }
    out
}

/// `GET /devices`
pub async fn list(State(svc): State<Services>, auth: Auth) -> ApiResult<Json<Value>> {
    let devices = svc.store.devices(auth.user_id.as_str()).await?;
    Ok(Json(
        json!({ "devices": devices.iter().map(device_json).collect::<Vec<_>>() }),
    ))
}

/// `GET /devices/{deviceId}`
pub async fn get(
    State(svc): State<Services>,
    auth: Auth,
    Path(device_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let device = svc
        .store
        .device(auth.user_id.as_str(), &device_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Device not found"))?;
    Ok(Json(device_json(&device)))
}

#[derive(Deserialize)]
pub struct UpdateBody {
    display_name: Option<String>,
}

/// `PUT /devices/{deviceId}`
pub async fn update(
    State(svc): State<Services>,
    auth: Auth,
    Path(device_id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> ApiResult<Json<Value>> {
    if !svc
        .store
        .set_device_display_name(auth.user_id.as_str(), &device_id, body.display_name.as_deref())
        .await?
    {
        return Err(ApiError::not_found("Device not found"));
    }
    Ok(Json(json!({})))
}

/// `DELETE /devices/{deviceId}` (user-interactive auth)
pub async fn delete(
    State(svc): State<Services>,
    auth: Auth,
    Path(device_id): Path<String>,
    UiaBody(body, operation): UiaBody<Value>,
) -> ApiResult<Json<Value>> {
    if svc
        .store
        .device(auth.user_id.as_str(), &device_id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("Device not found"));
    }
    uia::authenticate(
        &svc,
        &operation,
        &body,
        &[vec!["m.login.password"]],
        Some(auth.user_id.as_str()),
        None,
    )
    .await?;
    svc.store.delete_device(auth.user_id.as_str(), &device_id).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct DeleteManyBody {
    devices: Vec<String>,
    #[serde(flatten)]
    rest: Value,
}

/// `POST /delete_devices` (user-interactive auth)
pub async fn delete_many(
    State(svc): State<Services>,
    auth: Auth,
    UiaBody(body, operation): UiaBody<DeleteManyBody>,
) -> ApiResult<Json<Value>> {
    uia::authenticate(
        &svc,
        &operation,
        &body.rest,
        &[vec!["m.login.password"]],
        Some(auth.user_id.as_str()),
        None,
    )
    .await?;
    for device_id in &body.devices {
        svc.store.delete_device(auth.user_id.as_str(), device_id).await?;
    }
    Ok(Json(json!({})))
}
