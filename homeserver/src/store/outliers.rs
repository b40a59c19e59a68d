//! Events outside the client timeline: outliers (in `events` with `outlier = 1`, skipped by
//! every timeline, sync and state-group query), soft-failed events (`outlier = 2`: part of the
//! DAG, with a state group, but skipped by every client read like outliers), rejected events
//! (`unserved_events`, never served, outside the DAG), and room state that comes from elsewhere
//! than the events before it (the state a remote join answers with, the resolution of several
//! forward extremities).

use sqlx::{Any, Row, Transaction};

use super::{NewEvent, RoomRow, Store, StoreResult, Stream, q, qs};

/// Where a stored event stands (`events.outlier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventPlace {
    /// 0: in the timeline.
    Timeline,
    /// 1: known, outside the DAG (auth chains, a join's state).
    Outlier,
    /// 2: in the DAG, never shown to clients.
    SoftFailed,
}

/// One entry of a room state written as a whole.
#[derive(Debug, Clone)]
pub struct StateEntry {
    pub event_type: String,
    pub state_key: String,
    pub event_id: String,
    /// `content.membership` of an `m.room.member` event.
    pub membership: Option<String>,
}

impl Store {
    /// Stores events as outliers (known events that are not part of the timeline); events
    /// already stored are left as they are.
    pub async fn insert_outliers(&self, events: &[NewEvent]) -> StoreResult<()> {
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        Self::insert_outliers_in(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An event's DAG edges to its prev events (kept once however often it is stored).
    pub(super) async fn insert_edges_in(
        tx: &mut Transaction<'static, Any>,
        event: &NewEvent,
    ) -> StoreResult<()> {
        for prev in &event.prev_events {
            q(concat!(
                "INSERT INTO event_edges (event_id, prev_event_id, prev_absent) VALUES ($1, $2, ",
                prev_absent!("$2"),
                ") ON CONFLICT DO NOTHING"
            ))
            .bind(event.event_id.clone())
            .bind(prev.clone())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn insert_outliers_in(tx: &mut Transaction<'static, Any>, events: &[NewEvent]) -> StoreResult<()> {
        for event in events {
            q(
                "INSERT INTO events (event_id, room_id, type, state_key, sender, depth, origin_server_ts, \
               redacts, rel_type, relates_to, relation_key, state_group, json, outlier, topological_ordering) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, NULL, 0, $8, 1, $6) \
               ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(event.event_id.clone())
            .bind(event.room_id.clone())
            .bind(event.event_type.clone())
            .bind(event.state_key.clone())
            .bind(event.sender.clone())
            .bind(event.depth)
            .bind(event.origin_server_ts)
            .bind(event.json.clone())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Stores a soft-failed event: its row (`outlier = 2`), its DAG edges and the state after it
    /// (a full snapshot of `before` with the event applied, for a state event; soft-failed state
    /// events are rare), so later events may name it as a prev event. Not a forward extremity,
    /// not the current state, no membership history, no notification: no client hears of it.
    /// An outlier row of the same event is replaced.
    pub async fn insert_soft_failed(&self, event: &NewEvent, before_group: i64) -> StoreResult<()> {
        let state = match &event.state_key {
            Some(key) => {
                let mut map = self.state_of_group(before_group).await?;
                map.insert((event.event_type.clone(), key.clone()), event.event_id.clone());
                Some(
                    map.into_iter()
                        .map(|((event_type, state_key), event_id)| StateEntry {
                            event_type,
                            state_key,
                            event_id,
                            membership: None,
                        })
                        .collect::<Vec<_>>(),
                )
            }
            None => None,
        };
        let sealed = super::at_rest::sealed(std::slice::from_ref(event));
        let event = &sealed[0];
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        let group = match &state {
            Some(entries) => Self::snapshot_group_in(&mut tx, &event.room_id, entries).await?,
            None => before_group,
        };
        q("DELETE FROM events WHERE event_id = $1 AND outlier = 1")
            .bind(event.event_id.clone())
            .execute(&mut *tx)
            .await?;
        q(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, depth, origin_server_ts, \
           redacts, rel_type, relates_to, relation_key, state_group, json, outlier, topological_ordering) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, NULL, $8, $9, 2, $10) \
           ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event.event_id.clone())
        .bind(event.room_id.clone())
        .bind(event.event_type.clone())
        .bind(event.state_key.clone())
        .bind(event.sender.clone())
        .bind(event.depth)
        .bind(event.origin_server_ts)
        .bind(group)
        .bind(event.json.clone())
        .bind(event.topo)
        .execute(&mut *tx)
        .await?;
        Self::insert_edges_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a received redaction that does not apply (`federation::inbound::held_back`): like
    /// a soft-failed event (`outlier = 2`: in the DAG, served to other servers, never to
    /// clients), with the state before it (a redaction changes no state), but a forward
    /// extremity of the room like any timeline event: the DAG goes on from it. An outlier row
    /// of the same event is replaced.
    pub async fn insert_held_back(&self, event: &NewEvent, before_group: i64) -> StoreResult<()> {
        let sealed = super::at_rest::sealed(std::slice::from_ref(event));
        let event = &sealed[0];
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        q("DELETE FROM events WHERE event_id = $1 AND outlier = 1")
            .bind(event.event_id.clone())
            .execute(&mut *tx)
            .await?;
        let inserted = q(
            "INSERT INTO events (event_id, room_id, type, state_key, sender, depth, origin_server_ts, \
           redacts, rel_type, relates_to, relation_key, state_group, json, outlier, topological_ordering, late) \
           VALUES ($1, $2, $3, NULL, $4, $5, $6, NULL, $7, $8, NULL, $9, $10, 2, $11, $12) \
           ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event.event_id.clone())
        .bind(event.room_id.clone())
        .bind(event.event_type.clone())
        .bind(event.sender.clone())
        .bind(event.depth)
        .bind(event.origin_server_ts)
        .bind(event.rel_type.clone())
        .bind(event.relates_to.clone())
        .bind(before_group)
        .bind(event.json.clone())
        .bind(event.topo)
        .bind(i64::from(event.late))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if inserted {
            Self::insert_edges_in(&mut tx, event).await?;
            for prev in &event.prev_events {
                q("DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2")
                    .bind(event.room_id.clone())
                    .bind(prev.clone())
                    .execute(&mut *tx)
                    .await?;
            }
            q("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(event.room_id.clone())
                .bind(event.event_id.clone())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes an outlier row, so the event can enter the timeline (where it gets a stream
    /// position of its own). Timeline events are left alone.
    pub async fn drop_outlier(&self, event_id: &str) -> StoreResult<()> {
        q("DELETE FROM events WHERE event_id = $1 AND outlier = 1")
            .bind(event_id.to_owned())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records a rejected event (`kind`), which is never served. (Soft-failed events were kept
    /// here before they joined the DAG; such rows are still read as soft-failed.)
    pub async fn insert_unserved(
        &self,
        event_id: &str,
        room_id: &str,
        kind: &str,
        reason: &str,
        json: &str,
        now: i64,
    ) -> StoreResult<()> {
        q(
            "INSERT INTO unserved_events (event_id, room_id, kind, reason, json, received_ts) \
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id.to_owned())
        .bind(room_id.to_owned())
        .bind(kind.to_owned())
        .bind(reason.to_owned())
        .bind(json.to_owned())
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Why an event was not served (`kind`, `reason`), if it was rejected or soft-failed.
    pub async fn unserved(&self, event_id: &str) -> StoreResult<Option<(String, String)>> {
        let row = q("SELECT kind, reason FROM unserved_events WHERE event_id = $1")
            .bind(event_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Whether an event is an outlier (`None`: not stored).
    pub async fn is_outlier(&self, event_id: &str) -> StoreResult<Option<bool>> {
        Ok(self
            .event_place(event_id)
            .await?
            .map(|p| p == EventPlace::Outlier))
    }

    /// Where a stored event stands (`None`: not stored).
    pub async fn event_place(&self, event_id: &str) -> StoreResult<Option<EventPlace>> {
        let row = q("SELECT outlier FROM events WHERE event_id = $1")
            .bind(event_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| match r.get::<i64, _>(0) {
            0 => EventPlace::Timeline,
            2 => EventPlace::SoftFailed,
            _ => EventPlace::Outlier,
        }))
    }

    /// The events of the DAG (timeline and soft-failed, not outliers) among `event_ids`, each
    /// with its state group (the state after it) and depth.
    pub async fn dag_events_state(&self, event_ids: &[String]) -> StoreResult<Vec<(String, i64, i64)>> {
        let mut out = Vec::new();
        for chunk in event_ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT event_id, state_group, depth FROM events WHERE outlier IN (0, 2) AND event_id IN ({})",
                placeholders.join(", ")
            );
            let mut query = qs(sql);
            for id in chunk {
                query = query.bind(id.clone());
            }
            for r in query.fetch_all(&self.pool).await? {
                out.push((r.get(0), r.get(1), r.get(2)));
            }
        }
        Ok(out)
    }

    /// The state group after each of the room's forward extremities.
    pub async fn extremity_state_groups(&self, room_id: &str) -> StoreResult<Vec<i64>> {
        let rows = q("SELECT DISTINCT e.state_group FROM forward_extremities f \
                      JOIN events e ON e.event_id = f.event_id WHERE f.room_id = $1")
        .bind(room_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// A remote server's invite of a local user: the invite as an outlier, the membership change
    /// (so `/sync` lists the room under `invite`), and the stripped state to show with it.
    pub async fn store_remote_invite(
        &self,
        event: &NewEvent,
        room_version: &str,
        invite_state: &str,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        Self::insert_outliers_in(&mut tx, std::slice::from_ref(event)).await?;
        Self::outlier_membership_in(&mut tx, event).await?;
        q("INSERT INTO remote_invites (event_id, room_id, user_id, room_version, invite_state, received_ts) \
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING")
        .bind(event.event_id.clone())
        .bind(event.room_id.clone())
        .bind(event.state_key.clone().unwrap_or_default())
        .bind(room_version.to_owned())
        .bind(invite_state.to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A membership change of a local user in a room this server is not in (the leave that
    /// rejects a remote invite), stored as an outlier.
    pub async fn store_outlier_membership(&self, event: &NewEvent) -> StoreResult<()> {
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        Self::insert_outliers_in(&mut tx, std::slice::from_ref(event)).await?;
        Self::outlier_membership_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn outlier_membership_in(tx: &mut Transaction<'static, Any>, event: &NewEvent) -> StoreResult<()> {
        q("INSERT INTO room_memberships (event_id, room_id, user_id, sender, membership, stream_ordering) \
           SELECT e.event_id, e.room_id, $2, e.sender, $3, e.stream_ordering FROM events e WHERE e.event_id = $1 \
           ON CONFLICT (event_id) DO NOTHING")
        .bind(event.event_id.clone())
        .bind(event.state_key.clone().unwrap_or_default())
        .bind(event.membership.clone().unwrap_or_default())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The newest remote invite of a user into a room: (event ID, room version, stripped state
    /// JSON, the inviter's user ID).
    pub async fn remote_invite(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> StoreResult<Option<(String, String, String, String)>> {
        let row = q(
            "SELECT i.event_id, i.room_version, i.invite_state, e.sender FROM remote_invites i \
                     JOIN events e ON e.event_id = i.event_id WHERE i.user_id = $1 AND i.room_id = $2 \
                     ORDER BY e.stream_ordering DESC LIMIT 1",
        )
        .bind(user_id.to_owned())
        .bind(room_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
    }

    /// A user's newest membership change in a room (timeline or outlier), as `room_memberships`
    /// records it.
    pub async fn latest_membership(&self, user_id: &str, room_id: &str) -> StoreResult<Option<String>> {
        let row = q(
            "SELECT membership FROM room_memberships WHERE user_id = $1 AND room_id = $2 \
                     ORDER BY stream_ordering DESC LIMIT 1",
        )
        .bind(user_id.to_owned())
        .bind(room_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The state group matching the room's current state, for the next local event: the newest
    /// event's, or — when the forward extremities' states differ (a fork, resolved into
    /// `current_state`) — a new snapshot of the current state.
    pub async fn current_state_group(&self, room_id: &str) -> StoreResult<Option<i64>> {
        if self.extremity_state_groups(room_id).await?.len() <= 1 {
            return self.latest_state_group(room_id).await;
        }
        let mut tx = self.begin_write().await?;
        let group: i64 =
            q("INSERT INTO state_groups (room_id, prev_group, chain_len) VALUES ($1, NULL, 0) RETURNING id")
                .bind(room_id.to_owned())
                .fetch_one(&mut *tx)
                .await?
                .get(0);
        q(
            "INSERT INTO state_group_entries (state_group, type, state_key, event_id) \
           SELECT $1, type, state_key, event_id FROM current_state WHERE room_id = $2",
        )
        .bind(group)
        .bind(room_id.to_owned())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(group))
    }

    /// Where a room's timeline starts when it started elsewhere (a remote join): the first
    /// timeline event's JSON and the state group before it (`None` for rooms created here).
    /// Backfilled events (below 0) came before it and are not where it started.
    pub async fn timeline_start(&self, room_id: &str) -> StoreResult<Option<(String, i64)>> {
        let row = q(
            "SELECT e.json, g.prev_group FROM events e JOIN state_groups g ON g.id = e.state_group \
                     WHERE e.room_id = $1 AND e.outlier = 0 AND e.stream_ordering > 0 \
                     ORDER BY e.stream_ordering LIMIT 1",
        )
        .bind(room_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| Some((r.get::<String, _>(0), r.get::<Option<i64>, _>(1)?))))
    }

    /// A remote room this server joins: the room row (kept if it exists), the state and auth
    /// chain the resident server sent as outliers, the memberships of that state, and that state
    /// as a full state group and as the room's current state. Returns the group: the state before
    /// the join event.
    pub async fn adopt_remote_room(
        &self,
        room: &RoomRow,
        outliers: &[NewEvent],
        state: &[StateEntry],
        now: i64,
    ) -> StoreResult<i64> {
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        q(
            "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts) \
           VALUES ($1, $2, $3, 0, $4) ON CONFLICT (room_id) DO NOTHING",
        )
        .bind(room.room_id.clone())
        .bind(room.room_version.clone())
        .bind(room.creator.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Self::insert_outliers_in(&mut tx, outliers).await?;
        // The members in that state get their membership from the position their event has
        // here, so the history visibility at later events knows them (what a server whose user
        // joined before this server did may read).
        for entry in state.iter().filter(|e| e.event_type == "m.room.member") {
            let Some(membership) = &entry.membership else {
                continue;
            };
            q("INSERT INTO room_memberships (event_id, room_id, user_id, sender, membership, stream_ordering) \
               SELECT e.event_id, e.room_id, $2, e.sender, $3, e.stream_ordering FROM events e \
               WHERE e.event_id = $1 AND e.room_id = $4 ON CONFLICT (event_id) DO NOTHING")
            .bind(entry.event_id.clone())
            .bind(entry.state_key.clone())
            .bind(membership.clone())
            .bind(room.room_id.clone())
            .execute(&mut *tx)
            .await?;
        }
        let group = Self::snapshot_group_in(&mut tx, &room.room_id, state).await?;
        Self::replace_current_state_in(&mut tx, &room.room_id, state).await?;
        tx.commit().await?;
        Ok(group)
    }

    /// A full state group holding `state` (the resolved state before an event whose
    /// prev_events' states differ).
    pub async fn snapshot_group(&self, room_id: &str, state: &[StateEntry]) -> StoreResult<i64> {
        let mut tx = self.begin_write().await?;
        let group = Self::snapshot_group_in(&mut tx, room_id, state).await?;
        tx.commit().await?;
        Ok(group)
    }

    /// Sets the room's current state to `state` (the resolved state of its forward
    /// extremities).
    pub async fn set_current_state(&self, room_id: &str, state: &[StateEntry]) -> StoreResult<()> {
        let mut tx = self.begin_stream_write(Stream::Events).await?;
        Self::replace_current_state_in(&mut tx, room_id, state).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn snapshot_group_in(
        tx: &mut Transaction<'static, Any>,
        room_id: &str,
        state: &[StateEntry],
    ) -> StoreResult<i64> {
        let group: i64 =
            q("INSERT INTO state_groups (room_id, prev_group, chain_len) VALUES ($1, NULL, 0) RETURNING id")
                .bind(room_id.to_owned())
                .fetch_one(&mut **tx)
                .await?
                .get(0);
        for entry in state {
            q("INSERT INTO state_group_entries (state_group, type, state_key, event_id) VALUES ($1, $2, $3, $4)")
                .bind(group)
                .bind(entry.event_type.clone())
                .bind(entry.state_key.clone())
                .bind(entry.event_id.clone())
                .execute(&mut **tx)
                .await?;
        }
        Ok(group)
    }

    async fn replace_current_state_in(
        tx: &mut Transaction<'static, Any>,
        room_id: &str,
        state: &[StateEntry],
    ) -> StoreResult<()> {
        q("DELETE FROM current_state WHERE room_id = $1")
            .bind(room_id.to_owned())
            .execute(&mut **tx)
            .await?;
        for entry in state {
            q(
                "INSERT INTO current_state (room_id, type, state_key, event_id, membership, stream_ordering) \
               SELECT $1, $2, $3, $4, $5, e.stream_ordering FROM events e WHERE e.event_id = $4",
            )
            .bind(room_id.to_owned())
            .bind(entry.event_type.clone())
            .bind(entry.state_key.clone())
            .bind(entry.event_id.clone())
            .bind(entry.membership.clone())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}
