//! Registration, login, logout and account management.

use std::time::Duration;

use axum::{Json, extract::State};
use ruma::api::client::{
    account::{
        ThirdPartyIdRemovalStatus, change_password, check_registration_token_validity, deactivate, get_3pids,
        get_username_availability, register, request_openid_token, whoami,
    },
    session::{
        get_login_types::{
            self,
            v3::{LoginType, PasswordLoginType},
        },
        login::{
            self,
            v3::{DiscoveryInfo, HomeserverInfo},
        },
        logout, logout_all, refresh_token,
    },
};

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::{Auth, ClientIp, JsonBody, Uia},
        ruma::{Ruma, RumaResponse},
    },
    services::Services,
    users::{
        self,
        account::{self, Registered, Registration},
        login::LoginRequest,
    },
};

/// `POST /register`
pub async fn register(
    State(svc): State<Services>,
    ClientIp(ip): ClientIp,
    uia: Uia<register::v3::Request>,
) -> ApiResult<Json<Registered>> {
    let request = uia.request;
    let registration = Registration {
        kind: request.kind,
        username: request.username,
        password: request.password,
        device_id: request.device_id.map(Into::into),
        initial_device_display_name: request.initial_device_display_name,
        inhibit_login: request.inhibit_login,
        refresh_token: request.refresh_token,
    };
    let registered = account::register(&svc, &ip, registration, &uia.operation, uia.auth.as_ref()).await?;
    Ok(Json(registered))
}

/// `GET /register/available`
pub async fn register_available(
    State(svc): State<Services>,
    Ruma(req): Ruma<get_username_availability::v3::Request>,
) -> ApiResult<RumaResponse<get_username_availability::v3::Response>> {
    account::check_available(&svc, &req.username).await?;
    Ok(get_username_availability::v3::Response::new(true).into())
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
pub async fn registration_token_validity(
    State(svc): State<Services>,
    ClientIp(ip): ClientIp,
    Ruma(req): Ruma<check_registration_token_validity::v1::Request>,
) -> ApiResult<RumaResponse<check_registration_token_validity::v1::Response>> {
    let valid = account::registration_token_valid(&svc, &ip, &req.token)?;
    Ok(check_registration_token_validity::v1::Response::new(valid).into())
}

/// `GET /login`
pub async fn login_flows(
    Ruma(_): Ruma<get_login_types::v3::Request>,
) -> RumaResponse<get_login_types::v3::Response> {
    get_login_types::v3::Response::new(vec![LoginType::Password(PasswordLoginType::new())]).into()
}

/// `POST /login`: the body is our own `LoginRequest` (see `users::login` for why not ruma's).
#[allow(deprecated)]
pub async fn login(
    State(svc): State<Services>,
    ClientIp(ip): ClientIp,
    JsonBody(request): JsonBody<LoginRequest>,
) -> ApiResult<RumaResponse<login::v3::Response>> {
    let logged_in = users::login::login(&svc, &ip, request).await?;
    let tokens = logged_in.tokens;
    let mut response =
        login::v3::Response::new(logged_in.user_id, tokens.access_token, tokens.device_id.into());
    response.home_server = Some(svc.server_name().try_into().map_err(ApiError::internal)?);
    response.well_known = Some(DiscoveryInfo::new(HomeserverInfo::new(svc.base_url())));
    response.refresh_token = tokens.refresh_token;
    response.expires_in = tokens.expires_in_ms.map(Duration::from_millis);
    Ok(response.into())
}

/// `POST /refresh`: authenticated by the refresh token in the body, not an access token.
pub async fn refresh(
    State(svc): State<Services>,
    Ruma(req): Ruma<refresh_token::v3::Request>,
) -> ApiResult<RumaResponse<refresh_token::v3::Response>> {
    let tokens = users::refresh(&svc, &req.refresh_token).await?;
    let mut response = refresh_token::v3::Response::new(tokens.access_token);
    response.refresh_token = tokens.refresh_token;
    response.expires_in_ms = tokens.expires_in_ms.map(Duration::from_millis);
    Ok(response.into())
}

/// `POST /logout`
pub async fn logout(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(_): Ruma<logout::v3::Request>,
) -> ApiResult<RumaResponse<logout::v3::Response>> {
    account::logout(&svc, &auth.user_id, &auth.device_id).await?;
    Ok(logout::v3::Response::new().into())
}

/// `POST /logout/all`
pub async fn logout_all(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(_): Ruma<logout_all::v3::Request>,
) -> ApiResult<RumaResponse<logout_all::v3::Response>> {
    account::logout_all(&svc, &auth.user_id).await?;
    Ok(logout_all::v3::Response::new().into())
}

/// `GET /account/whoami`
pub async fn whoami(
    auth: Auth,
    Ruma(_): Ruma<whoami::v3::Request>,
) -> ApiResult<RumaResponse<whoami::v3::Response>> {
    let mut response = whoami::v3::Response::new(auth.user_id, false);
    response.device_id = Some(auth.device_id.into());
    Ok(response.into())
}

/// `GET /account/3pid`'s answer. Our own type: ruma's leaves out an empty list, which the spec
/// requires.
#[derive(serde::Serialize)]
pub struct ThirdPartyIds {
    threepids: Vec<ruma::thirdparty::ThirdPartyIdentifier>,
}

/// `GET /account/3pid`: Hearth binds no third-party identifiers yet.
pub async fn threepids(_auth: Auth, Ruma(_): Ruma<get_3pids::v3::Request>) -> Json<ThirdPartyIds> {
    Json(ThirdPartyIds {
        threepids: Vec::new(),
    })
}

/// `POST /account/password`
pub async fn change_password(
    State(svc): State<Services>,
    auth: Auth,
    uia: Uia<change_password::v3::Request>,
) -> ApiResult<RumaResponse<change_password::v3::Response>> {
    account::change_password(
        &svc,
        &auth.user_id,
        &auth.device_id,
        &uia.request.new_password,
        uia.request.logout_devices,
        &uia.operation,
        uia.auth.as_ref(),
    )
    .await?;
    Ok(change_password::v3::Response::new().into())
}

/// `POST /account/deactivate`
pub async fn deactivate(
    State(svc): State<Services>,
    auth: Auth,
    uia: Uia<deactivate::v3::Request>,
) -> ApiResult<RumaResponse<deactivate::v3::Response>> {
    account::deactivate(&svc, &auth.user_id, &uia.operation, uia.auth.as_ref()).await?;
    Ok(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport).into())
}

/// `POST /user/{userId}/openid/request_token`
pub async fn request_openid_token(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(request): Ruma<request_openid_token::v3::Request>,
) -> ApiResult<RumaResponse<request_openid_token::v3::Response>> {
    let (token, expires_in_ms) =
        crate::users::openid::request_token(&svc, &auth.user_id, request.user_id.as_str()).await?;
    let server_name = ruma::ServerName::parse(svc.server_name()).map_err(ApiError::internal)?;
    Ok(request_openid_token::v3::Response::new(
        token,
        ruma::authentication::TokenType::Bearer,
        server_name,
        Duration::from_millis(expires_in_ms as u64),
    )
    .into())
}
