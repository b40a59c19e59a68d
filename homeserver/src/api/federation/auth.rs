//! `Signed<T>`: the extractor of federation handlers. It verifies the request's X-Matrix
//! signature against the origin's keys (fetched and cached by `federation::keys`), then parses
//! ruma's request type; anything unsigned, forged or addressed elsewhere is `401 M_UNAUTHORIZED`.

use axum::{
    body::{Body, Bytes},
    extract::{FromRequest, Request},
    http::{StatusCode, header},
};
use ruma::{OwnedServerName, api::IncomingRequest};

use crate::{
    api::{error::ApiError, ruma::Ruma},
    federation,
    services::Services,
};

/// A request signed by `origin`.
pub struct Signed<T> {
    pub origin: OwnedServerName,
    pub request: T,
}

impl<T: IncomingRequest> FromRequest<Services> for Signed<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, svc: &Services) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), svc)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large("Request body too large")
                } else {
                    ApiError::not_json(rejection.body_text())
                }
            })?;
        let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let origin =
            federation::auth::verify_request(svc, parts.method.as_str(), uri, authorization, &bytes).await?;
        let Ruma(request) =
            Ruma::<T>::from_request(Request::from_parts(parts, Body::from(bytes)), svc).await?;
        Ok(Self { origin, request })
    }
}
