//! Backfill (spec/server-server.md, "Backfill"): when a backwards `/messages` reaches the oldest
//! event this server has of a room and that event's prev events are not here, the room's other
//! servers are asked (`GET /_matrix/federation/v1/backfill/{roomId}`) for what came before.
//! Every returned PDU goes through `inbound::check_without_state` (format, signatures, content
//! hash, ACL, auth against its own auth events), then, oldest first, against the state before
//! it (spec step 5): its prev events' states, resolved when they differ (`resolve`); for a prev
//! event not here (the oldest events of a block), the origin's `/state_ids` at it, the state
//! events not here fetched and checked as outliers. Failing that check it is rejected. Accepted
//! ones are stored at negative stream positions, in depth order, below everything this server
//! had (`store/backfill.rs`), each with the state after it (`prev_content`, `/context`), without
//! the timeline's listeners: no `/sync` wake-up, push, notification count or federation send.
//! When the state before an event cannot be had (`MAX_STATE_FETCHES` used, the origin does not
//! answer), it is checked against its auth events only and given the state this server joined
//! with, as before; that is logged.
//!
//! Bounded: at most `MAX_EVENTS` per request, `MAX_SERVERS` servers, `TIME_BOUND` in all; one
//! backfill per room at a time (later requests wait for it, then read what it stored); a room
//! whose servers gave nothing is not asked again before a delay that doubles per failure.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hearth_federation::Pdu;
use ruma::{
    EventId, OwnedEventId, OwnedServerName, RoomId, ServerName, UserId, room_version_rules::RoomVersionRules,
};
use serde_json::value::RawValue;

use super::{
    inbound::{self, Budget, encode},
    resolve,
};
use crate::{
    error::Result,
    services::Services,
    store::{EventPlace, StateMap},
};

/// Most events asked of a server at once (the spec's `limit`).
pub const MAX_EVENTS: usize = 100;
/// Most servers asked in one backfill.
const MAX_SERVERS: usize = 3;
/// The whole backfill, all servers together: the client waits for it.
const TIME_BOUND: Duration = Duration::from_secs(20);
/// Most missing prev events named in one request (`v`).
const MAX_FROM: i64 = 5;
/// Largest `/backfill` answer read (100 PDUs of at most 64 KiB, and framing).
const RESPONSE_LIMIT: usize = 8 << 20;
/// Wait after a backfill that stored nothing, doubling up to `LAST_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(30);
const LAST_RETRY: Duration = Duration::from_secs(3600);
/// Most `/state_ids` requests one backfill makes (for prev events that are not here).
const MAX_STATE_FETCHES: usize = 3;
/// Most state events a `/state_ids` answer may name.
const MAX_STATE_IDS: usize = 5_000;
/// Largest `/state_ids` answer read.
const STATE_IDS_LIMIT: usize = 2 << 20;

/// Backfill state kept in `Federation`: per-room locks, remembered failures, and the next free
/// negative stream position.
#[derive(Default)]
pub struct Backfilling {
    rooms: Mutex<HashMap<String, Arc<RoomSlot>>>,
    failures: Mutex<HashMap<String, Failure>>,
    /// The lowest stream position handed out (read from the database once).
    lowest: tokio::sync::Mutex<Option<i64>>,
}

#[derive(Default)]
struct RoomSlot {
    lock: tokio::sync::Mutex<()>,
    /// Backfills of the room that stored something: a waiter that sees it move reads the store
    /// instead of asking again.
    filled: AtomicU64,
}

struct Failure {
    until: Instant,
    delay: Duration,
}

impl Backfilling {
    fn slot(&self, room_id: &str) -> Arc<RoomSlot> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.entry(room_id.to_owned()).or_default().clone()
    }

    fn failed_recently(&self, room_id: &str) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.get(room_id).is_some_and(|f| f.until > Instant::now())
    }

    fn record(&self, room_id: &str, stored: bool) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if stored {
            failures.remove(room_id);
            return;
        }
        let delay = failures
            .get(room_id)
            .map(|f| (f.delay * 2).min(LAST_RETRY))
            .unwrap_or(FIRST_RETRY);
        failures.insert(
            room_id.to_owned(),
            Failure {
                until: Instant::now() + delay,
                delay,
            },
        );
    }

    /// `n` fresh stream positions below every event: the first of them (the others follow it).
    async fn reserve(&self, svc: &Services, n: usize) -> Result<i64> {
        let mut lowest = self.lowest.lock().await;
        let low = match *lowest {
            Some(low) => low,
            None => svc.store.lowest_stream_ordering().await?,
        };
        let first = low - n as i64;
        *lowest = Some(first);
        Ok(first)
    }
}

/// Fills the room's history from before the oldest event here, if any of it is missing and its
/// servers have it. Returns whether events were stored (by this call, or by the one it waited
/// for): the caller reads the store again then. Failures are logged, never the client's error.
pub async fn fill(svc: &Services, room_id: &RoomId) -> bool {
    match fill_room(svc, room_id).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(%room_id, %error, "backfill failed");
            false
        }
    }
}

async fn fill_room(svc: &Services, room_id: &RoomId) -> Result<bool> {
    let state = &svc.federation.backfill;
    let room = room_id.as_str();
    if svc.federation.client().is_err() || state.failed_recently(room) {
        return Ok(false);
    }
    let slot = state.slot(room);
    let seen = slot.filled.load(Ordering::SeqCst);
    let _one_at_a_time = slot.lock.lock().await;
    if slot.filled.load(Ordering::SeqCst) != seen {
        return Ok(true);
    }
    if state.failed_recently(room) {
        return Ok(false);
    }
    let from = svc.store.backward_extremities(room, MAX_FROM).await?;
    if from.is_empty() {
        return Ok(false);
    }
    // The state backfilled events are given: the one this server joined with (the state at
    // each of them is not fetched; see the spec's section).
    let Some((_, group)) = svc.store.timeline_start(room).await? else {
        return Ok(false);
    };
    let stored = AtomicUsize::new(0);
    match tokio::time::timeout(TIME_BOUND, from_servers(svc, room_id, &from, group, &stored)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%room_id, %error, "backfill stopped"),
        Err(_) => tracing::info!(%room_id, "backfill timed out"),
    }
    let stored = stored.load(Ordering::SeqCst);
    tracing::info!(%room_id, stored, "backfill");
    state.record(room, stored > 0);
    if stored > 0 {
        // Backfilled visibility changes and the room's creation count in `RoomAccess`: what
        // the sync engine reused of it is stale.
        svc.sync_engine.room_state_touched(room);
        slot.filled.fetch_add(1, Ordering::SeqCst);
    }
    Ok(stored > 0)
}

/// Asks the room's servers in turn until one gives events that are stored.
async fn from_servers(
    svc: &Services,
    room_id: &RoomId,
    from: &[String],
    group: i64,
    stored: &AtomicUsize,
) -> Result<()> {
    let (_, rules) = inbound::room_rules(svc, room_id).await?;
    let client = svc.federation.client()?;
    let v: Vec<String> = from.iter().map(|id| format!("v={}", encode(id))).collect();
    let mut prev_states = PrevStates::default();
    let path = format!(
        "/_matrix/federation/v1/backfill/{}?{}&limit={MAX_EVENTS}",
        encode(room_id.as_str()),
        v.join("&")
    );
    #[derive(serde::Deserialize)]
    struct Response {
        pdus: Vec<Box<RawValue>>,
    }
    for server in servers(svc, room_id).await?.iter().take(MAX_SERVERS) {
        let body = match client
            .get(server, &path, Some(&svc.signing_key), RESPONSE_LIMIT)
            .await
        {
            Ok(body) => body,
            Err(error) => {
                tracing::info!(%server, %room_id, %error, "backfill request failed");
                continue;
            }
        };
        let mut pdus = match serde_json::from_slice::<Response>(&body) {
            Ok(response) => response.pdus,
            Err(error) => {
                tracing::info!(%server, %room_id, %error, "bad backfill answer");
                continue;
            }
        };
        pdus.truncate(MAX_EVENTS);
        let batch = Batch {
            origin: server,
            rules: &rules,
            room_id,
            fallback: group,
        };
        if store_batch(svc, &batch, pdus, &mut prev_states, stored).await? > 0 {
            break;
        }
    }
    Ok(())
}

/// The servers asked: the room creator's first (it has the whole history unless it left),
/// then the other servers with members joined now.
async fn servers(svc: &Services, room_id: &RoomId) -> Result<Vec<OwnedServerName>> {
    let mut servers = Vec::new();
    if let Some(room) = svc.store.room(room_id.as_str()).await?
        && let Ok(creator) = UserId::parse(room.creator.as_str())
        && creator.server_name().as_str() != svc.server_name()
    {
        servers.push(creator.server_name().to_owned());
    }
    for server in super::remote_membership::remote_servers(svc, room_id).await? {
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    Ok(servers)
}

/// One server's answer being stored.
struct Batch<'a> {
    origin: &'a ServerName,
    rules: &'a RoomVersionRules,
    room_id: &'a RoomId,
    /// The state group this server joined with: what an event gets when the state before it
    /// cannot be had.
    fallback: i64,
}

/// The states after prev events that are not here, asked of the origin during one backfill:
/// prev event → its state group (`None`: it could not be had; not asked again).
#[derive(Default)]
struct PrevStates {
    groups: HashMap<OwnedEventId, Option<i64>>,
    asked: usize,
}

/// Checks and stores one server's answer, oldest first (so an event's auth and prev events from
/// the same answer are here before it), each at its own position of a block reserved below
/// every event. Returns how many were stored.
async fn store_batch(
    svc: &Services,
    batch: &Batch<'_>,
    mut pdus: Vec<Box<RawValue>>,
    prev_states: &mut PrevStates,
    stored: &AtomicUsize,
) -> Result<usize> {
    #[derive(serde::Deserialize)]
    struct Depth {
        #[serde(default)]
        depth: i64,
    }
    let (origin, rules, room_id) = (batch.origin, batch.rules, batch.room_id);
    pdus.sort_by_cached_key(|raw| serde_json::from_str::<Depth>(raw.get()).map_or(0, |d| d.depth));
    let first = svc.federation.backfill.reserve(svc, pdus.len()).await?;
    let mut budget = Budget::default();
    let mut count = 0;
    for (i, raw) in pdus.iter().enumerate() {
        let pdu = match inbound::check_without_state(svc, origin, rules, room_id, raw, &mut budget).await {
            Ok(pdu) => pdu,
            Err(reason) => {
                tracing::info!(%origin, %room_id, %reason, "backfilled PDU refused");
                continue;
            }
        };
        let id = pdu.event_id.as_str();
        if matches!(
            svc.store.event_place(id).await?,
            Some(EventPlace::Timeline | EventPlace::SoftFailed)
        ) || svc.store.unserved(id).await?.is_some()
        {
            continue;
        }
        let mut event = inbound::new_event(&pdu);
        let before = state_before(svc, batch, &pdu, prev_states).await?;
        let may_redact = match &before {
            Some((_, state)) => match inbound::check_against_state_before(svc, rules, &pdu, state).await? {
                Ok(may_redact) => may_redact,
                Err(reason) => {
                    tracing::info!(%origin, %room_id, event_id = %pdu.event_id, %reason,
                        "backfilled PDU rejected against the state before it");
                    continue;
                }
            },
            None => {
                tracing::warn!(%origin, %room_id, event_id = %pdu.event_id,
                    "the state before a backfilled PDU could not be had: checked against its auth \
                     events only, given the state this server joined with");
                inbound::may_redact_by_auth_events(svc, rules, &pdu, room_id).await?
            }
        };
        event.redacts = inbound::redaction_target(svc, &pdu, room_id, may_redact).await?;
        inbound::apply_awaiting_redactions(svc, &pdu, room_id).await?;
        let (before_group, before_state) = match &before {
            Some((group, state)) => (*group, Some(state)),
            None => (batch.fallback, None),
        };
        if svc
            .store
            .insert_backfilled(
                &event,
                first + i as i64,
                before_group,
                before_state,
                inbound::held_back(&pdu, &event),
            )
            .await?
        {
            count += 1;
            stored.fetch_add(1, Ordering::SeqCst);
        }
    }
    Ok(count)
}

/// The state before a backfilled event, as a state group and its map: its prev events' states
/// (each stored with a state group, or for one not here the origin's answer), resolved when
/// they differ. Rejected prev events are passed over. `None` when a state cannot be had.
async fn state_before(
    svc: &Services,
    batch: &Batch<'_>,
    pdu: &Pdu,
    prev_states: &mut PrevStates,
) -> Result<Option<(i64, StateMap)>> {
    let room = batch.room_id.as_str();
    if pdu.prev_events.is_empty() {
        // The room's create event: nothing before it.
        let group = svc.store.snapshot_group(room, &[]).await?;
        return Ok(Some((group, StateMap::new())));
    }
    let prevs: Vec<String> = pdu.prev_events.iter().map(ToString::to_string).collect();
    let here = svc.store.dag_events_state(&prevs).await?;
    let mut groups = Vec::new();
    for prev in &pdu.prev_events {
        if let Some((_, group, _)) = here.iter().find(|(id, g, _)| id == prev.as_str() && *g != 0) {
            groups.push(*group);
            continue;
        }
        if let Some((kind, _)) = svc.store.unserved(prev.as_str()).await?
            && kind == "rejected"
        {
            continue;
        }
        match prev_state(svc, batch, prev, prev_states).await? {
            Some(group) => groups.push(group),
            None => return Ok(None),
        }
    }
    groups.sort_unstable();
    groups.dedup();
    match groups[..] {
        [] => Ok(None),
        [group] => Ok(Some((group, svc.store.state_of_group(group).await?))),
        _ => {
            let mut states = Vec::with_capacity(groups.len());
            for g in &groups {
                states.push(svc.store.state_of_group(*g).await?);
            }
            let resolved = resolve::resolve(svc, batch.rules, &states).await?;
            let entries = inbound::state_entries(svc, &resolved).await?;
            let group = svc.store.snapshot_group(room, &entries).await?;
            Ok(Some((group, resolved)))
        }
    }
}

/// The state group after a prev event that is not here: asked of the origin once per backfill,
/// at most `MAX_STATE_FETCHES` times; `None` when it cannot be had.
async fn prev_state(
    svc: &Services,
    batch: &Batch<'_>,
    prev: &EventId,
    prev_states: &mut PrevStates,
) -> Result<Option<i64>> {
    if let Some(known) = prev_states.groups.get(prev) {
        return Ok(*known);
    }
    if prev_states.asked >= MAX_STATE_FETCHES {
        tracing::info!(room_id = %batch.room_id, %prev, "no more state fetches in this backfill");
        return Ok(None);
    }
    prev_states.asked += 1;
    let group = match state_after_missing(svc, batch, prev).await {
        Ok(state) => {
            let entries = inbound::state_entries(svc, &state).await?;
            Some(svc.store.snapshot_group(batch.room_id.as_str(), &entries).await?)
        }
        Err(error) => {
            tracing::info!(origin = %batch.origin, room_id = %batch.room_id, %prev, %error,
                "the state at a backfilled event's prev event could not be had");
            None
        }
    };
    prev_states.groups.insert(prev.to_owned(), group);
    Ok(group)
}

/// The state after `prev` from the origin: `GET /state_ids` at it (the state before it), the
/// events not here fetched and checked against their auth events (kept as outliers, within one
/// `Budget`), and `prev` itself when it is a state event.
async fn state_after_missing(svc: &Services, batch: &Batch<'_>, prev: &EventId) -> Result<StateMap, String> {
    #[derive(serde::Deserialize)]
    struct StateIds {
        pdu_ids: Vec<OwnedEventId>,
    }
    let client = svc.federation.client().map_err(|e| e.to_string())?;
    let path = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        encode(batch.room_id.as_str()),
        encode(prev.as_str())
    );
    let body = client
        .get(batch.origin, &path, Some(&svc.signing_key), STATE_IDS_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    let mut ids = serde_json::from_slice::<StateIds>(&body)
        .map_err(|e| format!("bad /state_ids answer: {e}"))?
        .pdu_ids;
    if ids.len() > MAX_STATE_IDS {
        return Err(format!("/state_ids names {} events", ids.len()));
    }
    ids.push(prev.to_owned());
    ids.sort();
    ids.dedup();
    let events = inbound::ensure_events(
        svc,
        batch.origin,
        batch.rules,
        batch.room_id,
        &ids,
        &mut Budget::default(),
        0,
    )
    .await?;
    let mut state = StateMap::new();
    // The state before `prev`, then `prev` over it.
    let mut order: Vec<&Pdu> = events.values().filter(|p| p.event_id != prev).collect();
    order.extend(events.get(prev));
    for event in order {
        let Some(key) = &event.state_key else {
            if event.event_id == prev {
                continue;
            }
            return Err(format!("/state_ids names {}, not a state event", event.event_id));
        };
        let slot = (event.event_type.to_string(), key.clone());
        if event.event_id != prev && state.contains_key(&slot) {
            return Err(format!("/state_ids names two events for {slot:?}"));
        }
        state.insert(slot, event.event_id.to_string());
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_remembered_with_a_growing_delay_until_a_success() {
        let state = Backfilling::default();
        assert!(!state.failed_recently("!r:x"));
        state.record("!r:x", false);
        assert!(state.failed_recently("!r:x"));
        assert!(!state.failed_recently("!other:x"), "per room");
        state.record("!r:x", false);
        let delay = state.failures.lock().unwrap()["!r:x"].delay;
        assert_eq!(delay, FIRST_RETRY * 2);
        for _ in 0..20 {
            state.record("!r:x", false);
        }
        assert_eq!(state.failures.lock().unwrap()["!r:x"].delay, LAST_RETRY);
        state.record("!r:x", true);
        assert!(!state.failed_recently("!r:x"));
    }

    #[tokio::test]
    async fn one_backfill_per_room_at_a_time() {
        let state = Backfilling::default();
        let slot = state.slot("!r:x");
        let held = slot.lock.lock().await;
        assert!(state.slot("!r:x").lock.try_lock().is_err(), "the same room waits");
        assert!(
            state.slot("!s:x").lock.try_lock().is_ok(),
            "another room does not"
        );
        drop(held);
    }
}
