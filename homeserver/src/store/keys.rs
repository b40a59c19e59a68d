//! The server's signing keys and fixed settings.

use sqlx::Row;

use super::{Store, StoreResult, q};

impl Store {
    /// The current signing key (key ID, base64 PKCS#8), if one was generated before: the
    /// newest one not expired by a rotation.
    pub async fn signing_key(&self) -> StoreResult<Option<(String, String)>> {
        let row = q(
            "SELECT key_id, pkcs8 FROM server_signing_keys WHERE expired_ts IS NULL \
                     ORDER BY created_ts DESC, key_id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// The keys rotated out: (key ID, base64 PKCS#8, expired_ts), oldest first.
    pub async fn old_signing_keys(&self) -> StoreResult<Vec<(String, String, i64)>> {
        let rows = q("SELECT key_id, pkcs8, expired_ts FROM server_signing_keys \
                      WHERE expired_ts IS NOT NULL ORDER BY expired_ts, key_id")
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Expires the current key (and any other unexpired one) at `now` and stores a new one.
    pub async fn rotate_signing_key(&self, key_id: &str, pkcs8: &str, now: i64) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        q("UPDATE server_signing_keys SET expired_ts = $1 WHERE expired_ts IS NULL")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        q("INSERT INTO server_signing_keys (key_id, pkcs8, created_ts) VALUES ($1, $2, $3)")
            .bind(key_id.to_owned())
            .bind(pkcs8.to_owned())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A server setting, written once: returns the stored value, storing `value` if there was none.
    pub async fn setting_or_insert(&self, name: &str, value: &str) -> StoreResult<String> {
        q("INSERT INTO server_settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name.to_owned())
            .bind(value.to_owned())
            .execute(&self.writer)
            .await?;
        let row = q("SELECT value FROM server_settings WHERE name = $1")
            .bind(name.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }

    /// Stores a new key unless another process stored one first; returns the key that won.
    pub async fn insert_signing_key(
        &self,
        key_id: &str,
        pkcs8: &str,
        now: i64,
    ) -> StoreResult<(String, String)> {
        q(
            "INSERT INTO server_signing_keys (key_id, pkcs8, created_ts) VALUES ($1, $2, $3) \
           ON CONFLICT DO NOTHING",
        )
        .bind(key_id.to_owned())
        .bind(pkcs8.to_owned())
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(self.signing_key().await?.expect("a key was just stored"))
    }
}
