//! Misbehaving servers on the PDU paths, on the real binary: a local user joins rooms on fake
//! servers (wiremock behind a TLS front) whose `make_join` hangs, sends garbage or too much,
//! refuses, or whose `send_join` answers garbage or state signed with a key that is not theirs.
//! Hearth answers its client with the spec's error in bounded time, stores nothing of the room,
//! and keeps answering other requests meanwhile. A well-behaved fake room (the control) is
//! joined through the same machinery.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::federation::{hearth_with_fakes, tls_front};
use common::{Client, Server, count, encode};
use hearth_federation::{Pdu, SigningKey, pdu::PduTemplate, server_keys};
use reqwest::{Method, StatusCode};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName, UInt, UserId};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header as header_is, method, path, path_regex},
};

fn name(s: &str) -> &ServerName {
    <&ServerName>::try_from(s).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A version 10 room on a fake server: create, the creator's join, public join rules.
struct FakeRoom {
    room_id: String,
    events: Vec<Pdu>,
    server: String,
    key: SigningKey,
}

#[allow(clippy::too_many_arguments)]
fn event(
    room_id: &str,
    sender: &str,
    event_type: &str,
    content: Value,
    prev: &[&Pdu],
    auth: &[&Pdu],
    server: &str,
    key: &SigningKey,
) -> Pdu {
    let ids = |pdus: &[&Pdu]| -> Vec<OwnedEventId> { pdus.iter().map(|p| p.event_id.clone()).collect() };
    PduTemplate {
        room_id: Some(RoomId::parse(room_id).unwrap()),
        sender: UserId::parse(sender).unwrap(),
        event_type: event_type.into(),
        state_key: Some(if event_type == "m.room.member" {
            sender.to_owned()
        } else {
            String::new()
        }),
        content,
        prev_events: ids(prev),
        auth_events: ids(auth),
        depth: prev.iter().map(|p| p.depth).max().unwrap_or(0) + 1,
        origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(now_ms()).unwrap()),
        redacts: None,
    }
    .finish(&RoomVersionId::V10.rules().unwrap(), server, key)
    .unwrap()
}

fn fake_room(server: &str, signer: SigningKey) -> FakeRoom {
    let key = &signer;
    let room_id = format!("!room:{server}");
    let creator = format!("@creator:{server}");
    let create = event(
        &room_id,
        &creator,
        "m.room.create",
        json!({ "creator": creator, "room_version": "10" }),
        &[],
        &[],
        server,
        key,
    );
    let member = event(
        &room_id,
        &creator,
        "m.room.member",
        json!({ "membership": "join" }),
        &[&create],
        &[&create],
        server,
        key,
    );
    let rules = event(
        &room_id,
        &creator,
        "m.room.join_rules",
        json!({ "join_rule": "public" }),
        &[&member],
        &[&create, &member],
        server,
        key,
    );
    FakeRoom {
        room_id,
        events: vec![create, member, rules],
        server: server.to_owned(),
        key: signer,
    }
}

impl FakeRoom {
    /// The `make_join` answer for `user`.
    fn template(&self, user: &str) -> Value {
        let [create, _, rules] = &self.events[..] else {
            unreachable!()
        };
        json!({
            "room_version": "10",
            "event": {
                "type": "m.room.member",
                "room_id": self.room_id,
                "sender": user,
                "state_key": user,
                "content": { "membership": "join" },
                "prev_events": [rules.event_id],
                "auth_events": [create.event_id, rules.event_id],
                "depth": 4,
                "origin_server_ts": now_ms(),
            }
        })
    }

    /// The `send_join` (v2) answer: the room's state and its auth chain.
    fn send_join(&self) -> Value {
        let events: Vec<Value> = self
            .events
            .iter()
            .map(|p| serde_json::to_value(&p.json).unwrap())
            .collect();
        json!({ "state": events, "auth_chain": events })
    }
}

/// Serves `/_matrix/key/v2/server` for `server` with `key`.
async fn serve_keys(mock: &MockServer, server: &str, key: &SigningKey) {
    let keys = server_keys::build(name(server), key, &[], (now_ms() + 3_600_000) as i64);
    Mock::given(method("GET"))
        .and(path("/_matrix/key/v2/server"))
        .and(header_is("host", server))
        .respond_with(ResponseTemplate::new(200).set_body_json(&keys))
        .mount(mock)
        .await;
}

async fn serve_make_join(mock: &MockServer, server: &str, response: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path_regex("^/_matrix/federation/v1/make_join/"))
        .and(header_is("host", server))
        .respond_with(response)
        .mount(mock)
        .await;
}

async fn serve_send_join(mock: &MockServer, server: &str, response: ResponseTemplate) {
    Mock::given(method("PUT"))
        .and(path_regex("^/_matrix/federation/v2/send_join/"))
        .and(header_is("host", server))
        .respond_with(response)
        .mount(mock)
        .await;
}

async fn join(client: &Client, room_id: &str) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let (status, body) = client
        .request(
            Method::POST,
            &format!("/join/{}", encode(room_id)),
            Some(&json!({})),
        )
        .await;
    (status, body, started.elapsed())
}

/// Rows this server holds of a room: its `rooms` row, events, current state.
async fn room_rows(server: &Server, room_id: &str) -> i64 {
    let db = server.db().await;
    let mut total = 0;
    for sql in [
        "SELECT COUNT(*) FROM rooms WHERE room_id = $1",
        "SELECT COUNT(*) FROM events WHERE room_id = $1",
        "SELECT COUNT(*) FROM current_state WHERE room_id = $1",
    ] {
        total += count(&db, sql, &[room_id]).await;
    }
    total
}

#[tokio::test]
async fn joins_through_misbehaving_servers_fail_cleanly() {
    let mock = MockServer::start().await;
    let certs = tempfile::tempdir().unwrap();
    let names = [
        "good.test",
        "slow.test",
        "garbage.test",
        "huge.test",
        "gone.test",
        "refusing.test",
        "forged.test",
        "badjoin.test",
    ];
    let (front, front_ca) = tls_front(*mock.address(), &names, certs.path()).await;
    let (server, fed_port) = hearth_with_fakes(certs.path(), &names, front, &front_ca).await;
    let bob = server.register("bob").await;

    // Every fake server publishes a real key; forged.test then signs its room with another.
    let mut rooms = std::collections::HashMap::new();
    for n in names {
        let key = SigningKey::generate("fake").unwrap();
        serve_keys(&mock, n, &key).await;
        let signer = if n == "forged.test" {
            SigningKey::generate("fake").unwrap()
        } else {
            key
        };
        rooms.insert(n, fake_room(n, signer));
    }
    let template = |n: &str| ResponseTemplate::new(200).set_body_json(rooms[n].template(&bob.user_id));
    serve_make_join(&mock, "good.test", template("good.test")).await;
    serve_send_join(
        &mock,
        "good.test",
        ResponseTemplate::new(200).set_body_json(rooms["good.test"].send_join()),
    )
    .await;
    serve_make_join(
        &mock,
        "slow.test",
        template("slow.test").set_delay(Duration::from_secs(60)),
    )
    .await;
    serve_make_join(
        &mock,
        "garbage.test",
        ResponseTemplate::new(200).set_body_string("{\"room_version\": \"10\", \"event\": {\"type"),
    )
    .await;
    serve_make_join(
        &mock,
        "huge.test",
        ResponseTemplate::new(200).set_body_string(format!(
            "{{\"room_version\": \"10\", \"pad\": \"{}\"}}",
            "x".repeat(4 << 20)
        )),
    )
    .await;
    serve_make_join(
        &mock,
        "gone.test",
        ResponseTemplate::new(404).set_body_json(json!({ "errcode": "M_NOT_FOUND", "error": "no room" })),
    )
    .await;
    serve_make_join(
        &mock,
        "refusing.test",
        ResponseTemplate::new(403).set_body_json(json!({ "errcode": "M_FORBIDDEN", "error": "go away" })),
    )
    .await;
    serve_make_join(&mock, "forged.test", template("forged.test")).await;
    serve_send_join(
        &mock,
        "forged.test",
        ResponseTemplate::new(200).set_body_json(rooms["forged.test"].send_join()),
    )
    .await;
    serve_make_join(&mock, "badjoin.test", template("badjoin.test")).await;
    serve_send_join(
        &mock,
        "badjoin.test",
        ResponseTemplate::new(200).set_body_string("[1, 2, 3"),
    )
    .await;

    // The slow server holds one join for the whole request timeout; meanwhile the server
    // answers everything else at once.
    let slow = {
        let bob = bob.clone();
        let room = rooms["slow.test"].room_id.clone();
        tokio::spawn(async move { join(&bob, &room).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _) = bob.request(Method::GET, "/account/whoami", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    for (server_name, status, errcode) in [
        ("garbage.test", StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
        ("huge.test", StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
        ("gone.test", StatusCode::NOT_FOUND, "M_NOT_FOUND"),
        ("refusing.test", StatusCode::FORBIDDEN, "M_FORBIDDEN"),
        ("forged.test", StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
        ("badjoin.test", StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
    ] {
        let room_id = &rooms[server_name].room_id;
        let (got, body, took) = join(&bob, room_id).await;
        assert_eq!(
            (got, body["errcode"].as_str()),
            (status, Some(errcode)),
            "{server_name}: {body}\n{}",
            server.log_tail()
        );
        assert!(took < Duration::from_secs(5), "{server_name} took {took:?}");
        assert_eq!(room_rows(&server, room_id).await, 0, "{server_name}");
    }
    let (status, body, took) = slow.await.unwrap();
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("M_UNKNOWN")),
        "{body}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(room_rows(&server, &rooms["slow.test"].room_id).await, 0);
    assert!(server.log_tail().contains("took too long"));
    // The forged room's events were refused at their signatures, never kept as outliers.
    for pdu in &rooms["forged.test"].events {
        let db = server.db().await;
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM events WHERE event_id = $1",
                &[pdu.event_id.as_str()]
            )
            .await,
            0
        );
    }

    // The control: the well-behaved fake room is joined, its state readable.
    let good = &rooms["good.test"].room_id;
    let (status, body, _) = join(&bob, good).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", server.log_tail());
    let rules = bob
        .ok(
            Method::GET,
            &format!("/rooms/{}/state/m.room.join_rules/", encode(good)),
            None,
        )
        .await;
    assert_eq!(rules["join_rule"], "public");
    missing_prev_events_from_misbehaving_answers(&mock, &server, &certs, fed_port, &rooms["good.test"], &bob)
        .await;

    // A failed room can be joined later, once its server behaves: nothing half-stored blocks it.
    mock.reset().await;
    let key = SigningKey::generate("fake").unwrap();
    serve_keys(&mock, "garbage.test", &key).await;
    let fixed = fake_room("garbage.test", key);
    serve_make_join(
        &mock,
        "garbage.test",
        ResponseTemplate::new(200).set_body_json(fixed.template(&bob.user_id)),
    )
    .await;
    serve_send_join(
        &mock,
        "garbage.test",
        ResponseTemplate::new(200).set_body_json(fixed.send_join()),
    )
    .await;
    let (status, body, _) = join(&bob, &fixed.room_id).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", server.log_tail());
}

impl FakeRoom {
    /// A message from the room's creator after `prev`, signed with `key`.
    fn message(&self, prev: &Pdu, body: &str, key: &SigningKey) -> Pdu {
        let [create, member, _] = &self.events[..] else {
            unreachable!()
        };
        event(
            &self.room_id,
            &format!("@creator:{}", self.server),
            "m.room.message",
            json!({ "msgtype": "m.text", "body": body }),
            &[prev],
            &[create, member],
            &self.server,
            key,
        )
    }
}

/// PUT `/send` to Hearth as the fake server: the per-PDU results.
async fn send_as_fake(
    certs: &Path,
    fed_port: u16,
    room: &FakeRoom,
    pdus: &[&Pdu],
) -> (StatusCode, Value, Duration) {
    let mut config = hearth::config::FederationConfig {
        ca_files: vec![certs.join("hs-b.test.crt")],
        allow_ip_ranges: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    };
    config
        .resolve
        .insert("hs-b.test".into(), format!("127.0.0.1:{fed_port}"));
    let client =
        hearth::federation::FederationClient::new(room.server.as_str().try_into().unwrap(), &config).unwrap();
    let body = serde_json::to_vec(&json!({
        "origin": room.server,
        "origin_server_ts": now_ms(),
        "pdus": pdus.iter().map(|p| serde_json::to_value(&p.json).unwrap()).collect::<Vec<_>>(),
    }))
    .unwrap();
    let uri = format!("/_matrix/federation/v1/send/{}", common::txn_id());
    let auth = hearth_federation::request_auth::sign(
        &room.key,
        name(&room.server),
        name("hs-b.test"),
        &hearth_federation::request_auth::Method::PUT,
        &uri,
        Some(&body),
    )
    .unwrap();
    let started = Instant::now();
    // Longer than Hearth's own 10 s bound on its fetches, so that bound is what is measured.
    let answer = client
        .request_within(
            "PUT",
            name("hs-b.test"),
            &uri,
            Some(body),
            Some(auth),
            1 << 20,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    (
        StatusCode::from_u16(answer.status).unwrap(),
        serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
        started.elapsed(),
    )
}

/// Serves `/event/{id}` of `pdu` on `server` with `response`.
async fn serve_event(mock: &MockServer, server: &str, pdu: &Pdu, response: ResponseTemplate) {
    let id = pdu.event_id.as_str().trim_start_matches('$');
    Mock::given(method("GET"))
        .and(path_regex(format!(
            "^/_matrix/federation/v1/event/(%24|\\$){id}$"
        )))
        .and(header_is("host", server))
        .respond_with(response)
        .mount(mock)
        .await;
}

/// The joined fake room's server sends a message whose prev event Hearth lacks, and answers
/// Hearth's `/event` fetch of it badly: hanging, garbage, too large, another event, the event
/// signed with a key that is not its own. Each time the new message is refused (reported per PDU
/// in `/send`'s answer), neither event is stored, and the server answers meanwhile. The control:
/// a proper answer makes both events part of the room.
async fn missing_prev_events_from_misbehaving_answers(
    mock: &MockServer,
    server: &Server,
    certs: &tempfile::TempDir,
    fed_port: u16,
    room: &FakeRoom,
    bob: &Client,
) {
    let rules = &room.events[2];
    let wrong = SigningKey::generate(room.key.version()).unwrap();
    let event_answer = |pdu: &Pdu| {
        json!({
            "origin": room.server,
            "origin_server_ts": now_ms(),
            "pdus": [serde_json::to_value(&pdu.json).unwrap()],
        })
    };
    let db = server.db().await;
    let stored = |id: String| {
        let db = db.clone();
        async move { count(&db, "SELECT COUNT(*) FROM events WHERE event_id = $1", &[&id]).await }
    };
    let other = room.message(rules, "not the one asked for", &room.key);
    for what in ["slow", "garbage", "huge", "another event", "a wrong signing key"] {
        let missing = room.message(rules, &format!("missing before {what}"), &room.key);
        let next = room.message(&missing, &format!("after {what}"), &room.key);
        let response = match what {
            "slow" => ResponseTemplate::new(200)
                .set_body_json(event_answer(&missing))
                .set_delay(Duration::from_secs(60)),
            "garbage" => ResponseTemplate::new(200).set_body_string("{\"pdus\": [{\"ty"),
            "huge" => ResponseTemplate::new(200)
                .set_body_string(format!("{{\"pdus\": [], \"pad\": \"{}\"}}", "x".repeat(1 << 20))),
            "another event" => ResponseTemplate::new(200).set_body_json(event_answer(&other)),
            _ => {
                // The missing event itself, its signature replaced by one of another key under
                // the server's key ID (the event ID, a hash without signatures, stays the same).
                let mut forged = missing.json.clone();
                let resigned = room.message(rules, &format!("missing before {what}"), &wrong);
                forged.insert("signatures".into(), resigned.json["signatures"].clone());
                ResponseTemplate::new(200).set_body_json(json!({
                    "origin": room.server,
                    "origin_server_ts": now_ms(),
                    "pdus": [forged],
                }))
            }
        };
        serve_event(mock, &room.server, &missing, response).await;
        // While Hearth waits on the fake server, it answers its clients at once.
        let responsive = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let started = Instant::now();
                let (status, _) = bob.request(Method::GET, "/account/whoami", None).await;
                assert_eq!(status, StatusCode::OK);
                assert!(started.elapsed() < Duration::from_secs(2), "{what}");
            }
        };
        let batch = [&next];
        let ((status, answer, took), ()) =
            tokio::join!(send_as_fake(certs.path(), fed_port, room, &batch), responsive);
        assert_eq!(status, StatusCode::OK, "{what}: {answer}");
        assert!(
            answer["pdus"][next.event_id.as_str()]["error"].is_string(),
            "{what}: {answer}"
        );
        assert!(took < Duration::from_secs(15), "{what} took {took:?}");
        assert_eq!(stored(missing.event_id.to_string()).await, 0, "{what}");
        assert_eq!(stored(next.event_id.to_string()).await, 0, "{what}");
    }

    // The control: the same flow with a proper answer puts both events in the room.
    let missing = room.message(rules, "missing, then served", &room.key);
    let next = room.message(&missing, "after a proper answer", &room.key);
    serve_event(
        mock,
        &room.server,
        &missing,
        ResponseTemplate::new(200).set_body_json(event_answer(&missing)),
    )
    .await;
    let (status, answer, _) = send_as_fake(certs.path(), fed_port, room, &[&next]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        answer["pdus"][next.event_id.as_str()].get("error").is_none(),
        "{answer}\n{}",
        server.log_tail()
    );
    assert_eq!(stored(missing.event_id.to_string()).await, 1);
    assert_eq!(stored(next.event_id.to_string()).await, 1);
}

/// A message (no state key) from the fake room's creator after `prev`, signed with `key`.
fn plain_message(room: &FakeRoom, prev: &Pdu, body: &str, key: &SigningKey) -> Pdu {
    let [create, member, _] = &room.events[..] else {
        unreachable!()
    };
    PduTemplate {
        room_id: Some(RoomId::parse(&room.room_id).unwrap()),
        sender: UserId::parse(format!("@creator:{}", room.server)).unwrap(),
        event_type: "m.room.message".into(),
        state_key: None,
        content: json!({ "msgtype": "m.text", "body": body }),
        prev_events: vec![prev.event_id.clone()],
        auth_events: vec![create.event_id.clone(), member.event_id.clone()],
        depth: prev.depth + 1,
        origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(now_ms()).unwrap()),
        redacts: None,
    }
    .finish(&RoomVersionId::V10.rules().unwrap(), &room.server, key)
    .unwrap()
}

/// A fake room with history before the join: its `/backfill` answers one event signed with
/// another key and one whose content no longer matches its hash. Hearth drops the first, keeps
/// the second redacted, shows the rest in order, and does not ask again on every page.
#[tokio::test]
async fn backfill_from_a_misbehaving_server() {
    let mock = MockServer::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (front, front_ca) = tls_front(*mock.address(), &["hist.test"], certs.path()).await;
    let (server, _) = hearth_with_fakes(certs.path(), &["hist.test"], front, &front_ca).await;
    let bob = server.register("bob").await;
    let key = SigningKey::generate("fake").unwrap();
    serve_keys(&mock, "hist.test", &key).await;
    let room = fake_room("hist.test", key);
    let rules = &room.events[2];
    let h1 = plain_message(&room, rules, "h1", &room.key);
    let wrong = SigningKey::generate(room.key.version()).unwrap();
    let h2 = plain_message(&room, &h1, "h2", &wrong);
    let h3 = plain_message(&room, &h2, "h3", &room.key);
    let h4 = plain_message(&room, &h3, "h4", &room.key);
    // h3 as served: its body changed after hashing and signing (the signature covers only the
    // redacted form, so it still verifies; the content hash does not).
    let mut h3_served = serde_json::to_value(&h3.json).unwrap();
    h3_served["content"]["body"] = json!("h3, altered");

    let mut template = room.template(&bob.user_id);
    template["event"]["prev_events"] = json!([h4.event_id]);
    template["event"]["depth"] = json!(h4.depth + 1);
    serve_make_join(
        &mock,
        "hist.test",
        ResponseTemplate::new(200).set_body_json(template),
    )
    .await;
    serve_send_join(
        &mock,
        "hist.test",
        ResponseTemplate::new(200).set_body_json(room.send_join()),
    )
    .await;
    let mut pdus = vec![
        serde_json::to_value(&h4.json).unwrap(),
        h3_served,
        serde_json::to_value(&h2.json).unwrap(),
        serde_json::to_value(&h1.json).unwrap(),
    ];
    pdus.extend(
        room.events
            .iter()
            .rev()
            .map(|p| serde_json::to_value(&p.json).unwrap()),
    );
    Mock::given(method("GET"))
        .and(path_regex("^/_matrix/federation/v1/backfill/"))
        .and(header_is("host", "hist.test"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "origin": "hist.test",
            "origin_server_ts": now_ms(),
            "pdus": pdus,
        })))
        .mount(&mock)
        .await;
    // h3's prev event (h2) is not here: its state is asked of /state_ids, which names more
    // events than are read. Refused whole: none of them is fetched, h3 keeps the state the
    // join brought (logged), and the history shows as below.
    let flood: Vec<String> = (0..6_000).map(|i| format!("$flood{i:0>38}")).collect();
    Mock::given(method("GET"))
        .and(path_regex("^/_matrix/federation/v1/state_ids/"))
        .and(header_is("host", "hist.test"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "pdu_ids": flood, "auth_chain_ids": [] })),
        )
        .mount(&mock)
        .await;
    let (status, body, _) = join(&bob, &room.room_id).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", server.log_tail());

    let mut pages = Vec::new();
    for _ in 0..3 {
        let mut events: Vec<Value> = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut uri = format!("/rooms/{}/messages?dir=b&limit=3", encode(&room.room_id));
            if let Some(from) = &from {
                uri.push_str(&format!("&from={}", encode(from)));
            }
            let page = bob.ok(Method::GET, &uri, None).await;
            events.extend(page["chunk"].as_array().unwrap().iter().cloned());
            match page["end"].as_str() {
                Some(end) => from = Some(end.to_owned()),
                None => break,
            }
        }
        pages.push(events);
    }
    let messages: Vec<(String, Value)> = pages[0]
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| (e["event_id"].as_str().unwrap().to_owned(), e["content"].clone()))
        .collect();
    assert_eq!(
        messages,
        vec![
            (
                h4.event_id.to_string(),
                json!({ "msgtype": "m.text", "body": "h4" })
            ),
            (h3.event_id.to_string(), json!({})),
            (
                h1.event_id.to_string(),
                json!({ "msgtype": "m.text", "body": "h1" })
            ),
        ],
        "h2 dropped at its signature, h3 redacted\n{}",
        server.log_tail()
    );
    assert_eq!(pages[0].last().unwrap()["type"], "m.room.create");
    let ids = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&pages[1]), ids(&pages[0]), "the same history from the store");
    assert_eq!(ids(&pages[2]), ids(&pages[0]));
    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM events WHERE event_id = $1",
            &[h2.event_id.as_str()]
        )
        .await,
        0,
        "the forged event is not stored"
    );
    // The gap h2 leaves is asked about once more, then remembered: not on every page.
    let asked = mock
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().starts_with("/_matrix/federation/v1/backfill/"))
        .count();
    assert!((1..=2).contains(&asked), "{asked} backfill requests");
    let requests = mock.received_requests().await.unwrap();
    let state_asked = requests
        .iter()
        .filter(|r| r.url.path().starts_with("/_matrix/federation/v1/state_ids/"))
        .count();
    assert!(
        (1..=asked).contains(&state_asked),
        "{state_asked} /state_ids requests"
    );
    assert!(
        !requests.iter().any(|r| r.url.path().contains("flood")),
        "no event the flood names is fetched"
    );
}

/// A PDU of the fake room's version 10 with every field chosen by the test.
#[allow(clippy::too_many_arguments)]
fn pdu_of(
    room: &FakeRoom,
    sender: &str,
    event_type: &str,
    state_key: Option<&str>,
    content: Value,
    prev: &[&Pdu],
    auth: &[&Pdu],
) -> Pdu {
    let ids = |pdus: &[&Pdu]| -> Vec<OwnedEventId> { pdus.iter().map(|p| p.event_id.clone()).collect() };
    PduTemplate {
        room_id: Some(RoomId::parse(&room.room_id).unwrap()),
        sender: UserId::parse(sender).unwrap(),
        event_type: event_type.into(),
        state_key: state_key.map(ToOwned::to_owned),
        content,
        prev_events: ids(prev),
        auth_events: ids(auth),
        depth: prev.iter().map(|p| p.depth).max().unwrap_or(0) + 1,
        origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(now_ms()).unwrap()),
        redacts: None,
    }
    .finish(&RoomVersionId::V10.rules().unwrap(), &room.server, &room.key)
    .unwrap()
}

/// A backfilled message from a user the same history banned earlier, whose auth events name
/// the user's older join (so it passes against its auth events): against the state before it
/// (the ban) it fails, so it is rejected, never shown; the history around it is.
#[tokio::test]
async fn backfilled_event_failing_the_state_before_it_is_rejected() {
    let mock = MockServer::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (front, front_ca) = tls_front(*mock.address(), &["ban.test"], certs.path()).await;
    let (server, _) = hearth_with_fakes(certs.path(), &["ban.test"], front, &front_ca).await;
    let bob = server.register("bob").await;
    let key = SigningKey::generate("fake").unwrap();
    serve_keys(&mock, "ban.test", &key).await;
    let room = fake_room("ban.test", key);
    let [create, creator_join, rules] = &room.events[..] else {
        unreachable!()
    };
    let (creator, eve) = ("@creator:ban.test", "@eve:ban.test");
    let eve_join = pdu_of(
        &room,
        eve,
        "m.room.member",
        Some(eve),
        json!({ "membership": "join" }),
        &[rules],
        &[create, rules],
    );
    let ban = pdu_of(
        &room,
        creator,
        "m.room.member",
        Some(eve),
        json!({ "membership": "ban" }),
        &[&eve_join],
        &[create, creator_join, &eve_join],
    );
    let text = |body: &str| json!({ "msgtype": "m.text", "body": body });
    let spam = pdu_of(
        &room,
        eve,
        "m.room.message",
        None,
        text("spam after the ban"),
        &[&ban],
        &[create, &eve_join],
    );
    let after = pdu_of(
        &room,
        creator,
        "m.room.message",
        None,
        text("after"),
        &[&spam, &ban],
        &[create, creator_join],
    );
    let mut template = room.template(&bob.user_id);
    template["event"]["prev_events"] = json!([after.event_id]);
    template["event"]["depth"] = json!(after.depth + 1);
    serve_make_join(
        &mock,
        "ban.test",
        ResponseTemplate::new(200).set_body_json(template),
    )
    .await;
    let json_of = |p: &Pdu| serde_json::to_value(&p.json).unwrap();
    let state: Vec<Value> = [create, creator_join, rules, &ban]
        .into_iter()
        .map(json_of)
        .collect();
    let chain: Vec<Value> = [create, creator_join, rules, &eve_join, &ban]
        .into_iter()
        .map(json_of)
        .collect();
    serve_send_join(
        &mock,
        "ban.test",
        ResponseTemplate::new(200).set_body_json(json!({ "state": state, "auth_chain": chain })),
    )
    .await;
    let pdus: Vec<Value> = [&after, &spam, &ban, &eve_join, rules, creator_join, create]
        .into_iter()
        .map(json_of)
        .collect();
    Mock::given(method("GET"))
        .and(path_regex("^/_matrix/federation/v1/backfill/"))
        .and(header_is("host", "ban.test"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "origin": "ban.test",
            "origin_server_ts": now_ms(),
            "pdus": pdus,
        })))
        .mount(&mock)
        .await;
    let (status, body, _) = join(&bob, &room.room_id).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", server.log_tail());

    let mut events: Vec<Value> = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut uri = format!("/rooms/{}/messages?dir=b&limit=4", encode(&room.room_id));
        if let Some(from) = &from {
            uri.push_str(&format!("&from={}", encode(from)));
        }
        let page = bob.ok(Method::GET, &uri, None).await;
        events.extend(page["chunk"].as_array().unwrap().iter().cloned());
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let ids: Vec<&str> = events.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    for shown in [&after, &ban, &eve_join, create] {
        assert!(
            ids.contains(&shown.event_id.as_str()),
            "{} is shown: {ids:?}\n{}",
            shown.event_id,
            server.log_tail()
        );
    }
    assert!(
        !ids.contains(&spam.event_id.as_str()),
        "the banned user's message is not: {events:?}"
    );
    let ban_shown = events
        .iter()
        .find(|e| e["event_id"] == ban.event_id.as_str())
        .unwrap();
    assert_eq!(
        ban_shown["unsigned"]["prev_content"]["membership"], "join",
        "{ban_shown}"
    );
    let (status, _) = bob
        .request(
            Method::GET,
            &format!(
                "/rooms/{}/event/{}",
                encode(&room.room_id),
                encode(spam.event_id.as_str())
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM unserved_events WHERE event_id = $1 AND kind = 'rejected'",
            &[spam.event_id.as_str()]
        )
        .await,
        1,
        "stored as rejected"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM events WHERE event_id = $1",
            &[spam.event_id.as_str()]
        )
        .await,
        0
    );
}
