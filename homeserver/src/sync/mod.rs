//! `/sync`: what changed for a user since a token, computed independently of the transport,
//! and the long-poll that waits for the notifier.

mod carry;
pub mod engine;
pub mod filter;
pub mod notifier;
pub mod recent;
pub mod response;
mod rooms;
mod shared;
pub mod stats;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use ruma::{RoomId, UserId, events::room::member::MembershipState};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::filter::Filter;
use crate::stream::StreamToken;
use crate::{
    error::{Error, Result},
    rooms::access::RoomAccess,
    rooms::client_event::{Viewer, stripped_state},
    services::Services,
    users::presence::{presence_content, presence_key},
};
use carry::Continuation;
use engine::SyncEngine;
use notifier::{Covered, Subscription};
use response::{DeviceLists, Events, InvitedRoom, KnockedRoom, RoomSection, Rooms, SyncResponse, Timeline};
pub use shared::SharedSteps;
use shared::{Role, StepKey};
use stats::bump;

/// Longest long-poll a client can ask for.
const MAX_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// The query of `GET /sync`, as sent. Ours rather than ruma's request: ruma parses an inline
/// filter into its own types, which refuse what Hearth accepts (room IDs and senders that are not
/// valid IDs simply match nothing) and answer a malformed filter differently (`M_BAD_JSON` here).
#[derive(Deserialize)]
pub struct SyncQuery {
    since: Option<String>,
    timeout: Option<String>,
    full_state: Option<String>,
    filter: Option<String>,
    set_presence: Option<String>,
}

/// `GET /sync`: parses the query, marks the user active, runs the sync.
pub async fn sync_for_client(
    svc: &Services,
    user_id: &UserId,
    device_id: &str,
    q: SyncQuery,
) -> Result<Arc<Answer>> {
    let since = q.since.as_deref().map(StreamToken::parse).transpose()?;
    let timeout = match &q.timeout {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| Error::invalid_param("timeout must be an integer"))?,
        None => 0,
    };
    let full_state = match q.full_state.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid_param("full_state must be true or false")),
    };
    // These two are boxed: a long-poll keeps its future while it waits, and that future is as
    // large as its largest step, so steps that are over before the wait should not size it.
    let filter = match &q.filter {
        Some(f) => Box::pin(filter::load(svc, user_id, f)).await?,
        None => filter::none(),
    };
    // Syncing counts as activity: the client says which state that means (online by default).
    let presence = q.set_presence.as_deref().unwrap_or("online");
    Box::pin(crate::users::presence::mark_active(svc, user_id, presence)).await?;
    let req = SyncRequest {
        since,
        timeout: Duration::from_millis(timeout.min(MAX_TIMEOUT_MS)),
        full_state,
        filter,
        filter_param: q.filter,
    };
    sync(svc, user_id.as_str(), device_id, req).await
}

pub struct SyncRequest {
    pub since: Option<StreamToken>,
    pub timeout: Duration,
    pub full_state: bool,
    /// Shared (`filter::load`): a filter is over a kilobyte, and a waiting request's future
    /// would carry it (and the copies a move between futures leaves) while it waits.
    pub filter: Arc<Filter>,
    /// The `filter` parameter as sent: a request continues a kept step only with the same one.
    pub filter_param: Option<String>,
}

/// Types whose stripped state an invitee sees.
pub(crate) const INVITE_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

const DEFAULT_TIMELINE_LIMIT: usize = 10;

/// A sync step's answer: the response serialized once (identical woken steps share it,
/// `shared.rs`), its `next_batch`, and whether it has anything new (an initial sync always has).
pub struct Answer {
    /// The `SyncResponse` as JSON.
    pub body: bytes::Bytes,
    pub next_batch: String,
    pub has_changes: bool,
    /// The body as an `org.hearth.ws` `sync` frame, made by the first stream that sends it: one
    /// message to a room with thousands of streams open made a copy per stream.
    frame: std::sync::OnceLock<bytes::Bytes>,
}

impl Answer {
    fn new(response: &SyncResponse, has_changes: bool) -> Result<Self> {
        Ok(Self::of(
            serde_json::to_vec(response).map_err(Error::internal)?.into(),
            response.next_batch.clone(),
            has_changes,
        ))
    }

    pub(crate) fn of(body: bytes::Bytes, next_batch: String, has_changes: bool) -> Self {
        Self {
            body,
            next_batch,
            has_changes,
            frame: std::sync::OnceLock::new(),
        }
    }

    /// `{"type":"sync","body":…}` around the body (spliced, not parsed and serialized again),
    /// made once for every stream that sends this answer.
    pub fn stream_frame(&self) -> bytes::Bytes {
        self.frame
            .get_or_init(|| {
                const HEAD: &[u8] = br#"{"type":"sync","body":"#;
                let mut frame = Vec::with_capacity(HEAD.len() + self.body.len() + 1);
                frame.extend_from_slice(HEAD);
                frame.extend_from_slice(&self.body);
                frame.push(b'}');
                frame.into()
            })
            .clone()
    }
}

/// Runs a sync, long-polling up to `timeout` when an incremental sync finds nothing new.
pub async fn sync(svc: &Services, user_id: &str, device_id: &str, req: SyncRequest) -> Result<Arc<Answer>> {
    sync_step(svc, user_id, device_id, &req).await
}

/// A sync step: the step of a `/sync` long-poll and of a stream (`org.hearth.ws`). A waiter
/// registered for the user's rooms and the user is woken only by notifications of those;
/// positions are compared, so nothing stored after the response's positions were read can be
/// missed.
pub async fn sync_step(
    svc: &Services,
    user_id: &str,
    device_id: &str,
    req: &SyncRequest,
) -> Result<Arc<Answer>> {
    let mut waiter = svc.notifier.subscribe();
    // Boxed: each async caller of a future it awaits keeps room for it twice (the future as
    // made, and as awaited), and `/sync`'s chain of callers made a held long-poll's future
    // 5.7 KiB instead of the step's 1.2.
    Box::pin(sync_step_with(svc, user_id, device_id, req, &mut waiter)).await
}

/// A sync step with a waiter kept from step to step (a stream's). Registering a waiter's keys
/// and taking them back are locked writes to the notifier's table, per key; a stream's next
/// step mostly watches the same keys again, and after one message to a room with thousands of
/// streams, they all did so at once. Positions are compared, never the waiter's history, so
/// what an earlier step heard changes nothing here.
pub async fn sync_step_with(
    svc: &Services,
    user_id: &str,
    device_id: &str,
    req: &SyncRequest,
    waiter: &mut Subscription,
) -> Result<Arc<Answer>> {
    let deadline = tokio::time::Instant::now() + req.timeout;
    let continuations = &svc.sync_engine.continuations;
    // A request from the `next_batch` of this device's last step starts where that step left
    // off, as if woken (carry.rs).
    let continued = match req.since {
        Some(since) if !req.full_state => {
            continuations.find(user_id, device_id, since, req.filter_param.as_deref())
        }
        _ => None,
    };
    let (mut baseline, mut last_mark) = match continued {
        Some(kept) => {
            waiter.watch(&kept.base.interest);
            (Some(kept.base), Some(kept.mark))
        }
        None => (None, None),
    };
    let mut continued = last_mark.is_some();
    loop {
        // Marked before computing: whatever is stored after the positions were read is heard.
        let mark = waiter.mark();
        // A continued request's first computation is not a wake-up (stats).
        let woken = last_mark.is_some() && !continued;
        // Woken with identical steps (same device, `since` and filter): one computes, the
        // others send its answer (shared.rs).
        let mut leader = None;
        if woken && let Some(since) = req.since {
            let key = StepKey {
                user_id: user_id.to_owned(),
                device_id: device_id.to_owned(),
                since,
                filter: req.filter_param.clone(),
                full_state: req.full_state,
            };
            match svc.sync_engine.shared.enter(key, waiter.moved_position(), mark) {
                Role::Join(group) => {
                    if let Some(answer) = shared::answer_of(group).await {
                        bump(&svc.sync_engine.stats.shared_answers);
                        return Ok(answer);
                    }
                }
                Role::Lead(lead) => leader = Some(lead),
                Role::Alone => {}
            }
        }
        // Woken: only what moved since the last computation is computed again, when all of it
        // is rooms the user is joined to (anything else: everything again).
        let moved = match (&baseline, last_mark) {
            (Some(base), Some(last)) => {
                let (keys, covered) = waiter.moved_keys(last);
                base.moved(keys, covered, user_id, &svc.sync_engine)
            }
            _ => None,
        };
        let full = moved.is_none();
        let (computed, queries) = match (&baseline, moved) {
            // Nothing moved since the kept step (a stream's next step after a frame, by the
            // thousand after one message): the empty answer, without a computation, whose
            // boxed future is kilobytes that the allocator hands out slowly by the thousand.
            (Some(base), Some(moved)) if moved.rooms.is_empty() && !moved.presence => {
                (Ok((quiet_response(base, moved.covered), false, None)), 0)
            }
            // Boxed: a computation's futures are large, and a waiting request (which may wait
            // for minutes, by the ten thousand) should not carry their space.
            (baseline, moved) => {
                Box::pin(crate::store::count_queries(async {
                    match (baseline, moved) {
                        (Some(base), Some(moved)) => {
                            compute_moved(svc, Viewer { user_id, device_id }, req, base, moved)
                                .await
                                .map(|(response, has_changes)| (response, has_changes, None))
                        }
                        _ => compute(svc, user_id, device_id, req)
                            .await
                            .map(|(response, has_changes, base)| (response, has_changes, Some(base))),
                    }
                }))
                .await
            }
        };
        let (response, has_changes, new_baseline) = computed?;
        svc.sync_engine.stats.computed(woken, continued, full, queries);
        tracing::debug!(
            user_id,
            woken,
            continued,
            full,
            queries,
            has_changes,
            "sync computed"
        );
        continued = false;
        if let Some(base) = new_baseline {
            baseline = Some(Arc::new(base));
        }
        // What the next request, from this response's `next_batch`, continues; not after
        // to-device messages, which the next request acknowledges (and more may be queued).
        let keep = |response: &SyncResponse, base: &Option<Arc<Baseline>>| {
            if !response.to_device.is_empty() {
                return;
            }
            if let (Some(base), Ok(next)) = (base, StreamToken::parse(&response.next_batch)) {
                let base = Arc::new(base.continued_at(next));
                let kept = Continuation::new(next, req.filter_param.clone(), mark, base);
                continuations.keep(user_id, device_id, kept);
            }
        };
        if req.since.is_none() || req.full_state || has_changes {
            keep(&response, &baseline);
            let answer = Arc::new(Answer::new(&response, true)?);
            if let Some(leader) = leader {
                leader.publish(&answer);
            }
            return Ok(answer);
        }
        drop(leader);
        if full && let Some(base) = &baseline {
            waiter.watch(&base.interest);
            // Found nothing since `since`: an identical request of the device (another tab, a
            // retry) continues from here instead of computing in full, and shares this
            // baseline.
            if let Some(since) = req.since {
                let kept = Continuation::new(since, req.filter_param.clone(), mark, base.clone());
                continuations.keep(user_id, device_id, kept);
            }
        }
        last_mark = Some(mark);
        bump(&svc.sync_engine.stats.waits);
        if !waiter.wait(mark, deadline).await {
            keep(&response, &baseline);
            return Ok(Arc::new(Answer::new(&response, false)?));
        }
    }
}

/// What a full computation that found nothing leaves for the woken ones of the same request:
/// the positions it covered, the rooms it would have shown, the keys it waits on.
struct Baseline {
    /// The response's `next_batch` positions.
    now: StreamToken,
    /// The joined rooms the filter lets through, and what their sections would cover.
    joined: HashMap<String, Window>,
    /// The viewer's access to those rooms, read at events position `access_at`.
    access: Arc<HashMap<String, Arc<RoomAccess>>>,
    access_at: i64,
    interest: HashSet<String>,
    device_one_time_keys_count: BTreeMap<String, u64>,
    device_unused_fallback_key_types: Vec<String>,
}

/// What moved for a woken sync, when it is only joined rooms and presence.
struct Moved {
    rooms: Vec<String>,
    presence: bool,
    /// The stream positions notified when the moved keys were read: the computation reaches
    /// no further, so whatever lies beyond is in a key that moves after.
    covered: Covered,
}

impl Baseline {
    /// What the next request, from this step's `next_batch` (`next`), starts from: the same
    /// rooms and interest, none of them new to the client any more.
    fn continued_at(&self, next: StreamToken) -> Baseline {
        let window = Window {
            since: next,
            upto: next,
            fresh: false,
            full_state: false,
        };
        Baseline {
            now: next,
            joined: self.joined.keys().map(|room| (room.clone(), window)).collect(),
            access: self.access.clone(),
            access_at: self.access_at,
            interest: self.interest.clone(),
            device_one_time_keys_count: self.device_one_time_keys_count.clone(),
            device_unused_fallback_key_types: self.device_unused_fallback_key_types.clone(),
        }
    }

    /// The moved keys as joined rooms and the user's presence key, if that is all they are:
    /// account data, to-device messages, device lists and membership changes notify the user's
    /// own key, which means computing everything again. So does another member joining or
    /// leaving one of the rooms (`engine`): it changes whose device lists the user follows.
    fn moved(
        &self,
        keys: Vec<String>,
        covered: Covered,
        user_id: &str,
        engine: &SyncEngine,
    ) -> Option<Moved> {
        let presence_key = presence_key(user_id);
        let mut moved = Moved {
            rooms: Vec::new(),
            presence: false,
            covered,
        };
        for key in keys {
            if key == presence_key {
                moved.presence = true;
            } else if self.joined.contains_key(&key)
                && !engine.membership_may_have_moved(&key, self.now.events)
            {
                moved.rooms.push(key);
            } else {
                return None;
            }
        }
        Some(moved)
    }
}

/// A woken sync's computation: the sections of the joined rooms that moved since the baseline
/// (their timelines, state, receipts and typing) and presence if it moved, nothing else. Rooms
/// the engine knows quiet since the token (a typing notification) read no timeline, and rooms
/// without new receipts no receipts: a typing change costs no query.
async fn compute_moved(
    svc: &Services,
    viewer: Viewer<'_>,
    req: &SyncRequest,
    base: &Baseline,
    moved: Moved,
) -> Result<(SyncResponse, bool)> {
    let since = req.since.unwrap_or_default();
    let mut now = moved_now(base, moved.covered);
    let presence = if moved.presence {
        now.presence = base.now.presence.max(svc.store.max_presence_stream().await?);
        presence_events(svc, viewer.user_id, req, since, now).await?
    } else {
        Vec::new()
    };
    let wanted: Vec<rooms::Wanted> = moved
        .rooms
        .into_iter()
        .filter_map(|room_id| {
            let window = Window {
                upto: now,
                ..*base.joined.get(&room_id)?
            };
            Some(rooms::Wanted {
                room_id,
                joined: true,
                window,
            })
        })
        .collect();
    let room_filter = req.filter.room.clone().unwrap_or_default();
    let ask = rooms::Ask {
        user_id: viewer.user_id,
        viewer,
        room_filter: &room_filter,
        since,
        now,
        initial: false,
        woken: true,
        known_access: Some((&base.access, base.access_at)),
    };
    let (join, leave) = rooms::sections(svc, &ask, &wanted, &mut HashMap::new()).await?;
    let has_changes = !(join.is_empty() && leave.is_empty() && presence.is_empty());
    let response = SyncResponse {
        next_batch: now.to_string(),
        rooms: Rooms {
            join,
            leave,
            ..Rooms::default()
        },
        account_data: Events::default(),
        presence: Events::new(presence),
        to_device: Events::default(),
        device_lists: DeviceLists::default(),
        device_one_time_keys_count: base.device_one_time_keys_count.clone(),
        device_unused_fallback_key_types: base.device_unused_fallback_key_types.clone(),
    };
    Ok((response, has_changes))
}

/// Where a woken or continued step's response reaches: only the moved rooms are computed, so
/// it claims only what was notified when they were read (an event committed since, in a room
/// not read here, lies beyond it and moves its key for the next step).
fn moved_now(base: &Baseline, covered: Covered) -> StreamToken {
    StreamToken {
        events: base.now.events.max(covered.events),
        receipts: base.now.receipts.max(covered.receipts),
        typing: base.now.typing.max(covered.typing),
        ..base.now
    }
}

/// What `compute_moved` answers when nothing moved: no sections, the baseline's key counts.
fn quiet_response(base: &Baseline, covered: Covered) -> SyncResponse {
    SyncResponse {
        next_batch: moved_now(base, covered).to_string(),
        rooms: Rooms::default(),
        account_data: Events::default(),
        presence: Events::new(Vec::new()),
        to_device: Events::default(),
        device_lists: DeviceLists::default(),
        device_one_time_keys_count: base.device_one_time_keys_count.clone(),
        device_unused_fallback_key_types: base.device_unused_fallback_key_types.clone(),
    }
}

/// The `filter` parameter of a stream, read like `/sync`'s: inline JSON or a stored filter's ID.
pub async fn stream_filter(svc: &Services, user_id: &UserId, filter: Option<&str>) -> Result<Arc<Filter>> {
    match filter {
        Some(f) => filter::load(svc, user_id, f).await,
        None => Ok(filter::none()),
    }
}

/// The response, whether it has anything new, and its baseline (with the keys, rooms and the
/// user, whose notifications should wake this sync).
async fn compute(
    svc: &Services,
    user_id: &str,
    device_id: &str,
    req: &SyncRequest,
) -> Result<(SyncResponse, bool, Baseline)> {
    // Positions first: everything up to them is committed, so nothing can be skipped.
    let mut now = StreamToken::current(svc).await?;
    let since = req.since.unwrap_or_default();
    // Delivered messages are deleted, so the newest stored one can be older than the token.
    now.to_device = now.to_device.max(since.to_device);
    let initial = req.since.is_none();
    let room_filter = req.filter.room.clone().unwrap_or_default();
    let viewer = Viewer { user_id, device_id };

    let forgotten: HashSet<String> = svc.store.forgotten_rooms(user_id).await?.into_iter().collect();
    let mut invite = BTreeMap::new();
    let mut knock = BTreeMap::new();

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
            .filter(|(_, m, _)| m == MembershipState::Join.as_str())
            .map(|(r, _, _)| r)
            .collect()
    };
    // A filter that excludes all presence is not woken by it either.
    let mut interest: HashSet<String> = HashSet::from([user_id.to_owned()]);
    if wants_presence(req) {
        interest.insert(presence_key(user_id));
    }
    let mut joined = HashMap::new();
    // Joined and left rooms are built together below (their queries batched across rooms).
    let mut wanted = Vec::new();
    for (room_id, membership, at) in svc.store.memberships_at(user_id, now.events).await? {
        interest.insert(room_id.clone());
        if !room_filter.allows_room(&room_id) {
            continue;
        }
        RoomId::parse(room_id.as_str()).map_err(Error::internal)?;
        let changed_since = initial || at > since.events;
        let fresh = initial || !joined_at_since.contains(&room_id);
        let membership = MembershipState::from(membership);
        match membership {
            MembershipState::Join => {
                let window = Window {
                    since,
                    upto: now,
                    fresh,
                    full_state: req.full_state,
                };
                joined.insert(room_id.clone(), window);
                wanted.push(rooms::Wanted {
                    room_id,
                    joined: true,
                    window,
                });
            }
            MembershipState::Invite | MembershipState::Knock if changed_since => {
                let state = Events::new(stripped_room_state(svc, &room_id, user_id).await?);
                if membership == MembershipState::Invite {
                    invite.insert(room_id, InvitedRoom { invite_state: state });
                } else {
                    knock.insert(room_id, KnockedRoom { knock_state: state });
                }
            }
            MembershipState::Leave | MembershipState::Ban if !forgotten.contains(&room_id) => {
                let wanted_leave = if initial {
                    room_filter.include_leave.unwrap_or(false)
                } else {
                    changed_since
                };
                if wanted_leave {
                    wanted.push(rooms::Wanted {
                        room_id,
                        joined: false,
                        window: Window {
                            since,
                            upto: StreamToken { events: at, ..now },
                            fresh,
                            full_state: req.full_state,
                        },
                    });
                }
            }
            _ => {}
        }
    }
    let ask = rooms::Ask {
        user_id,
        viewer,
        room_filter: &room_filter,
        since,
        now,
        initial,
        woken: false,
        known_access: None,
    };
    let (join, leave) = rooms::sections(svc, &ask, &wanted, &mut room_account_data).await?;
    // The viewer's access to every joined room as of `now`, for the woken and continued steps
    // that follow (reused while a room's state does not move).
    let joined_ids: Vec<String> = joined.keys().cloned().collect();
    let access = if joined_ids.is_empty() {
        HashMap::new()
    } else {
        RoomAccess::load_many(svc, &joined_ids, Some(user_id))
            .await?
            .into_iter()
            .map(|(room, access)| (room, Arc::new(access)))
            .collect()
    };
    let presence = presence_events(svc, user_id, req, since, now).await?;
    // Clients expect the push rules in an initial sync, also when the user never changed them
    // (then nothing is stored as account data).
    if initial && !global_account_data.iter().any(|e| e["type"] == "m.push_rules") {
        let user = ruma::UserId::parse(user_id).map_err(Error::internal)?;
        let event = crate::push::push_rules_event(svc, &user).await?;
        if account_filter.allows("m.push_rules", user_id) {
            global_account_data.push(event);
        }
    }
    let (to_device, to_device_position) = crate::e2ee::to_device::for_sync(
        svc,
        user_id,
        device_id,
        req.since.map(|s| s.to_device),
        now.to_device,
    )
    .await?;
    let device_lists = if initial {
        DeviceLists::default()
    } else {
        let changes = crate::e2ee::device_lists::changes(svc, user_id, since, now).await?;
        DeviceLists {
            changed: changes.changed,
            left: changes.left,
        }
    };
    let device_one_time_keys_count =
        crate::e2ee::keys::with_default_count(svc.store.one_time_key_counts(user_id, device_id).await?);
    let device_unused_fallback_key_types = svc.store.unused_fallback_key_types(user_id, device_id).await?;
    let has_changes = !(join.is_empty()
        && to_device.is_empty()
        && device_lists.changed.is_empty()
        && device_lists.left.is_empty()
        && invite.is_empty()
        && leave.is_empty()
        && knock.is_empty()
        && global_account_data.is_empty()
        && presence.is_empty());
    let next_batch = StreamToken {
        to_device: to_device_position,
        ..now
    };
    let baseline = Baseline {
        now: next_batch,
        joined,
        access: Arc::new(access),
        access_at: now.events,
        interest,
        device_one_time_keys_count: device_one_time_keys_count.clone(),
        device_unused_fallback_key_types: device_unused_fallback_key_types.clone(),
    };
    let response = SyncResponse {
        next_batch: next_batch.to_string(),
        rooms: Rooms {
            join,
            invite,
            leave,
            knock,
        },
        account_data: Events::new(global_account_data),
        presence: Events::new(presence),
        to_device: Events::new(to_device),
        device_lists,
        device_one_time_keys_count,
        device_unused_fallback_key_types,
    };
    Ok((response, has_changes, baseline))
}

/// Whether the request's filter lets any presence through.
fn wants_presence(req: &SyncRequest) -> bool {
    !req.filter
        .presence
        .as_ref()
        .is_some_and(|f| f.excludes_type("m.presence"))
}

/// Presence changes in `(since, now]` of the users sharing a room with the user (and the
/// user's own), as the filter allows; none read when it allows none.
async fn presence_events(
    svc: &Services,
    user_id: &str,
    req: &SyncRequest,
    since: StreamToken,
    now: StreamToken,
) -> Result<Vec<Value>> {
    if !wants_presence(req) {
        return Ok(Vec::new());
    }
    Ok(svc
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
        .collect())
}

/// A room section with nothing in its timeline or state.
fn empty_section(since: StreamToken) -> RoomSection {
    RoomSection {
        timeline: Timeline {
            events: Vec::new(),
            limited: false,
            prev_batch: since.to_string(),
        },
        state: Events::default(),
        summary: None,
    }
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

async fn stripped_room_state(svc: &Services, room_id: &str, user_id: &str) -> Result<Vec<Value>> {
    let state = svc.store.current_state(room_id).await?;
    if state.is_empty() {
        // A room this server is not in: the state the inviting server sent (federation).
        return crate::federation::remote_membership::invite_state(svc, room_id, user_id).await;
    }
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
