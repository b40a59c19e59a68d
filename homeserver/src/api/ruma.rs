//! Typed endpoints: ruma's request and response types at the HTTP edge.
//!
//! `Ruma<T>` turns a request into `T` (an `IncomingRequest`: path arguments, query, headers and
//! body, with typed IDs), and `RumaResponse<T>` turns an `OutgoingResponse` back into HTTP. The
//! spec's errors stay as they were with hand-parsed bodies: a body that is not JSON is
//! `M_NOT_JSON`, JSON of the wrong shape `M_BAD_JSON`, a body over the limit `M_TOO_LARGE`, a bad
//! or missing query parameter `M_INVALID_PARAM` / `M_MISSING_PARAM`, an invalid ID in the path
//! `M_INVALID_PARAM`. An empty body reads as `{}`.

use axum::{
    body::{Body, Bytes},
    extract::{FromRequest, FromRequestParts, RawPathParams, Request},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
    error::{DeserializationError, FromHttpRequestError},
};

use crate::{api::error::ApiError, services::Services};

/// A request parsed into ruma's type for its endpoint.
pub struct Ruma<T>(pub T);

impl<T: IncomingRequest> FromRequest<Services> for Ruma<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, svc: &Services) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let params = RawPathParams::from_request_parts(&mut parts, svc)
            .await
            .map_err(|e| ApiError::invalid_param(e.body_text()))?;
        let args: Vec<&str> = params.iter().map(|(_, value)| value).collect();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), svc)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large("Request body too large")
                } else {
                    ApiError::not_json(rejection.body_text())
                }
            })?;
        let has_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
        let body: &[u8] = if has_body {
            check_json_object(&bytes)?
        } else {
            &bytes
        };
        let mut request = axum::http::Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone());
        if let Some(headers) = request.headers_mut() {
            *headers = parts.headers.clone();
        }
        let request = request.body(body).map_err(ApiError::internal)?;
        T::try_from_http_request(request, &args)
            .map(Self)
            .map_err(request_error)
    }
}

/// The body as it goes to ruma: `{}` for an empty one; `M_NOT_JSON` unless it is JSON,
/// `M_BAD_JSON` unless it is an object.
fn check_json_object(bytes: &[u8]) -> Result<&[u8], ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(b"{}");
    }
    // Checked without building a tree: ruma parses the body again into its own type.
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map_err(|e| ApiError::not_json(format!("Body is not valid JSON: {e}")))?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_json("Body must be a JSON object"));
    }
    Ok(bytes)
}

/// The spec's error for a request ruma could not read.
fn request_error(error: FromHttpRequestError) -> ApiError {
    match error {
        FromHttpRequestError::Deserialization(error) => match error {
            DeserializationError::Json(e) => ApiError::bad_json(e.to_string()),
            DeserializationError::Query(e) => {
                let message = e.to_string();
                if message.contains("missing field") {
                    ApiError::missing_param(message)
                } else {
                    ApiError::invalid_param(message)
                }
            }
            DeserializationError::Ident(e) => ApiError::invalid_param(e.to_string()),
            other => ApiError::bad_json(other.to_string()),
        },
        FromHttpRequestError::MethodMismatch { .. } => ApiError::unrecognized(StatusCode::METHOD_NOT_ALLOWED),
        other => ApiError::bad_json(other.to_string()),
    }
}

/// A response built from ruma's type for its endpoint.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(response) => response.map(Body::from),
            Err(error) => ApiError::internal(error).into_response(),
        }
    }
}

impl<T> From<T> for RumaResponse<T> {
    fn from(response: T) -> Self {
        Self(response)
    }
}
