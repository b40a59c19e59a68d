//! Inbound `PUT /_matrix/federation/v1/send/{txnId}`: a transaction is handled once per
//! (origin, txnId) — a retry is answered with the stored result — its PDUs each go through
//! `federation::inbound` (one bad PDU never fails the rest), and its EDUs are applied when they
//! speak for the origin's own users (typing, receipts, presence, to-device messages, device-list
//! and signing-key updates). A room's server ACL drops what a denied origin sends about it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use ruma::{
    OwnedEventId, OwnedRoomId, RoomId, ServerName, UserId,
    api::federation::transactions::{
        edu::{
            DeviceListUpdateContent, DirectDeviceContent, Edu, PresenceContent, ReceiptContent, TypingContent,
        },
        send_transaction_message::v1::{Request, Response},
    },
};
use serde_json::{Map, Value};

use super::{
    acl,
    inbound::handle_incoming_pdu,
    pending,
    sender::{MAX_EDUS, MAX_PDUS},
};
use crate::{
    error::{Error, Result},
    services::Services,
    store::{Queued, ToDeviceOut},
    util::now_ms,
};

/// How long a remote user's typing notification lasts without renewal (EDUs carry no timeout).
const REMOTE_TYPING: Duration = Duration::from_secs(30);
/// Most presence updates applied from one EDU.
const MAX_PRESENCE_UPDATES: usize = 100;

/// Handles one transaction from `origin` (already authenticated by its X-Matrix signature).
pub async fn receive(svc: &Services, origin: &ServerName, req: Request) -> Result<Response> {
    if req.origin != origin {
        return Err(Error::forbidden(
            "The transaction's origin is not the signing server",
        ));
    }
    if req.pdus.len() > MAX_PDUS || req.edus.len() > MAX_EDUS {
        return Err(Error::bad_json(format!(
            "A transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    svc.federation.sender.reachable(origin.as_str());
    let txn_id = req.transaction_id.as_str();
    if let Some(stored) = svc.store.inbound_txn(origin.as_str(), txn_id).await? {
        tracing::debug!(%origin, txn_id, "transaction already handled; answering its stored result");
        return Ok(Response::new(results_from_json(&stored)));
    }
    let mut results = BTreeMap::new();
    // Rooms where a PDU entered: PDUs of theirs waiting for a prev event may pass now.
    let mut advanced: BTreeSet<OwnedRoomId> = BTreeSet::new();
    for pdu in &req.pdus {
        let room_id = room_of(pdu.get());
        if let Some(room_id) = &room_id
            && !acl::allowed(svc, room_id.as_str(), origin).await?
        {
            tracing::info!(%origin, %room_id, "PDU dropped: origin denied by the room's server ACL");
            continue;
        }
        let outcome = handle_incoming_pdu(svc, origin, pdu).await;
        if outcome.error.is_none()
            && let Some(room_id) = room_id
        {
            advanced.insert(room_id);
        }
        if let Some(event_id) = outcome.event_id {
            results.insert(event_id, outcome.error.map_or(Ok(()), Err));
        } else if let Some(error) = outcome.error {
            tracing::info!(%origin, %error, "PDU refused before it had an event ID");
        }
    }
    for edu in &req.edus {
        match edu.deserialize() {
            Ok(edu) => {
                if let Err(error) = apply_edu(svc, origin, edu).await {
                    tracing::info!(%origin, %error, "EDU not applied");
                }
            }
            Err(error) => tracing::debug!(%origin, %error, "EDU ignored: not understood"),
        }
    }
    svc.store
        .store_inbound_txn(origin.as_str(), txn_id, &results_to_json(&results), now_ms())
        .await?;
    for room_id in &advanced {
        pending::retry_room_soon(svc, room_id);
    }
    Ok(Response::new(results))
}

/// The `room_id` of a PDU, if it has a valid one.
fn room_of(pdu: &str) -> Option<OwnedRoomId> {
    #[derive(serde::Deserialize)]
    struct RoomOf {
        room_id: OwnedRoomId,
    }
    serde_json::from_str::<RoomOf>(pdu).ok().map(|r| r.room_id)
}

fn results_to_json(results: &BTreeMap<OwnedEventId, std::result::Result<(), String>>) -> String {
    let map: Map<String, Value> = results
        .iter()
        .map(|(id, r)| {
            let value = match r {
                Ok(()) => Value::Null,
                Err(e) => Value::String(e.clone()),
            };
            (id.to_string(), value)
        })
        .collect();
    Value::Object(map).to_string()
}

fn results_from_json(stored: &str) -> BTreeMap<OwnedEventId, std::result::Result<(), String>> {
    let map: Map<String, Value> = serde_json::from_str(stored).unwrap_or_default();
    map.into_iter()
        .filter_map(|(id, value)| {
            let id = OwnedEventId::try_from(id).ok()?;
            Some((id, value.as_str().map_or(Ok(()), |e| Err(e.to_owned()))))
        })
        .collect()
}

/// Whether `user` belongs to the origin (servers speak only for their own users).
fn of_origin(user: &UserId, origin: &ServerName) -> bool {
    user.server_name() == origin
}

async fn apply_edu(svc: &Services, origin: &ServerName, edu: Edu) -> Result<()> {
    match edu {
        Edu::Typing(typing) => apply_typing(svc, origin, typing).await,
        Edu::Receipt(receipts) => apply_receipts(svc, origin, receipts).await,
        Edu::Presence(presence) => apply_presence(svc, origin, presence).await,
        Edu::DirectToDevice(message) => apply_to_device(svc, origin, message).await,
        Edu::DeviceListUpdate(DeviceListUpdateContent { user_id, .. }) => {
            device_list_changed(svc, origin, &user_id).await
        }
        Edu::SigningKeyUpdate(update) => device_list_changed(svc, origin, &update.user_id).await,
        _ => Ok(()),
    }
}

/// Whether a remote user may speak in a room: of the origin, joined, and the ACL lets it in.
async fn may_act_in(svc: &Services, origin: &ServerName, room_id: &RoomId, user: &UserId) -> Result<bool> {
    Ok(of_origin(user, origin)
        && svc
            .store
            .membership(room_id.as_str(), user.as_str())
            .await?
            .as_deref()
            == Some("join")
        && acl::allowed(svc, room_id.as_str(), origin).await?)
}

async fn apply_typing(svc: &Services, origin: &ServerName, typing: TypingContent) -> Result<()> {
    if !may_act_in(svc, origin, &typing.room_id, &typing.user_id).await? {
        tracing::debug!(%origin, user = %typing.user_id, room = %typing.room_id, "typing EDU ignored");
        return Ok(());
    }
    let timeout = typing.typing.then_some(REMOTE_TYPING);
    crate::rooms::typing::set_typing(svc, &typing.room_id, &typing.user_id, timeout);
    Ok(())
}

async fn apply_receipts(svc: &Services, origin: &ServerName, receipts: ReceiptContent) -> Result<()> {
    for (room_id, map) in receipts.receipts.iter().take(MAX_EDUS) {
        for (user_id, data) in map.read.iter().take(MAX_EDUS) {
            if !may_act_in(svc, origin, room_id, user_id).await? {
                continue;
            }
            let Some(event_id) = data.event_ids.last() else {
                continue;
            };
            let known = svc
                .store
                .event(event_id.as_str())
                .await?
                .is_some_and(|e| e.room_id == room_id.as_str());
            if !known {
                continue;
            }
            let thread = data.data.thread.as_str().unwrap_or("");
            let ts = data.data.ts.map_or_else(now_ms, |ts| i64::from(ts.get()));
            crate::rooms::receipts::store_receipt(
                svc,
                room_id.as_str(),
                user_id.as_str(),
                "m.read",
                thread,
                event_id.as_str(),
                ts,
            )
            .await?;
        }
    }
    Ok(())
}

async fn apply_presence(svc: &Services, origin: &ServerName, presence: PresenceContent) -> Result<()> {
    for update in presence.push.iter().take(MAX_PRESENCE_UPDATES) {
        if !of_origin(&update.user_id, origin) {
            continue;
        }
        let state = update.presence.as_str();
        if !crate::users::presence::STATES.contains(&state) {
            continue;
        }
        let ago = i64::try_from(u64::from(update.last_active_ago)).unwrap_or(i64::MAX);
        let last_active = now_ms().saturating_sub(ago);
        svc.store
            .put_presence(
                update.user_id.as_str(),
                state,
                update.status_msg.as_deref(),
                last_active,
            )
            .await?;
        crate::users::presence::notify(svc, update.user_id.as_str()).await?;
    }
    Ok(())
}

/// Queues a remote user's to-device messages for local devices, once per `message_id`.
async fn apply_to_device(svc: &Services, origin: &ServerName, message: DirectDeviceContent) -> Result<()> {
    if !of_origin(&message.sender, origin) {
        return Ok(());
    }
    let mut out = Vec::new();
    for (user_id, devices) in &message.messages {
        if user_id.server_name().as_str() != svc.server_name() {
            continue;
        }
        for (device, content) in devices {
            out.push(ToDeviceOut {
                user_id: user_id.to_string(),
                device_id: device.to_string(),
                content: content.json().get().to_owned(),
            });
        }
    }
    if out.len() > crate::e2ee::MAX_TO_DEVICE_RECIPIENTS {
        return Err(Error::invalid_param("Too many to-device recipients"));
    }
    // Retries of one message are recognised by (sender, message_id), as a client's txnId is.
    let queued = svc
        .store
        .queue_to_device(
            message.sender.as_str(),
            &format!("federation:{origin}"),
            message.message_id.as_str(),
            &message.ev_type.to_string(),
            &out,
            &[],
            svc.config.limits.max_pending_to_device,
            now_ms(),
        )
        .await?;
    match queued {
        Queued::Sent(users) if !users.is_empty() => svc.notifier.notify(users),
        Queued::QueueFull(device) => {
            tracing::info!(%origin, recipient = %device, "to-device queue full; dropped")
        }
        _ => {}
    }
    Ok(())
}

/// A remote user's devices or cross-signing keys changed: local users sharing a room with them
/// see it in `device_lists.changed` (and query the keys again).
async fn device_list_changed(svc: &Services, origin: &ServerName, user_id: &UserId) -> Result<()> {
    if !of_origin(user_id, origin) {
        return Ok(());
    }
    svc.store.mark_remote_device_list(user_id.as_str()).await?;
    let users: Vec<String> = svc
        .store
        .users_sharing_rooms(user_id.as_str())
        .await?
        .into_iter()
        .collect();
    if !users.is_empty() {
        svc.notifier.notify(users);
    }
    Ok(())
}
