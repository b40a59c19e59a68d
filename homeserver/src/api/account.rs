//! Registration, login, logout and account management.

use axum::{
    Json,
    extract::{Query, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use ruma::api::client::account::whoami;

use crate::{
    api::{
        extract::{Auth, ClientIp, JsonBody, UiaBody},
        ruma::{Ruma, RumaResponse},
    },
    error::{ApiError, ApiResult},
    ratelimit::Action,
    services::{Services, now_ms},
    users::{self, login_device, uia},
};

#[derive(Deserialize)]
pub struct RegisterQuery {
    kind: Option<String>,
}

#[derive(Deserialize)]
pub struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    #[serde(default)]
    refresh_token: bool,
    #[serde(flatten)]
    rest: Value,
}

/// `POST /register`
pub async fn register(
    State(svc): State<Services>,
    ClientIp(ip): ClientIp,
    Query(query): Query<RegisterQuery>,
    UiaBody(body, operation): UiaBody<RegisterBody>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter.check(Action::Register, &ip)?;
    if query.kind.as_deref().unwrap_or("user") != "user" {
        return Err(ApiError::forbidden("Guest access is not enabled"));
    }
    let registration = &svc.config.registration;
    if !registration.enabled {
        return Err(ApiError::forbidden("Registration is disabled"));
    }
    let localpart = match &body.username {
        Some(name) => name.to_lowercase(),
        None => users::random_string(12).to_lowercase(),
    };
    let user_id = users::user_id_for(&localpart, svc.server_name())?;
    // Checking availability before UIA saves a client from completing stages for nothing.
    if svc.store.user(user_id.as_str()).await?.is_some() {
        return Err(ApiError::user_in_use("User ID already taken"));
    }
    let password = body
        .password
        .as_deref()
        .ok_or_else(|| ApiError::bad_json("Missing password"))?;
    if password.len() > 512 {
        return Err(ApiError::bad_json("Password too long"));
    }
    let flows: Vec<uia::Flow> = match &registration.token {
        Some(_) => vec![vec!["m.login.registration_token"]],
        None => vec![vec!["m.login.dummy"]],
    };
    let mut auth_body = body.rest.clone();
    if auth_body.get("auth").is_none() {
        auth_body = json!({});
    }
    uia::authenticate(
        &svc,
        &operation,
        &auth_body,
        &flows,
        None,
        registration.token.as_deref(),
    )
    .await?;

    let hash = users::hash_password(password).await?;
    if !svc
        .store
        .create_user(user_id.as_str(), Some(&hash), &localpart, now_ms())
        .await?
    {
        return Err(ApiError::user_in_use("User ID already taken"));
    }
    tracing::info!(%user_id, "registered");
    if body.inhibit_login {
        return Ok(Json(json!({ "user_id": user_id })));
    }
    let tokens = login_device(
        &svc,
        &user_id,
        body.device_id.as_deref(),
        body.initial_device_display_name.as_deref(),
        body.refresh_token,
    )
    .await?;
    let mut response =
        json!({ "user_id": user_id, "device_id": tokens.device_id, "home_server": svc.server_name() });
    add_tokens(&mut response, tokens);
    Ok(Json(response))
}

/// Adds `access_token` and, when given, `refresh_token` and `expires_in_ms`.
fn add_tokens(response: &mut Value, tokens: users::Tokens) {
    response["access_token"] = json!(tokens.access_token);
    if let Some(refresh_token) = tokens.refresh_token {
        response["refresh_token"] = json!(refresh_token);
    }
    if let Some(expires_in_ms) = tokens.expires_in_ms {
        response["expires_in_ms"] = json!(expires_in_ms);
    }
}

#[derive(Deserialize)]
pub struct AvailableQuery {
    username: String,
}

/// `GET /register/available`
pub async fn register_available(
    State(svc): State<Services>,
    Query(q): Query<AvailableQuery>,
) -> ApiResult<Json<Value>> {
    let user_id = users::user_id_for(&q.username.to_lowercase(), svc.server_name())?;
    if svc.store.user(user_id.as_str()).await?.is_some() {
        return Err(ApiError::user_in_use("User ID already taken"));
    }
    Ok(Json(json!({ "available": true })))
}

#[derive(Deserialize)]
pub struct TokenValidityQuery {
    token: String,
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
pub async fn registration_token_validity(
    State(svc): State<Services>,
    ClientIp(ip): ClientIp,
    Query(q): Query<TokenValidityQuery>,
) -> ApiResult<Json<Value>> {
    // Rate limited like registration, so the endpoint cannot be used to guess tokens.
    svc.rate_limiter.check(Action::Register, &ip)?;
    let valid =
        svc.config.registration.enabled && svc.config.registration.token.as_deref() == Some(q.token.as_str());
    Ok(Json(json!({ "valid": valid })))
}

/// `GET /login`
pub async fn login_flows() -> Json<Value> {
    Json(json!({ "flows": [{ "type": "m.login.password" }] }))
}

#[derive(Deserialize)]
pub struct LoginBody {
    #[serde(rename = "type")]
    login_type: String,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    refresh_token: bool,
    #[serde(flatten)]
    rest: Value,
}

/// `POST /login`
pub async fn login(
    State(svc): State<Services>,
    ClientIp(ip): ClientIp,
    JsonBody(body): JsonBody<LoginBody>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter.check(Action::Login, &ip)?;
    if body.login_type != "m.login.password" {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Unsupported login type",
        ));
    }
    let user_id = users::login_user_id(&body.rest, svc.server_name())?;
    // Failures count per (user, address), so failures elsewhere never lock the owner out.
    let failures = format!("{user_id} {ip}");
    svc.rate_limiter.check_failures(Action::LoginFailure, &failures)?;
    let password = body
        .password
        .as_deref()
        .ok_or_else(|| ApiError::bad_json("Missing password"))?;
    let user = svc.store.user(user_id.as_str()).await?;
    let valid = match user.as_ref().and_then(|u| u.password_hash.clone()) {
        Some(hash) => users::verify_password(password, &hash).await,
        None => false,
    };
    if user.as_ref().is_some_and(|u| u.deactivated) {
        return Err(ApiError::user_deactivated("This account has been deactivated"));
    }
    if !valid {
        svc.rate_limiter.record_failure(Action::LoginFailure, &failures);
        return Err(ApiError::forbidden("Invalid username or password"));
    }
    let tokens = login_device(
        &svc,
        &user_id,
        body.device_id.as_deref(),
        body.initial_device_display_name.as_deref(),
        body.refresh_token,
    )
    .await?;
    let mut response = json!({
        "user_id": user_id,
        "device_id": tokens.device_id,
        "home_server": svc.server_name(),
        "well_known": { "m.homeserver": { "base_url": svc.config.public_baseurl.clone().unwrap_or_else(|| format!("http://{}", svc.config.listen)) } },
    });
    add_tokens(&mut response, tokens);
    Ok(Json(response))
}

#[derive(Deserialize)]
pub struct RefreshBody {
    refresh_token: String,
}

/// `POST /refresh`: authenticated by the refresh token in the body, not an access token.
pub async fn refresh(
    State(svc): State<Services>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> ApiResult<Json<Value>> {
    let tokens = users::refresh(&svc, &body.refresh_token).await?;
    let mut response = json!({});
    add_tokens(&mut response, tokens);
    Ok(Json(response))
}

/// `POST /logout`
pub async fn logout(State(svc): State<Services>, auth: Auth) -> ApiResult<Json<Value>> {
    svc.store
        .delete_device(auth.user_id.as_str(), &auth.device_id)
        .await?;
    Ok(Json(json!({})))
}

/// `POST /logout/all`
pub async fn logout_all(State(svc): State<Services>, auth: Auth) -> ApiResult<Json<Value>> {
    svc.store
        .delete_devices_except(auth.user_id.as_str(), None)
        .await?;
    Ok(Json(json!({})))
}

/// `GET /account/whoami`
pub async fn whoami(auth: Auth, Ruma(_): Ruma<whoami::v3::Request>) -> ApiResult<RumaResponse<whoami::v3::Response>> {
    let mut response = whoami::v3::Response::new(auth.user_id, false);
    response.device_id = Some(auth.device_id.into());
    Ok(response.into())
}

#[derive(Deserialize)]
pub struct PasswordBody {
    new_password: String,
    #[serde(default = "default_true")]
    logout_devices: bool,
    #[serde(flatten)]
    rest: Value,
}

fn default_true() -> bool {
    true
}

/// `GET /account/3pid`: Hearth binds no third-party identifiers yet.
pub async fn threepids(_auth: Auth) -> Json<Value> {
    Json(json!({ "threepids": [] }))
}

/// `POST /account/password`
pub async fn change_password(
    State(svc): State<Services>,
    auth: Auth,
    UiaBody(body, operation): UiaBody<PasswordBody>,
) -> ApiResult<Json<Value>> {
    uia::authenticate(
        &svc,
        &operation,
        &body.rest,
        &[vec!["m.login.password"]],
        Some(auth.user_id.as_str()),
        None,
    )
    .await?;
    let hash = users::hash_password(&body.new_password).await?;
    svc.store
        .set_password_hash(auth.user_id.as_str(), Some(&hash))
        .await?;
    if body.logout_devices {
        svc.store
            .delete_devices_except(auth.user_id.as_str(), Some(&auth.device_id))
            .await?;
    }
    Ok(Json(json!({})))
}

/// `POST /account/deactivate`
pub async fn deactivate(
    State(svc): State<Services>,
    auth: Auth,
    UiaBody(body, operation): UiaBody<Value>,
) -> ApiResult<Json<Value>> {
    uia::authenticate(
        &svc,
        &operation,
        &body,
        &[vec!["m.login.password"]],
        Some(auth.user_id.as_str()),
        None,
    )
    .await?;
    // Leave every room first, so other members see the account go.
    for (room_id, membership, _) in svc.store.rooms_of_user(auth.user_id.as_str()).await? {
        if matches!(membership.as_str(), "join" | "invite" | "knock")
            && let Ok(room_id) = ruma::RoomId::parse(room_id.as_str())
        {
            let left = crate::rooms::membership::set_membership(
                &svc,
                &auth.user_id,
                &room_id,
                &auth.user_id,
                "leave",
                None,
                false,
            )
            .await;
            if let Err(e) = left {
                tracing::warn!(%room_id, error = %e.message, "could not leave room on deactivation");
            }
        }
    }
    svc.store.deactivate_user(auth.user_id.as_str()).await?;
    Ok(Json(json!({ "id_server_unbind_result": "no-support" })))
}
