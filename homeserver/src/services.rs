//! The shared state every request handler reaches the server through.

use std::sync::Arc;

use hearth_federation::SigningKey;

use crate::{
    config::Config,
    media::MediaRepo,
    ratelimit::RateLimiter,
    rooms::{Timeline, listener::AppendListener, typing::Typing},
    store::Store,
    sync::notifier::Notifier,
};

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct Services(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub store: Store,
    pub signing_key: SigningKey,
    pub notifier: Arc<dyn Notifier>,
    pub rate_limiter: RateLimiter,
    pub timeline: Timeline,
    /// Told about every batch of events the timeline stores, in this order.
    pub listeners: Vec<Box<dyn AppendListener>>,
    pub media: MediaRepo,
    pub typing: Typing,
    /// The search index and its indexer's progress.
    pub search: crate::search::Search,
    /// Cached push rule sets and room contexts, and the push gateway client.
    pub push: crate::push::PushState,
    /// The room directory's cached listing.
    pub directory: crate::rooms::directory::PublicRooms,
    /// Federation: old keys, the outbound client, the key fetch spacing.
    pub federation: crate::federation::Federation,
    /// The clock of time-dependent rules (edit and delete windows); adjustable in tests.
    pub clock: crate::clock::Clock,
    /// When each device's last-seen time was last written, so requests do not each write it.
    pub last_seen_written: std::sync::Mutex<std::collections::HashMap<(String, String), i64>>,
    /// Each local user's stored presence and last-active time as last written (users/presence.rs).
    pub presence_written: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
    /// Open `org.hearth.ws` streams per user (`limits.max_streams_per_user`).
    pub streams: crate::util::Slots,
    /// What `/sync` keeps in memory: stream and room positions, recent events formatted for
    /// clients, and its cost counters.
    pub sync_engine: crate::sync::engine::SyncEngine,
}

impl std::ops::Deref for Services {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Services {
    pub fn new(config: Config, store: Store, signing_key: SigningKey, notifier: Arc<dyn Notifier>) -> Self {
        let rate_limiter = RateLimiter::new(config.rate_limits.clone());
        let push = crate::push::PushState::new(&config.push);
        let media = MediaRepo::new(config.media_path(), config.media.max_concurrent_thumbnails);
        let clock = crate::clock::Clock::new(config.testing.adjustable_clock);
        Self(Arc::new(Inner {
            config,
            store,
            signing_key,
            notifier,
            rate_limiter,
            timeline: Timeline::default(),
            // Push first: a new room's invites get their push outcomes stored before the
            // invitees' syncs wake.
            listeners: vec![
                Box::new(crate::push::PushListener),
                Box::new(crate::sync::notifier::WakeSyncs),
                Box::new(crate::search::SearchListener),
                Box::new(crate::federation::outbound::FederationSender),
            ],
            media,
            typing: Typing::default(),
            search: Default::default(),
            push,
            directory: Default::default(),
            federation: Default::default(),
            clock,
            last_seen_written: Default::default(),
            presence_written: Default::default(),
            streams: Default::default(),
            sync_engine: Default::default(),
        }))
    }

    pub fn server_name(&self) -> &str {
        &self.config.server_name
    }

    /// The URL clients reach this server at: `public_baseurl`, else the listen address.
    pub fn base_url(&self) -> String {
        self.config
            .public_baseurl
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.config.listen))
    }
}

/// Services over a fresh SQLite database in a temporary directory, for unit tests of domain
/// logic without a running server (no HTTP listener; the directory goes with the value).
///
/// One at a time per process: the at-rest keyring is process-wide (`at_rest::install`), so two
/// live test services would each find the other's server key installed ("rotated while the
/// server ran") or lose their rooms' data keys.
#[cfg(test)]
pub(crate) struct TestServices {
    pub svc: Services,
    _dir: tempfile::TempDir,
    _alone: tokio::sync::MutexGuard<'static, ()>,
}

#[cfg(test)]
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[cfg(test)]
impl TestServices {
    pub async fn new() -> Self {
        let alone = ONE_AT_A_TIME.lock().await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config::dev();
        config.server_name = "hearth.test".into();
        config.data_dir = dir.path().to_owned();
        let svc = crate::build(config)
            .await
            .expect("services over a fresh database");
        Self {
            svc,
            _dir: dir,
            _alone: alone,
        }
    }
}
