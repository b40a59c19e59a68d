//! `PUT /sendToDevice/{eventType}/{txnId}` and the to-device part of `/sync`.
//!
//! Messages are stored in the request's transaction (with its transaction ID, so a retry
//! stores nothing twice), delivered to each device in order, and deleted only when the device
//! syncs with a token past them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{MAX_TO_DEVICE_RECIPIENTS, TO_DEVICE_PER_SYNC, is_local};
use crate::{
    error::{Error, Result},
    services::Services,
    store::{Queued, ToDeviceOut},
    util::now_ms,
};

/// The body of `PUT /sendToDevice/…`.
#[derive(Debug, Deserialize)]
pub struct SendRequest {
    pub messages: BTreeMap<String, BTreeMap<String, Value>>,
}

/// Queues the messages; a transaction ID this device used before changes nothing.
pub async fn send(
    svc: &Services,
    sender: &str,
    sender_device: &str,
    event_type: &str,
    txn_id: &str,
    req: SendRequest,
) -> Result<()> {
    if event_type.is_empty() || event_type.len() > 255 || txn_id.is_empty() || txn_id.len() > 255 {
        return Err(Error::invalid_param(
            "Event type and transaction ID must be 1 to 255 bytes",
        ));
    }
    let count: usize = req.messages.values().map(BTreeMap::len).sum();
    if count > MAX_TO_DEVICE_RECIPIENTS {
        return Err(Error::invalid_param(format!(
            "At most {MAX_TO_DEVICE_RECIPIENTS} recipient devices per request"
        )));
    }
    let mut out = Vec::with_capacity(count);
    // Remote recipients, by server: each server gets one `m.direct_to_device` EDU.
    let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (user_id, devices) in req.messages {
        if ruma::UserId::parse(user_id.as_str()).is_err() {
            return Err(Error::invalid_param(format!("Invalid user ID {user_id}")));
        }
        for (device_id, content) in devices {
            if !content.is_object() {
                return Err(Error::invalid_param("Each message must be a JSON object"));
            }
            if !is_local(svc, &user_id) {
                let server = user_id.split_once(':').map_or("", |(_, s)| s).to_owned();
                let by_user = remote.entry(server).or_default();
                let devices = by_user
                    .entry(user_id.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(devices) = devices.as_object_mut() {
                    devices.insert(device_id, content);
                }
                continue;
            }
            out.push(ToDeviceOut {
                user_id: user_id.clone(),
                device_id,
                content: content.to_string(),
            });
        }
    }
    // One `m.direct_to_device` EDU per server, queued in the transaction that records the
    // txnId: a retried txnId sends nothing again, so what the first request answered must be
    // in the federation queue by then.
    let edus = crate::federation::sender::direct_to_device(svc, sender, event_type, &remote);
    let queued = svc
        .store
        .queue_to_device(
            sender,
            sender_device,
            txn_id,
            event_type,
            &out,
            &edus,
            svc.config.limits.max_pending_to_device,
            now_ms(),
        )
        .await?;
    match queued {
        Queued::Sent(users) => {
            if !users.is_empty() {
                svc.notifier.notify(users);
            }
            crate::federation::sender::queued(svc, &edus);
            Ok(())
        }
        Queued::Repeated => Ok(()),
        Queued::QueueFull(device) => {
            tracing::info!(%sender, recipient = %device, "to-device queue full");
            Err(Error::limit_exceeded(10_000))
        }
    }
}

/// For a sync of `device_id`: deletes what the device acknowledged (up to `since`), returns the
/// queued messages up to `upto` (at most `TO_DEVICE_PER_SYNC`) and the to-device position the
/// next token carries (the last message delivered when more are waiting).
pub async fn for_sync(
    svc: &Services,
    user_id: &str,
    device_id: &str,
    since: Option<i64>,
    upto: i64,
) -> Result<(Vec<Value>, i64)> {
    // A read first, so that syncs with nothing to acknowledge write nothing.
    if let Some(since) = since.filter(|s| *s > 0)
        && svc.store.has_to_device_upto(user_id, device_id, since).await?
    {
        svc.store.ack_to_device(user_id, device_id, since).await?;
    }
    let rows = svc
        .store
        .to_device_messages(user_id, device_id, upto, TO_DEVICE_PER_SYNC)
        .await?;
    let position = if rows.len() as i64 >= TO_DEVICE_PER_SYNC {
        rows.last().map_or(upto, |r| r.stream_id)
    } else {
        upto
    };
    let events = rows
        .into_iter()
        .map(|r| {
            let content: Value =
                serde_json::from_str(&r.content).unwrap_or_else(|_| Value::Object(Map::new()));
            json!({ "sender": r.sender, "type": r.event_type, "content": content })
        })
        .collect();
    Ok((events, position))
}
