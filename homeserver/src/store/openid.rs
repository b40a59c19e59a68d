//! OpenID tokens: their hashes, owners and expiry.

use sqlx::Row;

use super::{Store, StoreResult, q};

impl Store {
    /// Stores a new token and deletes the expired ones, in one transaction.
    pub async fn insert_openid_token(
        &self,
        token_hash: &str,
        user_id: &str,
        expires_ts: i64,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        q("DELETE FROM openid_tokens WHERE expires_ts <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        q("INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)")
            .bind(token_hash.to_owned())
            .bind(user_id.to_owned())
            .bind(expires_ts)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The owner of a token that has not expired at `now`.
    pub async fn openid_token_owner(&self, token_hash: &str, now: i64) -> StoreResult<Option<String>> {
        let row = q("SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts > $2")
            .bind(token_hash.to_owned())
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}
