//! Stored sync filters.

use sqlx::Row;

use super::{Store, StoreResult, q};

impl Store {
    pub async fn insert_filter(&self, user_id: &str, json: &str) -> StoreResult<i64> {
        let row = q("INSERT INTO filters (user_id, json) VALUES ($1, $2) RETURNING filter_id")
            .bind(user_id.to_owned())
            .bind(json.to_owned())
            .fetch_one(&self.writer)
            .await?;
        Ok(row.get(0))
    }

    pub async fn filter(&self, user_id: &str, filter_id: i64) -> StoreResult<Option<String>> {
        let row = q("SELECT json FROM filters WHERE user_id = $1 AND filter_id = $2")
            .bind(user_id.to_owned())
            .bind(filter_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}
