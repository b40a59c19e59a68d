//! Pruning stored push outcomes older than the retention (migration 0034; the schedule is
//! `push::retention`).
//!
//! An outcome is what `/notifications` lists and what unread counts count. Pruned, it leaves
//! `/notifications`; what each member of its audience had not read is first added to their count
//! summary, which the count queries add while the member has not read further, so unread counts
//! do not change when outcomes go. An audience whose last outcome went is deleted too.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::OnceLock,
};

use sqlx::Row;

use super::{Store, StoreResult, Stream, q};

/// (user, room, thread: '' for the main timeline) of a count summary.
type SummaryKey = (String, String, String);

/// What a prune adds to one summary: the member's read position, notifications, highlights.
#[derive(Default)]
struct Summed {
    read_upto: i64,
    notifications: i64,
    highlights: i64,
}

/// Summaries written per statement: chunks of the first length that fits, largest first (at
/// most 7 single rows after the larger chunks).
const SUMMARY_CHUNKS: [usize; 3] = [64, 8, 1];

/// Each chunk length's statement, made once (and so prepared once per connection).
static UPSERT_SUMMARIES: [OnceLock<String>; SUMMARY_CHUNKS.len()] =
    [const { OnceLock::new() }; SUMMARY_CHUNKS.len()];

/// Adds `len` summaries (`$1..$6len`, six per row: user, room, thread, read position,
/// notifications, highlights). A summary made at another read position is replaced: that
/// receipt read it all. Every key appears once in a statement (PostgreSQL refuses to update a
/// row twice in one).
fn upsert_summaries_sql(len: usize) -> String {
    let rows: Vec<String> = (0..len)
        .map(|i| {
            let p: Vec<String> = (1..=6).map(|c| format!("${}", 6 * i + c)).collect();
            format!("({})", p.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO push_count_summaries \
         (user_id, room_id, thread_id, read_upto, notifications, highlights) VALUES {} \
         ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET \
         notifications = CASE WHEN push_count_summaries.read_upto = excluded.read_upto \
           THEN push_count_summaries.notifications + excluded.notifications \
           ELSE excluded.notifications END, \
         highlights = CASE WHEN push_count_summaries.read_upto = excluded.read_upto \
           THEN push_count_summaries.highlights + excluded.highlights \
           ELSE excluded.highlights END, \
         read_upto = excluded.read_upto",
        rows.join(", ")
    )
}

impl Store {
    /// Records where the event stream is at `now_ms`.
    pub async fn mark_push_prune(&self, now_ms: i64) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        q("INSERT INTO push_prune_marks (marked_ts, stream_ordering) \
           SELECT CAST($1 AS BIGINT), COALESCE(MAX(stream_ordering), 0) FROM events WHERE true \
           ON CONFLICT (marked_ts) DO NOTHING")
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The newest stream position known to have been reached by `cutoff_ms` (the newest mark
    /// not after it; `None` when every mark is newer). Older marks are forgotten: a later
    /// cutoff never needs them.
    pub async fn push_prune_bound(&self, cutoff_ms: i64) -> StoreResult<Option<i64>> {
        let mut tx = self.begin_write().await?;
        let mark = q(
            "SELECT marked_ts, stream_ordering FROM push_prune_marks WHERE marked_ts <= $1 \
                      ORDER BY marked_ts DESC LIMIT 1",
        )
        .bind(cutoff_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mark) = mark else {
            return Ok(None);
        };
        let (marked_ts, position): (i64, i64) = (mark.get(0), mark.get(1));
        q("DELETE FROM push_prune_marks WHERE marked_ts < $1")
            .bind(marked_ts)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(position))
    }

    /// Prunes the oldest outcomes at or below stream position `upto`: about `limit` rows (whole
    /// positions), in one transaction. Returns how many went; 0 when none is left.
    pub async fn prune_push_outcomes(&self, upto: i64, limit: i64) -> StoreResult<u64> {
        // The timeline's lock: no batch can check an audience this deletes (known_audiences)
        // and write outcomes naming it afterwards.
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        let bound = q(
            "SELECT stream_ordering FROM event_push_outcomes WHERE stream_ordering <= $1 \
                       ORDER BY stream_ordering LIMIT 1 OFFSET $2",
        )
        .bind(upto)
        .bind(limit.max(1) - 1)
        .fetch_optional(&mut *tx)
        .await?
        .map_or(upto, |r| r.get::<i64, _>(0));
        let outcomes = q(
            "SELECT stream_ordering, audience_id, room_id, notify, highlight, thread_id \
                          FROM event_push_outcomes WHERE stream_ordering <= $1",
        )
        .bind(bound)
        .fetch_all(&mut *tx)
        .await?;
        if outcomes.is_empty() {
            return Ok(0);
        }

        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        let mut reads: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for row in &outcomes {
            let (audience_id, room_id): (String, String) = (row.get(1), row.get(2));
            if let Entry::Vacant(slot) = members.entry(audience_id) {
                let rows = q("SELECT user_id FROM push_audience_members WHERE audience_id = $1")
                    .bind(slot.key().clone())
                    .fetch_all(&mut *tx)
                    .await?;
                slot.insert(rows.iter().map(|r| r.get(0)).collect());
            }
            if let Entry::Vacant(slot) = reads.entry(room_id) {
                // As the count queries read it: the newest unthreaded m.read or m.read.private.
                let rows = q("SELECT r.user_id, MAX(e.stream_ordering) FROM receipts r \
                              JOIN events e ON e.event_id = r.event_id \
                              WHERE r.room_id = $1 AND r.thread_id = '' \
                              AND r.receipt_type IN ('m.read', 'm.read.private') GROUP BY r.user_id")
                .bind(slot.key().clone())
                .fetch_all(&mut *tx)
                .await?;
                slot.insert(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
            }
        }

        // What each member had not read of the pruned outcomes.
        let mut summed: HashMap<SummaryKey, Summed> = HashMap::new();
        for row in &outcomes {
            let (stream_ordering, audience_id, room_id): (i64, String, String) =
                (row.get(0), row.get(1), row.get(2));
            if row.get::<i64, _>(3) != 1 {
                continue;
            }
            let highlight = row.get::<i64, _>(4);
            let thread_id: Option<String> = row.get(5);
            let room_reads = &reads[&room_id];
            for user_id in &members[&audience_id] {
                let read_upto = room_reads.get(user_id).copied().unwrap_or(0);
                if stream_ordering <= read_upto {
                    continue;
                }
                let key = (
                    user_id.clone(),
                    room_id.clone(),
                    thread_id.clone().unwrap_or_default(),
                );
                let entry = summed.entry(key).or_default();
                entry.read_upto = read_upto;
                entry.notifications += 1;
                entry.highlights += highlight;
            }
        }
        // A few statements however large the audiences: a 10,000-member room adds up to 10,000
        // summaries in a step, written while appends wait for the lock.
        let mut rest: Vec<(SummaryKey, Summed)> = summed.into_iter().collect();
        while !rest.is_empty() {
            // The last length is 1: some length always fits.
            let i = SUMMARY_CHUNKS
                .iter()
                .position(|&n| n <= rest.len())
                .unwrap_or(SUMMARY_CHUNKS.len() - 1);
            let len = SUMMARY_CHUNKS[i];
            let sql = UPSERT_SUMMARIES[i].get_or_init(|| upsert_summaries_sql(len));
            let mut query = q(sql.as_str());
            for ((user_id, room_id, thread_id), s) in rest.drain(rest.len() - len..) {
                query = query
                    .bind(user_id)
                    .bind(room_id)
                    .bind(thread_id)
                    .bind(s.read_upto)
                    .bind(s.notifications)
                    .bind(s.highlights);
            }
            query.execute(&mut *tx).await?;
        }

        let pruned = q("DELETE FROM event_push_outcomes WHERE stream_ordering <= $1")
            .bind(bound)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let mut gone = Vec::new();
        for audience_id in members.into_keys() {
            let deleted = q(
                "DELETE FROM push_audience_members WHERE audience_id = $1 AND NOT EXISTS \
                             (SELECT 1 FROM event_push_outcomes o \
                              WHERE o.audience_id = push_audience_members.audience_id)",
            )
            .bind(audience_id.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if deleted > 0 {
                gone.push(audience_id);
            }
        }
        // Forgotten before the commit, under the lock: the next batch writes their members again.
        self.known_audiences.forget(&gone);
        tx.commit().await?;
        Ok(pruned)
    }
}
