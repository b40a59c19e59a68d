//! Relations between events (client-server API §"Forming relationships between events"):
//! what the server refuses when a relation is sent, the bundled aggregations (`unsigned.
//! m.relations`) of the events it serves, `/relations` and `/threads`.
//!
//! - Refused when sent: a second identical annotation (same sender, target, event type and key,
//!   the first not redacted) — 400 `M_DUPLICATE_ANNOTATION`; a thread whose root has a
//!   relation itself (`m.relates_to` with a `rel_type`: a thread reply, an edit, a reaction…) —
//!   400 `M_UNKNOWN`, as the spec says. Checked under the append lock (`rooms::timeline`), so
//!   two identical reactions sent at once cannot both pass.
//! - Ignored (stored, but neither aggregated nor listed): relations to an event of another room
//!   (every query is confined to the parent's room), redacted children (a redaction strips
//!   `m.relates_to`), invalid edits (another sender, another type, a state event, an edit of an
//!   edit, no `m.new_content` in a cleartext edit).
//! - Bundled: the most recent valid `m.replace` (by `origin_server_ts`, then event ID; none for
//!   a redacted original), `m.thread` (`latest_event` with its own bundle, `count`,
//!   `current_user_participated`) and `m.reference` (`chunk` of event IDs). Annotations are not
//!   bundled. Only children the viewer may see (`RoomAccess`) count. State events get none.
//!   One query for the children of a whole page, one for the threads' latest events.

use std::{
    borrow::Borrow,
    collections::{BTreeSet, HashMap, HashSet},
};

use ruma::{EventId, RoomId, UserId, room_version_rules::RoomVersionRules};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    rooms::{
        self,
        access::RoomAccess,
        client_event::{Related, Viewer, format_event},
        history::MAX_SCANNED,
        timeline::EventSpec,
    },
    services::Services,
    store::{Direction, EventRow, RelationPage},
    stream::StreamToken,
};

/// Most children read to build the bundles of one page (thread counts are approximate past it;
/// the spec calls them approximate anyway).
const MAX_AGGREGATED: i64 = 10_000;

/// How deep `/relations?recurse=true` follows relations (as Synapse does).
pub const RECURSION_DEPTH: u64 = 3;

/// Most events whose children a recursive `/relations` looks at.
const MAX_RECURSION_PARENTS: i64 = 500;

/// Most events one `/relations` or `/threads` page holds.
const MAX_LIMIT: u64 = 1000;
const DEFAULT_LIMIT: u64 = 50;

/// An annotation: (target, sender, event type, key).
pub type AnnotationKey = (String, String, String, String);

/// The relation of an event's content, if any: (`rel_type`, target).
fn relation_of(content: &Value) -> Option<(&str, &str)> {
    let relation = content.get("m.relates_to")?;
    Some((
        relation.get("rel_type")?.as_str()?,
        relation.get("event_id")?.as_str()?,
    ))
}

/// Checks the relation a new local event carries, under the append lock. `pending` holds the
/// annotations built but not yet stored (same batch). Returns the annotation this event makes,
/// for the caller to add to `pending`.
pub async fn check_new_relation(
    svc: &Services,
    room_id: &str,
    sender: &UserId,
    spec: &EventSpec,
    pending: &HashSet<AnnotationKey>,
) -> Result<Option<AnnotationKey>> {
    let Some((rel_type, target)) = relation_of(&spec.content) else {
        return Ok(None);
    };
    match rel_type {
        "m.annotation" if spec.state_key.is_none() => {
            let Some(key) = spec.content["m.relates_to"].get("key").and_then(Value::as_str) else {
                return Ok(None);
            };
            let annotation = (
                target.to_owned(),
                sender.to_string(),
                spec.event_type.clone(),
                key.to_owned(),
            );
            if pending.contains(&annotation)
                || svc
                    .store
                    .annotation_exists(room_id, target, sender.as_str(), &spec.event_type, key)
                    .await?
            {
                return Err(Error::DuplicateAnnotation(
                    "You already sent this annotation to this event".into(),
                ));
            }
            Ok(Some(annotation))
        }
        "m.thread" => {
            if let Some(root) = svc.store.event(target).await?
                && root.room_id == room_id
                && root.rel_type.is_some()
            {
                return Err(Error::unknown(
                    "Cannot start a thread from an event with a relation",
                ));
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Whether `edit` is a valid replacement of `original` (spec §"Validity of replacement
/// events"); both are in the same room (the queries see to that).
pub(crate) fn valid_edit(original: &EventRow, edit: &EventRow) -> bool {
    if edit.sender != original.sender
        || edit.event_type != original.event_type
        || original.state_key.is_some()
        || edit.state_key.is_some()
        || original.rel_type.as_deref() == Some("m.replace")
    {
        return false;
    }
    // An encrypted edit carries `m.new_content` inside its ciphertext.
    edit.event_type == "m.room.encrypted"
        || serde_json::from_str::<Value>(&edit.json)
            .ok()
            .and_then(|pdu| pdu.get("content")?.get("m.new_content").cloned())
            .is_some_and(|c| c.is_object())
}

/// The room a bundle is computed in: who looks, with which access, under which rules.
pub struct BundleRoom<'a> {
    pub access: &'a RoomAccess,
    pub rules: &'a RoomVersionRules,
}

/// The bundled aggregations (`m.relations` values) of `rows`, by event ID, for `viewer`; rows
/// of several rooms may be mixed (`/sync`), each room's in `rooms`.
pub async fn bundles(
    svc: &Services,
    viewer: Viewer<'_>,
    rooms: &HashMap<String, BundleRoom<'_>>,
    rows: &[&EventRow],
) -> Result<HashMap<String, Value>> {
    let mut out = bundles_one_level(svc, viewer, rooms, rows).await?;
    // The threads' latest events, themselves formatted with their bundles.
    let latest_ids: Vec<String> = out
        .values()
        .filter_map(|b| b["m.thread"]["latest_event"].as_str().map(ToOwned::to_owned))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if latest_ids.is_empty() {
        return Ok(out);
    }
    let latest_rows = svc.store.events(&latest_ids).await?;
    let latest_refs: Vec<&EventRow> = latest_rows.iter().collect();
    let latest_bundles = bundles_one_level(svc, viewer, rooms, &latest_refs).await?;
    let related = Related::fetch(svc, Related::ids_for(latest_rows.iter())).await?;
    let mut formatted: HashMap<String, Value> = HashMap::new();
    for row in &latest_rows {
        let Some(room) = rooms.get(&row.room_id) else {
            continue;
        };
        let mut event = format_event(row, room.rules, &related, Some(viewer))?;
        if let Some(bundle) = latest_bundles.get(&row.event_id) {
            attach(&mut event, bundle.clone());
        }
        formatted.insert(row.event_id.clone(), event);
    }
    for bundle in out.values_mut() {
        let Some(thread) = bundle.get_mut("m.thread") else {
            continue;
        };
        let id = thread["latest_event"].as_str().unwrap_or_default().to_owned();
        match formatted.get(&id) {
            Some(event) => thread["latest_event"] = event.clone(),
            None => {
                if let Some(object) = thread.as_object_mut() {
                    object.remove("latest_event");
                }
            }
        }
    }
    Ok(out)
}

/// The bundles of `rows`, with each thread's `latest_event` as its event ID only.
async fn bundles_one_level(
    svc: &Services,
    viewer: Viewer<'_>,
    rooms: &HashMap<String, BundleRoom<'_>>,
    rows: &[&EventRow],
) -> Result<HashMap<String, Value>> {
    let recent = &svc.sync_engine.recent;
    let parents: Vec<&EventRow> = rows
        .iter()
        .copied()
        .filter(|row| row.state_key.is_none() && rooms.contains_key(&row.room_id))
        // A recent event known to have no children has nothing to bundle (sync/recent.rs).
        .filter(|row| recent.get(row).is_none_or(|cached| !cached.childless()))
        .collect();
    let ids: Vec<String> = parents
        .iter()
        .map(|r| r.event_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let children = svc.store.aggregation_children(&ids, MAX_AGGREGATED).await?;
    let mut by_parent: HashMap<&str, Vec<&EventRow>> = HashMap::new();
    for child in &children {
        let (Some(parent), Some(room)) = (child.relates_to.as_deref(), rooms.get(&child.room_id)) else {
            continue;
        };
        if room.access.can_see(child) {
            by_parent.entry(parent).or_default().push(child);
        }
    }
    let mut out = HashMap::new();
    for parent in parents {
        let Some(children) = by_parent.get(parent.event_id.as_str()) else {
            continue;
        };
        // Children are newest first; a child of another room never matches.
        let children: Vec<&EventRow> = children
            .iter()
            .copied()
            .filter(|c| c.room_id == parent.room_id)
            .collect();
        let mut relations = Map::new();
        if parent.redacted_by.is_none()
            && let Some(edit) = children
                .iter()
                .filter(|c| c.rel_type.as_deref() == Some("m.replace") && valid_edit(parent, c))
                .max_by(|a, b| (a.origin_server_ts, &a.event_id).cmp(&(b.origin_server_ts, &b.event_id)))
        {
            let room = &rooms[&parent.room_id];
            let event = format_event(edit, room.rules, &Related::default(), Some(viewer))?;
            relations.insert("m.replace".into(), event);
        }
        let thread: Vec<&&EventRow> = children
            .iter()
            .filter(|c| c.rel_type.as_deref() == Some("m.thread"))
            .collect();
        if let Some(latest) = thread.first() {
            let participated =
                parent.sender == viewer.user_id || thread.iter().any(|c| c.sender == viewer.user_id);
            relations.insert(
                "m.thread".into(),
                json!({
                    "latest_event": latest.event_id,
                    "count": thread.len(),
                    "current_user_participated": participated,
                }),
            );
        }
        let references: Vec<Value> = children
            .iter()
            .rev()
            .filter(|c| c.rel_type.as_deref() == Some("m.reference"))
            .map(|c| json!({ "event_id": c.event_id }))
            .collect();
        if !references.is_empty() {
            relations.insert("m.reference".into(), json!({ "chunk": references }));
        }
        if !relations.is_empty() {
            out.insert(parent.event_id.clone(), Value::Object(relations));
        }
    }
    Ok(out)
}

/// Puts a bundle into a formatted event's `unsigned.m.relations`.
pub fn attach(event: &mut Value, bundle: Value) {
    if let Some(object) = event.as_object_mut() {
        let unsigned = object.entry("unsigned").or_insert_with(|| json!({}));
        if let Some(unsigned) = unsigned.as_object_mut() {
            unsigned.insert("m.relations".into(), bundle);
        }
    }
}

/// Formats events of one room for `viewer`, each with its bundled aggregations.
pub async fn format_with_bundles(
    svc: &Services,
    viewer: Viewer<'_>,
    access: &RoomAccess,
    version: &str,
    rows: &[impl Borrow<EventRow>],
) -> Result<Vec<Value>> {
    let rows: Vec<&EventRow> = rows.iter().map(Borrow::borrow).collect();
    let rules = rooms::rules_of(version)?;
    let related = Related::fetch(svc, Related::ids_for(rows.iter().copied())).await?;
    let mut formatted = rows
        .iter()
        .map(|row| format_event(row, &rules, &related, Some(viewer)))
        .collect::<Result<Vec<_>>>()?;
    let Some(room_id) = rows.first().map(|r| r.room_id.clone()) else {
        return Ok(formatted);
    };
    let rooms = HashMap::from([(
        room_id,
        BundleRoom {
            access,
            rules: &rules,
        },
    )]);
    let mut bundles = bundles(svc, viewer, &rooms, &rows).await?;
    for (row, event) in rows.iter().zip(formatted.iter_mut()) {
        if let Some(bundle) = bundles.remove(&row.event_id) {
            attach(event, bundle);
        }
    }
    Ok(formatted)
}

/// A `/relations` request, parsed.
pub struct RelationsRequest {
    pub rel_type: Option<String>,
    pub event_type: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// As the client sent it (`dir`).
    pub dir: ruma::api::Direction,
    pub limit: Option<u64>,
    pub recurse: bool,
}

#[derive(Serialize)]
pub struct RelationsResponse {
    pub chunk: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_batch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recursion_depth: Option<u64>,
}

/// `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`: the children of an
/// event the viewer may see (404 otherwise), those the viewer may see, in stream order, paged
/// by stream tokens (also those of `/sync` and `/messages`).
pub async fn relations(
    svc: &Services,
    viewer: Viewer<'_>,
    room_id: &RoomId,
    event_id: &EventId,
    req: RelationsRequest,
) -> Result<RelationsResponse> {
    let room = rooms::room(svc, room_id).await?;
    let access = RoomAccess::load(svc, room_id, viewer.user_id).await?;
    access.reading()?;
    svc.store
        .event(event_id.as_str())
        .await?
        .filter(|e| e.room_id == room_id.as_str() && access.can_see(e))
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as usize;
    // `/messages` tokens are accepted too (the spec allows them): their stream positions.
    let from = req
        .from
        .as_deref()
        .map(crate::rooms::topo::stream_position)
        .transpose()?;
    let to = req
        .to
        .as_deref()
        .map(crate::rooms::topo::stream_position)
        .transpose()?;
    let now = StreamToken::current(svc).await?;
    let upper = access.events_until().min(now.events);
    let direction = match req.dir {
        ruma::api::Direction::Backward => Direction::Backwards,
        ruma::api::Direction::Forward => Direction::Forwards,
    };
    let (mut after, mut upto) = match direction {
        Direction::Backwards => (to.unwrap_or(0), from.unwrap_or(upper).min(upper)),
        Direction::Forwards => (from.unwrap_or(0), to.unwrap_or(upper).min(upper)),
    };

    let mut parents = vec![event_id.to_string()];
    if req.recurse {
        let mut level = parents.clone();
        for _ in 1..RECURSION_DEPTH {
            let room_limit = MAX_RECURSION_PARENTS - parents.len() as i64;
            if level.is_empty() || room_limit <= 0 {
                break;
            }
            level = svc.store.child_ids(room_id.as_str(), &level, room_limit).await?;
            parents.extend(level.iter().cloned());
        }
    }

    let mut kept: Vec<EventRow> = Vec::new();
    let mut examined = 0;
    let mut more = false;
    while after < upto {
        let page_size = (MAX_SCANNED - examined).min(200);
        if page_size == 0 {
            more = true;
            break;
        }
        let page = RelationPage {
            room_id: room_id.as_str(),
            parents: &parents,
            rel_type: req.rel_type.as_deref(),
            event_type: req.event_type.as_deref(),
            after,
            upto,
            limit: page_size as i64,
            direction,
        };
        let rows = svc.store.relation_children(&page).await?;
        let exhausted = rows.len() < page_size;
        for row in rows {
            if kept.len() == limit {
                more = true;
                break;
            }
            examined += 1;
            match direction {
                Direction::Backwards => upto = row.stream_ordering - 1,
                Direction::Forwards => after = row.stream_ordering,
            }
            if access.can_see(&row) {
                kept.push(row);
            }
        }
        if more || exhausted {
            break;
        }
    }
    let next_batch = more.then(|| {
        let at = match direction {
            Direction::Backwards => upto,
            Direction::Forwards => after,
        };
        now.at_events(at).to_string()
    });
    let chunk = format_with_bundles(svc, viewer, &access, &room.row.room_version, &kept).await?;
    Ok(RelationsResponse {
        chunk,
        next_batch,
        prev_batch: req.from,
        recursion_depth: req.recurse.then_some(RECURSION_DEPTH),
    })
}

#[derive(Serialize)]
pub struct ThreadsResponse {
    pub chunk: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
}

/// `GET /rooms/{roomId}/threads`: the room's thread roots the viewer may see, by latest reply,
/// newest first (`participated`: only threads the viewer started or replied in). The token is
/// the position of the last root's latest reply.
pub async fn threads(
    svc: &Services,
    viewer: Viewer<'_>,
    room_id: &RoomId,
    participated: bool,
    from: Option<&str>,
    limit: Option<u64>,
) -> Result<ThreadsResponse> {
    let room = rooms::room(svc, room_id).await?;
    let access = RoomAccess::load(svc, room_id, viewer.user_id).await?;
    access.reading()?;
    let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as usize;
    let now = StreamToken::current(svc).await?;
    // A former member's threads end, and are ordered, where their view of the room ends.
    let cap = access.events_until().min(now.events);
    let mut upto = match from {
        Some(token) => StreamToken::parse(token)?.events,
        None => now.events,
    }
    .min(cap);
    let participant = participated.then_some(viewer.user_id);
    let mut kept: Vec<EventRow> = Vec::new();
    let mut examined = 0;
    let mut more = false;
    loop {
        let want = (limit - kept.len() + 1).min(MAX_SCANNED - examined);
        if want == 0 {
            more = true;
            break;
        }
        let roots = svc
            .store
            .thread_roots(room_id.as_str(), (cap, upto), want as i64, participant)
            .await?;
        let exhausted = roots.len() < want;
        let ids: Vec<String> = roots.iter().map(|r| r.root.clone()).collect();
        let mut rows: HashMap<String, EventRow> = svc
            .store
            .events(&ids)
            .await?
            .into_iter()
            .map(|r| (r.event_id.clone(), r))
            .collect();
        for root in roots {
            if kept.len() == limit {
                more = true;
                break;
            }
            examined += 1;
            upto = root.latest - 1;
            if let Some(row) = rows.remove(&root.root)
                && access.can_see(&row)
            {
                kept.push(row);
            }
        }
        if more || exhausted {
            break;
        }
    }
    let chunk = format_with_bundles(svc, viewer, &access, &room.row.room_version, &kept).await?;
    Ok(ThreadsResponse {
        chunk,
        next_batch: more.then(|| now.at_events(upto).to_string()),
    })
}
