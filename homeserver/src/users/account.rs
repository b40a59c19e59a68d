//! Account lifecycle: registration (behind UIA: a dummy stage, or the registration token),
//! username availability, password changes, deactivation and logout.

use ruma::{OwnedUserId, UserId, api::client::account::register::RegistrationKind};
use serde::Serialize;
use serde_json::Value;

use crate::{
    e2ee::device_lists,
    error::{Error, Result},
    ratelimit::Action,
    services::Services,
    users::{
        self, Tokens,
        uia::{self, Operation},
    },
    util::{now_ms, random_string},
};

/// Longest password accepted, in bytes: argon2 hashes whatever it is given.
const MAX_PASSWORD_BYTES: usize = 512;

/// What `POST /register` asks for (ruma's request without its `auth` dict).
pub struct Registration {
    pub kind: RegistrationKind,
    pub username: Option<String>,
    pub password: Option<String>,
    pub device_id: Option<String>,
    pub initial_device_display_name: Option<String>,
    pub inhibit_login: bool,
    pub refresh_token: bool,
}

/// `POST /register`'s answer. Our own type: ruma's has no `home_server` and writes
/// `device_id: null` when `inhibit_login` is set.
#[derive(Debug, Serialize)]
pub struct Registered {
    pub user_id: OwnedUserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home_server: Option<String>,
    #[serde(flatten)]
    pub tokens: Option<Tokens>,
}

/// Registers an account once its UIA flow is complete. Availability is checked before UIA so
/// a client does not complete stages for nothing.
pub async fn register(
    svc: &Services,
    ip: &str,
    request: Registration,
    operation: &Operation,
    auth: Option<&Value>,
) -> Result<Registered> {
    svc.rate_limiter.check(Action::Register, ip)?;
    if request.kind != RegistrationKind::User {
        return Err(Error::forbidden("Guest access is not enabled"));
    }
    let registration = &svc.config.registration;
    if !registration.enabled {
        return Err(Error::forbidden("Registration is disabled"));
    }
    let localpart = match &request.username {
        Some(name) => name.to_lowercase(),
        None => random_string(12).to_lowercase(),
    };
    let user_id = users::user_id_for(&localpart, svc.server_name())?;
    if svc.store.user(user_id.as_str()).await?.is_some() {
        return Err(Error::user_in_use("User ID already taken"));
    }
    let password = request
        .password
        .as_deref()
        .ok_or_else(|| Error::bad_json("Missing password"))?;
    check_password(password)?;
    let flows: Vec<uia::Flow> = match &registration.token {
        Some(_) => vec![vec!["m.login.registration_token"]],
        None => vec![vec!["m.login.dummy"]],
    };
    uia::authenticate(svc, operation, auth, &flows, None, registration.token.as_deref()).await?;

    let hash = users::hash_password(password).await?;
    if !svc
        .store
        .create_user(user_id.as_str(), Some(&hash), &localpart, now_ms())
        .await?
    {
        return Err(Error::user_in_use("User ID already taken"));
    }
    tracing::info!(%user_id, "registered");
    if request.inhibit_login {
        return Ok(Registered {
            user_id,
            home_server: None,
            tokens: None,
        });
    }
    let tokens = users::login_device(
        svc,
        &user_id,
        request.device_id.as_deref(),
        request.initial_device_display_name.as_deref(),
        request.refresh_token,
    )
    .await?;
    Ok(Registered {
        user_id,
        home_server: Some(svc.server_name().to_owned()),
        tokens: Some(tokens),
    })
}

fn check_password(password: &str) -> Result<()> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::bad_json("Password too long"));
    }
    Ok(())
}

/// `GET /register/available`: `M_USER_IN_USE` when taken, `M_INVALID_USERNAME` when invalid.
pub async fn check_available(svc: &Services, username: &str) -> Result<()> {
    let user_id = users::user_id_for(&username.to_lowercase(), svc.server_name())?;
    if svc.store.user(user_id.as_str()).await?.is_some() {
        return Err(Error::user_in_use("User ID already taken"));
    }
    Ok(())
}

/// Whether a registration token would be accepted. Rate limited like registration, so the
/// endpoint cannot be used to guess tokens.
pub fn registration_token_valid(svc: &Services, ip: &str, token: &str) -> Result<bool> {
    svc.rate_limiter.check(Action::Register, ip)?;
    let registration = &svc.config.registration;
    Ok(registration.enabled && registration.token.as_deref() == Some(token))
}

/// Changes the password once the current one is confirmed; with `logout_devices`, every other
/// device is logged out.
pub async fn change_password(
    svc: &Services,
    user_id: &UserId,
    device_id: &str,
    new_password: &str,
    logout_devices: bool,
    operation: &Operation,
    auth: Option<&Value>,
) -> Result<()> {
    uia::confirm_password(svc, operation, auth, user_id).await?;
    let hash = users::hash_password(new_password).await?;
    svc.store.set_password_hash(user_id.as_str(), Some(&hash)).await?;
    if logout_devices {
        let keyed = device_lists::keyed_devices(svc, user_id.as_str()).await?;
        svc.store
            .delete_devices_except(user_id.as_str(), Some(device_id))
            .await?;
        device_lists::announce_removed(svc, user_id.as_str(), &keyed).await?;
    }
    Ok(())
}

/// Deactivates the account once its password is confirmed. It leaves every room first (joined,
/// invited, knocking), so other members see the account go.
pub async fn deactivate(
    svc: &Services,
    user_id: &UserId,
    operation: &Operation,
    auth: Option<&Value>,
) -> Result<()> {
    uia::confirm_password(svc, operation, auth, user_id).await?;
    for (room_id, membership, _) in svc.store.rooms_of_user(user_id.as_str()).await? {
        if matches!(membership.as_str(), "join" | "invite" | "knock")
            && let Ok(room_id) = ruma::RoomId::parse(room_id.as_str())
        {
            let left = crate::rooms::membership::set_membership(
                svc, user_id, &room_id, user_id, "leave", None, false,
            )
            .await;
            if let Err(e) = left {
                tracing::warn!(%room_id, error = %e, "could not leave room on deactivation");
            }
        }
    }
    let keyed = device_lists::keyed_devices(svc, user_id.as_str()).await?;
    svc.store.deactivate_user(user_id.as_str()).await?;
    device_lists::announce_removed(svc, user_id.as_str(), &keyed).await?;
    Ok(())
}

/// Ends the session of one device.
pub async fn logout(svc: &Services, user_id: &UserId, device_id: &str) -> Result<()> {
    svc.store.delete_device(user_id.as_str(), device_id).await?;
    device_lists::announce_removed(svc, user_id.as_str(), &[device_id.to_owned()]).await?;
    Ok(())
}

/// Ends every session of the user.
pub async fn logout_all(svc: &Services, user_id: &UserId) -> Result<()> {
    let keyed = device_lists::keyed_devices(svc, user_id.as_str()).await?;
    svc.store.delete_devices_except(user_id.as_str(), None).await?;
    device_lists::announce_removed(svc, user_id.as_str(), &keyed).await?;
    Ok(())
}
