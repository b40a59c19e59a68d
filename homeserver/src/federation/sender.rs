//! The outbound transaction queue: what local users do that other servers must hear of (their
//! events, typing, receipts, presence, to-device messages, device and key changes) is stored per
//! destination (`federation_outbound`) and sent by one task per destination as `PUT
//! /_matrix/federation/v1/send/{txnId}` (≤ 50 PDUs, ≤ 100 EDUs). A failed transaction is retried
//! with exponential backoff up to `federation.retry_max_ms`; rows are deleted only after a 200, so
//! nothing is lost across a restart and the queue catches up once the destination answers again.
//!
//! What a client needs later is queued before the request that causes it answers: local events'
//! rows are written in the events' own transaction (`super::outbound`), to-device EDUs in the
//! transaction that records the client's txnId, and device-list, signing-key and receipt EDUs
//! and the relay of an accepted knock are stored before their request answers. Typing and
//! presence go through one channel to one task that stores them: they are short-lived (a
//! typing notice lasts 30 s, presence is sent again on the next change), so a process stopping
//! in between may lose one.
//!
//! A destination that stays down keeps at most `federation.max_queued_edus` EDUs: past it the
//! oldest are dropped, superseded ones first, then typing, presence and receipts, and only then
//! to-device messages and key changes, logged as errors. PDUs are never dropped.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
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
/// A queued typing notice older than this is not sent: the receiver would have let it expire.
const TYPING_TTL_MS: i64 = 30_000;
/// How often a destination's queue is trimmed while its retry waits.
const TRIM_EVERY: Duration = Duration::from_secs(30);
/// What trimming a long queue drops first (after superseded EDUs), in this order.
const DROPPED_FIRST: [&str; 3] = ["m.typing", "m.presence", "m.receipt"];

/// Something to send: where it goes is worked out when it is queued.
pub enum Job {
    /// Another server's event this server relays (an accepted knock: the knocking server is
    /// not in the room), to the other servers joined to its room. Local events are queued in
    /// their own transaction instead (`super::outbound`).
    Pdus(Vec<PduOut>),
    /// An EDU about a room, to the other servers joined to it.
    RoomEdu { room_id: String, edu: Value },
    /// EDUs about a user, to the servers sharing a room with them.
    UserEdus { user_id: String, edus: Vec<Value> },
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
    /// Hands a job (typing, presence) to the queue's task, which stores it shortly after, in
    /// submission order; nothing happens when federation is off.
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

/// The queue's task for typing and presence: stores each job's rows for their destinations,
/// then wakes those.
async fn store_jobs(svc: Services, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        if let Err(error) = store_job(&svc, job).await {
            tracing::error!(%error, "cannot queue federation items");
        }
    }
}

/// Stores a job's rows now (when federation is on) and wakes their destinations: once this
/// returns, the items survive a restart.
async fn store_job(svc: &Services, job: Job) -> Result<()> {
    if svc.federation.sender.jobs.get().is_none() {
        return Ok(());
    }
    let rows = rows_of(svc, job).await?;
    svc.store.enqueue_outbound(&rows, now_ms()).await?;
    queued(svc, &rows);
    Ok(())
}

/// Rows were committed to the queue: wakes their destinations.
pub fn queued(svc: &Services, rows: &[NewOutbound]) {
    let destinations: BTreeSet<&str> = rows.iter().map(|r| r.destination.as_str()).collect();
    for destination in destinations {
        wake(svc, destination);
    }
}

/// Relays other servers' events (an accepted knock) to the room's other servers, queued
/// before this returns.
pub async fn relay(svc: &Services, pdus: Vec<PduOut>) -> Result<()> {
    store_job(svc, Job::Pdus(pdus)).await
}

/// A queue row for an EDU, with the type and supersede key that trimming goes by.
fn edu_row(destination: String, edu: &Value) -> NewOutbound {
    NewOutbound {
        destination,
        kind: "edu",
        room_id: None,
        edu_type: edu["edu_type"].as_str().map(ToOwned::to_owned),
        supersede_key: supersede_key(edu),
        json: edu.to_string(),
    }
}

/// Equal for two EDUs of which only the newer matters: one user's typing in a room, one
/// user's presence, one user's receipt in a room (and thread), one device's list update, one
/// user's signing keys. None for to-device messages (each one counts) and anything else.
fn supersede_key(edu: &Value) -> Option<String> {
    let content = &edu["content"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match edu["edu_type"].as_str()? {
        "m.typing" => Some(format!(
            "typing {} {}",
            text(&content["room_id"]),
            text(&content["user_id"])
        )),
        "m.presence" => match content["push"].as_array()?.as_slice() {
            [one] => Some(format!("presence {}", text(&one["user_id"]))),
            _ => None,
        },
        "m.receipt" => {
            let (room_id, receipts) = single(content)?;
            let (user_id, receipt) = single(receipts.get("m.read")?)?;
            Some(format!(
                "receipt {room_id} {user_id} {}",
                text(&receipt["data"]["thread_id"])
            ))
        }
        "m.device_list_update" => Some(format!(
            "device {} {}",
            text(&content["user_id"]),
            text(&content["device_id"])
        )),
        "m.signing_key_update" => Some(format!("signing {}", text(&content["user_id"]))),
        _ => None,
    }
}

/// The one entry of a JSON object that has exactly one.
fn single(value: &Value) -> Option<(&String, &Value)> {
    let object = value.as_object()?;
    (object.len() == 1).then(|| object.iter().next()).flatten()
}

/// The rows of a job.
async fn rows_of(svc: &Services, job: Job) -> Result<Vec<NewOutbound>> {
    let mut rows = Vec::new();
    match job {
        Job::Pdus(pdus) => {
            for pdu in pdus {
                for server in room_servers(svc, &pdu.room_id).await? {
                    rows.push(NewOutbound {
                        destination: server.to_string(),
                        kind: "pdu",
                        room_id: Some(pdu.room_id.clone()),
                        edu_type: None,
                        supersede_key: None,
                        json: pdu.json.clone(),
                    });
                }
            }
        }
        Job::RoomEdu { room_id, edu } => {
            for server in room_servers(svc, &room_id).await? {
                rows.push(edu_row(server.to_string(), &edu));
            }
        }
        Job::UserEdus { user_id, edus } => {
            let servers: BTreeSet<OwnedServerName> = svc
                .store
                .users_sharing_rooms(&user_id)
                .await?
                .iter()
                .filter_map(|u| server_of(u))
                .filter(|s| s.as_str() != svc.server_name())
                .collect();
            for server in servers {
                rows.extend(edus.iter().map(|edu| edu_row(server.to_string(), edu)));
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
            if items.is_empty() {
                // Trimmed away while the retry waited: what follows makes a new transaction.
                in_flight = None;
                continue;
            }
        }
        if items.is_empty() {
            wake.new_items.notified().await;
            continue;
        }
        // A prefix of the queue, so that deleting up to its last ID removes exactly it.
        let (mut pdus, mut edus, mut last_id) = (Vec::new(), Vec::new(), items[0].id);
        let now = now_ms();
        for item in &items {
            let stale = item.edu_type.as_deref() == Some("m.typing") && now - item.created_ts > TYPING_TTL_MS;
            let value = serde_json::from_str::<Value>(&item.json).ok().filter(|_| !stale);
            let Some(value) = value else {
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
        if pdus.is_empty() && edus.is_empty() {
            // Only expired typing notices (or unreadable rows): nothing to send.
            if let Err(error) = svc.store.delete_outbound(&destination, last_id).await {
                tracing::error!(%destination, %error, "cannot delete expired federation items");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            continue;
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
                // While the destination is down its queue is kept within bounds.
                trim(&svc, &destination).await;
                let until = tokio::time::Instant::now() + Duration::from_millis(delay);
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        _ = wake.up.notified() => break,
                        _ = tokio::time::sleep(TRIM_EVERY) => trim(&svc, &destination).await,
                    }
                }
            }
        }
    }
}

/// Brings a destination's queued EDUs down to `federation.max_queued_edus` (see the module's
/// documentation); what is dropped is logged, to-device messages and key changes as errors.
async fn trim(svc: &Services, destination: &str) {
    let cap = svc.config.federation.max_queued_edus.max(1);
    let dropped = match svc
        .store
        .trim_outbound_edus(destination, cap, &DROPPED_FIRST)
        .await
    {
        Ok(dropped) => dropped,
        Err(error) => {
            tracing::error!(%destination, %error, "cannot trim the federation queue");
            return;
        }
    };
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for edu_type in dropped {
        *by_type.entry(edu_type.unwrap_or_default()).or_default() += 1;
    }
    for (edu_type, count) in by_type {
        if DROPPED_FIRST.contains(&edu_type.as_str()) {
            tracing::warn!(%destination, edu_type, count, cap, "federation queue full: oldest EDUs dropped");
        } else {
            tracing::error!(%destination, edu_type, count, cap, "federation queue full: oldest EDUs dropped; the destination will not get them");
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

/// `m.receipt` (a public `m.read`) of a local user, to the servers in the room, queued before
/// this returns.
pub async fn receipt(
    svc: &Services,
    room_id: &str,
    user_id: &str,
    event_id: &str,
    thread_id: Option<&str>,
    ts: i64,
) -> Result<()> {
    let mut data = json!({ "ts": ts });
    if let Some(thread_id) = thread_id {
        data["thread_id"] = json!(thread_id);
    }
    let job = Job::RoomEdu {
        room_id: room_id.to_owned(),
        edu: json!({ "edu_type": "m.receipt", "content": { room_id: { "m.read": {
            user_id: { "event_ids": [event_id], "data": data } } } } }),
    };
    store_job(svc, job).await
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
    svc.federation.sender.submit(Job::UserEdus {
        user_id: user_id.to_owned(),
        edus: vec![json!({ "edu_type": "m.presence", "content": { "push": [update] } })],
    });
}

/// `m.direct_to_device` from a local user: for each remote server, its users' messages in one
/// EDU with a new `message_id`. The rows are for the caller to store with the messages' txnId
/// (then `queued`); none when federation is off.
pub fn direct_to_device(
    svc: &Services,
    sender: &str,
    event_type: &str,
    by_server: &BTreeMap<String, serde_json::Map<String, Value>>,
) -> Vec<NewOutbound> {
    if svc.federation.sender.jobs.get().is_none() {
        return Vec::new();
    }
    by_server
        .iter()
        .filter(|(server, _)| server.as_str() != svc.server_name())
        .map(|(server, messages)| {
            let message_id = crate::util::random_string(24);
            let edu = json!({ "edu_type": "m.direct_to_device", "content": {
                "sender": sender, "type": event_type, "message_id": message_id, "messages": messages } });
            edu_row(server.clone(), &edu)
        })
        .collect()
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
/// servers sharing a room with them, at most `MAX_ANNOUNCED_DEVICES` in all, queued before this
/// returns. They form the spec's sequence per user: a `stream_id` of their own each, `prev_id` the
/// EDU sent before (see `edu_chain`), so a receiver that caches the list applies them without
/// fetching it again (and tells its users: Synapse does not when a fetched list is empty).
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
    let mut edus = Vec::with_capacity(contents.len());
    for (mut content, (stream_id, prev_id)) in contents.into_iter().zip(chain) {
        content["user_id"] = json!(user_id);
        content["stream_id"] = json!(stream_id);
        content["prev_id"] = json!(prev_id);
        edus.push(json!({ "edu_type": "m.device_list_update", "content": content }));
    }
    if edus.is_empty() {
        return Ok(());
    }
    let job = Job::UserEdus {
        user_id: user_id.to_owned(),
        edus,
    };
    store_job(svc, job).await
}

/// `m.signing_key_update`: a local user's master and self-signing keys, to the servers sharing
/// a room with them, queued before this returns.
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
    let job = Job::UserEdus {
        user_id: user_id.to_owned(),
        edus: vec![json!({ "edu_type": "m.signing_key_update", "content": content })],
    };
    store_job(svc, job).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn typing(user: &str, on: bool) -> Value {
        json!({ "edu_type": "m.typing", "content": { "room_id": "!r:x", "user_id": user, "typing": on } })
    }

    fn to_device(n: i64) -> Value {
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": "@a:hearth.test", "type": "t", "message_id": n.to_string(), "messages": {} } })
    }

    fn device_list(device: &str, stream_id: i64) -> Value {
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": "@a:hearth.test", "device_id": device, "stream_id": stream_id, "prev_id": [] } })
    }

    fn receipt(user: &str, event: &str) -> Value {
        json!({ "edu_type": "m.receipt", "content": { "!r:x": { "m.read": {
            user: { "event_ids": [event], "data": { "ts": 1 } } } } } })
    }

    #[test]
    fn only_the_newest_of_one_key_matters_and_to_device_messages_have_none() {
        let key = |edu: &Value| supersede_key(edu);
        assert_eq!(key(&typing("@a:x", true)), key(&typing("@a:x", false)));
        assert_ne!(key(&typing("@a:x", true)), key(&typing("@b:x", true)));
        assert_eq!(key(&receipt("@a:x", "$1")), key(&receipt("@a:x", "$2")));
        assert_eq!(key(&device_list("D1", 1)), key(&device_list("D1", 2)));
        assert_ne!(key(&device_list("D1", 1)), key(&device_list("D2", 1)));
        assert_eq!(key(&to_device(1)), None);
        let two = json!({ "edu_type": "m.presence", "content": { "push": [
            { "user_id": "@a:x" }, { "user_id": "@b:x" } ] } });
        assert_eq!(key(&two), None, "a batch of several users supersedes nothing");
    }

    #[tokio::test]
    async fn a_long_queue_drops_superseded_then_short_lived_edus_then_the_oldest() {
        // A bare store: `TestServices` would install a process-wide at-rest keyring, which
        // the other unit tests' services share.
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("queue.db").display());
        let store = &Store::connect(&url, None).await.unwrap();
        let dest = "hs-x.test";
        let edus = [
            to_device(0),          // 1
            typing("@a:x", true),  // 2: superseded by 7
            device_list("D1", 1),  // 3: superseded by 9
            receipt("@a:x", "$1"), // 4
            to_device(1),          // 5
            typing("@b:x", true),  // 6
            typing("@a:x", false), // 7
            to_device(2),          // 8
            device_list("D1", 2),  // 9
        ];
        let rows: Vec<NewOutbound> = edus.iter().map(|e| edu_row(dest.to_owned(), e)).collect();
        store.enqueue_outbound(&rows, now_ms()).await.unwrap();
        let pdu = NewOutbound {
            destination: dest.to_owned(),
            kind: "pdu",
            room_id: Some("!r:x".into()),
            edu_type: None,
            supersede_key: None,
            json: "{}".into(),
        };
        store.enqueue_outbound(&[pdu], now_ms()).await.unwrap();
        let left = async || -> Vec<String> {
            let items = store.outbound_items(dest, 100).await.unwrap();
            items
                .iter()
                .map(|i| {
                    let v: Value = serde_json::from_str(&i.json).unwrap();
                    match i.kind.as_str() {
                        "pdu" => "pdu".to_owned(),
                        _ => format!(
                            "{} {}",
                            v["edu_type"].as_str().unwrap(),
                            v["content"]["message_id"]
                                .as_str()
                                .or(v["content"]["user_id"].as_str())
                                .unwrap_or("receipt")
                        ),
                    }
                })
                .collect()
        };

        // Under the cap: nothing dropped.
        assert!(
            store
                .trim_outbound_edus(dest, 9, &DROPPED_FIRST)
                .await
                .unwrap()
                .is_empty()
        );
        // Superseded first (the oldest typing of @a, the older D1 update), then typing, presence,
        // receipts, oldest first.
        let dropped = store.trim_outbound_edus(dest, 5, &DROPPED_FIRST).await.unwrap();
        let dropped: Vec<&str> = dropped.iter().map(|t| t.as_deref().unwrap()).collect();
        assert_eq!(
            dropped,
            ["m.typing", "m.device_list_update", "m.typing", "m.typing"]
        );
        assert_eq!(
            left().await,
            [
                "m.direct_to_device 0",
                "m.receipt receipt",
                "m.direct_to_device 1",
                "m.direct_to_device 2",
                "m.device_list_update @a:hearth.test",
                "pdu",
            ]
        );
        // Then the oldest of what remains, whatever it is; PDUs are never dropped.
        let dropped = store.trim_outbound_edus(dest, 2, &DROPPED_FIRST).await.unwrap();
        let dropped: Vec<&str> = dropped.iter().map(|t| t.as_deref().unwrap()).collect();
        assert_eq!(dropped, ["m.receipt", "m.direct_to_device", "m.direct_to_device"]);
        assert_eq!(
            left().await,
            [
                "m.direct_to_device 2",
                "m.device_list_update @a:hearth.test",
                "pdu"
            ]
        );
    }

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
