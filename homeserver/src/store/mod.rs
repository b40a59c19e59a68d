//! All SQL lives here, one file per domain, behind one `Store` that works the same whether
//! SQLite or PostgreSQL is behind it.
//!
//! Queries are written once in the dialect both databases accept (`$1` parameters, `ON CONFLICT`,
//! `RETURNING`); integers are `BIGINT`/`i64` everywhere. Migrations differ per backend only where
//! DDL must (auto-increment keys) and are embedded in the binary.

/// `event_edges.prev_absent` for an edge whose prev event is the SQL expression `$prev`: 1 when
/// that event is not in the DAG here (absent, or only an outlier). Only such a prev event can
/// be backfilled later (a DAG event is never removed), so only those edges are indexed by
/// prev event (`event_edges_by_absent_prev`, for `store/backfill.rs`).
macro_rules! prev_absent {
    ($prev:literal) => {
        concat!(
            "CASE WHEN EXISTS (SELECT 1 FROM events p WHERE p.event_id = ",
            $prev,
            " AND p.outlier IN (0, 2)) THEN 0 ELSE 1 END"
        )
    };
}

mod account_data;
mod admin;
mod aliases;
mod at_rest;
mod backfill;
mod backup;
mod e2ee;
mod events;
mod federation;
mod filters;
mod keys;
mod media;
mod message_rows;
mod openid;
mod outliers;
mod pending_pdus;
mod presence;
mod push;
mod push_outcomes;
mod push_retention;
mod receipts;
mod redactions;
mod relations;
mod rooms;
mod search;
mod state;
mod sync;
mod users;

use std::{
    borrow::Cow,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{
    Any, AnyPool, Executor,
    any::{AnyArguments, AnyPoolOptions},
    migrate::{Migration, MigrationType, Migrator},
    query::Query,
};

pub use admin::AuditRow;
pub use backup::{BackupSessionRow, BackupVersionRow, BackupWrite};
pub use e2ee::{KeyUpload, KeysUpload, Queued, ToDeviceOut, ToDeviceRow, UploadRefusal};
pub use events::{Appending, Direction, EventRow, NewEvent, Placed, Topo, Txn, TxnKey};
pub use federation::{NewOutbound, RemoteKeyRow};
pub use media::{MediaRow, RemoteThumbnail, RemoteThumbnailKey, UploadedContent};
pub use outliers::{EventPlace, StateEntry};
pub use pending_pdus::PendingPdu;
pub use presence::PresenceRow;
pub use push::{PushActionRow, PusherRow, ThreadCounts};
pub use receipts::ReceiptRow;
pub use relations::{RelationPage, ThreadRoot};
pub use rooms::RoomRow;
pub use state::{HistoryRow, StateMap};
pub use sync::SyncRoom;
pub use users::{DeviceRow, NewAccessToken, NewRefreshToken, Refreshed, TokenOwner, UserRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot create data directory: {0}")]
    Io(#[from] std::io::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The storage API the rest of the server uses.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Where write transactions run (`begin_write`). On SQLite a pool of one connection: SQLite
    /// runs one writer at a time anyway, so writers queue here instead of polling the file lock
    /// (the busy handler sleeps in steps of milliseconds), and the one connection's page cache
    /// stays warm (a commit by another connection voids it). Single-statement writes run here
    /// too: on a reader connection one collided with the timeline's batch and cost it the busy
    /// handler's sleep (BEGIN IMMEDIATE waiting 9 ms at the 95th percentile under load). On
    /// PostgreSQL, `pool`.
    writer: AnyPool,
    backend: Backend,
    /// Token hash → owner, for the lookup every authenticated request makes.
    tokens: Arc<Mutex<users::TokenCache>>,
    /// Rows of `redactions_awaiting_target` (`redactions.rs`; -1 until first read).
    awaiting_redactions: Arc<std::sync::atomic::AtomicI64>,
    /// Write transactions begun (`begin_write`): `checkpoint_wal` skips a quiet server.
    writes: Arc<AtomicU64>,
    /// Users who may have a pusher (`push.rs`): read at start, added to by `upsert_pusher`.
    pusher_users: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
    /// Push audiences known to be stored (`push_outcomes.rs`).
    known_audiences: Arc<push_outcomes::KnownAudiences>,
}

/// One migration: its version, and its file (same name under `migrations/sqlite/` and
/// `migrations/postgres/`), embedded for both backends.
macro_rules! migration {
    ($version:literal, $file:literal) => {
        (
            $version,
            $file,
            include_str!(concat!("../../../migrations/sqlite/", $file, ".sql")),
            include_str!(concat!("../../../migrations/postgres/", $file, ".sql")),
        )
    };
}

/// (version, name, SQLite SQL, PostgreSQL SQL), one line each.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    migration!(1, "0001_foundation"),
    migration!(2, "0002_media"),
    migration!(3, "0003_push"),
    migration!(4, "0004_receipts_presence"),
    migration!(5, "0005_server_settings"),
    migration!(6, "0006_redaction_lookup"),
    migration!(7, "0007_refresh_tokens"),
    migration!(8, "0008_uia_binding_pusher_devices"),
    migration!(9, "0009_visibility"),
    migration!(10, "0010_e2ee_keys"),
    migration!(11, "0011_key_backup"),
    migration!(12, "0012_relations"),
    migration!(14, "0014_federation_keys"),
    migration!(15, "0015_federated_rooms"),
    migration!(16, "0016_federation_txn"),
    migration!(17, "0017_at_rest_admin_audit"),
    migration!(18, "0018_search"),
    migration!(19, "0019_remote_media"),
    migration!(20, "0020_openid_tokens"),
    migration!(21, "0021_pending_pdus"),
    migration!(24, "0024_federation_outbound_room"),
    migration!(25, "0025_topological_order"),
    migration!(26, "0026_edu_queue_and_redactions"),
    migration!(27, "0027_redactions_awaiting_received"),
    migration!(28, "0028_partial_event_indexes"),
    migration!(29, "0029_push_actions_by_user_position"),
    migration!(30, "0030_push_actions_narrow"),
    migration!(31, "0031_push_outcomes_by_audience"),
    migration!(32, "0032_event_edges_by_prev"),
    migration!(33, "0033_event_edges_absent_prev"),
    migration!(34, "0034_push_outcome_retention"),
];

/// The streams whose positions sync tokens count. Writers of one stream take its lock inside
/// their transaction, so positions are handed out in commit order even when several
/// connections (or processes) write at once: a reader that sees position N has seen all below.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Events = 1,
    AccountData = 2,
    Receipts = 3,
    Presence = 4,
    DeviceLists = 5,
    ToDevice = 6,
    /// Not a sync stream: `federation_outbound`, whose IDs the queue deletes up to, so they
    /// must also become visible in order.
    FederationOutbound = 7,
}

/// Shorthand for a query on the `Any` driver.
fn q(sql: &'static str) -> Query<'static, Any, AnyArguments> {
    count_query();
    sqlx::query(sql)
}

/// A query whose SQL is built at run time (placeholder lists); only ever from this module's
/// own fragments, never from input.
fn qs(sql: String) -> Query<'static, Any, AnyArguments> {
    count_query();
    sqlx::query(sqlx::AssertSqlSafe(sql))
}

tokio::task_local! {
    /// Queries made by the task running inside [`count_queries`].
    static QUERIES: std::cell::Cell<u64>;
}

fn count_query() {
    let _ = QUERIES.try_with(|n| n.set(n.get() + 1));
}

/// Runs `work` and counts the queries it makes (in its own task: work it spawns is not
/// counted). How `/sync` measures what a computation costs the database.
pub async fn count_queries<T>(work: impl std::future::Future<Output = T>) -> (T, u64) {
    QUERIES
        .scope(std::cell::Cell::new(0), async {
            let out = work.await;
            (out, QUERIES.with(std::cell::Cell::get))
        })
        .await
}

/// Copies the SQLite write-ahead log back into the database file every 50 ms, on a reader
/// connection, beside readers and the writer. The writer still checkpoints itself past 4,000
/// pages (16 MiB; SQLite restarts the log only after a checkpoint in the writer's own gap
/// between transactions), but finds most of the log already copied. Nothing written since the
/// last one, nothing done.
async fn checkpoint_wal(pool: AnyPool, writes: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = 0;
    while !pool.is_closed() {
        tick.tick().await;
        let now = writes.load(Ordering::Relaxed);
        if now == seen {
            continue;
        }
        seen = now;
        if let Err(error) = q("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            tracing::warn!(%error, "WAL checkpoint failed");
        }
    }
}

impl Store {
    /// Connects, creating the SQLite file (and its directory) when needed, and migrates.
    pub async fn connect(url: &str, max_connections: Option<u32>) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let (url, max) = match backend {
            Backend::Sqlite => {
                let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or(path);
                if let Some(dir) = Path::new(path).parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir)?;
                }
                (format!("sqlite://{path}?mode=rwc"), max_connections.unwrap_or(8))
            }
            Backend::Postgres => (url.to_owned(), max_connections.unwrap_or(16)),
        };
        let pool = Self::pool_options(backend, max, false).connect(&url).await?;
        let writes = Arc::new(AtomicU64::new(0));
        let writer = match backend {
            Backend::Sqlite => {
                let writer = Self::pool_options(backend, 1, true).connect(&url).await?;
                tokio::spawn(checkpoint_wal(pool.clone(), writes.clone()));
                writer
            }
            Backend::Postgres => pool.clone(),
        };
        let store = Self {
            pool,
            writer,
            backend,
            tokens: Arc::default(),
            awaiting_redactions: Arc::new(std::sync::atomic::AtomicI64::new(-1)),
            writes,
            pusher_users: Arc::default(),
            known_audiences: Arc::default(),
        };
        store.migrate().await?;
        store.load_pusher_users().await?;
        Ok(store)
    }

    /// `writer`: the SQLite connection that runs write transactions; it checkpoints only past
    /// 4,000 pages, leaving the rest to `checkpoint_wal`.
    fn pool_options(backend: Backend, max: u32, writer: bool) -> AnyPoolOptions {
        AnyPoolOptions::new()
            .max_connections(max)
            // A SQLite connection is a file handle that cannot drop; pinging it before each use
            // cost a thread hand-off per query. PostgreSQL connections can, so keep the check.
            .test_before_acquire(backend == Backend::Postgres)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the single writer; NORMAL sync is durable
                        // across process crashes, which is what WAL mode needs.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        // Pages through a shared memory map instead of a read() per page miss:
                        // every commit empties the other connections' page caches, so misses
                        // are the common case (they were a quarter of an append's CPU).
                        conn.execute("PRAGMA mmap_size = 1073741824").await?;
                        // Statement journals (a batch's statements each) in memory, not in a
                        // temporary file.
                        conn.execute("PRAGMA temp_store = MEMORY").await?;
                        if writer {
                            conn.execute("PRAGMA wal_autocheckpoint = 4000").await?;
                        }
                    }
                    Ok(())
                })
            })
    }

    async fn migrate(&self) -> StoreResult<()> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, name, sqlite, postgres)| {
                let sql = if self.backend == Backend::Sqlite {
                    sqlite
                } else {
                    postgres
                };
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(*sql),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations).run(&self.pool).await?;
        Ok(())
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a transaction that reads first and upgrades later fails with
    /// "database is locked" when another writer committed meanwhile, and no timeout helps.
    pub(crate) async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, Any>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        })
    }

    /// Starts a transaction that writes to `stream`. PostgreSQL hands out sequence values before
    /// commit, so writers queue on a transaction-scoped advisory lock; SQLite already runs one
    /// writer at a time.
    pub(crate) async fn begin_stream_write(
        &self,
        stream: Stream,
    ) -> StoreResult<sqlx::Transaction<'static, Any>> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            q("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(stream as i64)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Takes `stream`'s write lock inside an open transaction (PostgreSQL; SQLite writers are
    /// already serialized by `BEGIN IMMEDIATE`).
    async fn lock_stream(&self, tx: &mut sqlx::Transaction<'static, Any>, stream: Stream) -> StoreResult<()> {
        if self.backend == Backend::Postgres {
            q("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(stream as i64)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}
