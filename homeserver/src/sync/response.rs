//! The `/sync` response, typed. Our own structs rather than ruma's `sync_events::v3::Response`:
//! ruma leaves out empty sections and lists, and clients are sent them (`"events": []`,
//! `"limited": false`, the empty room maps); the events themselves are formatted client events.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

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
#[derive(Serialize, Default)]
pub struct Events {
    pub events: Vec<Value>,
}

impl Events {
    pub fn new(events: Vec<Value>) -> Self {
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
    pub events: Vec<Value>,
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
    pub state: Events,
    /// Only when the room's timeline was read (not for a room with only ephemeral news).
    pub summary: Option<Summary>,
}

#[derive(Serialize)]
pub struct JoinedRoom {
    pub timeline: Timeline,
    pub state: Events,
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
    pub state: Events,
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
