//! The incremental sync engine's memory: what `/sync` knows without asking the database.
//!
//! - **Positions**: the events stream position up to which every appended event is reflected
//!   here, and each room's latest position. The append listener (`notifier::WakeSyncs`) records
//!   a batch's rooms before advancing the position, in commit order (appends are serialized by
//!   the timeline's lock), and before it wakes anyone: a sync that read position N knows every
//!   room's latest event ≤ N. A room absent from the table had nothing appended since this
//!   process started (`floor`).
//! - The receipts stream likewise: its position and each room's latest receipt, recorded in
//!   commit order (`receipts_write`), so a receipt-less room costs a sync no query.
//! - Room versions (they never change).
//! - The recent events of each room, formatted once for all receivers (`recent.rs`).
//!
//! It is a cache: a question it cannot answer (a token from before start-up, a position beyond
//! what it has seen) goes to the database, so correctness never depends on it being warm. Several
//! processes could share it by feeding `appended` from their notification bus.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
};

use super::{
    carry::Continuations,
    recent::RecentEvents,
    response::{SharedEvent, SyncEvent},
    stats::SyncStats,
};
use ruma::room_version_rules::RoomVersionRules;
use serde_json::Value;

use crate::{
    error::Result,
    rooms::client_event::{Related, Viewer, age, format_event, transaction_id_for},
    services::Services,
    store::{Direction, EventRow, NewEvent},
};

#[derive(Default)]
pub struct SyncEngine {
    pub stats: SyncStats,
    /// Where each device's last step left off, for its next request (carry.rs).
    pub continuations: Continuations,
    /// Identical woken steps computing once (shared.rs).
    pub shared: super::SharedSteps,
    /// Stored filters already read (filter.rs).
    pub filters: super::filter::StoredFilters,
    /// The last events of each room, formatted once for every receiver.
    pub recent: RecentEvents,
    /// Every timeline event at or below this position is reflected in `rooms`.
    events: AtomicI64,
    /// The events stream position when this process started (once `started`).
    floor: AtomicI64,
    started: AtomicBool,
    /// Per room: its latest timeline position, if appended since start-up.
    rooms: RwLock<HashMap<Arc<str>, i64>>,
    /// Per room: the position of its latest membership event, if appended since start-up
    /// (written under the same lock as `rooms`, before `events` advances).
    memberships: RwLock<HashMap<Arc<str>, i64>>,
    /// Per room: the position of its latest state event (or state stored beside the timeline,
    /// see `room_state_touched`), if any since start-up: what a viewer's `RoomAccess` is built
    /// from.
    states: RwLock<HashMap<Arc<str>, i64>>,
    versions: RwLock<HashMap<Arc<str>, Arc<str>>>,
    /// The receipts stream: the same, position and per room, written under `receipts_write`.
    receipts: AtomicI64,
    receipts_floor: AtomicI64,
    room_receipts: RwLock<HashMap<Arc<str>, i64>>,
    receipts_write: tokio::sync::Mutex<()>,
}

impl SyncEngine {
    /// Sets the positions at start-up, before anything is appended.
    pub async fn start(svc: &Services) -> Result<()> {
        let max = svc.store.max_stream_ordering().await?;
        let receipts = svc.store.max_receipts_stream().await?;
        let engine = &svc.sync_engine;
        engine.receipts_floor.store(receipts, Ordering::Release);
        engine.receipts.fetch_max(receipts, Ordering::AcqRel);
        engine.floor.store(max, Ordering::Release);
        engine.events.fetch_max(max, Ordering::AcqRel);
        engine.started.store(true, Ordering::Release);
        Ok(())
    }

    /// The events stream position whose rooms are all known here.
    pub fn events_position(&self) -> i64 {
        self.events.load(Ordering::Acquire)
    }

    /// Records appended timeline events, `(event, position, state group after it)`, in the
    /// room table and the recent-event rings, then advances the position. Called in commit
    /// order, before anyone is woken.
    pub fn appended<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a NewEvent, i64, i64)>,
        server_name: &str,
    ) {
        let started = self.started.load(Ordering::Acquire);
        let floor = self.floor.load(Ordering::Acquire);
        let mut newest = 0;
        {
            let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
            for (event, position, state_group) in events {
                newest = newest.max(position);
                if event.state_key.is_some() {
                    self.states
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(Arc::from(event.room_id.as_str()), position);
                }
                if event.membership.is_some() {
                    self.memberships
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(Arc::from(event.room_id.as_str()), position);
                }
                let previous = match rooms.get_mut(event.room_id.as_str()) {
                    Some(latest) => Some(std::mem::replace(latest, (*latest).max(position))),
                    None => {
                        rooms.insert(Arc::from(event.room_id.as_str()), position);
                        started.then_some(floor)
                    }
                };
                let local = crate::util::is_user_of(&event.sender, server_name);
                self.recent
                    .appended(event, position, state_group, previous, local);
            }
        }
        self.events.fetch_max(newest, Ordering::AcqRel);
    }

    /// A new room's first events, stored together: only the last one's position is known, so
    /// the room's ring starts after it.
    pub fn room_created(&self, room_id: &str, last: i64) {
        self.rooms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(Arc::from(room_id), last);
        self.memberships
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(Arc::from(room_id), last);
        self.states
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(Arc::from(room_id), last);
        self.events.fetch_max(last, Ordering::AcqRel);
    }

    /// Whether the room has a timeline event in `(after, upto]`, when this memory can tell:
    /// `None` sends the question to the database.
    pub fn moved(&self, room_id: &str, after: i64, upto: i64) -> Option<bool> {
        if upto > self.events_position() || !self.started.load(Ordering::Acquire) {
            return None;
        }
        match self.rooms.read().unwrap_or_else(|e| e.into_inner()).get(room_id) {
            // Its latest may lie beyond `upto`: then the scan tells (an empty timeline).
            Some(latest) => Some(*latest > after),
            None if self.floor.load(Ordering::Acquire) <= after => Some(false),
            // A token from before start-up, for a room quiet since.
            None => None,
        }
    }

    /// A room's events in `(from, to]` from its recent-event ring, when the ring holds all of
    /// them (see `recent.rs`); `None` sends the read to the database.
    pub fn recent_events(
        &self,
        room_id: &str,
        (from, to): (i64, i64),
        limit: usize,
        direction: Direction,
    ) -> Option<Vec<Arc<EventRow>>> {
        if to > self.events_position() {
            return None;
        }
        let rows = self.recent.room_events(room_id, (from, to), limit, direction)?;
        super::stats::bump(&self.stats.ring_hits);
        Some(rows)
    }

    /// An event formatted for `viewer` as a room's section holds it (without `room_id`): the
    /// shared formatted copy when the event is in a ring (formatted there once, for everyone),
    /// else afresh.
    pub fn format(
        &self,
        row: &EventRow,
        rules: &RoomVersionRules,
        related: &Related,
        viewer: Viewer<'_>,
    ) -> Result<SyncEvent> {
        let cached = (row.redacted_by.is_none() && row.replaces_state.is_none())
            .then(|| self.recent.get(row))
            .flatten();
        let Some(cached) = cached else {
            super::stats::bump(&self.stats.format_misses);
            return own(format_event(row, rules, related, Some(viewer))?);
        };
        // Formatted inside `get_or_init`: receivers woken together wait for the first one's
        // formatting (microseconds) instead of each formatting the event.
        let mut failed = None;
        let mut formatted_here = false;
        let shared = cached.formatted.get_or_init(|| {
            formatted_here = true;
            match format_event(&cached.row, rules, &Related::default(), None) {
                Ok(formatted) => SharedEvent::new(formatted).map(Arc::new),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let Some(shared) = shared else {
            // Another receiver's formatting failed: this one gets the error afresh.
            return own(format_event(row, rules, related, Some(viewer))?);
        };
        let counter = if formatted_here {
            &self.stats.format_misses
        } else {
            &self.stats.format_hits
        };
        super::stats::bump(counter);
        Ok(SyncEvent::Shared {
            event: shared.clone(),
            age: age(row),
            transaction_id: transaction_id_for(row, viewer).map(ToOwned::to_owned),
        })
    }

    /// Held while a receipt is written and recorded, so that receipts are recorded here in
    /// commit order (their stream lock orders the commits; this, what follows).
    pub async fn receipts_write(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.receipts_write.lock().await
    }

    /// A receipt stored at `position` (under `receipts_write`).
    pub fn receipt_stored(&self, room_id: &str, position: i64) {
        self.room_receipts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(Arc::from(room_id))
            .and_modify(|p| *p = (*p).max(position))
            .or_insert(position);
        self.receipts.fetch_max(position, Ordering::AcqRel);
    }

    /// The receipts stream position whose rooms are all known here (once started).
    pub fn receipts_position(&self) -> Option<i64> {
        self.started
            .load(Ordering::Acquire)
            .then(|| self.receipts.load(Ordering::Acquire))
    }

    /// Whether the room has a receipt in `(after, upto]`, when this memory can tell.
    pub fn receipts_moved(&self, room_id: &str, after: i64, upto: i64) -> Option<bool> {
        if upto > self.receipts_position()? {
            return None;
        }
        match self
            .room_receipts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(room_id)
        {
            Some(latest) => Some(*latest > after),
            None if self.receipts_floor.load(Ordering::Acquire) <= after => Some(false),
            None => None,
        }
    }

    /// Whether the room's membership may have changed after `after`, up to everything appended:
    /// `false` only when this memory knows it did not (a membership change moves device lists,
    /// which only a full computation reads).
    pub fn membership_may_have_moved(&self, room_id: &str, after: i64) -> bool {
        self.may_have_moved(&self.memberships, room_id, after)
    }

    /// Whether the room's state may have changed after `after`: `false` only when this memory
    /// knows it did not (then a viewer's `RoomAccess` read at `after` still holds).
    pub fn state_may_have_moved(&self, room_id: &str, after: i64) -> bool {
        self.may_have_moved(&self.states, room_id, after)
    }

    /// Whether a per-room position table may hold a position past `after` for the room: it
    /// knows only what was appended since start-up.
    fn may_have_moved(&self, table: &RwLock<HashMap<Arc<str>, i64>>, room_id: &str, after: i64) -> bool {
        if !self.started.load(Ordering::Acquire) || after < self.floor.load(Ordering::Acquire) {
            return true;
        }
        table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(room_id)
            .is_some_and(|latest| *latest > after)
    }

    /// Events stored for a room outside the timeline's append path (outliers from federation,
    /// an adopted remote room's state): what was read of its state before now may be stale.
    pub fn room_state_touched(&self, room_id: &str) {
        let past_now = self.events_position() + 1;
        self.states
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(Arc::from(room_id))
            .and_modify(|p| *p = (*p).max(past_now))
            .or_insert(past_now);
    }

    pub fn room_version(&self, room_id: &str) -> Option<Arc<str>> {
        self.versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(room_id)
            .cloned()
    }

    pub fn remember_version(&self, room_id: &str, version: &str) {
        self.versions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(Arc::from(room_id))
            .or_insert_with(|| Arc::from(version));
    }
}

/// An event formatted for one receiver, as a room's section holds it (without `room_id`).
fn own(mut event: Value) -> Result<SyncEvent> {
    if let Some(object) = event.as_object_mut() {
        object.remove("room_id");
    }
    Ok(SyncEvent::Own(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(floor: i64) -> SyncEngine {
        let engine = SyncEngine::default();
        engine.floor.store(floor, Ordering::Release);
        engine.events.store(floor, Ordering::Release);
        engine.started.store(true, Ordering::Release);
        engine
    }

    #[test]
    fn rooms_without_appends_are_quiet_after_the_floor_only() {
        let engine = started(10);
        assert_eq!(engine.moved("!a:hs", 10, 10), Some(false));
        // A token from before start-up: the database must tell.
        assert_eq!(engine.moved("!a:hs", 9, 10), None);
        // A position beyond what was seen: unknown.
        assert_eq!(engine.moved("!a:hs", 10, 11), None);
    }

    #[test]
    fn appended_rooms_move_and_others_stay_quiet() {
        let engine = started(10);
        let event = |id: &str| NewEvent::test_message("!a:hs", id);
        let (one, two) = (event("$1"), event("$2"));
        engine.appended([(&one, 11, 1), (&two, 12, 1)], "hs");
        assert_eq!(engine.events_position(), 12);
        assert_eq!(engine.moved("!a:hs", 11, 12), Some(true));
        assert_eq!(engine.moved("!a:hs", 12, 12), Some(false));
        assert_eq!(engine.moved("!a:hs", 5, 12), Some(true));
        assert_eq!(engine.moved("!b:hs", 10, 12), Some(false));
        // The ring covers the room since the floor (nothing of it came in between).
        assert!(
            engine
                .recent
                .room_events("!a:hs", (10, 12), 5, crate::store::Direction::Forwards)
                .is_some()
        );
    }

    #[test]
    fn receipts_are_known_per_room() {
        let engine = started(10);
        engine.receipts_floor.store(3, Ordering::Release);
        engine.receipts.store(3, Ordering::Release);
        engine.receipt_stored("!a:hs", 4);
        assert_eq!(engine.receipts_position(), Some(4));
        assert_eq!(engine.receipts_moved("!a:hs", 3, 4), Some(true));
        assert_eq!(engine.receipts_moved("!a:hs", 4, 4), Some(false));
        assert_eq!(engine.receipts_moved("!b:hs", 3, 4), Some(false));
        assert_eq!(engine.receipts_moved("!b:hs", 2, 4), None);
        assert_eq!(engine.receipts_moved("!b:hs", 4, 5), None);
    }

    #[test]
    fn an_unstarted_engine_knows_nothing() {
        let engine = SyncEngine::default();
        assert_eq!(engine.moved("!a:hs", 0, 0), None);
    }
}
