//! Creating local events: build the PDU, check it against the room version's authorization
//! rules, append it to the log, wake the waiters.
//!
//! Appends are serialized by one lock so that stream positions are handed out in commit order
//! (a reader that has seen position N has seen everything before N). Several processes will need
//! the lock to move into the database; see ARCHITECTURE.md.

use std::collections::HashMap;

use hearth_federation::{
    Pdu, PduError,
    pdu::{PduTemplate, room_id_from_create_event},
    rules_for,
};
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, UInt, UserId,
    events::TimelineEventType,
    state_res::{auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules},
};
use serde_json::{Value, value::to_raw_value};
use tokio::sync::Mutex;

use crate::{
    error::{ApiError, ApiResult},
    services::{Services, now_ms},
    store::{EventRow, NewEvent, RoomRow, Txn},
};

/// What a caller wants in a new event.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: Value,
    /// For `m.room.redaction` in room versions before 11 (later ones use `content.redacts`).
    pub redacts: Option<OwnedEventId>,
}

impl EventSpec {
    pub fn state(event_type: &str, state_key: &str, content: Value) -> Self {
        Self {
            event_type: event_type.into(),
            state_key: Some(state_key.into()),
            content,
            redacts: None,
        }
    }

    pub fn message(event_type: &str, content: Value) -> Self {
        Self {
            event_type: event_type.into(),
            state_key: None,
            content,
            redacts: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Appended {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub stream_ordering: i64,
}

#[derive(Default)]
pub struct Timeline {
    write_lock: Mutex<()>,
}

/// Most prev_events a new event references.
const MAX_PREV_EVENTS: usize = 20;

/// The room as the next event sees it: what is stored, plus events built in this batch but not
/// stored yet. State entries read from the database are kept, so a batch reads each once.
struct Draft {
    room_id: Option<OwnedRoomId>,
    stored: bool,
    state: HashMap<(String, String), Pdu>,
    /// prev_events and their greatest depth, once known.
    extremities: Option<(Vec<OwnedEventId>, u64)>,
}

impl Draft {
    fn stored(room_id: &RoomId) -> Self {
        Self {
            room_id: Some(room_id.to_owned()),
            stored: true,
            state: HashMap::new(),
            extremities: None,
        }
    }

    fn new_room(room_id: Option<OwnedRoomId>) -> Self {
        Self {
            room_id,
            stored: false,
            state: HashMap::new(),
            extremities: Some((Vec::new(), 0)),
        }
    }
}

/// What a new room starts with.
pub struct NewRoom<'a> {
    pub version: &'a RoomVersionId,
    pub creator: &'a UserId,
    /// Content of the `m.room.create` event.
    pub content: Value,
    /// Events the creator sends right after, in order.
    pub initial: Vec<EventSpec>,
    pub alias: Option<&'a str>,
    pub is_public: bool,
}

/// An event built and authorized, ready to store.
struct Built {
    new: NewEvent,
    event_id: OwnedEventId,
}

impl Timeline {
    /// Appends a local event to an existing room.
    pub async fn append(
        &self,
        svc: &Services,
        room_id: &RoomId,
        sender: &UserId,
        spec: EventSpec,
        txn: Option<Txn>,
    ) -> ApiResult<Appended> {
        let _guard = self.write_lock.lock().await;
        if let Some(txn) = &txn
            && let Some(existing) = svc.store.event_for_txn(sender.as_str(), txn).await?
        {
            let row = svc
                .store
                .event(&existing)
                .await?
                .ok_or_else(|| ApiError::internal("txn event vanished"))?;
            return Ok(Appended {
                event_id: parse_event_id(&existing)?,
                room_id: room_id.to_owned(),
                stream_ordering: row.stream_ordering,
            });
        }
        let room = svc
            .store
            .room(room_id.as_str())
            .await?
            .ok_or_else(|| ApiError::not_found("Unknown room"))?;
        let version = RoomVersionId::try_from(room.room_version.as_str()).map_err(ApiError::internal)?;
        let mut draft = Draft::stored(room_id);
        let built = self.build(svc, &mut draft, &version, sender, spec, txn).await?;
        let stream_ordering = svc.store.append_event(&built.new).await?;
        crate::push::on_event_appended(svc, &built.new, stream_ordering).await;
        svc.notifier
            .notify(notification_keys(std::slice::from_ref(&built.new)));
        Ok(Appended {
            event_id: built.event_id,
            room_id: room_id.to_owned(),
            stream_ordering,
        })
    }

    /// Creates a room: its `m.room.create` event with `content`, then `initial` events sent by
    /// `creator`, all authorized in turn and stored in one transaction — a failure leaves no
    /// half-made room. Events after the create event that the rules refuse are the request's
    /// fault: `400 M_INVALID_ROOM_STATE`.
    pub async fn create_room(&self, svc: &Services, room: NewRoom<'_>) -> ApiResult<OwnedRoomId> {
        let NewRoom {
            version,
            creator,
            content,
            initial,
            alias,
            is_public,
        } = room;
        let _guard = self.write_lock.lock().await;
        let rules = rules_for(version)
            .ok_or_else(|| ApiError::unsupported_room_version("Unsupported room version"))?;
        let room_id = if rules.authorization.room_create_event_id_as_room_id {
            None
        } else {
            Some(new_room_id(svc.server_name())?)
        };
        let mut draft = Draft::new_room(room_id);
        let create = EventSpec::state("m.room.create", "", content);
        let mut events = vec![
            self.build(svc, &mut draft, version, creator, create, None)
                .await?
                .new,
        ];
        for spec in initial {
            let built = self
                .build(svc, &mut draft, version, creator, spec, None)
                .await
                .map_err(|e| {
                    if e.errcode == "M_FORBIDDEN" {
                        ApiError::invalid_room_state(e.message)
                    } else {
                        e
                    }
                })?;
            events.push(built.new);
        }
        let room_id = draft.room_id.expect("set by the create event");
        let row = RoomRow {
            room_id: room_id.to_string(),
            room_version: version.to_string(),
            creator: creator.to_string(),
            is_public,
        };
        if !svc
            .store
            .create_room_with_events(&row, alias, &events, now_ms())
            .await?
        {
            return Err(ApiError::room_in_use("Room alias already taken"));
        }
        crate::push::on_room_created(svc, &events).await;
        svc.notifier.notify(notification_keys(&events));
        Ok(room_id)
    }

    /// Builds the next event of a draft room: PDU, hashes, signature, ID, and the checks of the
    /// room version's authorization rules; the draft then includes it.
    async fn build(
        &self,
        svc: &Services,
        draft: &mut Draft,
        version: &RoomVersionId,
        sender: &UserId,
        spec: EventSpec,
        txn: Option<Txn>,
    ) -> ApiResult<Built> {
        let rules = rules_for(version)
            .ok_or_else(|| ApiError::unsupported_room_version("Unsupported room version"))?;
        let event_type = TimelineEventType::from(spec.event_type.as_str());
        let raw_content = to_raw_value(&spec.content).map_err(|e| ApiError::bad_json(e.to_string()))?;
        let auth_types = auth_types_for_event(
            &event_type,
            sender,
            spec.state_key.as_deref(),
            &raw_content,
            &rules.authorization,
        )
        .map_err(ApiError::bad_json)?;

        // The state the rules read: the auth event types, plus the create event (which
        // room version 12 leaves out of auth_events but the rules still consult).
        let mut wanted: Vec<(String, String)> = auth_types
            .iter()
            .map(|(t, k)| (t.to_string(), k.clone()))
            .chain([("m.room.create".to_owned(), String::new())])
            .filter(|key| !draft.state.contains_key(key))
            .collect();
        wanted.sort();
        wanted.dedup();
        if draft.stored
            && let Some(room_id) = &draft.room_id
            && !wanted.is_empty()
        {
            for (key, event_id, json) in svc.store.current_state_entries(room_id.as_str(), &wanted).await? {
                let pdu = Pdu::from_stored(parse_event_id(&event_id)?, &json).map_err(ApiError::internal)?;
                draft.state.insert(key, pdu);
            }
        }
        let auth_events: Vec<OwnedEventId> = auth_types
            .iter()
            .filter_map(|(t, k)| draft.state.get(&(t.to_string(), k.clone())))
            .map(|pdu| pdu.event_id.clone())
            .collect();

        if draft.extremities.is_none()
            && let Some(room_id) = &draft.room_id
        {
            let stored = svc.store.forward_extremities(room_id.as_str()).await?;
            let depth = stored.iter().map(|(_, d)| *d).max().unwrap_or(0) as u64;
            let prev = stored
                .into_iter()
                .take(MAX_PREV_EVENTS)
                .map(|(id, _)| parse_event_id(&id))
                .collect::<ApiResult<Vec<_>>>()?;
            draft.extremities = Some((prev, depth));
        }
        let (prev_events, max_depth) = draft.extremities.clone().unwrap_or_default();

        let pdu = PduTemplate {
            room_id: draft.room_id.clone(),
            sender: sender.to_owned(),
            event_type: spec.event_type.clone(),
            state_key: spec.state_key.clone(),
            content: spec.content.clone(),
            prev_events,
            auth_events,
            depth: max_depth + 1,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(now_ms() as u64).unwrap_or_default()),
            redacts: spec.redacts.clone(),
        }
        .finish(&rules, svc.server_name(), &svc.signing_key)
        .map_err(|e| match e {
            PduError::TooLarge => ApiError::too_large("Event is larger than 65536 bytes"),
            e => ApiError::bad_json(e.to_string()),
        })?;

        let by_id: HashMap<&EventId, &Pdu> = draft.state.values().map(|p| (&*p.event_id, p)).collect();
        check_state_independent_auth_rules(&rules.authorization, &pdu, |id: &EventId| by_id.get(id).copied())
            .map_err(|reason| ApiError::forbidden(format!("Event is not allowed: {reason}")))?;
        check_state_dependent_auth_rules(&rules.authorization, &pdu, |t, k: &str| {
            draft.state.get(&(t.to_string(), k.to_owned()))
        })
        .map_err(|reason| ApiError::forbidden(format!("Event is not allowed: {reason}")))?;

        let room_id = draft
            .room_id
            .get_or_insert_with(|| room_id_from_create_event(&pdu.event_id))
            .clone();
        let relation = spec.content.get("m.relates_to");
        let relation_field = |key: &str| {
            relation
                .and_then(|r| r.get(key))
                .and_then(Value::as_str)
                .map(ToOwned::to_owned)
        };
        let new = NewEvent {
            event_id: pdu.event_id.to_string(),
            room_id: room_id.to_string(),
            event_type: spec.event_type.clone(),
            state_key: spec.state_key.clone(),
            sender: sender.to_string(),
            depth: pdu.depth as i64,
            origin_server_ts: u64::from(pdu.origin_server_ts.0) as i64,
            redacts: pdu.redacts.as_ref().map(ToString::to_string),
            rel_type: relation_field("rel_type"),
            relates_to: relation_field("event_id"),
            prev_events: pdu.prev_events.iter().map(ToString::to_string).collect(),
            membership: (spec.event_type == "m.room.member")
                .then(|| {
                    spec.content
                        .get("membership")
                        .and_then(Value::as_str)
                        .map(ToOwned::to_owned)
                })
                .flatten(),
            txn,
            json: pdu.to_canonical_string(),
        };
        draft.extremities = Some((vec![pdu.event_id.clone()], pdu.depth));
        let event_id = pdu.event_id.clone();
        if let Some(state_key) = &spec.state_key {
            draft
                .state
                .insert((spec.event_type.clone(), state_key.clone()), pdu);
        }
        Ok(Built { new, event_id })
    }
}

/// Who to wake for new events: their rooms, and the targets of membership changes.
fn notification_keys(events: &[NewEvent]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for event in events {
        if !keys.contains(&event.room_id) {
            keys.push(event.room_id.clone());
        }
        if let (Some(_), Some(target)) = (&event.membership, &event.state_key) {
            keys.push(target.clone());
        }
    }
    keys
}

/// Reads a stored event as a PDU.
pub fn pdu_of(row: &EventRow) -> ApiResult<Pdu> {
    Pdu::from_stored(parse_event_id(&row.event_id)?, &row.json).map_err(ApiError::internal)
}

fn parse_event_id(id: &str) -> ApiResult<OwnedEventId> {
    EventId::parse(id).map_err(ApiError::internal)
}

/// A random room ID for room versions before 12: `!` + 18 random letters + `:server`.
fn new_room_id(server_name: &str) -> ApiResult<OwnedRoomId> {
    RoomId::parse(format!("!{}:{server_name}", crate::users::random_string(18))).map_err(ApiError::internal)
}
