//! The room directory (`/publicRooms`): published rooms, most joined members first, in pages.
//!
//! Building the listing reads each published room's summary (members, name, topic, …), so it
//! is kept for a few seconds and shared by every request in that time; publishing or
//! unpublishing a room drops it at once. Pages are bounded whatever the client asks for.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ruma::{RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    error::{ApiError, ApiResult},
    rooms::{
        access::require_joined,
        membership::{power_level, power_levels, state_content},
        power::state_event_level,
    },
    services::Services,
};

/// Rooms in one page when the client asks for none, for 0, or for more.
pub const MAX_PAGE: usize = 100;

/// How long a built listing is served before it is built again (name, topic and member count
/// changes show up within this time; publishing and unpublishing at once).
pub const LISTING_TTL: Duration = Duration::from_secs(5);

/// The cached listing.
#[derive(Default)]
pub struct PublicRooms {
    listing: Mutex<Option<(Instant, Arc<Vec<Value>>)>>,
    /// Bumped by every invalidation, so a build that started before one is not kept.
    generation: AtomicU64,
    /// One build at a time: requests that find the listing stale wait for it.
    building: tokio::sync::Mutex<()>,
}

impl PublicRooms {
    /// Drops the listing: the set of published rooms changed.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        *self.listing.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn fresh(&self) -> Option<Arc<Vec<Value>>> {
        self.listing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(built, _)| built.elapsed() < LISTING_TTL)
            .map(|(_, listing)| listing.clone())
    }
}

/// What `POST /publicRooms` may filter on.
#[derive(Debug, Default, Deserialize)]
pub struct DirectoryFilter {
    pub generic_search_term: Option<String>,
    pub room_types: Option<Vec<Option<String>>>,
}

/// Publishes or unpublishes a room at a user's request: only a joined member who may change
/// the room's canonical alias may (what Synapse checks; the spec leaves it to the server).
pub async fn publish(svc: &Services, room_id: &RoomId, user: &UserId, public: bool) -> ApiResult<()> {
    require_joined(svc, room_id, user.as_str()).await?;
    let needed = state_event_level(
        power_levels(svc, room_id).await?.as_ref(),
        "m.room.canonical_alias",
    );
    if power_level(svc, room_id, user).await? < needed {
        return Err(ApiError::forbidden("You may not publish this room"));
    }
    set_published(svc, room_id, public).await
}

/// Publishes a room in the directory or takes it out.
pub async fn set_published(svc: &Services, room_id: &RoomId, public: bool) -> ApiResult<()> {
    svc.store.set_room_public(room_id.as_str(), public).await?;
    svc.directory.invalidate();
    Ok(())
}

/// One page of the directory: `limit` rooms (at most `MAX_PAGE`) from the offset token `since`
/// (`p<offset>`), with `next_batch`/`prev_batch` tokens and the filtered total.
pub async fn page(
    svc: &Services,
    limit: Option<u64>,
    since: Option<&str>,
    filter: &DirectoryFilter,
) -> ApiResult<Value> {
    let offset = match since {
        Some(token) => token
            .strip_prefix('p')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::invalid_param("Invalid pagination token"))?,
        None => 0,
    };
    let limit = match limit {
        None | Some(0) => MAX_PAGE,
        Some(n) => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
    };
    let listing = listing(svc).await?;
    let term = filter.generic_search_term.as_deref().map(str::to_lowercase);
    let matching: Vec<&Value> = listing
        .iter()
        .filter(|entry| term.as_deref().is_none_or(|term| matches_term(entry, term)))
        .filter(|entry| {
            filter.room_types.as_ref().is_none_or(|types| {
                let room_type = entry
                    .get("room_type")
                    .and_then(Value::as_str)
                    .map(ToOwned::to_owned);
                types.contains(&room_type)
            })
        })
        .collect();
    let total = matching.len();
    let chunk: Vec<&Value> = matching.into_iter().skip(offset).take(limit).collect();
    let mut out = json!({ "chunk": chunk, "total_room_count_estimate": total });
    let next = offset.saturating_add(limit);
    if next < total {
        out["next_batch"] = json!(format!("p{next}"));
    }
    if offset > 0 {
        out["prev_batch"] = json!(format!("p{}", offset.saturating_sub(limit)));
    }
    Ok(out)
}

fn matches_term(entry: &Value, term: &str) -> bool {
    ["name", "topic", "canonical_alias"]
        .iter()
        .filter_map(|k| entry.get(*k).and_then(Value::as_str))
        .any(|field| field.to_lowercase().contains(term))
}

/// Every published room's entry, most joined members first: the cached listing while fresh.
async fn listing(svc: &Services) -> ApiResult<Arc<Vec<Value>>> {
    if let Some(listing) = svc.directory.fresh() {
        return Ok(listing);
    }
    let _building = svc.directory.building.lock().await;
    // Someone else may have built it while this request waited.
    if let Some(listing) = svc.directory.fresh() {
        return Ok(listing);
    }
    let generation = svc.directory.generation.load(Ordering::SeqCst);
    let mut entries = Vec::new();
    for room_id in svc.store.public_rooms().await? {
        let room_id = RoomId::parse(&room_id).map_err(ApiError::internal)?;
        entries.push(entry(svc, &room_id).await?);
    }
    // Stable: rooms with as many members stay in publication order.
    entries.sort_by_key(|e| std::cmp::Reverse(e["num_joined_members"].as_u64().unwrap_or(0)));
    let entries = Arc::new(entries);
    let mut cached = svc.directory.listing.lock().unwrap_or_else(|e| e.into_inner());
    if svc.directory.generation.load(Ordering::SeqCst) == generation {
        *cached = Some((Instant::now(), entries.clone()));
    }
    Ok(entries)
}

/// A room's entry in the directory, from its current state.
async fn entry(svc: &Services, room_id: &RoomId) -> ApiResult<Value> {
    let field = |content: Value, key: &str| content.get(key).filter(|v| v.is_string()).cloned();
    let joined = svc.store.members_with(room_id.as_str(), "join").await?.len();
    let history = field(
        state_content(svc, room_id, "m.room.history_visibility", "").await?,
        "history_visibility",
    );
    let guest = field(
        state_content(svc, room_id, "m.room.guest_access", "").await?,
        "guest_access",
    );
    let mut entry = json!({
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable": history.as_ref().and_then(Value::as_str) == Some("world_readable"),
        "guest_can_join": guest.as_ref().and_then(Value::as_str) == Some("can_join"),
    });
    let sources = [
        ("m.room.name", "name", "name"),
        ("m.room.topic", "topic", "topic"),
        ("m.room.canonical_alias", "alias", "canonical_alias"),
        ("m.room.avatar", "url", "avatar_url"),
        ("m.room.join_rules", "join_rule", "join_rule"),
        ("m.room.create", "type", "room_type"),
    ];
    for (event_type, key, out_key) in sources {
        if let Some(value) = field(state_content(svc, room_id, event_type, "").await?, key) {
            entry[out_key] = value;
        }
    }
    Ok(entry)
}
