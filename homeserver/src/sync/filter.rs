//! Sync filters (client-server API §Filtering).

use serde::{Deserialize, Serialize};

use crate::store::EventRow;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_fields: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_format: Option<EventFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<EventFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_data: Option<EventFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomFilter>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    Client,
    Federation,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct EventFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senders: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_senders: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RoomFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<RoomEventFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RoomEventFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<RoomEventFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_data: Option<RoomEventFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_leave: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RoomEventFilter {
    #[serde(flatten)]
    pub base: EventFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains_url: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy_load_members: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_redundant_members: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_thread_notifications: Option<bool>,
}

/// Whether `value` passes an allow list (absent: everything) and a deny list (absent: nothing).
fn listed(allow: &Option<Vec<String>>, deny: &Option<Vec<String>>, value: &str) -> bool {
    !deny.as_ref().is_some_and(|d| d.iter().any(|d| d == value))
        && allow.as_ref().is_none_or(|a| a.iter().any(|a| a == value))
}

/// Matches an event type against a filter pattern, where `*` matches any run of characters.
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == event_type,
        Some((prefix, rest)) => {
            let Some(tail) = event_type.strip_prefix(prefix) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| type_matches(rest, &tail[i..]))
        }
    }
}

impl EventFilter {
    pub fn allows(&self, event_type: &str, sender: &str) -> bool {
        if let Some(not) = &self.not_types
            && not.iter().any(|p| type_matches(p, event_type))
        {
            return false;
        }
        if let Some(types) = &self.types
            && !types.iter().any(|p| type_matches(p, event_type))
        {
            return false;
        }
        listed(&self.senders, &self.not_senders, sender)
    }
}

impl RoomEventFilter {
    pub fn allows_event(&self, row: &EventRow) -> bool {
        if !self.base.allows(&row.event_type, &row.sender) || !self.allows_room(&row.room_id) {
            return false;
        }
        match self.contains_url {
            Some(wanted) => {
                let has_url = serde_json::from_str::<serde_json::Value>(&row.json)
                    .ok()
                    .and_then(|v| v.get("content").and_then(|c| c.get("url")).map(|u| u.is_string()))
                    .unwrap_or(false);
                has_url == wanted
            }
            None => true,
        }
    }

    pub fn allows_room(&self, room_id: &str) -> bool {
        listed(&self.rooms, &self.not_rooms, room_id)
    }
}

impl RoomFilter {
    pub fn allows_room(&self, room_id: &str) -> bool {
        listed(&self.rooms, &self.not_rooms, room_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_any_run_of_characters() {
        assert!(type_matches("m.*", "m.room.message"));
        assert!(type_matches("m.room.*", "m.room.member"));
        assert!(type_matches("*.member", "m.room.member"));
        assert!(!type_matches("m.room.*", "m.reaction"));
        assert!(type_matches("m.room.message", "m.room.message"));
        assert!(!type_matches("m.room.message", "m.room.messages"));
    }

    #[test]
    fn not_types_win_over_types() {
        let f = EventFilter {
            types: Some(vec!["m.*".into()]),
            not_types: Some(vec!["m.room.member".into()]),
            ..Default::default()
        };
        assert!(f.allows("m.room.message", "@a:x"));
        assert!(!f.allows("m.room.member", "@a:x"));
        assert!(!f.allows("org.other", "@a:x"));
    }

    #[test]
    fn sender_lists_filter() {
        let f = EventFilter {
            senders: Some(vec!["@a:x".into()]),
            ..Default::default()
        };
        assert!(f.allows("t", "@a:x"));
        assert!(!f.allows("t", "@b:x"));
        let f = EventFilter {
            not_senders: Some(vec!["@a:x".into()]),
            ..Default::default()
        };
        assert!(!f.allows("t", "@a:x"));
    }
}
