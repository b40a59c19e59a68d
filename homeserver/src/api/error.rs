//! The spec's error responses: `{"errcode": "M_…", "error": "…"}` with the matching status —
//! the one place a domain `Error` becomes HTTP.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};

use crate::error::Error;

/// An error a client sees. Everything that can go wrong in a request ends as one of these;
/// internal failures become `M_UNKNOWN` with status 500 and are logged, not shown.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub errcode: &'static str,
    pub message: String,
    /// Extra top-level fields (`retry_after_ms`, `soft_logout`, UIA flows, …).
    pub extra: Map<String, Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

macro_rules! constructors {
    ($($fn:ident => $status:ident, $code:literal;)*) => {
        impl ApiError {
            $(
                pub fn $fn(message: impl Into<String>) -> Self {
                    Self::new(StatusCode::$status, $code, message)
                }
            )*
        }
    };
}

constructors! {
    forbidden => FORBIDDEN, "M_FORBIDDEN";
    not_found => NOT_FOUND, "M_NOT_FOUND";
    bad_json => BAD_REQUEST, "M_BAD_JSON";
    not_json => BAD_REQUEST, "M_NOT_JSON";
    missing_param => BAD_REQUEST, "M_MISSING_PARAM";
    invalid_param => BAD_REQUEST, "M_INVALID_PARAM";
    user_in_use => BAD_REQUEST, "M_USER_IN_USE";
    invalid_username => BAD_REQUEST, "M_INVALID_USERNAME";
    exclusive => BAD_REQUEST, "M_EXCLUSIVE";
    room_in_use => BAD_REQUEST, "M_ROOM_IN_USE";
    unsupported_room_version => BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION";
    too_large => PAYLOAD_TOO_LARGE, "M_TOO_LARGE";
    missing_token => UNAUTHORIZED, "M_MISSING_TOKEN";
    unauthorized => UNAUTHORIZED, "M_UNAUTHORIZED";
    user_deactivated => FORBIDDEN, "M_USER_DEACTIVATED";
    invalid_room_state => BAD_REQUEST, "M_INVALID_ROOM_STATE";
    not_joined => FORBIDDEN, "M_FORBIDDEN";
}

impl ApiError {
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    pub fn unknown_token(soft_logout: bool) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Unknown access token",
        )
        .with("soft_logout", json!(soft_logout))
    }

    pub fn unrecognized(status: StatusCode) -> Self {
        Self::new(status, "M_UNRECOGNIZED", "Unrecognized request")
    }

    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
        )
        .with("retry_after_ms", json!(retry_after_ms))
    }

    /// A failure that is ours, not the client's. The cause is logged, never sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "Internal server error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Retry-After (whole seconds) mirrors retry_after_ms for clients that read the header.
        let retry_after = self.extra.get("retry_after_ms").and_then(Value::as_u64);
        let mut body = self.extra;
        // An empty errcode marks a response that is not an error object (a first UIA challenge).
        if !self.errcode.is_empty() {
            body.insert("errcode".into(), json!(self.errcode));
            body.insert("error".into(), json!(self.message));
        }
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        if let Some(ms) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, ms.div_ceil(1000).into());
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        use StatusCode as S;
        let errcode = error.errcode();
        let status = match &error {
            Error::Forbidden(_)
            | Error::UserDeactivated(_)
            | Error::ForbiddenBecause { .. }
            | Error::WrongRoomKeysVersion { .. } => S::FORBIDDEN,
            Error::NotFound(_) => S::NOT_FOUND,
            Error::TooLarge(_) => S::PAYLOAD_TOO_LARGE,
            Error::LimitExceeded { .. } => S::TOO_MANY_REQUESTS,
            Error::UnknownToken { .. }
            | Error::MissingToken(_)
            | Error::Unauthorized(_)
            | Error::AuthRequired { .. } => S::UNAUTHORIZED,
            Error::AliasInUse(_) | Error::CannotOverwriteMedia(_) => S::CONFLICT,
            Error::ServerManagedAccountData(_) => S::METHOD_NOT_ALLOWED,
            Error::NotYetUploaded(_) => S::GATEWAY_TIMEOUT,
            Error::BadGateway(_) | Error::RemoteTooLarge(_) => S::BAD_GATEWAY,
            Error::Unrecognized {
                method_not_allowed: true,
            } => S::METHOD_NOT_ALLOWED,
            Error::Unrecognized { .. } => S::NOT_FOUND,
            Error::Store(_) | Error::Internal(_) => S::INTERNAL_SERVER_ERROR,
            _ => S::BAD_REQUEST,
        };
        match error {
            Error::UnknownToken { soft_logout } => Self::unknown_token(soft_logout),
            Error::LimitExceeded { retry_after_ms } => Self::limit_exceeded(retry_after_ms),
            Error::Unrecognized { .. } => Self::unrecognized(status),
            Error::AuthRequired { errcode, challenge } => {
                let (code, message) = errcode.unwrap_or(("", String::new()));
                let mut out = Self::new(status, code, message);
                out.extra = challenge;
                out
            }
            Error::WrongRoomKeysVersion { current_version } => {
                Self::new(status, errcode, "Wrong backup version")
                    .with("current_version", json!(current_version))
            }
            Error::IncompatibleRoomVersionOf {
                message,
                room_version,
            } => Self::new(status, errcode, message).with("room_version", json!(room_version)),
            Error::ForbiddenBecause { reason, hearth_error } => {
                Self::new(status, errcode, reason).with("org.hearth.error", json!(hearth_error))
            }
            Error::Store(e) => Self::internal(e),
            Error::Internal(_) => Self::new(status, errcode, "Internal server error"),
            other => Self::new(status, errcode, other.to_string()),
        }
    }
}
