//! `POST /login` with a password, and the user identifiers that login and the UIA password
//! stage share.
//!
//! The request is our own type, not ruma's: ruma's `LoginInfo` panics on a body without
//! `type`, and its `Password` refuses the legacy top-level `user` that clients still send.

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde::Deserialize;

use crate::{
    error::{Error, Result},
    ratelimit::Action,
    services::Services,
    users::{self, Tokens},
};

/// Who a login (or a UIA password stage) claims to be: `identifier`, or the legacy `user`.
#[derive(Debug, Default, Deserialize)]
pub struct Identity {
    identifier: Option<Identifier>,
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Identifier {
    #[serde(rename = "type")]
    kind: String,
    user: Option<String>,
}

/// The body of `POST /login`.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    #[serde(rename = "type")]
    pub login_type: String,
    pub password: Option<String>,
    pub device_id: Option<OwnedDeviceId>,
    pub initial_device_display_name: Option<String>,
    #[serde(default)]
    pub refresh_token: bool,
    #[serde(flatten)]
    pub identity: Identity,
}

/// A user logged in on a device.
#[derive(Debug)]
pub struct LoggedIn {
    pub user_id: OwnedUserId,
    pub tokens: Tokens,
}

/// Resolves the claimed identity to a local user ID.
pub fn user_id_of(identity: &Identity, server_name: &str) -> Result<OwnedUserId> {
    let user = match &identity.identifier {
        Some(identifier) => {
            if identifier.kind != "m.id.user" {
                return Err(Error::unknown("Only m.id.user identifiers are supported"));
            }
            identifier.user.as_deref()
        }
        None => identity.user.as_deref(),
    }
    .ok_or_else(|| Error::bad_json("Missing user identifier"))?;
    let user_id = if user.starts_with('@') {
        UserId::parse(user)
    } else {
        UserId::parse(format!("@{}:{server_name}", user.to_lowercase()))
    };
    user_id.map_err(|_| Error::forbidden("Invalid username or password"))
}

/// Checks the password and opens a session. Failures count per (user, client address), so
/// failures from elsewhere never lock the owner out.
pub async fn login(svc: &Services, ip: &str, request: LoginRequest) -> Result<LoggedIn> {
    svc.rate_limiter.check(Action::Login, ip)?;
    if request.login_type != "m.login.password" {
        return Err(Error::unknown("Unsupported login type"));
    }
    let user_id = user_id_of(&request.identity, svc.server_name())?;
    let failures = format!("{user_id} {ip}");
    svc.rate_limiter.check_failures(Action::LoginFailure, &failures)?;
    let password = request
        .password
        .as_deref()
        .ok_or_else(|| Error::bad_json("Missing password"))?;
    let user = svc.store.user(user_id.as_str()).await?;
    let valid = match user.as_ref().and_then(|u| u.password_hash.clone()) {
        Some(hash) => users::verify_password(password, &hash).await,
        None => false,
    };
    if user.as_ref().is_some_and(|u| u.deactivated) {
        return Err(Error::user_deactivated("This account has been deactivated"));
    }
    if !valid {
        svc.rate_limiter.record_failure(Action::LoginFailure, &failures);
        return Err(Error::forbidden("Invalid username or password"));
    }
    let tokens = users::login_device(
        svc,
        &user_id,
        request.device_id.as_deref().map(|d| d.as_str()),
        request.initial_device_display_name.as_deref(),
        request.refresh_token,
    )
    .await?;
    Ok(LoggedIn { user_id, tokens })
}
