//! OpenID tokens (Client-Server API §OpenID, Server-Server API §OpenID): a user asks for a
//! token and hands it to a third party, which asks this server's `openid/userinfo` who it
//! belongs to. The token proves nothing else: it is not an access token.

use ruma::UserId;

use super::{hash_token, new_access_token};
use crate::{
    error::{Error, Result},
    services::Services,
};

/// How long a token answers `userinfo` (the spec's example, and Synapse's default).
pub const EXPIRES_IN_MS: i64 = 3_600_000;

/// `POST /user/{userId}/openid/request_token`: a new token for `user`, and its lifetime in ms.
pub async fn request_token(svc: &Services, user: &UserId, path_user: &str) -> Result<(String, i64)> {
    if user.as_str() != path_user {
        return Err(Error::forbidden(
            "Cannot request an OpenID token for another user",
        ));
    }
    let token = new_access_token();
    let now = svc.clock.now_ms();
    svc.store
        .insert_openid_token(&hash_token(&token), user.as_str(), now + EXPIRES_IN_MS, now)
        .await?;
    Ok((token, EXPIRES_IN_MS))
}

/// `GET /_matrix/federation/v1/openid/userinfo`: the owner of an unexpired token, else 401
/// `M_UNKNOWN_TOKEN`.
pub async fn userinfo(svc: &Services, token: &str) -> Result<String> {
    svc.store
        .openid_token_owner(&hash_token(token), svc.clock.now_ms())
        .await?
        .ok_or_else(|| Error::unknown_token(false))
}
