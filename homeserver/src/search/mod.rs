//! Server-side search (`POST /search`) over the rooms the server may read: a tantivy index
//! that projects the event log (`indexer`), queried with BM25 ranking or by recency (`query`).
//! Strict end-to-end encrypted rooms are never indexed (`rooms::privacy`).

pub mod encrypted_dir;
pub mod index;
pub mod indexer;
pub mod query;
pub mod tokenizer;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::sync::{Notify, watch};

use crate::{
    error::{Error, Result},
    rooms::listener::{AppendListener, ListenerFuture},
    services::Services,
    store::{Appending, NewEvent, Placed},
};
use index::SearchIndex;

/// How long `/search` waits for the indexer to reach the events stored before it.
const CATCH_UP: Duration = Duration::from_secs(5);

/// The index, once opened at start-up, and the indexer's progress.
#[derive(Default)]
pub struct Search {
    index: OnceLock<Arc<SearchIndex>>,
    /// Woken by every stored batch.
    wake: Notify,
    /// Woken by a `/search` waiting for the index: ends the pause between two commits.
    hurry: Notify,
    /// The stream position the index (and its reader) has reached.
    indexed: watch::Sender<i64>,
}

impl Search {
    /// Opens the index and starts the indexer from its stored position (from the start when
    /// the stored position belongs to another index, e.g. the directory was deleted).
    pub async fn start(svc: &Services) -> anyhow::Result<()> {
        let key = svc.store.search_index_key(crate::util::now_ms()).await?;
        let index = Arc::new(open_or_rebuild(&svc.config, &key)?);
        let stored = svc.store.search_position().await?;
        let committed = index.committed_id();
        let (index_id, position) = match (stored, committed) {
            (Some((id, position)), Some(committed)) if id == committed => (id, position),
            _ => {
                let id = crate::util::random_string(16);
                // A fresh start: anything in the directory is from another run.
                let empty = index.clone();
                let fresh = id.clone();
                tokio::task::spawn_blocking(move || {
                    let mut writer = empty.writer.lock().unwrap_or_else(|e| e.into_inner());
                    writer.delete_all_documents()?;
                    let mut commit = writer.prepare_commit()?;
                    commit.set_payload(&fresh);
                    commit.commit()?;
                    drop(writer);
                    empty.reader.reload()
                })
                .await??;
                svc.store.set_search_position(&id, 0).await?;
                (id, 0)
            }
        };
        tracing::info!(position, path = %svc.config.search_index_path().display(), "search index open");
        svc.search.indexed.send_replace(position);
        svc.search
            .index
            .set(index.clone())
            .map_err(|_| anyhow::anyhow!("search index opened twice"))?;
        tokio::spawn(indexer::run(svc.clone(), index, index_id, position));
        Ok(())
    }

    /// The open index, once the indexer has caught up with every event stored before this call
    /// (bounded by [`CATCH_UP`]; a search after that sees what is indexed by then).
    pub(crate) async fn caught_up(&self, svc: &Services) -> Result<Arc<SearchIndex>> {
        let index = self
            .index
            .get()
            .cloned()
            .ok_or_else(|| Error::internal("the search index is not open"))?;
        let target = svc.store.max_stream_ordering().await?;
        let mut indexed = self.indexed.subscribe();
        self.wake.notify_one();
        if *indexed.borrow() < target {
            self.hurry.notify_one();
        }
        let reached = tokio::time::timeout(CATCH_UP, indexed.wait_for(|at| *at >= target)).await;
        if reached.is_err() {
            tracing::warn!(
                target,
                indexed = *self.indexed.borrow(),
                "search ran before the index caught up"
            );
        }
        Ok(index)
    }
}

/// `hearth search reindex`: empties the index and rebuilds it from the event log (the stored
/// position is dropped, so the indexer starts from 0). Returns the position reached. Refused
/// while a server holds the index (tantivy's writer lock); an index that cannot be opened at
/// all is deleted and made anew.
pub async fn reindex(config: crate::config::Config) -> anyhow::Result<i64> {
    let path = config.search_index_path();
    let store = crate::store::Store::connect(&config.database_url(), config.database.max_connections).await?;
    store
        .load_at_rest_keys(&crate::at_rest::load_server_key(&config)?)
        .await?;
    let key = store.search_index_key(crate::util::now_ms()).await?;
    match SearchIndex::open(&config, &key) {
        Ok(index) => drop(index),
        Err(e) if is_lock_busy(&e) => {
            anyhow::bail!(
                "the search index {} is in use: stop the server first",
                path.display()
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "the search index cannot be opened; deleting it");
            remove_index(&path)?;
        }
    }
    store.clear_search_position().await?;
    drop(store);
    let svc = crate::build(config).await?;
    let target = svc.store.max_stream_ordering().await?;
    let mut indexed = svc.search.indexed.subscribe();
    indexed.wait_for(|at| *at >= target).await?;
    Ok(target)
}

/// Opens the index; one that cannot be read (damaged, or sealed under a key this database no
/// longer has) is deleted and made anew: it is a projection of the event log, and the indexer
/// rebuilds it since its stored position no longer matches. One held by another process is
/// refused.
fn open_or_rebuild(config: &crate::config::Config, key: &crate::at_rest::Key) -> anyhow::Result<SearchIndex> {
    match SearchIndex::open(config, key) {
        Ok(index) => Ok(index),
        Err(e) if is_lock_busy(&e) => Err(e),
        Err(e) => {
            let path = config.search_index_path();
            tracing::warn!(error = %e, path = %path.display(), "the search index cannot be opened; rebuilding it");
            remove_index(&path)?;
            SearchIndex::open(config, key)
        }
    }
}

fn is_lock_busy(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<tantivy::TantivyError>(),
        Some(tantivy::TantivyError::LockFailure(
            tantivy::directory::error::LockError::LockBusy,
            _
        ))
    )
}

fn remove_index(path: &std::path::Path) -> anyhow::Result<()> {
    std::fs::remove_dir_all(path)
        .map_err(|e| anyhow::anyhow!("cannot delete the search index {}: {e}", path.display()))
}

/// Wakes the indexer after every stored batch.
pub struct SearchListener;

impl AppendListener for SearchListener {
    fn committed(&self, svc: &Services, _batch: &[Appending], _placed: &[Placed]) {
        svc.search.wake.notify_one();
    }

    fn room_created<'a>(
        &'a self,
        svc: &'a Services,
        _events: &'a [NewEvent],
        _last: Placed,
    ) -> Option<ListenerFuture<'a>> {
        svc.search.wake.notify_one();
        None
    }
}
