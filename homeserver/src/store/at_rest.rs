//! Search-enabled rooms' data keys (wrapped by the server key) and the seal/open hooks the
//! event log's reads and writes call (`crate::at_rest` does the cryptography).

use std::{borrow::Cow, collections::HashMap};

use sqlx::Row;

use super::{NewEvent, Store, StoreError, StoreResult, q};
use crate::at_rest::{self, Key};

const KEY_CHECK_SETTING: &str = "at_rest_key_check";

impl Store {
    /// Checks the server key against the one the database was first used with (refusing a
    /// wrong one), unwraps every room's data key and installs them for this process.
    pub async fn load_at_rest_keys(&self, server: &Key) -> StoreResult<usize> {
        let check = self
            .setting_or_insert(KEY_CHECK_SETTING, &server.check_value())
            .await?;
        if check != server.check_value() {
            return Err(StoreError::Corrupt(
                "the at-rest key (privacy.at_rest_key_file / HEARTH_PRIVACY__AT_REST_KEY) is not the \
                 key this database was encrypted with; use the right key, or change keys only with \
                 `hearth keys rotate-at-rest`"
                    .into(),
            ));
        }
        let rows = q("SELECT room_id, wrapped_key FROM room_data_keys")
            .fetch_all(&self.pool)
            .await?;
        let mut rooms = HashMap::with_capacity(rows.len());
        for row in rows {
            let (room_id, wrapped): (String, String) = (row.get(0), row.get(1));
            let key = server.unwrap(&room_id, &wrapped).map_err(|_| {
                StoreError::Corrupt(format!("cannot unwrap the at-rest data key of {room_id}"))
            })?;
            rooms.insert(room_id, key);
        }
        let count = rooms.len();
        at_rest::install(server.clone(), rooms);
        Ok(count)
    }

    /// Gives a room a data key (if it has none), committed before any event of the room is
    /// stored with it; from then on the room's events are stored encrypted.
    pub async fn ensure_room_data_key(&self, room_id: &str, now: i64) -> StoreResult<()> {
        if at_rest::is_sealed_room(room_id) {
            return Ok(());
        }
        let server =
            at_rest::server_key().ok_or_else(|| StoreError::Corrupt("no at-rest key is loaded".into()))?;
        // A rotation while this process runs would leave it wrapping with the old key.
        let check: Option<String> = q("SELECT value FROM server_settings WHERE name = $1")
            .bind(KEY_CHECK_SETTING)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get(0));
        if check.is_some_and(|c| c != server.check_value()) {
            return Err(StoreError::Corrupt(
                "the at-rest key was rotated while the server ran; restart it with the new key".into(),
            ));
        }
        q(
            "INSERT INTO room_data_keys (room_id, wrapped_key, created_ts) VALUES ($1, $2, $3) \
           ON CONFLICT (room_id) DO NOTHING",
        )
        .bind(room_id.to_owned())
        .bind(server.wrap(room_id, &Key::generate()))
        .bind(now)
        .execute(&self.writer)
        .await?;
        let wrapped: String = q("SELECT wrapped_key FROM room_data_keys WHERE room_id = $1")
            .bind(room_id.to_owned())
            .fetch_one(&self.pool)
            .await?
            .get(0);
        let key = server
            .unwrap(room_id, &wrapped)
            .map_err(|_| StoreError::Corrupt(format!("cannot unwrap the at-rest data key of {room_id}")))?;
        at_rest::add_room_key(room_id, key);
        Ok(())
    }

    /// The search index's data key (made on first use, wrapped by the server key like a room's).
    pub async fn search_index_key(&self, now: i64) -> StoreResult<std::sync::Arc<Key>> {
        self.ensure_room_data_key(at_rest::SEARCH_INDEX_KEY_ID, now)
            .await?;
        at_rest::search_index_key().ok_or_else(|| StoreError::Corrupt("no search index key".into()))
    }

    /// Re-wraps every room's data key from `old` to `new` in one transaction (events are not
    /// rewritten) and records `new` as the database's key. Returns how many keys were re-wrapped.
    pub async fn rewrap_at_rest_keys(&self, old: &Key, new: &Key) -> StoreResult<usize> {
        let mut tx = self.begin_write().await?;
        let check: Option<String> = q("SELECT value FROM server_settings WHERE name = $1")
            .bind(KEY_CHECK_SETTING)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
        if check.is_some_and(|c| c != old.check_value()) {
            return Err(StoreError::Corrupt(
                "the configured at-rest key is not this database's key; nothing was changed".into(),
            ));
        }
        let rows = q("SELECT room_id, wrapped_key FROM room_data_keys")
            .fetch_all(&mut *tx)
            .await?;
        let count = rows.len();
        for row in rows {
            let (room_id, wrapped): (String, String) = (row.get(0), row.get(1));
            let key = old.unwrap(&room_id, &wrapped).map_err(|_| {
                StoreError::Corrupt(format!("cannot unwrap the at-rest data key of {room_id}"))
            })?;
            q("UPDATE room_data_keys SET wrapped_key = $2 WHERE room_id = $1")
                .bind(room_id.clone())
                .bind(new.wrap(&room_id, &key))
                .execute(&mut *tx)
                .await?;
        }
        q("INSERT INTO server_settings (name, value) VALUES ($1, $2) \
           ON CONFLICT (name) DO UPDATE SET value = excluded.value")
        .bind(KEY_CHECK_SETTING)
        .bind(new.check_value())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(count)
    }
}

/// Seals the JSON of events whose room is encrypted at rest, in place; returns the plaintexts
/// to put back with [`unseal_in_place`] once written.
pub(super) fn seal_in_place<'a>(events: impl Iterator<Item = &'a mut NewEvent>) -> Vec<Option<String>> {
    events
        .map(|event| {
            at_rest::seal(&event.room_id, &event.json)
                .map(|sealed| std::mem::replace(&mut event.json, sealed))
        })
        .collect()
}

pub(super) fn unseal_in_place<'a>(
    events: impl Iterator<Item = &'a mut NewEvent>,
    plain: Vec<Option<String>>,
) {
    for (event, plain) in events.zip(plain) {
        if let Some(plain) = plain {
            event.json = plain;
        }
    }
}

/// The events as they are to be stored: sealed copies where their room is encrypted at rest.
pub(super) fn sealed(events: &[NewEvent]) -> Cow<'_, [NewEvent]> {
    if !events.iter().any(|e| at_rest::is_sealed_room(&e.room_id)) {
        return Cow::Borrowed(events);
    }
    Cow::Owned(
        events
            .iter()
            .map(|event| NewEvent {
                json: at_rest::seal(&event.room_id, &event.json).unwrap_or_else(|| event.json.clone()),
                ..event.clone()
            })
            .collect(),
    )
}

/// An event's JSON as read from the database: decrypted when sealed.
pub(super) fn open(room_id: &str, stored: String) -> String {
    at_rest::open(room_id, stored)
}
