//! Accounts, devices, access tokens and user-interactive auth sessions.

use std::collections::HashMap;

use sqlx::Row;

use super::{Store, StoreResult, q};

/// Owners of recently used access tokens. Every function that deletes tokens empties it after
/// its commit and bumps `generation`, so a lookup that read the database before a logout cannot
/// put the dead token back. Valid while this process is the only one deleting tokens. Entries
/// keep the token's expiry, so a cached token still stops working on time.
#[derive(Debug, Default)]
pub(super) struct TokenCache {
    generation: u64,
    owners: HashMap<String, TokenOwner>,
}

/// Who an access token belongs to, and until when it works.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user_id: String,
    pub device_id: String,
    /// When the token stops working (ms since the epoch); `None`: never.
    pub expires_ts: Option<i64>,
}

/// A new access token to store: its hash, expiry, and the hash of the refresh token issued with
/// it (which, when deleted, takes the access token along).
#[derive(Debug, Clone, Copy)]
pub struct NewAccessToken<'a> {
    pub hash: &'a str,
    pub expires_ts: Option<i64>,
    pub refresh_hash: Option<&'a str>,
}

/// A new refresh token to store: its hash and expiry.
#[derive(Debug, Clone, Copy)]
pub struct NewRefreshToken<'a> {
    pub hash: &'a str,
    pub expires_ts: Option<i64>,
}

/// What presenting a refresh token achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// New tokens were stored for this (user ID, device ID).
    Done(String, String),
    /// No such refresh token: never issued, logged out, or replaced by a successor in use.
    Unknown,
    /// The refresh token outlived its lifetime.
    Expired,
}

/// Tokens kept before the cache starts again empty.
const MAX_CACHED_TOKENS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct UserRow {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub deactivated: bool,
}

#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub last_seen_ip: Option<String>,
}

impl Store {
    /// Creates an account; `false` when the user ID is taken.
    pub async fn create_user(
        &self,
        user_id: &str,
        password_hash: Option<&str>,
        displayname: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let done = q(
            "INSERT INTO users (user_id, password_hash, displayname, created_ts) \
                      VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(user_id.to_owned())
        .bind(password_hash.map(ToOwned::to_owned))
        .bind(displayname.to_owned())
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn user(&self, user_id: &str) -> StoreResult<Option<UserRow>> {
        let row = q(
            "SELECT user_id, password_hash, displayname, avatar_url, deactivated \
                     FROM users WHERE user_id = $1",
        )
        .bind(user_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| UserRow {
            user_id: r.get(0),
            password_hash: r.get(1),
            displayname: r.get(2),
            avatar_url: r.get(3),
            deactivated: r.get::<i64, _>(4) != 0,
        }))
    }

    pub async fn set_password_hash(&self, user_id: &str, hash: Option<&str>) -> StoreResult<()> {
        q("UPDATE users SET password_hash = $2 WHERE user_id = $1")
            .bind(user_id.to_owned())
            .bind(hash.map(ToOwned::to_owned))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn set_displayname(&self, user_id: &str, name: Option<&str>) -> StoreResult<()> {
        q("UPDATE users SET displayname = $2 WHERE user_id = $1")
            .bind(user_id.to_owned())
            .bind(name.map(ToOwned::to_owned))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn set_avatar_url(&self, user_id: &str, url: Option<&str>) -> StoreResult<()> {
        q("UPDATE users SET avatar_url = $2 WHERE user_id = $1")
            .bind(user_id.to_owned())
            .bind(url.map(ToOwned::to_owned))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Marks the account deactivated and removes its password, devices and tokens.
    pub async fn deactivate_user(&self, user_id: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        q(
            "UPDATE users SET deactivated = 1, password_hash = NULL, displayname = NULL, \
           avatar_url = NULL WHERE user_id = $1",
        )
        .bind(user_id.to_owned())
        .execute(&mut *tx)
        .await?;
        q("DELETE FROM access_tokens WHERE user_id = $1")
            .bind(user_id.to_owned())
            .execute(&mut *tx)
            .await?;
        q("DELETE FROM refresh_tokens WHERE user_id = $1")
            .bind(user_id.to_owned())
            .execute(&mut *tx)
            .await?;
        self.delete_user_e2ee_in(&mut tx, user_id).await?;
        q("DELETE FROM devices WHERE user_id = $1")
            .bind(user_id.to_owned())
            .execute(&mut *tx)
            .await?;
        q("DELETE FROM pushers WHERE user_id = $1")
            .bind(user_id.to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.forget_tokens();
        Ok(())
    }

    /// Creates the device if new (keeping its display name otherwise) and issues tokens for it:
    /// an access token, and a refresh token when the client asked for one.
    pub async fn create_device_with_token(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
        access: NewAccessToken<'_>,
        refresh: Option<NewRefreshToken<'_>>,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        q(
            "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts) VALUES ($1, $2, $3, $4) \
           ON CONFLICT (user_id, device_id) DO UPDATE SET last_seen_ts = excluded.last_seen_ts",
        )
        .bind(user_id.to_owned())
        .bind(device_id.to_owned())
        .bind(display_name.map(ToOwned::to_owned))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Logging in again with a known device ID replaces that device's old tokens.
        delete_device_tokens(&mut tx, user_id, device_id).await?;
        if let Some(refresh) = refresh {
            insert_refresh_token(&mut tx, user_id, device_id, refresh, None, now).await?;
        }
        insert_access_token(&mut tx, user_id, device_id, access, now).await?;
        tx.commit().await?;
        self.forget_tokens();
        Ok(())
    }

    /// Exchanges the refresh token `old_hash` for new tokens, unless it is unknown or expired.
    /// The old refresh token stays valid until the new access or refresh token is first used (so
    /// a client that lost this answer can repeat the refresh); refreshing it again replaces the
    /// successor issued here. Presenting it also retires its own predecessor, and with each
    /// retired refresh token go the access tokens issued with it.
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        refresh: NewRefreshToken<'_>,
        access_expires_ts: Option<i64>,
        access_hash: &str,
        now: i64,
    ) -> StoreResult<Refreshed> {
        let mut tx = self.begin_write().await?;
        // A no-op update locks the row on PostgreSQL, so two refreshes of one token take turns.
        let row = q(
            "UPDATE refresh_tokens SET replaces = replaces WHERE token_hash = $1 \
                     RETURNING user_id, device_id, expires_ts, replaces",
        )
        .bind(old_hash.to_owned())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Refreshed::Unknown);
        };
        let (user_id, device_id): (String, String) = (row.get(0), row.get(1));
        let expires_ts: Option<i64> = row.get(2);
        let replaces: Option<String> = row.get(3);
        if expires_ts.is_some_and(|at| at <= now) {
            return Ok(Refreshed::Expired);
        }
        if let Some(predecessor) = replaces {
            retire_refresh_tokens(&mut tx, Retire::Token(&predecessor)).await?;
            q("UPDATE refresh_tokens SET replaces = NULL WHERE token_hash = $1")
                .bind(old_hash.to_owned())
                .execute(&mut *tx)
                .await?;
        }
        // A repeated refresh: the successor handed out before was never used.
        retire_refresh_tokens(&mut tx, Retire::SuccessorsOf(old_hash)).await?;
        insert_refresh_token(&mut tx, &user_id, &device_id, refresh, Some(old_hash), now).await?;
        let access = NewAccessToken {
            hash: access_hash,
            expires_ts: access_expires_ts,
            refresh_hash: Some(refresh.hash),
        };
        insert_access_token(&mut tx, &user_id, &device_id, access, now).await?;
        tx.commit().await?;
        self.forget_tokens();
        Ok(Refreshed::Done(user_id, device_id))
    }

    /// Who an access token hash belongs to, expired or not (the caller checks `expires_ts`).
    /// The first use of an access token issued by a refresh retires the refresh token that was
    /// exchanged for it.
    pub async fn token_owner(&self, token_hash: &str, now: i64) -> StoreResult<Option<TokenOwner>> {
        let generation = {
            let cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(owner) = cache.owners.get(token_hash) {
                return Ok(Some(owner.clone()));
            }
            cache.generation
        };
        let row = q(
            "SELECT a.user_id, a.device_id, a.expires_ts, a.refresh_token_hash, r.replaces \
                     FROM access_tokens a LEFT JOIN refresh_tokens r ON r.token_hash = a.refresh_token_hash \
                     WHERE a.token_hash = $1",
        )
        .bind(token_hash.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let owner = TokenOwner {
            user_id: row.get(0),
            device_id: row.get(1),
            expires_ts: row.get(2),
        };
        let refresh_hash: Option<String> = row.get(3);
        let replaces: Option<String> = row.get(4);
        if let (Some(refresh_hash), Some(replaces)) = (refresh_hash, replaces) {
            // An expired token is refused, not used. Retiring forgets the cache, so this lookup
            // is not cached; the next one is.
            if owner.expires_ts.is_none_or(|at| at > now) {
                self.retire_replaced(&refresh_hash, &replaces).await?;
            }
            return Ok(Some(owner));
        }
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            if cache.owners.len() >= MAX_CACHED_TOKENS {
                cache.owners.clear();
            }
            cache.owners.insert(token_hash.to_owned(), owner.clone());
        }
        Ok(Some(owner))
    }

    /// Retires `replaced`, the refresh token that was exchanged for `current`, now that
    /// `current` (or its access token) is in use.
    async fn retire_replaced(&self, current: &str, replaced: &str) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        retire_refresh_tokens(&mut tx, Retire::Token(replaced)).await?;
        q("UPDATE refresh_tokens SET replaces = NULL WHERE token_hash = $1 AND replaces = $2")
            .bind(current.to_owned())
            .bind(replaced.to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.forget_tokens();
        Ok(())
    }

    /// How many times tokens were deleted by this process: an answer about a token read while
    /// this has not moved still stands (see [`crate::users::HeldToken`]).
    pub fn tokens_generation(&self) -> u64 {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).generation
    }

    /// Forgets every cached token owner (after tokens were deleted).
    fn forget_tokens(&self) {
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        cache.generation += 1;
        cache.owners.clear();
    }

    pub async fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        ip: Option<&str>,
        now: i64,
    ) -> StoreResult<()> {
        q("UPDATE devices SET last_seen_ts = $3, last_seen_ip = $4 WHERE user_id = $1 AND device_id = $2")
            .bind(user_id.to_owned())
            .bind(device_id.to_owned())
            .bind(now)
            .bind(ip.map(ToOwned::to_owned))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn delete_token(&self, token_hash: &str) -> StoreResult<()> {
        q("DELETE FROM access_tokens WHERE token_hash = $1")
            .bind(token_hash.to_owned())
            .execute(&self.writer)
            .await?;
        self.forget_tokens();
        Ok(())
    }

    /// Removes a device, every token issued to it and the pushers it set.
    pub async fn delete_device(&self, user_id: &str, device_id: &str) -> StoreResult<bool> {
        let mut tx = self.begin_write().await?;
        delete_device_tokens(&mut tx, user_id, device_id).await?;
        let done = q("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
            .bind(user_id.to_owned())
            .bind(device_id.to_owned())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 1 {
            self.delete_devices_e2ee_in(&mut tx, user_id, super::e2ee::Devices::One(device_id))
                .await?;
        }
        q("DELETE FROM pushers WHERE user_id = $1 AND device_id = $2")
            .bind(user_id.to_owned())
            .bind(device_id.to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.forget_tokens();
        Ok(done.rows_affected() == 1)
    }

    /// Removes every device of a user except `keep`, with their tokens and pushers (also those
    /// set before pushers recorded their device).
    pub async fn delete_devices_except(&self, user_id: &str, keep: Option<&str>) -> StoreResult<()> {
        let keep = keep.unwrap_or("").to_owned();
        let mut tx = self.begin_write().await?;
        q("DELETE FROM access_tokens WHERE user_id = $1 AND device_id <> $2")
            .bind(user_id.to_owned())
            .bind(keep.clone())
            .execute(&mut *tx)
            .await?;
        q("DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id <> $2")
            .bind(user_id.to_owned())
            .bind(keep.clone())
            .execute(&mut *tx)
            .await?;
        let done = q("DELETE FROM devices WHERE user_id = $1 AND device_id <> $2")
            .bind(user_id.to_owned())
            .bind(keep.clone())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() > 0 {
            self.delete_devices_e2ee_in(&mut tx, user_id, super::e2ee::Devices::AllExcept(&keep))
                .await?;
        }
        q("DELETE FROM pushers WHERE user_id = $1 AND (device_id IS NULL OR device_id <> $2)")
            .bind(user_id.to_owned())
            .bind(keep)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.forget_tokens();
        Ok(())
    }

    pub async fn devices(&self, user_id: &str) -> StoreResult<Vec<DeviceRow>> {
        let rows = q(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices \
                      WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(device_row).collect())
    }

    pub async fn device(&self, user_id: &str, device_id: &str) -> StoreResult<Option<DeviceRow>> {
        let row = q(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices \
                     WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id.to_owned())
        .bind(device_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(device_row))
    }

    pub async fn set_device_display_name(
        &self,
        user_id: &str,
        device_id: &str,
        name: Option<&str>,
    ) -> StoreResult<bool> {
        let done = q("UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2")
            .bind(user_id.to_owned())
            .bind(device_id.to_owned())
            .bind(name.map(ToOwned::to_owned))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Users `searcher` may find in the user directory: those sharing a joined room with them,
    /// and those joined to published rooms; matched on user ID or display name (`pattern` is a
    /// lowercase SQL LIKE pattern). Returns (user ID, display name, avatar URL).
    pub async fn search_user_directory(
        &self,
        searcher: &str,
        pattern: &str,
        limit: i64,
    ) -> StoreResult<Vec<(String, Option<String>, Option<String>)>> {
        let rows = q("SELECT u.user_id, u.displayname, u.avatar_url FROM users u \
                      WHERE u.deactivated = 0 AND (LOWER(u.user_id) LIKE $2 OR LOWER(COALESCE(u.displayname, '')) LIKE $2) \
                      AND u.user_id IN ( \
                        SELECT b.state_key FROM current_state a JOIN current_state b ON a.room_id = b.room_id \
                        WHERE a.type = 'm.room.member' AND b.type = 'm.room.member' AND a.state_key = $1 \
                        AND a.membership = 'join' AND b.membership = 'join' \
                        UNION \
                        SELECT c.state_key FROM current_state c JOIN rooms r ON r.room_id = c.room_id \
                        WHERE r.is_public = 1 AND c.type = 'm.room.member' AND c.membership = 'join') \
                      ORDER BY u.user_id LIMIT $3")
        .bind(searcher.to_owned())
        .bind(pattern.to_owned())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Starts a user-interactive auth session for `operation` (see `users::uia`), first
    /// deleting sessions created before `expired_before`.
    pub async fn create_uia_session(
        &self,
        session_id: &str,
        user_id: Option<&str>,
        operation: &str,
        now: i64,
        expired_before: i64,
    ) -> StoreResult<()> {
        q("DELETE FROM uia_sessions WHERE created_ts < $1")
            .bind(expired_before)
            .execute(&self.writer)
            .await?;
        q(
            "INSERT INTO uia_sessions (session_id, user_id, completed, created_ts, operation) \
           VALUES ($1, $2, '[]', $3, $4)",
        )
        .bind(session_id.to_owned())
        .bind(user_id.map(ToOwned::to_owned))
        .bind(now)
        .bind(operation.to_owned())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A session created at or after `created_since`: its owner, completed stages (a JSON
    /// array) and operation.
    pub async fn uia_session(
        &self,
        session_id: &str,
        created_since: i64,
    ) -> StoreResult<Option<(Option<String>, String, String)>> {
        let row = q("SELECT user_id, completed, operation FROM uia_sessions \
                     WHERE session_id = $1 AND created_ts >= $2")
        .bind(session_id.to_owned())
        .bind(created_since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    pub async fn set_uia_completed(&self, session_id: &str, completed: &str) -> StoreResult<()> {
        q("UPDATE uia_sessions SET completed = $2 WHERE session_id = $1")
            .bind(session_id.to_owned())
            .bind(completed.to_owned())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn delete_uia_session(&self, session_id: &str) -> StoreResult<()> {
        q("DELETE FROM uia_sessions WHERE session_id = $1")
            .bind(session_id.to_owned())
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Deletes a device's access and refresh tokens.
async fn delete_device_tokens(tx: &mut Tx, user_id: &str, device_id: &str) -> StoreResult<()> {
    q("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
        .bind(user_id.to_owned())
        .bind(device_id.to_owned())
        .execute(&mut **tx)
        .await?;
    q("DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2")
        .bind(user_id.to_owned())
        .bind(device_id.to_owned())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Which refresh tokens `retire_refresh_tokens` deletes.
#[derive(Clone, Copy)]
enum Retire<'a> {
    /// This one.
    Token(&'a str),
    /// Those that replaced this one.
    SuccessorsOf(&'a str),
}

/// Deletes refresh tokens and the access tokens issued with them. The caller empties the token
/// cache after its commit.
async fn retire_refresh_tokens(tx: &mut Tx, which: Retire<'_>) -> StoreResult<()> {
    let (access, refresh, hash) = match which {
        Retire::Token(hash) => (
            "DELETE FROM access_tokens WHERE refresh_token_hash = $1",
            "DELETE FROM refresh_tokens WHERE token_hash = $1",
            hash,
        ),
        Retire::SuccessorsOf(hash) => (
            "DELETE FROM access_tokens WHERE refresh_token_hash IN \
             (SELECT token_hash FROM refresh_tokens WHERE replaces = $1)",
            "DELETE FROM refresh_tokens WHERE replaces = $1",
            hash,
        ),
    };
    q(access).bind(hash.to_owned()).execute(&mut **tx).await?;
    q(refresh).bind(hash.to_owned()).execute(&mut **tx).await?;
    Ok(())
}

async fn insert_access_token(
    tx: &mut Tx,
    user_id: &str,
    device_id: &str,
    token: NewAccessToken<'_>,
    now: i64,
) -> StoreResult<()> {
    q("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts, refresh_token_hash) \
       VALUES ($1, $2, $3, $4, $5, $6)")
    .bind(token.hash.to_owned())
    .bind(user_id.to_owned())
    .bind(device_id.to_owned())
    .bind(now)
    .bind(token.expires_ts)
    .bind(token.refresh_hash.map(ToOwned::to_owned))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_refresh_token(
    tx: &mut Tx,
    user_id: &str,
    device_id: &str,
    token: NewRefreshToken<'_>,
    replaces: Option<&str>,
    now: i64,
) -> StoreResult<()> {
    q(
        "INSERT INTO refresh_tokens (token_hash, user_id, device_id, expires_ts, replaces, created_ts) \
       VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token.hash.to_owned())
    .bind(user_id.to_owned())
    .bind(device_id.to_owned())
    .bind(token.expires_ts)
    .bind(replaces.map(ToOwned::to_owned))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn device_row(r: sqlx::any::AnyRow) -> DeviceRow {
    DeviceRow {
        device_id: r.get(0),
        display_name: r.get(1),
        last_seen_ts: r.get(2),
        last_seen_ip: r.get(3),
    }
}
