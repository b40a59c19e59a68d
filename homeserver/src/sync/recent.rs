//! The shared cache of recent events: per room, a ring of its last [`RING_SIZE`] timeline
//! events, filled by the append path (no read), each formatted for clients at most once (the
//! parts that are the same for everyone) however many syncs deliver it.
//!
//! What it must never do is show anyone more than the database would:
//! - a ring answers a range `(from, to]` only when it holds every event of the room there
//!   (`after <= from`, and every appended event goes into the ring or empties it), and the rows
//!   it answers with go through the same visibility check (`RoomAccess::can_see` in
//!   `rooms::history::scan`) as rows read from the database;
//! - only events whose formatting cannot change later are kept: local, non-state, not
//!   redactions. A redaction (which changes how its target is formatted) empties its room's
//!   ring; state events (`prev_content`) and remote events (a redaction can precede its target
//!   over federation) empty it too, and are read from the database;
//! - per-receiver fields (`unsigned.age`, `unsigned.transaction_id`, bundled aggregations) are
//!   added to a copy for each receiver.
//!
//! Anything it does not hold is read from the database: nothing depends on it being warm.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::store::{Direction, EventRow, NewEvent};

/// Events kept per room.
pub const RING_SIZE: usize = 64;
/// Rooms with a ring; beyond, the ring of the room quiet longest goes.
const MAX_RINGS: usize = 10_000;

pub struct CachedEvent {
    /// Shared with every scan that reads it: a woken receiver takes a reference, not a copy
    /// of the event's JSON and IDs.
    pub row: Arc<EventRow>,
    /// The event as every client sees it, before per-receiver fields; formatted on first use
    /// (None: formatting failed).
    pub formatted: OnceLock<Option<Arc<super::response::SharedEvent>>>,
    /// Whether an event relating to this one was appended. A ring holds local events appended
    /// since start-up, and an event's children can only be created after it (they name its ID, a
    /// hash of it), so they were all appended since start-up too: one without children needs no
    /// bundled-aggregation query.
    has_children: AtomicBool,
}

struct Ring {
    /// Every timeline event of the room after this position is in `events` (oldest first).
    after: i64,
    events: VecDeque<Arc<CachedEvent>>,
    newest: i64,
}

#[derive(Default)]
pub struct RecentEvents {
    rings: RwLock<HashMap<Arc<str>, Ring>>,
}

impl RecentEvents {
    /// An appended event at `position`, in commit order; `previous` is the room's latest
    /// position before it, when known (it lets a new ring cover the gap since).
    pub fn appended(
        &self,
        event: &NewEvent,
        position: i64,
        state_group: i64,
        previous: Option<i64>,
        local: bool,
    ) {
        let mut rings = self.rings.write().unwrap_or_else(|e| e.into_inner());
        let cacheable = local && event.state_key.is_none() && event.event_type != "m.room.redaction";
        if !cacheable {
            // From here on the ring starts afresh: what came before is read from the database.
            if let Some(ring) = rings.get_mut(event.room_id.as_str()) {
                ring.events.clear();
                ring.after = position;
                ring.newest = position;
            }
            return;
        }
        if !rings.contains_key(event.room_id.as_str()) {
            if rings.len() >= MAX_RINGS {
                evict_quietest(&mut rings);
            }
            rings.insert(
                Arc::from(event.room_id.as_str()),
                Ring {
                    after: previous.unwrap_or(position - 1),
                    events: VecDeque::new(),
                    newest: 0,
                },
            );
        }
        let ring = rings.get_mut(event.room_id.as_str()).expect("inserted above");
        if let Some(parent) = &event.relates_to {
            for cached in ring.events.iter().filter(|e| &e.row.event_id == parent) {
                cached.has_children.store(true, Ordering::Release);
            }
        }
        ring.events.push_back(Arc::new(CachedEvent {
            row: Arc::new(row_of(event, position, state_group)),
            formatted: OnceLock::new(),
            has_children: AtomicBool::new(false),
        }));
        ring.newest = position;
        while ring.events.len() > RING_SIZE {
            if let Some(gone) = ring.events.pop_front() {
                ring.after = gone.row.stream_ordering;
            }
        }
    }

    /// Up to `limit` events of the room with `from < position <= to`, as
    /// `Store::room_events` would read them, if the ring holds all of that range — or, read
    /// backwards, at least `limit` of its newest events (a client that fell behind the ring
    /// with a small timeline limit). `to` must be a position the sync engine has seen
    /// (`SyncEngine::events_position`).
    pub fn room_events(
        &self,
        room_id: &str,
        (from, to): (i64, i64),
        limit: usize,
        direction: Direction,
    ) -> Option<Vec<Arc<EventRow>>> {
        let rings = self.rings.read().unwrap_or_else(|e| e.into_inner());
        let ring = rings.get(room_id)?;
        let whole = from >= ring.after;
        if !whole && direction == Direction::Forwards {
            return None;
        }
        let in_range = |e: &&Arc<CachedEvent>| e.row.stream_ordering > from && e.row.stream_ordering <= to;
        let rows = match direction {
            Direction::Forwards => ring
                .events
                .iter()
                .filter(in_range)
                .take(limit)
                .map(|e| e.row.clone())
                .collect(),
            Direction::Backwards => ring
                .events
                .iter()
                .rev()
                .filter(in_range)
                .take(limit)
                .map(|e| e.row.clone())
                .collect::<Vec<_>>(),
        };
        // Part of the range lies before the ring: only a full page of its newest is an answer
        // (fewer would claim the range exhausted).
        (whole || rows.len() == limit).then_some(rows)
    }

    /// The cached entry of an event, to format it once for every receiver. A row read from
    /// the ring is the ring's own (the common case: no IDs compared).
    pub fn get(&self, row: &EventRow) -> Option<Arc<CachedEvent>> {
        let rings = self.rings.read().unwrap_or_else(|e| e.into_inner());
        let ring = rings.get(row.room_id.as_str())?;
        let index = ring
            .events
            .binary_search_by_key(&row.stream_ordering, |e| e.row.stream_ordering)
            .ok()?;
        let cached = &ring.events[index];
        (std::ptr::eq(&*cached.row, row) || cached.row.event_id == row.event_id).then(|| cached.clone())
    }
}

impl CachedEvent {
    /// No event relating to this one exists (see `has_children`).
    pub fn childless(&self) -> bool {
        !self.has_children.load(Ordering::Acquire)
    }
}

fn evict_quietest(rings: &mut HashMap<Arc<str>, Ring>) {
    if let Some(quietest) = rings
        .iter()
        .min_by_key(|(_, ring)| ring.newest)
        .map(|(room, _)| room.clone())
    {
        rings.remove(&quietest);
    }
}

/// The row the store would read back for a just-appended local, non-state event: nothing
/// redacts it yet and it replaces no state.
fn row_of(event: &NewEvent, position: i64, state_group: i64) -> EventRow {
    EventRow {
        stream_ordering: position,
        event_id: event.event_id.clone(),
        room_id: event.room_id.clone(),
        event_type: event.event_type.clone(),
        state_key: None,
        sender: event.sender.clone(),
        origin_server_ts: event.origin_server_ts,
        depth: event.depth,
        state_group,
        replaces_state: None,
        txn_device_id: event.txn.as_ref().map(|t| t.device_id.clone()),
        txn_id: event.txn.as_ref().map(|t| t.txn_id.clone()),
        redacted_by: None,
        rel_type: event.rel_type.clone(),
        relates_to: event.relates_to.clone(),
        json: event.json.clone(),
        // Only local events enter the rings, and they are never soft-failed nor late.
        soft_failed: false,
        topo: event.topo,
        late: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(room: &str, id: &str) -> NewEvent {
        NewEvent::test_message(room, id)
    }

    fn ids(rows: Option<Vec<Arc<EventRow>>>) -> Option<Vec<String>> {
        rows.map(|rows| rows.iter().map(|r| r.event_id.clone()).collect())
    }

    #[test]
    fn a_ring_answers_only_ranges_it_holds_entirely() {
        let recent = RecentEvents::default();
        recent.appended(&message("!r:hs", "$1"), 11, 1, Some(5), true);
        recent.appended(&message("!r:hs", "$2"), 12, 1, Some(11), true);
        assert_eq!(
            ids(recent.room_events("!r:hs", (5, 12), 10, Direction::Forwards)),
            Some(vec!["$1".into(), "$2".into()])
        );
        assert_eq!(
            ids(recent.room_events("!r:hs", (5, 12), 1, Direction::Backwards)),
            Some(vec!["$2".into()])
        );
        // Before the ring's start: the database's to answer.
        assert_eq!(
            ids(recent.room_events("!r:hs", (4, 12), 10, Direction::Forwards)),
            None
        );
        // Backwards from before the ring: a full page of the newest is an answer, less is not.
        assert_eq!(
            ids(recent.room_events("!r:hs", (4, 12), 1, Direction::Backwards)),
            Some(vec!["$2".into()])
        );
        assert_eq!(
            ids(recent.room_events("!r:hs", (4, 12), 2, Direction::Backwards)),
            Some(vec!["$2".into(), "$1".into()])
        );
        assert_eq!(
            ids(recent.room_events("!r:hs", (4, 12), 3, Direction::Backwards)),
            None
        );
        assert_eq!(
            ids(recent.room_events("!other:hs", (5, 12), 10, Direction::Forwards)),
            None
        );
    }

    #[test]
    fn a_redaction_or_a_remote_event_empties_the_ring() {
        let recent = RecentEvents::default();
        recent.appended(&message("!r:hs", "$1"), 11, 1, Some(5), true);
        let mut redaction = message("!r:hs", "$x");
        redaction.event_type = "m.room.redaction".into();
        redaction.redacts = Some("$1".into());
        recent.appended(&redaction, 12, 1, Some(11), true);
        assert!(recent.get(&row("!r:hs", "$1", 11)).is_none());
        assert_eq!(
            ids(recent.room_events("!r:hs", (5, 12), 10, Direction::Forwards)),
            None
        );
        assert_eq!(
            ids(recent.room_events("!r:hs", (12, 12), 10, Direction::Forwards)),
            Some(vec![])
        );
        recent.appended(&message("!r:hs", "$3"), 13, 1, Some(12), true);
        recent.appended(&message("!r:hs", "$4"), 14, 1, Some(13), false);
        assert_eq!(
            ids(recent.room_events("!r:hs", (12, 14), 10, Direction::Forwards)),
            None
        );
    }

    /// A row as the database would read it back: equal to the ring's, not the ring's own.
    fn row(room_id: &str, event_id: &str, position: i64) -> EventRow {
        row_of(&message(room_id, event_id), position, 1)
    }

    #[test]
    fn a_cached_event_is_found_by_its_ring_row_or_an_equal_one_only() {
        let recent = RecentEvents::default();
        recent.appended(&message("!r:hs", "$1"), 11, 1, Some(5), true);
        let from_ring = recent
            .room_events("!r:hs", (5, 11), 10, Direction::Forwards)
            .expect("the ring holds the range");
        assert!(recent.get(&from_ring[0]).is_some());
        assert!(recent.get(&row("!r:hs", "$1", 11)).is_some());
        // Same place, another event (a row from before a restart): not this entry.
        assert!(recent.get(&row("!r:hs", "$other", 11)).is_none());
        assert!(recent.get(&row("!other:hs", "$1", 11)).is_none());
    }

    #[test]
    fn a_full_ring_forgets_its_oldest() {
        let recent = RecentEvents::default();
        for i in 0..(RING_SIZE as i64 + 3) {
            recent.appended(
                &message("!r:hs", &format!("${i}")),
                100 + i,
                1,
                Some(99 + i),
                true,
            );
        }
        assert!(recent.get(&row("!r:hs", "$0", 100)).is_none());
        assert!(recent.get(&row("!r:hs", "$3", 103)).is_some());
        assert_eq!(
            ids(recent.room_events("!r:hs", (99, 200), 1, Direction::Forwards)),
            None
        );
        assert_eq!(
            ids(recent.room_events("!r:hs", (102, 200), 1, Direction::Forwards)),
            Some(vec!["$3".into()])
        );
    }
}
