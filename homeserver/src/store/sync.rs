//! Reads that `/sync` makes for many rooms at once. One statement per kind of data for all the
//! rooms of a sync, instead of one per room: on PostgreSQL every statement is a round trip.

use std::collections::HashMap;

use sqlx::Row;

use super::{ReceiptRow, StateMap, Store, StoreResult, ThreadCounts, qs};

/// Rooms per statement: keeps the parameter count well inside SQLite's limit.
const CHUNK: usize = 400;

/// `$from, $from+1, …` for `n` parameters.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A room as `/sync` needs it first: its version, and its newest event at or before a stream
/// position (`None` when it has none), which tells whether anything happened since a token.
#[derive(Debug, Clone)]
pub struct SyncRoom {
    pub room_version: String,
    pub latest: Option<i64>,
}

/// The state before a room's first timeline event, for rooms whose history starts with state
/// from elsewhere (a remote join: that event's group is a delta over the joined state). `v.column1`
/// is the room. For a room created here it is NULL (the create event's group is a snapshot).
pub(super) const FIRST_PREV_GROUP: &str = "SELECT g.prev_group FROM events f JOIN state_groups g \
     ON g.id = f.state_group WHERE f.room_id = v.column1 AND f.outlier = 0 ORDER BY f.stream_ordering LIMIT 1";

impl Store {
    /// Version and newest event up to `upto` of each room (rooms that do not exist are absent).
    pub async fn sync_rooms(&self, room_ids: &[String], upto: i64) -> StoreResult<HashMap<String, SyncRoom>> {
        let mut out = HashMap::with_capacity(room_ids.len());
        for chunk in room_ids.chunks(CHUNK) {
            // A correlated MAX per room is one index probe each (events_by_room).
            let sql = format!(
                "SELECT r.room_id, r.room_version, (SELECT MAX(e.stream_ordering) FROM events e \
                 WHERE e.room_id = r.room_id AND e.stream_ordering <= $1 AND e.outlier = 0) FROM rooms r WHERE r.room_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query = qs(sql).bind(upto);
            for id in chunk {
                query = query.bind(id.clone());
            }
            for r in query.fetch_all(&self.pool).await? {
                let room = SyncRoom {
                    room_version: r.get(1),
                    latest: r.get(2),
                };
                out.insert(r.get(0), room);
            }
        }
        Ok(out)
    }

    /// For each (room, stream position), the state group in force just before that position
    /// (as `state_group_before`), in the order asked.
    pub async fn state_groups_before(&self, points: &[(String, i64)]) -> StoreResult<Vec<Option<i64>>> {
        let mut out = Vec::with_capacity(points.len());
        for chunk in points.chunks(CHUNK) {
            // VALUES columns are column1, column2 … on both databases; column3 keeps the order.
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                .collect();
            let sql = format!(
                "SELECT v.column3, COALESCE((SELECT e.state_group FROM events e WHERE e.room_id = v.column1 \
                 AND e.stream_ordering < v.column2 AND e.outlier = 0 AND e.late = 0 ORDER BY e.stream_ordering DESC LIMIT 1), \
                 ({FIRST_PREV_GROUP})) FROM (VALUES {}) AS v",
                values.join(", ")
            );
            let mut query = qs(sql);
            for (i, (room_id, stream)) in chunk.iter().enumerate() {
                query = query.bind(room_id.clone()).bind(*stream).bind(i as i64);
            }
            let mut groups = vec![None; chunk.len()];
            for r in query.fetch_all(&self.pool).await? {
                let i: i64 = r.get(0);
                if let Some(slot) = groups.get_mut(i as usize) {
                    *slot = r.get::<Option<i64>, _>(1);
                }
            }
            out.extend(groups);
        }
        Ok(out)
    }

    /// The full state of several state groups (as `state_of_group`), walking all their delta
    /// chains in one recursive query.
    pub async fn state_of_groups(&self, groups: &[i64]) -> StoreResult<HashMap<i64, StateMap>> {
        let mut out: HashMap<i64, StateMap> = groups.iter().map(|g| (*g, StateMap::new())).collect();
        for chunk in groups.chunks(CHUNK) {
            let sql = format!(
                "WITH RECURSIVE chain(root, id, prev, n) AS ( \
                   SELECT id, id, prev_group, 0 FROM state_groups WHERE id IN ({}) \
                   UNION ALL \
                   SELECT c.root, g.id, g.prev_group, c.n + 1 FROM state_groups g JOIN chain c ON g.id = c.prev) \
                 SELECT c.root, e.type, e.state_key, e.event_id FROM chain c \
                 JOIN state_group_entries e ON e.state_group = c.id ORDER BY c.root, c.n DESC",
                placeholders(1, chunk.len())
            );
            let mut query = qs(sql);
            for group in chunk {
                query = query.bind(*group);
            }
            // Oldest group of each chain first, so later deltas overwrite earlier entries.
            for r in query.fetch_all(&self.pool).await? {
                let root: i64 = r.get(0);
                out.entry(root)
                    .or_default()
                    .insert((r.get(1), r.get(2)), r.get(3));
            }
        }
        Ok(out)
    }

    /// Joined and invited members of each room now, each list in membership order (as
    /// `members_with`).
    pub async fn joined_and_invited(
        &self,
        room_ids: &[String],
    ) -> StoreResult<HashMap<String, (Vec<String>, Vec<String>)>> {
        let mut out: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
        for chunk in room_ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT room_id, state_key, membership FROM current_state WHERE room_id IN ({}) \
                 AND type = 'm.room.member' AND membership IN ('join', 'invite') ORDER BY stream_ordering",
                placeholders(1, chunk.len())
            );
            let mut query = qs(sql);
            for id in chunk {
                query = query.bind(id.clone());
            }
            for r in query.fetch_all(&self.pool).await? {
                let entry = out.entry(r.get(0)).or_default();
                let membership: String = r.get(2);
                if membership == "join" {
                    entry.0.push(r.get(1));
                } else {
                    entry.1.push(r.get(1));
                }
            }
        }
        Ok(out)
    }

    /// Receipts that changed in `(after, upto]` in each room, in stream order (as
    /// `receipts_since`).
    pub async fn receipts_in_rooms(
        &self,
        room_ids: &[String],
        after: i64,
        upto: i64,
    ) -> StoreResult<HashMap<String, Vec<ReceiptRow>>> {
        let mut out: HashMap<String, Vec<ReceiptRow>> = HashMap::new();
        for chunk in room_ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts FROM receipts \
                 WHERE room_id IN ({}) AND stream_id > $1 AND stream_id <= $2 ORDER BY stream_id",
                placeholders(3, chunk.len())
            );
            let mut query = qs(sql).bind(after).bind(upto);
            for id in chunk {
                query = query.bind(id.clone());
            }
            for r in query.fetch_all(&self.pool).await? {
                out.entry(r.get(0)).or_default().push(ReceiptRow {
                    user_id: r.get(1),
                    receipt_type: r.get(2),
                    thread_id: r.get(3),
                    event_id: r.get(4),
                    ts: r.get(5),
                });
            }
        }
        Ok(out)
    }

    /// A user's unread notification and highlight counts per room and thread: notifying events
    /// after the event of their newest unthreaded `m.read` or `m.read.private` receipt (as
    /// `receipt_position` + `push_counts` per room), up to position `upto`. Rooms with no counts
    /// are absent. One range scan of the rooms' outcomes from the oldest of their receipts (from
    /// the start when one of them has none), each outcome's audience looked up for the user,
    /// plus the summaries of pruned outcomes (store/push_retention.rs) the receipts leave unread.
    pub async fn unread_counts_in_rooms(
        &self,
        user_id: &str,
        room_ids: &[String],
        upto: i64,
    ) -> StoreResult<HashMap<String, ThreadCounts>> {
        let mut out: HashMap<String, ThreadCounts> = HashMap::new();
        for chunk in room_ids.chunks(CHUNK) {
            let n = chunk.len();
            let sql = format!(
                "WITH reads AS ( \
                   SELECT r.room_id AS room_id, MAX(e.stream_ordering) AS pos FROM receipts r \
                   JOIN events e ON e.event_id = r.event_id \
                   WHERE r.room_id IN ({}) AND r.user_id = $1 AND r.thread_id = '' \
                   AND r.receipt_type IN ('m.read', 'm.read.private') GROUP BY r.room_id) \
                 SELECT a.room_id, a.thread_id, COUNT(*), CAST(COALESCE(SUM(a.highlight), 0) AS BIGINT) \
                 FROM event_push_outcomes a JOIN push_audience_members m \
                 ON m.audience_id = a.audience_id AND m.user_id = $1 \
                 LEFT JOIN reads ON reads.room_id = a.room_id \
                 WHERE a.stream_ordering > (SELECT CASE WHEN COUNT(*) = {n} \
                 THEN MIN(pos) ELSE 0 END FROM reads) AND a.stream_ordering <= $2 \
                 AND a.room_id IN ({}) AND a.notify = 1 \
                 AND a.stream_ordering > COALESCE(reads.pos, 0) \
                 GROUP BY a.room_id, a.thread_id \
                 UNION ALL SELECT s.room_id, NULLIF(s.thread_id, ''), s.notifications, s.highlights \
                 FROM push_count_summaries s LEFT JOIN reads ON reads.room_id = s.room_id \
                 WHERE s.user_id = $1 AND s.room_id IN ({}) AND s.read_upto >= COALESCE(reads.pos, 0)",
                placeholders(3, n),
                placeholders(3 + n, n),
                placeholders(3 + 2 * n, n)
            );
            let mut query = qs(sql).bind(user_id.to_owned()).bind(upto);
            for _ in 0..3 {
                for id in chunk {
                    query = query.bind(id.clone());
                }
            }
            for r in query.fetch_all(&self.pool).await? {
                out.entry(r.get(0))
                    .or_default()
                    .push((r.get(1), r.get(2), r.get(3)));
            }
        }
        Ok(out)
    }
}
