//! Accounts: registration, passwords (argon2id), access tokens (stored as SHA-256 hashes),
//! and user-interactive authentication.

pub mod presence;
pub mod uia;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{Rng, distr::Alphanumeric};
use ruma::{OwnedUserId, UserId};
use sha2::{Digest, Sha256};

use crate::{
    error::{ApiError, ApiResult},
    services::{Services, now_ms},
};

/// Letters and digits, for device IDs, session IDs and room ID localparts.
pub fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A new access token: 32 random bytes, URL-safe base64.
pub fn new_access_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("hth_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What is stored for a token: its SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An argon2id hash in PHC string format. Runs on a blocking thread: it is slow on purpose.
pub async fn hash_password(password: &str) -> ApiResult<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt_bytes: [u8; 16] = rand::rng().random();
        let salt = SaltString::encode_b64(&salt_bytes).map_err(ApiError::internal)?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

pub async fn verify_password(password: &str, hash: &str) -> bool {
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
pub fn user_id_for(localpart: &str, server_name: &str) -> ApiResult<OwnedUserId> {
    let valid = !localpart.is_empty()
        && localpart
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'));
    if !valid {
        return Err(ApiError::invalid_username(
            "User ID may only contain lowercase letters, digits and ._=-/+",
        ));
    }
    let user_id = UserId::parse(format!("@{localpart}:{server_name}"))
        .map_err(|_| ApiError::invalid_username("Invalid user ID"))?;
    if user_id.as_str().len() > 255 {
        return Err(ApiError::invalid_username("User ID is longer than 255 bytes"));
    }
    Ok(user_id)
}

/// A new session on a device: (access token, device ID).
pub async fn login_device(
    svc: &Services,
    user_id: &UserId,
    device_id: Option<&str>,
    display_name: Option<&str>,
) -> ApiResult<(String, String)> {
    let device_id = device_id
        .map(ToOwned::to_owned)
        .unwrap_or_else(|| random_string(10).to_uppercase());
    let token = new_access_token();
    svc.store
        .create_device_with_token(
            user_id.as_str(),
            &device_id,
            display_name,
            &hash_token(&token),
            now_ms(),
        )
        .await?;
    Ok((token, device_id))
}

/// How stale a device's stored last-seen time may get before a request refreshes it.
const LAST_SEEN_RESOLUTION_MS: i64 = 60_000;

/// Records that a device made a request, writing to the database at most once a minute.
pub async fn record_last_seen(
    svc: &Services,
    user_id: &str,
    device_id: &str,
    ip: Option<&str>,
) -> ApiResult<()> {
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

/// Resolves the `identifier` (or legacy `user`) of a login request to a local user ID.
pub fn login_user_id(body: &serde_json::Value, server_name: &str) -> ApiResult<OwnedUserId> {
    let user = match body.get("identifier") {
        Some(identifier) => {
            if identifier.get("type").and_then(|t| t.as_str()) != Some("m.id.user") {
                return Err(ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "M_UNKNOWN",
                    "Only m.id.user identifiers are supported",
                ));
            }
            identifier.get("user")
        }
        None => body.get("user"),
    }
    .and_then(|u| u.as_str())
    .ok_or_else(|| ApiError::bad_json("Missing user identifier"))?;
    let user_id = if user.starts_with('@') {
        UserId::parse(user).map_err(|_| ApiError::forbidden("Invalid username or password"))?
    } else {
        UserId::parse(format!("@{}:{server_name}", user.to_lowercase()))
            .map_err(|_| ApiError::forbidden("Invalid username or password"))?
    };
    Ok(user_id)
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
    fn localparts_follow_the_grammar() {
        assert!(user_id_for("alice.b-1", "example.org").is_ok());
        assert_eq!(
            user_id_for("Alice", "example.org").unwrap_err().errcode,
            "M_INVALID_USERNAME"
        );
        assert_eq!(
            user_id_for("", "example.org").unwrap_err().errcode,
            "M_INVALID_USERNAME"
        );
        assert_eq!(
            user_id_for("a b", "example.org").unwrap_err().errcode,
            "M_INVALID_USERNAME"
        );
    }
}
