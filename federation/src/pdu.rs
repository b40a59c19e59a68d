//! Persistent data units: building, hashing, signing and identifying events per room version.
//!
//! A [`Pdu`] holds the event exactly as it travels between servers (`json`), plus the fields the
//! authorization rules read, parsed once. Event IDs are reference hashes (room versions ≥ 4), and
//! in room version 12 the room ID itself is the reference hash of the `m.room.create` event.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, UInt, UserId,
    canonical_json::{redact, to_canonical_value},
    events::TimelineEventType,
    room_version_rules::RoomVersionRules,
    signatures::{hash_and_sign_event, reference_hash},
};
use serde_json::value::{RawValue as RawJsonValue, to_raw_value};

use crate::keys::SigningKey;

/// Why an event could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("event is not valid JSON for a PDU: {0}")]
    Json(String),
    #[error("event field `{0}` is missing or has the wrong type")]
    Field(&'static str),
    #[error("event exceeds 65536 bytes")]
    TooLarge,
    #[error("signing failed: {0}")]
    Signing(String),
}

/// What a caller decides about a new event; the rest (hashes, signatures, ID) is derived.
#[derive(Debug, Clone)]
pub struct PduTemplate {
    /// `None` only for the `m.room.create` event of a room version 12 room.
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: serde_json::Value,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Top-level `redacts`, for room versions before 11 (later ones carry it in `content`).
    pub redacts: Option<OwnedEventId>,
}

/// A fully formed event, as stored and as sent over federation.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub event_type: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    /// The canonical PDU, with `hashes` and `signatures`.
    pub json: CanonicalJsonObject,
}

/// Largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

impl PduTemplate {
    /// Hashes and signs the event as `server_name`, and derives its event ID.
    pub fn finish(
        self,
        rules: &RoomVersionRules,
        server_name: &str,
        key: &SigningKey,
    ) -> Result<Pdu, PduError> {
        let mut object = CanonicalJsonObject::new();
        let json = |v: serde_json::Value| to_canonical_value(v).map_err(|e| PduError::Json(e.to_string()));
        let ids = |ids: &[OwnedEventId]| {
            CanonicalJsonValue::Array(
                ids.iter()
                    .map(|id| CanonicalJsonValue::String(id.to_string()))
                    .collect(),
            )
        };
        object.insert("auth_events".into(), ids(&self.auth_events));
        object.insert("prev_events".into(), ids(&self.prev_events));
        object.insert("content".into(), json(self.content)?);
        object.insert(
            "depth".into(),
            CanonicalJsonValue::Integer(uint(self.depth)?.into()),
        );
        object.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(self.origin_server_ts.0.into()),
        );
        if let Some(room_id) = &self.room_id {
            object.insert("room_id".into(), CanonicalJsonValue::String(room_id.to_string()));
        }
        object.insert(
            "sender".into(),
            CanonicalJsonValue::String(self.sender.to_string()),
        );
        if let Some(state_key) = &self.state_key {
            object.insert("state_key".into(), CanonicalJsonValue::String(state_key.clone()));
        }
        object.insert("type".into(), CanonicalJsonValue::String(self.event_type.clone()));
        if let Some(redacts) = &self.redacts {
            object.insert("redacts".into(), CanonicalJsonValue::String(redacts.to_string()));
        }

        hash_and_sign_event(server_name, key.pair(), &mut object, &rules.redaction).map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
            e => PduError::Signing(e.to_string()),
        })?;
        if serialized_len(&object) > MAX_PDU_BYTES {
            return Err(PduError::TooLarge);
        }
        let event_id = event_id_of(&object, rules)?;
        Pdu::from_parts(event_id, object)
    }
}

fn uint(n: u64) -> Result<UInt, PduError> {
    UInt::new(n).ok_or(PduError::Field("depth"))
}

fn serialized_len(object: &CanonicalJsonObject) -> usize {
    serde_json::to_vec(object).map(|v| v.len()).unwrap_or(usize::MAX)
}

/// The event ID of a PDU: `$` and its reference hash.
pub fn event_id_of(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId, PduError> {
    let hash = reference_hash(object, rules).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
        e => PduError::Json(e.to_string()),
    })?;
    EventId::parse(format!("${hash}")).map_err(|e| PduError::Json(e.to_string()))
}

/// The room ID a room version 12 `m.room.create` event defines: `!` and the event's hash.
pub fn room_id_from_create_event(create_event_id: &EventId) -> OwnedRoomId {
    let hash = create_event_id.as_str().trim_start_matches('$');
    RoomId::parse(format!("!{hash}")).expect("a reference hash is a valid room ID localpart")
}

impl Pdu {
    /// Reads a stored or received PDU whose event ID is already known.
    pub fn from_parts(event_id: OwnedEventId, json: CanonicalJsonObject) -> Result<Self, PduError> {
        let string = |key: &'static str| match json.get(key) {
            Some(CanonicalJsonValue::String(s)) => Ok(Some(s.as_str())),
            None => Ok(None),
            Some(_) => Err(PduError::Field(key)),
        };
        let required = |key: &'static str| string(key)?.ok_or(PduError::Field(key));
        let ids = |key: &'static str| -> Result<Vec<OwnedEventId>, PduError> {
            match json.get(key) {
                Some(CanonicalJsonValue::Array(values)) => values
                    .iter()
                    .map(|v| match v {
                        CanonicalJsonValue::String(s) => EventId::parse(s).map_err(|_| PduError::Field(key)),
                        _ => Err(PduError::Field(key)),
                    })
                    .collect(),
                _ => Err(PduError::Field(key)),
            }
        };
        let int = |key: &'static str| match json.get(key) {
            Some(CanonicalJsonValue::Integer(i)) => {
                u64::try_from(i64::from(*i)).map_err(|_| PduError::Field(key))
            }
            _ => Err(PduError::Field(key)),
        };

        let room_id = string("room_id")?
            .map(RoomId::parse)
            .transpose()
            .map_err(|_| PduError::Field("room_id"))?;
        let sender = UserId::parse(required("sender")?).map_err(|_| PduError::Field("sender"))?;
        let content = match json.get("content") {
            Some(c @ CanonicalJsonValue::Object(_)) => {
                to_raw_value(c).map_err(|e| PduError::Json(e.to_string()))?
            }
            _ => return Err(PduError::Field("content")),
        };
        // Only a redaction redacts: `redacts` on any other event type is just data.
        let redacts = if required("type")? == "m.room.redaction" {
            match string("redacts")? {
                Some(r) => Some(r.to_owned()),
                None => match json.get("content") {
                    Some(CanonicalJsonValue::Object(c)) => match c.get("redacts") {
                        Some(CanonicalJsonValue::String(r)) => Some(r.clone()),
                        _ => None,
                    },
                    _ => None,
                },
            }
            .map(EventId::parse)
            .transpose()
            .map_err(|_| PduError::Field("redacts"))?
        } else {
            None
        };

        Ok(Self {
            event_id,
            room_id,
            sender,
            origin_server_ts: MilliSecondsSinceUnixEpoch(
                UInt::new(int("origin_server_ts")?).ok_or(PduError::Field("origin_server_ts"))?,
            ),
            event_type: required("type")?.into(),
            content,
            state_key: string("state_key")?.map(ToOwned::to_owned),
            prev_events: ids("prev_events")?,
            auth_events: ids("auth_events")?,
            redacts,
            depth: int("depth")?,
            json,
        })
    }

    /// Reads a PDU from its stored canonical JSON text.
    pub fn from_stored(event_id: OwnedEventId, text: &str) -> Result<Self, PduError> {
        let json: CanonicalJsonObject =
            serde_json::from_str(text).map_err(|e| PduError::Json(e.to_string()))?;
        Self::from_parts(event_id, json)
    }

    /// The canonical JSON text, as stored and sent.
    pub fn to_canonical_string(&self) -> String {
        serde_json::to_string(&self.json).expect("canonical JSON always serializes")
    }

    /// The event with the room version's redaction algorithm applied.
    pub fn redacted_json(&self, rules: &RoomVersionRules) -> CanonicalJsonObject {
        redact(self.json.clone(), &rules.redaction, None).unwrap_or_else(|_| self.json.clone())
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or_default()
    }

    /// `signatures` of the PDU, server name → key ID → signature.
    pub fn signatures(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        if let Some(CanonicalJsonValue::Object(servers)) = self.json.get("signatures") {
            for (server, keys) in servers {
                if let CanonicalJsonValue::Object(keys) = keys {
                    let keys = keys
                        .iter()
                        .filter_map(|(k, v)| match v {
                            CanonicalJsonValue::String(s) => Some((k.clone(), s.clone())),
                            _ => None,
                        })
                        .collect();
                    out.insert(server.clone(), keys);
                }
            }
        }
        out
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.event_type
    }

    fn content(&self) -> &RawJsonValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        false
    }
}
