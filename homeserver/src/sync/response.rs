//! The `/sync` response, typed. Our own structs rather than ruma's `sync_events::v3::Response`:
//! ruma leaves out empty sections and lists, and clients are sent them (`"events": []`,
//! `"limited": false`, the empty room maps); the events themselves are formatted client events.

use std::{collections::BTreeMap, sync::Arc};

use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Value, value::RawValue};

#[derive(Serialize)]
pub struct SyncResponse {
    pub next_batch: String,
    pub rooms: Rooms,
    pub account_data: Events,
    pub presence: Events,
    pub to_device: Events,
    pub device_lists: DeviceLists,
    pub device_one_time_keys_count: BTreeMap<String, u64>,
    pub device_unused_fallback_key_types: Vec<String>,
}

#[derive(Serialize, Default)]
pub struct Rooms {
    pub join: BTreeMap<String, JoinedRoom>,
    pub invite: BTreeMap<String, InvitedRoom>,
    pub leave: BTreeMap<String, LeftRoom>,
    pub knock: BTreeMap<String, KnockedRoom>,
}

/// A list of events: `{"events": [...]}`.
#[derive(Serialize)]
pub struct Events<T = Value> {
    pub events: Vec<T>,
}

impl<T> Default for Events<T> {
    fn default() -> Self {
        Self { events: Vec::new() }
    }
}

impl<T> Events<T> {
    pub fn new(events: Vec<T>) -> Self {
        Self { events }
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[derive(Serialize, Default)]
pub struct DeviceLists {
    pub changed: Vec<String>,
    pub left: Vec<String>,
}

#[derive(Serialize)]
pub struct Timeline {
    pub events: Vec<SyncEvent>,
    pub limited: bool,
    pub prev_batch: String,
}

/// A room's summary; its fields are left out when unchanged since the token (the spec allows it).
#[derive(Serialize, Default)]
pub struct Summary {
    #[serde(rename = "m.heroes", skip_serializing_if = "Option::is_none")]
    pub heroes: Option<Vec<String>>,
    #[serde(rename = "m.joined_member_count", skip_serializing_if = "Option::is_none")]
    pub joined_member_count: Option<usize>,
    #[serde(rename = "m.invited_member_count", skip_serializing_if = "Option::is_none")]
    pub invited_member_count: Option<usize>,
}

#[derive(Serialize, Clone, Copy)]
pub struct UnreadCounts {
    pub notification_count: u64,
    pub highlight_count: u64,
}

/// A room's timeline and state: what `join` and `leave` share.
pub struct RoomSection {
    pub timeline: Timeline,
    pub state: Events<SyncEvent>,
    /// Only when the room's timeline was read (not for a room with only ephemeral news).
    pub summary: Option<Summary>,
}

#[derive(Serialize)]
pub struct JoinedRoom {
    pub timeline: Timeline,
    pub state: Events<SyncEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    pub ephemeral: Events,
    pub account_data: Events,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_notifications: Option<UnreadCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_thread_notifications: Option<BTreeMap<String, UnreadCounts>>,
}

#[derive(Serialize)]
pub struct LeftRoom {
    pub timeline: Timeline,
    pub state: Events<SyncEvent>,
    pub account_data: Events,
}

#[derive(Serialize)]
pub struct InvitedRoom {
    pub invite_state: Events,
}

#[derive(Serialize)]
pub struct KnockedRoom {
    pub knock_state: Events,
}

/// A room event in a response (ClientEventWithoutRoomID): formatted for this receiver alone, or
/// the formatting every receiver shares plus the `unsigned` fields that are this receiver's.
/// A shared event is written out without being copied or serialized again: one serialization
/// per event, not per receiver.
pub enum SyncEvent {
    Own(Value),
    Shared {
        event: Arc<SharedEvent>,
        age: i64,
        transaction_id: Option<String>,
    },
}

impl SyncEvent {
    /// The event as a JSON value (to add to it what only this receiver gets).
    pub fn into_value(self) -> Value {
        match self {
            Self::Own(value) => value,
            shared => serde_json::to_value(&shared).unwrap_or_default(),
        }
    }
}

impl Serialize for SyncEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (event, age, transaction_id) = match self {
            Self::Own(value) => return value.serialize(serializer),
            Self::Shared {
                event,
                age,
                transaction_id,
            } => (event, age, transaction_id),
        };
        let mut map = serializer.serialize_map(Some(event.fields.len() + 1))?;
        for (key, raw) in &event.fields {
            map.serialize_entry(key, raw)?;
        }
        map.serialize_entry(
            "unsigned",
            &Unsigned {
                shared: &event.unsigned,
                age: *age,
                transaction_id: transaction_id.as_deref(),
            },
        )?;
        map.end()
    }
}

/// `unsigned`: the shared fields, `age`, and the sender's own `transaction_id`.
struct Unsigned<'a> {
    shared: &'a Map<String, Value>,
    age: i64,
    transaction_id: Option<&'a str>,
}

impl Serialize for Unsigned<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.shared {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("age", &self.age)?;
        if let Some(txn) = self.transaction_id {
            map.serialize_entry("transaction_id", txn)?;
        }
        map.end()
    }
}

/// A room event formatted for every receiver: each top-level field serialized once, without
/// `room_id` (events in a room's section leave it out) and with `unsigned` kept apart, less its
/// per-receiver fields (`age`, `transaction_id`).
pub struct SharedEvent {
    fields: Vec<(String, Box<RawValue>)>,
    unsigned: Map<String, Value>,
}

impl SharedEvent {
    /// None when `formatted` is not a JSON object.
    pub fn new(formatted: Value) -> Option<Self> {
        let Value::Object(mut object) = formatted else {
            return None;
        };
        object.remove("room_id");
        let mut unsigned = match object.remove("unsigned") {
            Some(Value::Object(unsigned)) => unsigned,
            _ => Map::new(),
        };
        unsigned.remove("age");
        unsigned.remove("transaction_id");
        let fields = object
            .into_iter()
            .map(|(key, value)| Some((key, serde_json::value::to_raw_value(&value).ok()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { fields, unsigned })
    }
}
