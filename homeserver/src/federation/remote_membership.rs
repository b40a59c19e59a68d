//! Membership over federation, the local user's side: joining a room this server is not in
//! (make_join, send_join, the returned state and auth chain checked and kept as outliers, the
//! join stored with that state as the room's), inviting a remote user (their server signs the
//! invite first), knocking on a room this server is not in (make_knock, send_knock), rejecting a
//! remote invite and telling remote servers of a local leave.

use std::collections::HashMap;

use hearth_federation::{Pdu, pdu::PduTemplate, pdu_checks, rules_for};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedServerName, RoomId, RoomVersionId, ServerName, UInt, UserId, room_version_rules::RoomVersionRules,
    state_res::check_state_dependent_auth_rules,
};
use serde_json::{Value, json, value::RawValue};

use super::{
    inbound::{self, Fate},
    membership,
};
use crate::{
    error::{Error, Result},
    rooms::{client_event::stripped_state, timeline},
    services::Services,
    store::{Appending, RoomRow, StateEntry},
    util::now_ms,
};

/// Servers tried for one remote join or leave.
const MAX_SERVERS_TRIED: usize = 3;
/// Largest `make_join`/`make_leave`/`invite` answer read.
const SMALL_RESPONSE: usize = 256 * 1024;
/// Largest `send_join` answer read (the room's state and its auth chain).
const SEND_JOIN_RESPONSE: usize = 32 * 1024 * 1024;
/// Most events a `send_join` answer may hold.
const MAX_JOIN_EVENTS: usize = 50_000;

/// The stripped state shown with a remote invite (the inviter's `invite_room_state` and the
/// invite itself).
pub async fn invite_state(svc: &Services, room_id: &str, user_id: &str) -> Result<Vec<Value>> {
    let Some((event_id, _, state, _)) = svc.store.remote_invite(user_id, room_id).await? else {
        return Ok(Vec::new());
    };
    let mut out: Vec<Value> = serde_json::from_str(&state).unwrap_or_default();
    if let Some(row) = svc.store.event(&event_id).await? {
        out.push(stripped_state(&row));
    }
    Ok(out)
}

/// Whether this server is in the room (has its state), as opposed to knowing of it only through
/// an invite, or not at all.
pub async fn is_resident(svc: &Services, room_id: &RoomId) -> Result<bool> {
    let key = [("m.room.create".to_owned(), String::new())];
    Ok(svc.store.room(room_id.as_str()).await?.is_some()
        && !svc
            .store
            .current_state_entries(room_id.as_str(), &key)
            .await?
            .is_empty())
}

/// Whether the user's newest membership in the room is an invite a remote server sent (and
/// this server did not see in the room's timeline): answering it goes through that server.
pub async fn has_pending_remote_invite(svc: &Services, user: &UserId, room_id: &RoomId) -> Result<bool> {
    let Some((event_id, ..)) = svc.store.remote_invite(user.as_str(), room_id.as_str()).await? else {
        return Ok(false);
    };
    // A knock on a room this server is not in is kept the same way, and retracted the same way.
    let latest_is_invite = matches!(
        svc.store
            .latest_membership(user.as_str(), room_id.as_str())
            .await?
            .as_deref(),
        Some("invite" | "knock")
    );
    let current = svc.store.membership(room_id.as_str(), user.as_str()).await?;
    Ok(latest_is_invite
        && matches!(current.as_deref(), None | Some("leave"))
        && svc.store.is_outlier(&event_id).await? == Some(true))
}

/// The servers to ask about a room: the client's `via`, the inviter's server, the room ID's.
async fn candidate_servers(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    via: &[OwnedServerName],
) -> Result<Vec<OwnedServerName>> {
    let mut servers: Vec<OwnedServerName> = via.to_vec();
    if let Some((_, _, state, inviter)) = svc.store.remote_invite(user.as_str(), room_id.as_str()).await? {
        if let Ok(inviter) = UserId::parse(inviter) {
            servers.push(inviter.server_name().to_owned());
        }
        // The senders of the room's stripped state (a knock's own sender is this server; a
        // version 12 room ID names no server).
        let state: Vec<Value> = serde_json::from_str(&state).unwrap_or_default();
        servers.extend(
            state
                .iter()
                .filter_map(|e| UserId::parse(e["sender"].as_str()?).ok())
                .map(|u| u.server_name().to_owned()),
        );
    }
    if let Some(server) = room_id.server_name() {
        servers.push(server.to_owned());
    }
    let mut seen = Vec::new();
    servers.retain(|s| {
        s.as_str() != svc.server_name() && !seen.contains(s) && {
            seen.push(s.clone());
            true
        }
    });
    if servers.is_empty() {
        return Err(Error::not_found(
            "No server to join the room through (give one in `via`)",
        ));
    }
    Ok(servers)
}

/// Joins a room this server is not in, through one of `via` (or the inviter's server).
pub async fn join_remote(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    via: &[OwnedServerName],
) -> Result<()> {
    let servers = candidate_servers(svc, user, room_id, via).await?;
    let mut last = Error::not_found("No server could join the room");
    for server in servers.iter().take(MAX_SERVERS_TRIED) {
        match join_through(svc, user, room_id, server).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                tracing::info!(%server, %room_id, %error, "remote join failed");
                last = error;
            }
        }
    }
    Err(last)
}

async fn join_through(svc: &Services, user: &UserId, room_id: &RoomId, server: &ServerName) -> Result<()> {
    let client = svc.federation.client()?;
    let versions: Vec<String> = hearth_federation::SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| format!("ver={v}"))
        .collect();
    let path = format!(
        "/_matrix/federation/v1/make_join/{}/{}?{}",
        inbound::encode(room_id.as_str()),
        inbound::encode(user.as_str()),
        versions.join("&")
    );
    let body = client
        .get(server, &path, Some(&svc.signing_key), SMALL_RESPONSE)
        .await
        .map_err(remote_error)?;
    let (version, rules, join) = fill_template(svc, user, room_id, &body, "join", None).await?;

    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        inbound::encode(room_id.as_str()),
        inbound::encode(join.event_id.as_str())
    );
    let body = put(
        svc,
        server,
        &path,
        serde_json::to_vec(&join.json).map_err(Error::internal)?,
        SEND_JOIN_RESPONSE,
    )
    .await?;
    #[derive(serde::Deserialize)]
    struct SendJoin {
        #[serde(default)]
        state: Vec<Box<RawValue>>,
        #[serde(default)]
        auth_chain: Vec<Box<RawValue>>,
    }
    let answer: SendJoin = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_gateway(format!("{server} sent a bad send_join answer: {e}")))?;
    if answer.state.len() + answer.auth_chain.len() > MAX_JOIN_EVENTS {
        return Err(Error::bad_gateway(format!("{server} sent too many events")));
    }

    // Every event checked: signatures and hashes, then auth against its auth events, oldest
    // first. The state must pass whole; auth chain events that fail are dropped as rejected.
    let mut events: HashMap<OwnedEventId, Pdu> = HashMap::new();
    let mut state_ids = Vec::new();
    for (raw, is_state) in answer
        .state
        .iter()
        .map(|r| (r, true))
        .chain(answer.auth_chain.iter().map(|r| (r, false)))
    {
        let object = pdu_checks::parse(raw).map_err(|e| Error::bad_gateway(format!("{server}: {e}")))?;
        let checked = inbound::verify(svc, object, &rules)
            .await
            .map_err(|e| Error::bad_gateway(format!("{server} sent an event that fails its checks: {e}")))?;
        let pdu = checked.pdu;
        if pdu.room_id.as_deref() != Some(room_id) && !is_create_of(&rules, &pdu, room_id) {
            return Err(Error::bad_gateway(format!(
                "{server} sent an event of another room"
            )));
        }
        if is_state {
            state_ids.push(pdu.event_id.clone());
        }
        events.insert(pdu.event_id.clone(), pdu);
    }
    let mut ordered: Vec<&Pdu> = events.values().collect();
    ordered.sort_by_key(|p| p.depth);
    let mut accepted: HashMap<OwnedEventId, Pdu> = HashMap::new();
    for pdu in ordered {
        match inbound::check_with_auth_events(&rules, pdu, &accepted) {
            Ok(()) => {
                accepted.insert(pdu.event_id.clone(), pdu.clone());
            }
            Err(reason) if state_ids.contains(&pdu.event_id) => {
                return Err(Error::bad_gateway(format!(
                    "{server} sent room state that fails the auth rules ({}: {reason})",
                    pdu.event_id
                )));
            }
            Err(reason) => tracing::info!(event_id = %pdu.event_id, %reason, "auth chain event rejected"),
        }
    }
    let mut state: HashMap<(String, String), Pdu> = HashMap::new();
    for id in &state_ids {
        let pdu = &accepted[id];
        if let Some(key) = &pdu.state_key {
            state.insert((pdu.event_type.to_string(), key.clone()), pdu.clone());
        }
    }
    let create = state
        .get(&("m.room.create".to_owned(), String::new()))
        .ok_or_else(|| Error::bad_gateway(format!("{server} sent state without a create event")))?;
    let created_version = create.content_value()["room_version"]
        .as_str()
        .unwrap_or("1")
        .to_owned();
    if created_version != version.as_str() {
        return Err(Error::bad_gateway(
            "the room's create event names another version",
        ));
    }
    // The join itself must pass against that state.
    check_state_dependent_auth_rules(&rules.authorization, &join, |t, k: &str| {
        state.get(&(t.to_string(), k.to_owned()))
    })
    .map_err(|e| Error::forbidden(format!("The join is not allowed: {e}")))?;

    let outliers: Vec<_> = accepted
        .values()
        .map(|p| {
            let mut event = inbound::new_event(p);
            event.room_id = room_id.to_string();
            event
        })
        .collect();
    let entries: Vec<StateEntry> = state
        .iter()
        .map(|((t, k), p)| StateEntry {
            event_type: t.clone(),
            state_key: k.clone(),
            event_id: p.event_id.to_string(),
            membership: (t == "m.room.member")
                .then(|| p.content_value()["membership"].as_str().map(ToOwned::to_owned))
                .flatten(),
        })
        .collect();
    let room = RoomRow {
        room_id: room_id.to_string(),
        room_version: version.to_string(),
        creator: create.sender.to_string(),
        is_public: false,
    };
    svc.timeline
        .with_append_lock(room_id, async {
            let group = svc
                .store
                .adopt_remote_room(&room, &outliers, &entries, now_ms())
                .await?;
            svc.sync_engine.room_state_touched(&room.room_id);
            let mut batch = [Appending {
                event: inbound::new_event(&join),
                previous_group: Some(group),
                push: Vec::new(),
                outbound: Vec::new(),
            }];
            if let Err(error) = timeline::persist(svc, &mut batch).await {
                // Without its join the room is not this server's: a retry joins remotely again.
                svc.store.set_current_state(room_id.as_str(), &[]).await?;
                return Err(error.into());
            }
            Ok::<_, Error>(())
        })
        .await?;
    svc.store.unforget_room(user.as_str(), room_id.as_str()).await?;
    tracing::info!(%room_id, %user, %server, "joined a remote room");
    Ok(())
}

/// Knocks on a room this server is not in, through one of `via` (or the room ID's server):
/// `make_knock`, the knock built from the template and signed here, `send_knock`. The knock is
/// kept as an outlier with the `knock_room_state` the resident server answered (stripped, like a
/// remote invite's state), so the knocker sees the room in `/sync` `knock`. A refusal (403) or a
/// room version without knocking is the answer; other failures try the next server.
pub async fn knock_remote(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    via: &[OwnedServerName],
    reason: Option<&str>,
) -> Result<()> {
    let servers = candidate_servers(svc, user, room_id, via).await?;
    let mut last = Error::not_found("No server could knock on the room");
    for server in servers.iter().take(MAX_SERVERS_TRIED) {
        match knock_through(svc, user, room_id, server, reason).await {
            Ok(()) => return Ok(()),
            Err(error @ (Error::Forbidden(_) | Error::IncompatibleRoomVersion(_))) => return Err(error),
            Err(error) => {
                tracing::info!(%server, %room_id, %error, "remote knock failed");
                last = error;
            }
        }
    }
    Err(last)
}

async fn knock_through(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    server: &ServerName,
    reason: Option<&str>,
) -> Result<()> {
    let versions: Vec<String> = hearth_federation::SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| format!("ver={v}"))
        .collect();
    let path = format!(
        "/_matrix/federation/v1/make_knock/{}/{}?{}",
        inbound::encode(room_id.as_str()),
        inbound::encode(user.as_str()),
        versions.join("&")
    );
    let body = knock_request(svc, server, "GET", &path, None).await?;
    let (version, rules, knock) = fill_template(svc, user, room_id, &body, "knock", reason).await?;
    if !rules.authorization.knocking {
        return Err(Error::IncompatibleRoomVersion(format!(
            "Room version {version} does not support knocking"
        )));
    }
    let path = format!(
        "/_matrix/federation/v1/send_knock/{}/{}",
        inbound::encode(room_id.as_str()),
        inbound::encode(knock.event_id.as_str())
    );
    let answer = knock_request(
        svc,
        server,
        "PUT",
        &path,
        Some(serde_json::to_vec(&knock.json).map_err(Error::internal)?),
    )
    .await?;
    #[derive(serde::Deserialize)]
    struct SendKnock {
        #[serde(default)]
        knock_room_state: Vec<Value>,
    }
    let answer: SendKnock = serde_json::from_slice(&answer)
        .map_err(|e| Error::bad_gateway(format!("{server} sent a bad send_knock answer: {e}")))?;
    // Shown to the knocker only, as stripped state: the type, state key, sender and content of
    // each state event of this room (at most 50).
    let stripped: Vec<Value> = answer
        .knock_room_state
        .iter()
        .filter(|v| v["state_key"].is_string() && v["type"].is_string() && v["content"].is_object())
        .filter(|v| v["room_id"].as_str().is_none_or(|r| r == room_id.as_str()))
        .take(50)
        .map(inbound::stripped_state)
        .collect();
    svc.store
        .store_remote_invite(
            &inbound::new_event(&knock),
            version.as_str(),
            &serde_json::to_string(&stripped).map_err(Error::internal)?,
            now_ms(),
        )
        .await?;
    svc.notifier.notify(vec![user.to_string()]);
    tracing::info!(%room_id, %user, %server, "knocked on a remote room");
    Ok(())
}

/// A signed request for a knock: the answer's body on a 2xx; the resident server's refusal as
/// the spec's error (403 `M_FORBIDDEN`, 400 `M_INCOMPATIBLE_ROOM_VERSION`, 404 `M_NOT_FOUND`).
async fn knock_request(
    svc: &Services,
    server: &ServerName,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Vec<u8>> {
    let client = svc.federation.client()?;
    let authorization = client
        .authorization(&svc.signing_key, server, method, path, body.as_deref())
        .map_err(remote_error)?;
    let (status, answer) = client
        .request(method, server, path, body, Some(authorization), SMALL_RESPONSE)
        .await
        .map_err(remote_error)?;
    if (200..300).contains(&status) {
        return Ok(answer);
    }
    let detail: Value = serde_json::from_slice(&answer).unwrap_or_default();
    let message = format!(
        "{server} refused: {}",
        detail["error"].as_str().unwrap_or("no reason given")
    );
    Err(match (status, detail["errcode"].as_str()) {
        (403, _) => Error::forbidden(message),
        (_, Some("M_INCOMPATIBLE_ROOM_VERSION")) => Error::IncompatibleRoomVersion(message),
        (404, _) => Error::not_found(message),
        _ => Error::bad_gateway(message),
    })
}

/// Whether `pdu` is the room version 12 create event that defines `room_id`.
pub(super) fn is_create_of(rules: &RoomVersionRules, pdu: &Pdu, room_id: &RoomId) -> bool {
    rules.authorization.room_create_event_id_as_room_id
        && pdu.event_type.to_string() == "m.room.create"
        && hearth_federation::pdu::room_id_from_create_event(&pdu.event_id) == room_id
}

/// Reads a `make_join`/`make_leave` answer and builds the membership event from its template,
/// signed by this server. The template must be the membership asked for, of this user and room.
async fn fill_template(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    body: &[u8],
    membership: &str,
    reason: Option<&str>,
) -> Result<(RoomVersionId, RoomVersionRules, Pdu)> {
    #[derive(serde::Deserialize)]
    struct MakeMembership {
        room_version: Option<RoomVersionId>,
        event: CanonicalJsonObject,
    }
    let answer: MakeMembership = serde_json::from_slice(body)
        .map_err(|e| Error::bad_gateway(format!("bad make_{membership} answer: {e}")))?;
    let version = answer.room_version.unwrap_or(RoomVersionId::V1);
    let rules = rules_for(&version)
        .ok_or_else(|| Error::unsupported_room_version(format!("Room version {version} is not supported")))?;
    let field = |key: &str| match answer.event.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    if field("type").as_deref() != Some("m.room.member")
        || field("sender").as_deref() != Some(user.as_str())
        || field("state_key").as_deref() != Some(user.as_str())
        || field("room_id").as_deref() != Some(room_id.as_str())
    {
        return Err(Error::bad_gateway(format!(
            "the make_{membership} template is not this user's {membership}"
        )));
    }
    let ids = |key: &str| -> Result<Vec<OwnedEventId>> {
        match answer.event.get(key) {
            Some(CanonicalJsonValue::Array(a)) if a.len() <= 20 => a
                .iter()
                .map(|v| match v {
                    CanonicalJsonValue::String(s) => {
                        EventId::parse(s).map_err(|_| Error::bad_gateway("bad event ID"))
                    }
                    _ => Err(Error::bad_gateway("bad event ID")),
                })
                .collect(),
            _ => Err(Error::bad_gateway(format!("the template's {key} are missing"))),
        }
    };
    let depth = match answer.event.get("depth") {
        Some(CanonicalJsonValue::Integer(d)) => u64::try_from(i64::from(*d)).unwrap_or(1),
        _ => 1,
    };
    let mut content = if matches!(membership, "join" | "knock") {
        crate::rooms::membership::member_content(svc, user, membership).await?
    } else {
        json!({ "membership": membership })
    };
    if let Some(reason) = reason {
        content["reason"] = json!(reason);
    }
    let pdu = PduTemplate {
        room_id: Some(room_id.to_owned()),
        sender: user.to_owned(),
        event_type: "m.room.member".into(),
        state_key: Some(user.to_string()),
        content,
        prev_events: ids("prev_events")?,
        auth_events: ids("auth_events")?,
        depth,
        origin_server_ts: MilliSecondsSinceUnixEpoch(
            UInt::new(svc.clock.now_ms() as u64).unwrap_or_default(),
        ),
        redacts: None,
    }
    .finish(&rules, svc.server_name(), &svc.signing_key)
    .map_err(|e| Error::bad_json(e.to_string()))?;
    Ok((version, rules, pdu))
}

/// Rejects an invite into a room this server is not in: make_leave and send_leave through the
/// inviter's server, then the leave kept as an outlier so the invite leaves `/sync`.
pub async fn reject_remote_invite(svc: &Services, user: &UserId, room_id: &RoomId) -> Result<()> {
    let servers = candidate_servers(svc, user, room_id, &[]).await?;
    let server = &servers[0];
    let client = svc.federation.client()?;
    let path = format!(
        "/_matrix/federation/v1/make_leave/{}/{}",
        inbound::encode(room_id.as_str()),
        inbound::encode(user.as_str())
    );
    let body = client
        .get(server, &path, Some(&svc.signing_key), SMALL_RESPONSE)
        .await
        .map_err(remote_error)?;
    let (_, _, leave) = fill_template(svc, user, room_id, &body, "leave", None).await?;
    send_leave(svc, server, &leave).await?;
    svc.store
        .store_outlier_membership(&inbound::new_event(&leave))
        .await?;
    svc.sync_engine.room_state_touched(room_id.as_str());
    svc.notifier.notify(vec![user.to_string(), room_id.to_string()]);
    Ok(())
}

/// Sends a stored leave of a local user to a server (`send_leave` v2), so it learns of it even
/// before the outbound queue delivers it (which then repeats it harmlessly).
pub async fn send_leave(svc: &Services, server: &ServerName, leave: &Pdu) -> Result<()> {
    let room_id = leave
        .room_id
        .as_deref()
        .ok_or_else(|| Error::internal("no room"))?;
    let path = format!(
        "/_matrix/federation/v2/send_leave/{}/{}",
        inbound::encode(room_id.as_str()),
        inbound::encode(leave.event_id.as_str())
    );
    put(
        svc,
        server,
        &path,
        serde_json::to_vec(&leave.json).map_err(Error::internal)?,
        SMALL_RESPONSE,
    )
    .await?;
    Ok(())
}

/// The other servers with joined members in a room.
pub async fn remote_servers(svc: &Services, room_id: &RoomId) -> Result<Vec<OwnedServerName>> {
    let mut servers: Vec<OwnedServerName> = svc
        .store
        .members_with(room_id.as_str(), "join")
        .await?
        .into_iter()
        .filter_map(|m| UserId::parse(m).ok().map(|u| u.server_name().to_owned()))
        .filter(|s| s.as_str() != svc.server_name())
        .collect();
    servers.sort();
    servers.dedup();
    Ok(servers)
}

/// Invites a remote user: the invite is built here, signed by the invitee's server through
/// `/invite` (v2), then stored like any received event.
pub async fn invite_remote(
    svc: &Services,
    sender: &UserId,
    room_id: &RoomId,
    target: &UserId,
    content: Value,
) -> Result<()> {
    let (version, rules) = inbound::room_rules(svc, room_id).await?;
    let built = membership::build_event(
        svc,
        room_id,
        sender,
        "m.room.member",
        Some(target.as_str()),
        content,
        &rules,
    )
    .await?;
    let state = &built.state;
    check_state_dependent_auth_rules(&rules.authorization, &built.pdu, |t, k: &str| {
        state.get(&(t.to_string(), k.to_owned()))
    })
    .map_err(|e| Error::forbidden(format!("You may not invite this user: {e}")))?;
    let stripped = invite_room_state(svc, room_id).await?;
    let server = target.server_name();
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        inbound::encode(room_id.as_str()),
        inbound::encode(built.pdu.event_id.as_str())
    );
    let body = json!({
        "room_version": version,
        "event": built.pdu.json,
        "invite_room_state": stripped,
    });
    let answer = put(
        svc,
        server,
        &path,
        serde_json::to_vec(&body).map_err(Error::internal)?,
        SMALL_RESPONSE,
    )
    .await?;
    #[derive(serde::Deserialize)]
    struct Invited {
        event: Box<RawValue>,
    }
    let invited: Invited = serde_json::from_slice(&answer)
        .map_err(|e| Error::bad_gateway(format!("{server} sent a bad invite answer: {e}")))?;
    let object = pdu_checks::parse(&invited.event).map_err(|e| Error::bad_gateway(e.to_string()))?;
    if !matches!(object.get("signatures"), Some(CanonicalJsonValue::Object(s)) if s.contains_key(server.as_str()))
    {
        return Err(Error::bad_gateway(format!("{server} did not sign the invite")));
    }
    let checked = inbound::verify(svc, object, &rules)
        .await
        .map_err(|e| Error::bad_gateway(format!("{server} sent a bad invite: {e}")))?;
    if checked.pdu.event_id != built.pdu.event_id {
        return Err(Error::bad_gateway(format!("{server} changed the invite")));
    }
    let accepted = inbound::accept_checked(svc, server, &rules, checked.pdu)
        .await
        .map_err(|r| Error::forbidden(r.reason))?;
    if accepted.fate != Fate::Timeline {
        return Err(Error::forbidden(
            "The invite is not allowed by the room's current state",
        ));
    }
    Ok(())
}

/// The state sent with an invite (`invite_room_state`): since Matrix 1.16 whole PDUs of the
/// room version, the create event among them (the receiver checks their signatures; Synapse
/// warns about stripped events in room version 12 and the spec says such invites SHOULD be
/// refused). The invitee's server strips them for its client.
async fn invite_room_state(svc: &Services, room_id: &RoomId) -> Result<Vec<Value>> {
    let state = svc.store.current_state(room_id.as_str()).await?;
    let ids: Vec<String> = state
        .iter()
        .filter(|((t, _), _)| crate::sync::INVITE_STATE_TYPES.contains(&t.as_str()))
        .map(|(_, id)| id.clone())
        .collect();
    svc.store
        .events(&ids)
        .await?
        .iter()
        .map(|row| serde_json::to_value(&timeline::pdu_of(row)?.json).map_err(Error::internal))
        .collect()
}

/// PUT a JSON body to `server`, signed: the answer's body.
async fn put(
    svc: &Services,
    server: &ServerName,
    path: &str,
    body: Vec<u8>,
    limit: usize,
) -> Result<Vec<u8>> {
    let client = svc.federation.client()?;
    let authorization = client
        .authorization(&svc.signing_key, server, "PUT", path, Some(&body))
        .map_err(remote_error)?;
    let (status, answer) = client
        .request("PUT", server, path, Some(body), Some(authorization), limit)
        .await
        .map_err(remote_error)?;
    if !(200..300).contains(&status) {
        let detail: Value = serde_json::from_slice(&answer).unwrap_or_default();
        let message = format!(
            "{server} refused: {}",
            detail["error"].as_str().unwrap_or("no reason given")
        );
        return Err(if status == 403 {
            Error::forbidden(message)
        } else {
            Error::bad_gateway(message)
        });
    }
    Ok(answer)
}

fn remote_error(e: super::FedError) -> Error {
    match e {
        super::FedError::Status(server, 403) => Error::forbidden(format!("{server} refused")),
        super::FedError::Status(server, 404) => Error::not_found(format!("{server} does not know the room")),
        e => Error::bad_gateway(e.to_string()),
    }
}
