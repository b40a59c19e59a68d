//! Server-side key backups: versions per user and the encrypted session keys in each. The
//! server never reads `auth_data` or `session_data`; the replacement rule's metadata sits in
//! columns of its own.

use sqlx::{Any, Row, Transaction};

use super::{Store, StoreResult, q};

/// A backup version that is not deleted, with the number of keys it holds.
#[derive(Debug, Clone)]
pub struct BackupVersionRow {
    pub version: i64,
    pub algorithm: String,
    pub auth_data: String,
    pub etag: i64,
    pub count: i64,
}

/// One backed-up session key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSessionRow {
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    /// The `session_data` object, JSON text.
    pub session_data: String,
}

/// What an upload of keys to a version came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupWrite {
    /// The version's keys after the write: (etag, count).
    Done { etag: i64, count: i64 },
    /// The version exists but is not the user's latest one, which is this.
    NotLatest { current: i64 },
    /// No such version (never created, or deleted).
    NotFound,
}

impl Store {
    /// Creates `user_id`'s next backup version (one more than any they ever had, deleted ones
    /// included) and returns its number.
    pub async fn create_backup_version(
        &self,
        user_id: &str,
        algorithm: &str,
        auth_data: &str,
    ) -> StoreResult<i64> {
        // Two creations at once on PostgreSQL may pick the same number; the loser tries again.
        let mut attempt = 0;
        loop {
            let mut tx = self.begin_write().await?;
            let next: i64 =
                q("SELECT COALESCE(MAX(version), 0) + 1 FROM key_backup_versions WHERE user_id = $1")
                    .bind(user_id.to_owned())
                    .fetch_one(&mut *tx)
                    .await?
                    .get(0);
            let inserted = q(
                "INSERT INTO key_backup_versions (user_id, version, algorithm, auth_data) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(user_id.to_owned())
            .bind(next)
            .bind(algorithm.to_owned())
            .bind(auth_data.to_owned())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                tx.commit().await?;
                return Ok(next);
            }
            attempt += 1;
            if attempt >= 5 {
                return Err(super::StoreError::Corrupt(
                    "could not allocate a backup version number".into(),
                ));
            }
        }
    }

    /// `user_id`'s latest backup version that is not deleted.
    pub async fn latest_backup_version(&self, user_id: &str) -> StoreResult<Option<BackupVersionRow>> {
        let row = q(
            "SELECT version FROM key_backup_versions WHERE user_id = $1 AND deleted = 0 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(user_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => self.backup_version(user_id, row.get(0)).await,
            None => Ok(None),
        }
    }

    /// One of `user_id`'s backup versions, unless it does not exist or is deleted.
    pub async fn backup_version(&self, user_id: &str, version: i64) -> StoreResult<Option<BackupVersionRow>> {
        let row = q("SELECT algorithm, auth_data, etag, \
               (SELECT COUNT(*) FROM key_backup_sessions s WHERE s.user_id = v.user_id AND s.version = v.version) \
             FROM key_backup_versions v WHERE user_id = $1 AND version = $2 AND deleted = 0")
        .bind(user_id.to_owned())
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| BackupVersionRow {
            version,
            algorithm: r.get(0),
            auth_data: r.get(1),
            etag: r.get(2),
            count: r.get(3),
        }))
    }

    /// Replaces a live version's `auth_data`; false when there is no such version.
    pub async fn update_backup_auth_data(
        &self,
        user_id: &str,
        version: i64,
        auth_data: &str,
    ) -> StoreResult<bool> {
        let updated = q("UPDATE key_backup_versions SET auth_data = $3 WHERE user_id = $1 AND version = $2 AND deleted = 0")
            .bind(user_id.to_owned())
            .bind(version)
            .bind(auth_data.to_owned())
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(updated == 1)
    }

    /// Deletes a version and all its keys. `None` when the version never existed; `Some(false)`
    /// when it was deleted before.
    pub async fn delete_backup_version(&self, user_id: &str, version: i64) -> StoreResult<Option<bool>> {
        let mut tx = self.begin_write().await?;
        let row = q("SELECT deleted FROM key_backup_versions WHERE user_id = $1 AND version = $2")
            .bind(user_id.to_owned())
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let was_deleted: i64 = row.get(0);
        q("UPDATE key_backup_versions SET deleted = 1, auth_data = '{}' WHERE user_id = $1 AND version = $2")
            .bind(user_id.to_owned())
            .bind(version)
            .execute(&mut *tx)
            .await?;
        q("DELETE FROM key_backup_sessions WHERE user_id = $1 AND version = $2")
            .bind(user_id.to_owned())
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(was_deleted == 0))
    }

    /// Stores uploaded session keys in `version`, which must be `user_id`'s latest. For a
    /// session already stored, `replaces(stored, new)` decides which one stays. The etag moves
    /// only when something changed. The version row is locked for the whole write, so
    /// concurrent uploads decide one after the other.
    pub async fn put_backup_sessions(
        &self,
        user_id: &str,
        version: i64,
        sessions: &[BackupSessionRow],
        replaces: impl Fn(&BackupSessionRow, &BackupSessionRow) -> bool,
    ) -> StoreResult<BackupWrite> {
        let mut tx = self.begin_write().await?;
        let current: Option<i64> = q(
            "SELECT version FROM key_backup_versions WHERE user_id = $1 AND deleted = 0 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(user_id.to_owned())
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get(0));
        let Some(current) = current else {
            return Ok(BackupWrite::NotFound);
        };
        if current != version {
            let exists =
                q("SELECT 1 FROM key_backup_versions WHERE user_id = $1 AND version = $2 AND deleted = 0")
                    .bind(user_id.to_owned())
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
            return Ok(if exists {
                BackupWrite::NotLatest { current }
            } else {
                BackupWrite::NotFound
            });
        }
        // Takes the version row's lock (PostgreSQL; SQLite holds the database's) and moves
        // the etag; rolled back below when nothing changes.
        let etag: i64 = q("UPDATE key_backup_versions SET etag = etag + 1 \
             WHERE user_id = $1 AND version = $2 AND deleted = 0 RETURNING etag")
        .bind(user_id.to_owned())
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get(0))
        .ok_or_else(|| super::StoreError::Corrupt("backup version vanished".into()))?;
        let mut changed = false;
        for new in sessions {
            let stored =
                Self::backup_session_in(&mut tx, user_id, version, &new.room_id, &new.session_id).await?;
            if stored.as_ref().is_some_and(|stored| !replaces(stored, new)) {
                continue;
            }
            q("INSERT INTO key_backup_sessions (user_id, version, room_id, session_id, first_message_index, \
                 forwarded_count, is_verified, session_data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
               ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET \
                 first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count, \
                 is_verified = excluded.is_verified, session_data = excluded.session_data")
            .bind(user_id.to_owned())
            .bind(version)
            .bind(new.room_id.clone())
            .bind(new.session_id.clone())
            .bind(new.first_message_index)
            .bind(new.forwarded_count)
            .bind(i64::from(new.is_verified))
            .bind(new.session_data.clone())
            .execute(&mut *tx)
            .await?;
            changed = true;
        }
        let count = Self::backup_count_in(&mut tx, user_id, version).await?;
        if changed {
            tx.commit().await?;
            Ok(BackupWrite::Done { etag, count })
        } else {
            tx.rollback().await?;
            Ok(BackupWrite::Done {
                etag: etag - 1,
                count,
            })
        }
    }

    async fn backup_session_in(
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        version: i64,
        room_id: &str,
        session_id: &str,
    ) -> StoreResult<Option<BackupSessionRow>> {
        let row = q(
            "SELECT first_message_index, forwarded_count, is_verified, session_data FROM key_backup_sessions \
             WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
        )
        .bind(user_id.to_owned())
        .bind(version)
        .bind(room_id.to_owned())
        .bind(session_id.to_owned())
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(|r| BackupSessionRow {
            room_id: room_id.to_owned(),
            session_id: session_id.to_owned(),
            first_message_index: r.get(0),
            forwarded_count: r.get(1),
            is_verified: r.get::<i64, _>(2) != 0,
            session_data: r.get(3),
        }))
    }

    async fn backup_count_in(
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        version: i64,
    ) -> StoreResult<i64> {
        Ok(
            q("SELECT COUNT(*) FROM key_backup_sessions WHERE user_id = $1 AND version = $2")
                .bind(user_id.to_owned())
                .bind(version)
                .fetch_one(&mut **tx)
                .await?
                .get(0),
        )
    }

    /// The keys of `version` (all, one room's, or one session's), ordered by room and session.
    /// The caller has checked that the version exists.
    pub async fn backup_sessions(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> StoreResult<Vec<BackupSessionRow>> {
        let rows = q(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data \
             FROM key_backup_sessions WHERE user_id = $1 AND version = $2 \
               AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4) \
             ORDER BY room_id, session_id",
        )
        .bind(user_id.to_owned())
        .bind(version)
        .bind(room_id.unwrap_or("").to_owned())
        .bind(session_id.unwrap_or("").to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| BackupSessionRow {
                room_id: r.get(0),
                session_id: r.get(1),
                first_message_index: r.get(2),
                forwarded_count: r.get(3),
                is_verified: r.get::<i64, _>(4) != 0,
                session_data: r.get(5),
            })
            .collect())
    }

    /// Deletes keys of a live `version` (all, one room's, or one session's); the etag moves
    /// when any went. `None` when the version does not exist or is deleted.
    pub async fn delete_backup_sessions(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> StoreResult<Option<(i64, i64)>> {
        let mut tx = self.begin_write().await?;
        let etag: Option<i64> =
            q("SELECT etag FROM key_backup_versions WHERE user_id = $1 AND version = $2 AND deleted = 0")
                .bind(user_id.to_owned())
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get(0));
        let Some(mut etag) = etag else {
            return Ok(None);
        };
        let deleted = q(
            "DELETE FROM key_backup_sessions WHERE user_id = $1 AND version = $2 \
               AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)",
        )
        .bind(user_id.to_owned())
        .bind(version)
        .bind(room_id.unwrap_or("").to_owned())
        .bind(session_id.unwrap_or("").to_owned())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted > 0 {
            etag = q("UPDATE key_backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2 RETURNING etag")
                .bind(user_id.to_owned())
                .bind(version)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
        }
        let count = Self::backup_count_in(&mut tx, user_id, version).await?;
        tx.commit().await?;
        Ok(Some((etag, count)))
    }
}
