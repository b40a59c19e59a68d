//! State resolution over stored events: ruma-state-res v2 (v2.1 for room version 12, through
//! the version's `StateResolutionV2Rules`) for the state before an event whose prev_events'
//! states differ and for a room's current state when it has several forward extremities.

use std::collections::{HashMap, HashSet};

use hearth_federation::Pdu;
use ruma::{EventId, OwnedEventId, events::StateEventType, room_version_rules::RoomVersionRules, state_res};

use crate::{
    error::{Error, Result},
    rooms::timeline::pdu_of,
    services::Services,
    store::StateMap,
};

/// Most events one resolution may load (the states' events and their auth chains).
const MAX_RESOLVE_EVENTS: usize = 20_000;

/// Resolves stored states (each (type, state key) → event ID) into one.
pub async fn resolve(svc: &Services, rules: &RoomVersionRules, states: &[StateMap]) -> Result<StateMap> {
    if states.len() <= 1 || states.windows(2).all(|w| w[0] == w[1]) {
        return Ok(states.first().cloned().unwrap_or_default());
    }
    let mut events: HashMap<OwnedEventId, Pdu> = HashMap::new();
    let mut wanted: Vec<String> = states.iter().flat_map(|s| s.values().cloned()).collect();
    while !wanted.is_empty() {
        wanted.sort();
        wanted.dedup();
        let rows = svc.store.events(&wanted).await?;
        wanted = Vec::new();
        for row in rows {
            let pdu = pdu_of(&row)?;
            for auth in &pdu.auth_events {
                if !events.contains_key(auth) {
                    wanted.push(auth.to_string());
                }
            }
            events.insert(pdu.event_id.clone(), pdu);
        }
        wanted.retain(|id| EventId::parse(id.as_str()).is_ok_and(|id| !events.contains_key(&id)));
        if events.len() > MAX_RESOLVE_EVENTS {
            return Err(Error::internal("state resolution needs too many events"));
        }
    }
    let to_ruma = |state: &StateMap| -> state_res::StateMap<OwnedEventId> {
        state
            .iter()
            .filter_map(|((t, k), id)| {
                Some((
                    (StateEventType::from(t.as_str()), k.clone()),
                    EventId::parse(id).ok()?,
                ))
            })
            .collect()
    };
    let maps: Vec<state_res::StateMap<OwnedEventId>> = states.iter().map(to_ruma).collect();
    let chains: Vec<HashSet<OwnedEventId>> = maps
        .iter()
        .map(|m| auth_chain(&events, m.values().cloned()))
        .collect();
    let resolved = state_res::resolve(
        &rules.authorization,
        rules
            .state_res
            .v2_rules()
            .ok_or_else(|| Error::internal("room version without state resolution v2"))?,
        maps.iter(),
        chains.into_iter().map(|c| c.into_iter().collect()).collect(),
        |id: &EventId| events.get(id).cloned(),
        |conflicted: &state_res::StateMap<Vec<OwnedEventId>>| {
            Some(conflicted_subgraph(&events, conflicted).into_iter().collect())
        },
    )
    .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
    Ok(resolved
        .into_iter()
        .map(|((t, k), id)| ((t.to_string(), k), id.to_string()))
        .collect())
}

/// Every event reachable through `auth_events` from `start` (not including `start` itself
/// unless reached again).
fn auth_chain(
    events: &HashMap<OwnedEventId, Pdu>,
    start: impl Iterator<Item = OwnedEventId>,
) -> HashSet<OwnedEventId> {
    let mut seen = HashSet::new();
    let mut todo: Vec<OwnedEventId> = start
        .filter_map(|id| events.get(&id))
        .flat_map(|p| p.auth_events.clone())
        .collect();
    while let Some(id) = todo.pop() {
        if seen.insert(id.clone())
            && let Some(pdu) = events.get(&id)
        {
            todo.extend(pdu.auth_events.iter().cloned());
        }
    }
    seen
}

/// The conflicted state subgraph (state resolution v2.1): the events on auth-event paths from
/// one conflicted state event to another — each is a conflicted event, or both reaches one
/// (through its auth events) and is reached from one.
fn conflicted_subgraph(
    events: &HashMap<OwnedEventId, Pdu>,
    conflicted: &state_res::StateMap<Vec<OwnedEventId>>,
) -> HashSet<OwnedEventId> {
    let conflicted: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
    // Reached from a conflicted event: in the auth chain of one.
    let below = auth_chain(events, conflicted.iter().cloned());
    // Reaches a conflicted event: one of its auth events is conflicted or reaches one. Decided
    // once per event, children first (an explicit stack: auth chains can be deep).
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    for start in &below {
        let mut stack = vec![(start.clone(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if reaches.contains_key(&id) {
                continue;
            }
            let auth = events
                .get(&id)
                .map(|p| p.auth_events.as_slice())
                .unwrap_or_default();
            if expanded {
                let found = auth
                    .iter()
                    .any(|a| conflicted.contains(a) || reaches.get(a).copied().unwrap_or(false));
                reaches.insert(id, found);
            } else {
                stack.push((id.clone(), true));
                stack.extend(
                    auth.iter()
                        .filter(|a| !reaches.contains_key(*a))
                        .map(|a| (a.clone(), false)),
                );
            }
        }
    }
    let mut out: HashSet<OwnedEventId> = conflicted;
    out.extend(
        below
            .into_iter()
            .filter(|id| reaches.get(id).copied().unwrap_or(false)),
    );
    out
}

#[cfg(test)]
mod tests {
    use hearth_federation::{SigningKey, pdu::PduTemplate};
    use ruma::{MilliSecondsSinceUnixEpoch, RoomVersionId, UInt, owned_room_id, owned_user_id};
    use serde_json::json;

    use super::*;

    fn event(key: &SigningKey, n: u64, auth: Vec<OwnedEventId>) -> Pdu {
        PduTemplate {
            room_id: Some(owned_room_id!("!r:hearth.test")),
            sender: owned_user_id!("@a:hearth.test"),
            event_type: "m.room.topic".into(),
            state_key: Some(String::new()),
            content: json!({ "topic": n.to_string() }),
            prev_events: vec![],
            auth_events: auth,
            depth: n,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(n).unwrap()),
            redacts: None,
        }
        .finish(&RoomVersionId::V12.rules().unwrap(), "hearth.test", key)
        .unwrap()
    }

    #[test]
    fn the_conflicted_subgraph_is_the_auth_paths_between_conflicted_events() {
        let key = SigningKey::generate("t").unwrap();
        let a = event(&key, 1, vec![]);
        let b = event(&key, 2, vec![a.event_id.clone()]);
        let c = event(&key, 3, vec![b.event_id.clone()]);
        let d = event(&key, 4, vec![a.event_id.clone()]);
        let events: HashMap<OwnedEventId, Pdu> = [&a, &b, &c, &d]
            .into_iter()
            .map(|p| (p.event_id.clone(), p.clone()))
            .collect();
        let conflicted = |ids: &[&Pdu]| -> state_res::StateMap<Vec<OwnedEventId>> {
            [(
                (StateEventType::RoomTopic, String::new()),
                ids.iter().map(|p| p.event_id.clone()).collect(),
            )]
            .into()
        };
        // C reaches A through B: all three.
        let found = conflicted_subgraph(&events, &conflicted(&[&c, &a]));
        let expected: HashSet<OwnedEventId> = [&a, &b, &c].iter().map(|p| p.event_id.clone()).collect();
        assert_eq!(found, expected);
        // No auth path between C and D: only themselves.
        let found = conflicted_subgraph(&events, &conflicted(&[&c, &d]));
        let expected: HashSet<OwnedEventId> = [&c, &d].iter().map(|p| p.event_id.clone()).collect();
        assert_eq!(found, expected);
    }
}
