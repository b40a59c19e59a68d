//! Request extractors that fail with the spec's errors: the authenticated user, and JSON bodies.

use std::net::SocketAddr;

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
};
use ruma::{OwnedUserId, UserId};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{error::ApiError, services::Services, users::hash_token};

/// The user and device an access token belongs to.
#[derive(Debug, Clone)]
pub struct Auth {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub token_hash: String,
}

/// The access token of a request: `Authorization: Bearer …`, or the deprecated query parameter.
pub fn access_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    parts.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("access_token=").map(percent_decode))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The peer address of the connection. (Behind a reverse proxy this is the proxy's.)
pub fn client_ip(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// The client's IP address, for rate limits keyed by IP.
pub struct ClientIp(pub String);

impl FromRequestParts<Services> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Services) -> Result<Self, ApiError> {
        Ok(Self(client_ip(parts).unwrap_or_else(|| "unknown".into())))
    }
}

impl FromRequestParts<Services> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, ApiError> {
        let token = access_token(parts).ok_or_else(|| ApiError::missing_token("Missing access token"))?;
        let token_hash = hash_token(&token);
        let now = crate::services::now_ms();
        let owner = svc
            .store
            .token_owner(&token_hash, now)
            .await?
            .ok_or_else(|| ApiError::unknown_token(false))?;
        // An expired token's session lives on: the client may refresh or log in again.
        if owner.expires_ts.is_some_and(|at| at <= now) {
            return Err(ApiError::unknown_token(true));
        }
        let device_id = owner.device_id;
        let user_id = UserId::parse(owner.user_id).map_err(ApiError::internal)?;
        let ip = client_ip(parts);
        crate::users::record_last_seen(svc, user_id.as_str(), &device_id, ip.as_deref()).await?;
        Ok(Self {
            user_id,
            device_id,
            token_hash,
        })
    }
}

/// An optional `Auth`: endpoints that work with or without a token.
pub struct MaybeAuth(pub Option<Auth>);

impl FromRequestParts<Services> for MaybeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, ApiError> {
        if access_token(parts).is_none() {
            return Ok(Self(None));
        }
        Auth::from_request_parts(parts, svc).await.map(|a| Self(Some(a)))
    }
}

/// A JSON body: `M_NOT_JSON` when it does not parse, `M_BAD_JSON` when it has the wrong shape,
/// `M_TOO_LARGE` past the body limit. An empty body reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Services> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, svc: &Services) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, svc).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large("Request body too large")
            } else {
                ApiError::not_json(rejection.body_text())
            }
        })?;
        let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::not_json(format!("Body is not valid JSON: {e}")))?
        };
        if !value.is_object() {
            return Err(ApiError::bad_json("Body must be a JSON object"));
        }
        serde_json::from_value(value)
            .map(Self)
            .map_err(|e| ApiError::bad_json(e.to_string()))
    }
}
