//! Accounts: registration, passwords (argon2id), access and refresh tokens (stored as SHA-256
//! hashes), and user-interactive authentication.

pub mod account;
pub mod account_data;
pub mod devices;
pub mod login;
pub mod openid;
pub mod presence;
pub mod profile;
pub mod uia;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::Rng;
use ruma::{OwnedUserId, UserId};
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, Result},
    services::Services,
    store::{NewAccessToken, NewRefreshToken, Refreshed},
    util::{now_ms, random_string},
};

/// A new access token: 32 random bytes, URL-safe base64.
pub fn new_access_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("hth_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A new refresh token: like an access token, with a prefix of its own.
pub fn new_refresh_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("hthr_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What is stored for a token: its SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    crate::util::hex(&Sha256::digest(token.as_bytes()))
}

/// Password hashes computed at once. Each argon2id hash holds 19 MiB while it runs; unbounded,
/// a burst of registrations or logins would grow the heap by that much per request.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// An argon2id hash in PHC string format. Runs on a blocking thread: it is slow on purpose.
pub async fn hash_password(password: &str) -> Result<String> {
    let _permit = HASHING.acquire().await.map_err(Error::internal)?;
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt_bytes: [u8; 16] = rand::rng().random();
        let salt = SaltString::encode_b64(&salt_bytes).map_err(Error::internal)?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(Error::internal)
    })
    .await
    .map_err(Error::internal)?
}

pub async fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(_permit) = HASHING.acquire().await else {
        return false;
    };
    let (password, hash) = (password.to_owned(), hash.to_owned());
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Checks a requested localpart against the spec's grammar for new user IDs.
pub fn user_id_for(localpart: &str, server_name: &str) -> Result<OwnedUserId> {
    let valid = !localpart.is_empty()
        && localpart
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'));
    if !valid {
        return Err(Error::invalid_username(
            "User ID may only contain lowercase letters, digits and ._=-/+",
        ));
    }
    let user_id = UserId::parse(format!("@{localpart}:{server_name}"))
        .map_err(|_| Error::invalid_username("Invalid user ID"))?;
    if user_id.as_str().len() > 255 {
        return Err(Error::invalid_username("User ID is longer than 255 bytes"));
    }
    Ok(user_id)
}

/// The tokens a login, registration or refresh hands out.
#[derive(Debug, serde::Serialize)]
pub struct Tokens {
    pub access_token: String,
    pub device_id: String,
    /// Given when the client asked for one and refresh tokens are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The access token's lifetime; `None`: it never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

/// A new refresh token and its expiring access token.
struct Refreshable {
    refresh_token: String,
    /// Expiry times, in ms since the epoch.
    refresh_expires: Option<i64>,
    access_token: String,
    access_expires: i64,
    lifetime_ms: u64,
}

impl Refreshable {
    /// `None` when refresh tokens are off.
    fn new(svc: &Services, now: i64) -> Option<Self> {
        let auth = &svc.config.auth;
        let lifetime_ms = auth.refreshable_access_token_lifetime_ms;
        if lifetime_ms == 0 {
            return None;
        }
        let after = |ms: u64| now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
        Some(Self {
            refresh_token: new_refresh_token(),
            refresh_expires: auth.refresh_token_lifetime_ms.map(after),
            access_token: new_access_token(),
            access_expires: after(lifetime_ms),
            lifetime_ms,
        })
    }
}

/// A new session on a device. With `want_refresh` (the client's `refresh_token: true`) and
/// refresh tokens on, the access token expires and comes with a refresh token; otherwise it
/// never expires, as for clients that do not know refresh tokens.
pub async fn login_device(
    svc: &Services,
    user_id: &UserId,
    device_id: Option<&str>,
    display_name: Option<&str>,
    want_refresh: bool,
) -> Result<Tokens> {
    let device_id = device_id
        .map(ToOwned::to_owned)
        .unwrap_or_else(|| random_string(10).to_uppercase());
    let now = now_ms();
    let refreshable = want_refresh.then(|| Refreshable::new(svc, now)).flatten();
    let tokens = match refreshable {
        Some(new) => {
            let (access_hash, refresh_hash) = (hash_token(&new.access_token), hash_token(&new.refresh_token));
            svc.store
                .create_device_with_token(
                    user_id.as_str(),
                    &device_id,
                    display_name,
                    NewAccessToken {
                        hash: &access_hash,
                        expires_ts: Some(new.access_expires),
                        refresh_hash: Some(&refresh_hash),
                    },
                    Some(NewRefreshToken {
                        hash: &refresh_hash,
                        expires_ts: new.refresh_expires,
                    }),
                    now,
                )
                .await?;
            Tokens {
                access_token: new.access_token,
                device_id,
                refresh_token: Some(new.refresh_token),
                expires_in_ms: Some(new.lifetime_ms),
            }
        }
        None => {
            let access_token = new_access_token();
            let access = NewAccessToken {
                hash: &hash_token(&access_token),
                expires_ts: None,
                refresh_hash: None,
            };
            svc.store
                .create_device_with_token(user_id.as_str(), &device_id, display_name, access, None, now)
                .await?;
            Tokens {
                access_token,
                device_id,
                refresh_token: None,
                expires_in_ms: None,
            }
        }
    };
    Ok(tokens)
}

/// `POST /refresh`: a new access token and a new refresh token for a refresh token. Unknown
/// (never issued, logged out, or retired by the use of its successor) and expired refresh
/// tokens are 401 `M_UNKNOWN_TOKEN`; only an expired one, whose device still exists, is a soft
/// logout (the client may log in again on the same device).
pub async fn refresh(svc: &Services, refresh_token: &str) -> Result<Tokens> {
    let now = now_ms();
    // Like Synapse, a server with refresh tokens off has no `/refresh`.
    let Some(new) = Refreshable::new(svc, now) else {
        return Err(Error::Unrecognized {
            method_not_allowed: false,
        });
    };
    let outcome = svc
        .store
        .rotate_refresh_token(
            &hash_token(refresh_token),
            NewRefreshToken {
                hash: &hash_token(&new.refresh_token),
                expires_ts: new.refresh_expires,
            },
            Some(new.access_expires),
            &hash_token(&new.access_token),
            now,
        )
        .await?;
    match outcome {
        Refreshed::Done(_, device_id) => Ok(Tokens {
            access_token: new.access_token,
            device_id,
            refresh_token: Some(new.refresh_token),
            expires_in_ms: Some(new.lifetime_ms),
        }),
        Refreshed::Unknown => Err(refresh_refused("Unknown refresh token", false)),
        Refreshed::Expired => Err(refresh_refused("Refresh token expired", true)),
    }
}

fn refresh_refused(message: &str, soft_logout: bool) -> Error {
    let _ = message;
    Error::unknown_token(soft_logout)
}

/// How stale a device's stored last-seen time may get before a request refreshes it.
const LAST_SEEN_RESOLUTION_MS: i64 = 60_000;

/// Who an access token belongs to.
#[derive(Clone)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub token_hash: String,
}

/// The session of an access token, recording when (and from where) its device was last seen.
/// Unknown: `M_UNKNOWN_TOKEN`; expired: the same with `soft_logout` (the client may refresh or
/// log in again).
pub async fn authenticate(svc: &Services, token: &str, ip: Option<&str>) -> Result<Session> {
    Ok(authenticate_until(svc, token, ip).await?.0)
}

/// [`authenticate`], with when the token stops working (`None`: never).
async fn authenticate_until(svc: &Services, token: &str, ip: Option<&str>) -> Result<(Session, Option<i64>)> {
    let token_hash = hash_token(token);
    let now = now_ms();
    let owner = svc
        .store
        .token_owner(&token_hash, now)
        .await?
        .ok_or_else(|| Error::unknown_token(false))?;
    if owner.expires_ts.is_some_and(|at| at <= now) {
        return Err(Error::unknown_token(true));
    }
    let user_id = UserId::parse(owner.user_id).map_err(Error::internal)?;
    record_last_seen(svc, &user_id, &owner.device_id, ip).await?;
    let session = Session {
        user_id,
        device_id: owner.device_id,
        token_hash,
    };
    Ok((session, owner.expires_ts))
}

/// The access token of a held connection (a WebSocket stream), checked again before each
/// thing it delivers. The full check ([`authenticate`]: hash, owner, last seen) runs only when
/// its answer could have changed: a token was deleted since (the store's token generation
/// moved: logout, deactivation, refresh), the token's expiry has come, or the device's last-seen
/// time is due for a refresh ([`HeldToken::unchanged`]); otherwise the last answer stands.
pub struct HeldToken {
    token: String,
    generation: u64,
    expires_ts: Option<i64>,
    checked_at: i64,
}

impl HeldToken {
    /// Authenticates `token` (as [`authenticate`]) and keeps it for [`HeldToken::check`].
    pub async fn authenticate(svc: &Services, token: String, ip: Option<&str>) -> Result<(Self, Session)> {
        // Read before the check: a deletion during it moves the generation past this one.
        let generation = svc.store.tokens_generation();
        let (session, expires_ts) = authenticate_until(svc, &token, ip).await?;
        let held = Self {
            token,
            generation,
            expires_ts,
            checked_at: now_ms(),
        };
        Ok((held, session))
    }

    /// Whether the last check's answer still stands: nothing that could change it happened.
    pub fn unchanged(&self, svc: &Services) -> bool {
        let now = now_ms();
        svc.store.tokens_generation() == self.generation
            && self.expires_ts.is_none_or(|at| at > now)
            && now - self.checked_at < LAST_SEEN_RESOLUTION_MS
    }

    /// Checks the token again in full: the errors of [`authenticate`].
    pub async fn check(&mut self, svc: &Services, ip: Option<&str>) -> Result<()> {
        let now = now_ms();
        let generation = svc.store.tokens_generation();
        let (_, expires_ts) = authenticate_until(svc, &self.token, ip).await?;
        self.generation = generation;
        self.expires_ts = expires_ts;
        self.checked_at = now;
        Ok(())
    }
}

/// Records that a device made a request, writing to the database at most once a minute.
pub async fn record_last_seen(
    svc: &Services,
    user_id_typed: &UserId,
    device_id: &str,
    ip: Option<&str>,
) -> Result<()> {
    let user_id = user_id_typed.as_str();
    let now = now_ms();
    let key = (user_id.to_owned(), device_id.to_owned());
    {
        let mut written = svc.last_seen_written.lock().unwrap_or_else(|e| e.into_inner());
        if written
            .get(&key)
            .is_some_and(|at| now - at < LAST_SEEN_RESOLUTION_MS)
        {
            return Ok(());
        }
        if written.len() > 100_000 {
            written.clear();
        }
        written.insert(key, now);
    }
    svc.store.touch_device(user_id, device_id, ip, now).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_verify_only_against_their_own_hash() {
        let hash = hash_password("correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash).await);
        assert!(!verify_password("wrong", &hash).await);
    }

    #[test]
    fn tokens_are_long_and_hashes_differ_from_them() {
        let token = new_access_token();
        assert!(token.len() >= 43);
        assert_ne!(hash_token(&token), token);
        assert_eq!(hash_token(&token), hash_token(&token));
    }

    #[test]
    fn refresh_tokens_differ_from_access_tokens() {
        let (refresh, access) = (new_refresh_token(), new_access_token());
        assert!(refresh.starts_with("hthr_") && access.starts_with("hth_"));
        assert_ne!(hash_token(&refresh), hash_token(&access));
    }

    /// A held token is checked in full again only after tokens were deleted, and a deletion
    /// of its own is then refused.
    #[tokio::test]
    async fn a_held_token_is_checked_again_after_any_token_is_deleted() {
        let test = crate::services::TestServices::new().await;
        let svc = &test.svc;
        let alice = ruma::user_id!("@alice:hearth.test");
        svc.store
            .create_user(alice.as_str(), None, "alice", now_ms())
            .await
            .unwrap();
        let phone = login_device(svc, alice, Some("PHONE"), None, false)
            .await
            .unwrap();
        login_device(svc, alice, Some("LAPTOP"), None, false)
            .await
            .unwrap();
        let (mut held, session) = HeldToken::authenticate(svc, phone.access_token, None)
            .await
            .unwrap();
        assert_eq!(session.device_id, "PHONE");
        assert!(held.unchanged(svc));

        account::logout(svc, alice, "LAPTOP").await.unwrap();
        assert!(!held.unchanged(svc), "a deletion may have been this token's");
        held.check(svc, None).await.expect("still valid");
        assert!(held.unchanged(svc));

        account::logout(svc, alice, "PHONE").await.unwrap();
        assert!(!held.unchanged(svc));
        let refused = held.check(svc, None).await.expect_err("logged out");
        assert_eq!(refused.errcode(), "M_UNKNOWN_TOKEN");
    }

    #[test]
    fn localparts_follow_the_grammar() {
        assert!(user_id_for("alice.b-1", "example.org").is_ok());
        assert_eq!(
            user_id_for("Alice", "example.org").unwrap_err().errcode(),
            "M_INVALID_USERNAME"
        );
        assert_eq!(
            user_id_for("", "example.org").unwrap_err().errcode(),
            "M_INVALID_USERNAME"
        );
        assert_eq!(
            user_id_for("a b", "example.org").unwrap_err().errcode(),
            "M_INVALID_USERNAME"
        );
    }
}
