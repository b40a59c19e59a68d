//! The outbound transaction queue: what local users do that other servers must hear of (their
//! events, typing, receipts, presence, to-device messages, device and key changes) is stored per
//! destination (`federation_outbound`) and sent by one task per destination as `PUT
//! /_matrix/federation/v1/send/{txnId}` (≤ 50 PDUs, ≤ 100 EDUs). A failed transaction is retried
//! with exponential backoff up to `federation.retry_max_ms`; rows are deleted only after a 200, so
//! nothing is lost across a restart and the queue catches up once the destination answers again.
//!
//! Local events' rows are written in the events' own transaction (`super::outbound`). The
//! EDUs (and relayed PDUs) go through one channel to one task that computes destinations and
//! stores the rows, in the order they were submitted.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use ruma::{OwnedServerName, ServerName};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use crate::{error::Result, services::Services, store::NewOutbound, util::now_ms};

/// Most PDUs in one transaction (the spec's limit).
pub const MAX_PDUS: usize = 50;
/// Most EDUs in one transaction (the spec's limit).
pub const MAX_EDUS: usize = 100;
/// Most devices announced per device-list change (each is one EDU).
const MAX_ANNOUNCED_DEVICES: usize = 50;

/// Something to send: where it goes is worked out by the queue's task.
pub enum Job {
    /// Another server's event this server relays (an accepted knock: the knocking server is
    /// not in the room), to the other servers joined to its room. Local events are queued in
    /// their own transaction instead (`super::outbound`).
    Pdus(Vec<PduOut>),
    /// An EDU about a room, to the other servers joined to it.
    RoomEdu { room_id: String, edu: Value },
    /// An EDU about a user, to the servers sharing a room with them.
    UserEdu { user_id: String, edu: Value },
    /// An EDU for one server.
    ServerEdu { destination: String, edu: Value },
}

pub struct PduOut {
    pub room_id: String,
    pub json: String,
}

/// A destination's wake-ups: new items, or a sign that it is reachable again.
#[derive(Default)]
struct Destination {
    new_items: Notify,
    up: Notify,
}

/// The queue's handles in `Services` (inert when federation is off).
#[derive(Default)]
pub struct Sender {
    jobs: OnceLock<mpsc::UnboundedSender<Job>>,
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
}

impl Sender {
    /// Queues a job; nothing happens when federation is off.
    pub fn submit(&self, job: Job) {
        if let Some(jobs) = self.jobs.get() {
            let _ = jobs.send(job);
        }
    }

    /// `server` just talked to us: a pending retry to it is cut short.
    pub fn reachable(&self, server: &str) {
        if let Some(dest) = self.destinations.lock().expect("destinations lock").get(server) {
            dest.up.notify_one();
        }
    }
}

/// Starts the queue's task and resumes the destinations left with queued items.
pub async fn start(svc: &Services) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    if svc.federation.sender.jobs.set(tx).is_err() {
        return Ok(());
    }
    tokio::spawn(store_jobs(svc.clone(), rx));
    for destination in svc.store.outbound_destinations().await? {
        wake(svc, &destination);
    }
    Ok(())
}

/// Wakes (or starts) the task of a destination; nothing when the queue is not running (its
/// start resumes every destination with queued items).
pub(super) fn wake(svc: &Services, destination: &str) {
    if svc.federation.sender.jobs.get().is_none() {
        return;
    }
    let mut all = svc
        .federation
        .sender
        .destinations
        .lock()
        .expect("destinations lock");
    if let Some(dest) = all.get(destination) {
        dest.new_items.notify_one();
        return;
    }
    let dest = Arc::new(Destination::default());
    all.insert(destination.to_owned(), dest.clone());
    tokio::spawn(deliver(svc.clone(), destination.to_owned(), dest));
}

/// The queue's task: stores each job's rows for their destinations, then wakes those.
async fn store_jobs(svc: Services, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        match rows_of(&svc, job).await {
            Ok(rows) => {
                if let Err(error) = svc.store.enqueue_outbound(&rows, now_ms()).await {
                    tracing::error!(%error, "cannot queue federation items");
                    continue;
                }
                let destinations: BTreeSet<&str> = rows.iter().map(|r| r.destination.as_str()).collect();
                for destination in destinations {
                    wake(&svc, destination);
                }
            }
            Err(error) => tracing::error!(%error, "cannot work out federation destinations"),
        }
    }
}

/// The rows of a job.
async fn rows_of(svc: &Services, job: Job) -> Result<Vec<NewOutbound>> {
    let row = |destination: String, room_id: Option<&str>, kind, json: String| NewOutbound {
        destination,
        kind,
        room_id: room_id.map(ToOwned::to_owned),
        json,
    };
    let mut rows = Vec::new();
    match job {
        Job::Pdus(pdus) => {
            for pdu in pdus {
                for server in room_servers(svc, &pdu.room_id).await? {
                    rows.push(row(
                        server.to_string(),
                        Some(pdu.room_id.as_str()),
                        "pdu",
                        pdu.json.clone(),
                    ));
                }
            }
        }
        Job::RoomEdu { room_id, edu } => {
            let edu = edu.to_string();
            for server in room_servers(svc, &room_id).await? {
                rows.push(row(server.to_string(), None, "edu", edu.clone()));
            }
        }
        Job::UserEdu { user_id, edu } => {
            let edu = edu.to_string();
            let servers: BTreeSet<OwnedServerName> = svc
                .store
                .users_sharing_rooms(&user_id)
                .await?
                .iter()
                .filter_map(|u| server_of(u))
                .filter(|s| s.as_str() != svc.server_name())
                .collect();
            rows.extend(
                servers
                    .into_iter()
                    .map(|s| row(s.to_string(), None, "edu", edu.clone())),
            );
        }
        Job::ServerEdu { destination, edu } => {
            if destination != svc.server_name() {
                rows.push(row(destination, None, "edu", edu.to_string()));
            }
        }
    }
    Ok(rows)
}

/// The server part of a user ID.
pub(super) fn server_of(user_id: &str) -> Option<OwnedServerName> {
    ruma::UserId::parse(user_id)
        .ok()
        .map(|u| u.server_name().to_owned())
}

/// The other servers with a user joined to the room, whatever its server ACL says.
pub(super) async fn joined_servers(svc: &Services, room_id: &str) -> Result<BTreeSet<OwnedServerName>> {
    Ok(svc
        .store
        .members_with(room_id, "join")
        .await?
        .iter()
        .filter_map(|u| server_of(u))
        .filter(|s| s.as_str() != svc.server_name())
        .collect())
}

/// The other servers with a user joined to the room that its server ACL lets in.
pub async fn room_servers(svc: &Services, room_id: &str) -> Result<Vec<OwnedServerName>> {
    let acl = super::acl::current(svc, room_id).await?;
    let mut allowed = Vec::new();
    for server in joined_servers(svc, room_id).await? {
        if acl.as_ref().is_none_or(|acl| acl.is_allowed(&server)) {
            allowed.push(server);
        } else {
            tracing::debug!(%room_id, %server, "not sent: denied by the room's server ACL");
        }
    }
    Ok(allowed)
}

/// One destination's task: sends its queued items, oldest first, one transaction at a time.
async fn deliver(svc: Services, destination: String, wake: Arc<Destination>) {
    let Ok(server) = OwnedServerName::try_from(destination.clone()) else {
        tracing::warn!(%destination, "queued items for an invalid server name are never sent");
        return;
    };
    let config = &svc.config.federation;
    let mut retries: u32 = 0;
    let mut last_success: Option<i64> = None;
    // The last queue ID of a transaction that failed: its retry carries exactly the same items
    // (and so the same txnId), whatever was queued since.
    let mut in_flight: Option<i64> = None;
    loop {
        let mut items = match svc
            .store
            .outbound_items(&destination, (MAX_PDUS + MAX_EDUS) as i64)
            .await
        {
            Ok(items) => items,
            Err(error) => {
                tracing::error!(%destination, %error, "cannot read the federation queue");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        if let Some(last) = in_flight {
            items.retain(|item| item.id <= last);
        }
        if items.is_empty() {
            in_flight = None;
            wake.new_items.notified().await;
            continue;
        }
        // A prefix of the queue, so that deleting up to its last ID removes exactly it.
        let (mut pdus, mut edus, mut last_id) = (Vec::new(), Vec::new(), items[0].id);
        for item in &items {
            let Ok(value) = serde_json::from_str::<Value>(&item.json) else {
                last_id = item.id;
                continue;
            };
            let list = if item.kind == "pdu" { &mut pdus } else { &mut edus };
            let max = if item.kind == "pdu" { MAX_PDUS } else { MAX_EDUS };
            if list.len() >= max {
                break;
            }
            list.push(value);
            last_id = item.id;
        }
        let txn_id = format!("{}-{}", items[0].id, last_id);
        let (sent_pdus, sent_edus) = (pdus.len(), edus.len());
        match send_transaction(&svc, &server, &txn_id, pdus, edus).await {
            Ok(()) => {
                if let Err(error) = svc.store.delete_outbound(&destination, last_id).await {
                    tracing::error!(%destination, %error, "cannot delete sent federation items");
                }
                retries = 0;
                in_flight = None;
                last_success = Some(now_ms());
                let pending = svc.store.outbound_pending(&destination).await.unwrap_or(-1);
                tracing::info!(%destination, txn_id, pdus = sent_pdus, edus = sent_edus, pending, "federation transaction sent");
            }
            Err(error) => {
                retries = retries.saturating_add(1);
                in_flight = Some(last_id);
                let delay = config
                    .retry_initial_ms
                    .saturating_mul(1u64 << (retries - 1).min(30))
                    .min(config.retry_max_ms);
                let pending = svc.store.outbound_pending(&destination).await.unwrap_or(-1);
                tracing::warn!(%destination, txn_id, %error, retries, pending, ?last_success, delay_ms = delay, "federation transaction failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                    _ = wake.up.notified() => {}
                }
            }
        }
    }
}

/// One `PUT /send/{txnId}`: Ok on a 200.
async fn send_transaction(
    svc: &Services,
    server: &ServerName,
    txn_id: &str,
    pdus: Vec<Value>,
    edus: Vec<Value>,
) -> std::result::Result<(), String> {
    let client = svc.federation.client().map_err(|e| e.to_string())?;
    let path = format!("/_matrix/federation/v1/send/{txn_id}");
    let mut body = json!({
        "origin": svc.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
    });
    if !edus.is_empty() {
        body["edus"] = Value::Array(edus);
    }
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let authorization = client
        .authorization(&svc.signing_key, server, "PUT", &path, Some(&body))
        .map_err(|e| e.to_string())?;
    let (status, _) = client
        .request("PUT", server, &path, Some(body), Some(authorization), 1 << 20)
        .await
        .map_err(|e| e.to_string())?;
    if status == 200 {
        Ok(())
    } else {
        Err(format!("{server} answered {status}"))
    }
}

// The EDUs local users cause.

/// `m.typing` of a local user, to the servers in the room.
pub fn typing(svc: &Services, room_id: &str, user_id: &str, typing: bool) {
    svc.federation.sender.submit(Job::RoomEdu {
        room_id: room_id.to_owned(),
        edu: json!({ "edu_type": "m.typing",
                     "content": { "room_id": room_id, "user_id": user_id, "typing": typing } }),
    });
}

/// `m.receipt` (a public `m.read`) of a local user, to the servers in the room.
pub fn receipt(
    svc: &Services,
    room_id: &str,
    user_id: &str,
    event_id: &str,
    thread_id: Option<&str>,
    ts: i64,
) {
    let mut data = json!({ "ts": ts });
    if let Some(thread_id) = thread_id {
        data["thread_id"] = json!(thread_id);
    }
    svc.federation.sender.submit(Job::RoomEdu {
        room_id: room_id.to_owned(),
        edu: json!({ "edu_type": "m.receipt", "content": { room_id: { "m.read": {
            user_id: { "event_ids": [event_id], "data": data } } } } }),
    });
}

/// `m.presence` of a local user, to the servers sharing a room with them.
pub fn presence(
    svc: &Services,
    user_id: &str,
    presence: &str,
    status_msg: Option<&str>,
    last_active_ago: i64,
    currently_active: bool,
) {
    let mut update = json!({
        "user_id": user_id,
        "presence": presence,
        "last_active_ago": last_active_ago.max(0),
        "currently_active": currently_active,
    });
    if let Some(status_msg) = status_msg {
        update["status_msg"] = json!(status_msg);
    }
    svc.federation.sender.submit(Job::UserEdu {
        user_id: user_id.to_owned(),
        edu: json!({ "edu_type": "m.presence", "content": { "push": [update] } }),
    });
}

/// `m.direct_to_device` from a local user: `messages` for one remote server's users.
pub fn direct_to_device(
    svc: &Services,
    destination: &str,
    sender: &str,
    event_type: &str,
    message_id: &str,
    messages: &serde_json::Map<String, Value>,
) {
    svc.federation.sender.submit(Job::ServerEdu {
        destination: destination.to_owned(),
        edu: json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": sender, "type": event_type, "message_id": message_id, "messages": messages } }),
    });
}

/// How many EDU IDs each device-list change owns: the change at stream position `p` sends its
/// EDUs as `p * EDU_IDS_PER_CHANGE + k`, `k` counting down to 0 (at most
/// `MAX_ANNOUNCED_DEVICES` of them), so its last EDU, the one the next change names in
/// `prev_id`, is always `p * EDU_IDS_PER_CHANGE`: the user's device-list version.
const EDU_IDS_PER_CHANGE: i64 = 64;

/// The version of a user's device list whose last change is at stream position `position`: the
/// `stream_id` of `/user/devices`, and the `prev_id` of the next change's first EDU.
pub fn device_list_version(position: i64) -> i64 {
    position * EDU_IDS_PER_CHANGE
}

/// `(stream_id, prev_id)` of each of `n` EDUs of the change at `position`, in sending order, each
/// naming the one before; the first names the change at `previous` (none: the sequence starts,
/// and receivers fetch the whole list).
fn edu_chain(position: i64, previous: Option<i64>, n: usize) -> Vec<(i64, Vec<i64>)> {
    let mut prev = previous.map(device_list_version);
    (0..n.min(MAX_ANNOUNCED_DEVICES) as i64)
        .rev()
        .map(|k| {
            let id = device_list_version(position) + k;
            (id, prev.replace(id).into_iter().collect())
        })
        .collect()
}

/// `m.device_list_update` for each of a local user's devices (their keys changed or a device
/// came or went), and one with `deleted: true` for each device of `removed` that is gone, to the
/// servers sharing a room with them, at most `MAX_ANNOUNCED_DEVICES` in all. They form the
/// spec's sequence per user: a `stream_id` of their own each, `prev_id` the EDU sent before (see
/// `edu_chain`), so a receiver that caches the list applies them without fetching it again (and
/// tells its users: Synapse does not when a fetched list is empty).
pub async fn device_list_update(svc: &Services, user_id: &str, removed: &[String]) -> Result<()> {
    if svc.federation.client().is_err() {
        return Ok(());
    }
    let positions = svc.store.last_device_list_changes(user_id).await?;
    let devices = svc.store.user_device_keys(user_id).await?;
    let mut contents: Vec<Value> = removed
        .iter()
        .filter(|r| !devices.iter().any(|(d, _, _)| d == *r))
        .map(|device_id| json!({ "device_id": device_id, "deleted": true }))
        .collect();
    for (device_id, keys, display_name) in devices {
        let mut content = json!({ "device_id": device_id });
        if let Ok(keys) = serde_json::from_str::<Value>(&keys) {
            content["keys"] = keys;
        }
        if let Some(name) = display_name {
            content["device_display_name"] = json!(name);
        }
        contents.push(content);
    }
    let chain = edu_chain(
        positions.first().copied().unwrap_or(0),
        positions.get(1).copied(),
        contents.len(),
    );
    for (mut content, (stream_id, prev_id)) in contents.into_iter().zip(chain) {
        content["user_id"] = json!(user_id);
        content["stream_id"] = json!(stream_id);
        content["prev_id"] = json!(prev_id);
        svc.federation.sender.submit(Job::UserEdu {
            user_id: user_id.to_owned(),
            edu: json!({ "edu_type": "m.device_list_update", "content": content }),
        });
    }
    Ok(())
}

/// `m.signing_key_update`: a local user's master and self-signing keys, to the servers sharing
/// a room with them.
pub async fn signing_key_update(svc: &Services, user_id: &str) -> Result<()> {
    if svc.federation.client().is_err() {
        return Ok(());
    }
    let keys = svc.store.cross_signing_keys(user_id).await?;
    let mut content = json!({ "user_id": user_id });
    for (key_type, field) in [("master", "master_key"), ("self_signing", "self_signing_key")] {
        if let Some(key) = keys
            .get(key_type)
            .and_then(|k| serde_json::from_str::<Value>(k).ok())
        {
            content[field] = key;
        }
    }
    svc.federation.sender.submit(Job::UserEdu {
        user_id: user_id.to_owned(),
        edu: json!({ "edu_type": "m.signing_key_update", "content": content }),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_list_updates_form_one_chain_per_user() {
        // The first change of a user: the sequence starts, receivers fetch the list.
        assert_eq!(edu_chain(3, None, 1), vec![(192, vec![])]);
        // Three devices at position 7 after a change at 3: each names the one before, the last
        // is the list's version, which the next change names.
        let chain = edu_chain(7, Some(3), 3);
        assert_eq!(chain, vec![(450, vec![192]), (449, vec![450]), (448, vec![449])]);
        assert_eq!(chain.last().unwrap().0, device_list_version(7));
        assert_eq!(edu_chain(9, Some(7), 1), vec![(576, vec![448])]);
        // Never more IDs than a change owns.
        let many = edu_chain(2, Some(1), 500);
        assert_eq!(many.len(), MAX_ANNOUNCED_DEVICES);
        assert!(
            many.iter()
                .all(|(id, _)| (128..128 + EDU_IDS_PER_CHANGE).contains(id))
        );
    }
}
