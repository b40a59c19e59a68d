//! The event log: appending events with their DAG edges and state, and reading them back.

use std::{collections::HashMap, sync::OnceLock};

use sqlx::{Any, Row, Transaction, any::AnyRow};

use super::{Backend, PushActionRow, RoomRow, Store, StoreError, StoreResult, Stream, q, qs};

/// An event to append, with the columns queries need beside its opaque JSON.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub depth: i64,
    /// Where it sorts in the room's topological order (`Topo`): its depth as this server
    /// computes it from its prev events (see `rooms::topo`); the claimed `depth` until then.
    pub topo: i64,
    /// Arrived late (a missing prev event fetched, a pending PDU placed below what the room
    /// shows): in the DAG and the state, never delivered as new (`/sync`, push).
    pub late: bool,
    pub origin_server_ts: i64,
    pub redacts: Option<String>,
    pub rel_type: Option<String>,
    pub relates_to: Option<String>,
    /// An `m.annotation`'s `key` (`m.relates_to.key`).
    pub relation_key: Option<String>,
    pub prev_events: Vec<String>,
    /// `content.membership` of an `m.room.member` event.
    pub membership: Option<String>,
    /// The client transaction that sent it, if any.
    pub txn: Option<Txn>,
    pub json: String,
}

#[cfg(test)]
impl NewEvent {
    /// A plain `m.room.message` from `@a:hs` at depth 1 with no prev events, for tests that
    /// need an event's columns.
    pub(crate) fn test_message(room_id: &str, event_id: &str) -> Self {
        Self {
            event_id: event_id.into(),
            room_id: room_id.into(),
            event_type: "m.room.message".into(),
            state_key: None,
            sender: "@a:hs".into(),
            depth: 1,
            topo: 1,
            late: false,
            origin_server_ts: 0,
            redacts: None,
            rel_type: None,
            relates_to: None,
            relation_key: None,
            prev_events: Vec::new(),
            membership: None,
            txn: None,
            json: "{}".into(),
        }
    }
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
    pub fn key(&self) -> String {
        format!("{}/{}", self.scope, self.txn_id)
    }
}

/// A client transaction as `Store::events_for_txns` looks it up: (user ID, device ID, `Txn::key`).
pub type TxnKey = (String, String, String);

/// Transaction keys looked up per query, and the shorter padded length for small batches.
const TXN_CHUNK: usize = 64;
const TXN_SHORT: usize = 8;

/// The lookup of `len` transaction keys (`$1..$3len`, three per key).
fn txns_sql(len: usize) -> String {
    let wanted: Vec<String> = (0..len)
        .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
        .collect();
    format!(
        "WITH wanted (user_id, device_id, txn_id) AS (VALUES {}) \
         SELECT DISTINCT t.user_id, t.device_id, t.txn_id, t.event_id, e.stream_ordering \
         FROM wanted w JOIN transaction_ids t ON t.user_id = w.user_id AND t.device_id = w.device_id \
         AND t.txn_id = w.txn_id LEFT JOIN events e ON e.event_id = t.event_id",
        wanted.join(", ")
    )
}

/// One event to append, with what `append_events` needs beside it.
#[derive(Debug)]
pub struct Appending {
    pub event: NewEvent,
    /// The room's state group before the event (`None` for a room's first event).
    pub previous_group: Option<i64>,
    /// Who the event notifies; `stream_ordering` is filled in when it is stored.
    pub push: Vec<PushActionRow>,
    /// The other servers it goes to: queued (`federation_outbound`) in its own transaction, so
    /// a committed event is never missing from the queue.
    pub outbound: Vec<String>,
}

/// Where an appended event landed.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    pub stream_ordering: i64,
    /// The room's state group after the event.
    pub state_group: i64,
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
    /// The redaction that applies to this one, if any: an `m.room.redaction` of the same room
    /// whose `redacts` column is set — which only happens once the redaction was checked (its
    /// sender sent the target or may redact others; see `rooms::timeline`).
    pub redacted_by: Option<String>,
    /// `m.relates_to.rel_type` and `m.relates_to.event_id`, as stored in their columns.
    pub rel_type: Option<String>,
    pub relates_to: Option<String>,
    pub json: String,
    /// Soft-failed (`outlier = 2`): in the DAG, served to other servers, never to clients.
    pub soft_failed: bool,
    /// `events.topological_ordering`: with `stream_ordering`, the event's place in `Topo` order.
    pub topo: i64,
    /// Arrived late (`NewEvent::late`): never in a `/sync` timeline.
    pub late: bool,
}

/// A place in a room's topological order: (depth as computed here, stream position), the
/// order of `/messages` and `/context`. Events that are not late sort in the same order by
/// either key (see `rooms::topo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topo {
    pub depth: i64,
    pub stream: i64,
}

impl Topo {
    /// Below every event.
    pub const MIN: Topo = Topo {
        depth: i64::MIN / 4,
        stream: i64::MIN / 4,
    };
    /// Above every event.
    pub const MAX: Topo = Topo {
        depth: i64::MAX / 4,
        stream: i64::MAX / 4,
    };

    pub fn of(row: &EventRow) -> Topo {
        Topo {
            depth: row.topo,
            stream: row.stream_ordering,
        }
    }

    /// The place just before this one (no event lies between them).
    pub fn prev(self) -> Topo {
        Topo {
            stream: self.stream - 1,
            ..self
        }
    }

    /// The place just after this one.
    pub fn next(self) -> Topo {
        Topo {
            stream: self.stream + 1,
            ..self
        }
    }
}

macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT e.stream_ordering, e.event_id, e.room_id, e.type, e.state_key, e.sender, \
             e.origin_server_ts, e.depth, e.state_group, e.replaces_state, e.txn_device_id, e.txn_id, \
             (SELECT MIN(r.event_id) FROM events r WHERE r.redacts IS NOT NULL AND r.redacts = e.event_id \
              AND r.room_id = e.room_id \
              AND r.type = 'm.room.redaction' AND r.state_key IS NULL), e.json, e.rel_type, e.relates_to, \
             e.outlier, e.topological_ordering, e.late FROM events e ",
            $rest
        )
    };
}

/// The select list of `EventRow`s (read by `event_row`), for queries in other store files.
pub(super) const SELECT_EVENTS: &str = select_events!("");

pub(super) fn event_row(r: AnyRow) -> EventRow {
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
        json: super::at_rest::open(&r.get::<String, _>(2), r.get(13)),
        rel_type: r.get(14),
        relates_to: r.get(15),
        soft_failed: r.get::<i64, _>(16) == 2,
        topo: r.get(17),
        late: r.get::<i64, _>(18) == 1,
    }
}

impl Store {
    /// Appends events: for each, the log row, its DAG edges, the room's forward extremities, its
    /// state, the membership history, the transaction ID and the push rule outcomes (whose
    /// `stream_ordering` this fills in) — all in one database transaction, so a batch of
    /// concurrent sends shares one commit. Returns where each event landed, in order. Callers
    /// serialize appends (see `rooms::timeline`).
    pub async fn append_events(&self, batch: &mut [Appending]) -> StoreResult<Vec<Placed>> {
        // Search-enabled rooms' events are written encrypted (store/at_rest.rs); the batch gets
        // its plaintext back for the listeners.
        let plain = super::at_rest::seal_in_place(batch.iter_mut().map(|a| &mut a.event));
        let placed = self.append_sealed_events(batch).await;
        super::at_rest::unseal_in_place(batch.iter_mut().map(|a| &mut a.event), plain);
        placed
    }

    async fn append_sealed_events(&self, batch: &mut [Appending]) -> StoreResult<Vec<Placed>> {
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        let mut placed = Vec::with_capacity(batch.len());
        let mut rest = &mut batch[..];
        while !rest.is_empty() {
            // SQLite writes a run of messages as one query; state events (and PostgreSQL) go
            // one by one.
            let n = if self.backend == Backend::Sqlite {
                rest.iter().take_while(|a| a.event.state_key.is_none()).count()
            } else {
                0
            };
            let (done, tail) = rest.split_at_mut(n.max(1));
            if n > 0 {
                placed.extend(super::message_rows::append_messages(&mut tx, done).await?);
            } else {
                let one = &mut done[0];
                placed.push(Self::append_in(&mut tx, &one.event, one.previous_group).await?);
            }
            rest = tail;
        }
        for (appending, at) in batch.iter_mut().zip(&placed) {
            for row in appending.push.iter_mut() {
                row.stream_ordering = at.stream_ordering;
            }
        }
        let push: Vec<&PushActionRow> = batch.iter().flat_map(|a| &a.push).collect();
        let audiences = self.insert_push_outcomes_in(&mut tx, &push).await?;
        let queued = batch
            .iter()
            .map(|a| (&a.outbound[..], a.event.room_id.as_str(), a.event.json.as_str()));
        self.enqueue_pdus_in(&mut tx, queued, crate::util::now_ms())
            .await?;
        tx.commit().await?;
        self.audiences_committed(audiences);
        Ok(placed)
    }

    /// Creates a room with its first events (and its alias, if any) and their federation queue
    /// rows in one transaction, so a failure leaves nothing behind. Each event's state group
    /// chains from the previous one here (`previous_group` is not read), and `push` is not
    /// stored (the push listener's `room_created` does that). Returns where the last event
    /// landed, or `None` when the alias is taken.
    pub async fn create_room_with_events(
        &self,
        room: &RoomRow,
        alias: Option<&str>,
        batch: &[Appending],
        now: i64,
    ) -> StoreResult<Option<Placed>> {
        let events: Vec<NewEvent> = batch.iter().map(|a| a.event.clone()).collect();
        let events = super::at_rest::sealed(&events);
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        Self::insert_room_in(&mut tx, room, now).await?;
        if let Some(alias) = alias
            && !Self::create_alias_in(&mut tx, alias, &room.room_id, &room.creator).await?
        {
            return Ok(None);
        }
        let mut last = None;
        for event in events.iter() {
            let previous_group = last.map(|p: Placed| p.state_group);
            last = Some(Self::append_in(&mut tx, event, previous_group).await?);
        }
        let queued = batch
            .iter()
            .zip(events.iter())
            .map(|(a, stored)| (&a.outbound[..], stored.room_id.as_str(), stored.json.as_str()));
        self.enqueue_pdus_in(&mut tx, queued, now).await?;
        tx.commit().await?;
        Ok(last)
    }

    /// The room's state group after its newest event (`None` for a room with no events).
    pub async fn latest_state_group(&self, room_id: &str) -> StoreResult<Option<i64>> {
        let row =
            q("SELECT state_group FROM events WHERE room_id = $1 AND outlier = 0 ORDER BY stream_ordering DESC LIMIT 1")
                .bind(room_id.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// One event's rows: a state event's, and every event's on PostgreSQL (SQLite writes runs
    /// of messages together, `message_rows`). A message costs five statements (event, edges,
    /// extremities removed and added, transaction ID), each a round trip to the database.
    async fn append_in(
        tx: &mut Transaction<'static, Any>,
        event: &NewEvent,
        previous_group: Option<i64>,
    ) -> StoreResult<Placed> {
        let mut state_group = previous_group.unwrap_or(0);
        let stream: i64 = q(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, depth, \
             origin_server_ts, redacts, rel_type, relates_to, relation_key, state_group, txn_device_id, \
             txn_id, json, topological_ordering, late) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             RETURNING stream_ordering",
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
        .bind(event.relation_key.clone())
        .bind(state_group)
        .bind(event.txn.as_ref().map(|t| t.device_id.clone()))
        .bind(event.txn.as_ref().map(|t| t.txn_id.clone()))
        .bind(event.json.clone())
        .bind(event.topo)
        .bind(i64::from(event.late))
        .fetch_one(&mut **tx)
        .await?
        .get(0);

        if let Some(state_key) = &event.state_key {
            let replaced;
            (state_group, replaced) =
                Self::apply_state_event(tx, event, state_key, previous_group, stream).await?;
            q("UPDATE events SET state_group = $2, replaces_state = $3 WHERE stream_ordering = $1")
                .bind(stream)
                .bind(state_group)
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

        if !event.prev_events.is_empty() {
            // One statement each for all prev_events (numbered from $2; $1 is this event or room).
            let params = (2..event.prev_events.len() + 2).map(|i| format!("${i}"));
            let edges: Vec<String> = params.clone().map(|p| format!("({p})")).collect();
            let sql = format!(
                concat!(
                    "INSERT INTO event_edges (event_id, prev_event_id, prev_absent) SELECT $1, v.column1, ",
                    prev_absent!("v.column1"),
                    " FROM (VALUES {}) AS v WHERE true ON CONFLICT DO NOTHING"
                ),
                edges.join(", ")
            );
            let mut insert = qs(sql).bind(event.event_id.clone());
            let sql = format!(
                "DELETE FROM forward_extremities WHERE room_id = $1 AND event_id IN ({})",
                params.collect::<Vec<_>>().join(", ")
            );
            let mut delete = qs(sql).bind(event.room_id.clone());
            for prev in &event.prev_events {
                insert = insert.bind(prev.clone());
                delete = delete.bind(prev.clone());
            }
            insert.execute(&mut **tx).await?;
            delete.execute(&mut **tx).await?;
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
        Ok(Placed {
            stream_ordering: stream,
            state_group,
        })
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

    /// The events that client transactions already produced, with their stream positions, for
    /// a batch of appends: keys are (user ID, device ID, `Txn::key`). One query per
    /// `TXN_CHUNK` keys whatever the batch's size: the key list is padded to one of two lengths
    /// (repeating its first key), so the statement is prepared once per connection and cached.
    pub async fn events_for_txns(&self, keys: &[TxnKey]) -> StoreResult<HashMap<TxnKey, (String, i64)>> {
        static SHORT: OnceLock<String> = OnceLock::new();
        static LONG: OnceLock<String> = OnceLock::new();
        let mut found = HashMap::new();
        for chunk in keys.chunks(TXN_CHUNK) {
            let (len, sql) = if chunk.len() <= TXN_SHORT {
                (TXN_SHORT, &SHORT)
            } else {
                (TXN_CHUNK, &LONG)
            };
            let sql = sql.get_or_init(|| txns_sql(len));
            let mut query = q(sql.as_str());
            for i in 0..len {
                let (user, device, key) = chunk.get(i).unwrap_or(&chunk[0]);
                query = query.bind(user.clone()).bind(device.clone()).bind(key.clone());
            }
            for row in query.fetch_all(&self.pool).await? {
                let key = (row.get(0), row.get(1), row.get(2));
                let event_id: String = row.get(3);
                let stream: Option<i64> = row.get(4);
                let stream = stream.ok_or_else(|| {
                    StoreError::Corrupt(format!("transaction event {event_id} is not stored"))
                })?;
                found.insert(key, (event_id, stream));
            }
        }
        Ok(found)
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
            let mut query = qs(sql);
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
                "WHERE e.room_id = $1 AND e.stream_ordering > $2 AND e.stream_ordering <= $3 AND e.outlier = 0 \
                 ORDER BY e.stream_ordering DESC LIMIT $4"
            ),
            Direction::Forwards => select_events!(
                "WHERE e.room_id = $1 AND e.stream_ordering > $2 AND e.stream_ordering <= $3 AND e.outlier = 0 \
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

    /// Up to `limit` timeline events of a room with `after < (topo, stream) <= upto`, in
    /// topological order: the highest first (`Backwards`) or the lowest first (`Forwards`).
    /// Served by `events_by_room_topological`.
    pub async fn room_events_topo(
        &self,
        room_id: &str,
        after: Topo,
        upto: Topo,
        limit: i64,
        direction: Direction,
    ) -> StoreResult<Vec<EventRow>> {
        // Row comparisons spelled out: both databases use the index for the leading column.
        let sql = match direction {
            Direction::Backwards => select_events!(
                "WHERE e.room_id = $1 AND e.topological_ordering >= $2 AND e.topological_ordering <= $4 \
                 AND (e.topological_ordering > $2 OR e.stream_ordering > $3) \
                 AND (e.topological_ordering < $4 OR e.stream_ordering <= $5) AND e.outlier = 0 \
                 ORDER BY e.topological_ordering DESC, e.stream_ordering DESC LIMIT $6"
            ),
            Direction::Forwards => select_events!(
                "WHERE e.room_id = $1 AND e.topological_ordering >= $2 AND e.topological_ordering <= $4 \
                 AND (e.topological_ordering > $2 OR e.stream_ordering > $3) \
                 AND (e.topological_ordering < $4 OR e.stream_ordering <= $5) AND e.outlier = 0 \
                 ORDER BY e.topological_ordering ASC, e.stream_ordering ASC LIMIT $6"
            ),
        };
        let rows = q(sql)
            .bind(room_id.to_owned())
            .bind(after.depth)
            .bind(after.stream)
            .bind(upto.depth)
            .bind(upto.stream)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// The topological place of the room's first timeline event after stream position
    /// `stream` that did not arrive late (`None`: there is none).
    pub async fn first_live_after(&self, room_id: &str, stream: i64) -> StoreResult<Option<Topo>> {
        let row = q(
            "SELECT topological_ordering, stream_ordering FROM events WHERE room_id = $1 \
             AND stream_ordering > $2 AND outlier = 0 AND late = 0 ORDER BY stream_ordering LIMIT 1",
        )
        .bind(room_id.to_owned())
        .bind(stream)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Topo {
            depth: r.get(0),
            stream: r.get(1),
        }))
    }

    /// The highest `topological_ordering` among the events of the DAG (timeline, soft-failed)
    /// in `event_ids`, if any is there.
    pub async fn max_topo_of(&self, event_ids: &[String]) -> StoreResult<Option<i64>> {
        let mut max = None;
        for chunk in event_ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT MAX(topological_ordering) FROM events WHERE outlier IN (0, 2) AND event_id IN ({})",
                placeholders.join(", ")
            );
            let mut query = qs(sql);
            for id in chunk {
                query = query.bind(id.clone());
            }
            let found: Option<i64> = query.fetch_one(&self.pool).await?.get(0);
            max = max.max(found);
        }
        Ok(max)
    }

    /// The highest `topological_ordering` among the room's forward extremities: at or above
    /// every timeline event's (each event sorts above its prev events).
    pub async fn max_extremity_topo(&self, room_id: &str) -> StoreResult<Option<i64>> {
        let row = q("SELECT MAX(e.topological_ordering) FROM forward_extremities f \
             JOIN events e ON e.event_id = f.event_id WHERE f.room_id = $1")
        .bind(room_id.to_owned())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get(0))
    }

    /// Every event of a room in stream order (for DAG checks and exports).
    pub async fn all_room_events(&self, room_id: &str) -> StoreResult<Vec<EventRow>> {
        let rows = q(select_events!(
            "WHERE e.room_id = $1 AND e.outlier = 0 ORDER BY e.stream_ordering"
        ))
        .bind(room_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// The state group in force just before a stream position in a room (0 if none).
    pub async fn state_group_before(&self, room_id: &str, stream: i64) -> StoreResult<Option<i64>> {
        let row = q(
            "SELECT state_group FROM events WHERE room_id = $1 AND stream_ordering < $2 AND outlier = 0 \
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
            q("SELECT DISTINCT room_id FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2 AND outlier = 0")
                .bind(after)
                .bind(upto)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }
}
