//! The stored event graph is what other servers would accept: correct IDs, hashes and
//! signatures, a well-formed DAG, the auth events the rules select, and every event allowed by
//! the authorization rules against the state before it. Checked for room versions 10, 11, 12.

mod common;

use std::collections::{BTreeSet, HashMap};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{Client, Server, StateGroups, encode};
use hearth_federation::SigningKey;
use reqwest::Method;
use ruma::{
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    RoomVersionId, UInt, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::RoomVersionRules,
    serde::Base64,
    signatures::{PublicKeyMap, Verified, reference_hash, verify_event},
    state_res::{auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules},
};
use serde_json::{Value, json, value::RawValue};
use sqlx::{AnyPool, Row};

/// A stored event, parsed by the test itself (not by Hearth's types).
#[derive(Debug)]
struct Stored {
    stream: i64,
    state_group: i64,
    column_depth: i64,
    event_id: OwnedEventId,
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    ts: MilliSecondsSinceUnixEpoch,
    kind: TimelineEventType,
    content: Box<RawValue>,
    content_value: Value,
    state_key: Option<String>,
    prev_events: Vec<OwnedEventId>,
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
    depth: u64,
    json: CanonicalJsonObject,
    raw: Value,
}

fn ids(value: &Value, key: &str) -> Vec<OwnedEventId> {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array in {value}"))
        .iter()
        .map(|v| EventId::parse(v.as_str().expect("event ID string")).expect("valid event ID"))
        .collect()
}

impl Stored {
    fn parse(stream: i64, state_group: i64, column_depth: i64, event_id: &str, text: &str) -> Self {
        let raw: Value = serde_json::from_str(text).expect("stored json parses");
        let json: CanonicalJsonObject = serde_json::from_str(text).expect("stored json is canonical JSON");
        let redacts = raw["redacts"]
            .as_str()
            .or_else(|| raw["content"]["redacts"].as_str())
            .map(|r| EventId::parse(r).expect("valid redacts"));
        Stored {
            stream,
            state_group,
            column_depth,
            event_id: EventId::parse(event_id).expect("valid event_id column"),
            room_id: raw["room_id"]
                .as_str()
                .map(|r| RoomId::parse(r).expect("valid room_id")),
            sender: UserId::parse(raw["sender"].as_str().expect("sender")).expect("valid sender"),
            ts: MilliSecondsSinceUnixEpoch(
                UInt::new(raw["origin_server_ts"].as_u64().expect("origin_server_ts")).expect("ts fits"),
            ),
            kind: raw["type"].as_str().expect("type").into(),
            content: serde_json::value::to_raw_value(&raw["content"]).expect("content"),
            content_value: raw["content"].clone(),
            state_key: raw["state_key"].as_str().map(ToOwned::to_owned),
            prev_events: ids(&raw, "prev_events"),
            auth_events: ids(&raw, "auth_events"),
            redacts,
            depth: raw["depth"].as_u64().expect("depth"),
            json,
            raw,
        }
    }
}

impl ruma::state_res::Event for Stored {
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
        self.ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
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

type StateKey = (String, String);

async fn public_keys(db: &AnyPool, server_name: &str) -> PublicKeyMap {
    let row = sqlx::query("SELECT key_id, pkcs8 FROM server_signing_keys")
        .fetch_one(db)
        .await
        .expect("a signing key is stored");
    let key_id: String = row.get(0);
    let pkcs8: String = row.get(1);
    let version = key_id.strip_prefix("ed25519:").expect("ed25519 key ID");
    let key = SigningKey::from_pkcs8(&STANDARD.decode(pkcs8).expect("base64 pkcs8"), version)
        .expect("stored key loads");
    let mut keys = std::collections::BTreeMap::new();
    keys.insert(
        key_id,
        Base64::parse(key.public_key_base64()).expect("public key is base64"),
    );
    let mut map = PublicKeyMap::new();
    map.insert(server_name.to_owned(), keys);
    map
}

async fn power_levels(client: &Client, room: &str) -> Value {
    client
        .ok(
            Method::GET,
            &Client::state_path(room, "m.room.power_levels", ""),
            None,
        )
        .await
}

/// A varied history: creation with name/topic/alias, invites, joins, leaves, a kick, a ban,
/// power level and other state changes, messages and a redaction.
async fn build_history(version: &str, users: &[Client; 5]) -> String {
    let [alice, bob, carol, dave, erin] = users;
    let room = alice
        .create_room(json!({
            "room_version": version,
            "preset": "private_chat",
            "name": format!("DAG v{version}"),
            "topic": "checking the graph",
            "room_alias_name": format!("dag-v{version}"),
            "invite": [bob.user_id],
        }))
        .await;
    bob.join(&room).await;
    alice.invite(&room, &carol.user_id).await;
    carol.join(&room).await;
    let mut bob_messages = Vec::new();
    for i in 0..3 {
        alice.send_text(&room, &format!("alice {i}")).await;
        bob_messages.push(bob.send_text(&room, &format!("bob {i}")).await);
    }
    let mut pl = power_levels(alice, &room).await;
    pl["users"][bob.user_id.as_str()] = json!(50);
    alice.set_state(&room, "m.room.power_levels", "", pl).await;
    bob.set_state(&room, "m.room.topic", "", json!({ "topic": "bob's topic" }))
        .await;
    bob.set_state(&room, "m.room.name", "", json!({ "name": "Renamed" }))
        .await;
    carol.send_text(&room, "carol leaving").await;
    carol.leave(&room).await;
    alice.redact(&room, &bob_messages[1]).await;
    alice
        .set_state(&room, "org.hearth.test", "k", json!({ "n": 1 }))
        .await;
    alice
        .set_state(&room, "m.room.join_rules", "", json!({ "join_rule": "public" }))
        .await;
    dave.join(&room).await;
    dave.send_text(&room, "dave was here").await;
    alice
        .ok(
            Method::POST,
            &format!("/rooms/{}/ban", encode(&room)),
            Some(&json!({ "user_id": dave.user_id, "reason": "test" })),
        )
        .await;
    alice.invite(&room, &erin.user_id).await;
    alice
        .ok(
            Method::POST,
            &format!("/rooms/{}/kick", encode(&room)),
            Some(&json!({ "user_id": erin.user_id })),
        )
        .await;
    alice
        .set_state(
            &room,
            "m.room.history_visibility",
            "",
            json!({ "history_visibility": "joined" }),
        )
        .await;
    alice
        .set_state(&room, "org.hearth.test", "k", json!({ "n": 2 }))
        .await;
    let mut pl = power_levels(alice, &room).await;
    pl["users"]
        .as_object_mut()
        .expect("users")
        .remove(bob.user_id.as_str());
    alice.set_state(&room, "m.room.power_levels", "", pl).await;
    bob.send_text(&room, "demoted").await;
    // Knocking: erin (kicked above) knocks, is let in by an invite, joins.
    alice
        .set_state(&room, "m.room.join_rules", "", json!({ "join_rule": "knock" }))
        .await;
    erin.ok(
        Method::POST,
        &format!("/knock/{}", encode(&room)),
        Some(&json!({ "reason": "let me back" })),
    )
    .await;
    alice.invite(&room, &erin.user_id).await;
    erin.join(&room).await;
    erin.send_text(&room, "back").await;
    // Concurrent writers: the DAG must stay a single well-formed chain.
    let mut tasks = Vec::new();
    for client in [alice.clone(), bob.clone()] {
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                client.send_text(&room, &format!("concurrent {i}")).await;
            }
        }));
    }
    let room_for_state = room.clone();
    let alice_state = alice.clone();
    tasks.push(tokio::spawn(async move {
        for i in 0..5 {
            alice_state
                .set_state(
                    &room_for_state,
                    "org.hearth.test",
                    &format!("c{i}"),
                    json!({ "i": i }),
                )
                .await;
        }
    }));
    for t in tasks {
        t.await.expect("writer task");
    }
    room
}

/// Checks every stored event of the room; returns (events, redactions) checked.
async fn check_room(
    db: &AnyPool,
    keys: &PublicKeyMap,
    room: &str,
    version: &RoomVersionId,
) -> (usize, usize) {
    let rules: RoomVersionRules = version.rules().expect("known room version");
    let rows = sqlx::query(
        "SELECT stream_ordering, state_group, depth, event_id, json FROM events \
         WHERE room_id = $1 ORDER BY stream_ordering",
    )
    .bind(room.to_owned())
    .fetch_all(db)
    .await
    .expect("read events");
    let events: Vec<Stored> = rows
        .iter()
        .map(|r| {
            Stored::parse(
                r.get(0),
                r.get(1),
                r.get(2),
                &r.get::<String, _>(3),
                &r.get::<String, _>(4),
            )
        })
        .collect();
    let by_id: HashMap<OwnedEventId, &Stored> = events.iter().map(|e| (e.event_id.clone(), e)).collect();
    assert_eq!(by_id.len(), events.len(), "duplicate event IDs");
    let redacted: BTreeSet<OwnedEventId> = events.iter().filter_map(|e| e.redacts.clone()).collect();

    let create = &events[0];
    assert_eq!(
        create.kind,
        TimelineEventType::RoomCreate,
        "first event is the create event"
    );
    if rules.authorization.room_create_event_id_as_room_id {
        // (d) Room version 12: the room ID is the create event's reference hash.
        assert!(
            create.raw.get("room_id").is_none(),
            "v12 create event has a room_id"
        );
        assert_eq!(
            room,
            format!("!{}", create.event_id.as_str().trim_start_matches('$')),
            "v12 room ID is not derived from the create event"
        );
    }

    let edges: Vec<(String, String)> = sqlx::query(
        "SELECT d.event_id, d.prev_event_id FROM event_edges d JOIN events e ON e.event_id = d.event_id \
         WHERE e.room_id = $1",
    )
    .bind(room.to_owned())
    .fetch_all(db)
    .await
    .expect("read event_edges")
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let edges: BTreeSet<(String, String)> = edges.into_iter().collect();
    let json_edges: BTreeSet<(String, String)> = events
        .iter()
        .flat_map(|e| {
            e.prev_events
                .iter()
                .map(|p| (e.event_id.to_string(), p.to_string()))
        })
        .collect();
    assert_eq!(
        edges, json_edges,
        "event_edges disagrees with the events' prev_events"
    );

    // The columns queries use, beside the JSON: (type, state_key, sender, redacts,
    // replaces_state, origin_server_ts).
    type Columns = (
        String,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
        i64,
    );
    let columns: HashMap<String, Columns> = sqlx::query(
        "SELECT event_id, type, state_key, sender, redacts, replaces_state, origin_server_ts \
         FROM events WHERE room_id = $1",
    )
    .bind(room.to_owned())
    .fetch_all(db)
    .await
    .expect("read event columns")
    .into_iter()
    .map(|r| {
        (
            r.get(0),
            (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)),
        )
    })
    .collect();
    let memberships: HashMap<String, (String, String, String, i64)> = sqlx::query(
        "SELECT event_id, user_id, sender, membership, stream_ordering FROM room_memberships WHERE room_id = $1",
    )
    .bind(room.to_owned())
    .fetch_all(db)
    .await
    .expect("read room_memberships")
    .into_iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
    .collect();
    let room_row = sqlx::query("SELECT room_version, creator FROM rooms WHERE room_id = $1")
        .bind(room.to_owned())
        .fetch_one(db)
        .await
        .expect("rooms row");
    assert_eq!(
        room_row.get::<String, _>(0),
        version.as_str(),
        "rooms.room_version"
    );
    assert_eq!(
        room_row.get::<String, _>(1),
        create.sender.as_str(),
        "rooms.creator"
    );
    assert_eq!(
        create.content_value["room_version"].as_str().unwrap_or("1"),
        version.as_str(),
        "create event content.room_version"
    );
    let member_events = events
        .iter()
        .filter(|e| e.kind == TimelineEventType::RoomMember)
        .count();
    assert_eq!(
        memberships.len(),
        member_events,
        "room_memberships rows vs member events"
    );

    let groups = StateGroups::load(db, room).await;
    let mut state: HashMap<StateKey, OwnedEventId> = HashMap::new();
    for (i, ev) in events.iter().enumerate() {
        let ctx = format!("v{version} event #{i} {} ({}): {}", ev.event_id, ev.kind, ev.raw);

        // (a) The event ID is the reference hash.
        let hash = reference_hash(&ev.json, &rules).expect("reference hash");
        assert_eq!(
            ev.event_id.as_str(),
            format!("${hash}"),
            "event ID is not the reference hash: {ctx}"
        );

        // (b) Signed by the server, content hash intact.
        let verified = verify_event(keys, &ev.json, &rules)
            .unwrap_or_else(|e| panic!("signature check failed ({e}): {ctx}"));
        if verified != Verified::All {
            assert!(
                redacted.contains(&ev.event_id),
                "content hash mismatch on an event that was never redacted: {ctx}"
            );
        }

        // Room membership of the event, and the redacts field's place for the version.
        if i > 0 || !rules.authorization.room_create_event_id_as_room_id {
            assert_eq!(
                ev.room_id.as_ref().map(|r| r.as_str()),
                Some(room),
                "wrong room_id: {ctx}"
            );
        }
        if ev.kind == TimelineEventType::RoomRedaction {
            if rules.redaction.content_field_redacts {
                assert!(
                    ev.content_value.get("redacts").is_some(),
                    "v11+ redaction without content.redacts: {ctx}"
                );
            } else {
                assert!(
                    ev.raw.get("redacts").is_some(),
                    "pre-v11 redaction without top-level redacts: {ctx}"
                );
            }
            let target = ev.redacts.as_ref().expect("redacts");
            assert!(by_id.contains_key(target), "redaction of an unknown event: {ctx}");
        }

        // (c) The DAG: parents exist, come earlier, depth = max(parent depth) + 1.
        assert_eq!(
            ev.column_depth as u64, ev.depth,
            "depth column differs from the PDU: {ctx}"
        );
        if i == 0 {
            assert!(
                ev.prev_events.is_empty() && ev.auth_events.is_empty(),
                "create has parents: {ctx}"
            );
            assert_eq!(ev.depth, 1, "create depth: {ctx}");
        } else {
            assert!(!ev.prev_events.is_empty(), "event without prev_events: {ctx}");
            let mut max_prev = 0;
            for prev in &ev.prev_events {
                let parent = by_id
                    .get(prev)
                    .unwrap_or_else(|| panic!("prev_event {prev} not stored: {ctx}"));
                assert!(parent.stream < ev.stream, "prev_event {prev} stored later: {ctx}");
                assert!(parent.depth < ev.depth, "prev_event {prev} not shallower: {ctx}");
                max_prev = max_prev.max(parent.depth);
            }
            assert_eq!(ev.depth, max_prev + 1, "depth is not max(prev depths) + 1: {ctx}");
        }
        let auth_set: BTreeSet<&OwnedEventId> = ev.auth_events.iter().collect();
        assert_eq!(
            auth_set.len(),
            ev.auth_events.len(),
            "duplicate auth_events: {ctx}"
        );
        for auth in &ev.auth_events {
            let a = by_id
                .get(auth)
                .unwrap_or_else(|| panic!("auth_event {auth} not stored: {ctx}"));
            assert!(a.depth < ev.depth, "auth_event {auth} not shallower: {ctx}");
            assert!(
                a.state_key.is_some(),
                "auth_event {auth} is not a state event: {ctx}"
            );
        }

        // (e) The auth events are exactly the ones the rules select from the state before it.
        let auth_types = auth_types_for_event(
            &ev.kind,
            &ev.sender,
            ev.state_key.as_deref(),
            &ev.content,
            &rules.authorization,
        )
        .unwrap_or_else(|e| panic!("auth types: {e}: {ctx}"));
        let expected: BTreeSet<&OwnedEventId> = auth_types
            .iter()
            .filter_map(|(t, k)| state.get(&(t.to_string(), k.clone())))
            .collect();
        assert_eq!(
            auth_set, expected,
            "auth_events are not what the auth rules select: {ctx}"
        );

        check_state_independent_auth_rules(&rules.authorization, ev, |id: &EventId| by_id.get(id).copied())
            .unwrap_or_else(|e| panic!("state-independent auth rules reject it ({e}): {ctx}"));
        check_state_dependent_auth_rules(&rules.authorization, ev, |t: &StateEventType, k: &str| {
            state
                .get(&(t.to_string(), k.to_owned()))
                .and_then(|id| by_id.get(id).copied())
        })
        .unwrap_or_else(|e| panic!("state-dependent auth rules reject it ({e}): {ctx}"));

        // The query columns agree with the PDU.
        let (c_type, c_key, c_sender, c_redacts, c_replaces, c_ts) = &columns[ev.event_id.as_str()];
        assert_eq!(c_type, &ev.kind.to_string(), "type column: {ctx}");
        assert_eq!(c_key, &ev.state_key, "state_key column: {ctx}");
        assert_eq!(c_sender, ev.sender.as_str(), "sender column: {ctx}");
        assert_eq!(
            c_redacts,
            &ev.redacts.as_ref().map(|r| r.to_string()),
            "redacts column: {ctx}"
        );
        assert_eq!(*c_ts as u64, u64::from(ev.ts.0), "origin_server_ts column: {ctx}");
        if let Some(key) = &ev.state_key {
            let replaced = state
                .get(&(ev.kind.to_string(), key.clone()))
                .map(|id| id.to_string());
            assert_eq!(
                c_replaces, &replaced,
                "replaces_state is not the state it replaced: {ctx}"
            );
        } else {
            assert_eq!(c_replaces, &None, "replaces_state on a non-state event: {ctx}");
        }
        if ev.kind == TimelineEventType::RoomMember {
            let (user, sender, membership, stream) = memberships
                .get(ev.event_id.as_str())
                .unwrap_or_else(|| panic!("no room_memberships row: {ctx}"));
            assert_eq!(
                Some(user),
                ev.state_key.as_ref(),
                "room_memberships.user_id: {ctx}"
            );
            assert_eq!(sender, ev.sender.as_str(), "room_memberships.sender: {ctx}");
            assert_eq!(
                Some(membership.as_str()),
                ev.content_value["membership"].as_str(),
                "membership: {ctx}"
            );
            assert_eq!(*stream, ev.stream, "room_memberships.stream_ordering: {ctx}");
        }

        if let Some(key) = &ev.state_key {
            state.insert((ev.kind.to_string(), key.clone()), ev.event_id.clone());
        }

        // The state group recorded for the event is the state after it.
        let recorded = groups.state_of(ev.state_group);
        let replayed: HashMap<StateKey, String> =
            state.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        assert_eq!(
            recorded, replayed,
            "state group {} is not the state after: {ctx}",
            ev.state_group
        );
    }

    // The current state table is the state after the last event.
    let current: HashMap<StateKey, String> =
        sqlx::query("SELECT type, state_key, event_id FROM current_state WHERE room_id = $1")
            .bind(room.to_owned())
            .fetch_all(db)
            .await
            .expect("read current_state")
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
    let replayed: HashMap<StateKey, String> = state.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    assert_eq!(current, replayed, "current_state differs from the replayed state");

    // One server, one writer: the room has exactly one forward extremity, the last event.
    let extremities: Vec<String> = sqlx::query("SELECT event_id FROM forward_extremities WHERE room_id = $1")
        .bind(room.to_owned())
        .fetch_all(db)
        .await
        .expect("read forward_extremities")
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        extremities,
        vec![events.last().expect("events").event_id.to_string()]
    );
    (events.len(), redacted.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn dag_is_valid() {
    let server = Server::start_with_plain_rooms().await;
    let users = [
        server.register("alice").await,
        server.register("bob").await,
        server.register("carol").await,
        server.register("dave").await,
        server.register("erin").await,
    ];
    let mut rooms = Vec::new();
    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        rooms.push((build_history(version.as_str(), &users).await, version));
    }
    // Upgrades: v10 → v11 and v11 → v12; the new rooms' graphs are checked too.
    let alice = &users[0];
    for (old, new_version) in [(0, RoomVersionId::V11), (1, RoomVersionId::V12)] {
        let old_room = rooms[old].0.clone();
        let resp = alice
            .ok(
                Method::POST,
                &format!("/rooms/{}/upgrade", encode(&old_room)),
                Some(&json!({ "new_version": new_version.as_str() })),
            )
            .await;
        let new_room = resp["replacement_room"]
            .as_str()
            .expect("replacement_room")
            .to_owned();
        let tombstone = alice.get_state_content(&old_room, "m.room.tombstone", "").await;
        assert_eq!(
            tombstone["replacement_room"],
            new_room.as_str(),
            "tombstone: {tombstone}"
        );
        let create = alice.get_state_content(&new_room, "m.room.create", "").await;
        assert_eq!(
            create["predecessor"]["room_id"],
            old_room.as_str(),
            "predecessor: {create}"
        );
        alice.invite(&new_room, &users[1].user_id).await;
        users[1].join(&new_room).await;
        users[1].send_text(&new_room, "moved").await;
        rooms.push((new_room, new_version));
    }
    let db = server.db().await;
    let keys = public_keys(&db, common::SERVER_NAME).await;
    for (room, version) in &rooms {
        let (n, redactions) = check_room(&db, &keys, room, version).await;
        println!("room version {version}: {n} events checked in {room}");
        if n > 50 {
            assert!(redactions > 0, "the history has no redaction");
        } else {
            // An upgraded room: create, creator, copied state, a join and a message.
            assert!(n >= 6, "upgraded room too short: {n} events");
        }
    }
    db.close().await;
}

/// A hard kill in the middle of concurrent writes leaves a database that restarts into a valid
/// DAG with consistent state, and keeps every event whose send was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn crash_mid_write_keeps_the_dag_valid() {
    let mut server = Server::start_with_plain_rooms().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut rooms = Vec::new();
    for version in [RoomVersionId::V10, RoomVersionId::V12] {
        let room = alice
            .create_room(json!({ "room_version": version.as_str(), "preset": "public_chat" }))
            .await;
        bob.join(&room).await;
        rooms.push((room, version));
    }

    let mut writers = Vec::new();
    for (w, client) in [alice.clone(), bob.clone(), alice.clone()]
        .into_iter()
        .enumerate()
    {
        let rooms: Vec<String> = rooms.iter().map(|(r, _)| r.clone()).collect();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0.. {
                let room = &rooms[i % rooms.len()];
                let (path, body) = if w == 2 {
                    (
                        Client::state_path(room, "org.hearth.crash", &format!("k{}", i % 7)),
                        json!({ "i": i }),
                    )
                } else {
                    (
                        client.send_path(room, "m.room.message"),
                        json!({ "msgtype": "m.text", "body": format!("{w}/{i}") }),
                    )
                };
                match client.try_request(Method::PUT, &path, Some(&body)).await {
                    Ok((status, resp)) if status.is_success() => {
                        acknowledged.push(resp["event_id"].as_str().expect("event_id").to_owned())
                    }
                    _ => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.crash_and_restart().await;
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.expect("writer task"));
    }
    assert!(
        acknowledged.len() > 10,
        "only {} writes before the crash",
        acknowledged.len()
    );

    // Writes after the restart continue the graph.
    for (room, _) in &rooms {
        bob.send_text(room, "after the crash").await;
        alice
            .set_state(room, "org.hearth.crash", "k0", json!({ "after": true }))
            .await;
    }
    let db = server.db().await;
    let keys = public_keys(&db, common::SERVER_NAME).await;
    for id in &acknowledged {
        let n = common::count(&db, "SELECT COUNT(*) FROM events WHERE event_id = $1", &[id]).await;
        assert_eq!(n, 1, "acknowledged event {id} lost in the crash");
    }
    for (room, version) in &rooms {
        let (n, _) = check_room(&db, &keys, room, version).await;
        println!("room version {version}: {n} events valid after a crash");
    }
    println!("{} writes acknowledged before the crash", acknowledged.len());
    db.close().await;
}
