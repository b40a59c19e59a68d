//! Filters (client-server API §Filtering): their shape, their limits, and matching events
//! against them. Shared by `/sync`, `/messages` and the stored filters of `sync::filter`.

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    store::EventRow,
};

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
    /// Only events that have a child relation sent by one of these users (threads' MSC3440
    /// filter; Synapse's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related_by_senders: Option<Vec<String>>,
    /// Only events that have a child relation of one of these types (e.g. `["m.thread"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related_by_rel_types: Option<Vec<String>>,
}

impl RoomEventFilter {
    /// Whether matching needs the events' children (`related_by_*`), which `rooms::history`
    /// reads for a page at once.
    pub fn filters_by_relations(&self) -> bool {
        self.related_by_senders.is_some() || self.related_by_rel_types.is_some()
    }
}

/// Whether `value` passes an allow list (absent: everything) and a deny list (absent: nothing).
fn listed(allow: &Option<Vec<String>>, deny: &Option<Vec<String>>, value: &str) -> bool {
    !deny.as_ref().is_some_and(|d| d.iter().any(|d| d == value))
        && allow.as_ref().is_none_or(|a| a.iter().any(|a| a == value))
}

/// Matches an event type against a filter pattern, where `*` matches any run of characters.
///
/// A greedy glob: on a mismatch it backtracks only to the last `*` seen, so the cost is at most
/// O(pattern × event type) — a pattern of many stars cannot make it explode.
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), event_type.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // The last star's position in the pattern, and where in the type its run ends so far.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_pi, star_ti)) = star {
            // Let the last star swallow one more byte and retry what follows it.
            star = Some((star_pi, star_ti + 1));
            pi = star_pi + 1;
            ti = star_ti + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Most entries in any one list of a filter (`types`, `senders`, `rooms`, their `not_` forms,
/// `event_fields`). Clients send a few dozen; a list this long only costs the server.
pub const MAX_FILTER_LIST_ENTRIES: usize = 1000;

/// Longest entry of a filter list, in bytes (the spec's limit for event types and IDs).
pub const MAX_FILTER_ENTRY_BYTES: usize = 255;

/// Checks one list against the limits; `name` is the field, for the error message.
fn check_list(name: &str, list: &Option<Vec<String>>) -> Result<()> {
    let Some(list) = list else {
        return Ok(());
    };
    if list.len() > MAX_FILTER_LIST_ENTRIES {
        return Err(Error::invalid_param(format!(
            "Filter field {name} has more than {MAX_FILTER_LIST_ENTRIES} entries"
        )));
    }
    if list.iter().any(|entry| entry.len() > MAX_FILTER_ENTRY_BYTES) {
        return Err(Error::invalid_param(format!(
            "Filter field {name} has an entry longer than {MAX_FILTER_ENTRY_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Filter {
    /// Parses a filter given as JSON (inline in a query or stored) and checks its limits.
    pub fn parse(json: &str) -> Result<Self> {
        let filter: Self =
            serde_json::from_str(json).map_err(|e| Error::bad_json(format!("Invalid filter: {e}")))?;
        filter.validate()?;
        Ok(filter)
    }

    /// The bounds every filter must keep, wherever it comes from: list lengths and entry sizes.
    pub fn validate(&self) -> Result<()> {
        check_list("event_fields", &self.event_fields)?;
        for part in [&self.presence, &self.account_data].into_iter().flatten() {
            part.validate()?;
        }
        if let Some(room) = &self.room {
            check_list("rooms", &room.rooms)?;
            check_list("not_rooms", &room.not_rooms)?;
            for part in [&room.timeline, &room.state, &room.ephemeral, &room.account_data]
                .into_iter()
                .flatten()
            {
                part.validate()?;
            }
        }
        Ok(())
    }
}

impl EventFilter {
    fn validate(&self) -> Result<()> {
        check_list("types", &self.types)?;
        check_list("not_types", &self.not_types)?;
        check_list("senders", &self.senders)?;
        check_list("not_senders", &self.not_senders)
    }

    /// Whether no event of `event_type` passes, whoever sent it, so that what would only be
    /// filtered out need not be read at all (`"not_types": ["*"]`, a `types` list without it, an
    /// empty `senders` list).
    pub fn excludes_type(&self, event_type: &str) -> bool {
        let matches = |list: &Vec<String>| list.iter().any(|p| type_matches(p, event_type));
        self.not_types.as_ref().is_some_and(matches)
            || self.types.as_ref().is_some_and(|t| !matches(t))
            || self.senders.as_ref().is_some_and(Vec::is_empty)
    }

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
    /// Parses a room event filter given as JSON (`/messages`) and checks its limits.
    pub fn parse(json: &str) -> Result<Self> {
        let filter: Self =
            serde_json::from_str(json).map_err(|e| Error::bad_json(format!("Invalid filter: {e}")))?;
        filter.validate()?;
        Ok(filter)
    }

    fn validate(&self) -> Result<()> {
        self.base.validate()?;
        check_list("rooms", &self.rooms)?;
        check_list("not_rooms", &self.not_rooms)?;
        check_list("related_by_senders", &self.related_by_senders)?;
        check_list("related_by_rel_types", &self.related_by_rel_types)
    }

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
    fn many_stars_answer_at_once() {
        let pattern = format!("{}x", "*".repeat(40));
        assert!(!type_matches(&pattern, &"a".repeat(255)));
        assert!(type_matches(&pattern, &format!("{}x", "a".repeat(254))));
        let pattern = "*a".repeat(100);
        assert!(!type_matches(&pattern, &"a".repeat(99)));
        assert!(type_matches(&pattern, &"a".repeat(100)));
    }

    /// The definition, by brute force: exponential, fine on short inputs.
    fn reference(pattern: &[u8], text: &[u8]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    proptest::proptest! {
        #[test]
        fn matcher_agrees_with_the_definition(pattern in "[a.*]{0,10}", text in "[a.*]{0,12}") {
            proptest::prop_assert_eq!(
                type_matches(&pattern, &text),
                reference(pattern.as_bytes(), text.as_bytes())
            );
        }

        #[test]
        fn matcher_agrees_on_multibyte_text(pattern in "[aé*]{0,8}", text in "[aé]{0,10}") {
            proptest::prop_assert_eq!(
                type_matches(&pattern, &text),
                reference(pattern.as_bytes(), text.as_bytes())
            );
        }
    }

    #[test]
    fn long_lists_and_entries_are_refused() {
        let many: Vec<String> = (0..=MAX_FILTER_LIST_ENTRIES).map(|i| format!("t{i}")).collect();
        let json = serde_json::json!({ "room": { "timeline": { "not_senders": many } } }).to_string();
        assert_eq!(Filter::parse(&json).unwrap_err().errcode(), "M_INVALID_PARAM");
        let long = "x".repeat(MAX_FILTER_ENTRY_BYTES + 1);
        let json = serde_json::json!({ "presence": { "types": [long] } }).to_string();
        assert_eq!(Filter::parse(&json).unwrap_err().errcode(), "M_INVALID_PARAM");
        let json = serde_json::json!({ "not_rooms": [long] }).to_string();
        assert_eq!(
            RoomEventFilter::parse(&json).unwrap_err().errcode(),
            "M_INVALID_PARAM"
        );
        let at_limit: Vec<String> = (0..MAX_FILTER_LIST_ENTRIES)
            .map(|_| "y".repeat(MAX_FILTER_ENTRY_BYTES))
            .collect();
        let json = serde_json::json!({ "room": { "rooms": at_limit } }).to_string();
        assert!(Filter::parse(&json).is_ok());
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
    fn a_type_is_excluded_only_when_no_sender_could_pass() {
        let filter = |json: &str| serde_json::from_str::<EventFilter>(json).unwrap();
        for excluding in [
            r#"{"not_types":["*"]}"#,
            r#"{"not_types":["m.pres*"]}"#,
            r#"{"types":["m.room.*"]}"#,
            r#"{"types":[]}"#,
            r#"{"senders":[]}"#,
        ] {
            assert!(filter(excluding).excludes_type("m.presence"), "{excluding}");
        }
        for passing in [
            "{}",
            r#"{"types":["m.*"],"not_types":["m.room.*"]}"#,
            r#"{"senders":["@a:x"]}"#,
            r#"{"not_senders":["@a:x"],"limit":1}"#,
        ] {
            assert!(!filter(passing).excludes_type("m.presence"), "{passing}");
        }
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
