//! Stored filters: `POST /user/{userId}/filter`, `GET /user/{userId}/filter/{filterId}`, and the
//! `filter` parameter of `/sync` (inline JSON or a stored filter's ID).

use std::{collections::HashMap, sync::Mutex};

use ruma::UserId;

use crate::{
    error::{Error, Result},
    filter::Filter,
    services::Services,
};

/// A filter given to `/sync` inline as JSON, or by the ID of one the user stored.
pub async fn load(svc: &Services, user_id: &UserId, filter: &str) -> Result<Filter> {
    if filter.trim_start().starts_with('{') {
        return Filter::parse(filter);
    }
    let id: i64 = filter
        .parse()
        .map_err(|_| Error::invalid_param("Unknown filter"))?;
    // Checked again: filters stored before the limits existed may exceed them.
    Filter::parse(&stored(svc, user_id.as_str(), id).await?)
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
}

/// Filters kept at most (then the cache starts over).
const MAX_CACHED_FILTERS: usize = 50_000;

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
