//! A batch of messages' rows on SQLite as one fixed multi-statement query: the rows travel as
//! JSON arrays, one parameter per table, and SQLite expands them (`json_each`).
//!
//! Why: the query is the same text for every batch, so it is prepared once per connection and
//! cached, and it hands back one row whatever the batch's size. A query built per batch (five
//! statements per message, one row back per event) was parsed again every time, and each row
//! and statement result came back through the driver's channel as its own thread hand-off,
//! which is what serialized the writer.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use super::{Appending, Placed, StoreError, StoreResult, q};

/// $1 events, $2 edges, $3 extremities replaced, $4 extremities added, $5 transactions; the
/// answer is `[[event_id, stream_ordering], …]`. Events go in in array order (`ORDER BY key`),
/// so their stream positions follow the batch's order.
const SQL: &str = concat!(
    "\
INSERT INTO events (event_id, room_id, type, state_key, sender, depth, origin_server_ts, redacts, \
 rel_type, relates_to, relation_key, state_group, txn_device_id, txn_id, json, topological_ordering, late) \
 SELECT value ->> 0, value ->> 1, value ->> 2, NULL, value ->> 3, value ->> 4, value ->> 5, value ->> 6, \
 value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11, value ->> 12, value ->> 13, \
 value ->> 14, value ->> 15 FROM json_each($1) WHERE true ORDER BY key;\
INSERT INTO event_edges (event_id, prev_event_id, prev_absent) SELECT value ->> 0, value ->> 1, ",
    prev_absent!("value ->> 1"),
    " FROM json_each($2) WHERE true ON CONFLICT DO NOTHING;\
DELETE FROM forward_extremities WHERE (room_id, event_id) IN \
 (SELECT value ->> 0, value ->> 1 FROM json_each($3));\
INSERT INTO forward_extremities (room_id, event_id) SELECT value ->> 0, value ->> 1 FROM json_each($4);\
INSERT INTO transaction_ids (user_id, device_id, txn_id, event_id, created_ts) \
 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each($5);\
SELECT json_group_array(json_array(event_id, stream_ordering)) FROM events \
 WHERE event_id IN (SELECT value ->> 0 FROM json_each($1))"
);

/// An event's row as `$1` carries it, in the order the query reads it.
type EventColumns<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
    i64,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    i64,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    i64,
    i64,
);

/// Rows as one JSON array, serialized straight from borrowed columns.
fn json_text(rows: &impl Serialize) -> StoreResult<String> {
    serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(e.into()).into())
}

/// Writes messages (events without a state key) in the caller's transaction: the same rows as
/// `Store::append_in` writes one by one. A message keeps its room's state group. Returns where
/// each landed, in `batch`'s order.
pub(super) async fn append_messages(
    tx: &mut Transaction<'static, Any>,
    batch: &[Appending],
) -> StoreResult<Vec<Placed>> {
    let mut events: Vec<EventColumns> = Vec::with_capacity(batch.len());
    let mut edges: Vec<(&str, &str)> = Vec::new();
    let mut txns: Vec<(&str, &str, String, &str, i64)> = Vec::new();
    // Every prev event (room, event) stops being an extremity, those of this batch included
    // ($3, each once); what is left of the batch (what no later message follows) becomes one.
    let mut followed: HashSet<(&str, &str)> = HashSet::new();
    for Appending {
        event,
        previous_group,
        ..
    } in batch
    {
        let txn = event.txn.as_ref();
        events.push((
            &event.event_id,
            &event.room_id,
            &event.event_type,
            &event.sender,
            event.depth,
            event.origin_server_ts,
            event.redacts.as_deref(),
            event.rel_type.as_deref(),
            event.relates_to.as_deref(),
            event.relation_key.as_deref(),
            previous_group.unwrap_or(0),
            txn.map(|t| t.device_id.as_str()),
            txn.map(|t| t.txn_id.as_str()),
            &event.json,
            event.topo,
            i64::from(event.late),
        ));
        for prev in &event.prev_events {
            edges.push((&event.event_id, prev));
            followed.insert((&event.room_id, prev));
        }
        if let Some(txn) = txn {
            txns.push((
                &event.sender,
                &txn.device_id,
                txn.key(),
                &event.event_id,
                event.origin_server_ts,
            ));
        }
    }
    let added: Vec<(&str, &str)> = batch
        .iter()
        .map(|a| (a.event.room_id.as_str(), a.event.event_id.as_str()))
        .filter(|key| !followed.contains(key))
        .collect();
    let rows = q(SQL)
        .bind(json_text(&events)?)
        .bind(json_text(&edges)?)
        .bind(json_text(&followed)?)
        .bind(json_text(&added)?)
        .bind(json_text(&txns)?)
        // fetch_all: every statement runs (fetch_one stops at the first statement's result).
        .fetch_all(&mut **tx)
        .await?;
    let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    let placed: String = row.try_get(0)?;
    let placed: Vec<(String, i64)> =
        serde_json::from_str(&placed).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let placed: HashMap<String, i64> = placed.into_iter().collect();
    batch
        .iter()
        .map(|a| {
            let stream_ordering = *placed
                .get(&a.event.event_id)
                .ok_or_else(|| StoreError::Corrupt(format!("{} was not stored", a.event.event_id)))?;
            Ok(Placed {
                stream_ordering,
                state_group: a.previous_group.unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use futures_util::future::join_all;
    use serde_json::json;
    use sqlx::Row;

    use crate::{
        rooms::{
            EventSpec,
            timeline::{
                pdu_of,
                tests::{alice, public_room},
            },
        },
        services::TestServices,
        store::Txn,
    };

    /// Bodies JSON and SQL both treat specially: quotes, backslashes, a NUL, a text that spells
    /// an escape, a lone-surrogate escape spelled out, astral characters, SQL.
    const AWKWARD: [&str; 6] = [
        "\"quoted\" and \\ back\\slashed",
        "nul \u{0} inside",
        "\\u0041 is not A",
        "\\ud800 alone",
        "🏠 héarth ∑",
        "'); DROP TABLE events; --",
    ];

    /// Sends queued together are stored as one batch: each event reads back exactly, stream
    /// positions follow the order they were sent in, each event follows the one before it in
    /// its room, each room is left with one forward extremity, and a retry of a transaction
    /// queued in the same batch is the same event.
    #[tokio::test]
    async fn a_batch_of_messages_in_two_rooms_reads_back_exactly() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let rooms = [public_room(svc).await, public_room(svc).await];
        let request = |i: usize| {
            let room_id = rooms[i % 2].clone();
            let body = format!("{} #{i}", AWKWARD[i % AWKWARD.len()]);
            let spec = EventSpec::message("m.room.message", json!({ "msgtype": "m.text", "body": body }));
            // Every other send with a transaction ID.
            let txn = i.is_multiple_of(2).then(|| Txn {
                device_id: "DEVICE".into(),
                scope: format!("send/{room_id}/m.room.message"),
                txn_id: format!("t{i}"),
            });
            async move { (i, svc.timeline.append(svc, &room_id, alice(), spec, txn).await) }
        };
        // The last is a retry of the first.
        let sends: Vec<_> = (0..23).chain([0]).map(request).collect();
        let mut sent = join_all(sends).await;
        let retry = sent.pop().unwrap().1.expect("retry answered");
        let first = sent[0].1.as_ref().expect("sent").clone();
        assert_eq!(
            retry.event_id, first.event_id,
            "a retried transaction is one event"
        );

        let mut last_stream = 0;
        let mut last_in_room = [None, None];
        for (i, appended) in &sent {
            let appended = appended.as_ref().expect("sent");
            assert!(
                appended.stream_ordering > last_stream,
                "positions follow the sending order"
            );
            last_stream = appended.stream_ordering;
            let row = svc
                .store
                .event(appended.event_id.as_str())
                .await
                .unwrap()
                .expect("stored");
            assert_eq!(row.stream_ordering, appended.stream_ordering);
            let pdu = pdu_of(&row).expect("a PDU");
            let content: serde_json::Value = serde_json::from_str(pdu.content.get()).unwrap();
            let body = format!("{} #{i}", AWKWARD[i % AWKWARD.len()]);
            assert_eq!(content["body"], body.as_str());
            let room = i % 2;
            if let Some(before) = &last_in_room[room] {
                assert_eq!(pdu.prev_events, vec![ruma::OwnedEventId::clone(before)]);
            }
            last_in_room[room] = Some(appended.event_id.clone());
        }
        for (room, last) in rooms.iter().zip(last_in_room) {
            let extremities = svc.store.forward_extremities(room.as_str()).await.unwrap();
            let extremities: Vec<&str> = extremities.iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(extremities, vec![last.unwrap().as_str()]);
        }
        // Every prev event was here: no edge waits for a backfill (none is indexed for it).
        let row = sqlx::query("SELECT COUNT(*), SUM(prev_absent) FROM event_edges")
            .fetch_one(&svc.store.pool)
            .await
            .unwrap();
        assert!(row.get::<i64, _>(0) > 23, "the batch's edges are stored");
        assert_eq!(row.get::<i64, _>(1), 0, "no prev event was absent");
    }
}
