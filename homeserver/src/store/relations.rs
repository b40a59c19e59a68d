//! Relations between events (`m.relates_to`): duplicate annotations, the children of an event
//! (`/relations`), what bundled aggregations are computed from, and a room's threads.
//!
//! A child counts only while it is not redacted (a redaction strips `m.relates_to`, so the
//! relationship is gone) and only within its parent's room (relations across rooms are ignored).

use sqlx::Row;

use super::{
    Direction, EventRow, Store, StoreResult,
    events::{SELECT_EVENTS, event_row},
    qs,
};

/// `e` is not redacted (by a checked redaction; see `EventRow::redacted_by`).
const NOT_REDACTED: &str = "NOT EXISTS (SELECT 1 FROM events r WHERE r.redacts IS NOT NULL AND r.redacts = e.event_id \
     AND r.room_id = e.room_id AND r.type = 'm.room.redaction' AND r.state_key IS NULL)";

/// Placeholders `$from..` for `n` parameters.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One page of children.
pub struct RelationPage<'a> {
    pub room_id: &'a str,
    pub parents: &'a [String],
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    /// Stream range `(after, upto]`.
    pub after: i64,
    pub upto: i64,
    pub limit: i64,
    pub direction: Direction,
}

/// A thread root of a room with the stream position of its latest reply.
#[derive(Debug, Clone)]
pub struct ThreadRoot {
    pub root: String,
    pub latest: i64,
}

impl Store {
    /// Whether `sender` already has an unredacted annotation of `event_type` with `key` on
    /// `target` in the room.
    pub async fn annotation_exists(
        &self,
        room_id: &str,
        target: &str,
        sender: &str,
        event_type: &str,
        key: &str,
    ) -> StoreResult<bool> {
        let sql = format!(
            "SELECT 1 FROM events e WHERE e.relates_to = $1 AND e.rel_type = 'm.annotation' \
             AND e.room_id = $2 AND e.sender = $3 AND e.type = $4 AND e.relation_key = $5 AND {NOT_REDACTED} \
             LIMIT 1"
        );
        let row = qs(sql)
            .bind(target.to_owned())
            .bind(room_id.to_owned())
            .bind(sender.to_owned())
            .bind(event_type.to_owned())
            .bind(key.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The unredacted children of `parents` in the room with positions in `(after, upto]`,
    /// at most `limit`, newest first (`Backwards`) or oldest first.
    pub async fn relation_children(&self, page: &RelationPage<'_>) -> StoreResult<Vec<EventRow>> {
        if page.parents.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = format!(
            "{SELECT_EVENTS}WHERE e.room_id = $1 AND e.stream_ordering > $2 AND e.stream_ordering <= $3 \
             AND e.outlier = 0 AND e.relates_to IN ({}) AND {NOT_REDACTED}",
            placeholders(5, page.parents.len())
        );
        let mut next = 5 + page.parents.len();
        if page.rel_type.is_some() {
            sql.push_str(&format!(" AND e.rel_type = ${next}"));
            next += 1;
        }
        if page.event_type.is_some() {
            sql.push_str(&format!(" AND e.type = ${next}"));
        }
        sql.push_str(match page.direction {
            Direction::Backwards => " ORDER BY e.stream_ordering DESC LIMIT $4",
            Direction::Forwards => " ORDER BY e.stream_ordering ASC LIMIT $4",
        });
        let mut query = qs(sql)
            .bind(page.room_id.to_owned())
            .bind(page.after)
            .bind(page.upto)
            .bind(page.limit);
        for parent in page.parents {
            query = query.bind(parent.clone());
        }
        if let Some(rel_type) = page.rel_type {
            query = query.bind(rel_type.to_owned());
        }
        if let Some(event_type) = page.event_type {
            query = query.bind(event_type.to_owned());
        }
        Ok(query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(event_row)
            .collect())
    }

    /// The IDs of the unredacted children (any relation type) of `parents` in the room, at
    /// most `limit`.
    pub async fn child_ids(&self, room_id: &str, parents: &[String], limit: i64) -> StoreResult<Vec<String>> {
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT e.event_id FROM events e WHERE e.room_id = $1 AND e.relates_to IN ({}) AND {NOT_REDACTED} \
             ORDER BY e.stream_ordering LIMIT $2",
            placeholders(3, parents.len())
        );
        let mut query = qs(sql).bind(room_id.to_owned()).bind(limit);
        for parent in parents {
            query = query.bind(parent.clone());
        }
        Ok(query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// What bundled aggregations are made of: the unredacted `m.replace`, `m.thread` and
    /// `m.reference` children of `parents` (of any rooms: callers keep those of the parent's
    /// room), newest first, at most `limit`. Only an edit's JSON is read (its content decides its
    /// validity); the others carry `{}`.
    pub async fn aggregation_children(&self, parents: &[String], limit: i64) -> StoreResult<Vec<EventRow>> {
        let mut out = Vec::new();
        // Chunks keep the parameter count well inside SQLite's limit (a /sync of many rooms).
        for chunk in parents.chunks(500) {
            let mut rows = self.aggregation_children_of(chunk, limit).await?;
            out.append(&mut rows);
        }
        if parents.len() > 500 {
            out.sort_by_key(|r| std::cmp::Reverse(r.stream_ordering));
            out.truncate(limit.max(0) as usize);
        }
        Ok(out)
    }

    async fn aggregation_children_of(&self, parents: &[String], limit: i64) -> StoreResult<Vec<EventRow>> {
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT e.stream_ordering, e.event_id, e.room_id, e.type, e.state_key, e.sender, \
             e.origin_server_ts, e.depth, e.state_group, e.replaces_state, e.txn_device_id, e.txn_id, \
             CAST(NULL AS TEXT), CASE WHEN e.rel_type = 'm.replace' THEN e.json ELSE '{{}}' END, \
             e.rel_type, e.relates_to, e.outlier, e.topological_ordering, e.late FROM events e \
             WHERE e.relates_to IN ({}) \
             AND e.rel_type IN ('m.replace', 'm.thread', 'm.reference') AND {NOT_REDACTED} \
             ORDER BY e.stream_ordering DESC LIMIT $1",
            placeholders(2, parents.len())
        );
        let mut query = qs(sql).bind(limit);
        for parent in parents {
            query = query.bind(parent.clone());
        }
        Ok(query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(event_row)
            .collect())
    }

    /// A room's thread roots (events of the room with unredacted `m.thread` children), by their
    /// latest reply at or before `cap`, newest first, among those whose latest reply is at or
    /// before `upto`; with `participant`, only threads that user started or replied in.
    pub async fn thread_roots(
        &self,
        room_id: &str,
        (cap, upto): (i64, i64),
        limit: i64,
        participant: Option<&str>,
    ) -> StoreResult<Vec<ThreadRoot>> {
        let having = if participant.is_some() {
            " AND (MAX(CASE WHEN e.sender = $5 THEN 1 ELSE 0 END) = 1 OR MAX(p.sender) = $5)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT e.relates_to, MAX(e.stream_ordering) AS latest FROM events e \
             JOIN events p ON p.event_id = e.relates_to AND p.room_id = e.room_id \
             WHERE e.room_id = $1 AND e.rel_type = 'm.thread' AND e.stream_ordering <= $4 AND {NOT_REDACTED} \
             GROUP BY e.relates_to HAVING MAX(e.stream_ordering) <= $2{having} \
             ORDER BY latest DESC LIMIT $3"
        );
        let mut query = qs(sql).bind(room_id.to_owned()).bind(upto).bind(limit).bind(cap);
        if let Some(user) = participant {
            query = query.bind(user.to_owned());
        }
        Ok(query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| ThreadRoot {
                root: r.get(0),
                latest: r.get(1),
            })
            .collect())
    }

    /// Of `events`, those with an unredacted child whose relation type is among `rel_types`
    /// (all types when `None`) and whose sender is among `senders` (anyone when `None`).
    pub async fn events_with_children(
        &self,
        room_id: &str,
        events: &[String],
        rel_types: Option<&[String]>,
        senders: Option<&[String]>,
    ) -> StoreResult<Vec<String>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = format!(
            "SELECT DISTINCT e.relates_to FROM events e WHERE e.room_id = $1 AND e.relates_to IN ({}) \
             AND e.rel_type IS NOT NULL AND {NOT_REDACTED}",
            placeholders(2, events.len())
        );
        let mut next = 2 + events.len();
        for (column, list) in [("e.rel_type", rel_types), ("e.sender", senders)] {
            if let Some(list) = list {
                if list.is_empty() {
                    return Ok(Vec::new());
                }
                sql.push_str(&format!(" AND {column} IN ({})", placeholders(next, list.len())));
                next += list.len();
            }
        }
        let mut query = qs(sql).bind(room_id.to_owned());
        for value in events
            .iter()
            .chain(rel_types.into_iter().flatten())
            .chain(senders.into_iter().flatten())
        {
            query = query.bind(value.clone());
        }
        Ok(query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }
}
