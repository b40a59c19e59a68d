//! Room privacy modes, a Hearth guarantee (spec/privacy-modes.md).
//!
//! A room's mode is its `org.hearth.room.privacy` state event (state key `""`):
//! `{"mode": "strict_e2e"}` or `{"mode": "search_enabled"}`; without one the room behaves as
//! plain Matrix. A room that gets `m.room.encryption` is strict when `privacy.encrypted_rooms_strict`
//! is set (the default) or when it was `search_enabled` — and strict the moment the encryption
//! event is stored: the mode event Hearth writes after it makes that explicit, but the rule here
//! does not wait for it ([`PrivacyMode::of`]).
//!
//! In a strict room the server refuses, from its own users, every non-state event but
//! `m.room.redaction` and `m.room.encrypted` carrying a Megolm message; it refuses changing or
//! removing `m.room.encryption`, redacting it or the mode event, and any move of the mode away
//! from strict. [`check_local_event`] is called by the timeline for every local event, under the
//! append lock, against the room's current state — `/send`, `/state`, `/createRoom`'s initial
//! state, upgrades and everything else that creates events go through it.
//!
//! Strict rooms are never read by the server for its own features: whatever indexes or shows
//! room content (search, admin content reads) must ask [`mode`] and
//! [`PrivacyMode::allows_server_read`] first.

use ruma::{EventId, RoomId, UserId};
use serde_json::{Value, json};

use crate::{
    config::PrivacyConfig,
    error::{Error, Result},
    rooms::EventSpec,
    services::Services,
};

/// The state event type holding a room's mode.
pub const PRIVACY_EVENT_TYPE: &str = "org.hearth.room.privacy";
/// The one room event encryption algorithm (Olm is for to-device messages only).
pub const MEGOLM_ALGORITHM: &str = "m.megolm.v1.aes-sha2";

/// How much of a room the server may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivacyMode {
    /// No mode: plain Matrix behaviour.
    Plain,
    /// Explicitly readable by the server (search may index it); never encrypted.
    SearchEnabled,
    /// End-to-end encrypted only: the server stores no plaintext from its users.
    StrictE2e,
}

impl PrivacyMode {
    /// The mode named by an `org.hearth.room.privacy` content, if it names one.
    pub fn from_content(content: &Value) -> Option<Self> {
        match content.get("mode").and_then(Value::as_str) {
            Some("strict_e2e") => Some(Self::StrictE2e),
            Some("search_enabled") => Some(Self::SearchEnabled),
            _ => None,
        }
    }

    /// The room's mode from its state: the mode event's (`explicit`), made strict by
    /// encryption when the config says so or when the room was `search_enabled`.
    pub fn of(explicit: Option<Self>, encrypted: bool, config: &PrivacyConfig) -> Self {
        match explicit {
            Some(Self::StrictE2e) => Self::StrictE2e,
            Some(Self::SearchEnabled) if encrypted => Self::StrictE2e,
            Some(mode) => mode,
            None if encrypted && config.encrypted_rooms_strict => Self::StrictE2e,
            None => Self::Plain,
        }
    }

    /// Whether the server may read the room's content for its own features (search indexing,
    /// admin content reads). Never for strict rooms.
    pub fn allows_server_read(self) -> bool {
        self != Self::StrictE2e
    }

    pub fn is_strict(self) -> bool {
        self == Self::StrictE2e
    }
}

/// The two state events the mode depends on, as the timeline's draft of the room has them:
/// (event ID, content) of `org.hearth.room.privacy` and of `m.room.encryption`.
#[derive(Default)]
pub struct PrivacyState<'a> {
    pub mode_event: Option<(&'a EventId, Value)>,
    pub encryption: Option<(&'a EventId, Value)>,
}

impl PrivacyState<'_> {
    fn explicit(&self) -> Option<PrivacyMode> {
        self.mode_event
            .as_ref()
            .and_then(|(_, content)| PrivacyMode::from_content(content))
    }

    pub fn mode(&self, config: &PrivacyConfig) -> PrivacyMode {
        PrivacyMode::of(self.explicit(), self.encryption.is_some(), config)
    }
}

/// Whether the room's privacy rules let a local user send `spec` into a room in `state`.
/// Refusals are `403 M_FORBIDDEN` with `"org.hearth.error": "strict_e2e"`.
pub fn check_local_event(config: &PrivacyConfig, state: &PrivacyState<'_>, spec: &EventSpec) -> Result<()> {
    let current = state.mode(config);
    match spec.state_key.as_deref() {
        Some("") if spec.event_type == PRIVACY_EVENT_TYPE => check_mode_change(state, current, &spec.content),
        Some("") if spec.event_type == "m.room.encryption" => {
            check_encryption_change(config, state, current, &spec.content)
        }
        Some(_) => Ok(()),
        None if !current.is_strict() => Ok(()),
        None => check_strict_message(state, spec),
    }
}

fn check_mode_change(state: &PrivacyState<'_>, current: PrivacyMode, content: &Value) -> Result<()> {
    let Some(new) = PrivacyMode::from_content(content) else {
        return Err(if current == PrivacyMode::Plain && state.mode_event.is_none() {
            Error::bad_json("org.hearth.room.privacy needs mode: strict_e2e or search_enabled")
        } else {
            Error::strict_e2e("A room's privacy mode cannot be removed")
        });
    };
    match (current, new) {
        (PrivacyMode::StrictE2e, PrivacyMode::StrictE2e) => Ok(()),
        (PrivacyMode::StrictE2e, _) => Err(Error::strict_e2e("A strict_e2e room cannot leave strict mode")),
        (_, PrivacyMode::SearchEnabled) if state.encryption.is_some() => {
            Err(Error::strict_e2e("An encrypted room cannot be search_enabled"))
        }
        _ => Ok(()),
    }
}

fn check_encryption_change(
    config: &PrivacyConfig,
    state: &PrivacyState<'_>,
    current: PrivacyMode,
    content: &Value,
) -> Result<()> {
    match &state.encryption {
        // Clients must not change a room's encryption (and a strict room refuses it): only the
        // same content again is accepted, which changes nothing.
        Some((_, existing)) if current.is_strict() => {
            if existing == content {
                Ok(())
            } else {
                Err(Error::strict_e2e(
                    "m.room.encryption cannot be changed or removed in a strict_e2e room",
                ))
            }
        }
        Some(_) => Ok(()),
        None => {
            let becomes_strict = PrivacyMode::of(state.explicit(), true, config).is_strict();
            if becomes_strict && content.get("algorithm").and_then(Value::as_str) != Some(MEGOLM_ALGORITHM) {
                return Err(Error::strict_e2e(format!(
                    "A strict_e2e room's encryption must use {MEGOLM_ALGORITHM}"
                )));
            }
            Ok(())
        }
    }
}

fn check_strict_message(state: &PrivacyState<'_>, spec: &EventSpec) -> Result<()> {
    match spec.event_type.as_str() {
        "m.room.redaction" => {
            let target = spec
                .redacts
                .as_deref()
                .map(EventId::as_str)
                .or_else(|| spec.content.get("redacts").and_then(Value::as_str));
            let protected = [&state.mode_event, &state.encryption]
                .into_iter()
                .flatten()
                .any(|(id, _)| Some(id.as_str()) == target);
            if protected {
                return Err(Error::strict_e2e(
                    "The encryption and privacy mode events of a strict_e2e room cannot be redacted",
                ));
            }
            Ok(())
        }
        "m.room.encrypted" => {
            let algorithm = spec.content.get("algorithm").and_then(Value::as_str);
            if algorithm != Some(MEGOLM_ALGORITHM) {
                return Err(Error::strict_e2e(format!(
                    "Room events in a strict_e2e room must be encrypted with {MEGOLM_ALGORITHM}"
                )));
            }
            let ciphertext = spec
                .content
                .get("ciphertext")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::strict_e2e("An m.room.encrypted event needs a Megolm ciphertext"))?;
            hearth_e2ee::verify::check_megolm_ciphertext(ciphertext)
                .map_err(|_| Error::strict_e2e("The ciphertext is not a Megolm message"))
        }
        other => Err(Error::strict_e2e(format!(
            "This room is strict_e2e: {other} events must be sent encrypted (m.room.encrypted)"
        ))),
    }
}

/// The room's mode now. Whatever reads room content for the server's own purposes (search,
/// admin tools) must check [`PrivacyMode::allows_server_read`] on this first.
pub async fn mode(svc: &Services, room_id: &RoomId) -> Result<PrivacyMode> {
    let keys = [
        (PRIVACY_EVENT_TYPE.to_owned(), String::new()),
        ("m.room.encryption".to_owned(), String::new()),
    ];
    let mut explicit = None;
    let mut encrypted = false;
    for ((event_type, _), _, json) in svc.store.current_state_entries(room_id.as_str(), &keys).await? {
        let pdu: Value = serde_json::from_str(&json).map_err(Error::internal)?;
        if event_type == PRIVACY_EVENT_TYPE {
            explicit = pdu.get("content").and_then(PrivacyMode::from_content);
        } else {
            encrypted = true;
        }
    }
    Ok(PrivacyMode::of(explicit, encrypted, &svc.config.privacy))
}

/// The mode event that makes a strict room's mode explicit.
pub fn strict_mode_event() -> EventSpec {
    EventSpec::state(PRIVACY_EVENT_TYPE, "", json!({ "mode": "strict_e2e" }))
}

/// `/createRoom`: when the initial events enable encryption and that makes the room strict,
/// the strict mode event goes right before the encryption event (unless the initial state
/// already sets strict_e2e before it), so the room is stored strict from its first message on.
pub fn add_mode_to_initial_events(config: &PrivacyConfig, events: &mut Vec<EventSpec>) {
    let is_mode = |e: &EventSpec| e.event_type == PRIVACY_EVENT_TYPE && e.state_key.as_deref() == Some("");
    let Some(at) = events
        .iter()
        .position(|e| e.event_type == "m.room.encryption" && e.state_key.as_deref() == Some(""))
    else {
        return;
    };
    let explicit = events[..at]
        .iter()
        .rev()
        .find(|e| is_mode(e))
        .and_then(|e| PrivacyMode::from_content(&e.content));
    if explicit != Some(PrivacyMode::StrictE2e) && PrivacyMode::of(explicit, true, config).is_strict() {
        events.insert(at, strict_mode_event());
    }
}

/// After a local user stored `m.room.encryption` in an existing room: if that made the room
/// strict and its mode event does not say so yet, writes it, sent by the same user (who had the
/// power to send state). The room is strict either way ([`PrivacyMode::of`]); the event records
/// it so that it survives a configuration change. A failure (e.g. the user may send
/// `m.room.encryption` but not `org.hearth.room.privacy`) is logged.
pub async fn after_encryption_enabled(svc: &Services, sender: &UserId, room_id: &RoomId) {
    let keys = [(PRIVACY_EVENT_TYPE.to_owned(), String::new())];
    let explicit = match svc.store.current_state_entries(room_id.as_str(), &keys).await {
        Ok(entries) => entries.first().and_then(|(_, _, json)| {
            serde_json::from_str::<Value>(json)
                .ok()
                .and_then(|pdu| pdu.get("content").and_then(PrivacyMode::from_content))
        }),
        Err(error) => {
            tracing::warn!(%error, %room_id, "cannot read the privacy mode after enabling encryption");
            return;
        }
    };
    if explicit == Some(PrivacyMode::StrictE2e)
        || !PrivacyMode::of(explicit, true, &svc.config.privacy).is_strict()
    {
        return;
    }
    if let Err(error) = svc
        .timeline
        .append(svc, room_id, sender, strict_mode_event(), None)
        .await
    {
        tracing::warn!(%error, %room_id, "cannot write the strict_e2e mode event; the room is strict by its encryption");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict_config() -> PrivacyConfig {
        PrivacyConfig {
            encrypted_rooms_strict: true,
            ..PrivacyConfig::default()
        }
    }

    #[test]
    fn mode_only_moves_towards_strict() {
        let config = strict_config();
        let id = EventId::parse("$mode").unwrap();
        let strict = PrivacyState {
            mode_event: Some((&id, json!({"mode": "strict_e2e"}))),
            encryption: None,
        };
        let to = |mode: Value| EventSpec::state(PRIVACY_EVENT_TYPE, "", mode);
        assert!(check_local_event(&config, &strict, &to(json!({"mode": "strict_e2e"}))).is_ok());
        assert!(check_local_event(&config, &strict, &to(json!({"mode": "search_enabled"}))).is_err());
        assert!(check_local_event(&config, &strict, &to(json!({}))).is_err());
        let search = PrivacyState {
            mode_event: Some((&id, json!({"mode": "search_enabled"}))),
            encryption: None,
        };
        assert!(check_local_event(&config, &search, &to(json!({"mode": "strict_e2e"}))).is_ok());
        assert!(check_local_event(&config, &search, &to(json!({}))).is_err());
        let plain = PrivacyState::default();
        assert!(check_local_event(&config, &plain, &to(json!({"mode": "search_enabled"}))).is_ok());
        assert!(check_local_event(&config, &plain, &to(json!({"mode": "other"}))).is_err());
    }

    #[test]
    fn encryption_makes_a_room_strict_by_config_or_from_search_enabled() {
        let on = strict_config();
        let off = PrivacyConfig {
            encrypted_rooms_strict: false,
            ..PrivacyConfig::default()
        };
        assert_eq!(PrivacyMode::of(None, true, &on), PrivacyMode::StrictE2e);
        assert_eq!(PrivacyMode::of(None, true, &off), PrivacyMode::Plain);
        assert_eq!(
            PrivacyMode::of(Some(PrivacyMode::SearchEnabled), true, &off),
            PrivacyMode::StrictE2e
        );
        assert_eq!(
            PrivacyMode::of(Some(PrivacyMode::SearchEnabled), false, &on),
            PrivacyMode::SearchEnabled
        );
        assert!(!PrivacyMode::StrictE2e.allows_server_read());
        assert!(PrivacyMode::Plain.allows_server_read());
    }

    #[test]
    fn initial_events_get_the_mode_before_encryption() {
        let mut events = vec![
            EventSpec::state("m.room.join_rules", "", json!({"join_rule": "invite"})),
            EventSpec::state("m.room.encryption", "", json!({"algorithm": MEGOLM_ALGORITHM})),
        ];
        add_mode_to_initial_events(&strict_config(), &mut events);
        assert_eq!(events.len(), 3);
        assert_eq!(events[1].event_type, PRIVACY_EVENT_TYPE);
        assert_eq!(events[2].event_type, "m.room.encryption");
        let mut off = events[..1].to_vec();
        off.push(EventSpec::state(
            "m.room.encryption",
            "",
            json!({"algorithm": MEGOLM_ALGORITHM}),
        ));
        add_mode_to_initial_events(
            &PrivacyConfig {
                encrypted_rooms_strict: false,
                ..PrivacyConfig::default()
            },
            &mut off,
        );
        assert_eq!(off.len(), 2);
    }
}
