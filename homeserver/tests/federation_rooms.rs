//! Federated rooms between two Hearth servers (TLS, X-Matrix, each other's keys): a remote join
//! by room ID with `via`, a remote invite accepted, a leave, a rejected invite — both servers
//! then agree on the membership. Hostile cases through make_join / send_join / invite, with
//! PDUs the test builds and signs with B's real key (or a forged one).

mod common;

use std::path::PathBuf;

use base64::{Engine, engine::general_purpose::STANDARD};
use common::federation::dev_cert;
use common::{Backend, RATE_LIMIT_FIELDS, Server, encode, free_port};
use hearth::{config::FederationConfig, federation::FederationClient};
use hearth_federation::{SigningKey, pdu::PduTemplate, request_auth};
use reqwest::{Method, StatusCode};
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName, UInt, UserId,
};
use serde_json::{Value, json};
use sqlx::Row;

fn name(s: &str) -> &ServerName {
    <&ServerName>::try_from(s).unwrap()
}

struct Fed {
    server: Server,
    name: String,
    port: u16,
}

/// Two servers that trust each other's certificates and find each other on loopback.
struct Pair {
    a: Fed,
    b: Fed,
    certs: tempfile::TempDir,
}

async fn pair() -> Pair {
    let certs = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = dev_cert(certs.path(), "hs-a.test");
    let (b_cert, b_key) = dev_cert(certs.path(), "hs-b.test");
    let (a_port, b_port) = (free_port(), free_port());
    let both = format!(
        "allow_ip_ranges = [\"127.0.0.1/32\"]\nca_files = [\"{}\", \"{}\"]\n",
        a_cert.display(),
        b_cert.display()
    );
    let resolve = format!(
        "[federation.resolve]\n\"hs-a.test\" = \"127.0.0.1:{a_port}\"\n\"hs-b.test\" = \"127.0.0.1:{b_port}\"\n"
    );
    let start = |server_name: &'static str, port: u16, cert: PathBuf, key: PathBuf| {
        let extra = format!(
            "[federation]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ntls_certificate = \"{}\"\n\
             tls_private_key = \"{}\"\n{both}\n{resolve}",
            cert.display(),
            key.display()
        );
        async move {
            let server = Server::start_named(
                Backend::from_env(),
                server_name,
                "",
                &format!("enabled = false\n{RATE_LIMIT_FIELDS}"),
                &extra,
            )
            .await;
            Fed {
                server,
                name: server_name.to_owned(),
                port,
            }
        }
    };
    let a = start("hs-a.test", a_port, a_cert, a_key).await;
    let b = start("hs-b.test", b_port, b_cert, b_key).await;
    Pair { a, b, certs }
}

impl Fed {
    /// The server's signing key, read from its database.
    async fn signing_key(&self) -> SigningKey {
        let db = self.server.db().await;
        let row = sqlx::query(
            "SELECT key_id, pkcs8 FROM server_signing_keys WHERE expired_ts IS NULL \
             ORDER BY created_ts DESC LIMIT 1",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        let key_id: String = row.get(0);
        let pkcs8: String = row.get(1);
        SigningKey::from_pkcs8(
            &STANDARD.decode(pkcs8).unwrap(),
            key_id.strip_prefix("ed25519:").unwrap(),
        )
        .unwrap()
    }

    async fn count(&self, sql: &str, bind: &str) -> i64 {
        let db = self.server.db().await;
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .bind(bind.to_owned())
            .fetch_one(&db)
            .await
            .unwrap()
            .get(0)
    }
}

impl Pair {
    /// A federation client that reaches A, as the test (requests are signed by hand).
    fn client_to_a(&self) -> FederationClient {
        let mut config = FederationConfig {
            ca_files: vec![self.certs.path().join("hs-a.test.crt")],
            allow_ip_ranges: vec!["127.0.0.1/32".parse().unwrap()],
            ..Default::default()
        };
        config
            .resolve
            .insert(self.a.name.clone(), format!("127.0.0.1:{}", self.a.port));
        FederationClient::new("hs-b.test".try_into().unwrap(), &config).unwrap()
    }

    /// A request to A signed as B with `key`.
    async fn to_a(
        &self,
        key: &SigningKey,
        method: &str,
        uri: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let method_ = request_auth::Method::from_bytes(method.as_bytes()).unwrap();
        let auth = request_auth::sign(
            key,
            name("hs-b.test"),
            name("hs-a.test"),
            &method_,
            uri,
            bytes.as_deref(),
        )
        .unwrap();
        let (status, answer) = self
            .client_to_a()
            .request(method, name("hs-a.test"), uri, bytes, Some(auth), 16 << 20)
            .await
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
        (
            StatusCode::from_u16(status).unwrap(),
            serde_json::from_slice(&answer).unwrap_or(Value::Null),
        )
    }
}

/// A member's membership in the room as `client` sees it (None when absent or unreadable).
/// Waits (up to 20 s) until `client` sees `user_id`'s membership as `want`: a local leave
/// reaches the other servers through the outbound queue, shortly after the request returned.
async fn wait_for_membership(client: &common::Client, room_id: &str, user_id: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = membership(client, room_id, user_id).await;
        if now.as_deref() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user_id} is still {now:?} in {room_id}, not {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn membership(client: &common::Client, room_id: &str, user_id: &str) -> Option<String> {
    let (status, content) = client
        .request(
            Method::GET,
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                encode(room_id),
                encode(user_id)
            ),
            None,
        )
        .await;
    (status == StatusCode::OK).then(|| content["membership"].as_str().unwrap_or_default().to_owned())
}

async fn joined(client: &common::Client, room_id: &str) -> Vec<String> {
    let body = client
        .ok(
            Method::GET,
            &format!("/rooms/{}/joined_members", encode(room_id)),
            None,
        )
        .await;
    let mut members: Vec<String> = body["joined"].as_object().unwrap().keys().cloned().collect();
    members.sort();
    members
}

#[tokio::test]
async fn joins_invites_and_leaves_across_two_servers() {
    let p = pair().await;
    let alice = p.a.server.register("alice").await;
    let bob = p.b.server.register("bob").await;
    let carol = p.b.server.register("carol").await;
    let dave = p.b.server.register("dave").await;

    // Bob joins A's public room by ID, through `via`.
    let public = alice
        .create_room(json!({ "preset": "public_chat", "name": "Lobby" }))
        .await;
    let before = alice.sync(None, 0, 10).await;
    let since = before["next_batch"].as_str().unwrap().to_owned();
    // Alice's long-poll, waiting while Bob joins from B: the remote join wakes it.
    let waiting = {
        let alice =
            p.a.server
                .client_with_token(&alice.user_id, &alice.device_id, alice.token.as_deref().unwrap());
        let since = since.clone();
        tokio::spawn(async move { alice.sync(Some(&since), 20_000, 10).await })
    };
    let (status, body) = bob
        .request(
            Method::POST,
            &format!("/join/{}?via=hs-a.test", encode(&public)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{body}\nA: {}\nB: {}",
        p.a.server.log_tail(),
        p.b.server.log_tail()
    );
    assert_eq!(body["room_id"], public.as_str());
    let woken = waiting.await.unwrap();
    let bobs: Vec<&Value> = woken["rooms"]["join"][&public]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .collect();
    assert_eq!(bobs.len(), 1, "Bob's join reaches Alice's /sync: {woken}");
    let both = vec![alice.user_id.clone(), bob.user_id.clone()];
    assert_eq!(joined(&alice, &public).await, both, "A sees Bob joined");
    assert_eq!(joined(&bob, &public).await, both, "B sees the same members");
    assert_eq!(
        bob.get_state_content(&public, "m.room.name", "").await["name"],
        "Lobby",
        "B has the room's state"
    );
    let sync = bob.sync(None, 0, 10).await;
    let room = &sync["rooms"]["join"][&public];
    let types: Vec<&str> = room["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(room["timeline"]["events"].as_array().into_iter().flatten())
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(
        types.contains(&"m.room.create") && types.contains(&"m.room.name"),
        "the room and its state are in Bob's /sync: {sync}"
    );

    // Alice invites Carol (B signs the invite); Carol sees it in /sync, then accepts.
    let private = alice
        .create_room(json!({ "preset": "private_chat", "name": "Inner" }))
        .await;
    alice.invite(&private, &carol.user_id).await;
    assert_eq!(
        membership(&alice, &private, &carol.user_id).await.as_deref(),
        Some("invite")
    );
    let sync = carol.sync(None, 0, 10).await;
    let invite = &sync["rooms"]["invite"][&private];
    assert!(invite.is_object(), "Carol's /sync lists the invite: {sync}");
    let names: Vec<&Value> = invite["invite_state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .map(|e| &e["content"]["name"])
        .collect();
    assert_eq!(
        names,
        [&json!("Inner")],
        "with the room's stripped state: {invite}"
    );
    carol.join(&private).await;
    let members = vec![alice.user_id.clone(), carol.user_id.clone()];
    assert_eq!(joined(&alice, &private).await, members);
    assert_eq!(joined(&carol, &private).await, members);

    // Bob leaves: A hears of it (through B's outbound queue, so shortly after), both agree.
    bob.leave(&public).await;
    wait_for_membership(&alice, &public, &bob.user_id, "leave").await;
    assert_eq!(joined(&alice, &public).await, vec![alice.user_id.clone()]);

    // Dave rejects an invite (B is in the room through Carol, so his leave goes out through
    // B's queue): A records his leave; the invite leaves Dave's /sync.
    alice.invite(&private, &dave.user_id).await;
    let sync = dave.sync(None, 0, 10).await;
    assert!(sync["rooms"]["invite"][&private].is_object(), "{sync}");
    dave.leave(&private).await;
    wait_for_membership(&alice, &private, &dave.user_id, "leave").await;
    let sync = dave.sync(None, 0, 10).await;
    assert!(sync["rooms"]["invite"].get(&private).is_none(), "{sync}");
}

/// A join event for `user` from A's `make_join` template, signed by `key` as hs-b.test.
async fn join_from_template(
    p: &Pair,
    key: &SigningKey,
    event_key: &SigningKey,
    room_id: &str,
    user: &str,
    content: Value,
) -> (OwnedEventId, Value) {
    let uri = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=10&ver=11&ver=12",
        encode(room_id),
        encode(user)
    );
    let (status, template) = p.to_a(key, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::OK, "{template}");
    let event = &template["event"];
    let ids = |k: &str| -> Vec<OwnedEventId> {
        event[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| EventId::parse(v.as_str().unwrap()).unwrap())
            .collect()
    };
    let version = RoomVersionId::try_from(template["room_version"].as_str().unwrap()).unwrap();
    let pdu = PduTemplate {
        room_id: Some(RoomId::parse(room_id).unwrap()),
        sender: UserId::parse(user).unwrap(),
        event_type: "m.room.member".into(),
        state_key: Some(user.to_owned()),
        content,
        prev_events: ids("prev_events"),
        auth_events: ids("auth_events"),
        depth: event["depth"].as_u64().unwrap(),
        origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(1_700_000_000_000).unwrap()),
        redacts: None,
    }
    .finish(&version.rules().unwrap(), "hs-b.test", event_key)
    .unwrap();
    (pdu.event_id.clone(), serde_json::to_value(&pdu.json).unwrap())
}

async fn send_join(
    p: &Pair,
    key: &SigningKey,
    room_id: &str,
    event_id: &EventId,
    pdu: &Value,
) -> (StatusCode, Value) {
    let uri = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        encode(room_id),
        encode(event_id.as_str())
    );
    p.to_a(key, "PUT", &uri, Some(pdu)).await
}

#[tokio::test]
async fn hostile_joins_and_invites_are_refused() {
    let p = pair().await;
    let alice = p.a.server.register("alice").await;
    let b_key = p.b.signing_key().await;
    let public = alice.create_room(json!({ "preset": "public_chat" })).await;
    let private = alice.create_room(json!({ "preset": "private_chat" })).await;
    let mallory = "@mallory:hs-b.test";

    // make_join: a version B does not claim to support.
    let uri = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=9",
        encode(&public),
        encode(mallory)
    );
    let (status, body) = p.to_a(&b_key, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INCOMPATIBLE_ROOM_VERSION");
    // make_join for a user of another server than the origin.
    let uri = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        encode(&public),
        encode("@eve:hs-c.test")
    );
    let (status, body) = p.to_a(&b_key, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // make_join to an invite-only room without an invite.
    let uri = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        encode(&private),
        encode(mallory)
    );
    let (status, body) = p.to_a(&b_key, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // make_join with a request signed by a key that is not B's: 401.
    let forged = SigningKey::generate(b_key.version()).unwrap();
    let uri = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        encode(&public),
        encode(mallory)
    );
    let (status, _) = p.to_a(&forged, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // send_join with a forged event signature (B's key ID, another key): refused, not stored.
    let (event_id, pdu) = join_from_template(
        &p,
        &b_key,
        &forged,
        &public,
        mallory,
        json!({ "membership": "join" }),
    )
    .await;
    let (status, body) = send_join(&p, &b_key, &public, &event_id, &pdu).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        p.a.count(
            "SELECT COUNT(*) FROM events WHERE event_id = $1",
            event_id.as_str()
        )
        .await,
        0
    );

    // send_join for a user of another server than the origin.
    let (event_id, pdu) = join_from_template(
        &p,
        &b_key,
        &b_key,
        &public,
        mallory,
        json!({ "membership": "join" }),
    )
    .await;
    let mut other = pdu.clone();
    other["sender"] = json!("@eve:hs-c.test");
    other["state_key"] = json!("@eve:hs-c.test");
    let (status, body) = send_join(&p, &b_key, &public, &event_id, &other).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // A wrong content hash: the join is kept, redacted (its displayname dropped).
    let mut tampered = pdu.clone();
    tampered["content"]["displayname"] = json!("Not Mallory");
    let (status, body) = send_join(&p, &b_key, &public, &event_id, &tampered).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", p.a.server.log_tail());
    assert!(
        body["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
    assert!(!body["auth_chain"].as_array().unwrap().is_empty());
    assert_eq!(body["members_omitted"], false);
    let content = alice.get_state_content(&public, "m.room.member", mallory).await;
    assert_eq!(content, json!({ "membership": "join" }), "stored redacted");

    // An event failing auth: a join to the invite-only room without an invite, with the room's
    // real auth events and extremities: refused and kept as rejected (never served).
    let db = p.a.server.db().await;
    let state_id = |t: &'static str| {
        let db = db.clone();
        let private = private.clone();
        async move {
            let row = sqlx::query(
                "SELECT event_id FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = ''",
            )
            .bind(private)
            .bind(t)
            .fetch_one(&db)
            .await
            .unwrap();
            EventId::parse(row.get::<String, _>(0)).unwrap()
        }
    };
    let auth_events = vec![
        state_id("m.room.power_levels").await,
        state_id("m.room.join_rules").await,
    ];
    let row = sqlx::query("SELECT f.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_id = f.event_id WHERE f.room_id = $1")
        .bind(private.clone())
        .fetch_one(&db)
        .await
        .unwrap();
    let trudy = "@trudy:hs-b.test";
    let pdu = PduTemplate {
        room_id: Some(RoomId::parse(&private).unwrap()),
        sender: UserId::parse(trudy).unwrap(),
        event_type: "m.room.member".into(),
        state_key: Some(trudy.to_owned()),
        content: json!({ "membership": "join" }),
        prev_events: vec![EventId::parse(row.get::<String, _>(0)).unwrap()],
        auth_events,
        depth: row.get::<i64, _>(1) as u64 + 1,
        origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(1_700_000_000_000).unwrap()),
        redacts: None,
    }
    .finish(&RoomVersionId::V12.rules().unwrap(), "hs-b.test", &b_key)
    .unwrap();
    let json = serde_json::to_value(&pdu.json).unwrap();
    let (status, body) = send_join(&p, &b_key, &private, &pdu.event_id, &json).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(membership(&alice, &private, trudy).await, None);
    assert_eq!(
        p.a.count(
            "SELECT COUNT(*) FROM unserved_events WHERE event_id = $1 AND kind = 'rejected'",
            pdu.event_id.as_str()
        )
        .await,
        1,
        "kept as rejected"
    );
    assert_eq!(
        p.a.count(
            "SELECT COUNT(*) FROM events WHERE event_id = $1",
            pdu.event_id.as_str()
        )
        .await,
        0
    );

    // A server the room's ACL denies cannot join it.
    let fenced = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice
        .ok(
            Method::PUT,
            &format!("/rooms/{}/state/m.room.server_acl/", encode(&fenced)),
            Some(&json!({ "allow": ["*"], "deny": ["hs-b.test"], "allow_ip_literals": false })),
        )
        .await;
    let uri = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        encode(&fenced),
        encode(mallory)
    );
    let (status, body) = p.to_a(&b_key, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // invite: a room version this server does not support.
    let uri = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        encode(&public),
        encode("$whatever")
    );
    let (status, body) = p
        .to_a(
            &b_key,
            "PUT",
            &uri,
            Some(&json!({ "room_version": "9", "event": {}, "invite_room_state": [] })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INCOMPATIBLE_ROOM_VERSION");
}

/// `invite_room_state` in room version 12 (Matrix 1.16, MSC4311): whole PDUs, signed, of the
/// invite's room, its create event among them; stripped events or a missing create event are
/// `400 M_INVALID_PARAM`. (Hearth's own invites send whole PDUs: the two-server test above
/// invites into a version 12 room, and the invitee's server checks them.)
#[tokio::test]
async fn invite_room_state_must_be_whole_pdus_in_v12() {
    let p = pair().await;
    let alice = p.a.server.register("alice").await;
    let b_key = p.b.signing_key().await;
    let rules = RoomVersionId::V12.rules().unwrap();
    let mallory = "@mallory:hs-b.test";
    let ts = MilliSecondsSinceUnixEpoch(UInt::new(1_700_000_000_000).unwrap());
    let create = PduTemplate {
        room_id: None,
        sender: UserId::parse(mallory).unwrap(),
        event_type: "m.room.create".into(),
        state_key: Some(String::new()),
        content: json!({ "room_version": "12" }),
        prev_events: vec![],
        auth_events: vec![],
        depth: 1,
        origin_server_ts: ts,
        redacts: None,
    }
    .finish(&rules, "hs-b.test", &b_key)
    .unwrap();
    let room_id = hearth_federation::pdu::room_id_from_create_event(&create.event_id);
    let name_event = PduTemplate {
        room_id: Some(room_id.clone()),
        sender: UserId::parse(mallory).unwrap(),
        event_type: "m.room.name".into(),
        state_key: Some(String::new()),
        content: json!({ "name": "Elsewhere" }),
        prev_events: vec![create.event_id.clone()],
        auth_events: vec![],
        depth: 2,
        origin_server_ts: ts,
        redacts: None,
    }
    .finish(&rules, "hs-b.test", &b_key)
    .unwrap();
    let invite = PduTemplate {
        room_id: Some(room_id.clone()),
        sender: UserId::parse(mallory).unwrap(),
        event_type: "m.room.member".into(),
        state_key: Some(alice.user_id.clone()),
        content: json!({ "membership": "invite" }),
        prev_events: vec![name_event.event_id.clone()],
        auth_events: vec![],
        depth: 3,
        origin_server_ts: ts,
        redacts: None,
    }
    .finish(&rules, "hs-b.test", &b_key)
    .unwrap();
    let uri = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        encode(room_id.as_str()),
        encode(invite.event_id.as_str())
    );
    let whole = |p: &hearth_federation::Pdu| serde_json::to_value(&p.json).unwrap();
    let stripped = |p: &hearth_federation::Pdu| {
        let v = whole(p);
        json!({ "type": v["type"], "state_key": v["state_key"], "sender": v["sender"], "content": v["content"] })
    };
    let body = |state: Vec<Value>| json!({ "room_version": "12", "event": whole(&invite), "invite_room_state": state });
    for (what, state) in [
        ("stripped events", vec![stripped(&create), stripped(&name_event)]),
        ("no create event", vec![whole(&name_event)]),
        ("a tampered signature", {
            let mut forged = whole(&create);
            forged["signatures"]["hs-b.test"] = json!({ (b_key.key_id()): "AAAA" });
            vec![forged, whole(&name_event)]
        }),
    ] {
        let (status, answer) = p.to_a(&b_key, "PUT", &uri, Some(&body(state))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_eq!(answer["errcode"], "M_INVALID_PARAM", "{what}: {answer}");
    }
    let sync = alice.sync(None, 0, 10).await;
    assert!(sync["rooms"]["invite"].get(room_id.as_str()).is_none(), "{sync}");

    // Whole, signed PDUs with the create event: the invite is signed and shown, stripped.
    let (status, answer) = p
        .to_a(
            &b_key,
            "PUT",
            &uri,
            Some(&body(vec![whole(&create), whole(&name_event)])),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}\n{}", p.a.server.log_tail());
    assert!(answer["event"]["signatures"]["hs-a.test"].is_object(), "{answer}");
    let sync = alice.sync(None, 0, 10).await;
    let state = &sync["rooms"]["invite"][room_id.as_str()]["invite_state"]["events"];
    let names: Vec<&Value> = state
        .as_array()
        .unwrap_or_else(|| panic!("{sync}"))
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .map(|e| &e["content"]["name"])
        .collect();
    assert_eq!(names, [&json!("Elsewhere")], "{sync}");
}

/// Pages `/messages` backwards from the newest event until there is no `end`: every event, newest
/// first.
async fn all_messages_backwards(client: &common::Client, room_id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..50 {
        let mut path = format!("/rooms/{}/messages?dir=b&limit=7", encode(room_id));
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", encode(from)));
        }
        let page = client.ok(Method::GET, &path, None).await;
        events.extend(page["chunk"].as_array().unwrap().iter().cloned());
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return events,
        }
    }
    panic!("/messages never ended: {} events", events.len());
}

fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The events of `room_id` in a `/sync` response's timeline.
fn sync_timeline(sync: &Value, room_id: &str) -> Vec<Value> {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn messages_backfill_history_from_before_the_join() {
    let p = pair().await;
    let alice = p.a.server.register("alice").await;
    let bob = p.b.server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "Old" }))
        .await;
    for i in 1..=30 {
        alice.send_text(&room, &format!("m{i}")).await;
    }
    let (status, body) = bob
        .request(
            Method::POST,
            &format!("/join/{}?via=hs-a.test", encode(&room)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = bob.sync(None, 0, 50).await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    assert!(
        bodies(&sync_timeline(&sync, &room)).is_empty(),
        "before any backfill, B has no history: {sync}"
    );
    // A long-poll waiting while Bob pages: backfilled events wake nobody.
    let waiting = {
        let bob =
            p.b.server
                .client_with_token(&bob.user_id, &bob.device_id, bob.token.as_deref().unwrap());
        let since = since.clone();
        tokio::spawn(async move { bob.sync(Some(&since), 3_000, 50).await })
    };

    let events = all_messages_backwards(&bob, &room).await;
    let expected: Vec<String> = (1..=30).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(
        bodies(&events),
        expected,
        "all 30, newest first, once\nB: {}",
        p.b.server.log_tail()
    );
    let mut ids: Vec<&str> = events.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "no event twice");
    assert_eq!(
        events.last().unwrap()["type"],
        "m.room.create",
        "the room's creation ends the history"
    );
    assert_eq!(
        events.first().unwrap()["type"],
        "m.room.member",
        "Bob's join first"
    );
    let b_rows =
        p.b.count(
            "SELECT COUNT(*) FROM events WHERE room_id = $1 AND stream_ordering < 0",
            &room,
        )
        .await;
    assert!(b_rows >= 30, "stored below the existing history: {b_rows}");

    // Nothing of it reaches /sync as new: not the waiting long-poll, not a later one.
    let woken = waiting.await.unwrap();
    assert!(
        bodies(&sync_timeline(&woken, &room)).is_empty(),
        "backfilled events are not new: {woken}"
    );
    alice.send_text(&room, "m31").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut since = woken["next_batch"].as_str().unwrap().to_owned();
    while !seen.contains(&"m31".to_owned()) {
        assert!(
            std::time::Instant::now() < deadline,
            "m31 never reached B: {seen:?}"
        );
        let sync = bob.sync(Some(&since), 2_000, 50).await;
        seen.extend(bodies(&sync_timeline(&sync, &room)));
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, ["m31"], "only the new message is new");
    let full = bob.sync(None, 0, 1).await;
    let unread = &full["rooms"]["join"][&room]["unread_notifications"];
    assert!(
        unread["notification_count"].as_i64() == Some(1),
        "m31 is counted, the backfilled events are not: {unread}"
    );
    // Paging again reads the store: the same history, no remote call needed.
    let again = all_messages_backwards(&bob, &room).await;
    let mut expected = vec!["m31".to_owned()];
    expected.extend((1..=30).rev().map(|i| format!("m{i}")));
    assert_eq!(bodies(&again), expected);
}

#[tokio::test]
async fn backfilled_history_keeps_its_visibility() {
    let p = pair().await;
    let alice = p.a.server.register("alice").await;
    let bob = p.b.server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.send_text(&room, "shared-before").await;
    alice
        .set_state(
            &room,
            "m.room.history_visibility",
            "",
            json!({ "history_visibility": "joined" }),
        )
        .await;
    for i in 1..=5 {
        alice.send_text(&room, &format!("secret{i}")).await;
    }
    let (status, body) = bob
        .request(
            Method::POST,
            &format!("/join/{}?via=hs-a.test", encode(&room)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    alice.send_text(&room, "after-join").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let events = all_messages_backwards(&bob, &room).await;
        if bodies(&events).contains(&"after-join".to_owned()) {
            // A does not serve B what B's users may not see (`joined`): the secrets never
            // come; what was shared before does, and shows.
            assert_eq!(
                bodies(&events),
                ["after-join", "shared-before"],
                "B: {}",
                p.b.server.log_tail()
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "after-join never reached B");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The backfilled event `event_id` of `events` (a `/messages` chunk).
fn find<'a>(events: &'a [Value], event_id: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event_id"] == event_id)
        .unwrap_or_else(|| panic!("{event_id} not in the history: {events:?}"))
}

/// The state `/context` gives with `event_id` (the state after it), as (type, key) → content.
async fn context_state(
    client: &common::Client,
    room_id: &str,
    event_id: &str,
) -> Vec<((String, String), Value)> {
    let context = client
        .ok(
            Method::GET,
            &format!("/rooms/{}/context/{}?limit=0", encode(room_id), encode(event_id)),
            None,
        )
        .await;
    context["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["state_key"].as_str().unwrap().to_owned(),
                ),
                e["content"].clone(),
            )
        })
        .collect()
}

fn state_content<'a>(
    state: &'a [((String, String), Value)],
    event_type: &str,
    key: &str,
) -> Option<&'a Value> {
    state
        .iter()
        .find(|((t, k), _)| t == event_type && k == key)
        .map(|(_, c)| c)
}

/// History from before B's join with state changes in its middle (a topic, a member who
/// joins and leaves, the history visibility opened): each backfilled event carries the state
/// at it (`prev_content`, `/context`), and is visible per event by the setting at it (a
/// peeker on B sees only what came after the room turned `world_readable`).
#[tokio::test]
async fn backfilled_events_have_the_state_at_them() {
    let p = pair().await;
    let alice = p.a.server.register("alice").await;
    let carol = p.a.server.register("carol").await;
    let bob = p.b.server.register("bob").await;
    let dave = p.b.server.register("dave").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "topic": "T0" }))
        .await;
    let early = alice.send_text(&room, "early").await;
    let t1 = alice
        .set_state(&room, "m.room.topic", "", json!({ "topic": "T1" }))
        .await;
    carol.join(&room).await;
    let from_carol = carol.send_text(&room, "from carol").await;
    carol.leave(&room).await;
    let opened = alice
        .set_state(
            &room,
            "m.room.history_visibility",
            "",
            json!({ "history_visibility": "world_readable" }),
        )
        .await;
    let late = alice.send_text(&room, "late").await;
    alice
        .set_state(&room, "m.room.topic", "", json!({ "topic": "T2" }))
        .await;
    bob.ok(
        Method::POST,
        &format!("/join/{}?via=hs-a.test", encode(&room)),
        Some(&json!({})),
    )
    .await;

    let events = all_messages_backwards(&bob, &room).await;
    assert_eq!(
        bodies(&events),
        ["late", "from carol", "early"],
        "B: {}",
        p.b.server.log_tail()
    );
    assert_eq!(
        find(&events, &t1)["unsigned"]["prev_content"]["topic"],
        "T0",
        "the topic it replaced, from the backfilled state: {}",
        find(&events, &t1)
    );
    let carol_leave = events
        .iter()
        .find(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == carol.user_id
                && e["content"]["membership"] == "leave"
        })
        .expect("carol's leave");
    assert_eq!(
        carol_leave["unsigned"]["prev_content"]["membership"], "join",
        "{carol_leave}"
    );
    assert_eq!(
        find(&events, &opened)["unsigned"]["prev_content"],
        json!({ "history_visibility": "shared" })
    );
    let at_early = context_state(&bob, &room, &early).await;
    assert_eq!(
        state_content(&at_early, "m.room.topic", "").map(|c| &c["topic"]),
        Some(&json!("T0"))
    );
    assert_eq!(state_content(&at_early, "m.room.member", &carol.user_id), None);
    let at_carol = context_state(&bob, &room, &from_carol).await;
    assert_eq!(
        state_content(&at_carol, "m.room.topic", "").map(|c| &c["topic"]),
        Some(&json!("T1"))
    );
    assert_eq!(
        state_content(&at_carol, "m.room.member", &carol.user_id).map(|c| &c["membership"]),
        Some(&json!("join"))
    );
    let at_late = context_state(&bob, &room, &late).await;
    assert_eq!(
        state_content(&at_late, "m.room.member", &carol.user_id).map(|c| &c["membership"]),
        Some(&json!("leave"))
    );
    assert_eq!(
        state_content(&at_late, "m.room.history_visibility", ""),
        Some(&json!({ "history_visibility": "world_readable" }))
    );

    // Dave on B never joined: the room is world_readable now, so he may peek, and sees the
    // backfilled events from the change on, not those from before it (`shared` then).
    let peeked = all_messages_backwards(&dave, &room).await;
    assert_eq!(bodies(&peeked), ["late"], "{peeked:?}");
    assert!(
        peeked.iter().any(|e| e["event_id"] == opened),
        "the change itself shows"
    );
    assert!(
        !peeked.iter().any(|e| e["event_id"] == t1),
        "T1 was set while `shared`"
    );
}

/// More history than one `/backfill` answer holds: the oldest event of the first answer has
/// its prev event missing, so B asks A's `/state_ids` for the state there. That state (topic
/// T0, set long before) is the one B gives the event, not the state B joined with (T1).
#[tokio::test]
async fn the_oldest_backfilled_event_gets_its_state_from_state_ids() {
    let p = pair().await;
    let alice = p.a.server.register("alice").await;
    let bob = p.b.server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "topic": "T0" }))
        .await;
    let mut ids = Vec::new();
    for i in 1..=110 {
        ids.push(alice.send_text(&room, &format!("m{i}")).await);
    }
    let t1 = alice
        .set_state(&room, "m.room.topic", "", json!({ "topic": "T1" }))
        .await;
    bob.ok(
        Method::POST,
        &format!("/join/{}?via=hs-a.test", encode(&room)),
        Some(&json!({})),
    )
    .await;
    // One page: the first backfill answer (100 events: T1 and the 99 messages before it).
    let first = bob
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=5", encode(&room)),
            None,
        )
        .await;
    assert!(!first["chunk"].as_array().unwrap().is_empty(), "{first}");
    let oldest = &ids[110 - 99];
    assert_eq!(
        p.b.count(
            "SELECT COUNT(*) FROM events WHERE event_id = $1 AND stream_ordering < 0",
            oldest
        )
        .await,
        1,
        "m12 came in the first answer: {}",
        p.b.server.log_tail()
    );
    assert_eq!(
        p.b.count(
            "SELECT COUNT(*) FROM events WHERE event_id = $1 AND outlier = 0",
            &ids[110 - 100]
        )
        .await,
        0,
        "m11 did not (it is m12's missing prev event)"
    );
    let at_oldest = context_state(&bob, &room, oldest).await;
    assert_eq!(
        state_content(&at_oldest, "m.room.topic", "").map(|c| &c["topic"]),
        Some(&json!("T0")),
        "the state at m12 came from A's /state_ids: {at_oldest:?}\nB: {}",
        p.b.server.log_tail()
    );
    let events = all_messages_backwards(&bob, &room).await;
    let expected: Vec<String> = (1..=110).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&events), expected, "B: {}", p.b.server.log_tail());
    assert_eq!(find(&events, &t1)["unsigned"]["prev_content"]["topic"], "T0");
    assert_eq!(events.last().unwrap()["type"], "m.room.create");
    for id in [&ids[0], &ids[50], oldest] {
        let state = context_state(&bob, &room, id).await;
        assert_eq!(
            state_content(&state, "m.room.topic", "").map(|c| &c["topic"]),
            Some(&json!("T0")),
            "at {id}"
        );
    }
}

/// The content of `event_id` as `client` reads it (`/rooms/{roomId}/event/{eventId}`), or
/// `None` while the event is not there.
async fn content_of(client: &common::Client, room_id: &str, event_id: &str) -> Option<Value> {
    let (status, body) = client
        .request(
            Method::GET,
            &format!("/rooms/{}/event/{}", encode(room_id), encode(event_id)),
            None,
        )
        .await;
    (status == StatusCode::OK).then(|| body["content"].clone())
}

/// Waits (up to 20 s) until `client` reads `event_id` with content `want`.
async fn wait_for_content(client: &common::Client, room_id: &str, event_id: &str, want: &Value, logs: &Pair) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = content_of(client, room_id, event_id).await;
        if now.as_ref() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{event_id} reads {now:?} for {}, not {want}\nA: {}\nB: {}",
            client.user_id,
            logs.a.server.log_tail(),
            logs.b.server.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A public room of Alice's (on A) that Bob (on B) joined, with a message from each, seen on
/// both servers: (room, Alice's message, Bob's message).
async fn shared_room(p: &Pair, alice: &common::Client, bob: &common::Client) -> (String, String, String) {
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "12" }))
        .await;
    bob.ok(
        Method::POST,
        &format!("/join/{}?via=hs-a.test", encode(&room)),
        Some(&json!({})),
    )
    .await;
    let from_a = alice.send_text(&room, "from A").await;
    let from_b = bob.send_text(&room, "from B").await;
    for (client, event) in [(bob, &from_a), (alice, &from_b)] {
        let body = json!({ "msgtype": "m.text", "body": if *event == from_a { "from A" } else { "from B" } });
        wait_for_content(client, &room, event, &body, p).await;
    }
    (room, from_a, from_b)
}

#[tokio::test]
async fn a_moderators_redaction_of_the_other_servers_event_applies_on_both() {
    let p = pair().await;
    let alice = p.a.server.register("alice").await;
    let bob = p.b.server.register("bob").await;
    let (room, from_a, from_b) = shared_room(&p, &alice, &bob).await;

    // Alice (the room's creator, on A) redacts Bob's message (B's): applied on A at once, and on
    // B when the redaction arrives, although Alice is not of B.
    alice.redact(&room, &from_b).await;
    assert_eq!(content_of(&alice, &room, &from_b).await, Some(json!({})));
    wait_for_content(&bob, &room, &from_b, &json!({}), &p).await;

    // Alice makes Bob a moderator; Bob (on B) redacts Alice's message (A's): applied on both.
    let mut levels = alice.get_state_content(&room, "m.room.power_levels", "").await;
    levels["users"][&bob.user_id] = json!(50);
    alice.set_state(&room, "m.room.power_levels", "", levels).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while bob.get_state_content(&room, "m.room.power_levels", "").await["users"][&bob.user_id] != 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "the power levels never reached B"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let redaction = bob.redact(&room, &from_a).await;
    assert_eq!(content_of(&bob, &room, &from_a).await, Some(json!({})));
    wait_for_content(&alice, &room, &from_a, &json!({}), &p).await;
    // A redaction that applies is an event clients see, on both servers.
    assert_eq!(shown_to(&alice, &room, &redaction).await, [true; 4]);
    assert_eq!(shown_to(&bob, &room, &redaction).await, [true; 4]);
}

/// The room's current state event ID of (`event_type`, `state_key`) and its forward
/// extremities with the highest depth, read from A's database.
async fn room_tips(p: &Pair, room: &str, bob: &str) -> (Vec<OwnedEventId>, Vec<OwnedEventId>, u64) {
    let db = p.a.server.db().await;
    let mut auth = Vec::new();
    for (event_type, state_key) in [("m.room.power_levels", ""), ("m.room.member", bob)] {
        let row = sqlx::query(
            "SELECT event_id FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3",
        )
        .bind(room.to_owned())
        .bind(event_type)
        .bind(state_key.to_owned())
        .fetch_one(&db)
        .await
        .unwrap();
        auth.push(EventId::parse(row.get::<String, _>(0)).unwrap());
    }
    let rows = sqlx::query(
        "SELECT f.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_id = f.event_id \
         WHERE f.room_id = $1",
    )
    .bind(room.to_owned())
    .fetch_all(&db)
    .await
    .unwrap();
    let prev = rows
        .iter()
        .map(|r| EventId::parse(r.get::<String, _>(0)).unwrap())
        .collect();
    let depth = rows.iter().map(|r| r.get::<i64, _>(1)).max().unwrap() as u64;
    (auth, prev, depth)
}

/// An event of `sender` signed by `key` as `server` (room version 12), on `prev`.
fn crafted(
    room: &str,
    sender: &str,
    event_type: &str,
    content: Value,
    (auth, prev, depth): &(Vec<OwnedEventId>, Vec<OwnedEventId>, u64),
    server: &str,
    key: &SigningKey,
) -> (OwnedEventId, Value) {
    let pdu = PduTemplate {
        room_id: Some(RoomId::parse(room).unwrap()),
        sender: UserId::parse(sender).unwrap(),
        event_type: event_type.into(),
        state_key: None,
        content,
        prev_events: prev.clone(),
        auth_events: auth.clone(),
        depth: depth + 1,
        origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(1_800_000_000_000).unwrap()),
        redacts: None,
    }
    .finish(&RoomVersionId::V12.rules().unwrap(), server, key)
    .unwrap();
    (pdu.event_id.clone(), serde_json::to_value(&pdu.json).unwrap())
}

/// `PUT /send/{txnId}` to A from B (signed with B's key): the per-PDU results.
async fn send_to_a(p: &Pair, key: &SigningKey, txn: &str, pdus: Vec<Value>) -> Value {
    let body = json!({ "origin": "hs-b.test", "origin_server_ts": 1, "pdus": pdus });
    let (status, answer) = p
        .to_a(
            key,
            "PUT",
            &format!("/_matrix/federation/v1/send/{txn}"),
            Some(&body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["pdus"].clone()
}

/// Whether `/send` results accept `event_id` (a PDU refused before its ID is known has none).
fn accepted(results: &Value, event_id: &EventId) -> bool {
    results
        .get(event_id.as_str())
        .is_some_and(|r| r.get("error").is_none())
}

/// Whether `event_id` reaches `client` anywhere a client reads events: `/event`, `/context`,
/// `/messages` and a full `/sync` (its timeline of the room).
async fn shown_to(client: &common::Client, room_id: &str, event_id: &str) -> [bool; 4] {
    let event = content_of(client, room_id, event_id).await.is_some();
    let (status, _) = client
        .request(
            Method::GET,
            &format!("/rooms/{}/context/{}?limit=1", encode(room_id), encode(event_id)),
            None,
        )
        .await;
    let messages = all_messages_backwards(client, room_id)
        .await
        .iter()
        .any(|e| e["event_id"] == event_id);
    let sync = client.sync(None, 0, 50).await;
    let synced = common::timeline_ids(&sync, room_id)
        .iter()
        .any(|id| id == event_id);
    [event, status == StatusCode::OK, messages, synced]
}

#[tokio::test]
async fn redactions_without_the_power_apply_nowhere() {
    let p = pair().await;
    let alice = p.a.server.register("alice").await;
    let bob = p.b.server.register("bob").await;
    let (room, from_a, _) = shared_room(&p, &alice, &bob).await;
    let a_message = json!({ "msgtype": "m.text", "body": "from A" });

    // Bob (power 0, on B) may not redact Alice's message: B refuses, nothing goes out.
    let (status, body) = bob
        .request(
            Method::PUT,
            &format!("/rooms/{}/redact/{}/t1", encode(&room), encode(&from_a)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // B misbehaves and sends Bob's redaction anyway, properly signed: A accepts the event (the
    // auth rules allow sending a redaction) but does not apply it.
    let b_key = p.b.signing_key().await;
    let tips = room_tips(&p, &room, &bob.user_id).await;
    let (redaction, pdu) = crafted(
        &room,
        &bob.user_id,
        "m.room.redaction",
        json!({ "redacts": from_a }),
        &tips,
        "hs-b.test",
        &b_key,
    );
    let results = send_to_a(&p, &b_key, "forged-1", vec![pdu]).await;
    assert!(accepted(&results, &redaction), "{results}");
    assert_eq!(
        p.a.count(
            "SELECT COUNT(*) FROM events WHERE event_id = $1",
            redaction.as_str()
        )
        .await,
        1,
        "stored"
    );
    // It does not apply, so clients never see it (held back).
    assert_eq!(
        shown_to(&alice, &room, redaction.as_str()).await,
        [false; 4],
        "A: {}",
        p.a.server.log_tail()
    );
    // The DAG goes on from it: Alice's next message is shown as ever.
    let next = alice.send_text(&room, "after the forged redaction").await;
    assert_eq!(shown_to(&alice, &room, &next).await, [true; 4]);
    assert_eq!(content_of(&alice, &room, &from_a).await, Some(a_message.clone()));

    // A redaction claiming to be Alice's (the room's creator) from a key that is not A's,
    // relayed by B: refused at its signature, applied nowhere.
    let forged_key = SigningKey::generate(b_key.version()).unwrap();
    let tips = room_tips(&p, &room, &alice.user_id).await;
    let (redaction, pdu) = crafted(
        &room,
        &alice.user_id,
        "m.room.redaction",
        json!({ "redacts": from_a }),
        &tips,
        "hs-a.test",
        &forged_key,
    );
    let results = send_to_a(&p, &b_key, "forged-2", vec![pdu]).await;
    assert!(!accepted(&results, &redaction), "{results}");
    assert_eq!(content_of(&alice, &room, redaction.as_str()).await, None);
    // And one from a server that is not in the room (and cannot be reached for its keys).
    let tips = room_tips(&p, &room, &bob.user_id).await;
    let (redaction, pdu) = crafted(
        &room,
        "@mallory:hs-evil.test",
        "m.room.redaction",
        json!({ "redacts": from_a }),
        &tips,
        "hs-evil.test",
        &forged_key,
    );
    let results = send_to_a(&p, &b_key, "forged-3", vec![pdu]).await;
    assert!(!accepted(&results, &redaction), "{results}");
    assert_eq!(content_of(&alice, &room, redaction.as_str()).await, None);

    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(content_of(&alice, &room, &from_a).await, Some(a_message.clone()));
    assert_eq!(content_of(&bob, &room, &from_a).await, Some(a_message));
}

#[tokio::test]
async fn a_redaction_that_arrives_before_its_target_applies_when_it_comes() {
    let p = pair().await;
    let alice = p.a.server.register("alice").await;
    let bob = p.b.server.register("bob").await;
    let (room, _, _) = shared_room(&p, &alice, &bob).await;
    let b_key = p.b.signing_key().await;

    // Bob's message and Bob's redaction of it, both on the room's tips (neither is the other's
    // prev event), reach A redaction first. Bob has no redact power: it applies because the
    // message, once here, is of Bob's server.
    let tips = room_tips(&p, &room, &bob.user_id).await;
    let message = json!({ "msgtype": "m.text", "body": "soon gone" });
    let (target, target_pdu) = crafted(
        &room,
        &bob.user_id,
        "m.room.message",
        message,
        &tips,
        "hs-b.test",
        &b_key,
    );
    let (redaction, redaction_pdu) = crafted(
        &room,
        &bob.user_id,
        "m.room.redaction",
        json!({ "redacts": target }),
        &tips,
        "hs-b.test",
        &b_key,
    );
    let results = send_to_a(&p, &b_key, "early-1", vec![redaction_pdu]).await;
    assert!(accepted(&results, &redaction), "{results}");
    assert_eq!(
        content_of(&alice, &room, redaction.as_str()).await,
        None,
        "held back while its target is not here"
    );
    let results = send_to_a(&p, &b_key, "early-2", vec![target_pdu]).await;
    assert!(accepted(&results, &target), "{results}");
    assert_eq!(content_of(&alice, &room, target.as_str()).await, Some(json!({})));
    assert!(
        content_of(&alice, &room, redaction.as_str()).await.is_some(),
        "shown once it applies"
    );

    // Bob's redaction of an event not here yet that turns out to be Alice's (A's; the test
    // signs it with A's key, as if it came late through B): it waited for nothing, not applied.
    let a_key = p.a.signing_key().await;
    let bob_tips = room_tips(&p, &room, &bob.user_id).await;
    let alice_tips = room_tips(&p, &room, &alice.user_id).await;
    let stays = json!({ "msgtype": "m.text", "body": "stays" });
    let (target, target_pdu) = crafted(
        &room,
        &alice.user_id,
        "m.room.message",
        stays.clone(),
        &alice_tips,
        "hs-a.test",
        &a_key,
    );
    let (redaction, redaction_pdu) = crafted(
        &room,
        &bob.user_id,
        "m.room.redaction",
        json!({ "redacts": target }),
        &bob_tips,
        "hs-b.test",
        &b_key,
    );
    let results = send_to_a(&p, &b_key, "early-3", vec![redaction_pdu]).await;
    assert!(accepted(&results, &redaction), "{results}");
    let results = send_to_a(&p, &b_key, "early-4", vec![target_pdu]).await;
    assert!(accepted(&results, &target), "{results}");
    assert_eq!(content_of(&alice, &room, target.as_str()).await, Some(stays));
    assert_eq!(
        shown_to(&alice, &room, redaction.as_str()).await,
        [false; 4],
        "never applies, never shown"
    );

    // The same once Bob is a moderator (in the state before his redaction): it names its target
    // at once, and applies when the target comes, whoever's it is.
    let mut levels = alice.get_state_content(&room, "m.room.power_levels", "").await;
    levels["users"][&bob.user_id] = json!(50);
    alice.set_state(&room, "m.room.power_levels", "", levels).await;
    let bob_tips = room_tips(&p, &room, &bob.user_id).await;
    let alice_tips = room_tips(&p, &room, &alice.user_id).await;
    let goes = json!({ "msgtype": "m.text", "body": "goes" });
    let (target, target_pdu) = crafted(
        &room,
        &alice.user_id,
        "m.room.message",
        goes,
        &alice_tips,
        "hs-a.test",
        &a_key,
    );
    let (redaction, redaction_pdu) = crafted(
        &room,
        &bob.user_id,
        "m.room.redaction",
        json!({ "redacts": target }),
        &bob_tips,
        "hs-b.test",
        &b_key,
    );
    let results = send_to_a(&p, &b_key, "early-5", vec![redaction_pdu]).await;
    assert!(accepted(&results, &redaction), "{results}");
    let results = send_to_a(&p, &b_key, "early-6", vec![target_pdu]).await;
    assert!(accepted(&results, &target), "{results}");
    assert_eq!(content_of(&alice, &room, target.as_str()).await, Some(json!({})));
}

/// How many `redactions_awaiting_target` rows of A's name `redaction`.
async fn waiting_rows(p: &Pair, redaction: &EventId) -> i64 {
    p.a.count(
        "SELECT COUNT(*) FROM redactions_awaiting_target WHERE redaction_id = $1",
        redaction.as_str(),
    )
    .await
}

/// A redaction whose target never comes waits a day, then is forgotten by A's timer (the
/// first pass runs as A starts); one still within the day stays, and after the restart still
/// applies when its target comes (the in-memory count of waiting rows is read again).
#[tokio::test]
async fn redactions_whose_target_never_comes_are_forgotten() {
    let mut p = pair().await;
    let alice = p.a.server.register("alice").await;
    let bob = p.b.server.register("bob").await;
    let (room, _, _) = shared_room(&p, &alice, &bob).await;
    let b_key = p.b.signing_key().await;
    let mut redactions = Vec::new();
    let mut targets = Vec::new();
    for (i, body) in ["never sent", "sent later"].into_iter().enumerate() {
        let tips = room_tips(&p, &room, &bob.user_id).await;
        let (target, target_pdu) = crafted(
            &room,
            &bob.user_id,
            "m.room.message",
            json!({ "msgtype": "m.text", "body": body }),
            &tips,
            "hs-b.test",
            &b_key,
        );
        let (redaction, redaction_pdu) = crafted(
            &room,
            &bob.user_id,
            "m.room.redaction",
            json!({ "redacts": target }),
            &tips,
            "hs-b.test",
            &b_key,
        );
        let results = send_to_a(&p, &b_key, &format!("wait-{i}"), vec![redaction_pdu]).await;
        assert!(accepted(&results, &redaction), "{results}");
        redactions.push(redaction);
        targets.push((target, target_pdu));
    }
    assert_eq!(waiting_rows(&p, &redactions[0]).await, 1);
    assert_eq!(waiting_rows(&p, &redactions[1]).await, 1);
    // Back-dated while A is down (the tests' pools on a running server are read-only).
    p.a.server.stop().await;
    {
        let db = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&p.a.server.db_url)
            .await
            .unwrap();
        sqlx::query("UPDATE redactions_awaiting_target SET received_ts = $1 WHERE redaction_id = $2")
            .bind(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64
                    - 25 * 3600 * 1000,
            )
            .bind(redactions[0].to_string())
            .execute(&db)
            .await
            .unwrap();
        db.close().await;
    }
    p.a.server.start_again().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while waiting_rows(&p, &redactions[0]).await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the day-old row was never pruned\nA: {}",
            p.a.server.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(waiting_rows(&p, &redactions[1]).await, 1, "the recent one stays");

    let (target, target_pdu) = targets.pop().unwrap();
    let results = send_to_a(&p, &b_key, "late-target", vec![target_pdu]).await;
    assert!(accepted(&results, &target), "{results}");
    assert_eq!(
        content_of(&alice, &room, target.as_str()).await,
        Some(json!({})),
        "the waiting redaction applies after the restart"
    );
    assert!(content_of(&alice, &room, redactions[1].as_str()).await.is_some());
}
