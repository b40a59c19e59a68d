//! End-to-end encryption: device keys, one-time and fallback keys, cross-signing keys and
//! signatures, the device list stream and queued to-device messages.

use std::collections::{BTreeMap, HashSet};

use sqlx::Row;

use super::{NewOutbound, Store, StoreResult, Stream, q, qs};

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// A key as uploaded: algorithm, key ID, the key's JSON (a string or a signed object).
#[derive(Debug, Clone)]
pub struct KeyUpload {
    pub algorithm: String,
    pub key_id: String,
    pub json: String,
}

/// What `/keys/upload` stores for one device.
#[derive(Debug, Default)]
pub struct KeysUpload {
    pub device_keys: Option<String>,
    pub one_time_keys: Vec<KeyUpload>,
    pub fallback_keys: Vec<KeyUpload>,
}

/// Why an upload was refused (nothing was stored).
#[derive(Debug, PartialEq, Eq)]
pub enum UploadRefusal {
    /// A one-time key ID that is already stored with other content.
    KeyIdReused(String),
    /// More one-time keys of an algorithm than a device may hold.
    TooManyStored(String),
}

/// A to-device message to queue: recipient user, device (or `*`), content JSON.
#[derive(Debug, Clone)]
pub struct ToDeviceOut {
    pub user_id: String,
    pub device_id: String,
    pub content: String,
}

/// A queued to-device message.
#[derive(Debug, Clone)]
pub struct ToDeviceRow {
    pub stream_id: i64,
    pub sender: String,
    pub event_type: String,
    pub content: String,
}

/// The outcome of queueing a `sendToDevice` request.
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    /// Stored; the users whose devices got messages.
    Sent(Vec<String>),
    /// The transaction ID was already used by this device: nothing new stored.
    Repeated,
    /// A recipient device's queue is full: nothing stored.
    QueueFull(String),
}

/// Which of a user's devices lose their keys.
pub(crate) enum Devices<'a> {
    One(&'a str),
    AllExcept(&'a str),
}

impl Store {
    /// Records that `user_id`'s devices or keys changed (the stream's lock must be held).
    async fn mark_device_list_in(tx: &mut Tx, user_id: &str) -> StoreResult<i64> {
        Ok(
            q("INSERT INTO device_lists_stream (user_id) VALUES ($1) RETURNING stream_id")
                .bind(user_id.to_owned())
                .fetch_one(&mut **tx)
                .await?
                .get(0),
        )
    }

    pub async fn max_device_lists_stream(&self) -> StoreResult<i64> {
        let row = q("SELECT MAX(stream_id) FROM device_lists_stream")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Option<i64>, _>(0).unwrap_or(0))
    }

    pub async fn max_to_device_stream(&self) -> StoreResult<i64> {
        let row = q("SELECT MAX(stream_id) FROM to_device_messages")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Option<i64>, _>(0).unwrap_or(0))
    }

    /// Stores what a device uploaded, all or nothing. On success: the one-time key counts per
    /// algorithm and whether the device keys changed.
    pub async fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        upload: &KeysUpload,
        max_stored_per_algorithm: u64,
    ) -> StoreResult<Result<(BTreeMap<String, u64>, bool), UploadRefusal>> {
        let mut tx = self.begin_stream_write(Stream::DeviceLists).await?;
        let mut changed = false;
        if let Some(json) = &upload.device_keys {
            let old: Option<String> =
                q("SELECT key_json FROM device_keys WHERE user_id = $1 AND device_id = $2")
                    .bind(user_id.to_owned())
                    .bind(device_id.to_owned())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.get(0));
            if old.as_deref() != Some(json.as_str()) {
                q(
                    "INSERT INTO device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3) \
                   ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                )
                .bind(user_id.to_owned())
                .bind(device_id.to_owned())
                .bind(json.clone())
                .execute(&mut *tx)
                .await?;
                Self::mark_device_list_in(&mut tx, user_id).await?;
                changed = true;
            }
        }
        for key in &upload.one_time_keys {
            let old: Option<String> = q(
                "SELECT key_json FROM one_time_keys WHERE user_id = $1 AND device_id = $2 \
                 AND algorithm = $3 AND key_id = $4",
            )
            .bind(user_id.to_owned())
            .bind(device_id.to_owned())
            .bind(key.algorithm.clone())
            .bind(key.key_id.clone())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
            match old {
                Some(old) if old == key.json => continue,
                Some(_) => {
                    return Ok(Err(UploadRefusal::KeyIdReused(format!(
                        "{}:{}",
                        key.algorithm, key.key_id
                    ))));
                }
                None => {}
            }
            q(
                "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json) \
               VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(user_id.to_owned())
            .bind(device_id.to_owned())
            .bind(key.algorithm.clone())
            .bind(key.key_id.clone())
            .bind(key.json.clone())
            .execute(&mut *tx)
            .await?;
        }
        for key in &upload.fallback_keys {
            q(
                "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) \
               VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE \
               SET used = CASE WHEN fallback_keys.key_json = excluded.key_json \
               THEN fallback_keys.used ELSE 0 END, key_id = excluded.key_id, key_json = excluded.key_json",
            )
            .bind(user_id.to_owned())
            .bind(device_id.to_owned())
            .bind(key.algorithm.clone())
            .bind(key.key_id.clone())
            .bind(key.json.clone())
            .execute(&mut *tx)
            .await?;
        }
        let counts = otk_counts(&mut tx, user_id, device_id).await?;
        if let Some((algorithm, _)) = counts.iter().find(|(_, n)| **n > max_stored_per_algorithm) {
            return Ok(Err(UploadRefusal::TooManyStored(algorithm.clone())));
        }
        tx.commit().await?;
        Ok(Ok((counts, changed)))
    }

    /// The number of unclaimed one-time keys of a device, per algorithm.
    pub async fn one_time_key_counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<BTreeMap<String, u64>> {
        let mut conn = self.pool.acquire().await?;
        otk_counts(&mut conn, user_id, device_id).await
    }

    /// Algorithms of the device's fallback keys that were not handed out yet.
    pub async fn unused_fallback_key_types(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<Vec<String>> {
        let rows = q(
            "SELECT algorithm FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND used = 0 \
                      ORDER BY algorithm",
        )
        .bind(user_id.to_owned())
        .bind(device_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The stored device keys of a device.
    pub async fn device_keys(&self, user_id: &str, device_id: &str) -> StoreResult<Option<String>> {
        Ok(
            q("SELECT key_json FROM device_keys WHERE user_id = $1 AND device_id = $2")
                .bind(user_id.to_owned())
                .bind(device_id.to_owned())
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get(0)),
        )
    }

    /// Every device of a user that uploaded keys: (device ID, key JSON, display name).
    pub async fn user_device_keys(
        &self,
        user_id: &str,
    ) -> StoreResult<Vec<(String, String, Option<String>)>> {
        let rows = q(
            "SELECT k.device_id, k.key_json, d.display_name FROM device_keys k \
                      JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id \
                      WHERE k.user_id = $1 ORDER BY k.device_id",
        )
        .bind(user_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Hands out one one-time key of the device, deleting it: concurrent claims never get the
    /// same key. `None` when the device has none of that algorithm left.
    pub async fn claim_one_time_key(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> StoreResult<Option<(String, String)>> {
        // Under PostgreSQL's READ COMMITTED two claims may pick the same key; the loser's
        // DELETE then matches no row, and it tries again while keys remain.
        for _ in 0..16 {
            let row = q("DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                         AND key_id = (SELECT key_id FROM one_time_keys WHERE user_id = $1 AND device_id = $2 \
                         AND algorithm = $3 ORDER BY key_id LIMIT 1) RETURNING key_id, key_json")
            .bind(user_id.to_owned())
            .bind(device_id.to_owned())
            .bind(algorithm.to_owned())
            .fetch_optional(&self.writer)
            .await?;
            if let Some(row) = row {
                return Ok(Some((row.get(0), row.get(1))));
            }
            let left = q("SELECT 1 FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 LIMIT 1")
                .bind(user_id.to_owned())
                .bind(device_id.to_owned())
                .bind(algorithm.to_owned())
                .fetch_optional(&self.pool)
                .await?;
            if left.is_none() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The device's fallback key of the algorithm, marked used.
    pub async fn claim_fallback_key(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> StoreResult<Option<(String, String)>> {
        let row = q(
            "UPDATE fallback_keys SET used = 1 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                     RETURNING key_id, key_json",
        )
        .bind(user_id.to_owned())
        .bind(device_id.to_owned())
        .bind(algorithm.to_owned())
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// A user's cross-signing keys: key type (`master`, `self_signing`, `user_signing`) → JSON.
    pub async fn cross_signing_keys(&self, user_id: &str) -> StoreResult<BTreeMap<String, String>> {
        let rows = q("SELECT key_type, key_json FROM cross_signing_keys WHERE user_id = $1")
            .bind(user_id.to_owned())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Replaces cross-signing keys (key type → JSON) and records the change.
    pub async fn set_cross_signing_keys(&self, user_id: &str, keys: &[(String, String)]) -> StoreResult<()> {
        let mut tx = self.begin_stream_write(Stream::DeviceLists).await?;
        for (key_type, json) in keys {
            q(
                "INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3) \
               ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
            )
            .bind(user_id.to_owned())
            .bind(key_type.clone())
            .bind(json.clone())
            .execute(&mut *tx)
            .await?;
        }
        Self::mark_device_list_in(&mut tx, user_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Signatures uploaded on a user's keys: (target key, signer user, signer key ID, signature).
    pub async fn signatures_on(
        &self,
        target_user: &str,
    ) -> StoreResult<Vec<(String, String, String, String)>> {
        let rows = q(
            "SELECT target_key, signer_user, signer_key_id, signature FROM e2e_signatures \
                      WHERE target_user = $1",
        )
        .bind(target_user.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// Stores signatures (target user, target key, signer user, signer key ID, signature) and
    /// records a device list change for each of `changed`.
    pub async fn add_signatures(
        &self,
        signatures: &[(String, String, String, String, String)],
        changed: &[String],
    ) -> StoreResult<()> {
        let mut tx = self.begin_stream_write(Stream::DeviceLists).await?;
        for (target_user, target_key, signer_user, signer_key_id, signature) in signatures {
            q(
                "INSERT INTO e2e_signatures (target_user, target_key, signer_user, signer_key_id, signature) \
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (target_user, target_key, signer_user, signer_key_id) \
               DO UPDATE SET signature = excluded.signature",
            )
            .bind(target_user.clone())
            .bind(target_key.clone())
            .bind(signer_user.clone())
            .bind(signer_key_id.clone())
            .bind(signature.clone())
            .execute(&mut *tx)
            .await?;
        }
        for user in changed {
            Self::mark_device_list_in(&mut tx, user).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Users whose devices or keys changed in `(from, to]`.
    pub async fn device_list_changes(&self, from: i64, to: i64) -> StoreResult<HashSet<String>> {
        let rows =
            q("SELECT DISTINCT user_id FROM device_lists_stream WHERE stream_id > $1 AND stream_id <= $2")
                .bind(from)
                .bind(to)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The stream positions of `user_id`'s last two device-list changes, newest first.
    pub async fn last_device_list_changes(&self, user_id: &str) -> StoreResult<Vec<i64>> {
        let rows =
            q("SELECT stream_id FROM device_lists_stream WHERE user_id = $1 ORDER BY stream_id DESC LIMIT 2")
                .bind(user_id.to_owned())
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Whether `user_id`'s devices or keys changed in `(from, to]`.
    pub async fn device_list_changed(&self, user_id: &str, from: i64, to: i64) -> StoreResult<bool> {
        let row = q("SELECT 1 FROM device_lists_stream WHERE user_id = $1 AND stream_id > $2 AND stream_id <= $3 LIMIT 1")
            .bind(user_id.to_owned())
            .bind(from)
            .bind(to)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Everyone joined to a room the user is joined to (the user included when joined anywhere).
    pub async fn users_sharing_rooms(&self, user_id: &str) -> StoreResult<HashSet<String>> {
        let rows = q(
            "SELECT DISTINCT b.state_key FROM current_state a JOIN current_state b ON a.room_id = b.room_id \
                      WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join' \
                      AND b.type = 'm.room.member' AND b.membership = 'join'",
        )
        .bind(user_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Membership changes in the rooms within `(from, to]`: (room, user, membership).
    pub async fn room_membership_changes(
        &self,
        room_ids: &[String],
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for chunk in room_ids.chunks(500) {
            let placeholders: Vec<String> = (3..=chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT room_id, user_id, membership FROM room_memberships WHERE stream_ordering > $1 \
                 AND stream_ordering <= $2 AND room_id IN ({}) ORDER BY stream_ordering",
                placeholders.join(", ")
            );
            let mut query = qs(sql).bind(from).bind(to);
            for id in chunk {
                query = query.bind(id.clone());
            }
            for r in query.fetch_all(&self.pool).await? {
                out.push((r.get(0), r.get(1), r.get(2)));
            }
        }
        Ok(out)
    }

    /// Queues to-device messages from one sending device, in one transaction with its
    /// transaction ID (so a retry stores nothing twice and a crash loses nothing committed).
    /// `*` as a device means every device of that user. Messages to unknown devices are dropped.
    /// `remote`: the `m.direct_to_device` EDUs for other servers' recipients, queued with them.
    #[allow(clippy::too_many_arguments)]
    pub async fn queue_to_device(
        &self,
        sender: &str,
        sender_device: &str,
        txn_id: &str,
        event_type: &str,
        messages: &[ToDeviceOut],
        remote: &[NewOutbound],
        max_pending: i64,
        now: i64,
    ) -> StoreResult<Queued> {
        let mut tx = self.begin_stream_write(Stream::ToDevice).await?;
        let fresh = q(
            "INSERT INTO to_device_txns (user_id, device_id, txn_id, ts) VALUES ($1, $2, $3, $4) \
                       ON CONFLICT DO NOTHING",
        )
        .bind(sender.to_owned())
        .bind(sender_device.to_owned())
        .bind(txn_id.to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if fresh.rows_affected() == 0 {
            return Ok(Queued::Repeated);
        }
        let mut users = Vec::new();
        for message in messages {
            let devices: Vec<String> = if message.device_id == "*" {
                q("SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id")
                    .bind(message.user_id.clone())
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect()
            } else {
                q("SELECT device_id FROM devices WHERE user_id = $1 AND device_id = $2")
                    .bind(message.user_id.clone())
                    .bind(message.device_id.clone())
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect()
            };
            for device in devices {
                let pending: i64 =
                    q("SELECT COUNT(*) FROM to_device_messages WHERE user_id = $1 AND device_id = $2")
                        .bind(message.user_id.clone())
                        .bind(device.clone())
                        .fetch_one(&mut *tx)
                        .await?
                        .get(0);
                if pending >= max_pending {
                    return Ok(Queued::QueueFull(format!("{} {device}", message.user_id)));
                }
                q(
                    "INSERT INTO to_device_messages (user_id, device_id, sender, type, content) \
                   VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(message.user_id.clone())
                .bind(device)
                .bind(sender.to_owned())
                .bind(event_type.to_owned())
                .bind(message.content.clone())
                .execute(&mut *tx)
                .await?;
                if !users.contains(&message.user_id) {
                    users.push(message.user_id.clone());
                }
            }
        }
        // Other servers' recipients: their EDUs are committed with the transaction ID, so a
        // request answered (or a retry answered as a repeat) has them queued.
        self.enqueue_outbound_in(&mut tx, remote, now).await?;
        tx.commit().await?;
        Ok(Queued::Sent(users))
    }

    /// Whether the device has messages up to `upto` queued.
    pub async fn has_to_device_upto(&self, user_id: &str, device_id: &str, upto: i64) -> StoreResult<bool> {
        let row = q("SELECT 1 FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3 LIMIT 1")
            .bind(user_id.to_owned())
            .bind(device_id.to_owned())
            .bind(upto)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Deletes the device's messages up to `upto`: the device synced with a token past them.
    pub async fn ack_to_device(&self, user_id: &str, device_id: &str, upto: i64) -> StoreResult<()> {
        q("DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3")
            .bind(user_id.to_owned())
            .bind(device_id.to_owned())
            .bind(upto)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The device's queued messages up to `upto`, oldest first, at most `limit`.
    pub async fn to_device_messages(
        &self,
        user_id: &str,
        device_id: &str,
        upto: i64,
        limit: i64,
    ) -> StoreResult<Vec<ToDeviceRow>> {
        let rows = q("SELECT stream_id, sender, type, content FROM to_device_messages \
                      WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3 ORDER BY stream_id LIMIT $4")
        .bind(user_id.to_owned())
        .bind(device_id.to_owned())
        .bind(upto)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ToDeviceRow {
                stream_id: r.get(0),
                sender: r.get(1),
                event_type: r.get(2),
                content: r.get(3),
            })
            .collect())
    }

    /// Removes the E2EE data of deleted devices (keys, one-time and fallback keys, signatures
    /// on them, queued messages, to-device transaction IDs) inside the deleting transaction,
    /// and records the device list change.
    pub(crate) async fn delete_devices_e2ee_in(
        &self,
        tx: &mut Tx,
        user_id: &str,
        devices: Devices<'_>,
    ) -> StoreResult<()> {
        // The stream's lock first: an upload holding it may wait for the rows deleted here.
        self.lock_stream(tx, Stream::DeviceLists).await?;
        let (filter, device) = match devices {
            Devices::One(d) => ("device_id = $2", d),
            Devices::AllExcept(d) => ("device_id <> $2", d),
        };
        for table in [
            "device_keys",
            "one_time_keys",
            "fallback_keys",
            "to_device_messages",
            "to_device_txns",
        ] {
            let sql = format!("DELETE FROM {table} WHERE user_id = $1 AND {filter}");
            qs(sql)
                .bind(user_id.to_owned())
                .bind(device.to_owned())
                .execute(&mut **tx)
                .await?;
        }
        let sql = format!(
            "DELETE FROM e2e_signatures WHERE target_user = $1 AND {}",
            filter.replace("device_id", "target_key")
        );
        qs(sql)
            .bind(user_id.to_owned())
            .bind(device.to_owned())
            .execute(&mut **tx)
            .await?;
        Self::mark_device_list_in(tx, user_id).await?;
        Ok(())
    }

    /// Removes a deactivated user's cross-signing keys and signatures made by or on them.
    pub(crate) async fn delete_user_e2ee_in(&self, tx: &mut Tx, user_id: &str) -> StoreResult<()> {
        q("DELETE FROM cross_signing_keys WHERE user_id = $1")
            .bind(user_id.to_owned())
            .execute(&mut **tx)
            .await?;
        q("DELETE FROM e2e_signatures WHERE target_user = $1 OR signer_user = $1")
            .bind(user_id.to_owned())
            .execute(&mut **tx)
            .await?;
        self.delete_devices_e2ee_in(tx, user_id, Devices::AllExcept(""))
            .await
    }
}

async fn otk_counts(
    conn: &mut sqlx::AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StoreResult<BTreeMap<String, u64>> {
    let rows = q(
        "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2 \
                  GROUP BY algorithm",
    )
    .bind(user_id.to_owned())
    .bind(device_id.to_owned())
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get::<String, _>(0),
                u64::try_from(r.get::<i64, _>(1)).unwrap_or(0),
            )
        })
        .collect())
}
