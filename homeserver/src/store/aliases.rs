//! Room aliases.

use sqlx::{Any, Row, Transaction};

use super::{Store, StoreResult, q};

impl Store {
    /// Creates an alias; `false` if it exists already.
    pub async fn create_alias(&self, alias: &str, room_id: &str, creator: &str) -> StoreResult<bool> {
        let done = q(
            "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(alias.to_owned())
        .bind(room_id.to_owned())
        .bind(creator.to_owned())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn create_alias_in(
        tx: &mut Transaction<'static, Any>,
        alias: &str,
        room_id: &str,
        creator: &str,
    ) -> StoreResult<bool> {
        let done = q(
            "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(alias.to_owned())
        .bind(room_id.to_owned())
        .bind(creator.to_owned())
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// (room ID, creator) of an alias.
    pub async fn alias(&self, alias: &str) -> StoreResult<Option<(String, String)>> {
        let row = q("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
            .bind(alias.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    pub async fn delete_alias(&self, alias: &str) -> StoreResult<()> {
        q("DELETE FROM room_aliases WHERE alias = $1")
            .bind(alias.to_owned())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn aliases_of_room(&self, room_id: &str) -> StoreResult<Vec<String>> {
        let rows = q("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
            .bind(room_id.to_owned())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }
}
