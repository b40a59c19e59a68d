//! Stored push rule outcomes: one row per event and outcome, naming its audience (the members
//! who got that outcome), instead of one row per notified member (migration 0031).
//!
//! A message to a room of N members notified N-1 of them the same way; stored per member, those
//! rows were most of what the timeline's batch wrote (4.5 µs each on SQLite, ~3,000 a batch under
//! the deliver benchmark). Audiences repeat from one message to the next (the same room and
//! sender give the same set), so their members are written once, when the set is first seen;
//! `Store::known_audiences` holds the sets already committed, so a batch does not write them again.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::{Any, Row, Transaction};

use super::{
    Backend, Store, StoreResult, Stream,
    push::{PushActionRow, ThreadCounts},
    q,
};

/// The actions most stored outcomes have, stored as NULL (migration 0030).
pub(super) const PLAIN_NOTIFY: &str = r#"["notify"]"#;

/// Rows per insert statement (a bound on one statement's JSON parameter).
const ROWS_PER_STATEMENT: usize = 5_000;

/// Committed audiences remembered before the set is emptied (each ~70 bytes; forgetting one only
/// costs rewriting its members, which the insert ignores).
const MAX_KNOWN: usize = 100_000;

/// How long this process trusts that an audience it committed is still stored. Any process may
/// delete an audience once every outcome naming it is older than the retention
/// (`push::retention`, at least a day), so what another process remembers must lapse well
/// before: after an hour its members are written again (ignored when they are there).
const KNOWN_FOR: Duration = Duration::from_secs(60 * 60);

/// Whether what was learnt `at` is no longer trusted `now`.
fn lapsed(at: Instant, now: Instant) -> bool {
    now.saturating_duration_since(at) >= KNOWN_FOR
}

/// Audiences this process has seen committed, with when.
#[derive(Debug, Default)]
pub(super) struct KnownAudiences(Mutex<HashMap<String, Instant>>);

impl KnownAudiences {
    fn contains(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|at| !lapsed(*at, Instant::now()))
    }

    fn extend(&self, ids: Vec<String>) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() + ids.len() > MAX_KNOWN {
            known.clear();
        }
        let now = Instant::now();
        known.extend(ids.into_iter().map(|id| (id, now)));
    }

    /// Audiences deleted (`Store::prune_push_outcomes`): a batch naming one again writes its
    /// members again.
    pub(super) fn forget(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            known.remove(id);
        }
    }
}

/// Audiences a transaction wrote; `Store::audiences_committed` records them once it commits
/// (remembered before, a rolled-back set would never be written again).
#[must_use]
pub(super) struct NewAudiences(Vec<String>);

/// An audience's ID: its member's user ID when it has one member, else 32 hex digits of the
/// SHA-256 of the sorted, length-prefixed IDs (a user ID begins with '@': the two never meet).
/// 128 bits: finding two sets with one ID takes ~2^64 hashes.
fn audience_id(sorted_members: &[&str]) -> String {
    if let [one] = sorted_members {
        return (*one).to_owned();
    }
    let mut hasher = Sha256::new();
    for member in sorted_members {
        hasher.update((member.len() as u64).to_le_bytes());
        hasher.update(member.as_bytes());
    }
    let digest = hasher.finalize();
    crate::util::hex(&digest[..16])
}

/// One stored outcome: an event's position, room, highlight, thread and actions (`None` for the
/// plain `["notify"]`), and the members who got it.
#[derive(PartialEq, Eq, Hash)]
struct Outcome<'a> {
    stream_ordering: i64,
    room_id: &'a str,
    highlight: bool,
    thread_id: Option<&'a str>,
    actions: Option<&'a str>,
}

/// Groups per-member rows by outcome; each group's members sorted and unique.
fn group<'a>(rows: &[&'a PushActionRow]) -> Vec<(Outcome<'a>, Vec<&'a str>)> {
    let mut groups: crate::util::FastMap<Outcome<'a>, Vec<&'a str>> = Default::default();
    for row in rows {
        let outcome = Outcome {
            stream_ordering: row.stream_ordering,
            room_id: &row.room_id,
            highlight: row.highlight,
            thread_id: row.thread_id.as_deref(),
            actions: (row.actions != PLAIN_NOTIFY).then_some(row.actions.as_str()),
        };
        groups.entry(outcome).or_default().push(&row.user_id);
    }
    let mut out: Vec<_> = groups
        .into_iter()
        .map(|(outcome, mut members)| {
            members.sort_unstable();
            members.dedup();
            (outcome, members)
        })
        .collect();
    // In key order: each statement appends instead of jumping about the table.
    out.sort_unstable_by_key(|(o, _)| o.stream_ordering);
    out
}

impl Store {
    /// Records the outcomes of one event for several users, in a transaction of their own.
    pub async fn insert_push_actions(&self, rows: &[PushActionRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<&PushActionRow> = rows.iter().collect();
        // The timeline's lock, as its batches: an audience pruned meanwhile is not assumed stored.
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        let new = self.insert_push_outcomes_in(&mut tx, &rows).await?;
        tx.commit().await?;
        self.audiences_committed(new);
        Ok(())
    }

    /// Records per-member outcomes inside the caller's transaction (the events' own, see
    /// `append_events`), as one row per event and outcome plus the members of audiences not yet
    /// known. Rows travel as one JSON array per statement, expanded by the database (binding
    /// parameters per row cost more than the rows' insertion). Call `audiences_committed` with
    /// the answer after the commit.
    pub(super) async fn insert_push_outcomes_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        rows: &[&PushActionRow],
    ) -> StoreResult<NewAudiences> {
        let groups = group(rows);
        let ids: Vec<String> = groups.iter().map(|(_, members)| audience_id(members)).collect();
        // Members of each audience seen first here and not known to be stored.
        let mut seen = HashSet::new();
        let mut new = Vec::new();
        let mut member_rows: Vec<(&str, &str)> = Vec::new();
        for ((_, members), id) in groups.iter().zip(&ids) {
            if seen.insert(id.as_str()) && !self.known_audiences.contains(id) {
                member_rows.extend(members.iter().map(|m| (id.as_str(), *m)));
                new.push(id.clone());
            }
        }
        let (members_sql, outcomes_sql) = match self.backend {
            Backend::Sqlite => (
                "INSERT INTO push_audience_members (audience_id, user_id) \
                 SELECT value ->> 0, value ->> 1 FROM jsonb_each($1) WHERE true \
                 ON CONFLICT (audience_id, user_id) DO NOTHING",
                "INSERT INTO event_push_outcomes (stream_ordering, audience_id, room_id, notify, \
                 highlight, thread_id, actions) SELECT value ->> 0, value ->> 1, value ->> 2, 1, \
                 value ->> 3, value ->> 4, value ->> 5 FROM jsonb_each($1) WHERE true \
                 ON CONFLICT (stream_ordering, audience_id) DO NOTHING",
            ),
            Backend::Postgres => (
                "INSERT INTO push_audience_members (audience_id, user_id) \
                 SELECT r ->> 0, r ->> 1 FROM jsonb_array_elements($1::jsonb) AS r \
                 ON CONFLICT (audience_id, user_id) DO NOTHING",
                "INSERT INTO event_push_outcomes (stream_ordering, audience_id, room_id, notify, \
                 highlight, thread_id, actions) SELECT (r ->> 0)::BIGINT, r ->> 1, r ->> 2, 1, \
                 (r ->> 3)::BIGINT, r ->> 4, r ->> 5 FROM jsonb_array_elements($1::jsonb) AS r \
                 ON CONFLICT (stream_ordering, audience_id) DO NOTHING",
            ),
        };
        for chunk in member_rows.chunks(ROWS_PER_STATEMENT) {
            let json = serde_json::to_string(chunk).map_err(|e| sqlx::Error::Encode(e.into()))?;
            q(members_sql).bind(json).execute(&mut **tx).await?;
        }
        let outcome_rows: Vec<_> = groups
            .iter()
            .zip(&ids)
            .map(|((o, _), id)| {
                (
                    o.stream_ordering,
                    id,
                    o.room_id,
                    i64::from(o.highlight),
                    o.thread_id,
                    o.actions,
                )
            })
            .collect();
        for chunk in outcome_rows.chunks(ROWS_PER_STATEMENT) {
            let json = serde_json::to_string(chunk).map_err(|e| sqlx::Error::Encode(e.into()))?;
            q(outcomes_sql).bind(json).execute(&mut **tx).await?;
        }
        Ok(NewAudiences(new))
    }

    /// The transaction that wrote `new` committed.
    pub(super) fn audiences_committed(&self, new: NewAudiences) {
        if !new.0.is_empty() {
            self.known_audiences.extend(new.0);
        }
    }
}

impl Store {
    /// Notification and highlight counts per thread for a user in a room, for events after a
    /// stream position: stored outcomes, and the summary of pruned ones while the position is
    /// no further than where it was made (store/push_retention.rs).
    pub async fn push_counts(&self, user_id: &str, room_id: &str, after: i64) -> StoreResult<ThreadCounts> {
        let rows = q(
            "SELECT o.thread_id, COUNT(*), CAST(COALESCE(SUM(o.highlight), 0) AS BIGINT) \
             FROM event_push_outcomes o JOIN push_audience_members m \
             ON m.audience_id = o.audience_id AND m.user_id = $1 \
             WHERE o.room_id = $2 AND o.stream_ordering > $3 AND o.notify = 1 GROUP BY o.thread_id \
             UNION ALL SELECT NULLIF(s.thread_id, ''), s.notifications, s.highlights \
             FROM push_count_summaries s \
             WHERE s.user_id = $1 AND s.room_id = $2 AND s.read_upto >= $3",
        )
        .bind(user_id.to_owned())
        .bind(room_id.to_owned())
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// A page of a user's notifications, newest first, with stream positions below `before`.
    /// Each of the user's audiences contributes at most its newest `limit` outcomes (walked down
    /// its (audience, position) index), so a page costs a bounded read per audience instead of
    /// sorting the user's whole history.
    pub async fn push_notifications(
        &self,
        user_id: &str,
        before: i64,
        limit: i64,
        only_highlight: bool,
    ) -> StoreResult<Vec<PushActionRow>> {
        let rows = q(
            "SELECT e.event_id, o.room_id, o.stream_ordering, o.highlight, o.thread_id, o.actions \
             FROM push_audience_members m JOIN event_push_outcomes o ON o.audience_id = m.audience_id \
             JOIN events e ON e.stream_ordering = o.stream_ordering \
             WHERE m.user_id = $1 AND o.stream_ordering IN ( \
               SELECT p.stream_ordering FROM event_push_outcomes p WHERE p.audience_id = m.audience_id \
               AND p.stream_ordering < $2 AND p.notify = 1 AND p.highlight >= $3 \
               ORDER BY p.stream_ordering DESC LIMIT $4) \
             ORDER BY o.stream_ordering DESC LIMIT $4",
        )
        .bind(user_id.to_owned())
        .bind(before)
        .bind(i64::from(only_highlight))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PushActionRow {
                event_id: r.get(0),
                room_id: r.get(1),
                user_id: user_id.to_owned(),
                stream_ordering: r.get(2),
                highlight: r.get::<i64, _>(3) != 0,
                thread_id: r.get(4),
                actions: r
                    .get::<Option<String>, _>(5)
                    .unwrap_or_else(|| PLAIN_NOTIFY.to_owned()),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, pos: i64, highlight: bool) -> PushActionRow {
        PushActionRow {
            event_id: format!("$e{pos}"),
            room_id: "!r:hs".to_owned(),
            user_id: user.to_owned(),
            stream_ordering: pos,
            highlight,
            thread_id: None,
            actions: PLAIN_NOTIFY.to_owned(),
        }
    }

    #[test]
    fn an_audience_is_named_by_its_members_whatever_their_order() {
        assert_eq!(audience_id(&["@a:hs"]), "@a:hs");
        let two = audience_id(&["@a:hs", "@b:hs"]);
        assert_eq!(two.len(), 32);
        assert!(two.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(two, audience_id(&["@a:hs", "@c:hs"]));
        // Length prefixes: moving a character from one ID to the next is another set.
        assert_ne!(
            audience_id(&["@ab:hs", "@c:hs"]),
            audience_id(&["@a:hs", "@bc:hs"])
        );
        let rows = [row("@b:hs", 1, false), row("@a:hs", 1, false)];
        let refs: Vec<&PushActionRow> = rows.iter().collect();
        let groups = group(&refs);
        assert_eq!(groups.len(), 1);
        assert_eq!(audience_id(&groups[0].1), two);
    }

    #[test]
    fn members_with_another_outcome_form_their_own_audience() {
        let rows = [
            row("@a:hs", 7, false),
            row("@b:hs", 7, true),
            row("@c:hs", 7, false),
            row("@a:hs", 8, false),
            row("@c:hs", 8, false),
            row("@c:hs", 8, false),
        ];
        let refs: Vec<&PushActionRow> = rows.iter().collect();
        let groups = group(&refs);
        let summary: Vec<(i64, bool, Vec<&str>)> = groups
            .iter()
            .map(|(o, m)| (o.stream_ordering, o.highlight, m.clone()))
            .collect();
        assert_eq!(summary.len(), 3);
        assert!(summary.contains(&(7, false, vec!["@a:hs", "@c:hs"])));
        assert!(summary.contains(&(7, true, vec!["@b:hs"])));
        assert!(summary.contains(&(8, false, vec!["@a:hs", "@c:hs"])));
        assert_eq!(summary[2].0, 8, "in position order");
    }

    /// Another process may delete an audience once it was named a day ago: what this one
    /// remembers lapses after an hour, and a forgotten audience is not known.
    #[test]
    fn a_known_audience_lapses_after_an_hour() {
        let at = Instant::now();
        assert!(!lapsed(at, at + KNOWN_FOR - Duration::from_secs(1)));
        assert!(lapsed(at, at + KNOWN_FOR));
        assert!(!lapsed(at, at), "the clock going nowhere");
        let known = KnownAudiences::default();
        known.extend(vec!["@a:hs".to_owned(), "0123".to_owned()]);
        assert!(known.contains("@a:hs") && known.contains("0123"));
        known.forget(&["0123".to_owned()]);
        assert!(known.contains("@a:hs") && !known.contains("0123"));
    }
}
