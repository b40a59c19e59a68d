//! Membership over federation, the resident server's side: `make_join`/`send_join` (v2),
//! `make_leave`/`send_leave` (v2), `make_knock`/`send_knock`, and `invite` (v2) of a local user by
//! a remote server.

use std::collections::HashMap;

use hearth_federation::{Pdu, pdu::PduTemplate, pdu_checks};
use ruma::{
    CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName,
    UInt, UserId,
    events::room::server_acl::RoomServerAclEventContent,
    room_version_rules::RoomVersionRules,
    signatures::sign_json,
    state_res::{auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules},
};
use serde_json::{Value, json, value::RawValue};

use super::inbound::{self, Fate};
use crate::{
    error::{Error, Result},
    rooms::timeline::pdu_of,
    services::Services,
    store::StateMap,
    util::now_ms,
};

/// Most auth chain events one `send_join` answers with.
const MAX_AUTH_CHAIN: usize = 20_000;

/// `GET /make_join/{roomId}/{userId}`: a join event template for `user`, if the room's rules
/// would let them join now.
pub async fn make_join(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    ver: &[RoomVersionId],
) -> Result<Value> {
    make_membership(svc, origin, room_id, user, "join", Some(ver)).await
}

/// `GET /make_leave/{roomId}/{userId}`.
pub async fn make_leave(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Value> {
    make_membership(svc, origin, room_id, user, "leave", None).await
}

/// `GET /make_knock/{roomId}/{userId}`: the room's version must support knocking (7 and later)
/// and be one the knocking server supports, else `M_INCOMPATIBLE_ROOM_VERSION`; the template must
/// pass the auth rules (a join rule other than `knock`, a ban: 403).
pub async fn make_knock(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    ver: &[RoomVersionId],
) -> Result<Value> {
    let (version, rules) = inbound::room_rules(svc, room_id).await?;
    if !rules.authorization.knocking {
        return Err(Error::IncompatibleRoomVersionOf {
            message: format!("The room is version {version}, which does not support knocking"),
            room_version: version.to_string(),
        });
    }
    make_membership(svc, origin, room_id, user, "knock", Some(ver)).await
}

async fn make_membership(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    membership: &str,
    ver: Option<&[RoomVersionId]>,
) -> Result<Value> {
    if user.server_name() != origin {
        return Err(Error::forbidden(
            "The user does not belong to the requesting server",
        ));
    }
    let (version, rules) = inbound::room_rules(svc, room_id).await?;
    if let Some(ver) = ver
        && !ver.contains(&version)
    {
        return Err(Error::IncompatibleRoomVersionOf {
            message: format!("The room is version {version}, which the joining server does not support"),
            room_version: version.to_string(),
        });
    }
    check_acl(svc, room_id, origin).await?;
    let content = json!({ "membership": membership });
    let built = build_event(
        svc,
        room_id,
        user,
        "m.room.member",
        Some(user.as_str()),
        content,
        &rules,
    )
    .await?;
    // The template passes the rules now, or the join or leave is refused here.
    let state = built.state;
    check_state_independent_auth_rules(&rules.authorization, &built.pdu, |id: &EventId| {
        state.values().find(|p| p.event_id == id)
    })
    .map_err(|e| Error::forbidden(format!("You may not {membership} this room: {e}")))?;
    check_state_dependent_auth_rules(&rules.authorization, &built.pdu, |t, k: &str| {
        state.get(&(t.to_string(), k.to_owned()))
    })
    .map_err(|e| Error::forbidden(format!("You may not {membership} this room: {e}")))?;
    let mut event = built.pdu.json;
    event.remove("hashes");
    event.remove("signatures");
    // The spec's template names the resident server (`origin`), whatever the room version.
    event.insert(
        "origin".to_owned(),
        CanonicalJsonValue::String(svc.server_name().to_string()),
    );
    Ok(json!({ "room_version": version, "event": event }))
}

/// An event built here (signed by this server) against the room's current state and forward
/// extremities, not stored; with the state entries the auth rules read.
pub struct BuiltEvent {
    pub pdu: Pdu,
    pub state: HashMap<(String, String), Pdu>,
}

/// Builds an event for `sender` in a stored room without storing it: templates for other
/// servers and invites of remote users (which their server must sign before it is stored).
pub async fn build_event(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    event_type: &str,
    state_key: Option<&str>,
    content: Value,
    rules: &RoomVersionRules,
) -> Result<BuiltEvent> {
    let raw = serde_json::value::to_raw_value(&content).map_err(Error::internal)?;
    let types = auth_types_for_event(&event_type.into(), sender, state_key, &raw, &rules.authorization)
        .map_err(Error::bad_json)?;
    let mut wanted: Vec<(String, String)> = types
        .into_iter()
        .map(|(t, k)| (t.to_string(), k))
        .chain([("m.room.create".to_owned(), String::new())])
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut state = HashMap::new();
    for (key, event_id, json) in svc.store.current_state_entries(room_id.as_str(), &wanted).await? {
        let pdu = Pdu::from_stored(EventId::parse(&event_id).map_err(Error::internal)?, &json)
            .map_err(Error::internal)?;
        state.insert(key, pdu);
    }
    let auth_events: Vec<OwnedEventId> = state
        .iter()
        .filter(|((t, _), _)| !(t == "m.room.create" && rules.authorization.room_create_event_id_as_room_id))
        .map(|(_, p)| p.event_id.clone())
        .collect();
    let extremities = svc.store.forward_extremities(room_id.as_str()).await?;
    let depth = extremities.iter().map(|(_, d)| *d).max().unwrap_or(0) as u64;
    let prev_events = extremities
        .into_iter()
        .take(pdu_checks::MAX_PREV_EVENTS)
        .map(|(id, _)| EventId::parse(id).map_err(Error::internal))
        .collect::<Result<Vec<_>>>()?;
    let pdu = PduTemplate {
        room_id: Some(room_id.to_owned()),
        sender: sender.to_owned(),
        event_type: event_type.to_owned(),
        state_key: state_key.map(ToOwned::to_owned),
        content,
        prev_events,
        auth_events,
        depth: depth + 1,
        origin_server_ts: MilliSecondsSinceUnixEpoch(
            UInt::new(svc.clock.now_ms() as u64).unwrap_or_default(),
        ),
        redacts: None,
    }
    .finish(rules, svc.server_name(), &svc.signing_key)
    .map_err(|e| Error::bad_json(e.to_string()))?;
    Ok(BuiltEvent { pdu, state })
}

/// `PUT /send_join/{roomId}/{eventId}` (v2): checks and stores the join, then answers the state
/// before it and that state's auth chain.
pub async fn send_join(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    pdu: &RawValue,
) -> Result<Value> {
    let accepted = send_membership(svc, origin, room_id, event_id, pdu, "join").await?;
    let before = state_before(svc, &accepted.pdu).await?;
    let state_ids: Vec<String> = before.values().cloned().collect();
    let state_rows = svc.store.events(&state_ids).await?;
    let mut state = Vec::with_capacity(state_rows.len());
    for row in &state_rows {
        state.push(pdu_of(row)?);
    }
    let chain = auth_chain(
        svc,
        state.iter().flat_map(|p| p.auth_events.iter().cloned()).collect(),
    )
    .await?;
    let json_of = |p: &Pdu| serde_json::to_value(&p.json).unwrap_or_default();
    Ok(json!({
        "origin": svc.server_name(),
        "auth_chain": chain.iter().map(json_of).collect::<Vec<_>>(),
        "state": state.iter().map(json_of).collect::<Vec<_>>(),
        "event": json_of(&accepted.pdu),
        "members_omitted": false,
    }))
}

/// `PUT /send_leave/{roomId}/{eventId}` (v2).
pub async fn send_leave(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    pdu: &RawValue,
) -> Result<Value> {
    send_membership(svc, origin, room_id, event_id, pdu, "leave").await?;
    Ok(json!({}))
}

/// `PUT /send_knock/{roomId}/{eventId}` (v1): checks and stores the knock, sends it to the
/// room's other servers (the knocking server is not in the room, so it cannot), and answers the
/// room's state a knocker is shown (`knock_room_state`: full PDUs, the create event among them).
pub async fn send_knock(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    pdu: &RawValue,
) -> Result<Value> {
    let accepted = send_membership(svc, origin, room_id, event_id, pdu, "knock").await?;
    let json = serde_json::to_string(&accepted.pdu.json).map_err(Error::internal)?;
    // Queued before the answer: the knocking server relies on this server to relay it.
    super::sender::relay(
        svc,
        vec![super::sender::PduOut {
            room_id: room_id.to_string(),
            json,
        }],
    )
    .await?;
    let state = svc.store.current_state(room_id.as_str()).await?;
    let ids: Vec<String> = state
        .iter()
        .filter(|((t, _), _)| crate::sync::INVITE_STATE_TYPES.contains(&t.as_str()))
        .map(|(_, id)| id.clone())
        .collect();
    let mut knock_room_state = Vec::with_capacity(ids.len());
    for row in svc.store.events(&ids).await? {
        knock_room_state.push(serde_json::to_value(&pdu_of(&row)?.json).map_err(Error::internal)?);
    }
    Ok(json!({ "knock_room_state": knock_room_state }))
}

/// The checks `send_join`, `send_leave` and `send_knock` share: the event is the membership it claims, of a
/// user of the origin, with the event ID of the path; then the incoming PDU pipeline. A
/// soft-failed membership is refused too: it would never take effect.
async fn send_membership(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    raw: &RawValue,
    membership: &str,
) -> Result<inbound::Accepted> {
    let object = pdu_checks::parse(raw).map_err(|e| Error::bad_json(e.to_string()))?;
    let field = |key: &str| match object.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let claimed_membership = match object.get("content") {
        Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
            Some(CanonicalJsonValue::String(m)) => Some(m.clone()),
            _ => None,
        },
        _ => None,
    };
    if field("type").as_deref() != Some("m.room.member") || claimed_membership.as_deref() != Some(membership)
    {
        return Err(Error::bad_json(format!(
            "Not an m.room.member {membership} event"
        )));
    }
    let sender = field("sender").unwrap_or_default();
    if field("state_key").as_deref() != Some(sender.as_str()) {
        return Err(Error::bad_json("state_key must be the sender"));
    }
    let sender = UserId::parse(sender).map_err(|_| Error::bad_json("Invalid sender"))?;
    if sender.server_name() != origin {
        return Err(Error::forbidden(
            "The user does not belong to the requesting server",
        ));
    }
    if field("room_id").as_deref() != Some(room_id.as_str()) {
        return Err(Error::bad_json("The event is for another room"));
    }
    check_acl(svc, room_id, origin).await?;
    let accepted = inbound::accept(svc, origin, raw)
        .await
        .map_err(|refused| Error::forbidden(refused.reason))?;
    if accepted.event_id != event_id {
        return Err(Error::bad_json("The event ID does not match the event"));
    }
    if accepted.fate == Fate::SoftFailed {
        return Err(Error::forbidden(
            "The event fails against the room's current state",
        ));
    }
    Ok(accepted)
}

/// The state before a stored timeline event: its prev_events' states, resolved.
async fn state_before(svc: &Services, pdu: &Pdu) -> Result<StateMap> {
    let prevs: Vec<String> = pdu.prev_events.iter().map(ToString::to_string).collect();
    let mut groups: Vec<i64> = svc
        .store
        .dag_events_state(&prevs)
        .await?
        .into_iter()
        .map(|(_, g, _)| g)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut states = Vec::new();
    for g in groups {
        states.push(svc.store.state_of_group(g).await?);
    }
    let room_id = pdu.room_id.as_deref().ok_or_else(|| Error::internal("no room"))?;
    let (_, rules) = inbound::room_rules(svc, room_id).await?;
    super::resolve::resolve(svc, &rules, &states).await
}

/// Every event reachable through `auth_events` from `start`, stored here.
pub async fn auth_chain(svc: &Services, start: Vec<OwnedEventId>) -> Result<Vec<Pdu>> {
    let mut seen: HashMap<OwnedEventId, Pdu> = HashMap::new();
    let mut wanted: Vec<String> = start.iter().map(ToString::to_string).collect();
    while !wanted.is_empty() {
        wanted.sort();
        wanted.dedup();
        let rows = svc.store.events(&wanted).await?;
        wanted.clear();
        for row in rows {
            let pdu = pdu_of(&row)?;
            for auth in &pdu.auth_events {
                if !seen.contains_key(auth) {
                    wanted.push(auth.to_string());
                }
            }
            seen.insert(pdu.event_id.clone(), pdu);
        }
        wanted.retain(|id| EventId::parse(id.as_str()).is_ok_and(|id| !seen.contains_key(&id)));
        if seen.len() > MAX_AUTH_CHAIN {
            return Err(Error::internal("auth chain too long"));
        }
    }
    let mut chain: Vec<Pdu> = seen.into_values().collect();
    chain.sort_by_key(|p| p.depth);
    Ok(chain)
}

/// `m.room.server_acl`: a server the room's ACL denies gets 403.
pub async fn check_acl(svc: &Services, room_id: &RoomId, server: &ServerName) -> Result<()> {
    let key = [("m.room.server_acl".to_owned(), String::new())];
    if let Some((_, _, json)) = svc
        .store
        .current_state_entries(room_id.as_str(), &key)
        .await?
        .pop()
    {
        let value: Value = serde_json::from_str(&json).map_err(Error::internal)?;
        if let Ok(acl) = serde_json::from_value::<RoomServerAclEventContent>(value["content"].clone())
            && !acl.is_allowed(server)
        {
            return Err(Error::forbidden("The room's server ACL denies this server"));
        }
    }
    Ok(())
}

/// `PUT /invite/{roomId}/{eventId}` (v2): a remote server invites a local user. The invite is
/// checked (format, signatures, the invitee is ours and exists), signed by this server, and kept
/// as an outlier with the stripped state the inviter sent, so the invitee sees it in `/sync`.
pub async fn invite(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    version: &RoomVersionId,
    event: &RawValue,
    invite_room_state: &[Box<RawValue>],
) -> Result<Value> {
    let rules = hearth_federation::rules_for(version)
        .ok_or_else(|| Error::IncompatibleRoomVersion(format!("Room version {version} is not supported")))?;
    let object = pdu_checks::parse(event).map_err(|e| Error::bad_json(e.to_string()))?;
    let checked = inbound::verify(svc, object, &rules)
        .await
        .map_err(Error::forbidden)?;
    let pdu = checked.pdu;
    if checked.redacted {
        return Err(Error::forbidden("The invite's content hash does not match"));
    }
    if pdu.event_id != event_id || pdu.room_id.as_deref() != Some(room_id) {
        return Err(Error::bad_json("The event does not match the path"));
    }
    let content = pdu.content_value();
    if pdu.event_type.to_string() != "m.room.member" || content["membership"] != "invite" {
        return Err(Error::bad_json("Not an invite"));
    }
    if pdu.sender.server_name() != origin {
        return Err(Error::forbidden(
            "The inviter does not belong to the requesting server",
        ));
    }
    let invitee = pdu
        .state_key
        .as_deref()
        .and_then(|k| UserId::parse(k).ok())
        .ok_or_else(|| Error::bad_json("Invalid state_key"))?;
    if invitee.server_name().as_str() != svc.server_name()
        || svc.store.user(invitee.as_str()).await?.is_none()
    {
        return Err(Error::not_found("The invitee is not a user of this server"));
    }
    if invite_room_state.len() > 50 {
        return Err(Error::bad_json("invite_room_state is too long"));
    }
    if !is_pre_msc4311(version) {
        check_invite_room_state(svc, room_id, &rules, invite_room_state).await?;
    }
    let mut json = pdu.json.clone();
    sign_json(svc.server_name(), svc.signing_key.pair(), &mut json).map_err(Error::internal)?;
    let signed = Pdu::from_parts(pdu.event_id.clone(), json).map_err(Error::internal)?;
    // In a room this server is in, the invite joins the timeline like any received event (so the
    // invitee answers it locally); elsewhere it is kept aside with the inviter's stripped state.
    if super::remote_membership::is_resident(svc, room_id).await? {
        match inbound::accept_checked(svc, origin, &rules, signed.clone()).await {
            Ok(accepted) if accepted.fate == Fate::Timeline => {
                return Ok(json!({ "event": serde_json::to_value(&signed.json).map_err(Error::internal)? }));
            }
            Ok(_) => {
                return Err(Error::forbidden(
                    "The invite fails against the room's current state",
                ));
            }
            Err(refused) => {
                tracing::info!(reason = %refused.reason, "invite not in the timeline; kept as an outlier")
            }
        }
    }
    let stripped: Vec<Value> = invite_room_state
        .iter()
        .filter_map(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .map(|v| inbound::stripped_state(&v))
        .collect();
    svc.store
        .store_remote_invite(
            &inbound::new_event(&signed),
            version.as_str(),
            &serde_json::to_string(&stripped).map_err(Error::internal)?,
            now_ms(),
        )
        .await?;
    svc.notifier.notify(vec![invitee.to_string()]);
    Ok(json!({ "event": serde_json::to_value(&signed.json).map_err(Error::internal)? }))
}

/// Room versions 1 to 11, where a server MAY accept an `invite_room_state` of stripped events
/// (Matrix 1.16); in later versions it SHOULD refuse one that is not whole, signed PDUs of the
/// room with its create event.
fn is_pre_msc4311(version: &RoomVersionId) -> bool {
    use RoomVersionId::*;
    matches!(version, V1 | V2 | V3 | V4 | V5 | V6 | V7 | V8 | V9 | V10 | V11)
}

/// Checks `invite_room_state` as the spec asks for room versions after 11: each entry a PDU of
/// the room version whose signatures verify, of the invite's room, the create event among them.
/// A failure is `400 M_INVALID_PARAM`.
async fn check_invite_room_state(
    svc: &Services,
    room_id: &RoomId,
    rules: &RoomVersionRules,
    invite_room_state: &[Box<RawValue>],
) -> Result<()> {
    let mut has_create = false;
    for raw in invite_room_state {
        let object = pdu_checks::parse(raw)
            .map_err(|e| Error::invalid_param(format!("invite_room_state holds a bad PDU: {e}")))?;
        let checked = inbound::verify(svc, object, rules)
            .await
            .map_err(|e| Error::invalid_param(format!("invite_room_state holds a bad PDU: {e}")))?;
        let pdu = checked.pdu;
        let is_create = super::remote_membership::is_create_of(rules, &pdu, room_id);
        if pdu.room_id.as_deref() != Some(room_id) && !is_create {
            return Err(Error::invalid_param(
                "invite_room_state holds an event of another room",
            ));
        }
        has_create |= is_create
            || (pdu.event_type.to_string() == "m.room.create" && pdu.state_key.as_deref() == Some(""));
    }
    if !has_create {
        return Err(Error::invalid_param(
            "invite_room_state must hold the room's m.room.create event",
        ));
    }
    Ok(())
}
