//! `/sync`: what changed for a user since a token, computed independently of the transport,
//! and the long-poll that waits for the notifier.

pub mod filter;
pub mod notifier;
pub mod token;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::Duration,
};

use ruma::RoomId;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::{
    error::{ApiError, ApiResult},
    rooms::{
        client_event::{Viewer, client_events, stripped_state},
        receipts::receipt_event,
    },
    services::Services,
    store::{Direction, EventRow, StateMap},
    users::presence::presence_content,
};
use filter::{Filter, RoomEventFilter};
use token::StreamToken;

pub struct SyncRequest {
    pub since: Option<StreamToken>,
    pub timeout: Duration,
    pub full_state: bool,
    pub filter: Filter,
}

/// Types whose stripped state an invitee sees.
const INVITE_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

const DEFAULT_TIMELINE_LIMIT: usize = 10;

/// Runs a sync, long-polling up to `timeout` when an incremental sync finds nothing new.
pub async fn sync(svc: &Services, user_id: &str, device_id: &str, req: SyncRequest) -> ApiResult<Value> {
    let deadline = tokio::time::Instant::now() + req.timeout;
    // Subscribed before computing: whatever is stored after the positions were read is heard.
    let mut changes = svc.notifier.subscribe();
    loop {
        let (response, has_changes, interest) = compute(svc, user_id, device_id, &req).await?;
        if req.since.is_none() || req.full_state || has_changes {
            return Ok(response);
        }
        loop {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) | Ok(Err(RecvError::Closed)) => return Ok(response),
                Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Ok(keys)) if keys.iter().any(|k| interest.contains(k)) => break,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// The response, whether it has anything new, and the keys (rooms, the user) whose
/// notifications should wake this sync.
async fn compute(
    svc: &Services,
    user_id: &str,
    device_id: &str,
    req: &SyncRequest,
) -> ApiResult<(Value, bool, HashSet<String>)> {
    // Positions first: everything up to them is committed, so nothing can be skipped.
    let now = StreamToken::current(svc).await?;
    let since = req.since.unwrap_or_default();
    let initial = req.since.is_none();
    let room_filter = req.filter.room.clone().unwrap_or_default();
    let viewer = Viewer { user_id, device_id };

    let forgotten: HashSet<String> = svc.store.forgotten_rooms(user_id).await?.into_iter().collect();
    let mut join = Map::new();
    let mut invite = Map::new();
    let mut leave = Map::new();
    let mut knock = Map::new();

    let account_changes = svc
        .store
        .account_data_changes(user_id, since.account_data, now.account_data)
        .await?;
    let mut room_account_data: HashMap<String, Vec<Value>> = HashMap::new();
    let mut global_account_data = Vec::new();
    let account_filter = req.filter.account_data.clone().unwrap_or_default();
    let room_account_filter = room_filter.account_data.clone().unwrap_or_default();
    for (room_id, data_type, content) in account_changes {
        let event = json!({ "type": data_type, "content": serde_json::from_str::<Value>(&content).unwrap_or_default() });
        if room_id.is_empty() {
            if account_filter.allows(&data_type, user_id) {
                global_account_data.push(event);
            }
        } else if room_account_filter.base.allows(&data_type, user_id) {
            room_account_data.entry(room_id).or_default().push(event);
        }
    }

    // Where the user stood at `since`: a room they were not joined to then is new to the client.
    let joined_at_since: HashSet<String> = if initial {
        HashSet::new()
    } else {
        svc.store
            .memberships_at(user_id, since.events)
            .await?
            .into_iter()
            .filter(|(_, m, _)| m == "join")
            .map(|(r, _, _)| r)
            .collect()
    };
    let mut interest: HashSet<String> = HashSet::from([user_id.to_owned()]);
    for (room_id, membership, at) in svc.store.memberships_at(user_id, now.events).await? {
        interest.insert(room_id.clone());
        if !room_filter.allows_room(&room_id) {
            continue;
        }
        let changed_since = initial || at > since.events;
        let fresh = initial || !joined_at_since.contains(&room_id);
        let parsed = RoomId::parse(room_id.as_str()).map_err(ApiError::internal)?;
        let room = svc
            .store
            .room(&room_id)
            .await?
            .ok_or_else(|| ApiError::internal("room missing"))?;
        match membership.as_str() {
            "join" => {
                let account_data = room_account_data.remove(&room_id).unwrap_or_default();
                let window = Window {
                    since,
                    upto: now,
                    fresh,
                    full_state: req.full_state,
                };
                let section = joined_room(
                    svc,
                    &parsed,
                    &room.room_version,
                    user_id,
                    viewer,
                    window,
                    &room_filter,
                )
                .await?;
                let ephemeral_filter = room_filter.ephemeral.clone().unwrap_or_default();
                let mut ephemeral = ephemeral_events(svc, &room_id, user_id, since, now, initial).await?;
                ephemeral.retain(|e| {
                    ephemeral_filter
                        .base
                        .allows(e["type"].as_str().unwrap_or_default(), "")
                });
                if let Some(mut section) = section.or_else(|| {
                    (!account_data.is_empty() || !ephemeral.is_empty()).then(|| empty_joined(since))
                }) {
                    section["account_data"] = json!({ "events": account_data });
                    section["ephemeral"] = json!({ "events": ephemeral });
                    let (unread, threads) =
                        unread_notifications(svc, &room_id, user_id, &room_filter).await?;
                    section["unread_notifications"] = unread;
                    if let Some(threads) = threads {
                        section["unread_thread_notifications"] = threads;
                    }
                    join.insert(room_id, section);
                }
            }
            "invite" | "knock" if changed_since => {
                let key = if membership == "invite" {
                    "invite_state"
                } else {
                    "knock_state"
                };
                let state = stripped_room_state(svc, &room_id, user_id).await?;
                let section = json!({ key: { "events": state } });
                if membership == "invite" {
                    invite.insert(room_id, section)
                } else {
                    knock.insert(room_id, section)
                };
            }
            "leave" | "ban" if !forgotten.contains(&room_id) => {
                let wanted = if initial {
                    room_filter.include_leave.unwrap_or(false)
                } else {
                    changed_since
                };
                if wanted {
                    let upto = StreamToken { events: at, ..now };
                    let window = Window {
                        since,
                        upto,
                        fresh,
                        full_state: req.full_state,
                    };
                    let section = joined_room(
                        svc,
                        &parsed,
                        &room.room_version,
                        user_id,
                        viewer,
                        window,
                        &room_filter,
                    )
                    .await?
                    .unwrap_or_else(|| empty_joined(since));
                    let mut section = section;
                    if let Some(object) = section.as_object_mut() {
                        object.remove("summary");
                        object.remove("unread_notifications");
                        object.remove("ephemeral");
                    }
                    section["account_data"] =
                        json!({ "events": room_account_data.remove(&room_id).unwrap_or_default() });
                    leave.insert(room_id, section);
                }
            }
            _ => {}
        }
    }

    let presence: Vec<Value> = svc
        .store
        .presence_changes_for(user_id, since.presence, now.presence)
        .await?
        .iter()
        .filter(|p| {
            req.filter
                .presence
                .as_ref()
                .is_none_or(|f| f.allows("m.presence", &p.user_id))
        })
        .map(|p| json!({ "type": "m.presence", "sender": p.user_id, "content": presence_content(p) }))
        .collect();
    // Clients expect the push rules in an initial sync, also when the user never changed them
    // (then nothing is stored as account data).
    if initial && !global_account_data.iter().any(|e| e["type"] == "m.push_rules") {
        let user = ruma::UserId::parse(user_id).map_err(ApiError::internal)?;
        let event = crate::push::push_rules_event(svc, &user).await?;
        if account_filter.allows("m.push_rules", user_id) {
            global_account_data.push(event);
        }
    }
    let has_changes = !(join.is_empty()
        && invite.is_empty()
        && leave.is_empty()
        && knock.is_empty()
        && global_account_data.is_empty()
        && presence.is_empty());
    let response = json!({
        "next_batch": now.to_string(),
        "rooms": { "join": join, "invite": invite, "leave": leave, "knock": knock },
        "account_data": { "events": global_account_data },
        "presence": { "events": presence },
        "to_device": { "events": [] },
        "device_lists": { "changed": [], "left": [] },
        "device_one_time_keys_count": {},
    });
    Ok((response, has_changes, interest))
}

/// Notification counts since the user's read receipt (public or private, whichever is later):
/// room-wide, or — when the filter asks for `unread_thread_notifications` — the main timeline's
/// with a map per thread.
async fn unread_notifications(
    svc: &Services,
    room_id: &str,
    user_id: &str,
    room_filter: &filter::RoomFilter,
) -> ApiResult<(Value, Option<Value>)> {
    let public = svc.store.receipt_position(room_id, user_id, "m.read", "").await?;
    let private = svc
        .store
        .receipt_position(room_id, user_id, "m.read.private", "")
        .await?;
    let read = public.max(private).unwrap_or(0);
    let counts = crate::push::unread_counts(svc, user_id, room_id, read).await?;
    let threaded = room_filter
        .timeline
        .as_ref()
        .and_then(|t| t.unread_thread_notifications)
        == Some(true);
    if !threaded {
        let unread = json!({
            "notification_count": counts.total_notifications(),
            "highlight_count": counts.total_highlights(),
        });
        return Ok((unread, None));
    }
    let unread = json!({
        "notification_count": counts.notification_count,
        "highlight_count": counts.highlight_count,
    });
    let threads: Map<String, Value> = counts
        .per_thread
        .iter()
        .map(|(root, (n, h))| {
            (
                root.clone(),
                json!({ "notification_count": n, "highlight_count": h }),
            )
        })
        .collect();
    Ok((unread, Some(Value::Object(threads))))
}

/// Receipts and typing in a room since the token (all of them in an initial sync).
async fn ephemeral_events(
    svc: &Services,
    room_id: &str,
    user_id: &str,
    since: StreamToken,
    now: StreamToken,
    initial: bool,
) -> ApiResult<Vec<Value>> {
    let mut events = Vec::new();
    let receipts = svc
        .store
        .receipts_since(room_id, since.receipts, now.receipts)
        .await?;
    if let Some(event) = receipt_event(&receipts, user_id) {
        events.push(event);
    }
    let typing_since = if initial { i64::MIN } else { since.typing };
    if let Some(users) = svc.typing.typing_since(room_id, typing_since)
        && (!initial || !users.is_empty())
    {
        events.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
    }
    Ok(events)
}

fn empty_joined(since: StreamToken) -> Value {
    json!({
        "timeline": { "events": [], "limited": false, "prev_batch": since.to_string() },
        "state": { "events": [] },
        "ephemeral": { "events": [] },
    })
}

/// Which part of a room's history a sync response covers.
#[derive(Clone, Copy)]
struct Window {
    since: StreamToken,
    upto: StreamToken,
    /// The client has not seen this room as joined: its timeline is not bounded by `since`,
    /// and its state comes in full.
    fresh: bool,
    full_state: bool,
}

/// A room's section of the response, or `None` when nothing in it changed.
async fn joined_room(
    svc: &Services,
    room_id: &RoomId,
    version: &str,
    user_id: &str,
    viewer: Viewer<'_>,
    window: Window,
    room_filter: &filter::RoomFilter,
) -> ApiResult<Option<Value>> {
    let Window {
        since,
        upto,
        fresh,
        full_state,
    } = window;
    let full = fresh || full_state;
    let timeline_filter = room_filter.timeline.clone().unwrap_or_default();
    let state_filter = room_filter.state.clone().unwrap_or_default();
    let limit = timeline_filter
        .base
        .limit
        .map(|l| l as usize)
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(1, 1000);
    let after = if fresh { 0 } else { since.events };
    let (timeline, limited) =
        latest_events(svc, room_id.as_str(), after, upto.events, limit, &timeline_filter).await?;
    if !full && timeline.is_empty() {
        return Ok(None);
    }
    let start = timeline
        .first()
        .map(|e| e.stream_ordering)
        .unwrap_or(upto.events + 1);

    let state_at_start = state_at(svc, room_id.as_str(), start - 1).await?;
    let state_ids: Vec<String> = if full {
        state_at_start.values().cloned().collect()
    } else if limited {
        let state_at_since = state_at(svc, room_id.as_str(), since.events).await?;
        state_at_start
            .iter()
            .filter(|(k, v)| state_at_since.get(*k) != Some(*v))
            .map(|(_, v)| v.clone())
            .collect()
    } else {
        Vec::new()
    };
    let mut state_rows = svc.store.events(&state_ids).await?;
    state_rows.retain(|row| state_filter.allows_event(row));
    if state_filter.lazy_load_members == Some(true) {
        let senders: BTreeSet<&str> = timeline
            .iter()
            .map(|e| e.sender.as_str())
            .chain([user_id])
            .collect();
        state_rows.retain(|row| {
            row.event_type != "m.room.member" || row.state_key.as_deref().is_some_and(|k| senders.contains(k))
        });
    }
    state_rows.sort_by_key(|r| r.stream_ordering);

    let prev_batch = since.at_events(start - 1).to_string();
    let joined = svc.store.members_with(room_id.as_str(), "join").await?;
    let invited = svc.store.members_with(room_id.as_str(), "invite").await?;
    let heroes: Vec<&String> = joined
        .iter()
        .chain(invited.iter())
        .filter(|u| *u != user_id)
        .take(5)
        .collect();
    Ok(Some(json!({
        "timeline": {
            "events": without_room_id(client_events(svc, &timeline, version, Some(viewer)).await?),
            "limited": limited,
            "prev_batch": prev_batch,
        },
        "state": { "events": without_room_id(client_events(svc, &state_rows, version, Some(viewer)).await?) },
        "summary": {
            "m.heroes": heroes,
            "m.joined_member_count": joined.len(),
            "m.invited_member_count": invited.len(),
        },
        "ephemeral": { "events": [] },
    })))
}

/// Events inside a room's section of `/sync` are in the ClientEventWithoutRoomID format.
fn without_room_id(mut events: Vec<Value>) -> Vec<Value> {
    for event in &mut events {
        if let Some(object) = event.as_object_mut() {
            object.remove("room_id");
        }
    }
    events
}

/// Room state after every event up to stream position `at`.
async fn state_at(svc: &Services, room_id: &str, at: i64) -> ApiResult<StateMap> {
    Ok(match svc.store.state_group_before(room_id, at + 1).await? {
        Some(group) => svc.store.state_of_group(group).await?,
        None => StateMap::new(),
    })
}

/// The newest `limit` events in `(after, upto]` that pass the filter, oldest first, and whether
/// more matching events were left out.
pub async fn latest_events(
    svc: &Services,
    room_id: &str,
    after: i64,
    upto: i64,
    limit: usize,
    filter: &RoomEventFilter,
) -> ApiResult<(Vec<EventRow>, bool)> {
    let mut picked = Vec::new();
    let mut cursor = upto;
    let page = (limit as i64 + 1).max(50);
    loop {
        let rows = svc
            .store
            .room_events(room_id, after, cursor, page, Direction::Backwards)
            .await?;
        let exhausted = (rows.len() as i64) < page;
        for row in rows {
            cursor = row.stream_ordering - 1;
            if filter.allows_event(&row) {
                if picked.len() == limit {
                    picked.reverse();
                    return Ok((picked, true));
                }
                picked.push(row);
            }
        }
        if exhausted {
            picked.reverse();
            return Ok((picked, false));
        }
    }
}

async fn stripped_room_state(svc: &Services, room_id: &str, user_id: &str) -> ApiResult<Vec<Value>> {
    let state = svc.store.current_state(room_id).await?;
    let ids: Vec<String> = state
        .iter()
        .filter(|((t, k), _)| {
            INVITE_STATE_TYPES.contains(&t.as_str()) || (t == "m.room.member" && k == user_id)
        })
        .map(|(_, id)| id.clone())
        .collect();
    let mut rows = svc.store.events(&ids).await?;
    rows.sort_by_key(|r| r.stream_ordering);
    Ok(rows.iter().map(stripped_state).collect())
}
