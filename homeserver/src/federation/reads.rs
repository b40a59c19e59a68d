//! What other servers may read of a room: single events, the state (and its auth chain) at an
//! event, an event's auth chain, backfill and missing events. Only a server that ever had a user
//! in the room may read it (and one its server ACL lets in); each event is served if the history
//! visibility *at that event* lets one of that server's users see it (joined then, or `shared`
//! and joined at some point after, or invited under `invited`), or anyone (`world_readable`):
//! `rooms::access`, whatever the memberships are now. A server cut off from the room for a
//! while (a partition) may so read what was sent while it was still in it. Soft-failed events
//! are served like any other; rejected ones are not stored here. Every walk through the DAG is
//! bounded.

use std::collections::{BTreeMap, BinaryHeap, HashSet};

use ruma::{EventId, RoomId, ServerName};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    rooms::access::RoomAccess,
    services::Services,
    store::EventRow,
    util::now_ms,
};

/// Most of a server's users whose access is consulted for one request.
const MAX_USERS_CONSULTED: usize = 100;
/// Most events in an auth chain or a state snapshot served.
const MAX_CHAIN: usize = 10_000;
/// Most events one backfill returns.
const MAX_BACKFILL: usize = 100;
/// Most events one get_missing_events returns.
const MAX_MISSING: usize = 20;

/// A server's access to a room: through any of its users, or as anyone (world-readable).
pub struct ServerAccess {
    accesses: Vec<RoomAccess>,
}

impl ServerAccess {
    /// Loads `origin`'s access to the room; 403 unless one of its users ever had a membership
    /// in it (`can_see` then judges each event by the visibility at that event).
    pub async fn load(svc: &Services, room_id: &RoomId, origin: &ServerName) -> Result<Self> {
        if svc.store.room(room_id.as_str()).await?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        if !super::acl::allowed(svc, room_id.as_str(), origin).await? {
            return Err(Error::forbidden("Server is denied by the room's server ACL"));
        }
        let users = svc
            .store
            .room_users_of_server(room_id.as_str(), origin.as_str(), MAX_USERS_CONSULTED as i64)
            .await?;
        if users.is_empty() {
            return Err(Error::forbidden("Server has no user in this room"));
        }
        let rooms = [room_id.to_string()];
        let mut accesses = Vec::with_capacity(users.len() + 1);
        accesses.extend(RoomAccess::load_many(svc, &rooms, None).await?.into_values());
        for user in &users {
            accesses.push(RoomAccess::load(svc, room_id, user).await?);
        }
        Ok(Self { accesses })
    }

    pub fn can_see(&self, row: &EventRow) -> bool {
        self.accesses.iter().any(|a| a.can_see(row))
    }
}

fn pdu(row: &EventRow) -> Value {
    serde_json::from_str(&row.json).unwrap_or(Value::Null)
}

/// The event IDs listed under `field` (`auth_events`, `prev_events`) of a stored PDU.
fn ids_in(row: &EventRow, field: &str) -> Vec<String> {
    pdu(row)
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// An event of the room, or 404.
async fn event_in(svc: &Services, room_id: &str, event_id: &str) -> Result<EventRow> {
    svc.store
        .event(event_id)
        .await?
        .filter(|e| e.room_id == room_id)
        .ok_or_else(|| Error::not_found("Event not found"))
}

/// The auth chain of `start` (not including `start` itself), at most `MAX_CHAIN` events.
async fn auth_chain(svc: &Services, room_id: &str, start: &[EventRow]) -> Result<Vec<EventRow>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut chain = Vec::new();
    let mut next: Vec<String> = start.iter().flat_map(|r| ids_in(r, "auth_events")).collect();
    while !next.is_empty() && chain.len() < MAX_CHAIN {
        next.retain(|id| seen.insert(id.clone()));
        let rows = svc.store.events(&next).await?;
        next = Vec::new();
        for row in rows.into_iter().filter(|r| r.room_id == room_id) {
            next.extend(ids_in(&row, "auth_events"));
            chain.push(row);
        }
    }
    chain.truncate(MAX_CHAIN);
    Ok(chain)
}

/// `GET /event/{eventId}`.
pub async fn event(svc: &Services, origin: &ServerName, event_id: &EventId) -> Result<Value> {
    let row = svc
        .store
        .event(event_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let room_id = RoomId::parse(row.room_id.as_str()).map_err(Error::internal)?;
    let access = ServerAccess::load(svc, &room_id, origin).await?;
    if !access.can_see(&row) {
        return Err(Error::forbidden("The server may not see this event"));
    }
    Ok(json!({ "origin": svc.server_name(), "origin_server_ts": now_ms(), "pdus": [pdu(&row)] }))
}

/// The state before `event_id` and its auth chain: (state events, auth chain).
async fn state_at(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<(Vec<EventRow>, Vec<EventRow>)> {
    let access = ServerAccess::load(svc, room_id, origin).await?;
    let row = event_in(svc, room_id.as_str(), event_id.as_str()).await?;
    if !access.can_see(&row) {
        return Err(Error::forbidden("The server may not see this event"));
    }
    let ids: Vec<String> = match svc
        .store
        .state_group_before(room_id.as_str(), row.stream_ordering)
        .await?
    {
        Some(group) => svc.store.state_of_group(group).await?.into_values().collect(),
        None => Vec::new(),
    };
    let mut state = svc.store.events(&ids[..ids.len().min(MAX_CHAIN)]).await?;
    state.sort_by_key(|r| r.stream_ordering);
    let chain = auth_chain(svc, room_id.as_str(), &state).await?;
    Ok((state, chain))
}

/// `GET /state_ids/{roomId}?event_id=`.
pub async fn state_ids(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Value> {
    let (state, chain) = state_at(svc, origin, room_id, event_id).await?;
    let ids = |rows: &[EventRow]| rows.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>();
    Ok(json!({ "pdu_ids": ids(&state), "auth_chain_ids": ids(&chain) }))
}

/// `GET /state/{roomId}?event_id=`.
pub async fn state(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Value> {
    let (state, chain) = state_at(svc, origin, room_id, event_id).await?;
    Ok(json!({
        "pdus": state.iter().map(pdu).collect::<Vec<_>>(),
        "auth_chain": chain.iter().map(pdu).collect::<Vec<_>>(),
    }))
}

/// `GET /event_auth/{roomId}/{eventId}`.
pub async fn event_auth(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Value> {
    let access = ServerAccess::load(svc, room_id, origin).await?;
    let row = event_in(svc, room_id.as_str(), event_id.as_str()).await?;
    if !access.can_see(&row) {
        return Err(Error::forbidden("The server may not see this event"));
    }
    let chain = auth_chain(svc, room_id.as_str(), std::slice::from_ref(&row)).await?;
    Ok(json!({ "auth_chain": chain.iter().map(pdu).collect::<Vec<_>>() }))
}

/// Walks back from `start` through `prev_events`, deepest first, collecting up to `limit`
/// visible events of the room not in `stop` and not shallower than `min_depth`.
async fn walk_back(
    svc: &Services,
    access: &ServerAccess,
    room_id: &str,
    start: Vec<String>,
    stop: &HashSet<String>,
    min_depth: i64,
    limit: usize,
) -> Result<Vec<EventRow>> {
    let mut seen: HashSet<String> = stop.clone();
    let mut heap: BinaryHeap<(i64, i64, String)> = BinaryHeap::new();
    let mut rows_by_id: BTreeMap<String, EventRow> = BTreeMap::new();
    let fresh: Vec<String> = start.into_iter().filter(|id| seen.insert(id.clone())).collect();
    for row in svc.store.events(&fresh).await? {
        if row.room_id == room_id {
            heap.push((row.depth, row.stream_ordering, row.event_id.clone()));
            rows_by_id.insert(row.event_id.clone(), row);
        }
    }
    let mut out = Vec::new();
    // Each step reads at most one event's parents; the steps are bounded too.
    let mut steps = 0;
    while let Some((depth, _, id)) = heap.pop() {
        steps += 1;
        if out.len() >= limit || steps > limit * 10 {
            break;
        }
        let Some(row) = rows_by_id.remove(&id) else {
            continue;
        };
        if depth < min_depth {
            continue;
        }
        let parents: Vec<String> = ids_in(&row, "prev_events")
            .into_iter()
            .filter(|p| seen.insert(p.clone()))
            .collect();
        for parent in svc.store.events(&parents).await? {
            if parent.room_id == room_id {
                heap.push((parent.depth, parent.stream_ordering, parent.event_id.clone()));
                rows_by_id.insert(parent.event_id.clone(), parent);
            }
        }
        if access.can_see(&row) {
            out.push(row);
        }
    }
    Ok(out)
}

/// `GET /backfill/{roomId}?v=&limit=`: the given events and their ancestors, newest first.
pub async fn backfill(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    from: Vec<String>,
    limit: u64,
) -> Result<Value> {
    let access = ServerAccess::load(svc, room_id, origin).await?;
    let limit = (limit as usize).clamp(1, MAX_BACKFILL);
    let from: Vec<String> = from.into_iter().take(MAX_BACKFILL).collect();
    let rows = walk_back(svc, &access, room_id.as_str(), from, &HashSet::new(), 0, limit).await?;
    Ok(json!({
        "origin": svc.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": rows.iter().map(pdu).collect::<Vec<_>>(),
    }))
}

/// `POST /get_missing_events/{roomId}`: ancestors of `latest` not reaching `earliest`, oldest
/// first.
pub async fn missing_events(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    earliest: Vec<String>,
    latest: Vec<String>,
    limit: u64,
    min_depth: u64,
) -> Result<Value> {
    let access = ServerAccess::load(svc, room_id, origin).await?;
    let limit = (limit as usize).clamp(1, MAX_MISSING);
    let mut stop: HashSet<String> = earliest.into_iter().take(MAX_BACKFILL).collect();
    let latest: Vec<String> = latest.into_iter().take(MAX_MISSING).collect();
    // The latest events themselves are what the asker has; their parents are what it lacks.
    let mut start = Vec::new();
    for row in svc.store.events(&latest).await? {
        if row.room_id == room_id.as_str() {
            start.extend(ids_in(&row, "prev_events"));
        }
    }
    stop.extend(latest);
    let min_depth = i64::try_from(min_depth).unwrap_or(i64::MAX);
    let mut rows = walk_back(svc, &access, room_id.as_str(), start, &stop, min_depth, limit).await?;
    rows.sort_by_key(|r| (r.depth, r.stream_ordering));
    Ok(json!({ "events": rows.iter().map(pdu).collect::<Vec<_>>() }))
}
