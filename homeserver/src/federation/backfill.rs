//! Backfill (spec/server-server.md, "Backfill"): when a backwards `/messages` reaches the oldest
//! event this server has of a room and that event's prev events are not here, the room's other
//! servers are asked (`GET /_matrix/federation/v1/backfill/{roomId}`) for what came before.
//! Every returned PDU goes through `inbound::check_without_state` (format, signatures, content
//! hash, ACL, auth against its own auth events); accepted ones are stored at negative stream
//! positions, in depth order, below everything this server had (`store/backfill.rs`), without
//! the timeline's listeners: no `/sync` wake-up, push, notification count or federation send.
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

use ruma::{OwnedServerName, RoomId, ServerName, UserId, room_version_rules::RoomVersionRules};
use serde_json::value::RawValue;

use super::inbound::{self, Budget, encode};
use crate::{error::Result, services::Services, store::EventPlace};

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
        if store_batch(svc, server, &rules, room_id, pdus, group, stored).await? > 0 {
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

/// Checks and stores one server's answer, oldest first (so an event's auth events from the same
/// answer are here before it), each at its own position of a block reserved below every event.
/// Returns how many were stored.
async fn store_batch(
    svc: &Services,
    origin: &ServerName,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    mut pdus: Vec<Box<RawValue>>,
    group: i64,
    stored: &AtomicUsize,
) -> Result<usize> {
    #[derive(serde::Deserialize)]
    struct Depth {
        #[serde(default)]
        depth: i64,
    }
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
        let may_redact = inbound::may_redact_by_auth_events(svc, rules, &pdu, room_id).await?;
        event.redacts = inbound::redaction_target(svc, &pdu, room_id, may_redact).await?;
        inbound::apply_awaiting_redactions(svc, &pdu, room_id).await?;
        if svc
            .store
            .insert_backfilled(&event, first + i as i64, group)
            .await?
        {
            count += 1;
            stored.fetch_add(1, Ordering::SeqCst);
        }
    }
    Ok(count)
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
