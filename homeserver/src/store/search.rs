//! The search indexer's position in the event log, and the log read in stream order.

use sqlx::Row;

use super::{
    EventRow, Store, StoreResult,
    events::{SELECT_EVENTS, event_row},
    q, qs,
};

impl Store {
    /// The indexer's (index ID, position), if it ever committed.
    pub async fn search_position(&self) -> StoreResult<Option<(String, i64)>> {
        let row = q("SELECT index_id, position FROM search_index_position WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Records that the index `index_id` holds every event up to `position`.
    pub async fn set_search_position(&self, index_id: &str, position: i64) -> StoreResult<()> {
        q(
            "INSERT INTO search_index_position (id, index_id, position) VALUES (1, $1, $2) \
           ON CONFLICT (id) DO UPDATE SET index_id = excluded.index_id, position = excluded.position",
        )
        .bind(index_id.to_owned())
        .bind(position)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Forgets the position: the indexer starts again from an empty index.
    pub async fn clear_search_position(&self) -> StoreResult<()> {
        q("DELETE FROM search_index_position")
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Up to `limit` events of every room after stream position `after`, oldest first, with
    /// the outliers and soft-failed ones left out (never indexed), and the position of the last
    /// event looked at, so the indexer moves past those too (a search waits until the indexer
    /// reaches the newest stored position), and whether `limit` events were looked at (more may
    /// follow).
    pub async fn events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> StoreResult<(Vec<EventRow>, Option<i64>, bool)> {
        let sql = format!("{SELECT_EVENTS}WHERE e.stream_ordering > $1 ORDER BY e.stream_ordering LIMIT $2");
        let rows = qs(sql).bind(after).bind(limit).fetch_all(&self.pool).await?;
        let last = rows.last().map(|r| r.get::<i64, _>(0));
        let full = rows.len() as i64 >= limit;
        let timeline = rows
            .into_iter()
            .filter(|r| r.get::<i64, _>(16) == 0)
            .map(event_row)
            .collect();
        Ok((timeline, last, full))
    }
}
