//! The search indexer's position in the event log, and the log read in stream order.

use sqlx::Row;

use super::{
    EventRow, Store, StoreResult,
    events::{SELECT_EVENTS, event_row},
    q,
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets the position: the indexer starts again from an empty index.
    pub async fn clear_search_position(&self) -> StoreResult<()> {
        q("DELETE FROM search_index_position").execute(&self.pool).await?;
        Ok(())
    }

    /// Up to `limit` timeline events of every room after stream position `after`, oldest first
    /// (outliers and soft-failed events are never indexed).
    pub async fn events_after(&self, after: i64, limit: i64) -> StoreResult<Vec<EventRow>> {
        let sql = format!(
            "{SELECT_EVENTS}WHERE e.stream_ordering > $1 AND e.outlier = 0 ORDER BY e.stream_ordering LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }
}
