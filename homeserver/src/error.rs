//! What goes wrong in Hearth's domain, in the spec's vocabulary and without HTTP: the domain
//! modules (`rooms`, `users`, `sync`, `push`, `media`) return these; `api::error` alone turns
//! them into the spec's HTTP responses (status, `errcode`, `error`).

use serde_json::{Map, Value};

use crate::store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user may not do this (`M_FORBIDDEN`).
    #[error("{0}")]
    Forbidden(String),
    /// The key backup version is not the user's latest (`M_WRONG_ROOM_KEYS_VERSION`, with the
    /// latest one in `current_version`).
    #[error("Wrong backup version")]
    WrongRoomKeysVersion { current_version: String },
    /// `M_FORBIDDEN` by one of Hearth's own rules, with a reason code clients can act on, sent
    /// as the response's `org.hearth.error` field (`window_expired`: spec/message-policy.md;
    /// `strict_e2e`: spec/privacy-modes.md).
    #[error("{reason}")]
    ForbiddenBecause {
        reason: String,
        hearth_error: &'static str,
    },
    /// A second identical annotation of an event (`M_DUPLICATE_ANNOTATION`).
    #[error("{0}")]
    DuplicateAnnotation(String),
    /// No such thing, or not one the user may see (`M_NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// A parameter (path, query or body) is invalid (`M_INVALID_PARAM`).
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    MissingParam(String),
    /// The body has the wrong shape (`M_BAD_JSON`).
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    NotJson(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("too many requests")]
    LimitExceeded { retry_after_ms: u64 },
    #[error("unknown access token")]
    UnknownToken { soft_logout: bool },
    #[error("{0}")]
    MissingToken(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    UserDeactivated(String),
    #[error("{0}")]
    UserInUse(String),
    #[error("{0}")]
    InvalidUsername(String),
    #[error("{0}")]
    Exclusive(String),
    #[error("{0}")]
    RoomInUse(String),
    #[error("{0}")]
    UnsupportedRoomVersion(String),
    /// A remote server cannot join: it supports none of the room's version (`make_join`).
    #[error("{0}")]
    IncompatibleRoomVersion(String),
    /// The same, answered to the joining server: the spec requires the room's version in the
    /// error (`room_version`) so that it can tell its user why.
    #[error("{message}")]
    IncompatibleRoomVersionOf { message: String, room_version: String },
    #[error("{0}")]
    InvalidRoomState(String),
    /// A request the spec answers with `M_UNKNOWN` (e.g. forgetting a room one is still in).
    #[error("{0}")]
    Unknown(String),
    /// A room alias that exists already.
    #[error("{0}")]
    AliasInUse(String),
    /// Account data the server manages (`m.fully_read`, `m.push_rules`) set by a client.
    #[error("{0}")]
    ServerManagedAccountData(String),
    #[error("{0}")]
    CannotOverwriteMedia(String),
    #[error("{0}")]
    NotYetUploaded(String),
    /// Another server failed us: unreachable, an error, or an answer that is not what the spec
    /// says (502 `M_UNKNOWN`).
    #[error("{0}")]
    BadGateway(String),
    /// Another server's content is larger than this server will take (502 `M_TOO_LARGE`).
    #[error("{0}")]
    RemoteTooLarge(String),
    /// No such endpoint or method.
    #[error("unrecognized request")]
    Unrecognized { method_not_allowed: bool },
    /// User-interactive authentication: the client must complete (more) stages. `errcode` is
    /// set when a stage failed; `challenge` holds the flows, session and completed stages.
    #[error("authentication required")]
    AuthRequired {
        errcode: Option<(&'static str, String)>,
        challenge: Map<String, Value>,
    },
    #[error(transparent)]
    Store(StoreError),
    /// A failure that is ours, not the client's (logged where it is made, never shown).
    #[error("{0}")]
    Internal(String),
}

macro_rules! constructors {
    ($($fn:ident => $variant:ident;)*) => {
        impl Error {
            $(
                pub fn $fn(message: impl Into<String>) -> Self {
                    Self::$variant(message.into())
                }
            )*
        }
    };
}

constructors! {
    forbidden => Forbidden;
    not_found => NotFound;
    invalid_param => InvalidParam;
    missing_param => MissingParam;
    bad_json => BadJson;
    not_json => NotJson;
    too_large => TooLarge;
    missing_token => MissingToken;
    unauthorized => Unauthorized;
    user_deactivated => UserDeactivated;
    user_in_use => UserInUse;
    invalid_username => InvalidUsername;
    exclusive => Exclusive;
    room_in_use => RoomInUse;
    unsupported_room_version => UnsupportedRoomVersion;
    invalid_room_state => InvalidRoomState;
    unknown => Unknown;
    bad_gateway => BadGateway;
}

impl Error {
    pub fn unknown_token(soft_logout: bool) -> Self {
        Self::UnknownToken { soft_logout }
    }

    /// Refused by a strict end-to-end encrypted room (`org.hearth.error: strict_e2e`).
    pub fn strict_e2e(message: impl Into<String>) -> Self {
        Self::forbidden_because(message, "strict_e2e")
    }

    /// `M_FORBIDDEN` carrying `"org.hearth.error": hearth_error`.
    pub fn forbidden_because(reason: impl Into<String>, hearth_error: &'static str) -> Self {
        Self::ForbiddenBecause {
            reason: reason.into(),
            hearth_error,
        }
    }

    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::LimitExceeded { retry_after_ms }
    }

    /// A failure that is ours. The cause is logged here, never sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::Internal(cause.to_string())
    }

    /// The spec's error code for this error.
    pub fn errcode(&self) -> &'static str {
        match self {
            Self::WrongRoomKeysVersion { .. } => "M_WRONG_ROOM_KEYS_VERSION",
            Self::Forbidden(_) | Self::ForbiddenBecause { .. } => "M_FORBIDDEN",
            Self::DuplicateAnnotation(_) => "M_DUPLICATE_ANNOTATION",
            Self::NotFound(_) => "M_NOT_FOUND",
            Self::InvalidParam(_) => "M_INVALID_PARAM",
            Self::MissingParam(_) => "M_MISSING_PARAM",
            Self::BadJson(_) | Self::ServerManagedAccountData(_) => "M_BAD_JSON",
            Self::NotJson(_) => "M_NOT_JSON",
            Self::TooLarge(_) | Self::RemoteTooLarge(_) => "M_TOO_LARGE",
            Self::LimitExceeded { .. } => "M_LIMIT_EXCEEDED",
            Self::UnknownToken { .. } => "M_UNKNOWN_TOKEN",
            Self::MissingToken(_) => "M_MISSING_TOKEN",
            Self::Unauthorized(_) => "M_UNAUTHORIZED",
            Self::UserDeactivated(_) => "M_USER_DEACTIVATED",
            Self::UserInUse(_) => "M_USER_IN_USE",
            Self::InvalidUsername(_) => "M_INVALID_USERNAME",
            Self::Exclusive(_) => "M_EXCLUSIVE",
            Self::RoomInUse(_) => "M_ROOM_IN_USE",
            Self::UnsupportedRoomVersion(_) => "M_UNSUPPORTED_ROOM_VERSION",
            Self::IncompatibleRoomVersion(_) | Self::IncompatibleRoomVersionOf { .. } => {
                "M_INCOMPATIBLE_ROOM_VERSION"
            }
            Self::InvalidRoomState(_) => "M_INVALID_ROOM_STATE",
            Self::CannotOverwriteMedia(_) => "M_CANNOT_OVERWRITE_MEDIA",
            Self::NotYetUploaded(_) => "M_NOT_YET_UPLOADED",
            Self::Unrecognized { .. } => "M_UNRECOGNIZED",
            Self::AuthRequired { errcode, .. } => errcode.as_ref().map_or("", |(code, _)| code),
            Self::Unknown(_)
            | Self::AliasInUse(_)
            | Self::BadGateway(_)
            | Self::Store(_)
            | Self::Internal(_) => "M_UNKNOWN",
        }
    }
}

impl From<StoreError> for Error {
    /// A value the database refuses by its nature is the request's fault, whatever path it came
    /// by: PostgreSQL cannot store U+0000 in text (SQLSTATE 22021) nor index a value past its row
    /// size limit (54000). Nothing was stored: the statement, and its transaction, failed.
    fn from(e: StoreError) -> Self {
        if let StoreError::Db(sqlx::Error::Database(db)) = &e {
            match db.code().as_deref() {
                Some("22021") => return Self::invalid_param("U+0000 is not allowed here"),
                Some("54000") => return Self::too_large("A value is too large to store"),
                _ => {}
            }
        }
        Self::Store(e)
    }
}
