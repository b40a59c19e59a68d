//! Stored filters: `POST /user/{userId}/filter`, `GET /user/{userId}/filter/{filterId}`, and the
//! `filter` parameter of `/sync` (inline JSON or a stored filter's ID).

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
};

use ruma::UserId;

use crate::{
    error::{Error, Result},
    filter::Filter,
    services::Services,
};

/// A filter given to `/sync` inline as JSON, or by the ID of one the user stored. Parsed once:
/// the parsed filter is shared by every request that sends the same parameter (each long-poll
/// holds it while it waits).
pub async fn load(svc: &Services, user_id: &UserId, filter: &str) -> Result<Arc<Filter>> {
    let inline = filter.trim_start().starts_with('{');
    // An inline filter means the same for everyone; an ID only for its owner.
    let owner = if inline { "" } else { user_id.as_str() };
    let cache = &svc.sync_engine.filters;
    if let Some(parsed) = cache.parsed(owner, filter) {
        return Ok(parsed);
    }
    let parsed = if inline {
        Filter::parse(filter)?
    } else {
        let id: i64 = filter
            .parse()
            .map_err(|_| Error::invalid_param("Unknown filter"))?;
        // Checked again: filters stored before the limits existed may exceed them.
        Filter::parse(&stored(svc, user_id.as_str(), id).await?)?
    };
    let parsed = Arc::new(parsed);
    cache.keep_parsed(owner, filter, &parsed);
    Ok(parsed)
}

/// The filter of a request that names none.
pub fn none() -> Arc<Filter> {
    static NONE: LazyLock<Arc<Filter>> = LazyLock::new(|| Arc::new(Filter::default()));
    NONE.clone()
}

async fn stored(svc: &Services, user_id: &str, id: i64) -> Result<String> {
    let cache = &svc.sync_engine.filters;
    if let Some(json) = cache.get(user_id, id) {
        return Ok(json);
    }
    let json = svc
        .store
        .filter(user_id, id)
        .await?
        .ok_or_else(|| Error::not_found("Unknown filter"))?;
    cache.put(user_id, id, &json);
    Ok(json)
}

/// Stored filters already read: a filter never changes once stored, and clients send its ID
/// with every `/sync`.
#[derive(Default)]
pub struct StoredFilters {
    by_id: Mutex<HashMap<(String, i64), String>>,
    /// Parsed filters by (owner, `filter` parameter); the owner is empty for inline ones.
    parsed: Mutex<HashMap<(String, String), Arc<Filter>>>,
}

/// Filters kept at most (then the cache starts over).
const MAX_CACHED_FILTERS: usize = 50_000;
/// Parsed filters kept at most, and the longest parameter kept: a client inventing inline
/// filters costs at most ~20 MB here, then parses as before.
const MAX_PARSED_FILTERS: usize = 10_000;
const MAX_PARSED_PARAMETER: usize = 1024;

impl StoredFilters {
    fn get(&self, user_id: &str, id: i64) -> Option<String> {
        let cached = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        cached.get(&(user_id.to_owned(), id)).cloned()
    }

    fn put(&self, user_id: &str, id: i64, json: &str) {
        let mut cached = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        if cached.len() >= MAX_CACHED_FILTERS {
            cached.clear();
        }
        cached.insert((user_id.to_owned(), id), json.to_owned());
    }

    fn parsed(&self, owner: &str, parameter: &str) -> Option<Arc<Filter>> {
        let parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        parsed.get(&(owner.to_owned(), parameter.to_owned())).cloned()
    }

    fn keep_parsed(&self, owner: &str, parameter: &str, filter: &Arc<Filter>) {
        if parameter.len() > MAX_PARSED_PARAMETER {
            return;
        }
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if parsed.len() >= MAX_PARSED_FILTERS {
            parsed.clear();
        }
        parsed.insert((owner.to_owned(), parameter.to_owned()), filter.clone());
    }
}

/// Only the user themself may store and read their filters.
fn own_user(user: &UserId, owner: &str) -> Result<()> {
    if user.as_str() == owner {
        Ok(())
    } else {
        Err(Error::forbidden("Cannot access another user's filters"))
    }
}

/// `POST /user/{userId}/filter`: checks the limits, stores, answers the new filter's ID.
pub async fn upload(svc: &Services, user: &UserId, owner: &str, filter: &Filter) -> Result<String> {
    own_user(user, owner)?;
    filter.validate()?;
    let json = serde_json::to_string(filter).map_err(Error::internal)?;
    Ok(svc.store.insert_filter(owner, &json).await?.to_string())
}

/// `GET /user/{userId}/filter/{filterId}`: a filter as it was stored.
pub async fn download(svc: &Services, user: &UserId, owner: &str, filter_id: &str) -> Result<Filter> {
    own_user(user, owner)?;
    let id: i64 = filter_id
        .parse()
        .map_err(|_| Error::not_found("Unknown filter"))?;
    serde_json::from_str(&stored(svc, owner, id).await?).map_err(Error::internal)
}
