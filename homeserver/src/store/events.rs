//! The event log: appending events with their DAG edges and state, and reading them back.

use sqlx::{Any, Row, Transaction, any::AnyRow};

use super::{RoomRow, Store, StoreResult, Stream, q};

/// An event to append, with the columns queries need beside its opaque JSON.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub depth: i64,
    pub origin_server_ts: i64,
    pub redacts: Option<String>,
    pub rel_type: Option<String>,
    pub relates_to: Option<String>,
    pub prev_events: Vec<String>,
    /// `content.membership` of an `m.room.member` event.
    pub membership: Option<String>,
    /// The client transaction that sent it, if any.
    pub txn: Option<Txn>,
    pub json: String,
}

/// A client transaction: its ID is scoped to one device and one request path.
#[derive(Debug, Clone)]
pub struct Txn {
    pub device_id: String,
    /// The request path without the txnId, e.g. `send/!room/m.room.message`.
    pub scope: String,
    pub txn_id: String,
}

impl Txn {
    /// The key retries are matched on.
    fn key(&self) -> String {
        format!("{}/{}", self.scope, self.txn_id)
    }
}

/// Which end of a range of the event log to read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Backwards,
    Forwards,
}

/// A stored event as read back.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub stream_ordering: i64,
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub origin_server_ts: i64,
    pub depth: i64,
    pub state_group: i64,
    pub replaces_state: Option<String>,
    pub txn_device_id: Option<String>,
    pub txn_id: Option<String>,
    /// The redaction event that applies to this one, if any.
    pub redacted_by: Option<String>,
    pub json: String,
}

macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT e.stream_ordering, e.event_id, e.room_id, e.type, e.state_key, e.sender, \
             e.origin_server_ts, e.depth, e.state_group, e.replaces_state, e.txn_device_id, e.txn_id, \
             (SELECT MIN(r.event_id) FROM events r WHERE r.redacts = e.event_id), e.json FROM events e ",
            $rest
        )
    };
}

fn event_row(r: AnyRow) -> EventRow {
    EventRow {
        stream_ordering: r.get(0),
        event_id: r.get(1),
        room_id: r.get(2),
        event_type: r.get(3),
        state_key: r.get(4),
        sender: r.get(5),
        origin_server_ts: r.get(6),
        depth: r.get(7),
        state_group: r.get(8),
        replaces_state: r.get(9),
        txn_device_id: r.get(10),
        txn_id: r.get(11),
        redacted_by: r.get(12),
        json: r.get(13),
    }
}

impl Store {
    /// Appends an event: the log row, its DAG edges, the room's forward extremities, its state,
    /// the membership history and the transaction ID, in one database transaction. Returns the
    /// event's stream position. Callers serialize appends to a room (see `rooms::timeline`).
    pub async fn append_event(&self, event: &NewEvent) -> StoreResult<i64> {
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        let stream = Self::append_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(stream)
    }

    /// Creates a room with its first events (and its alias, if any) in one transaction, so a
    /// failure leaves nothing behind. Returns `false` when the alias is taken.
    pub async fn create_room_with_events(
        &self,
        room: &RoomRow,
        alias: Option<&str>,
        events: &[NewEvent],
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        Self::insert_room_in(&mut tx, room, now).await?;
        if let Some(alias) = alias
            && !Self::create_alias_in(&mut tx, alias, &room.room_id, &room.creator).await?
        {
            return Ok(false);
        }
        for event in events {
            Self::append_in(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn append_in(tx: &mut Transaction<'static, Any>, event: &NewEvent) -> StoreResult<i64> {
        let previous_group: Option<i64> = q("SELECT state_group FROM events WHERE room_id = $1 \
                                              ORDER BY stream_ordering DESC LIMIT 1")
        .bind(event.room_id.clone())
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.get(0));

        let stream: i64 = q(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, depth, \
             origin_server_ts, redacts, rel_type, relates_to, state_group, txn_device_id, txn_id, json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING stream_ordering",
        )
        .bind(event.event_id.clone())
        .bind(event.room_id.clone())
        .bind(event.event_type.clone())
        .bind(event.state_key.clone())
        .bind(event.sender.clone())
        .bind(event.depth)
        .bind(event.origin_server_ts)
        .bind(event.redacts.clone())
        .bind(event.rel_type.clone())
        .bind(event.relates_to.clone())
        .bind(previous_group.unwrap_or(0))
        .bind(event.txn.as_ref().map(|t| t.device_id.clone()))
        .bind(event.txn.as_ref().map(|t| t.txn_id.clone()))
        .bind(event.json.clone())
        .fetch_one(&mut **tx)
        .await?
        .get(0);

        if let Some(state_key) = &event.state_key {
            let (group, replaced) =
                Self::apply_state_event(tx, event, state_key, previous_group, stream).await?;
            q("UPDATE events SET state_group = $2, replaces_state = $3 WHERE stream_ordering = $1")
                .bind(stream)
                .bind(group)
                .bind(replaced)
                .execute(&mut **tx)
                .await?;
            if let Some(membership) = &event.membership {
                q("INSERT INTO room_memberships (event_id, room_id, user_id, sender, membership, stream_ordering) \
                   VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(event.event_id.clone())
                .bind(event.room_id.clone())
                .bind(state_key.clone())
                .bind(event.sender.clone())
                .bind(membership.clone())
                .bind(stream)
                .execute(&mut **tx)
                .await?;
            }
        }

        for prev in &event.prev_events {
            q("INSERT INTO event_edges (event_id, prev_event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(event.event_id.clone())
                .bind(prev.clone())
                .execute(&mut **tx)
                .await?;
            q("DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2")
                .bind(event.room_id.clone())
                .bind(prev.clone())
                .execute(&mut **tx)
                .await?;
        }
        q("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)")
            .bind(event.room_id.clone())
            .bind(event.event_id.clone())
            .execute(&mut **tx)
            .await?;

        if let Some(txn) = &event.txn {
            q(
                "INSERT INTO transaction_ids (user_id, device_id, txn_id, event_id, created_ts) \
               VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(event.sender.clone())
            .bind(txn.device_id.clone())
            .bind(txn.key())
            .bind(event.event_id.clone())
            .bind(event.origin_server_ts)
            .execute(&mut **tx)
            .await?;
        }
        Ok(stream)
    }

    /// The event a user's transaction already produced.
    pub async fn event_for_txn(&self, user_id: &str, txn: &Txn) -> StoreResult<Option<String>> {
        let row =
            q("SELECT event_id FROM transaction_ids WHERE user_id = $1 AND device_id = $2 AND txn_id = $3")
                .bind(user_id.to_owned())
                .bind(txn.device_id.clone())
                .bind(txn.key())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The room's forward extremities with their depths.
    pub async fn forward_extremities(&self, room_id: &str) -> StoreResult<Vec<(String, i64)>> {
        let rows = q(
            "SELECT f.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_id = f.event_id \
                      WHERE f.room_id = $1 ORDER BY e.depth DESC",
        )
        .bind(room_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn event(&self, event_id: &str) -> StoreResult<Option<EventRow>> {
        let row = q(select_events!("WHERE e.event_id = $1"))
            .bind(event_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(event_row))
    }

    /// Several events by ID, in no particular order; unknown IDs are skipped.
    pub async fn events(&self, event_ids: &[String]) -> StoreResult<Vec<EventRow>> {
        let mut out = Vec::with_capacity(event_ids.len());
        // Chunks keep the parameter count well inside SQLite's limit.
        for chunk in event_ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "{}WHERE e.event_id IN ({})",
                select_events!(""),
                placeholders.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id.clone());
            }
            out.extend(query.fetch_all(&self.pool).await?.into_iter().map(event_row));
        }
        Ok(out)
    }

    /// The newest stream position, 0 for an empty log.
    pub async fn max_stream_ordering(&self) -> StoreResult<i64> {
        let row = q("SELECT MAX(stream_ordering) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Option<i64>, _>(0).unwrap_or(0))
    }

    /// Up to `limit` events of a room with `after < stream <= upto`: the newest ones, newest first
    /// (`Backwards`), or the oldest ones, oldest first (`Forwards`).
    pub async fn room_events(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
        limit: i64,
        direction: Direction,
    ) -> StoreResult<Vec<EventRow>> {
        let sql = match direction {
            Direction::Backwards => select_events!(
                "WHERE e.room_id = $1 AND e.stream_ordering > $2 AND e.stream_ordering <= $3 \
                 ORDER BY e.stream_ordering DESC LIMIT $4"
            ),
            Direction::Forwards => select_events!(
                "WHERE e.room_id = $1 AND e.stream_ordering > $2 AND e.stream_ordering <= $3 \
                 ORDER BY e.stream_ordering ASC LIMIT $4"
            ),
        };
        let rows = q(sql)
            .bind(room_id.to_owned())
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// Every event of a room in stream order (for DAG checks and exports).
    pub async fn all_room_events(&self, room_id: &str) -> StoreResult<Vec<EventRow>> {
        let rows = q(select_events!("WHERE e.room_id = $1 ORDER BY e.stream_ordering"))
            .bind(room_id.to_owned())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// The state group in force just before a stream position in a room (0 if none).
    pub async fn state_group_before(&self, room_id: &str, stream: i64) -> StoreResult<Option<i64>> {
        let row = q(
            "SELECT state_group FROM events WHERE room_id = $1 AND stream_ordering < $2 \
                     ORDER BY stream_ordering DESC LIMIT 1",
        )
        .bind(room_id.to_owned())
        .bind(stream)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Rooms with at least one event in `(after, upto]`, among the given rooms.
    pub async fn rooms_with_events_between(&self, after: i64, upto: i64) -> StoreResult<Vec<String>> {
        let rows =
            q("SELECT DISTINCT room_id FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2")
                .bind(after)
                .bind(upto)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }
}
