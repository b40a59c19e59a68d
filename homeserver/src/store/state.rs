//! Room state: the current state table and state groups (state at every event, as deltas).

use std::collections::HashMap;

use sqlx::{Any, Row, Transaction};

use super::{NewEvent, Store, StoreResult, q, qs};

/// (event type, state key) → event ID.
pub type StateMap = HashMap<(String, String), String>;

/// After this many deltas in a row a group is written as a full snapshot, bounding the reads
/// needed to rebuild state while keeping most groups one row.
pub(super) const MAX_DELTA_CHAIN: i64 = 50;

/// A row of `history_visibility_changes`.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub at: i64,
    /// Its place in the room's topological order.
    pub topo: super::Topo,
    /// The room's `m.room.create` (else an `m.room.history_visibility`).
    pub create: bool,
    /// Known outside the timeline (the state a remote join adopted).
    pub outlier: bool,
    /// The PDU of a history visibility event (empty for the create event).
    pub json: String,
}

impl Store {
    /// The room's current state.
    pub async fn current_state(&self, room_id: &str) -> StoreResult<StateMap> {
        let rows = q("SELECT type, state_key, event_id FROM current_state WHERE room_id = $1")
            .bind(room_id.to_owned())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }

    /// Chosen entries of the current state with their PDUs: ((type, state key), event ID, JSON).
    pub async fn current_state_entries(
        &self,
        room_id: &str,
        keys: &[(String, String)],
    ) -> StoreResult<Vec<((String, String), String, String)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let conditions: Vec<String> = (0..keys.len())
            .map(|i| format!("(c.type = ${} AND c.state_key = ${})", 2 * i + 2, 2 * i + 3))
            .collect();
        let sql = format!(
            "SELECT c.type, c.state_key, c.event_id, e.json FROM current_state c \
             JOIN events e ON e.event_id = c.event_id WHERE c.room_id = $1 AND ({})",
            conditions.join(" OR ")
        );
        let mut query = qs(sql).bind(room_id.to_owned());
        for (event_type, state_key) in keys {
            query = query.bind(event_type.clone()).bind(state_key.clone());
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    (r.get(0), r.get(1)),
                    r.get(2),
                    super::at_rest::open(room_id, r.get(3)),
                )
            })
            .collect())
    }

    /// One entry of the current state.
    pub async fn current_state_event(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> StoreResult<Option<String>> {
        let row = q("SELECT event_id FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3")
            .bind(room_id.to_owned())
            .bind(event_type.to_owned())
            .bind(state_key.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Users with the given membership in the room now.
    pub async fn members_with(&self, room_id: &str, membership: &str) -> StoreResult<Vec<String>> {
        let rows = q(
            "SELECT state_key FROM current_state WHERE room_id = $1 AND type = 'm.room.member' \
                      AND membership = $2 ORDER BY stream_ordering",
        )
        .bind(room_id.to_owned())
        .bind(membership.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Users of `server` who ever had a membership in the room (joined, invited, left…), in
    /// the order they first appeared, at most `limit`.
    pub async fn room_users_of_server(
        &self,
        room_id: &str,
        server: &str,
        limit: i64,
    ) -> StoreResult<Vec<String>> {
        // Server names hold no `%` or `_` (the spec's grammar), so the pattern is exact but for
        // users whose localpart ends like a server name, filtered out below.
        let rows = q(
            "SELECT user_id FROM room_memberships WHERE room_id = $1 AND user_id LIKE $2 \
             GROUP BY user_id ORDER BY MIN(stream_ordering) LIMIT $3",
        )
        .bind(room_id.to_owned())
        .bind(format!("%:{server}"))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| r.get::<String, _>(0))
            .filter(|u| ruma::UserId::parse(u.as_str()).is_ok_and(|u| u.server_name() == server))
            .collect())
    }

    /// The user's current membership in the room.
    pub async fn membership(&self, room_id: &str, user_id: &str) -> StoreResult<Option<String>> {
        let row = q(
            "SELECT membership FROM current_state WHERE room_id = $1 AND type = 'm.room.member' \
                     AND state_key = $2",
        )
        .bind(room_id.to_owned())
        .bind(user_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// Every room the user has a membership in: (room ID, membership, stream position of it).
    pub async fn rooms_of_user(&self, user_id: &str) -> StoreResult<Vec<(String, String, i64)>> {
        let rows = q("SELECT room_id, membership, stream_ordering FROM current_state \
                      WHERE type = 'm.room.member' AND state_key = $1")
        .bind(user_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// The user's membership in each room as of stream position `at`:
    /// (room ID, membership, stream position of that membership event).
    pub async fn memberships_at(&self, user_id: &str, at: i64) -> StoreResult<Vec<(String, String, i64)>> {
        let rows = q(
            "SELECT room_id, membership, stream_ordering FROM room_memberships \
                      WHERE user_id = $1 AND stream_ordering <= $2 ORDER BY stream_ordering",
        )
        .bind(user_id.to_owned())
        .bind(at)
        .fetch_all(&self.pool)
        .await?;
        let mut latest: HashMap<String, (String, i64)> = HashMap::new();
        for r in rows {
            latest.insert(r.get(0), (r.get(1), r.get(2)));
        }
        Ok(latest.into_iter().map(|(room, (m, s))| (room, m, s)).collect())
    }

    /// Each room's `m.room.history_visibility` events and its `m.room.create`, in stream order,
    /// timeline and outlier ones (soft-failed ones never took effect here). Where the create
    /// event is tells whether the room's history here goes back to its start.
    pub async fn history_visibility_changes(
        &self,
        room_ids: &[String],
    ) -> StoreResult<HashMap<String, Vec<HistoryRow>>> {
        let mut out: HashMap<String, Vec<HistoryRow>> = HashMap::new();
        for chunk in room_ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT room_id, stream_ordering, json, type, outlier, topological_ordering FROM events WHERE room_id IN ({}) \
                 AND type IN ('m.room.history_visibility', 'm.room.create') AND state_key = '' \
                 AND outlier <> 2 ORDER BY stream_ordering",
                placeholders.join(", ")
            );
            let mut query = qs(sql);
            for id in chunk {
                query = query.bind(id.clone());
            }
            for r in query.fetch_all(&self.pool).await? {
                let room_id: String = r.get(0);
                let create = r.get::<String, _>(3) == "m.room.create";
                let json = if create {
                    String::new()
                } else {
                    super::at_rest::open(&room_id, r.get(2))
                };
                out.entry(room_id).or_default().push(HistoryRow {
                    at: r.get(1),
                    topo: super::Topo {
                        depth: r.get(5),
                        stream: r.get(1),
                    },
                    create,
                    outlier: r.get::<i64, _>(4) == 1,
                    json,
                });
            }
        }
        Ok(out)
    }

    /// A user's membership changes in each of the rooms, in stream order: room → (stream
    /// position, the event's place in topological order, membership).
    pub async fn membership_changes(
        &self,
        user_id: &str,
        room_ids: &[String],
    ) -> StoreResult<HashMap<String, Vec<(i64, super::Topo, String)>>> {
        let mut out: HashMap<String, Vec<(i64, super::Topo, String)>> = HashMap::new();
        for chunk in room_ids.chunks(500) {
            let placeholders: Vec<String> = (2..=chunk.len() + 1).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT m.room_id, m.stream_ordering, m.membership, e.topological_ordering, e.stream_ordering \
                 FROM room_memberships m JOIN events e ON e.event_id = m.event_id \
                 WHERE m.user_id = $1 AND m.room_id IN ({}) ORDER BY m.stream_ordering",
                placeholders.join(", ")
            );
            let mut query = qs(sql).bind(user_id.to_owned());
            for id in chunk {
                query = query.bind(id.clone());
            }
            for r in query.fetch_all(&self.pool).await? {
                let room_id: String = r.get(0);
                let json = super::at_rest::open(&room_id, r.get(2));
                let topo = super::Topo {
                    depth: r.get(3),
                    stream: r.get(4),
                };
                out.entry(room_id).or_default().push((r.get(1), topo, json));
            }
        }
        Ok(out)
    }

    /// The state group after the room's event at a stream position.
    pub async fn state_group_at(&self, room_id: &str, stream: i64) -> StoreResult<Option<i64>> {
        let row =
            q("SELECT state_group FROM events WHERE room_id = $1 AND stream_ordering = $2 AND outlier = 0")
                .bind(room_id.to_owned())
                .bind(stream)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Rooms two users are both joined to.
    pub async fn shared_rooms(&self, a: &str, b: &str) -> StoreResult<Vec<String>> {
        let rows = q(
            "SELECT x.room_id FROM current_state x JOIN current_state y ON x.room_id = y.room_id \
                      WHERE x.type = 'm.room.member' AND y.type = 'm.room.member' AND x.state_key = $1 \
                      AND y.state_key = $2 AND x.membership = 'join' AND y.membership = 'join'",
        )
        .bind(a.to_owned())
        .bind(b.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The full state recorded for a state group.
    pub async fn state_of_group(&self, group: i64) -> StoreResult<StateMap> {
        let rows = q("WITH RECURSIVE chain(id, prev, n) AS ( \
                        SELECT id, prev_group, 0 FROM state_groups WHERE id = $1 \
                        UNION ALL \
                        SELECT g.id, g.prev_group, c.n + 1 FROM state_groups g JOIN chain c ON g.id = c.prev) \
                      SELECT e.type, e.state_key, e.event_id FROM chain c \
                      JOIN state_group_entries e ON e.state_group = c.id ORDER BY c.n DESC")
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        // Oldest group first, so later deltas overwrite earlier entries.
        Ok(rows
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }

    /// Records the state after a new state event and updates the current state. Returns the
    /// new state group and the event the new one replaced, if any.
    pub(super) async fn apply_state_event(
        tx: &mut Transaction<'static, Any>,
        event: &NewEvent,
        state_key: &str,
        previous_group: Option<i64>,
        stream_ordering: i64,
    ) -> StoreResult<(i64, Option<String>)> {
        let (room_id, event_type, event_id) = (&event.room_id, &event.event_type, &event.event_id);
        let membership = event.membership.as_deref();
        let chain_len = match previous_group {
            Some(g) => q("SELECT chain_len FROM state_groups WHERE id = $1")
                .bind(g)
                .fetch_one(&mut **tx)
                .await?
                .get::<i64, _>(0),
            None => 0,
        };
        let snapshot = previous_group.is_none() || chain_len + 1 >= MAX_DELTA_CHAIN;
        let (prev, len) = if snapshot {
            (None, 0)
        } else {
            (previous_group, chain_len + 1)
        };
        let group: i64 =
            q("INSERT INTO state_groups (room_id, prev_group, chain_len) VALUES ($1, $2, $3) RETURNING id")
                .bind(room_id.to_owned())
                .bind(prev)
                .bind(len)
                .fetch_one(&mut **tx)
                .await?
                .get(0);
        if snapshot {
            q(
                "INSERT INTO state_group_entries (state_group, type, state_key, event_id) \
               SELECT $1, type, state_key, event_id FROM current_state WHERE room_id = $2",
            )
            .bind(group)
            .bind(room_id.to_owned())
            .execute(&mut **tx)
            .await?;
        }
        q("INSERT INTO state_group_entries (state_group, type, state_key, event_id) VALUES ($1, $2, $3, $4) \
           ON CONFLICT (state_group, type, state_key) DO UPDATE SET event_id = excluded.event_id")
        .bind(group)
        .bind(event_type.to_owned())
        .bind(state_key.to_owned())
        .bind(event_id.to_owned())
        .execute(&mut **tx)
        .await?;

        let replaced: Option<String> =
            q("SELECT event_id FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3")
                .bind(room_id.to_owned())
                .bind(event_type.to_owned())
                .bind(state_key.to_owned())
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| r.get(0));
        q("INSERT INTO current_state (room_id, type, state_key, event_id, membership, stream_ordering) \
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (room_id, type, state_key) DO UPDATE SET \
           event_id = excluded.event_id, membership = excluded.membership, stream_ordering = excluded.stream_ordering")
        .bind(room_id.to_owned())
        .bind(event_type.to_owned())
        .bind(state_key.to_owned())
        .bind(event_id.to_owned())
        .bind(membership.map(ToOwned::to_owned))
        .bind(stream_ordering)
        .execute(&mut **tx)
        .await?;
        Ok((group, replaced))
    }
}
