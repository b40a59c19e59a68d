//! Presence.

use sqlx::Row;

use super::{Store, StoreResult, Stream, q};

#[derive(Debug, Clone)]
pub struct PresenceRow {
    pub user_id: String,
    pub presence: String,
    pub status_msg: Option<String>,
    pub last_active_ts: i64,
}

impl Store {
    /// Stores a user's presence and returns its stream position.
    pub async fn put_presence(
        &self,
        user_id: &str,
        presence: &str,
        status_msg: Option<&str>,
        last_active_ts: i64,
    ) -> StoreResult<i64> {
        let mut tx = self.begin_stream_write(Stream::Presence).await?;
        let stream: i64 = q("INSERT INTO presence_stream (user_id) VALUES ($1) RETURNING stream_id")
            .bind(user_id.to_owned())
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        q("INSERT INTO presence (user_id, presence, status_msg, last_active_ts, stream_id) VALUES ($1, $2, $3, $4, $5) \
           ON CONFLICT (user_id) DO UPDATE SET presence = excluded.presence, status_msg = excluded.status_msg, \
           last_active_ts = excluded.last_active_ts, stream_id = excluded.stream_id")
        .bind(user_id.to_owned())
        .bind(presence.to_owned())
        .bind(status_msg.map(ToOwned::to_owned))
        .bind(last_active_ts)
        .bind(stream)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stream)
    }

    pub async fn presence(&self, user_id: &str) -> StoreResult<Option<PresenceRow>> {
        let row = q("SELECT user_id, presence, status_msg, last_active_ts FROM presence WHERE user_id = $1")
            .bind(user_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(presence_row))
    }

    /// Presence of users who share a joined room with `user_id` (and the user), changed in `(after, upto]`.
    pub async fn presence_changes_for(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> StoreResult<Vec<PresenceRow>> {
        let rows = q("SELECT p.user_id, p.presence, p.status_msg, p.last_active_ts FROM presence p \
                      WHERE p.stream_id > $2 AND p.stream_id <= $3 AND (p.user_id = $1 OR EXISTS ( \
                        SELECT 1 FROM current_state a JOIN current_state b ON a.room_id = b.room_id \
                        WHERE a.type = 'm.room.member' AND b.type = 'm.room.member' AND a.membership = 'join' \
                        AND b.membership = 'join' AND a.state_key = $1 AND b.state_key = p.user_id)) \
                      ORDER BY p.stream_id")
        .bind(user_id.to_owned())
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(presence_row).collect())
    }

    pub async fn max_presence_stream(&self) -> StoreResult<i64> {
        let row = q("SELECT MAX(stream_id) FROM presence_stream")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Option<i64>, _>(0).unwrap_or(0))
    }
}

fn presence_row(r: sqlx::any::AnyRow) -> PresenceRow {
    PresenceRow {
        user_id: r.get(0),
        presence: r.get(1),
        status_msg: r.get(2),
        last_active_ts: r.get(3),
    }
}
