//! A user's devices: listing, renaming, and deleting them behind a password check.

use ruma::{DeviceId, OwnedDeviceId, UserId};
use serde::Serialize;
use serde_json::Value;

use crate::{
    error::{Error, Result},
    services::Services,
    store::DeviceRow,
    users::uia::{self, Operation},
};

/// A device as the spec shows it: absent fields are left out, never `null` (ruma's `Device`
/// writes `null`s).
#[derive(Debug, Serialize)]
pub struct DeviceInfo {
    pub device_id: OwnedDeviceId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_ts: Option<i64>,
}

impl From<DeviceRow> for DeviceInfo {
    fn from(row: DeviceRow) -> Self {
        Self {
            device_id: row.device_id.into(),
            display_name: row.display_name,
            last_seen_ip: row.last_seen_ip,
            last_seen_ts: row.last_seen_ts,
        }
    }
}

/// `GET /devices`'s answer.
#[derive(Debug, Serialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceInfo>,
}

pub async fn list(svc: &Services, user_id: &UserId) -> Result<DeviceList> {
    let rows = svc.store.devices(user_id.as_str()).await?;
    Ok(DeviceList {
        devices: rows.into_iter().map(DeviceInfo::from).collect(),
    })
}

pub async fn get(svc: &Services, user_id: &UserId, device_id: &DeviceId) -> Result<DeviceInfo> {
    svc.store
        .device(user_id.as_str(), device_id.as_str())
        .await?
        .map(DeviceInfo::from)
        .ok_or_else(|| Error::not_found("Device not found"))
}

pub async fn rename(
    svc: &Services,
    user_id: &UserId,
    device_id: &DeviceId,
    display_name: Option<&str>,
) -> Result<()> {
    if !svc
        .store
        .set_device_display_name(user_id.as_str(), device_id.as_str(), display_name)
        .await?
    {
        return Err(Error::not_found("Device not found"));
    }
    Ok(())
}

/// Deletes a device once its owner has confirmed their password. An unknown device is 404
/// before any password is asked for.
pub async fn delete(
    svc: &Services,
    user_id: &UserId,
    device_id: &DeviceId,
    operation: &Operation,
    auth: Option<&Value>,
) -> Result<()> {
    if svc
        .store
        .device(user_id.as_str(), device_id.as_str())
        .await?
        .is_none()
    {
        return Err(Error::not_found("Device not found"));
    }
    uia::confirm_password(svc, operation, auth, user_id).await?;
    svc.store
        .delete_device(user_id.as_str(), device_id.as_str())
        .await?;
    crate::e2ee::device_lists::announce_removed(svc, user_id.as_str(), &[device_id.to_string()]).await?;
    Ok(())
}

/// Deletes devices once their owner has confirmed their password; unknown ones are skipped.
pub async fn delete_many(
    svc: &Services,
    user_id: &UserId,
    device_ids: &[OwnedDeviceId],
    operation: &Operation,
    auth: Option<&Value>,
) -> Result<()> {
    uia::confirm_password(svc, operation, auth, user_id).await?;
    for device_id in device_ids {
        svc.store
            .delete_device(user_id.as_str(), device_id.as_str())
            .await?;
    }
    let removed: Vec<String> = device_ids.iter().map(ToString::to_string).collect();
    crate::e2ee::device_lists::announce_removed(svc, user_id.as_str(), &removed).await?;
    Ok(())
}
