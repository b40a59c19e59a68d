//! The server's signing keys and fixed settings.

use sqlx::Row;

use super::{Store, StoreResult, q};

impl Store {
    /// The stored signing key (key ID, base64 PKCS#8), if one was generated before.
    pub async fn signing_key(&self) -> StoreResult<Option<(String, String)>> {
        let row = q("SELECT key_id, pkcs8 FROM server_signing_keys ORDER BY created_ts LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// A server setting, written once: returns the stored value, storing `value` if there was none.
    pub async fn setting_or_insert(&self, name: &str, value: &str) -> StoreResult<String> {
        q("INSERT INTO server_settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name.to_owned())
            .bind(value.to_owned())
            .execute(&self.pool)
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
        .execute(&self.pool)
        .await?;
        Ok(self.signing_key().await?.expect("a key was just stored"))
    }
}
