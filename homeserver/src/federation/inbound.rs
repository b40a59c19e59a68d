//! Incoming PDUs, in the spec's order (Server-Server API §"Checks performed on receipt of a
//! PDU"): format, signatures and content hash (`hearth_federation::pdu_checks`, with the keys
//! fetched here), auth against the event's own auth events (missing ones fetched from the
//! origin, bounded, and kept as outliers), auth against the state before it (its prev_events'
//! states, resolved when they differ), then against the room's current state (failing that
//! only soft-fails it). Accepted events are stored through `timeline::persist` under the append
//! lock, so remote events wake `/sync` and reach every listener as local ones do.

use std::collections::{BTreeMap, HashMap};

use hearth_federation::{Pdu, pdu_checks, rules_for};
use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, RoomId, RoomVersionId, ServerName, UserId,
    room_version_rules::RoomVersionRules,
    signatures::PublicKeyMap,
    state_res::{auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules},
};
use serde_json::{Value, value::RawValue};

use crate::{
    error::{Error, Result},
    federation::{keys, resolve},
    rooms::{
        power,
        timeline::{self, pdu_of},
        topo,
    },
    services::Services,
    store::{Appending, EventPlace, NewEvent, StateEntry, StateMap},
    util::now_ms,
};

/// Outcome of one PDU of a transaction, as `/send` reports it.
pub struct PduResult {
    pub event_id: Option<OwnedEventId>,
    pub error: Option<String>,
}

/// Events fetched from the origin to check one PDU, at most.
const MAX_FETCHED: usize = 50;
/// How deep fetching auth events of fetched events may go.
const MAX_FETCH_DEPTH: usize = 8;
/// Largest `/event` response read.
const EVENT_RESPONSE_LIMIT: usize = 256 * 1024;

/// Why a PDU was not accepted, with its event ID once known.
#[derive(Debug)]
pub struct Refused {
    pub event_id: Option<OwnedEventId>,
    pub reason: String,
    /// A prev event could not be had (no server answered, or the fetch limit was reached): the
    /// PDU may pass later, once it can be (`federation::pending`).
    pub missing_prev: bool,
}

impl Refused {
    fn new(event_id: Option<&EventId>, reason: impl Into<String>) -> Self {
        Self {
            event_id: event_id.map(ToOwned::to_owned),
            reason: reason.into(),
            missing_prev: false,
        }
    }

    fn missing_prev(event_id: &EventId, reason: String) -> Self {
        Self {
            missing_prev: true,
            ..Self::new(Some(event_id), reason)
        }
    }
}

/// Checks and stores one PDU received from `origin` (the spec's order: format, signatures,
/// content hash, auth against its auth events, against the state before it, against the
/// current state (soft fail)). Never panics; a bad PDU never affects others. One refused for a
/// missing prev event is kept to be tried again (`federation::pending`); its result still
/// carries the error.
pub async fn handle_incoming_pdu(svc: &Services, origin: &ServerName, pdu: &RawValue) -> PduResult {
    match accept(svc, origin, pdu).await {
        Ok(accepted) => PduResult {
            event_id: Some(accepted.event_id),
            error: None,
        },
        Err(refused) => {
            tracing::info!(%origin, event_id = ?refused.event_id, reason = %refused.reason, "PDU refused");
            if refused.missing_prev {
                super::pending::keep(svc, origin, pdu, &refused).await;
            }
            PduResult {
                event_id: refused.event_id,
                error: Some(refused.reason),
            }
        }
    }
}

/// What became of an accepted PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// In the timeline (now, or before).
    Timeline,
    /// Passed auth but not against the current state: in the DAG, never shown to clients.
    SoftFailed,
    /// A redaction that does not apply (`held_back`): in the DAG, never shown to clients.
    HeldBack,
}

#[derive(Debug)]
pub struct Accepted {
    pub event_id: OwnedEventId,
    pub pdu: Pdu,
    pub fate: Fate,
}

/// How a PDU came to be placed: whether it may be late (`rooms::topo`, `NewEvent::late`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Sent to this server as it happened (`/send`, joins, leaves): new.
    Live,
    /// Fetched because a later PDU names it as a prev event: late.
    Fetched,
    /// A pending PDU placed once its missing prev event came: late when it sorts below what
    /// the room already shows.
    Pending,
}

/// The whole pipeline for one PDU of a room this server knows.
pub async fn accept(svc: &Services, origin: &ServerName, raw: &RawValue) -> Result<Accepted, Refused> {
    accept_as(svc, origin, raw, Arrival::Live).await
}

/// `accept`, for a PDU that arrived as `arrival` says.
pub async fn accept_as(
    svc: &Services,
    origin: &ServerName,
    raw: &RawValue,
    arrival: Arrival,
) -> Result<Accepted, Refused> {
    let object = pdu_checks::parse(raw).map_err(|e| Refused::new(None, e.to_string()))?;
    let room_id = match object.get("room_id") {
        Some(ruma::CanonicalJsonValue::String(s)) => {
            RoomId::parse(s).map_err(|_| Refused::new(None, "invalid room_id"))?
        }
        _ => return Err(Refused::new(None, "a room's create event is not accepted here")),
    };
    let (_, rules) = room_rules(svc, &room_id)
        .await
        .map_err(|e| Refused::new(None, e.to_string()))?;
    // The event ID names the result of a PDU dropped for its signatures too: the spec reads a
    // PDU without an `error` as handled.
    let dropped_id = hearth_federation::pdu::event_id_of(&object, &rules).ok();
    let checked = verify(svc, object, &rules)
        .await
        .map_err(|reason| Refused::new(dropped_id.as_deref(), reason))?;
    let pdu = checked.pdu;
    let id = pdu.event_id.clone();
    let refuse = |reason: String| Refused::new(Some(&id), reason);
    if checked.redacted {
        tracing::info!(event_id = %id, "content hash mismatch: the event is kept redacted");
    }
    if pdu.room_id.as_deref() != Some(&*room_id) {
        return Err(refuse("room_id changed by redaction".into()));
    }
    accept_in(svc, origin, &rules, pdu, &mut Budget::default(), 0, arrival)
        .await
        .map_err(|e| Refused {
            event_id: Some(id),
            ..e
        })
}

/// The stateful checks and storage of a PDU whose signatures and hashes were checked.
pub async fn accept_checked(
    svc: &Services,
    origin: &ServerName,
    rules: &RoomVersionRules,
    pdu: Pdu,
) -> Result<Accepted, Refused> {
    accept_in(svc, origin, rules, pdu, &mut Budget::default(), 0, Arrival::Live).await
}

/// What `accept_in` returns (boxed: it recurses into missing prev_events).
type AcceptFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Accepted, Refused>> + Send + 'a>>;

fn accept_in<'a>(
    svc: &'a Services,
    origin: &'a ServerName,
    rules: &'a RoomVersionRules,
    pdu: Pdu,
    budget: &'a mut Budget,
    depth: usize,
    arrival: Arrival,
) -> AcceptFuture<'a> {
    Box::pin(accept_inner(svc, origin, rules, pdu, budget, depth, arrival))
}

async fn accept_inner(
    svc: &Services,
    origin: &ServerName,
    rules: &RoomVersionRules,
    pdu: Pdu,
    budget: &mut Budget,
    depth: usize,
    arrival: Arrival,
) -> Result<Accepted, Refused> {
    let id = pdu.event_id.clone();
    let refuse = |reason: String| Refused::new(Some(&id), reason);
    let room_id = pdu.room_id.clone().ok_or_else(|| refuse("no room_id".into()))?;
    let internal = |e: Error| Refused::new(Some(&id), format!("internal error: {e}"));

    // Already known: the same answer as the first time.
    match svc
        .store
        .event_place(id.as_str())
        .await
        .map_err(|e| internal(e.into()))?
    {
        Some(EventPlace::Timeline) => {
            return Ok(Accepted {
                event_id: id.clone(),
                pdu,
                fate: Fate::Timeline,
            });
        }
        Some(EventPlace::SoftFailed) => {
            return Ok(Accepted {
                event_id: id.clone(),
                pdu,
                fate: Fate::SoftFailed,
            });
        }
        Some(EventPlace::Outlier) | None => {}
    }
    if let Some((kind, reason)) = svc
        .store
        .unserved(id.as_str())
        .await
        .map_err(|e| internal(e.into()))?
    {
        return if kind == "soft_failed" {
            // Kept outside the DAG by an older version of this server.
            Ok(Accepted {
                event_id: id.clone(),
                pdu,
                fate: Fate::SoftFailed,
            })
        } else {
            Err(refuse(format!("rejected: {reason}")))
        };
    }

    // The room's server ACL applies to whoever sends its events.
    super::membership::check_acl(svc, &room_id, origin)
        .await
        .map_err(|e| refuse(e.to_string()))?;
    if let Ok(sender_server) = <&ServerName>::try_from(pdu.sender.server_name().as_str()) {
        super::membership::check_acl(svc, &room_id, sender_server)
            .await
            .map_err(|e| refuse(e.to_string()))?;
    }

    // Auth against its own auth events.
    let mut wanted = pdu.auth_events.clone();
    wanted.extend(implied_create(rules, &room_id));
    let auth = ensure_events(svc, origin, rules, &room_id, &wanted, budget, 0)
        .await
        .map_err(refuse)?;
    if let Err(reason) = check_with_auth_events(rules, &pdu, &auth) {
        reject(svc, &pdu, &reason).await;
        return Err(refuse(format!("rejected: {reason}")));
    }

    // The state before it: the states of its prev_events, which must be in the DAG (missing
    // ones are fetched from the origin and accepted first, bounded), or be where this server's
    // timeline of the room starts (a remote join's prev_events: the state it joined with).
    let prevs: Vec<String> = pdu.prev_events.iter().map(ToString::to_string).collect();
    let mut known = svc
        .store
        .dag_events_state(&prevs)
        .await
        .map_err(|e| internal(e.into()))?;
    let start = svc
        .store
        .timeline_start(room_id.as_str())
        .await
        .map_err(|e| internal(e.into()))?
        .and_then(|(json, group)| {
            let first: Value = serde_json::from_str(&json).ok()?;
            let prevs: Vec<String> = first["prev_events"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(ToOwned::to_owned))
                .collect();
            Some((prevs, group))
        });
    let mut groups: Vec<i64> = Vec::new();
    for prev in &pdu.prev_events {
        if known.iter().any(|(id, _, _)| id == prev.as_str()) {
            continue;
        }
        if let Some((start_prevs, group)) = &start
            && start_prevs.iter().any(|p| p == prev.as_str())
        {
            groups.push(*group);
            continue;
        }
        if depth >= MAX_FETCH_DEPTH || budget.fetched >= MAX_FETCHED {
            return Err(Refused::missing_prev(
                &id,
                format!("prev event {prev} is missing (fetch limit reached)"),
            ));
        }
        budget.fetched += 1;
        let fetched = fetch_from_room(svc, origin, &room_id, rules, prev)
            .await
            .map_err(|e| Refused::missing_prev(&id, format!("prev event {prev} is missing: {e}")))?;
        if fetched.room_id.as_deref() != Some(&*room_id) {
            return Err(refuse(format!("prev event {prev} is of another room")));
        }
        accept_in(svc, origin, rules, fetched, budget, depth + 1, Arrival::Fetched)
            .await
            .map_err(|r| Refused {
                missing_prev: r.missing_prev,
                ..refuse(format!("prev event {prev}: {}", r.reason))
            })?;
        known = svc
            .store
            .dag_events_state(&prevs)
            .await
            .map_err(|e| internal(e.into()))?;
        if !known.iter().any(|(id, _, _)| id == prev.as_str()) {
            return Err(refuse(format!("prev event {prev} did not enter the DAG")));
        }
    }
    groups.extend(known.iter().map(|(_, g, _)| *g));
    groups.sort_unstable();
    groups.dedup();

    svc.timeline
        .with_append_lock(&room_id, place(svc, rules, &pdu, &room_id, groups, arrival))
        .await
        .map_err(|e| match e {
            Placement::Rejected(reason) => refuse(format!("rejected: {reason}")),
            Placement::Error(e) => internal(e),
        })
        .map(|fate| Accepted {
            event_id: id.clone(),
            pdu: pdu.clone(),
            fate,
        })
}

enum Placement {
    Rejected(String),
    Error(Error),
}

impl From<Error> for Placement {
    fn from(e: Error) -> Self {
        Placement::Error(e)
    }
}

impl From<crate::store::StoreError> for Placement {
    fn from(e: crate::store::StoreError) -> Self {
        Placement::Error(e.into())
    }
}

/// Under the append lock: the state before the event, auth against it, the soft-fail check
/// against the current state, then storage, and the current state recomputed when the room now
/// has several forward extremities.
async fn place(
    svc: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    room_id: &RoomId,
    groups: Vec<i64>,
    arrival: Arrival,
) -> Result<Fate, Placement> {
    // Placed since the check before the lock (two transactions fetched it as a missing prev
    // event at once): the same answer, and no second insert.
    match svc.store.event_place(pdu.event_id.as_str()).await? {
        Some(EventPlace::Timeline) => return Ok(Fate::Timeline),
        Some(EventPlace::SoftFailed) => return Ok(Fate::SoftFailed),
        Some(EventPlace::Outlier) | None => {}
    }
    // The common case: the state before the event is the one state of all forward extremities,
    // which is the current state; no resolution, no soft-fail check.
    let current_groups = svc.store.extremity_state_groups(room_id.as_str()).await?;
    let linear = groups.len() == 1 && current_groups == groups;
    let (before_group, before) = if linear {
        (groups[0], None)
    } else {
        let mut states = Vec::with_capacity(groups.len());
        for g in &groups {
            states.push(svc.store.state_of_group(*g).await?);
        }
        let resolved = resolve::resolve(svc, rules, &states).await?;
        let entries = state_entries(svc, &resolved).await?;
        (
            svc.store.snapshot_group(room_id.as_str(), &entries).await?,
            Some(resolved),
        )
    };

    let wanted = wanted_state(rules, pdu)?;
    let state_before = match &before {
        None => current_entries(svc, room_id, &wanted).await?,
        Some(map) => entries_of(svc, map, &wanted).await?,
    };
    if let Err(reason) = check_against_state(rules, pdu, &state_before) {
        reject(svc, pdu, &reason).await;
        return Err(Placement::Rejected(reason));
    }
    // Where it sorts, and whether it is late (rooms::topo): after its prev events here; a
    // live one also at or above everything the room shows.
    let prevs: Vec<String> = pdu.prev_events.iter().map(ToString::to_string).collect();
    let max_prev = svc.store.max_topo_of(&prevs).await?;
    let top = svc.store.max_extremity_topo(room_id.as_str()).await?;
    let claimed = pdu.depth as i64;
    let late = match arrival {
        Arrival::Live => false,
        Arrival::Fetched => top.is_some(),
        Arrival::Pending => top.is_some_and(|top| topo::of_received(claimed, max_prev, None, true) < top),
    };
    let mut event = new_event(pdu);
    event.topo = topo::of_received(claimed, max_prev, top, late);
    event.late = late;
    if before.is_some() {
        let current = current_entries(svc, room_id, &wanted).await?;
        if let Err(reason) = check_against_state(rules, pdu, &current) {
            // Soft failure: part of the DAG (a later event may build on it, and its state takes
            // part in resolution then), never shown to clients nor a forward extremity.
            tracing::info!(event_id = %pdu.event_id, %reason, "PDU soft-failed");
            svc.store.insert_soft_failed(&event, before_group).await?;
            return Ok(Fate::SoftFailed);
        }
    }

    // Known as an outlier (fetched to check another event): it enters the timeline now.
    svc.store.drop_outlier(pdu.event_id.as_str()).await?;
    if late {
        tracing::info!(event_id = %pdu.event_id, depth = event.topo, "late event placed in the DAG");
    }
    let may_redact = may_redact(rules, &state_before, pdu);
    event.redacts = redaction_target(svc, pdu, room_id, may_redact).await?;
    apply_awaiting_redactions(svc, pdu, room_id).await?;
    let fate = if held_back(pdu, &event) {
        tracing::info!(event_id = %pdu.event_id, "a redaction that does not apply: held back from clients");
        svc.store.insert_held_back(&event, before_group).await?;
        Fate::HeldBack
    } else {
        let mut batch = [Appending {
            event,
            previous_group: Some(before_group),
            push: Vec::new(),
            outbound: Vec::new(),
        }];
        timeline::persist(svc, &mut batch).await?;
        Fate::Timeline
    };

    let groups = svc.store.extremity_state_groups(room_id.as_str()).await?;
    if groups.len() > 1 {
        let mut states = Vec::with_capacity(groups.len());
        for g in &groups {
            states.push(svc.store.state_of_group(*g).await?);
        }
        let resolved = resolve::resolve(svc, rules, &states).await?;
        let entries = state_entries(svc, &resolved).await?;
        svc.store.set_current_state(room_id.as_str(), &entries).await?;
    }
    Ok(fate)
}

/// The checks of a PDU that joins the timeline without the state before it (a backfilled one:
/// its prev events are older and not here): steps 1–4 of `accept` — format, signatures,
/// content hash (a mismatch keeps it redacted), the room's server ACL, auth against its own
/// auth events (missing ones fetched from `origin` within `budget`, kept as outliers; failing
/// that, stored as rejected). The state before it and the current state are not consulted.
pub async fn check_without_state(
    svc: &Services,
    origin: &ServerName,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    raw: &RawValue,
    budget: &mut Budget,
) -> Result<Pdu, String> {
    let object = pdu_checks::parse(raw).map_err(|e| e.to_string())?;
    let checked = verify(svc, object, rules).await?;
    let pdu = checked.pdu;
    if checked.redacted {
        tracing::info!(event_id = %pdu.event_id, "content hash mismatch: the event is kept redacted");
    }
    let of_room = match &pdu.room_id {
        Some(r) => r.as_str() == room_id.as_str(),
        None => {
            is_v12_create(rules, &pdu)
                && hearth_federation::pdu::room_id_from_create_event(&pdu.event_id).as_str()
                    == room_id.as_str()
        }
    };
    if !of_room {
        return Err(format!("{} is not an event of {room_id}", pdu.event_id));
    }
    if let Ok(sender_server) = <&ServerName>::try_from(pdu.sender.server_name().as_str()) {
        super::membership::check_acl(svc, room_id, sender_server)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut wanted = pdu.auth_events.clone();
    wanted.extend(implied_create(rules, room_id).filter(|c| *c != pdu.event_id));
    let auth = ensure_events(svc, origin, rules, room_id, &wanted, budget, 0).await?;
    if let Err(reason) = check_with_auth_events(rules, &pdu, &auth) {
        reject(svc, &pdu, &reason).await;
        return Err(format!("rejected: {reason}"));
    }
    Ok(pdu)
}

/// Step 5 for an event whose state before it was worked out elsewhere (a backfilled one):
/// the auth rules against `before`; failing them, the event is stored as rejected and the
/// reason returned. Passing, whether the event may redact (`may_redact`) in that state.
pub(crate) async fn check_against_state_before(
    svc: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    before: &StateMap,
) -> Result<Result<bool, String>> {
    let wanted = match wanted_state(rules, pdu) {
        Ok(wanted) => wanted,
        Err(Placement::Rejected(reason)) => {
            reject(svc, pdu, &reason).await;
            return Ok(Err(reason));
        }
        Err(Placement::Error(e)) => return Err(e),
    };
    let state = entries_of(svc, before, &wanted).await?;
    if let Err(reason) = check_against_state(rules, pdu, &state) {
        reject(svc, pdu, &reason).await;
        return Ok(Err(reason));
    }
    Ok(Ok(may_redact(rules, &state, pdu)))
}

/// The room's version and rules; an error for rooms this server does not know.
pub async fn room_rules(svc: &Services, room_id: &RoomId) -> Result<(RoomVersionId, RoomVersionRules)> {
    let room = svc
        .store
        .room(room_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("This server does not know the room"))?;
    let version = RoomVersionId::try_from(room.room_version.as_str()).map_err(Error::internal)?;
    let rules = rules_for(&version).ok_or_else(|| Error::internal("unsupported room version"))?;
    Ok((version, rules))
}

/// Format, signatures (keys of the servers that must sign it, fetched as needed) and hash.
pub async fn verify(
    svc: &Services,
    object: CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<pdu_checks::Checked, String> {
    let needed = pdu_checks::keys_needed(&object, rules).map_err(|e| e.to_string())?;
    let mut map = PublicKeyMap::new();
    for (server, key_ids) in needed {
        let mut set = BTreeMap::new();
        for key_id in key_ids.iter().take(4) {
            match keys::request_key(svc, &server, key_id).await {
                Ok(Some(key)) => {
                    set.insert(key_id.clone(), key);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("cannot get {server}'s keys: {e}")),
            }
        }
        if set.is_empty() {
            return Err(format!("no known key of {server} signed the event"));
        }
        map.insert(server.to_string(), set);
    }
    pdu_checks::check(object, rules, &map).map_err(|e| e.to_string())
}

/// Most other servers of the room asked for a prev event its origin did not give.
const MAX_OTHER_SERVERS_ASKED: usize = 3;

/// A prev event from `origin`, else from a few of the room's other servers (the origin may be
/// down while they have it).
async fn fetch_from_room(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    event_id: &EventId,
) -> Result<Pdu, String> {
    let first = match fetch_event(svc, origin, rules, event_id).await {
        Ok(pdu) => return Ok(pdu),
        Err(e) => e,
    };
    let others = super::remote_membership::remote_servers(svc, room_id)
        .await
        .map_err(|e| e.to_string())?;
    for server in others
        .iter()
        .filter(|s| s.as_str() != origin.as_str())
        .take(MAX_OTHER_SERVERS_ASKED)
    {
        match fetch_event(svc, server, rules, event_id).await {
            Ok(pdu) => return Ok(pdu),
            Err(e) => tracing::debug!(%server, %event_id, error = %e, "prev event fetch failed"),
        }
    }
    Err(first)
}

/// Fetches an event from `origin` (`/event/{eventId}`) and checks its signatures and hash.
pub async fn fetch_event(
    svc: &Services,
    origin: &ServerName,
    rules: &RoomVersionRules,
    event_id: &EventId,
) -> Result<Pdu, String> {
    let client = svc.federation.client().map_err(|e| e.to_string())?;
    let path = format!("/_matrix/federation/v1/event/{}", encode(event_id.as_str()));
    let body = client
        .get(origin, &path, Some(&svc.signing_key), EVENT_RESPONSE_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    #[derive(serde::Deserialize)]
    struct Response {
        pdus: Vec<Box<RawValue>>,
    }
    let response: Response = serde_json::from_slice(&body).map_err(|e| format!("bad /event answer: {e}"))?;
    let raw = response.pdus.first().ok_or("empty /event answer")?;
    let object = pdu_checks::parse(raw).map_err(|e| e.to_string())?;
    let checked = verify(svc, object, rules).await?;
    if checked.pdu.event_id != event_id {
        return Err(format!("{origin} answered another event for {event_id}"));
    }
    Ok(checked.pdu)
}

/// What `ensure_events` returns (boxed: it recurses).
type EnsureFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<HashMap<OwnedEventId, Pdu>, String>> + Send + 'a>>;

/// Fetches bounded by count across one PDU's checks (or one backfill's).
#[derive(Default)]
pub struct Budget {
    fetched: usize,
}

/// The events `ids` of `room_id` as PDUs: stored ones (timeline, soft-failed or outlier; never
/// rejected ones), else fetched from `origin`, checked against their own auth events
/// (fetched in turn, up to `MAX_FETCH_DEPTH`) and kept as outliers. An event that cannot be had
/// or is rejected is an error.
pub(crate) fn ensure_events<'a>(
    svc: &'a Services,
    origin: &'a ServerName,
    rules: &'a RoomVersionRules,
    room_id: &'a RoomId,
    ids: &'a [OwnedEventId],
    budget: &'a mut Budget,
    depth: usize,
) -> EnsureFuture<'a> {
    Box::pin(async move {
        let wanted: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let mut out = HashMap::new();
        for row in svc.store.events(&wanted).await.map_err(|e| e.to_string())? {
            if row.room_id != room_id.as_str() {
                return Err(format!("auth event {} is of another room", row.event_id));
            }
            let pdu = pdu_of(&row).map_err(|e| e.to_string())?;
            out.insert(pdu.event_id.clone(), pdu);
        }
        for id in ids {
            if out.contains_key(id) {
                continue;
            }
            if let Some((kind, _)) = svc.store.unserved(id.as_str()).await.map_err(|e| e.to_string())?
                && kind == "rejected"
            {
                return Err(format!("auth event {id} was {kind}"));
            }
            if depth >= MAX_FETCH_DEPTH || budget.fetched >= MAX_FETCHED {
                return Err(format!("auth event {id} is missing (fetch limit reached)"));
            }
            budget.fetched += 1;
            let pdu = fetch_event(svc, origin, rules, id).await?;
            if pdu.room_id.as_deref() != Some(room_id) && !is_v12_create(rules, &pdu) {
                return Err(format!("auth event {id} is of another room"));
            }
            let mut wanted = pdu.auth_events.clone();
            wanted.extend(implied_create(rules, room_id).filter(|c| *c != pdu.event_id));
            let auth = ensure_events(svc, origin, rules, room_id, &wanted, budget, depth + 1).await?;
            if let Err(reason) = check_with_auth_events(rules, &pdu, &auth) {
                reject(svc, &pdu, &reason).await;
                return Err(format!("auth event {id} is rejected: {reason}"));
            }
            let mut event = new_event(&pdu);
            event.room_id = room_id.to_string();
            svc.store
                .insert_outliers(&[event])
                .await
                .map_err(|e| e.to_string())?;
            // An outlier's history visibility counts in `RoomAccess`: cached reads are stale.
            svc.sync_engine.room_state_touched(room_id.as_str());
            out.insert(id.clone(), pdu);
        }
        Ok(out)
    })
}

/// The create event a room version 12 event's rules read without naming it in `auth_events`:
/// its ID is the room ID's hash.
fn implied_create(rules: &RoomVersionRules, room_id: &RoomId) -> Option<OwnedEventId> {
    if !rules.authorization.room_create_event_id_as_room_id {
        return None;
    }
    EventId::parse(format!("${}", room_id.as_str().trim_start_matches('!'))).ok()
}

fn is_v12_create(rules: &RoomVersionRules, pdu: &Pdu) -> bool {
    rules.authorization.room_create_event_id_as_room_id && pdu.event_type.to_string() == "m.room.create"
}

/// The authorization rules with the event's own auth events as the state (spec step 4).
pub fn check_with_auth_events(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    auth: &HashMap<OwnedEventId, Pdu>,
) -> Result<(), String> {
    for id in &pdu.auth_events {
        if !auth.contains_key(id) {
            return Err(format!("auth event {id} is unknown"));
        }
    }
    let create = pdu.room_id.as_deref().and_then(|r| implied_create(rules, r));
    let state: HashMap<(String, String), &Pdu> = auth
        .values()
        .filter(|p| pdu.auth_events.contains(&p.event_id) || create.as_ref() == Some(&p.event_id))
        .filter_map(|p| Some(((p.event_type.to_string(), p.state_key.clone()?), p)))
        .collect();
    check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| auth.get(id))
        .map_err(|e| e.to_string())?;
    check_state_dependent_auth_rules(&rules.authorization, pdu, |t, k: &str| {
        state.get(&(t.to_string(), k.to_owned())).copied()
    })
    .map_err(|e| e.to_string())
}

/// The state-dependent rules against a state (the state before the event, or the current one).
fn check_against_state(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &HashMap<(String, String), Pdu>,
) -> Result<(), String> {
    check_state_dependent_auth_rules(&rules.authorization, pdu, |t, k: &str| {
        state.get(&(t.to_string(), k.to_owned()))
    })
    .map_err(|e| e.to_string())
}

/// The state keys the auth rules read for this event (its auth types and the create event).
fn wanted_state(rules: &RoomVersionRules, pdu: &Pdu) -> Result<Vec<(String, String)>, Placement> {
    let types = auth_types_for_event(
        &pdu.event_type,
        &pdu.sender,
        pdu.state_key.as_deref(),
        &pdu.content,
        &rules.authorization,
    )
    .map_err(|e| Placement::Rejected(e.to_string()))?;
    let mut wanted: Vec<(String, String)> = types
        .into_iter()
        .map(|(t, k)| (t.to_string(), k))
        .chain([("m.room.create".to_owned(), String::new())])
        .collect();
    wanted.sort();
    wanted.dedup();
    Ok(wanted)
}

/// Entries of the room's current state, as PDUs.
async fn current_entries(
    svc: &Services,
    room_id: &RoomId,
    wanted: &[(String, String)],
) -> Result<HashMap<(String, String), Pdu>> {
    let mut out = HashMap::new();
    for (key, event_id, json) in svc.store.current_state_entries(room_id.as_str(), wanted).await? {
        let pdu = Pdu::from_stored(EventId::parse(&event_id).map_err(Error::internal)?, &json)
            .map_err(Error::internal)?;
        out.insert(key, pdu);
    }
    Ok(out)
}

/// Entries of a state map, as PDUs.
async fn entries_of(
    svc: &Services,
    map: &StateMap,
    wanted: &[(String, String)],
) -> Result<HashMap<(String, String), Pdu>> {
    let ids: Vec<String> = wanted.iter().filter_map(|k| map.get(k).cloned()).collect();
    let mut out = HashMap::new();
    for row in svc.store.events(&ids).await? {
        let pdu = pdu_of(&row)?;
        if let Some(key) = pdu.state_key.clone() {
            out.insert((pdu.event_type.to_string(), key), pdu);
        }
    }
    Ok(out)
}

/// A state map as entries to store, with each member event's membership.
pub async fn state_entries(svc: &Services, map: &StateMap) -> Result<Vec<StateEntry>> {
    let ids: Vec<String> = map.values().cloned().collect();
    let memberships: HashMap<String, Option<String>> = svc
        .store
        .events(&ids)
        .await?
        .into_iter()
        .map(|row| {
            let membership = (row.event_type == "m.room.member")
                .then(|| membership_of(&row.json))
                .flatten();
            (row.event_id, membership)
        })
        .collect();
    Ok(map
        .iter()
        .map(|((t, k), id)| StateEntry {
            event_type: t.clone(),
            state_key: k.clone(),
            event_id: id.clone(),
            membership: memberships.get(id).cloned().flatten(),
        })
        .collect())
}

fn membership_of(json: &str) -> Option<String> {
    let value: Value = serde_json::from_str(json).ok()?;
    value["content"]["membership"].as_str().map(ToOwned::to_owned)
}

/// Stores a rejected event (never served, never a prev or auth event, outside the DAG).
async fn reject(svc: &Services, pdu: &Pdu, reason: &str) {
    let room_id = pdu.room_id.as_ref().map(|r| r.to_string()).unwrap_or_default();
    if let Err(error) = svc
        .store
        .insert_unserved(
            pdu.event_id.as_str(),
            &room_id,
            "rejected",
            reason,
            &pdu.to_canonical_string(),
            now_ms(),
        )
        .await
    {
        tracing::warn!(%error, event_id = %pdu.event_id, "storing a rejected event failed");
    }
}

/// The `redacts` column of a received redaction, which is what applies it (room versions 3+,
/// "Handling redactions"): its target when the redaction's sender has the redact level in the
/// state before the redaction (`may_redact`), or when the target is an event of the same room
/// sent by a user of the redaction sender's server. A target not here yet is named when the
/// sender may redact (it applies once the target arrives in that room); otherwise the
/// redaction waits for it (`apply_awaiting_redactions`).
pub(crate) async fn redaction_target(
    svc: &Services,
    pdu: &Pdu,
    room_id: &RoomId,
    may_redact: bool,
) -> Result<Option<String>> {
    let Some(target) = &pdu.redacts else {
        return Ok(None);
    };
    if pdu.state_key.is_some() {
        return Ok(None);
    }
    let Some(row) = svc.store.event(target.as_str()).await? else {
        if may_redact {
            return Ok(Some(target.to_string()));
        }
        svc.store
            .await_redaction_target(
                target.as_str(),
                pdu.event_id.as_str(),
                room_id.as_str(),
                pdu.sender.server_name().as_str(),
                now_ms(),
            )
            .await?;
        return Ok(None);
    };
    let same_server =
        UserId::parse(row.sender.as_str()).is_ok_and(|s| s.server_name() == pdu.sender.server_name());
    Ok((row.room_id == room_id.as_str() && (may_redact || same_server)).then(|| target.to_string()))
}

/// Whether a received redaction is held back from clients: it does not apply (`redaction_target`
/// named no target: its sender lacks the redact level and the target is not of its server, or
/// the target is not here yet). The spec: a redaction is not sent to clients until it can be
/// applied. One waiting for its target is released when that target arrives and it applies
/// (`Store::apply_awaiting_redactions`).
pub(crate) fn held_back(pdu: &Pdu, event: &NewEvent) -> bool {
    pdu.event_type.to_string() == "m.room.redaction"
        && pdu.state_key.is_none()
        && pdu.redacts.is_some()
        && event.redacts.is_none()
}

/// Whether a redaction's sender has the room's redact level in `state` (the state before the
/// redaction; it holds the create and power levels events, which the auth rules read).
pub(crate) fn may_redact(
    rules: &RoomVersionRules,
    state: &HashMap<(String, String), Pdu>,
    pdu: &Pdu,
) -> bool {
    if pdu.redacts.is_none() {
        return false;
    }
    let Some(create) = state.get(&("m.room.create".to_owned(), String::new())) else {
        return false;
    };
    let levels = state
        .get(&("m.room.power_levels".to_owned(), String::new()))
        .map(Pdu::content_value);
    let level = power::user_level(
        &rules.authorization,
        create.sender.as_str(),
        &create.content_value(),
        levels.as_ref(),
        pdu.sender.as_str(),
    );
    level >= power::action_level(levels.as_ref(), "redact", 50)
}

/// `may_redact` for an event checked without the state before it (a backfilled one): judged by
/// the power levels its auth events name, which the auth rules found it allowed by, and the
/// room's create event.
pub(crate) async fn may_redact_by_auth_events(
    svc: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    room_id: &RoomId,
) -> Result<bool> {
    if pdu.redacts.is_none() {
        return Ok(false);
    }
    let ids: Vec<String> = pdu.auth_events.iter().map(ToString::to_string).collect();
    let mut state = HashMap::new();
    for row in svc.store.events(&ids).await? {
        let auth = pdu_of(&row)?;
        if let Some(key) = auth.state_key.clone() {
            state.insert((auth.event_type.to_string(), key), auth);
        }
    }
    let create = ("m.room.create".to_owned(), String::new());
    if !state.contains_key(&create) {
        state.extend(current_entries(svc, room_id, &[create]).await?);
    }
    Ok(may_redact(rules, &state, pdu))
}

/// An event entering the timeline: redactions that arrived before it and wait for it apply now
/// if they came from its sender's server.
pub(crate) async fn apply_awaiting_redactions(svc: &Services, pdu: &Pdu, room_id: &RoomId) -> Result<()> {
    let applied = svc
        .store
        .apply_awaiting_redactions(
            pdu.event_id.as_str(),
            room_id.as_str(),
            pdu.sender.server_name().as_str(),
        )
        .await?;
    if applied > 0 {
        tracing::info!(event_id = %pdu.event_id, applied, "redactions that arrived first now apply");
    }
    Ok(())
}

/// A state event in the stripped form kept with remote invites and knocks (what `/sync` shows
/// for a room the user is not in).
pub fn stripped_state(event: &Value) -> Value {
    serde_json::json!({
        "type": event["type"],
        "state_key": event["state_key"],
        "sender": event["sender"],
        "content": event["content"],
    })
}

/// The columns of a received PDU.
pub fn new_event(pdu: &Pdu) -> NewEvent {
    let content = pdu.content_value();
    let relation = content.get("m.relates_to");
    let field = |key: &str| {
        relation
            .and_then(|r| r.get(key))
            .and_then(Value::as_str)
            .map(ToOwned::to_owned)
    };
    let event_type = pdu.event_type.to_string();
    NewEvent {
        event_id: pdu.event_id.to_string(),
        room_id: pdu
            .room_id
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_else(|| hearth_federation::pdu::room_id_from_create_event(&pdu.event_id).to_string()),
        state_key: pdu.state_key.clone(),
        sender: pdu.sender.to_string(),
        depth: pdu.depth as i64,
        // Its claimed depth until `place` computes where it sorts.
        topo: pdu.depth as i64,
        late: false,
        origin_server_ts: u64::from(pdu.origin_server_ts.0) as i64,
        redacts: None,
        rel_type: field("rel_type"),
        relates_to: field("event_id"),
        relation_key: field("key").filter(|_| field("rel_type").as_deref() == Some("m.annotation")),
        prev_events: pdu.prev_events.iter().map(ToString::to_string).collect(),
        membership: (event_type == "m.room.member")
            .then(|| {
                content
                    .get("membership")
                    .and_then(Value::as_str)
                    .map(ToOwned::to_owned)
            })
            .flatten(),
        event_type,
        txn: None,
        json: pdu.to_canonical_string(),
    }
}

/// Percent-encodes a path segment (event and room IDs carry `$`, `!`, `:`).
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
