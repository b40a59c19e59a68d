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
    /// An EDU's `edu_type` (NULL for PDUs and rows queued before migration 0026).
    pub edu_type: Option<String>,
    pub created_ts: i64,
}

/// Something to queue for one destination.
#[derive(Debug, Clone)]
pub struct NewOutbound {
    pub destination: String,
    /// `pdu` or `edu`.
    pub kind: &'static str,
    /// A PDU's room: its JSON is stored sealed when the room is encrypted at rest.
    pub room_id: Option<String>,
    /// An EDU's type, and the key a newer EDU of the same key supersedes it by (none for
    /// to-device messages): what trimming a long queue goes by.
    pub edu_type: Option<String>,
    pub supersede_key: Option<String>,
    pub json: String,
}

type Tx = Transaction<'static, Any>;

impl Store {
    /// Queues PDUs and EDUs, each for its destination, in order.
    pub async fn enqueue_outbound(&self, items: &[NewOutbound], now: i64) -> StoreResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        self.enqueue_outbound_in(&mut tx, items, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Queues PDUs and EDUs inside a transaction of another write (the to-device messages
    /// that cause them), taking the queue's lock first (see `Stream::FederationOutbound`).
    pub(super) async fn enqueue_outbound_in(
        &self,
        tx: &mut Tx,
        items: &[NewOutbound],
        now: i64,
    ) -> StoreResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.lock_stream(tx, Stream::FederationOutbound).await?;
        for item in items {
            let sealed = match &item.room_id {
                Some(room_id) => at_rest::seal(room_id, &item.json),
                None => None,
            };
            Self::insert_outbound_in(tx, item, sealed.as_deref().unwrap_or(&item.json), now).await?;
        }
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
                let item = NewOutbound {
                    destination: destination.clone(),
                    kind: "pdu",
                    room_id: Some(room_id.to_owned()),
                    edu_type: None,
                    supersede_key: None,
                    json: String::new(),
                };
                Self::insert_outbound_in(tx, &item, stored_json, now).await?;
            }
        }
        Ok(())
    }

    /// Inserts `item` with `stored_json` (its JSON, sealed when its room's is).
    async fn insert_outbound_in(
        tx: &mut Tx,
        item: &NewOutbound,
        stored_json: &str,
        now: i64,
    ) -> StoreResult<()> {
        q("INSERT INTO federation_outbound \
               (destination, kind, room_id, edu_type, supersede_key, json, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(item.destination.clone())
        .bind(item.kind.to_owned())
        .bind(item.room_id.clone())
        .bind(item.edu_type.clone())
        .bind(item.supersede_key.clone())
        .bind(stored_json.to_owned())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The oldest queued items of a destination, at most `limit`, in queue order.
    pub async fn outbound_items(&self, destination: &str, limit: i64) -> StoreResult<Vec<OutboundRow>> {
        let rows = q(
            "SELECT id, kind, json, room_id, edu_type, created_ts FROM federation_outbound \
             WHERE destination = $1 ORDER BY id LIMIT $2",
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
                    edu_type: r.get(4),
                    created_ts: r.get(5),
                }
            })
            .collect())
    }

    /// Deletes a destination's queued items up to `last_id` (after it accepted them).
    pub async fn delete_outbound(&self, destination: &str, last_id: i64) -> StoreResult<()> {
        q("DELETE FROM federation_outbound WHERE destination = $1 AND id <= $2")
            .bind(destination.to_owned())
            .bind(last_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Brings a destination's queued EDUs down to `cap`, oldest first: superseded ones (an
    /// EDU with the same key was queued after them), then those of each of `types` in turn,
    /// then any. PDUs are never dropped. Returns the `edu_type` of each EDU dropped.
    pub async fn trim_outbound_edus(
        &self,
        destination: &str,
        cap: i64,
        types: &[&str],
    ) -> StoreResult<Vec<Option<String>>> {
        let mut tx = self.begin_write().await?;
        let queued: i64 =
            q("SELECT COUNT(*) FROM federation_outbound WHERE destination = $1 AND kind = 'edu'")
                .bind(destination.to_owned())
                .fetch_one(&mut *tx)
                .await?
                .get(0);
        let mut excess = queued - cap;
        let mut dropped = Vec::new();
        if excess <= 0 {
            return Ok(dropped);
        }
        let superseded = q(
            "DELETE FROM federation_outbound WHERE id IN (SELECT o.id FROM federation_outbound o \
               WHERE o.destination = $1 AND o.supersede_key IS NOT NULL AND EXISTS ( \
                 SELECT 1 FROM federation_outbound n WHERE n.destination = o.destination \
                 AND n.supersede_key = o.supersede_key AND n.id > o.id) \
               ORDER BY o.id LIMIT $2) RETURNING edu_type",
        )
        .bind(destination.to_owned())
        .bind(excess)
        .fetch_all(&mut *tx)
        .await?;
        dropped.extend(superseded.iter().map(|r| r.get::<Option<String>, _>(0)));
        excess -= superseded.len() as i64;
        for edu_type in types {
            if excess <= 0 {
                break;
            }
            let rows = q(
                "DELETE FROM federation_outbound WHERE id IN (SELECT id FROM federation_outbound \
                   WHERE destination = $1 AND edu_type = $2 ORDER BY id LIMIT $3) RETURNING edu_type",
            )
            .bind(destination.to_owned())
            .bind((*edu_type).to_owned())
            .bind(excess)
            .fetch_all(&mut *tx)
            .await?;
            dropped.extend(rows.iter().map(|r| r.get::<Option<String>, _>(0)));
            excess -= rows.len() as i64;
        }
        if excess > 0 {
            let rows = q(
                "DELETE FROM federation_outbound WHERE id IN (SELECT id FROM federation_outbound \
                   WHERE destination = $1 AND kind = 'edu' ORDER BY id LIMIT $2) RETURNING edu_type",
            )
            .bind(destination.to_owned())
            .bind(excess)
            .fetch_all(&mut *tx)
            .await?;
            dropped.extend(rows.iter().map(|r| r.get::<Option<String>, _>(0)));
        }
        tx.commit().await?;
        Ok(dropped)
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
        .execute(&self.writer)
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
