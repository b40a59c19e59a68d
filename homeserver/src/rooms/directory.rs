//! The room directory: room aliases, publishing rooms, and `/publicRooms` (published rooms,
//! most joined members first, in pages).
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

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    rooms::{
        self,
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
    listing: Mutex<Option<(Instant, Arc<Vec<Entry>>)>>,
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

    fn fresh(&self) -> Option<Arc<Vec<Entry>>> {
        self.listing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(built, _)| built.elapsed() < LISTING_TTL)
            .map(|(_, listing)| listing.clone())
    }
}

/// The query of `GET`/`POST /publicRooms`. Our own type: ruma's reads `limit` as a JS-safe
/// integer and refuses larger ones, which Hearth answers with a full page.
#[derive(Debug, Default, Deserialize)]
pub struct PublicRoomsQuery {
    pub limit: Option<String>,
    pub since: Option<String>,
    pub server: Option<String>,
}

/// The body of `POST /publicRooms` (see [`PublicRoomsQuery`] for why not ruma's).
#[derive(Debug, Default, Deserialize)]
pub struct PublicRoomsBody {
    pub limit: Option<u64>,
    pub since: Option<String>,
    #[serde(default)]
    pub filter: DirectoryFilter,
}

/// What `POST /publicRooms` may filter on.
#[derive(Debug, Default, Deserialize)]
pub struct DirectoryFilter {
    pub generic_search_term: Option<String>,
    /// `None` in the list stands for rooms without a type.
    pub room_types: Option<Vec<Option<String>>>,
}

/// A room in the directory. Our own type: ruma's leaves out a `public` join rule.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub room_id: OwnedRoomId,
    pub num_joined_members: u64,
    pub world_readable: bool,
    pub guest_can_join: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical_alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_type: Option<String>,
}

/// One page of `/publicRooms`.
#[derive(Debug, Serialize)]
pub struct Page {
    pub chunk: Vec<Entry>,
    pub total_room_count_estimate: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_batch: Option<String>,
}

/// Where an alias points.
#[derive(Debug, Serialize)]
pub struct Resolved {
    pub room_id: OwnedRoomId,
    pub servers: Vec<OwnedServerName>,
}

/// Points a new alias of this server at a room; 409 when the alias exists.
pub async fn create_alias(
    svc: &Services,
    creator: &UserId,
    alias: &RoomAliasId,
    room_id: &RoomId,
) -> Result<()> {
    if alias.server_name().as_str() != svc.server_name() {
        return Err(Error::invalid_param("Alias must be on this server"));
    }
    rooms::room(svc, room_id).await?;
    if !svc
        .store
        .create_alias(alias.as_str(), room_id.as_str(), creator.as_str())
        .await?
    {
        return Err(Error::AliasInUse("Room alias already exists".into()));
    }
    Ok(())
}

/// The room an alias points to, and the servers that know it (this one).
pub async fn resolve_alias(svc: &Services, alias: &RoomAliasId) -> Result<Resolved> {
    if alias.server_name().as_str() != svc.server_name() {
        let (room_id, servers) = crate::federation::remote::resolve_alias(svc, alias).await?;
        return Ok(Resolved {
            room_id: OwnedRoomId::try_from(room_id).map_err(Error::internal)?,
            servers: servers
                .into_iter()
                .filter_map(|s| OwnedServerName::try_from(s).ok())
                .collect(),
        });
    }
    let (room_id, _) = svc
        .store
        .alias(alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    Ok(Resolved {
        room_id: OwnedRoomId::try_from(room_id).map_err(Error::internal)?,
        servers: vec![OwnedServerName::try_from(svc.server_name()).map_err(Error::internal)?],
    })
}

/// Deletes an alias: by its creator, or a member who may change the room's canonical alias.
pub async fn delete_alias(svc: &Services, user: &UserId, alias: &RoomAliasId) -> Result<()> {
    let (room_id, creator) = svc
        .store
        .alias(alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let room_id = RoomId::parse(room_id).map_err(Error::internal)?;
    let levels = state_content(svc, &room_id, "m.room.power_levels", "").await?;
    let needed = levels["events"]["m.room.canonical_alias"]
        .as_i64()
        .or(levels["state_default"].as_i64())
        .unwrap_or(50);
    if creator != user.as_str() && power_level(svc, &room_id, user).await? < needed {
        return Err(Error::forbidden("You may not delete this alias"));
    }
    svc.store.delete_alias(alias.as_str()).await?;
    Ok(())
}

/// A room's local aliases: for anyone when the room is published, else for its members.
pub async fn room_aliases(svc: &Services, user: &UserId, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
    let room = rooms::room(svc, room_id).await?;
    if !room.row.is_public {
        require_joined(svc, room_id, user).await?;
    }
    let aliases = svc.store.aliases_of_room(room_id.as_str()).await?;
    Ok(aliases
        .into_iter()
        .filter_map(|alias| OwnedRoomAliasId::try_from(alias).ok())
        .collect())
}

/// Whether a room is published in the directory; 404 for an unknown room.
pub async fn is_published(svc: &Services, room_id: &RoomId) -> Result<bool> {
    Ok(rooms::room(svc, room_id).await?.row.is_public)
}

/// Publishes or unpublishes a room at a user's request: only a joined member who may change
/// the room's canonical alias may (what Synapse checks; the spec leaves it to the server).
pub async fn publish(svc: &Services, room_id: &RoomId, user: &UserId, public: bool) -> Result<()> {
    rooms::room(svc, room_id).await?;
    require_joined(svc, room_id, user).await?;
    let needed = state_event_level(
        power_levels(svc, room_id).await?.as_ref(),
        "m.room.canonical_alias",
    );
    if power_level(svc, room_id, user).await? < needed {
        return Err(Error::forbidden("You may not publish this room"));
    }
    set_published(svc, room_id, public).await
}

/// Publishes a room in the directory or takes it out.
pub async fn set_published(svc: &Services, room_id: &RoomId, public: bool) -> Result<()> {
    svc.store.set_room_public(room_id.as_str(), public).await?;
    svc.directory.invalidate();
    Ok(())
}

/// `/publicRooms` of `server` (only this one's are known).
pub async fn public_rooms(
    svc: &Services,
    server: Option<&str>,
    limit: Option<u64>,
    since: Option<&str>,
    filter: &DirectoryFilter,
) -> Result<Page> {
    if server.is_some_and(|s| s != svc.server_name()) {
        return Err(Error::not_found(
            "Other servers' directories are not available yet",
        ));
    }
    page(svc, limit, since, filter).await
}

/// A `limit` query parameter: a non-negative integer of any size.
pub fn parse_limit(limit: Option<&str>) -> Result<Option<u64>> {
    limit
        .map(str::parse::<u64>)
        .transpose()
        .map_err(|_| Error::invalid_param("limit must be a non-negative integer"))
}

/// One page of the directory: `limit` rooms (at most `MAX_PAGE`) from the offset token `since`
/// (`p<offset>`), with `next_batch`/`prev_batch` tokens and the filtered total.
async fn page(
    svc: &Services,
    limit: Option<u64>,
    since: Option<&str>,
    filter: &DirectoryFilter,
) -> Result<Page> {
    let offset = match since {
        Some(token) => token
            .strip_prefix('p')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::invalid_param("Invalid pagination token"))?,
        None => 0,
    };
    let limit = match limit {
        None | Some(0) => MAX_PAGE,
        Some(n) => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
    };
    let listing = listing(svc).await?;
    let term = filter.generic_search_term.as_deref().map(str::to_lowercase);
    let matching: Vec<&Entry> = listing
        .iter()
        .filter(|entry| term.as_deref().is_none_or(|term| matches_term(entry, term)))
        .filter(|entry| {
            filter
                .room_types
                .as_ref()
                .is_none_or(|types| types.contains(&entry.room_type))
        })
        .collect();
    let total = matching.len();
    let chunk: Vec<Entry> = matching.into_iter().skip(offset).take(limit).cloned().collect();
    let next = offset.saturating_add(limit);
    Ok(Page {
        chunk,
        total_room_count_estimate: total,
        next_batch: (next < total).then(|| format!("p{next}")),
        prev_batch: (offset > 0).then(|| format!("p{}", offset.saturating_sub(limit))),
    })
}

fn matches_term(entry: &Entry, term: &str) -> bool {
    [&entry.name, &entry.topic, &entry.canonical_alias]
        .into_iter()
        .flatten()
        .any(|field| field.to_lowercase().contains(term))
}

/// Every published room's entry, most joined members first: the cached listing while fresh.
async fn listing(svc: &Services) -> Result<Arc<Vec<Entry>>> {
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
        let room_id = RoomId::parse(&room_id).map_err(Error::internal)?;
        entries.push(entry(svc, &room_id).await?);
    }
    // Stable: rooms with as many members stay in publication order.
    entries.sort_by_key(|e| std::cmp::Reverse(e.num_joined_members));
    let entries = Arc::new(entries);
    let mut cached = svc.directory.listing.lock().unwrap_or_else(|e| e.into_inner());
    if svc.directory.generation.load(Ordering::SeqCst) == generation {
        *cached = Some((Instant::now(), entries.clone()));
    }
    Ok(entries)
}

/// A room's entry in the directory, from its current state.
async fn entry(svc: &Services, room_id: &RoomId) -> Result<Entry> {
    let joined = svc.store.members_with(room_id.as_str(), "join").await?.len();
    // A string field of a state event's content; anything else there is ignored.
    let field = async |event_type: &str, key: &str| -> Result<Option<String>> {
        let content = state_content(svc, room_id, event_type, "").await?;
        Ok(content.get(key).and_then(Value::as_str).map(ToOwned::to_owned))
    };
    Ok(Entry {
        room_id: room_id.to_owned(),
        num_joined_members: joined as u64,
        world_readable: field("m.room.history_visibility", "history_visibility")
            .await?
            .as_deref()
            == Some("world_readable"),
        guest_can_join: field("m.room.guest_access", "guest_access").await?.as_deref() == Some("can_join"),
        name: field("m.room.name", "name").await?,
        topic: field("m.room.topic", "topic").await?,
        canonical_alias: field("m.room.canonical_alias", "alias").await?,
        avatar_url: field("m.room.avatar", "url").await?,
        join_rule: field("m.room.join_rules", "join_rule").await?,
        room_type: field("m.room.create", "type").await?,
    })
}
