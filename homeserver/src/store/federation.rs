//! Other servers' signing keys: the keys themselves, and each server's newest verified key
//! response (what this server hands out as a notary).

use sqlx::{Any, Row, Transaction};

use super::{Store, StoreResult, Stream, q};
use crate::at_rest;

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

/// A queued PDU or EDU for one destination.
#[derive(Debug, Clone)]
pub struct OutboundRow {
    pub id: i64,
    /// `pdu` or `edu`.
    pub kind: String,
    pub json: String,
}

/// Something to queue for one destination.
#[derive(Debug, Clone)]
pub struct NewOutbound {
    pub destination: String,
    /// `pdu` or `edu`.
    pub kind: &'static str,
    /// A PDU's room: its JSON is stored sealed when the room is encrypted at rest.
    pub room_id: Option<String>,
    pub json: String,
}

type Tx = Transaction<'static, Any>;

impl Store {
    /// Queues PDUs and EDUs, each for its destination, in order.
    pub async fn enqueue_outbound(&self, items: &[NewOutbound], now: i64) -> StoreResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_stream_write(Stream::FederationOutbound).await?;
        for item in items {
            let json = match &item.room_id {
                Some(room_id) => at_rest::seal(room_id, &item.json),
                None => None,
            };
            Self::insert_outbound_in(
                &mut tx,
                &item.destination,
                item.kind,
                item.room_id.as_deref(),
                json.as_deref().unwrap_or(&item.json),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Queues the events of a batch being appended, in its transaction: `(destinations, room,
    /// JSON as stored in `events`, sealed or not)`. Takes the queue's lock first (see
    /// `Stream::FederationOutbound`).
    pub(super) async fn enqueue_pdus_in<'a>(
        &self,
        tx: &mut Tx,
        pdus: impl Iterator<Item = (&'a [String], &'a str, &'a str)>,
        now: i64,
    ) -> StoreResult<()> {
        let mut locked = false;
        for (destinations, room_id, stored_json) in pdus {
            for destination in destinations {
                if !locked {
                    self.lock_stream(tx, Stream::FederationOutbound).await?;
                    locked = true;
                }
                Self::insert_outbound_in(tx, destination, "pdu", Some(room_id), stored_json, now).await?;
            }
        }
        Ok(())
    }

    async fn insert_outbound_in(
        tx: &mut Tx,
        destination: &str,
        kind: &str,
        room_id: Option<&str>,
        stored_json: &str,
        now: i64,
    ) -> StoreResult<()> {
        q(
            "INSERT INTO federation_outbound (destination, kind, room_id, json, created_ts) \
           VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(destination.to_owned())
        .bind(kind.to_owned())
        .bind(room_id.map(ToOwned::to_owned))
        .bind(stored_json.to_owned())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The oldest queued items of a destination, at most `limit`, in queue order.
    pub async fn outbound_items(&self, destination: &str, limit: i64) -> StoreResult<Vec<OutboundRow>> {
        let rows = q(
            "SELECT id, kind, json, room_id FROM federation_outbound WHERE destination = $1 \
             ORDER BY id LIMIT $2",
        )
        .bind(destination.to_owned())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let json: String = r.get(2);
                OutboundRow {
                    id: r.get(0),
                    kind: r.get(1),
                    json: match r.get::<Option<String>, _>(3) {
                        Some(room_id) => at_rest::open(&room_id, json),
                        None => json,
                    },
                }
            })
            .collect())
    }

    /// Deletes a destination's queued items up to `last_id` (after it accepted them).
    pub async fn delete_outbound(&self, destination: &str, last_id: i64) -> StoreResult<()> {
        q("DELETE FROM federation_outbound WHERE destination = $1 AND id <= $2")
            .bind(destination.to_owned())
            .bind(last_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many items wait for a destination.
    pub async fn outbound_pending(&self, destination: &str) -> StoreResult<i64> {
        Ok(
            q("SELECT COUNT(*) FROM federation_outbound WHERE destination = $1")
                .bind(destination.to_owned())
                .fetch_one(&self.pool)
                .await?
                .get(0),
        )
    }

    /// Destinations with queued items (a restart resumes them).
    pub async fn outbound_destinations(&self) -> StoreResult<Vec<String>> {
        let rows = q("SELECT DISTINCT destination FROM federation_outbound")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The stored response to an inbound transaction already handled.
    pub async fn inbound_txn(&self, origin: &str, txn_id: &str) -> StoreResult<Option<String>> {
        let row = q("SELECT response FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2")
            .bind(origin.to_owned())
            .bind(txn_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Records an inbound transaction's response (the first one stored wins).
    pub async fn store_inbound_txn(
        &self,
        origin: &str,
        txn_id: &str,
        response: &str,
        now: i64,
    ) -> StoreResult<()> {
        q(
            "INSERT INTO federation_inbound_txns (origin, txn_id, response, ts) VALUES ($1, $2, $3, $4) \
           ON CONFLICT (origin, txn_id) DO NOTHING",
        )
        .bind(origin.to_owned())
        .bind(txn_id.to_owned())
        .bind(response.to_owned())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that a remote user's devices or keys changed, so local users sharing a room with
    /// them see the user in `device_lists.changed` and query the keys again.
    pub async fn mark_remote_device_list(&self, user_id: &str) -> StoreResult<i64> {
        let mut tx = self.begin_stream_write(super::Stream::DeviceLists).await?;
        let id = q("INSERT INTO device_lists_stream (user_id) VALUES ($1) RETURNING stream_id")
            .bind(user_id.to_owned())
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        tx.commit().await?;
        Ok(id)
    }
}
