//! Account data, global and per room: content opaque to the server, readable and writable by
//! its owner only.

use ruma::{RoomId, UserId};
use serde_json::value::RawValue;

use crate::{
    error::{Error, Result},
    services::Services,
};

fn require_owner(viewer: &UserId, owner: &UserId) -> Result<()> {
    if viewer == owner {
        Ok(())
    } else {
        Err(Error::forbidden("Cannot access another user's account data"))
    }
}

/// Types the server manages itself and clients must not set here.
fn check_settable(data_type: &str) -> Result<()> {
    if matches!(data_type, "m.fully_read" | "m.push_rules") {
        // The spec's status for server-managed types is 405, with M_BAD_JSON.
        return Err(Error::ServerManagedAccountData(format!(
            "{data_type} is managed by the server and cannot be set here"
        )));
    }
    Ok(())
}

/// `owner`'s content of `data_type` (in `room`, or global); 404 when there is none.
pub async fn get(
    svc: &Services,
    viewer: &UserId,
    owner: &UserId,
    room: Option<&RoomId>,
    data_type: &str,
) -> Result<Box<RawValue>> {
    require_owner(viewer, owner)?;
    let content = svc
        .store
        .account_data(owner.as_str(), room.map(RoomId::as_str), data_type)
        .await?
        .ok_or_else(|| Error::not_found("Account data not found"))?;
    RawValue::from_string(content).map_err(Error::internal)
}

/// Stores `owner`'s content of `data_type` and wakes their syncs.
pub async fn put(
    svc: &Services,
    viewer: &UserId,
    owner: &UserId,
    room: Option<&RoomId>,
    data_type: &str,
    content: &RawValue,
) -> Result<()> {
    require_owner(viewer, owner)?;
    check_settable(data_type)?;
    svc.store
        .put_account_data(owner.as_str(), room.map(RoomId::as_str), data_type, content.get())
        .await?;
    svc.notifier.notify(vec![owner.to_string()]);
    Ok(())
}
