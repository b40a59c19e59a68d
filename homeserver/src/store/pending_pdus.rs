//! PDUs waiting for a prev event (`federation_pending_pdus`, see `federation::pending`). A PDU
//! of a room encrypted at rest is stored sealed under the room's data key, like `events.json`.

use sqlx::Row;

use super::{Store, StoreResult, q};
use crate::at_rest;

/// A PDU refused for a missing prev event, kept to be tried again.
#[derive(Debug, Clone)]
pub struct PendingPdu {
    pub event_id: String,
    pub origin: String,
    pub json: String,
    pub attempts: i64,
    pub next_try_ts: i64,
}

impl Store {
    /// Keeps a PDU to try again from `next_try_ts`; one already kept keeps its attempts.
    #[allow(clippy::too_many_arguments)]
    pub async fn keep_pending_pdu(
        &self,
        event_id: &str,
        room_id: &str,
        origin: &str,
        json: &str,
        reason: &str,
        next_try_ts: i64,
        now: i64,
    ) -> StoreResult<()> {
        q("INSERT INTO federation_pending_pdus \
           (event_id, room_id, origin, json, reason, attempts, next_try_ts, received_ts) \
           VALUES ($1, $2, $3, $4, $5, 0, $6, $7) ON CONFLICT (event_id) DO UPDATE SET reason = excluded.reason")
        .bind(event_id.to_owned())
        .bind(room_id.to_owned())
        .bind(origin.to_owned())
        .bind(at_rest::seal(room_id, json).unwrap_or_else(|| json.to_owned()))
        .bind(reason.to_owned())
        .bind(next_try_ts)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// How many PDUs of a room are pending.
    pub async fn pending_pdu_count(&self, room_id: &str) -> StoreResult<i64> {
        let row = q("SELECT COUNT(*) FROM federation_pending_pdus WHERE room_id = $1")
            .bind(room_id.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }

    /// Up to `limit` pending PDUs of a room, oldest received first.
    pub async fn pending_pdus_of_room(&self, room_id: &str, limit: i64) -> StoreResult<Vec<PendingPdu>> {
        let rows = q(
            "SELECT event_id, origin, json, attempts, next_try_ts FROM federation_pending_pdus \
                      WHERE room_id = $1 ORDER BY received_ts, event_id LIMIT $2",
        )
        .bind(room_id.to_owned())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PendingPdu {
                event_id: r.get(0),
                origin: r.get(1),
                json: at_rest::open(room_id, r.get(2)),
                attempts: r.get(3),
                next_try_ts: r.get(4),
            })
            .collect())
    }

    /// The rooms with a pending PDU due by `now`.
    pub async fn rooms_with_due_pending_pdus(&self, now: i64) -> StoreResult<Vec<String>> {
        let rows = q("SELECT DISTINCT room_id FROM federation_pending_pdus WHERE next_try_ts <= $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// One more failed attempt: the reason now, and when to try next.
    pub async fn pending_pdu_tried(&self, event_id: &str, reason: &str, next_try_ts: i64) -> StoreResult<()> {
        q(
            "UPDATE federation_pending_pdus SET attempts = attempts + 1, reason = $2, next_try_ts = $3 \
           WHERE event_id = $1",
        )
        .bind(event_id.to_owned())
        .bind(reason.to_owned())
        .bind(next_try_ts)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn drop_pending_pdu(&self, event_id: &str) -> StoreResult<()> {
        q("DELETE FROM federation_pending_pdus WHERE event_id = $1")
            .bind(event_id.to_owned())
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
