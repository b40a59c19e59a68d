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
    store::{EventRow, NewEvent},
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

impl Timeline {
    /// Appends a local event to an existing room.
    pub async fn append(
        &self,
        svc: &Services,
        room_id: &RoomId,
        sender: &UserId,
        spec: EventSpec,
        txn: Option<(&str, &str)>,
    ) -> ApiResult<Appended> {
        let _guard = self.write_lock.lock().await;
        if let Some((device_id, txn_id)) = txn
            && let Some(existing) = svc
                .store
                .event_for_txn(sender.as_str(), device_id, txn_id)
                .await?
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
        self.append_locked(svc, Some(room_id), &version, sender, spec, txn)
            .await
    }

    /// Creates a room's `m.room.create` event; returns the new room's ID.
    pub async fn create_room(
        &self,
        svc: &Services,
        version: &RoomVersionId,
        sender: &UserId,
        content: Value,
    ) -> ApiResult<Appended> {
        let _guard = self.write_lock.lock().await;
        let rules = rules_for(version)
            .ok_or_else(|| ApiError::unsupported_room_version("Unsupported room version"))?;
        let room_id = if rules.authorization.room_create_event_id_as_room_id {
            None
        } else {
            Some(new_room_id(svc.server_name())?)
        };
        self.append_locked(
            svc,
            room_id.as_deref(),
            version,
            sender,
            EventSpec::state("m.room.create", "", content),
            None,
        )
        .await
    }

    async fn append_locked(
        &self,
        svc: &Services,
        room_id: Option<&RoomId>,
        version: &RoomVersionId,
        sender: &UserId,
        spec: EventSpec,
        txn: Option<(&str, &str)>,
    ) -> ApiResult<Appended> {
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
            .collect();
        wanted.push(("m.room.create".into(), String::new()));
        wanted.sort();
        wanted.dedup();
        let mut state_pdus: HashMap<(String, String), Pdu> = HashMap::new();
        if let Some(room_id) = room_id {
            for (key, event_id, json) in svc.store.current_state_entries(room_id.as_str(), &wanted).await? {
                let pdu = Pdu::from_stored(parse_event_id(&event_id)?, &json).map_err(ApiError::internal)?;
                state_pdus.insert(key, pdu);
            }
        }
        let auth_events: Vec<OwnedEventId> = auth_types
            .iter()
            .filter_map(|(t, k)| state_pdus.get(&(t.to_string(), k.clone())))
            .map(|pdu| pdu.event_id.clone())
            .collect();

        let (prev_events, depth) = match room_id {
            Some(room_id) => {
                let extremities = svc.store.forward_extremities(room_id.as_str()).await?;
                let depth = extremities.iter().map(|(_, d)| *d).max().unwrap_or(0) + 1;
                let prev = extremities
                    .into_iter()
                    .take(MAX_PREV_EVENTS)
                    .map(|(id, _)| parse_event_id(&id))
                    .collect::<ApiResult<Vec<_>>>()?;
                (prev, depth as u64)
            }
            None => (Vec::new(), 1),
        };

        let pdu = PduTemplate {
            room_id: room_id.map(ToOwned::to_owned),
            sender: sender.to_owned(),
            event_type: spec.event_type.clone(),
            state_key: spec.state_key.clone(),
            content: spec.content.clone(),
            prev_events,
            auth_events,
            depth,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(now_ms() as u64).unwrap_or_default()),
            redacts: spec.redacts.clone(),
        }
        .finish(&rules, svc.server_name(), &svc.signing_key)
        .map_err(|e| match e {
            PduError::TooLarge => ApiError::too_large("Event is larger than 65536 bytes"),
            e => ApiError::bad_json(e.to_string()),
        })?;

        let by_id: HashMap<&EventId, &Pdu> = state_pdus.values().map(|p| (&*p.event_id, p)).collect();
        check_state_independent_auth_rules(&rules.authorization, &pdu, |id: &EventId| by_id.get(id).copied())
            .map_err(|reason| ApiError::forbidden(format!("Event is not allowed: {reason}")))?;
        check_state_dependent_auth_rules(&rules.authorization, &pdu, |t, k: &str| {
            state_pdus.get(&(t.to_string(), k.to_owned()))
        })
        .map_err(|reason| ApiError::forbidden(format!("Event is not allowed: {reason}")))?;

        let room_id = match room_id {
            Some(id) => id.to_owned(),
            None => room_id_from_create_event(&pdu.event_id),
        };
        if spec.event_type == "m.room.create" {
            let creator = sender.as_str();
            svc.store
                .insert_room(room_id.as_str(), version.as_str(), creator, false, now_ms())
                .await?;
        }
        let relation = spec.content.get("m.relates_to");
        let new = NewEvent {
            event_id: pdu.event_id.to_string(),
            room_id: room_id.to_string(),
            event_type: spec.event_type.clone(),
            state_key: spec.state_key.clone(),
            sender: sender.to_string(),
            depth: pdu.depth as i64,
            origin_server_ts: u64::from(pdu.origin_server_ts.0) as i64,
            redacts: pdu.redacts.as_ref().map(ToString::to_string),
            rel_type: relation
                .and_then(|r| r.get("rel_type"))
                .and_then(Value::as_str)
                .map(ToOwned::to_owned),
            relates_to: relation
                .and_then(|r| r.get("event_id"))
                .and_then(Value::as_str)
                .map(ToOwned::to_owned),
            prev_events: pdu.prev_events.iter().map(ToString::to_string).collect(),
            membership: (spec.event_type == "m.room.member")
                .then(|| {
                    spec.content
                        .get("membership")
                        .and_then(Value::as_str)
                        .map(ToOwned::to_owned)
                })
                .flatten(),
            txn: txn.map(|(d, t)| (d.to_owned(), t.to_owned())),
            json: pdu.to_canonical_string(),
        };
        let stream_ordering = svc.store.append_event(&new).await?;
        crate::push::on_event_appended(svc, &new, stream_ordering).await;
        let mut keys = vec![room_id.to_string()];
        if let (Some(_), Some(target)) = (&new.membership, &new.state_key) {
            keys.push(target.clone());
        }
        svc.notifier.notify(keys);
        Ok(Appended {
            event_id: pdu.event_id,
            room_id,
            stream_ordering,
        })
    }
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
