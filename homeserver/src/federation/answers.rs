//! What this server answers other servers about its own users and aliases:
//! `/user/keys/query`, `/user/keys/claim`, `/user/devices/{userId}`, `/query/directory`.
//! Requests naming other servers' users get nothing for those users.

use std::collections::BTreeMap;

use ruma::{
    OwnedDeviceId, OwnedUserId, RoomAliasId, UserId, api::federation::keys::claim_keys::v1::OneTimeKeyClaims,
};
use serde_json::{Value, json};

use crate::{
    e2ee::{MAX_QUERIED, keys},
    error::{Error, Result},
    services::Services,
};

/// `POST /user/keys/query`: local users' device and cross-signing keys.
pub async fn keys_query(svc: &Services, asked: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>) -> Result<Value> {
    let asked_devices: usize = asked.values().map(|d| d.len().max(1)).sum();
    if asked.len() > MAX_QUERIED || asked_devices > MAX_QUERIED * 10 {
        return Err(Error::invalid_param(format!(
            "At most {MAX_QUERIED} users per key query"
        )));
    }
    let users = asked
        .into_iter()
        .map(|(u, d)| (u.to_string(), d.into_iter().map(|d| d.to_string()).collect()))
        .collect();
    let mut response = keys::QueryResponse::default();
    keys::query_local(svc, "", &users, &mut response).await?;
    Ok(json!({
        "device_keys": response.device_keys,
        "master_keys": response.master_keys,
        "self_signing_keys": response.self_signing_keys,
    }))
}

/// `POST /user/keys/claim`: one key per local (user, device, algorithm).
pub async fn keys_claim(svc: &Services, asked: OneTimeKeyClaims) -> Result<Value> {
    let count: usize = asked.values().map(BTreeMap::len).sum();
    if count > MAX_QUERIED {
        return Err(Error::invalid_param(format!(
            "At most {MAX_QUERIED} devices per key claim"
        )));
    }
    let users = asked
        .into_iter()
        .map(|(u, devices)| {
            let devices = devices
                .into_iter()
                .map(|(d, algorithm)| (d.to_string(), algorithm.to_string()))
                .collect();
            (u.to_string(), devices)
        })
        .collect();
    let mut response = keys::ClaimResponse::default();
    keys::claim_local(svc, &users, &mut response).await?;
    Ok(json!({ "one_time_keys": response.one_time_keys }))
}

/// `GET /user/devices/{userId}`: a local user's devices with keys, and cross-signing keys.
pub async fn user_devices(svc: &Services, user_id: &UserId) -> Result<Value> {
    if user_id.server_name().as_str() != svc.server_name() {
        return Err(Error::invalid_param("The user is not on this server"));
    }
    let devices: Vec<Value> = svc
        .store
        .user_device_keys(user_id.as_str())
        .await?
        .into_iter()
        .filter_map(|(device_id, keys, name)| {
            let keys: Value = serde_json::from_str(&keys).ok()?;
            let mut device = json!({ "device_id": device_id, "keys": keys });
            if let Some(name) = name {
                device["device_display_name"] = json!(name);
            }
            Some(device)
        })
        .collect();
    let mut answer = json!({
        "user_id": user_id,
        // The version the user's next `m.device_list_update` will name in `prev_id`.
        "stream_id": super::sender::device_list_version(
            svc.store
                .last_device_list_changes(user_id.as_str())
                .await?
                .first()
                .copied()
                .unwrap_or(0),
        ),
        "devices": devices,
    });
    let cross = svc.store.cross_signing_keys(user_id.as_str()).await?;
    for (key_type, field) in [("master", "master_key"), ("self_signing", "self_signing_key")] {
        if let Some(key) = cross
            .get(key_type)
            .and_then(|k| serde_json::from_str::<Value>(k).ok())
        {
            answer[field] = key;
        }
    }
    Ok(answer)
}

/// `GET /query/directory?room_alias=`: one of this server's aliases.
pub async fn directory(svc: &Services, alias: &RoomAliasId) -> Result<Value> {
    if alias.server_name().as_str() != svc.server_name() {
        return Err(Error::not_found("Room alias not found"));
    }
    let (room_id, _) = svc
        .store
        .alias(alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    // The servers of the room's members may also help a joining server; this one first.
    let mut servers = vec![svc.server_name().to_owned()];
    for server in super::sender::room_servers(svc, &room_id)
        .await?
        .into_iter()
        .take(10)
    {
        servers.push(server.to_string());
    }
    Ok(json!({ "room_id": room_id, "servers": servers }))
}
