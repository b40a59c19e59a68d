//! The topological order on the real binary (spec/server-server.md, "Topological order and
//! late events"): a local user is in a room of a fake server (wiremock behind a TLS front) that
//! sends PDUs the test builds and signs. Messages of a partition that arrive as missing prev
//! events (fetched from the fake server) are placed once, at their depth between the messages
//! around them in `/messages` and `/context`; they are not new in `/sync` (no timeline entry, no
//! notification), whose `limited` timeline's `prev_batch` leads `/messages` to them. Hostile:
//! PDUs whose claimed depth is absurd (the largest canonical integer, or below their prev
//! events) sort after their prev events and no further; garbage tokens are 400.

mod common;

use std::time::Duration;

use common::federation::{hearth_with_fakes, tls_front};
use common::{Client, Server, count, encode};
use hearth_federation::{Pdu, SigningKey, pdu::PduTemplate, server_keys};
use reqwest::{Method, StatusCode};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName, UInt, UserId};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path, path_regex},
};

const FAR: &str = "far.test";
const MAX_DEPTH: u64 = (1 << 53) - 1;

fn name(s: &str) -> &ServerName {
    <&ServerName>::try_from(s).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A version 10 room on the fake server: create, the creator's join, public join rules.
struct FakeRoom {
    room_id: String,
    create: Pdu,
    member: Pdu,
    rules: Pdu,
    key: SigningKey,
}

fn state_event(room_id: &str, event_type: &str, content: Value, prev: &[&Pdu], key: &SigningKey) -> Pdu {
    let ids = |pdus: &[&Pdu]| -> Vec<OwnedEventId> { pdus.iter().map(|p| p.event_id.clone()).collect() };
    let creator = format!("@creator:{FAR}");
    PduTemplate {
        room_id: Some(RoomId::parse(room_id).unwrap()),
        sender: UserId::parse(&creator).unwrap(),
        event_type: event_type.into(),
        state_key: Some(if event_type == "m.room.member" {
            creator.clone()
        } else {
            String::new()
        }),
        content,
        prev_events: ids(prev),
        auth_events: ids(prev),
        depth: prev.iter().map(|p| p.depth).max().unwrap_or(0) + 1,
        origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(now_ms()).unwrap()),
        redacts: None,
    }
    .finish(&RoomVersionId::V10.rules().unwrap(), FAR, key)
    .unwrap()
}

impl FakeRoom {
    fn new(key: SigningKey) -> FakeRoom {
        let room_id = format!("!topo:{FAR}");
        let creator = format!("@creator:{FAR}");
        let create = state_event(
            &room_id,
            "m.room.create",
            json!({ "creator": creator, "room_version": "10" }),
            &[],
            &key,
        );
        let member = state_event(
            &room_id,
            "m.room.member",
            json!({ "membership": "join" }),
            &[&create],
            &key,
        );
        let rules = state_event(
            &room_id,
            "m.room.join_rules",
            json!({ "join_rule": "public" }),
            &[&create, &member],
            &key,
        );
        FakeRoom {
            room_id,
            create,
            member,
            rules,
            key,
        }
    }

    /// A message from the creator after `prev`, claiming `depth` (the spec's when `None`).
    fn message(&self, prev: &[&Pdu], body: &str, depth: Option<u64>) -> Pdu {
        PduTemplate {
            room_id: Some(RoomId::parse(&self.room_id).unwrap()),
            sender: UserId::parse(format!("@creator:{FAR}")).unwrap(),
            event_type: "m.room.message".into(),
            state_key: None,
            content: json!({ "msgtype": "m.text", "body": body }),
            prev_events: prev.iter().map(|p| p.event_id.clone()).collect(),
            auth_events: vec![self.create.event_id.clone(), self.member.event_id.clone()],
            depth: depth.unwrap_or_else(|| prev.iter().map(|p| p.depth).max().unwrap_or(0) + 1),
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(now_ms()).unwrap()),
            redacts: None,
        }
        .finish(&RoomVersionId::V10.rules().unwrap(), FAR, &self.key)
        .unwrap()
    }

    /// The room's topic, set by the creator after `prev`.
    fn topic(&self, prev: &Pdu, topic: &str) -> Pdu {
        self.state(prev, "m.room.topic", json!({ "topic": topic }))
    }

    /// A state event (empty state key) from the creator after `prev`.
    fn state(&self, prev: &Pdu, event_type: &str, content: Value) -> Pdu {
        PduTemplate {
            room_id: Some(RoomId::parse(&self.room_id).unwrap()),
            sender: UserId::parse(format!("@creator:{FAR}")).unwrap(),
            event_type: event_type.into(),
            state_key: Some(String::new()),
            content,
            prev_events: vec![prev.event_id.clone()],
            auth_events: vec![self.create.event_id.clone(), self.member.event_id.clone()],
            depth: prev.depth + 1,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(now_ms()).unwrap()),
            redacts: None,
        }
        .finish(&RoomVersionId::V10.rules().unwrap(), FAR, &self.key)
        .unwrap()
    }

    fn template(&self, user: &str) -> Value {
        json!({
            "room_version": "10",
            "event": {
                "type": "m.room.member",
                "room_id": self.room_id,
                "sender": user,
                "state_key": user,
                "content": { "membership": "join" },
                "prev_events": [self.rules.event_id],
                "auth_events": [self.create.event_id, self.rules.event_id],
                "depth": 4,
                "origin_server_ts": now_ms(),
            }
        })
    }

    fn send_join(&self) -> Value {
        let events: Vec<Value> = [&self.create, &self.member, &self.rules]
            .iter()
            .map(|p| serde_json::to_value(&p.json).unwrap())
            .collect();
        json!({ "state": events, "auth_chain": events })
    }
}

/// Hearth (`hs-b.test`) with a fake server `FAR` that serves its keys, a room and its joins.
struct Setup {
    mock: MockServer,
    server: Server,
    certs: tempfile::TempDir,
    fed_port: u16,
    room: FakeRoom,
    bob: Client,
}

async fn setup() -> Setup {
    let mock = MockServer::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (front, front_ca) = tls_front(*mock.address(), &[FAR], certs.path()).await;
    let (server, fed_port) = hearth_with_fakes(certs.path(), &[FAR], front, &front_ca).await;
    let bob = server.register("bob").await;
    let key = SigningKey::generate("fake").unwrap();
    let keys = server_keys::build(name(FAR), &key, &[], (now_ms() + 3_600_000) as i64);
    Mock::given(method("GET"))
        .and(path("/_matrix/key/v2/server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&keys))
        .mount(&mock)
        .await;
    let room = FakeRoom::new(key);
    Mock::given(method("GET"))
        .and(path_regex("^/_matrix/federation/v1/make_join/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(room.template(&bob.user_id)))
        .mount(&mock)
        .await;
    Mock::given(method("PUT"))
        .and(path_regex("^/_matrix/federation/v2/send_join/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(room.send_join()))
        .mount(&mock)
        .await;
    // Anything else sent to the fake server (the join, bob's messages) is taken.
    Mock::given(method("PUT"))
        .and(path_regex("^/_matrix/federation/v1/send/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "pdus": {} })))
        .mount(&mock)
        .await;
    let (status, body) = bob
        .request(
            Method::POST,
            &format!("/join/{}", encode(&room.room_id)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", server.log_tail());
    Setup {
        mock,
        server,
        certs,
        fed_port,
        room,
        bob,
    }
}

impl Setup {
    /// PUT `/send` to Hearth as the fake server; every PDU must be accepted.
    async fn send(&self, pdus: &[&Pdu]) {
        let mut config = hearth::config::FederationConfig {
            ca_files: vec![self.certs.path().join("hs-b.test.crt")],
            allow_ip_ranges: vec!["127.0.0.1/32".parse().unwrap()],
            ..Default::default()
        };
        config
            .resolve
            .insert("hs-b.test".into(), format!("127.0.0.1:{}", self.fed_port));
        let client = hearth::federation::FederationClient::new(name(FAR).to_owned(), &config).unwrap();
        let body = serde_json::to_vec(&json!({
            "origin": FAR,
            "origin_server_ts": now_ms(),
            "pdus": pdus.iter().map(|p| serde_json::to_value(&p.json).unwrap()).collect::<Vec<_>>(),
        }))
        .unwrap();
        let uri = format!("/_matrix/federation/v1/send/{}", common::txn_id());
        let auth = hearth_federation::request_auth::sign(
            &self.room.key,
            name(FAR),
            name("hs-b.test"),
            &hearth_federation::request_auth::Method::PUT,
            &uri,
            Some(&body),
        )
        .unwrap();
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
        assert_eq!(answer.status, 200);
        let answer: Value = serde_json::from_slice(&answer.body).unwrap();
        for pdu in pdus {
            assert!(
                answer["pdus"][pdu.event_id.as_str()].get("error").is_none(),
                "{answer}\n{}",
                self.server.log_tail()
            );
        }
    }

    /// Serves `/event/{id}` of `pdu` (what Hearth fetches for a missing prev event).
    async fn serve_event(&self, pdu: &Pdu) {
        let id = pdu.event_id.as_str().trim_start_matches('$');
        Mock::given(method("GET"))
            .and(path_regex(format!(
                "^/_matrix/federation/v1/event/(%24|\\$){id}$"
            )))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "origin": FAR,
                "origin_server_ts": now_ms(),
                "pdus": [serde_json::to_value(&pdu.json).unwrap()],
            })))
            .mount(&self.mock)
            .await;
    }

    /// `/messages` from `from` in `dir` until there is no `end`: the message bodies in the
    /// order served (a doubled event shows twice).
    async fn page_all(&self, dir: &str, from: Option<&str>) -> Vec<String> {
        let mut bodies = Vec::new();
        let mut from = from.map(ToOwned::to_owned);
        for _ in 0..100 {
            let mut path = format!("/rooms/{}/messages?dir={dir}&limit=3", encode(&self.room.room_id));
            if let Some(from) = &from {
                path.push_str(&format!("&from={}", encode(from)));
            }
            let page = self.bob.ok(Method::GET, &path, None).await;
            bodies.extend(messages(page["chunk"].as_array().unwrap()));
            match page["end"].as_str() {
                Some(end) => from = Some(end.to_owned()),
                None => return bodies,
            }
        }
        panic!("/messages never ended: {bodies:?}");
    }
}

fn messages(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn partition_messages_fetched_as_missing_prev_events_are_history_not_news() {
    let t = setup().await;
    let room = &t.room;
    let m1 = room.message(&[&room.rules], "m1", None);
    let m2 = room.message(&[&m1], "m2", None);
    t.send(&[&m1, &m2]).await;
    let sync = t.bob.sync(None, 0, 10).await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let timeline = &sync["rooms"]["join"][&room.room_id]["timeline"];
    assert_eq!(messages(timeline["events"].as_array().unwrap()), ["m1", "m2"]);

    // A partition: p1..p3 and a topic never reached this server; m3 names the topic, and the
    // four are fetched.
    let p1 = room.message(&[&m2], "p1", None);
    let p2 = room.message(&[&p1], "p2", None);
    let p3 = room.message(&[&p2], "p3", None);
    let topic = room.topic(&p3, "set in the partition");
    for p in [&p1, &p2, &p3, &topic] {
        t.serve_event(p).await;
    }
    let m3 = room.message(&[&topic], "m3", None);
    t.send(&[&m3]).await;

    // The sync after it: only m3 is new, and the timeline says it is not whole.
    let sync = t.bob.sync(Some(&since), 0, 10).await;
    let timeline = &sync["rooms"]["join"][&room.room_id]["timeline"];
    assert_eq!(
        messages(timeline["events"].as_array().unwrap()),
        ["m3"],
        "late events are not new: {sync}"
    );
    assert_eq!(timeline["limited"], true, "{sync}");
    // The late topic is part of the state: in the sync's state section and the current state.
    let state = sync["rooms"]["join"][&room.room_id]["state"]["events"]
        .as_array()
        .unwrap();
    assert!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "set in the partition"),
        "{sync}"
    );
    let current = t
        .bob
        .ok(
            Method::GET,
            &format!("/rooms/{}/state/m.room.topic/", encode(&room.room_id)),
            None,
        )
        .await;
    assert_eq!(current["topic"], "set in the partition");
    let prev_batch = timeline["prev_batch"].as_str().unwrap().to_owned();
    // Its prev_batch leads to them, in their places, once; then to what the client had.
    assert_eq!(
        t.page_all("b", Some(&prev_batch)).await,
        strings(&["p3", "p2", "p1", "m2", "m1"])
    );
    // The whole history, both ways, in depth order, every message once.
    assert_eq!(
        t.page_all("b", None).await,
        strings(&["m3", "p3", "p2", "p1", "m2", "m1"])
    );
    assert_eq!(
        t.page_all("f", None).await,
        strings(&["m1", "m2", "p1", "p2", "p3", "m3"])
    );
    // Not counted as unread: m1, m2, m3 notify bob (a room of two), the late ones do not.
    let full = t.bob.sync(None, 0, 1).await;
    let unread = &full["rooms"]["join"][&room.room_id]["unread_notifications"];
    assert_eq!(unread["notification_count"], 3, "{unread}");

    // `/context` sees the same order around a late event.
    let context = t
        .bob
        .ok(
            Method::GET,
            &format!(
                "/rooms/{}/context/{}?limit=4",
                encode(&room.room_id),
                encode(p2.event_id.as_str())
            ),
            None,
        )
        .await;
    assert_eq!(
        messages(context["events_before"].as_array().unwrap()),
        ["p1", "m2"]
    );
    let after = context["events_after"].as_array().unwrap();
    assert_eq!(messages(after), ["p3"]);
    assert_eq!(after[1]["type"], "m.room.topic", "{context}");
    // Its tokens page on from there.
    let before = context["start"].as_str().unwrap();
    assert_eq!(t.page_all("b", Some(before)).await, strings(&["m1"]));

    // A long-poll from the last token is woken by the next live message only.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let m4 = room.message(&[&m3], "m4", None);
    t.send(&[&m4]).await;
    let sync = t.bob.sync(Some(&since), 2_000, 10).await;
    let timeline = &sync["rooms"]["join"][&room.room_id]["timeline"];
    assert_eq!(messages(timeline["events"].as_array().unwrap()), ["m4"]);
    assert_eq!(timeline["limited"], false, "{sync}");

    // Another late topic, then a live state event: the sync's state is the state before that
    // event (the late topic in, the live name out: it is in the timeline).
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let second = room.topic(&m4, "second");
    t.serve_event(&second).await;
    let name = room.state(&second, "m.room.name", json!({ "name": "Live" }));
    t.send(&[&name]).await;
    let sync = t.bob.sync(Some(&since), 0, 10).await;
    let joined = &sync["rooms"]["join"][&room.room_id];
    let events = joined["timeline"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{sync}");
    assert_eq!(events[0]["type"], "m.room.name");
    assert_eq!(joined["timeline"]["limited"], true);
    let state = joined["state"]["events"].as_array().unwrap();
    assert!(state.iter().any(|e| e["content"]["topic"] == "second"), "{sync}");
    assert!(!state.iter().any(|e| e["type"] == "m.room.name"), "{sync}");
}

#[tokio::test]
async fn absurd_depths_sort_after_their_prev_events_and_no_further() {
    let t = setup().await;
    let room = &t.room;
    let m1 = room.message(&[&room.rules], "m1", None);
    let m2 = room.message(&[&m1], "m2", None);
    t.send(&[&m1, &m2]).await;
    // Below its prev event: claims depth 1 (the create event's), sorts right after m2.
    let low = room.message(&[&m2], "low", Some(1));
    t.send(&[&low]).await;
    // The largest depth canonical JSON allows: sorts right after `low`, not above what follows.
    let high = room.message(&[&low], "high", Some(MAX_DEPTH));
    t.send(&[&high]).await;
    // A live message on an old fork, claiming a small depth: where it arrived, the newest.
    let fork = room.message(&[&m1], "fork", Some(2));
    t.send(&[&fork]).await;
    // This server's own next event builds on `high` and `fork`: its depth stays within the
    // limit (no 500), and it sorts after them.
    let (status, body) = t
        .bob
        .request(
            Method::PUT,
            &format!(
                "/rooms/{}/send/m.room.message/{}",
                encode(&room.room_id),
                common::txn_id()
            ),
            Some(&json!({ "msgtype": "m.text", "body": "local" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", t.server.log_tail());
    let db = t.server.db().await;
    let too_deep = count(
        &db,
        "SELECT COUNT(*) FROM events WHERE room_id = $1 AND depth > 9007199254740991",
        &[&room.room_id],
    )
    .await;
    assert_eq!(too_deep, 0);
    let after = room.message(&[&high], "after high", Some(MAX_DEPTH));
    t.send(&[&after]).await;
    let want = strings(&["m1", "m2", "low", "high", "fork", "local", "after high"]);
    assert_eq!(t.page_all("f", None).await, want);
    let mut backwards = want.clone();
    backwards.reverse();
    assert_eq!(t.page_all("b", None).await, backwards);
}

#[tokio::test]
async fn garbage_pagination_tokens_are_invalid_params() {
    let t = setup().await;
    let room = encode(&t.room.room_id);
    for bad in [
        "garbage",
        "t1",
        "t1_x",
        "tx_1",
        "t1_2_3",
        "t99999999999999999999_1",
        "s-",
        "s1_-1",
    ] {
        for param in ["from", "to"] {
            let (status, body) = t
                .bob
                .request(
                    Method::GET,
                    &format!("/rooms/{room}/messages?dir=b&{param}={}", encode(bad)),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{param}={bad}: {body}");
            assert_eq!(body["errcode"], "M_INVALID_PARAM", "{param}={bad}: {body}");
        }
    }
    // A well-formed token far outside the room's history pages to an empty chunk.
    let page = t
        .bob
        .ok(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&from=t-1000_-1000"),
            None,
        )
        .await;
    assert_eq!(page["chunk"], json!([]), "{page}");
}
