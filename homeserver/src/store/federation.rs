//! Other servers' signing keys: the keys themselves, and each server's newest verified key
//! response (what this server hands out as a notary).

use sqlx::Row;

use super::{Store, StoreResult, q};

/// A cached public key of another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKeyRow {
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    pub valid_until_ts: i64,
    /// Set when the server lists the key in `old_verify_keys`.
    pub expired_ts: Option<i64>,
}

impl Store {
    /// One cached key of `server_name`.
    pub async fn remote_server_key(
        &self,
        server_name: &str,
        key_id: &str,
    ) -> StoreResult<Option<RemoteKeyRow>> {
        let row = q(
            "SELECT key_id, public_key, valid_until_ts, expired_ts FROM remote_server_keys \
                     WHERE server_name = $1 AND key_id = $2",
        )
        .bind(server_name.to_owned())
        .bind(key_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| RemoteKeyRow {
            key_id: r.get(0),
            public_key: r.get(1),
            valid_until_ts: r.get(2),
            expired_ts: r.get(3),
        }))
    }

    /// The newest verified key response of `server_name`: (canonical JSON, valid_until_ts).
    pub async fn remote_key_response(&self, server_name: &str) -> StoreResult<Option<(String, i64)>> {
        let row =
            q("SELECT response, valid_until_ts FROM remote_server_key_responses WHERE server_name = $1")
                .bind(server_name.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Stores a verified key response and its keys, in one transaction. A response older than
    /// the stored one (smaller `valid_until_ts`) does not replace it; a key's validity only grows,
    /// and a key once listed as old stays expired.
    pub async fn store_remote_key_response(
        &self,
        server_name: &str,
        response: &str,
        valid_until_ts: i64,
        now: i64,
        verify_keys: &[(String, String)],
        old_verify_keys: &[(String, String, i64)],
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        q("INSERT INTO remote_server_key_responses (server_name, response, valid_until_ts, fetched_ts) \
           VALUES ($1, $2, $3, $4) ON CONFLICT (server_name) DO UPDATE SET \
           response = excluded.response, valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts \
           WHERE excluded.valid_until_ts >= remote_server_key_responses.valid_until_ts")
        .bind(server_name.to_owned())
        .bind(response.to_owned())
        .bind(valid_until_ts)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (key_id, public_key) in verify_keys {
            q(
                "INSERT INTO remote_server_keys (server_name, key_id, public_key, valid_until_ts) \
               VALUES ($1, $2, $3, $4) ON CONFLICT (server_name, key_id) DO UPDATE SET \
               public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts \
               WHERE excluded.valid_until_ts > remote_server_keys.valid_until_ts",
            )
            .bind(server_name.to_owned())
            .bind(key_id.clone())
            .bind(public_key.clone())
            .bind(valid_until_ts)
            .execute(&mut *tx)
            .await?;
        }
        for (key_id, public_key, expired_ts) in old_verify_keys {
            q("INSERT INTO remote_server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts) \
               VALUES ($1, $2, $3, $4, $4) ON CONFLICT (server_name, key_id) DO UPDATE SET \
               expired_ts = excluded.expired_ts")
            .bind(server_name.to_owned())
            .bind(key_id.clone())
            .bind(public_key.clone())
            .bind(*expired_ts)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
