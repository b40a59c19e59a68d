//! The `join` and `leave` sections of `/sync`, built for all the rooms of a sync together. The
//! timeline is read per room; everything else (state, members, receipts, unread counts, the
//! events that formatting needs) with one query per kind for all the rooms: on PostgreSQL a
//! dozen statements per room made an initial sync of 20 rooms take seconds.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use serde_json::{Value, json};

use super::{
    DEFAULT_TIMELINE_LIMIT, Window, empty_section,
    response::{Events, JoinedRoom, LeftRoom, RoomSection, Summary, SyncEvent, Timeline, UnreadCounts},
    stats::bump,
};
use crate::{
    error::{Error, Result},
    filter::RoomFilter,
    rooms::{
        access::RoomAccess,
        client_event::{Related, Viewer},
        history,
        receipts::receipt_event,
        relations::{self, BundleRoom},
        rules_of,
    },
    services::Services,
    store::{Direction, EventRow, StateMap, SyncRoom},
    stream::StreamToken,
    util::FastMap,
};

/// A room whose section the sync may include.
pub(super) struct Wanted {
    pub room_id: String,
    /// In `join`; otherwise in `leave` (the user left or was banned).
    pub joined: bool,
    pub window: Window,
}

/// What the sync asks about every room.
pub(super) struct Ask<'a> {
    pub user_id: &'a str,
    pub viewer: Viewer<'a>,
    pub room_filter: &'a RoomFilter,
    pub since: StreamToken,
    pub now: StreamToken,
    pub initial: bool,
    /// A woken computation of what moved: a room whose only news is typing gets no counts
    /// (they cannot have changed).
    pub woken: bool,
    /// The viewer's access to rooms as read at an events position: reused for a room whose
    /// state has not moved since (sync/engine.rs), instead of read again.
    pub known_access: Option<(&'a HashMap<String, Arc<RoomAccess>>, i64)>,
}

/// A room that changed: its timeline and the state the client is to be given.
struct Plan {
    version: String,
    /// Shared with the sync engine's rings when read from them.
    timeline: Vec<Arc<EventRow>>,
    limited: bool,
    /// Stream position of the first timeline event (one past the window when it is empty).
    start: i64,
    /// Late events (in the DAG, never delivered as new) lay in the window: the timeline is
    /// `limited`, and the state at its start is read from its first event (see `add_state`).
    late: bool,
    state: Vec<EventRow>,
    /// The viewer may read none of the room's state (a rejected invite, a withdrawn knock).
    stateless: bool,
    /// The viewer's access, when the timeline was read through it (for bundled aggregations).
    access: Option<Arc<RoomAccess>>,
}

/// Builds the sections of the wanted rooms: `(join, leave)`. Takes the rooms' account data
/// out of `room_account_data`.
pub(super) async fn sections(
    svc: &Services,
    ask: &Ask<'_>,
    wanted: &[Wanted],
    room_account_data: &mut HashMap<String, Vec<Value>>,
) -> Result<(BTreeMap<String, JoinedRoom>, BTreeMap<String, LeftRoom>)> {
    let mut plans = plan_timelines(svc, ask, wanted).await?;
    add_state(svc, ask, wanted, &mut plans).await?;

    let related_ids = Related::ids_for(
        plans
            .iter()
            .flatten()
            .flat_map(|p| p.timeline.iter().map(|row| &**row).chain(p.state.iter())),
    );
    let related = Related::fetch(svc, related_ids).await?;
    let bundles = timeline_bundles(svc, ask, wanted, &plans).await?;
    let joined_ids: Vec<String> = wanted
        .iter()
        .filter(|w| w.joined)
        .map(|w| w.room_id.clone())
        .collect();
    // The summary only where membership or naming state may have changed since the token:
    // otherwise the spec lets it be left out, and it costs a query.
    let summarised = |w: &Wanted, plan: &Plan| {
        w.window.fresh
            || w.window.full_state
            || (plan.limited
                && svc
                    .sync_engine
                    .state_may_have_moved(&w.room_id, w.window.since.events))
            || !plan.state.is_empty()
            || plan.timeline.iter().any(|row| row.state_key.is_some())
    };
    let with_plan: Vec<String> = wanted
        .iter()
        .zip(&plans)
        .filter(|(w, p)| w.joined && p.as_ref().is_some_and(|p| summarised(w, p)))
        .map(|(w, _)| w.room_id.clone())
        .collect();
    let members = if with_plan.is_empty() {
        HashMap::new()
    } else {
        svc.store.joined_and_invited(&with_plan).await?
    };
    // Receipts are read for the rooms the engine cannot say are without new ones.
    let receipt_rooms: Vec<String> = joined_ids
        .into_iter()
        .filter(|room_id| {
            ask.initial
                || svc
                    .sync_engine
                    .receipts_moved(room_id, ask.since.receipts, ask.now.receipts)
                    != Some(false)
        })
        .collect();
    let mut receipts = if receipt_rooms.is_empty() {
        HashMap::new()
    } else {
        svc.store
            .receipts_in_rooms(&receipt_rooms, ask.since.receipts, ask.now.receipts)
            .await?
    };
    let mut typing_only = Vec::new();

    let ephemeral_filter = ask.room_filter.ephemeral.clone().unwrap_or_default();
    let mut join = BTreeMap::new();
    let mut leave = BTreeMap::new();
    for (w, plan) in wanted.iter().zip(plans) {
        let account_data = room_account_data.remove(&w.room_id).unwrap_or_default();
        let section = match plan {
            Some(plan) => {
                let no_members = (Vec::new(), Vec::new());
                let members = summarised(w, &plan).then(|| members.get(&w.room_id).unwrap_or(&no_members));
                Some(format_section(
                    svc,
                    ask,
                    w.window.since,
                    &plan,
                    (&related, &bundles),
                    members,
                )?)
            }
            None => None,
        };
        if !w.joined {
            let section = section.unwrap_or_else(|| empty_section(w.window.since));
            leave.insert(
                w.room_id.clone(),
                LeftRoom {
                    timeline: section.timeline,
                    state: section.state,
                    account_data: Events::new(account_data),
                },
            );
            continue;
        }
        let room_receipts = receipts.remove(&w.room_id).unwrap_or_default();
        if ask.woken && section.is_none() && account_data.is_empty() && room_receipts.is_empty() {
            typing_only.push(w.room_id.clone());
        }
        let mut ephemeral = ephemeral_events(svc, ask, &w.room_id, &room_receipts);
        ephemeral.retain(|e| {
            ephemeral_filter
                .base
                .allows(e["type"].as_str().unwrap_or_default(), "")
        });
        if let Some(section) = section
            .or_else(|| (!account_data.is_empty() || !ephemeral.is_empty()).then(|| empty_section(ask.since)))
        {
            join.insert(
                w.room_id.clone(),
                JoinedRoom {
                    timeline: section.timeline,
                    state: section.state,
                    summary: section.summary,
                    ephemeral: Events::new(ephemeral),
                    account_data: Events::new(account_data),
                    unread_notifications: None,
                    unread_thread_notifications: None,
                },
            );
        }
    }
    add_unread_notifications(svc, ask, &mut join, &typing_only).await?;
    Ok((join, leave))
}

/// Each wanted room's timeline, or `None` when the room has nothing to say.
async fn plan_timelines(svc: &Services, ask: &Ask<'_>, wanted: &[Wanted]) -> Result<Vec<Option<Plan>>> {
    let engine = &svc.sync_engine;
    let full = |w: &Wanted| w.window.fresh || w.window.full_state;
    // Rooms the engine knows to be quiet since the token cost nothing; the others' versions come
    // from memory when it has them, and what memory cannot tell is asked in one query.
    let moved: Vec<Option<bool>> = wanted
        .iter()
        .map(|w| engine.moved(&w.room_id, w.window.since.events, w.window.upto.events))
        .collect();
    let quiet: Vec<bool> = wanted
        .iter()
        .zip(&moved)
        .map(|(w, moved)| !full(w) && *moved == Some(false))
        .collect();
    // Room IDs are hashed a few times per room per step: the fast hasher (util::FastMap).
    let mut rooms: FastMap<String, SyncRoom> = FastMap::default();
    let mut ask_db = Vec::new();
    for ((w, quiet), moved) in wanted.iter().zip(&quiet).zip(&moved) {
        if *quiet {
            continue;
        }
        match (engine.room_version(&w.room_id), moved) {
            (Some(version), moved) if *moved == Some(true) || full(w) => {
                rooms.insert(
                    w.room_id.clone(),
                    SyncRoom {
                        room_version: version.to_string(),
                        latest: Some(i64::MAX),
                    },
                );
            }
            _ => ask_db.push(w.room_id.clone()),
        }
    }
    if !ask_db.is_empty() {
        for (room_id, room) in svc.store.sync_rooms(&ask_db, ask.now.events).await? {
            engine.remember_version(&room_id, &room.room_version);
            rooms.insert(room_id, room);
        }
    }
    // Who may see what is read only for the rooms with something to say: an incremental sync
    // in which little changed stays as cheap as it was.
    let active: Vec<String> = wanted
        .iter()
        .filter(|w| {
            full(w)
                || rooms
                    .get(&w.room_id)
                    .and_then(|r| r.latest)
                    .is_some_and(|latest| latest > w.window.since.events)
        })
        .map(|w| w.room_id.clone())
        .collect();
    let mut access = FastMap::default();
    let mut to_load = Vec::new();
    for room_id in active {
        let known = ask.known_access.and_then(|(known, at)| {
            known
                .get(&room_id)
                .filter(|_| !engine.state_may_have_moved(&room_id, at))
        });
        match known {
            Some(known) => {
                access.insert(room_id, known.clone());
            }
            None => to_load.push(room_id),
        }
    }
    if !to_load.is_empty() {
        access.extend(
            RoomAccess::load_many(svc, &to_load, Some(ask.user_id))
                .await?
                .into_iter()
                .map(|(room, loaded)| (room, Arc::new(loaded))),
        );
    }
    let timeline_filter = ask.room_filter.timeline.clone().unwrap_or_default();
    let limit = timeline_filter
        .base
        .limit
        .map(|l| l as usize)
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(1, 1000);
    let mut plans = Vec::with_capacity(wanted.len());
    for (w, quiet) in wanted.iter().zip(quiet) {
        if quiet {
            bump(&engine.stats.rooms_skipped);
            plans.push(None);
            continue;
        }
        let room = rooms
            .get(&w.room_id)
            .ok_or_else(|| Error::internal("room missing"))?;
        let Window {
            since,
            upto,
            fresh,
            full_state,
        } = w.window;
        let full = fresh || full_state;
        // Nothing in the room after `since`: its timeline would be empty, without a query.
        if !full && room.latest.is_none_or(|latest| latest <= since.events) {
            plans.push(None);
            continue;
        }
        let after = if fresh { 0 } else { since.events };
        let access = access
            .get(&w.room_id)
            .ok_or_else(|| Error::internal("access missing"))?;
        if !w.joined && access.reading().is_err() {
            // Never joined: the room moves to `leave` with the viewer's own membership event
            // alone (as Synapse does, so a rejected invite disappears), and no state.
            let own = svc
                .store
                .room_events(&w.room_id, upto.events - 1, upto.events, 1, Direction::Forwards)
                .await?
                .into_iter()
                .map(Arc::new)
                .collect();
            plans.push(Some(Plan {
                version: room.room_version.clone(),
                start: upto.events,
                timeline: own,
                limited: false,
                late: false,
                state: Vec::new(),
                stateless: true,
                access: None,
            }));
            continue;
        }
        bump(&engine.stats.rooms_scanned);
        let scanned = history::scan(
            svc,
            &w.room_id,
            access,
            (after, upto.events),
            Direction::Backwards,
            limit,
            &timeline_filter,
        )
        .await?;
        // Late events are left out of the timeline, which is then `limited`: its `prev_batch`
        // leads `/messages` to them in their topological places (rooms::topo).
        let (mut timeline, limited) = (scanned.rows, scanned.more || scanned.late);
        timeline.reverse();
        if !full && timeline.is_empty() && !limited {
            plans.push(None);
            continue;
        }
        // A cut timeline continues (`prev_batch`) where the scan stopped.
        let start = match timeline.first() {
            _ if scanned.more => scanned.next + 1,
            Some(first) => first.stream_ordering,
            None => upto.events + 1,
        };
        plans.push(Some(Plan {
            version: room.room_version.clone(),
            timeline,
            limited,
            late: scanned.late,
            start,
            state: Vec::new(),
            stateless: false,
            access: Some(access.clone()),
        }));
    }
    Ok(plans)
}

/// Fills in each plan's state: all of it at the start of the timeline for a room new to the
/// client (or a `full_state` sync), else what changed since the token when the timeline was
/// cut; state groups and state events read for all rooms at once.
async fn add_state(
    svc: &Services,
    ask: &Ask<'_>,
    wanted: &[Wanted],
    plans: &mut [Option<Plan>],
) -> Result<()> {
    // (room, position) whose state is needed: the state before `start`, and at `since`. A room
    // whose timeline is neither new to the client nor cut needs none: its timeline holds every
    // state change since the token, so its state section is empty.
    // A cut timeline needs the state delta only if the room's state may have moved since the
    // token (the engine knows when it did not).
    let engine = &svc.sync_engine;
    let needs_state = |w: &Wanted, plan: &Option<Plan>| {
        plan.as_ref().is_some_and(|p| {
            !p.stateless
                && (w.window.fresh
                    || w.window.full_state
                    || (p.limited && engine.state_may_have_moved(&w.room_id, w.window.since.events)))
        })
    };
    let mut points: Vec<(String, i64)> = Vec::new();
    // Points whose group is known without a query: after late events, the state before the
    // timeline is read from its first event's group (which resolved the late events' state
    // in; the position before it may be a late event's), that event's own change undone.
    let mut known: Vec<(usize, i64)> = Vec::new();
    for (w, plan) in wanted.iter().zip(plans.iter()) {
        if let Some(plan) = plan.as_ref().filter(|_| needs_state(w, plan)) {
            if plan.late
                && let Some(first) = plan.timeline.first()
            {
                known.push((points.len(), first.state_group));
            }
            points.push((w.room_id.clone(), plan.start));
            if !(w.window.fresh || w.window.full_state) {
                points.push((w.room_id.clone(), w.window.since.events + 1));
            }
        }
    }
    if points.is_empty() {
        return Ok(());
    }
    let mut groups = svc.store.state_groups_before(&points).await?;
    for (i, group) in known {
        groups[i] = Some(group);
    }
    let distinct: Vec<i64> = groups
        .iter()
        .flatten()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let states = svc.store.state_of_groups(&distinct).await?;
    let empty = StateMap::new();
    let mut state_of = groups
        .iter()
        .map(|g| g.and_then(|g| states.get(&g)).unwrap_or(&empty));

    let mut ids_per_room: Vec<Vec<String>> = Vec::new();
    for (w, plan) in wanted.iter().zip(plans.iter()) {
        if !needs_state(w, plan) {
            ids_per_room.push(Vec::new());
            continue;
        }
        let mut state_at_start = state_of.next().unwrap_or(&empty);
        // Read after the first timeline event (late events came before it): without its own
        // change, when it is a state event.
        let undone;
        if let Some(first) = plan.as_ref().filter(|p| p.late).and_then(|p| p.timeline.first())
            && let Some(state_key) = &first.state_key
        {
            let mut before = state_at_start.clone();
            let key = (first.event_type.clone(), state_key.clone());
            match &first.replaces_state {
                Some(replaced) => before.insert(key, replaced.clone()),
                None => before.remove(&key),
            };
            undone = before;
            state_at_start = &undone;
        }
        let ids: Vec<String> = if w.window.fresh || w.window.full_state {
            state_at_start.values().cloned().collect()
        } else {
            let state_at_since = state_of.next().unwrap_or(&empty);
            state_at_start
                .iter()
                .filter(|(k, v)| state_at_since.get(*k) != Some(*v))
                .map(|(_, v)| v.clone())
                .collect()
        };
        ids_per_room.push(ids);
    }
    let all: Vec<String> = ids_per_room.iter().flatten().cloned().collect();
    let mut rows: HashMap<String, EventRow> = svc
        .store
        .events(&all)
        .await?
        .into_iter()
        .map(|row| (row.event_id.clone(), row))
        .collect();

    let state_filter = ask.room_filter.state.clone().unwrap_or_default();
    for (plan, ids) in plans.iter_mut().zip(ids_per_room) {
        let Some(plan) = plan else { continue };
        let mut state: Vec<EventRow> = ids.iter().filter_map(|id| rows.remove(id)).collect();
        state.retain(|row| state_filter.allows_event(row));
        if state_filter.lazy_load_members == Some(true) {
            let senders: BTreeSet<&str> = plan
                .timeline
                .iter()
                .map(|e| e.sender.as_str())
                .chain([ask.user_id])
                .collect();
            state.retain(|row| {
                row.event_type != "m.room.member"
                    || row.state_key.as_deref().is_some_and(|k| senders.contains(k))
            });
        }
        state.sort_by_key(|r| r.stream_ordering);
        plan.state = state;
    }
    Ok(())
}

/// The bundled aggregations of every timeline event of the sync, in one query for all rooms.
async fn timeline_bundles(
    svc: &Services,
    ask: &Ask<'_>,
    wanted: &[Wanted],
    plans: &[Option<Plan>],
) -> Result<HashMap<String, Value>> {
    let mut rules = FastMap::default();
    for (w, plan) in wanted.iter().zip(plans) {
        if let Some(plan) = plan
            && plan.access.is_some()
            && !plan.timeline.is_empty()
        {
            rules.insert(w.room_id.clone(), rules_of(&plan.version)?);
        }
    }
    if rules.is_empty() {
        return Ok(HashMap::new());
    }
    let mut rooms = HashMap::new();
    let mut rows = Vec::new();
    for (w, plan) in wanted.iter().zip(plans) {
        if let (Some(plan), Some(rules)) = (plan, rules.get(&w.room_id))
            && let Some(access) = &plan.access
        {
            rooms.insert(w.room_id.clone(), BundleRoom { access, rules });
            rows.extend(plan.timeline.iter().map(|row| &**row));
        }
    }
    relations::bundles(svc, ask.viewer, &rooms, &rows).await
}

/// A room's section: timeline, state and summary.
fn format_section(
    svc: &Services,
    ask: &Ask<'_>,
    since: StreamToken,
    plan: &Plan,
    (related, bundles): (&Related, &HashMap<String, Value>),
    members: Option<&(Vec<String>, Vec<String>)>,
) -> Result<RoomSection> {
    let rules = rules_of(&plan.version)?;
    // Events inside a room's section are in the ClientEventWithoutRoomID format (the engine
    // leaves `room_id` out).
    let format = |rows: &mut dyn Iterator<Item = &EventRow>| -> Result<Vec<SyncEvent>> {
        rows.map(|row| {
            let event = svc.sync_engine.format(row, &rules, related, ask.viewer)?;
            Ok(match bundles.get(&row.event_id) {
                Some(bundle) => {
                    let mut event = event.into_value();
                    relations::attach(&mut event, bundle.clone());
                    SyncEvent::Own(event)
                }
                None => event,
            })
        })
        .collect()
    };
    // No members: unchanged since the token, an empty summary (as Synapse sends).
    let summary = members.map(|(joined, invited)| Summary {
        heroes: Some(
            joined
                .iter()
                .chain(invited.iter())
                .filter(|u| *u != ask.user_id)
                .take(5)
                .cloned()
                .collect(),
        ),
        joined_member_count: Some(joined.len()),
        invited_member_count: Some(invited.len()),
    });
    Ok(RoomSection {
        timeline: Timeline {
            events: format(&mut plan.timeline.iter().map(|row| &**row))?,
            limited: plan.limited,
            prev_batch: since.at_events(plan.start - 1).to_string(),
        },
        state: Events::new(format(&mut plan.state.iter())?),
        summary: Some(summary.unwrap_or_default()),
    })
}

/// Receipts and typing in a room since the token (all of them in an initial sync).
fn ephemeral_events(
    svc: &Services,
    ask: &Ask<'_>,
    room_id: &str,
    receipts: &[crate::store::ReceiptRow],
) -> Vec<Value> {
    let mut events = Vec::new();
    if let Some(event) = receipt_event(receipts, ask.user_id) {
        events.push(event);
    }
    let typing_since = if ask.initial { i64::MIN } else { ask.since.typing };
    if let Some(users) = svc.typing.typing_since(room_id, typing_since)
        && (!ask.initial || !users.is_empty())
    {
        events.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
    }
    events
}

/// Notification counts since the user's read receipt (public or private, whichever is later)
/// for every joined room in the response: room-wide, or — when the filter asks for
/// `unread_thread_notifications` — the main timeline's with a map per thread.
async fn add_unread_notifications(
    svc: &Services,
    ask: &Ask<'_>,
    join: &mut BTreeMap<String, JoinedRoom>,
    typing_only: &[String],
) -> Result<()> {
    let ids: Vec<String> = join
        .keys()
        .filter(|room_id| !typing_only.contains(room_id))
        .cloned()
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut counts = svc.push.unread.counts_in_rooms(svc, ask.user_id, &ids).await?;
    let threaded = ask
        .room_filter
        .timeline
        .as_ref()
        .and_then(|t| t.unread_thread_notifications)
        == Some(true);
    for (room_id, section) in join.iter_mut() {
        if typing_only.contains(room_id) {
            continue;
        }
        let counts = counts.remove(room_id).unwrap_or_default();
        if !threaded {
            section.unread_notifications = Some(UnreadCounts {
                notification_count: counts.total_notifications(),
                highlight_count: counts.total_highlights(),
            });
            continue;
        }
        section.unread_notifications = Some(UnreadCounts {
            notification_count: counts.notification_count,
            highlight_count: counts.highlight_count,
        });
        let threads = counts
            .per_thread
            .iter()
            .map(|(root, &(n, h))| {
                (
                    root.clone(),
                    UnreadCounts {
                        notification_count: n,
                        highlight_count: h,
                    },
                )
            })
            .collect();
        section.unread_thread_notifications = Some(threads);
    }
    Ok(())
}
