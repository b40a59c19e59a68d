//! Backfilled events: history of a remotely joined room from before this server's first event,
//! fetched from the room's other servers. They enter the timeline at negative stream positions
//! (below every event this server had), so every scan by stream position places them before
//! the existing history while `/sync`, which reads ranges above its tokens (never below 0),
//! never sees them as new. No forward extremity, current state, membership history or
//! notification is written for them.

use sqlx::{Any, Row, Transaction};

use super::{NewEvent, StateMap, Store, StoreResult, Stream, q, state::MAX_DELTA_CHAIN};

/// How many of a room's oldest timeline events are looked at for missing prev events.
const OLDEST_LOOKED_AT: i64 = 50;

/// The lowest topological position among the DAG events that name `$1` as a prev event, read
/// through `event_edges_by_absent_prev` (without it, every edge on the server, per backfilled
/// event). `$1` is not in the DAG, so every such edge was stored with `prev_absent`.
const CHILDREN_LOWEST_TOPO: &str = "SELECT MIN(e.topological_ordering) FROM event_edges d \
     JOIN events e ON e.event_id = d.event_id \
     WHERE d.prev_event_id = $1 AND d.prev_absent = 1 AND e.outlier IN (0, 2)";

impl Store {
    /// The prev events of the room's oldest timeline events that are not in the DAG here and
    /// were not rejected: where a backfill starts (at most `limit`).
    pub async fn backward_extremities(&self, room_id: &str, limit: i64) -> StoreResult<Vec<String>> {
        let rows = q(
            "SELECT DISTINCT d.prev_event_id FROM event_edges d WHERE d.event_id IN \
               (SELECT event_id FROM events WHERE room_id = $1 AND outlier = 0 \
               ORDER BY topological_ordering, stream_ordering LIMIT $2) \
             AND NOT EXISTS (SELECT 1 FROM events p WHERE p.event_id = d.prev_event_id AND p.outlier IN (0, 2)) \
             AND NOT EXISTS (SELECT 1 FROM unserved_events u WHERE u.event_id = d.prev_event_id) \
             ORDER BY d.prev_event_id LIMIT $3",
        )
        .bind(room_id.to_owned())
        .bind(OLDEST_LOOKED_AT)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The lowest stream position of any event (0 when there are none or none below 0).
    pub async fn lowest_stream_ordering(&self) -> StoreResult<i64> {
        let row = q("SELECT MIN(stream_ordering) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Option<i64>, _>(0).unwrap_or(0).min(0))
    }

    /// Stores a backfilled event at `stream_ordering` (below 0) with its DAG edges and the state
    /// after it: `before_group` holds the state before it; when that state is known (`before`),
    /// a state event gets a new group (a delta of `before_group`, or a snapshot once the chain
    /// is long) and `replaces_state` (its `prev_content`). Without `before` (the state before
    /// it could not be had) it takes `before_group` as it is. An outlier row of the same event
    /// is replaced. A redaction that does not apply is `held_back` (`outlier = 2`: in the DAG,
    /// never shown to clients). Returns whether it was stored (an event already in the DAG is
    /// left alone).
    pub async fn insert_backfilled(
        &self,
        event: &NewEvent,
        stream_ordering: i64,
        before_group: i64,
        before: Option<&StateMap>,
        held_back: bool,
    ) -> StoreResult<bool> {
        let sealed = super::at_rest::sealed(std::slice::from_ref(event));
        let event = &sealed[0];
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        q("DELETE FROM events WHERE event_id = $1 AND outlier = 1")
            .bind(event.event_id.clone())
            .execute(&mut *tx)
            .await?;
        // Its place: the claimed depth, but below every child already here (the events that
        // named it as a prev event), so a lying depth cannot lift it among later history.
        let children: Option<i64> = q(CHILDREN_LOWEST_TOPO)
            .bind(event.event_id.clone())
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        let topo = children.map_or(event.topo, |c| event.topo.min(c - 1));
        let (state_group, replaces_state) = match (&event.state_key, before) {
            (Some(key), Some(before)) => {
                let replaced = before.get(&(event.event_type.clone(), key.clone())).cloned();
                let group = Self::group_after_in(&mut tx, event, key, before_group, before).await?;
                (group, replaced)
            }
            _ => (before_group, None),
        };
        let inserted = q(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth, \
             origin_server_ts, redacts, rel_type, relates_to, relation_key, state_group, json, outlier, \
             topological_ordering, replaces_state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $17, $15, $16) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(stream_ordering)
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
        .bind(event.json.clone())
        .bind(topo)
        .bind(replaces_state)
        .bind(if held_back { 2_i64 } else { 0 })
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if inserted {
            Self::insert_edges_in(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// The state group after a backfilled state event whose state before is `before` (group
    /// `before_group`): a delta naming the event, or a full snapshot when the delta chain would
    /// grow too long (as `apply_state_event`, without touching the current state).
    async fn group_after_in(
        tx: &mut Transaction<'static, Any>,
        event: &NewEvent,
        state_key: &str,
        before_group: i64,
        before: &StateMap,
    ) -> StoreResult<i64> {
        let chain_len: Option<i64> = q("SELECT chain_len FROM state_groups WHERE id = $1")
            .bind(before_group)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.get(0));
        let (prev, len) = match chain_len {
            Some(n) if n + 1 < MAX_DELTA_CHAIN => (Some(before_group), n + 1),
            _ => (None, 0),
        };
        let group: i64 =
            q("INSERT INTO state_groups (room_id, prev_group, chain_len) VALUES ($1, $2, $3) RETURNING id")
                .bind(event.room_id.clone())
                .bind(prev)
                .bind(len)
                .fetch_one(&mut **tx)
                .await?
                .get(0);
        let mut entries: Vec<(&str, &str, &str)> = Vec::new();
        if prev.is_none() {
            entries.extend(
                before
                    .iter()
                    .filter(|((t, k), _)| !(t == &event.event_type && k == state_key))
                    .map(|((t, k), id)| (t.as_str(), k.as_str(), id.as_str())),
            );
        }
        entries.push((&event.event_type, state_key, &event.event_id));
        for (event_type, key, event_id) in entries {
            q("INSERT INTO state_group_entries (state_group, type, state_key, event_id) VALUES ($1, $2, $3, $4)")
                .bind(group)
                .bind(event_type.to_owned())
                .bind(key.to_owned())
                .bind(event_id.to_owned())
                .execute(&mut **tx)
                .await?;
        }
        Ok(group)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::CHILDREN_LOWEST_TOPO;
    use crate::{services::TestServices, store::NewEvent};

    fn dag_event(event_id: &str, depth: i64, prev_events: &[&str]) -> NewEvent {
        NewEvent {
            depth,
            topo: depth,
            prev_events: prev_events.iter().map(|p| (*p).to_owned()).collect(),
            ..NewEvent::test_message("!hist:remote.test", event_id)
        }
    }

    /// An edge records whether its prev event was in the DAG when it was stored; a prev event
    /// backfilled later finds its children through those edges and goes below them, whatever
    /// depth it claims.
    #[tokio::test]
    async fn a_backfilled_event_goes_below_the_children_stored_before_it() {
        let test = TestServices::new().await;
        let store = &test.svc.store;
        // One number about an event.
        let read = |sql: &'static str, event_id: &'static str| async move {
            sqlx::query(sql)
                .bind(event_id)
                .fetch_one(&store.pool)
                .await
                .unwrap()
                .get::<i64, _>(0)
        };
        let topo = |event_id| {
            read(
                "SELECT topological_ordering FROM events WHERE event_id = $1",
                event_id,
            )
        };
        let absent = |event_id| {
            read(
                "SELECT prev_absent FROM event_edges WHERE event_id = $1",
                event_id,
            )
        };
        // The child first, naming a prev event not here; then one naming the child (here).
        // The parent last, claiming to be far above its child.
        let events = [
            (dag_event("$child", 5, &["$parent"]), -10),
            (dag_event("$grandchild", 6, &["$child"]), -5),
            (dag_event("$parent", 50, &[]), -20),
        ];
        for (event, position) in &events {
            let stored = store.insert_backfilled(event, *position, 0, None, false);
            assert!(stored.await.unwrap());
        }
        // As they were when stored: the child's prev event was not here, the grandchild's was.
        assert_eq!(absent("$child").await, 1);
        assert_eq!(absent("$grandchild").await, 0);
        assert!(topo("$parent").await < topo("$child").await);
    }

    /// Finding a backfilled event's children reads the edges that name it, not every edge.
    #[tokio::test]
    async fn the_children_of_a_backfilled_event_are_found_through_an_index() {
        let test = TestServices::new().await;
        let explain = format!("EXPLAIN QUERY PLAN {CHILDREN_LOWEST_TOPO}");
        // Two constants joined: nothing from outside.
        let plan: Vec<String> = sqlx::query::<sqlx::Any>(sqlx::AssertSqlSafe(explain))
            .bind("$missing:hearth.test")
            .fetch_all(&test.svc.store.pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>(3))
            .collect();
        assert!(
            plan.iter()
                .any(|step| step.contains("event_edges_by_absent_prev")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|step| step.starts_with("SCAN d")), "{plan:?}");
    }
}
