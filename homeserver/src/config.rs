//! Server configuration: a TOML file, overridden by `HEARTH_*` environment variables.
//!
//! An environment variable names a key path with `__` between levels: `HEARTH_DATABASE__URL`
//! sets `database.url`. Unknown keys and wrong types stop start-up with a message naming the key.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server name in user and room IDs, e.g. `example.org` or `localhost:8008`.
    pub server_name: String,
    /// Address the Client-Server API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory for the SQLite database and other local files.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub registration: RegistrationConfig,
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// URL clients should use, published in `/.well-known/matrix/client`.
    #[serde(default)]
    pub public_baseurl: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` header names the client (addresses or CIDRs).
    /// Empty: the client is the connection's peer address, and the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<Network>,
    #[serde(default)]
    pub push: PushConfig,
    #[serde(default)]
    pub uia: UiaConfig,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    #[serde(default)]
    pub messages: MessagesConfig,
    #[serde(default)]
    pub search: SearchConfig,
    /// For test suites only.
    #[serde(default)]
    pub testing: TestingConfig,
    #[serde(default)]
    pub federation: FederationConfig,
    /// Notary servers asked for another server's keys when that server cannot be reached
    /// directly, with the keys their answers must be signed with. Empty by default.
    #[serde(default)]
    pub trusted_key_servers: Vec<TrustedKeyServer>,
    /// Server admins (user IDs), besides those granted with `hearth admin grant`: they may read
    /// search-enabled rooms through the audited admin API (spec/admin.md).
    #[serde(default)]
    pub admins: Vec<String>,
}

/// The Server-Server API: its HTTPS listener and the outbound client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Serve federation (a TLS 1.3 listener) and talk to other servers.
    pub enabled: bool,
    /// Address of the federation listener.
    pub listen: SocketAddr,
    /// PEM certificate chain of the federation listener (required when enabled).
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key of that certificate (required when enabled).
    pub tls_private_key: Option<PathBuf>,
    /// Check other servers' certificates. Only for tests and private networks: off trusts any
    /// certificate.
    pub verify_tls: bool,
    /// PEM files of extra certificate authorities trusted besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// Server name → `host:port` to connect to instead of discovering it (private deployments,
    /// tests). The certificate must still be valid for the server name.
    pub resolve: std::collections::BTreeMap<String, String>,
    /// Non-global networks (loopback, RFC 1918, ...) other servers may nevertheless be on;
    /// outbound requests to any other non-global address are refused.
    pub allow_ip_ranges: Vec<Network>,
    /// First wait (milliseconds) before a failed transaction to a server is retried; it
    /// doubles with each failure up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    /// Longest wait (milliseconds) between retries of a transaction to a server that is down.
    pub retry_max_ms: u64,
    /// Most EDUs kept queued for one destination: past it, the oldest are dropped, superseded
    /// and short-lived ones (typing, presence, receipts) first (`federation::sender`).
    pub max_queued_edus: i64,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "0.0.0.0:8448".parse().expect("valid address"),
            tls_certificate: None,
            tls_private_key: None,
            verify_tls: true,
            ca_files: Vec::new(),
            resolve: Default::default(),
            allow_ip_ranges: Vec::new(),
            retry_initial_ms: 1_000,
            retry_max_ms: 600_000,
            max_queued_edus: 10_000,
        }
    }
}

/// A notary this server trusts for other servers' keys (`/_matrix/key/v2/query`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyServer {
    pub server_name: String,
    /// Key ID (`ed25519:…`) → unpadded base64 public key; its answers must carry a signature
    /// by one of them.
    pub verify_keys: std::collections::BTreeMap<String, String>,
}

/// Switches for test suites; never on in production.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestingConfig {
    /// `POST /_hearth/testing/v1/clock/advance` moves the clock of time-dependent rules (edit
    /// and delete windows) forward, so tests need not wait (`clock.rs`).
    pub adjustable_clock: bool,
    /// `GET /_hearth/testing/v1/sync_stats` serves what `/sync` computations cost (database
    /// queries of woken syncs, rooms scanned and skipped, formatted-event cache hits).
    pub sync_stats: bool,
}

/// Hearth's room privacy modes (spec/privacy-modes.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// A room that gets `m.room.encryption` becomes a strict end-to-end encrypted room
    /// (`org.hearth.room.privacy` `strict_e2e`): the server refuses its local users' plaintext.
    pub encrypted_rooms_strict: bool,
    /// The mode `/createRoom` gives a new room that is not encrypted and names no mode in its
    /// `initial_state`: `search_enabled` (the default) or `none` (plain Matrix).
    pub default_mode: DefaultMode,
    /// The server key that wraps search-enabled rooms' data keys (encryption at rest): base64
    /// of 32 bytes, usually given as `HEARTH_PRIVACY__AT_REST_KEY`. Takes precedence over
    /// `at_rest_key_file`.
    pub at_rest_key: Option<String>,
    /// A file holding the server key (base64 of 32 bytes). With neither set, the key is
    /// `<data_dir>/at_rest.key`, generated on first start (development only: it lies beside
    /// the data it protects).
    pub at_rest_key_file: Option<PathBuf>,
    /// Post an `org.hearth.admin_read` notice into a room whenever a server admin reads its
    /// messages (spec/admin.md).
    pub notify_admin_reads: bool,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            encrypted_rooms_strict: true,
            default_mode: DefaultMode::SearchEnabled,
            at_rest_key: None,
            at_rest_key_file: None,
            notify_admin_reads: true,
        }
    }
}

/// `privacy.default_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultMode {
    SearchEnabled,
    None,
}

/// Server-side search (`POST /search`, spec/privacy-modes.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// The tantivy index directory; `<data_dir>/search` when absent.
    pub index_path: Option<PathBuf>,
    /// Least time between two index commits while events keep coming (milliseconds). Each
    /// commit makes a segment that tantivy's merger folds again; a `/search` never waits for it
    /// (it asks for a commit at once).
    pub commit_interval_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            index_path: None,
            commit_interval_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://…`; SQLite under `data_dir` when absent.
    pub url: Option<String>,
    /// Connections in the pool.
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Whether anyone may register.
    #[serde(default)]
    pub enabled: bool,
    /// When set, registration requires this token (`m.login.registration_token`).
    #[serde(default)]
    pub token: Option<String>,
}

/// Token buckets: `*_per_second` is the sustained rate, `*_burst` how many may come at once.
/// Authenticated actions are counted per user; login and registration per client address.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Messages and state events sent, per user.
    pub messages_per_second: f64,
    pub messages_burst: f64,
    /// Login requests per client address.
    pub login_per_second: f64,
    pub login_burst: f64,
    /// Failed logins per (user, client address): a wrong password from one address never keeps
    /// the owner out from another.
    pub login_failures_per_second: f64,
    pub login_failures_burst: f64,
    /// Registration (and token validity checks) per client address.
    pub register_per_second: f64,
    pub register_burst: f64,
    pub room_creation_per_second: f64,
    pub room_creation_burst: f64,
    /// Invites sent, per inviting user.
    pub invites_per_second: f64,
    pub invites_burst: f64,
    /// Joins and knocks.
    pub joins_per_second: f64,
    pub joins_burst: f64,
    /// Display name and avatar changes (each one is a member event in every joined room).
    pub profile_per_second: f64,
    pub profile_burst: f64,
    pub typing_per_second: f64,
    pub typing_burst: f64,
    /// Receipts and read markers.
    pub receipts_per_second: f64,
    pub receipts_burst: f64,
    pub presence_per_second: f64,
    pub presence_burst: f64,
    /// Media uploads and `/create`.
    pub media_uploads_per_second: f64,
    pub media_uploads_burst: f64,
    /// `POST /pushers/set` (adding, changing or deleting a pusher).
    pub pushers_per_second: f64,
    pub pushers_burst: f64,
    /// Wrong passwords given to user-interactive auth, per user.
    pub uia_failures_per_second: f64,
    pub uia_failures_burst: f64,
}

impl Default for RateLimitConfig {
    /// Close to Synapse's `rc_*` defaults where it has one.
    fn default() -> Self {
        Self {
            enabled: true,
            messages_per_second: 10.0,
            messages_burst: 50.0,
            login_per_second: 0.5,
            login_burst: 5.0,
            login_failures_per_second: 0.17,
            login_failures_burst: 3.0,
            register_per_second: 0.2,
            register_burst: 5.0,
            room_creation_per_second: 0.05,
            room_creation_burst: 10.0,
            invites_per_second: 0.3,
            invites_burst: 10.0,
            joins_per_second: 0.1,
            joins_burst: 10.0,
            profile_per_second: 0.1,
            profile_burst: 5.0,
            typing_per_second: 2.0,
            typing_burst: 20.0,
            receipts_per_second: 2.0,
            receipts_burst: 20.0,
            presence_per_second: 0.1,
            presence_burst: 3.0,
            media_uploads_per_second: 1.0,
            media_uploads_burst: 20.0,
            pushers_per_second: 0.2,
            pushers_burst: 10.0,
            uia_failures_per_second: 0.17,
            uia_failures_burst: 3.0,
        }
    }
}

impl RateLimitConfig {
    /// On, but far above what a person or a test does: for `--dev`.
    pub fn generous() -> Self {
        Self {
            enabled: true,
            messages_per_second: 1000.0,
            messages_burst: 10_000.0,
            login_per_second: 100.0,
            login_burst: 1000.0,
            login_failures_per_second: 100.0,
            login_failures_burst: 1000.0,
            register_per_second: 100.0,
            register_burst: 1000.0,
            room_creation_per_second: 100.0,
            room_creation_burst: 1000.0,
            invites_per_second: 100.0,
            invites_burst: 1000.0,
            joins_per_second: 100.0,
            joins_burst: 1000.0,
            profile_per_second: 100.0,
            profile_burst: 1000.0,
            typing_per_second: 100.0,
            typing_burst: 1000.0,
            receipts_per_second: 100.0,
            receipts_burst: 1000.0,
            presence_per_second: 100.0,
            presence_burst: 1000.0,
            media_uploads_per_second: 100.0,
            media_uploads_burst: 1000.0,
            pushers_per_second: 100.0,
            pushers_burst: 1000.0,
            uia_failures_per_second: 100.0,
            uia_failures_burst: 1000.0,
        }
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(pub ipnet::IpNet);

impl Network {
    pub fn contains(&self, ip: &std::net::IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(Self)
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Let pushers reach gateways on loopback, private, link-local and other non-global
    /// addresses. Off: such pusher URLs are refused (a server-side request forgery otherwise).
    pub allow_private_addresses: bool,
    /// Non-global networks that push gateways may nevertheless be on (e.g. `10.1.2.3/32`).
    pub allowed_networks: Vec<Network>,
    /// PEM files of certificate authorities trusted for `https://` gateways besides the
    /// system's (a gateway on an internal network with its own CA).
    pub ca_files: Vec<std::path::PathBuf>,
    /// How long stored push outcomes (`/notifications`) are kept; a duration like the message
    /// windows' (at least a day is kept), 0 for ever. Unread counts do not change when they go
    /// (push/retention.rs).
    pub outcome_retention: Window,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            allow_private_addresses: false,
            allowed_networks: Vec::new(),
            ca_files: Vec::new(),
            outcome_retention: Window(Some(30 * 24 * 60 * 60 * 1000)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiaConfig {
    /// How long a user-interactive auth session lives after it starts.
    pub session_timeout_secs: u64,
}

impl Default for UiaConfig {
    fn default() -> Self {
        Self {
            session_timeout_secs: 600,
        }
    }
}

/// Hearth's edit and delete windows (spec/message-policy.md): how long after sending it a local
/// user may still edit (`m.replace`) or redact their own event. Rooms override them with the
/// `org.hearth.room.message_policy` state event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagesConfig {
    pub edit_window: Window,
    pub delete_window: Window,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        Self {
            edit_window: Window(Some(15 * 60 * 1000)),
            delete_window: Window(Some(15 * 60 * 1000)),
        }
    }
}

/// A duration in milliseconds, `None` for unlimited. Written as an integer of milliseconds or a
/// string: a number with a unit (`"500ms"`, `"30s"`, `"15m"`, `"2h"`, `"1d"`) or a bare number
/// of milliseconds. 0 (or `"0"`, `"unlimited"`) means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window(pub Option<u64>);

impl Window {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "unlimited" {
            return Ok(Self(None));
        }
        let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration (e.g. \"15m\", \"30s\", 900000)"))?;
        let factor = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1000,
            "m" => 60 * 1000,
            "h" => 60 * 60 * 1000,
            "d" => 24 * 60 * 60 * 1000,
            other => return Err(format!("unknown duration unit {other:?} (ms, s, m, h, d)")),
        };
        let ms = number
            .checked_mul(factor)
            .ok_or_else(|| format!("{text:?} is too long"))?;
        Ok(Self((ms > 0).then_some(ms)))
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0.unwrap_or(0))
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Ms(ms) => Ok(Self((ms > 0).then_some(ms))),
            Raw::Text(text) => Self::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// To-device messages queued for one device before senders get 429 `M_LIMIT_EXCEEDED`.
    pub max_pending_to_device: i64,
    /// `org.hearth.ws` streams one user may hold open at once (spec/websocket.md).
    pub max_streams_per_user: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 1024 * 1024,
            max_pending_to_device: crate::e2ee::MAX_PENDING_TO_DEVICE,
            max_streams_per_user: 100,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Where uploaded files and thumbnails are kept; `<data_dir>/media` when absent.
    pub path: Option<PathBuf>,
    /// Largest upload accepted, in bytes (`m.upload.size`).
    pub max_upload_bytes: u64,
    /// Images with more pixels than this are not thumbnailed (413 `M_TOO_LARGE`).
    pub max_thumbnail_pixels: u64,
    /// How many `/create`d media IDs a user may hold without having uploaded to them.
    pub max_pending_uploads: u64,
    /// URL previews (`/preview_url`). Not implemented yet: must stay `false`.
    pub url_preview: bool,
    /// The thumbnails that can be made; a request gets the smallest one of its method at
    /// least as large as asked (else the largest), so clients cannot fill the cache with sizes.
    pub thumbnail_sizes: Vec<ThumbnailSize>,
    /// Image decodes (thumbnail generation) running at once; more requests wait.
    pub max_concurrent_thumbnails: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailSize {
    pub width: u32,
    pub height: u32,
    pub method: crate::media::Method,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_upload_bytes: 50 * 1024 * 1024,
            max_thumbnail_pixels: 32_000_000,
            max_pending_uploads: 100,
            url_preview: false,
            thumbnail_sizes: default_thumbnail_sizes(),
            max_concurrent_thumbnails: 4,
        }
    }
}

/// Access token lifetimes. Refresh tokens go only to clients that ask (`refresh_token: true` in
/// `/login` or `/register`); other clients get access tokens that never expire. As in Synapse,
/// they are on by default with 5-minute access tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of an access token issued with a refresh token, in ms; 0 turns refresh tokens
    /// off (clients asking for one get a non-expiring access token, and `/refresh` is 404).
    pub refreshable_access_token_lifetime_ms: u64,
    /// How long a refresh token stays valid unused, in ms; absent: until used or logged out.
    pub refresh_token_lifetime_ms: Option<u64>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            refreshable_access_token_lifetime_ms: 5 * 60 * 1000,
            refresh_token_lifetime_ms: None,
        }
    }
}

/// Synapse's default set.
fn default_thumbnail_sizes() -> Vec<ThumbnailSize> {
    use crate::media::Method::{Crop, Scale};
    [
        (32, 32, Crop),
        (96, 96, Crop),
        (320, 240, Scale),
        (640, 480, Scale),
        (800, 600, Scale),
    ]
    .into_iter()
    .map(|(width, height, method)| ThumbnailSize {
        width,
        height,
        method,
    })
    .collect()
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8008".parse().expect("valid address")
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./hearth-data")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// The development defaults: `localhost:8008`, SQLite under `./hearth-data/`, open
    /// registration, generous rate limits.
    pub fn dev() -> Self {
        Self {
            server_name: "localhost:8008".into(),
            listen: default_listen(),
            data_dir: default_data_dir(),
            database: DatabaseConfig::default(),
            registration: RegistrationConfig {
                enabled: true,
                token: None,
            },
            rate_limits: RateLimitConfig::generous(),
            limits: LimitsConfig::default(),
            media: MediaConfig::default(),
            auth: AuthConfig::default(),
            public_baseurl: None,
            trusted_proxies: Vec::new(),
            push: PushConfig::default(),
            uia: UiaConfig::default(),
            privacy: PrivacyConfig::default(),
            messages: MessagesConfig::default(),
            search: SearchConfig::default(),
            testing: TestingConfig::default(),
            federation: FederationConfig::default(),
            trusted_key_servers: Vec::new(),
            admins: Vec::new(),
        }
    }

    /// Reads a TOML file, applies environment overrides, validates.
    pub fn load(path: Option<&std::path::Path>, dev: bool) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?
            }
            None if dev => toml::Table::try_from(Self::dev()).expect("defaults serialize"),
            None => {
                return Err(ConfigError::Invalid(
                    "no config file given (use --config FILE or --dev)".into(),
                ));
            }
        };
        apply_env(&mut table, std::env::vars())?;
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        ruma::ServerName::parse(&self.server_name).map_err(|e| {
            ConfigError::Invalid(format!(
                "server_name {:?} is not a valid server name: {e}",
                self.server_name
            ))
        })?;
        for admin in &self.admins {
            ruma::UserId::parse(admin)
                .map_err(|e| ConfigError::Invalid(format!("admins: {admin:?} is not a user ID: {e}")))?;
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(format!(
                "database.url must start with sqlite: or postgres:// (got {url:?})"
            )));
        }
        if self.auth.refresh_token_lifetime_ms == Some(0) {
            return Err(ConfigError::Invalid(
                "auth.refresh_token_lifetime_ms must be positive (leave it out for no limit)".into(),
            ));
        }
        if self.media.url_preview {
            return Err(ConfigError::Invalid(
                "media.url_preview = true is not supported yet (URL previews are not implemented)".into(),
            ));
        }
        if self.media.thumbnail_sizes.is_empty()
            || self
                .media
                .thumbnail_sizes
                .iter()
                .any(|t| t.width == 0 || t.height == 0)
        {
            return Err(ConfigError::Invalid(
                "media.thumbnail_sizes needs at least one size, each wider and higher than 0".into(),
            ));
        }
        self.validate_federation()?;
        if self.media.max_concurrent_thumbnails == 0 {
            return Err(ConfigError::Invalid(
                "media.max_concurrent_thumbnails must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn validate_federation(&self) -> Result<(), ConfigError> {
        let fed = &self.federation;
        if fed.enabled && (fed.tls_certificate.is_none() || fed.tls_private_key.is_none()) {
            return Err(ConfigError::Invalid(
                "federation.enabled needs federation.tls_certificate and federation.tls_private_key \
                 (`hearth generate-dev-cert` writes a self-signed pair for local use)"
                    .into(),
            ));
        }
        for (name, target) in &fed.resolve {
            ruma::ServerName::parse(name).map_err(|e| {
                ConfigError::Invalid(format!("federation.resolve: {name:?} is not a server name: {e}"))
            })?;
            let valid = target
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "federation.resolve.{name:?}: {target:?} is not host:port"
                )));
            }
        }
        for server in &self.trusted_key_servers {
            ruma::ServerName::parse(&server.server_name).map_err(|e| {
                ConfigError::Invalid(format!(
                    "trusted_key_servers: {:?} is not a server name: {e}",
                    server.server_name
                ))
            })?;
            let keys_ok = !server.verify_keys.is_empty()
                && server.verify_keys.iter().all(|(id, key)| {
                    id.starts_with("ed25519:")
                        && ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(key)
                            .is_ok_and(|k| k.as_bytes().len() == 32)
                });
            if !keys_ok {
                return Err(ConfigError::Invalid(format!(
                    "trusted_key_servers: {:?} needs verify_keys, each \"ed25519:ID\" = base64 public key",
                    server.server_name
                )));
            }
        }
        Ok(())
    }

    /// The directory for media files: `media.path`, else `<data_dir>/media`.
    pub fn media_path(&self) -> PathBuf {
        self.media
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("media"))
    }

    /// The search index directory: `search.index_path`, else `<data_dir>/search`.
    pub fn search_index_path(&self) -> PathBuf {
        self.search
            .index_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("search"))
    }

    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("hearth.db").display()))
    }

    /// A commented TOML config for `hearth generate-config`.
    pub fn generate(server_name: &str) -> String {
        format!(
            r#"# Hearth configuration. Every key can be overridden by an environment variable:
# HEARTH_<KEY>, with __ between levels (HEARTH_DATABASE__URL sets database.url).

# The name in your users' IDs (@alice:{server_name}). It cannot change later.
server_name = "{server_name}"
listen = "127.0.0.1:8008"
data_dir = "./hearth-data"
# public_baseurl = "https://matrix.{server_name}"
# Reverse proxies trusted to name the client in X-Forwarded-For (addresses or CIDRs). Empty: the
# header is ignored and the connection's peer address is the client's.
trusted_proxies = []
# Server admins (user IDs) who may read search-enabled rooms through the audited admin API;
# `hearth admin grant @user:server` adds more (spec/admin.md).
admins = []

[database]
# SQLite by default; for PostgreSQL: url = "postgres://user@localhost/hearth"
url = "sqlite://./hearth-data/hearth.db"

[registration]
enabled = false
# token = "a shared secret"   # require m.login.registration_token

# Token buckets: *_per_second is the sustained rate, *_burst how many may come at once. Past
# them a request gets 429 M_LIMIT_EXCEEDED with retry_after_ms. Counted per user, except login
# and registration (per client address) and failed logins (per user and client address).
[rate_limits]
enabled = true
messages_per_second = 10.0        # messages and state events
messages_burst = 50.0
login_per_second = 0.5            # login requests per address
login_burst = 5.0
login_failures_per_second = 0.17  # wrong passwords per (user, address)
login_failures_burst = 3.0
register_per_second = 0.2
register_burst = 5.0
room_creation_per_second = 0.05
room_creation_burst = 10.0
invites_per_second = 0.3
invites_burst = 10.0
joins_per_second = 0.1            # joins and knocks
joins_burst = 10.0
profile_per_second = 0.1          # display name and avatar changes
profile_burst = 5.0
typing_per_second = 2.0
typing_burst = 20.0
receipts_per_second = 2.0         # receipts and read markers
receipts_burst = 20.0
presence_per_second = 0.1
presence_burst = 3.0
media_uploads_per_second = 1.0    # uploads and /create
media_uploads_burst = 20.0
pushers_per_second = 0.2          # POST /pushers/set
pushers_burst = 10.0
uia_failures_per_second = 0.17    # wrong passwords in user-interactive auth, per user
uia_failures_burst = 3.0

[limits]
max_request_bytes = 1048576
max_pending_to_device = 10000     # queued to-device messages per device
max_streams_per_user = 100        # open org.hearth.ws streams per user

[media]
# path = "./hearth-data/media"   # default: <data_dir>/media
max_upload_bytes = 52428800       # 50 MiB
max_thumbnail_pixels = 32000000
max_pending_uploads = 100         # /create'd media IDs not yet uploaded, per user
url_preview = false               # URL previews are not implemented yet
# Thumbnails are made only in these sizes: a request gets the smallest size of its method that
# is at least as large as asked, else the largest.
thumbnail_sizes = [
    {{ width = 32, height = 32, method = "crop" }},
    {{ width = 96, height = 96, method = "crop" }},
    {{ width = 320, height = 240, method = "scale" }},
    {{ width = 640, height = 480, method = "scale" }},
    {{ width = 800, height = 600, method = "scale" }},
]
max_concurrent_thumbnails = 4     # image decodes at once

[push]
# Pusher URLs on loopback, private (RFC 1918, fc00::/7), link-local and other non-global
# addresses are refused, when set and when delivering, unless allowed here.
allow_private_addresses = false
allowed_networks = []             # e.g. ["10.1.2.3/32"]
# Stored notifications (GET /notifications) older than this are deleted; unread counts keep
# what was not read. A duration ("30d", "48h"; at least a day is kept) or 0 to keep them for ever.
outcome_retention = "30d"

[uia]
session_timeout_secs = 600        # user-interactive auth sessions expire after this

[privacy]
# Rooms with m.room.encryption become strict end-to-end encrypted rooms: the server refuses
# plaintext messages from its users there (spec/privacy-modes.md).
encrypted_rooms_strict = true
# The mode of new unencrypted rooms whose initial_state names none: "search_enabled" (the server
# indexes them for /search) or "none" (plain Matrix rooms, searchable too, as on other servers).
default_mode = "search_enabled"
# The server key that encrypts search-enabled rooms at rest (base64 of 32 bytes; `head -c 32
# /dev/urandom | base64`). Or set HEARTH_PRIVACY__AT_REST_KEY. Without either, a key is
# generated into <data_dir>/at_rest.key: keep it elsewhere in production. Change it only with
# `hearth keys rotate-at-rest`; a wrong key stops start-up.
# at_rest_key_file = "/etc/hearth/at_rest.key"
notify_admin_reads = true         # a notice in the room whenever an admin reads it (spec/admin.md)

[search]
# index_path = "./hearth-data/search"   # default: <data_dir>/search
# Least time between two index commits under a steady stream of events (a /search commits at once).
commit_interval_ms = 500

[messages]
# How long after sending it a local user may still edit or delete (redact) their own event:
# milliseconds, or a duration such as "15m", "30s", "2h"; 0 means unlimited. Rooms override
# these with the org.hearth.room.message_policy state event (spec/message-policy.md).
edit_window = "15m"
delete_window = "15m"

[federation]
# The Server-Server API, on its own HTTPS listener (TLS 1.3 only).
enabled = false
listen = "0.0.0.0:8448"
# PEM certificate chain and private key (`hearth generate-dev-cert` makes a self-signed pair).
# tls_certificate = "./hearth-data/federation.crt"
# tls_private_key = "./hearth-data/federation.key"
verify_tls = true                 # false trusts any certificate: tests and private networks only
ca_files = []                     # extra CA certificates (PEM) trusted besides the system's
allow_ip_ranges = []              # non-global networks other servers may be on, e.g. ["10.0.0.0/8"]
retry_initial_ms = 1000           # first wait before a failed transaction is retried (doubles)
retry_max_ms = 600000             # longest wait between retries to a server that is down
max_queued_edus = 10000           # EDUs kept for a server that is down; the oldest go first

# Server name -> host:port, instead of discovery (.well-known, SRV, port 8448).
[federation.resolve]
# "other.example" = "10.0.0.5:8448"

# Notaries asked for other servers' keys when those cannot be reached directly:
# [[trusted_key_servers]]
# server_name = "matrix.org"
# verify_keys = {{ "ed25519:auto" = "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw" }}

[auth]
# Access tokens of clients that ask for a refresh token last this long (ms); 0: no refresh tokens.
refreshable_access_token_lifetime_ms = 300000
# refresh_token_lifetime_ms = 604800000   # default: refresh tokens last until used
"#
        )
    }
}

/// Applies `HEARTH_A__B=value` overrides. Values parse as TOML scalars when they can
/// (`true`, `8`, `1.5`), else they are strings.
fn apply_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in vars {
        let Some(path) = name.strip_prefix("HEARTH_") else {
            continue;
        };
        if path.is_empty() || path.starts_with("TEST") || path == "BIN" {
            continue;
        }
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table())
            .unwrap_or(toml::Value::String(value));
        let (last, parents) = keys.split_last().expect("split of a non-empty string");
        let mut current = &mut *table;
        for key in parents {
            let entry = current
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            current = entry
                .as_table_mut()
                .ok_or_else(|| ConfigError::Invalid(format!("{name}: `{key}` is not a section")))?;
        }
        current.insert(last.clone(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        apply_env(
            &mut table,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let c = load_str(
            "server_name = \"a.example\"\n[database]\nurl = \"sqlite://x.db\"\n",
            &[
                ("HEARTH_DATABASE__URL", "postgres://p@h/db"),
                ("HEARTH_REGISTRATION__ENABLED", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.database.url.as_deref(), Some("postgres://p@h/db"));
        assert!(c.registration.enabled);
    }

    #[test]
    fn message_windows_read_durations_and_milliseconds() {
        let c = load_str("server_name = \"a.example\"\n", &[]).unwrap();
        assert_eq!(c.messages.edit_window, Window(Some(900_000)));
        assert_eq!(c.messages.delete_window, Window(Some(900_000)));
        let c = load_str(
            "server_name = \"a.example\"\n[messages]\nedit_window = \"30s\"\ndelete_window = 0\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.messages.edit_window, Window(Some(30_000)));
        assert_eq!(c.messages.delete_window, Window(None));
        let c = load_str(
            "server_name = \"a.example\"\n",
            &[
                ("HEARTH_MESSAGES__EDIT_WINDOW", "2h"),
                ("HEARTH_MESSAGES__DELETE_WINDOW", "1500"),
            ],
        )
        .unwrap();
        assert_eq!(c.messages.edit_window, Window(Some(7_200_000)));
        assert_eq!(c.messages.delete_window, Window(Some(1500)));
        for bad in ["\"15 minutes\"", "\"-1s\"", "\"m\"", "-5"] {
            let err = load_str(
                &format!("server_name = \"a.example\"\n[messages]\nedit_window = {bad}\n"),
                &[],
            )
            .unwrap_err();
            assert!(
                err.to_string().contains("edit_window") || err.to_string().contains("duration"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_unknown_key_is_named_in_the_error() {
        let err = load_str("server_name = \"a.example\"\nlisten_on = \"x\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
    }

    #[test]
    fn a_wrong_type_is_named_in_the_error() {
        let err = load_str(
            "server_name = \"a.example\"\n[registration]\nenabled = \"yes\"\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("enabled"), "{err}");
    }

    #[test]
    fn a_partial_section_keeps_the_other_defaults() {
        let c = load_str(
            "server_name = \"a.example\"\n[rate_limits]\nenabled = false\n",
            &[],
        )
        .unwrap();
        assert!(!c.rate_limits.enabled);
        assert_eq!(c.rate_limits.login_burst, RateLimitConfig::default().login_burst);
    }

    #[test]
    fn media_defaults_and_overrides() {
        let c = load_str("server_name = \"a.example\"\n", &[]).unwrap();
        assert_eq!(c.media.max_upload_bytes, 50 * 1024 * 1024);
        assert_eq!(c.media_path(), c.data_dir.join("media"));
        let c = load_str(
            "server_name = \"a.example\"\n[media]\npath = \"/srv/m\"\n",
            &[("HEARTH_MEDIA__MAX_UPLOAD_BYTES", "1000")],
        )
        .unwrap();
        assert_eq!(c.media.max_upload_bytes, 1000);
        assert_eq!(c.media_path(), PathBuf::from("/srv/m"));
        assert!(load_str("server_name = \"a.example\"\n[media]\nurl_preview = true\n", &[]).is_err());
        assert!(load_str("server_name = \"a.example\"\n[media]\nmax_upload = 1\n", &[]).is_err());
    }

    #[test]
    fn refresh_tokens_are_on_by_default_and_can_be_turned_off() {
        let c = load_str("server_name = \"a.example\"\n", &[]).unwrap();
        assert_eq!(c.auth.refreshable_access_token_lifetime_ms, 300_000);
        assert_eq!(c.auth.refresh_token_lifetime_ms, None);
        let c = load_str(
            "server_name = \"a.example\"\n",
            &[("HEARTH_AUTH__REFRESHABLE_ACCESS_TOKEN_LIFETIME_MS", "0")],
        )
        .unwrap();
        assert_eq!(c.auth.refreshable_access_token_lifetime_ms, 0);
        assert!(
            load_str(
                "server_name = \"a.example\"\n[auth]\nrefresh_token_lifetime_ms = 0\n",
                &[]
            )
            .is_err()
        );
    }

    #[test]
    fn hardening_keys_load_and_bad_values_are_named() {
        let c = load_str(
            "server_name = \"a.example\"\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n\
             [push]\nallowed_networks = [\"fd00::/8\"]\n[uia]\nsession_timeout_secs = 60\n\
             [media]\nmax_concurrent_thumbnails = 2\n\
             thumbnail_sizes = [{ width = 10, height = 20, method = \"crop\" }]\n",
            &[("HEARTH_RATE_LIMITS__JOINS_BURST", "3")],
        )
        .unwrap();
        assert!(c.trusted_proxies[0].contains(&"127.0.0.1".parse().unwrap()));
        assert!(c.trusted_proxies[1].contains(&"10.9.8.7".parse().unwrap()));
        assert!(!c.push.allow_private_addresses);
        assert_eq!(c.uia.session_timeout_secs, 60);
        assert_eq!(c.rate_limits.joins_burst, 3.0);
        assert_eq!(c.media.thumbnail_sizes.len(), 1);
        let err = load_str(
            "server_name = \"a.example\"\ntrusted_proxies = [\"localhost\"]\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("trusted_proxies"), "{err}");
        let err = load_str(
            "server_name = \"a.example\"\n[media]\nthumbnail_sizes = []\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("thumbnail_sizes"), "{err}");
        let bad_method = "server_name = \"a.example\"\n[media]\n\
                          thumbnail_sizes = [{ width = 1, height = 1, method = \"zoom\" }]\n";
        assert!(load_str(bad_method, &[]).is_err());
        let defaults = load_str("server_name = \"a.example\"\n", &[]).unwrap();
        assert!(defaults.trusted_proxies.is_empty());
        assert_eq!(defaults.media.thumbnail_sizes.len(), 5);
    }

    #[test]
    fn federation_keys_load_and_bad_values_are_named() {
        let c = load_str("server_name = \"a.example\"\n", &[]).unwrap();
        assert!(!c.federation.enabled);
        assert!(c.federation.verify_tls);
        assert!(c.trusted_key_servers.is_empty());
        let c = load_str(
            "server_name = \"a.example\"\n\
             [federation]\nenabled = true\ntls_certificate = \"c.pem\"\ntls_private_key = \"k.pem\"\n\
             allow_ip_ranges = [\"127.0.0.1/32\"]\n\
             [federation.resolve]\n\"b.example\" = \"127.0.0.1:8449\"\n\
             [[trusted_key_servers]]\nserver_name = \"matrix.org\"\n\
             verify_keys = { \"ed25519:auto\" = \"Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw\" }\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.federation.resolve["b.example"], "127.0.0.1:8449");
        assert_eq!(c.trusted_key_servers[0].server_name, "matrix.org");
        let err = load_str("server_name = \"a.example\"\n[federation]\nenabled = true\n", &[]).unwrap_err();
        assert!(err.to_string().contains("tls_certificate"), "{err}");
        let err = load_str(
            "server_name = \"a.example\"\n[federation.resolve]\n\"b.example\" = \"nowhere\"\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("federation.resolve"), "{err}");
        let err = load_str(
            "server_name = \"a.example\"\n[[trusted_key_servers]]\nserver_name = \"m.org\"\nverify_keys = {}\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("trusted_key_servers"), "{err}");
    }

    #[test]
    fn an_invalid_server_name_is_refused() {
        assert!(load_str("server_name = \"not a name\"\n", &[]).is_err());
    }

    #[test]
    fn the_generated_config_loads() {
        let c = load_str(&Config::generate("example.org"), &[]).unwrap();
        assert_eq!(c.server_name, "example.org");
        assert!(!c.registration.enabled);
    }
}
