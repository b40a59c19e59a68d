//! Unread notification counts per (user, room), kept in memory so that a woken `/sync` step
//! does not ask the database for them.
//!
//! The database stays the source of truth (stored push outcomes after the user's read receipt);
//! this is a cache of its answers, kept exact:
//! - an entry is filled from the database, counting only events up to `applied`, the last
//!   position whose push outcomes this cache has seen committed (`PushListener::committed` runs
//!   before `/sync` is woken, and appends commit in stream order under the timeline's lock);
//! - every later committed outcome is added to the entries it concerns;
//! - a read receipt (or any other change to what was counted) drops the user's entry;
//! - a fill that raced a commit or a drop is answered but not kept.
//!
//! So an answer always counts at least every event a `/sync` computed before it can show.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use super::Counts;
use crate::{error::Result, services::Services, store::PushActionRow, util::FastMap};

/// Entries kept before the cache is emptied (a crude bound: ~100 bytes each).
const MAX_ENTRIES: usize = 200_000;

#[derive(Default)]
pub struct UnreadCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Counts per user, then per room.
    entries: FastMap<String, FastMap<String, Counts>>,
    len: usize,
    /// The last stream position whose push outcomes were applied; `None` until the first
    /// commit after start-up (before it, what the database holds is all there is).
    applied: Option<i64>,
    /// Bumped by every drop: a fill that saw it move keeps nothing.
    drops: u64,
}

impl UnreadCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch's outcomes are committed; `rows` carry their events' stream positions and the
    /// batch ends at `last`.
    pub fn committed<'a>(&self, rows: impl IntoIterator<Item = &'a PushActionRow>, last: i64) {
        let mut inner = self.lock();
        let applied = inner.applied;
        for row in rows {
            if applied.is_some_and(|a| row.stream_ordering <= a) {
                continue;
            }
            let Some(counts) = inner
                .entries
                .get_mut(&row.user_id)
                .and_then(|rooms| rooms.get_mut(&row.room_id))
            else {
                continue;
            };
            let highlight = u64::from(row.highlight);
            match &row.thread_id {
                None => {
                    counts.notification_count += 1;
                    counts.highlight_count += highlight;
                }
                Some(thread) => {
                    let entry = counts.per_thread.entry(thread.clone()).or_default();
                    entry.0 += 1;
                    entry.1 += highlight;
                }
            }
        }
        inner.applied = Some(applied.map_or(last, |a| a.max(last)));
    }

    /// What was counted for `user_id` in `room_id` changed otherwise (a read receipt, outcomes
    /// written outside the timeline's batches).
    pub fn drop_entry(&self, user_id: &str, room_id: &str) {
        let mut inner = self.lock();
        inner.drops += 1;
        let removed = inner
            .entries
            .get_mut(user_id)
            .and_then(|rooms| rooms.remove(room_id))
            .is_some();
        if removed {
            inner.len -= 1;
        }
    }

    /// The counts of `user_id` in each of `room_ids` (rooms without unread notifications are
    /// left out): from memory, the others in one query.
    pub async fn counts_in_rooms(
        &self,
        svc: &Services,
        user_id: &str,
        room_ids: &[String],
    ) -> Result<HashMap<String, Counts>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        let (applied, drops) = {
            let inner = self.lock();
            let known = inner.entries.get(user_id);
            for room_id in room_ids {
                match known.and_then(|rooms| rooms.get(room_id)) {
                    Some(counts) => {
                        if *counts != Counts::default() {
                            out.insert(room_id.clone(), counts.clone());
                        }
                    }
                    None => missing.push(room_id.clone()),
                }
            }
            (inner.applied, inner.drops)
        };
        if missing.is_empty() {
            return Ok(out);
        }
        let mut rows = svc
            .store
            .unread_counts_in_rooms(user_id, &missing, applied.unwrap_or(i64::MAX))
            .await?;
        let mut inner = self.lock();
        // Kept only when nothing was committed or dropped while the database was read, and the
        // count was bounded by a known position.
        let keep = applied.is_some() && inner.applied == applied && inner.drops == drops;
        if keep && inner.len + missing.len() > MAX_ENTRIES {
            inner.entries.clear();
            inner.len = 0;
        }
        for room_id in missing {
            let counts = Counts::from_rows(rows.remove(&room_id).unwrap_or_default());
            if keep {
                let previous = inner
                    .entries
                    .entry(user_id.to_owned())
                    .or_default()
                    .insert(room_id.clone(), counts.clone());
                if previous.is_none() {
                    inner.len += 1;
                }
            }
            if counts != Counts::default() {
                out.insert(room_id, counts);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, room: &str, at: i64, highlight: bool, thread: Option<&str>) -> PushActionRow {
        PushActionRow {
            event_id: format!("$e{at}"),
            room_id: room.to_owned(),
            user_id: user.to_owned(),
            stream_ordering: at,
            highlight,
            thread_id: thread.map(ToOwned::to_owned),
            actions: "[\"notify\"]".to_owned(),
        }
    }

    fn seed(cache: &UnreadCache, user: &str, room: &str, counts: Counts) {
        let mut inner = cache.lock();
        inner
            .entries
            .entry(user.into())
            .or_default()
            .insert(room.into(), counts);
        inner.len += 1;
    }

    fn get(cache: &UnreadCache, user: &str, room: &str) -> Option<Counts> {
        cache.lock().entries.get(user)?.get(room).cloned()
    }

    #[test]
    fn committed_outcomes_are_added_to_the_entries_they_concern() {
        let cache = UnreadCache::default();
        cache.committed([], 10);
        seed(&cache, "@a:x", "!r:x", Counts::default());
        cache.committed(
            [
                &row("@a:x", "!r:x", 11, false, None),
                &row("@a:x", "!r:x", 12, true, None),
                &row("@a:x", "!r:x", 13, false, Some("$root")),
                &row("@b:x", "!r:x", 13, false, None),
                &row("@a:x", "!other:x", 13, false, None),
            ],
            13,
        );
        let counts = get(&cache, "@a:x", "!r:x").unwrap();
        assert_eq!((counts.notification_count, counts.highlight_count), (2, 1));
        assert_eq!(counts.per_thread["$root"], (1, 0));
        assert!(
            get(&cache, "@b:x", "!r:x").is_none(),
            "no entry is made by a commit"
        );
        // A position already applied is never counted twice.
        cache.committed([&row("@a:x", "!r:x", 12, false, None)], 12);
        assert_eq!(get(&cache, "@a:x", "!r:x").unwrap().notification_count, 2);
        assert_eq!(cache.lock().applied, Some(13));
    }

    #[test]
    fn a_drop_removes_only_that_entry_and_is_counted() {
        let cache = UnreadCache::default();
        seed(&cache, "@a:x", "!r:x", Counts::default());
        seed(&cache, "@a:x", "!s:x", Counts::default());
        cache.drop_entry("@a:x", "!r:x");
        assert!(get(&cache, "@a:x", "!r:x").is_none());
        assert!(get(&cache, "@a:x", "!s:x").is_some());
        let inner = cache.lock();
        assert_eq!((inner.len, inner.drops), (1, 1));
    }
}
