//! Three Hearth servers on loopback (TLS dev certificates, `federation.resolve`, a quick retry
//! backoff): a room created on A, joined from B by ID, knocked on from C and the knock accepted
//! with an invite, messages from all three with the same timeline everywhere, a leave; a server
//! killed mid-conversation that catches up after its restart with nothing missing and nothing
//! doubled; a partition (C cut off both ways while A changes power levels and membership and C's
//! user keeps talking) that heals to the same current state on all three. Hostile knocks:
//! a room whose join rule is not `knock`, a banned user, a room version the knocking server
//! does not list.

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::federation::dev_cert;
use common::{Backend, Client, RATE_LIMIT_FIELDS, Server, encode, free_port};
use hearth::{config::FederationConfig, federation::FederationClient};
use hearth_federation::{SigningKey, request_auth};
use reqwest::{Method, StatusCode};
use ruma::ServerName;
use serde_json::{Value, json};
use sqlx::Row;

const NAMES: [&str; 3] = ["hs-a.test", "hs-b.test", "hs-c.test"];

fn name(s: &str) -> &ServerName {
    <&ServerName>::try_from(s).unwrap()
}

/// A federating Hearth: the process, its name and its federation port.
struct Fed {
    server: Server,
    name: String,
    port: u16,
}

/// Three servers that trust each other's certificates and find each other on loopback.
struct Three {
    a: Fed,
    b: Fed,
    c: Fed,
    certs: tempfile::TempDir,
}

/// The `[federation]` section of `server_name`, with `resolve` (name → port on 127.0.0.1).
fn federation_config(server_name: &str, port: u16, certs: &Path, resolve: &[(&str, u16)]) -> String {
    let cas: Vec<String> = NAMES
        .iter()
        .map(|n| format!("\"{}\"", certs.join(format!("{n}.crt")).display()))
        .collect();
    let entries: String = resolve
        .iter()
        .map(|(n, p)| format!("\"{n}\" = \"127.0.0.1:{p}\"\n"))
        .collect();
    format!(
        "[federation]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ntls_certificate = \"{}\"\n\
         tls_private_key = \"{}\"\nallow_ip_ranges = [\"127.0.0.1/32\"]\nca_files = [{}]\n\
         retry_initial_ms = 200\nretry_max_ms = 1000\n[federation.resolve]\n{entries}",
        certs.join(format!("{server_name}.crt")).display(),
        certs.join(format!("{server_name}.key")).display(),
        cas.join(", "),
    )
}

async fn three() -> Three {
    let certs = tempfile::tempdir().unwrap();
    for n in NAMES {
        dev_cert(certs.path(), n);
    }
    let ports = [free_port(), free_port(), free_port()];
    let resolve: Vec<(&str, u16)> = NAMES.iter().copied().zip(ports).collect();
    let mut feds = Vec::new();
    for (n, port) in NAMES.iter().zip(ports) {
        let server = Server::start_named(
            Backend::from_env(),
            n,
            "",
            &format!("enabled = false\n{RATE_LIMIT_FIELDS}"),
            &federation_config(n, port, certs.path(), &resolve),
        )
        .await;
        feds.push(Fed {
            server,
            name: (*n).to_owned(),
            port,
        });
    }
    let c = feds.pop().unwrap();
    let b = feds.pop().unwrap();
    let a = feds.pop().unwrap();
    Three { a, b, c, certs }
}

impl Three {
    /// What went wrong on each server (all its runs): warnings, refusals, failures.
    fn logs(&self) -> String {
        let mut out = String::new();
        for fed in [&self.a, &self.b, &self.c] {
            out.push_str(&format!("{}:\n", fed.name));
            let mut files: Vec<PathBuf> = std::fs::read_dir(fed.server.dir())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            files.sort();
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                for line in text.lines().filter(|l| {
                    (l.contains("WARN")
                        || l.contains("refused")
                        || l.contains("ERROR")
                        || l.contains("failed"))
                        && !l.contains("at_rest")
                        && !l.contains("ruma_state_res")
                }) {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Fed {
    /// The server's current signing key, read from its database.
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

    /// A signed federation request to this server, as `origin` with `key`.
    async fn signed(
        &self,
        certs: &Path,
        origin: &str,
        key: &SigningKey,
        method: &str,
        uri: &str,
    ) -> (StatusCode, Value) {
        let mut config = FederationConfig {
            ca_files: vec![certs.join(format!("{}.crt", self.name))],
            allow_ip_ranges: vec!["127.0.0.1/32".parse().unwrap()],
            ..Default::default()
        };
        config
            .resolve
            .insert(self.name.clone(), format!("127.0.0.1:{}", self.port));
        let client = FederationClient::new(origin.try_into().unwrap(), &config).unwrap();
        let method_ = request_auth::Method::from_bytes(method.as_bytes()).unwrap();
        let auth = request_auth::sign(key, name(origin), name(&self.name), &method_, uri, None).unwrap();
        let (status, body) = client
            .request(method, name(&self.name), uri, None, Some(auth), 1 << 20)
            .await
            .unwrap();
        (
            StatusCode::from_u16(status).unwrap(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }
}

/// Polls `done` every 100 ms for up to 40 s.
async fn wait_for(what: &str, logs: impl Fn() -> String, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A user's membership as `client` reads it from the room's state (None when absent or
/// unreadable).
async fn membership(client: &Client, room_id: &str, user_id: &str) -> Option<String> {
    let (status, content) = client
        .request(
            Method::GET,
            &Client::state_path(room_id, "m.room.member", user_id),
            None,
        )
        .await;
    (status == StatusCode::OK).then(|| content["membership"].as_str().unwrap_or_default().to_owned())
}

/// The bodies of the room's `m.room.message` events as `client` pages back through
/// `/messages`, oldest first (a doubled event shows twice).
async fn messages(client: &Client, room_id: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("/rooms/{}/messages?dir=b&limit=100", encode(room_id));
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", encode(from)));
        }
        let page = client.ok(Method::GET, &path, None).await;
        for e in page["chunk"].as_array().into_iter().flatten() {
            if e["type"] == "m.room.message" {
                bodies.push(e["content"]["body"].as_str().unwrap_or_default().to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) if page["chunk"].as_array().is_some_and(|c| !c.is_empty()) => {
                from = Some(end.to_owned())
            }
            _ => break,
        }
    }
    bodies.reverse();
    bodies
}

/// The messages as a sorted list (servers may order concurrent events differently).
async fn message_set(client: &Client, room_id: &str) -> Vec<String> {
    let mut bodies = messages(client, room_id).await;
    bodies.sort();
    bodies
}

fn expected(bodies: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = bodies.iter().map(|b| (*b).to_owned()).collect();
    all.sort();
    all
}

/// Waits until each client's view of the room's messages is `want` (sorted).
async fn wait_for_messages(t: &Three, clients: &[&Client], room_id: &str, want: &[String]) {
    for client in clients {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let got = message_set(client, room_id).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}'s messages: {got:?}, not {want:?}\n{}",
                client.user_id,
                t.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn power_levels(client: &Client, room_id: &str) -> Value {
    client.get_state_content(room_id, "m.room.power_levels", "").await
}

#[tokio::test]
async fn create_join_knock_invite_and_leave_across_three_servers() {
    let t = three().await;
    let alice = t.a.server.register("alice").await;
    let bob = t.b.server.register("bob").await;
    let carol = t.c.server.register("carol").await;

    // Alice's room on A asks for knocks; Bob joins it from B through Alice's invite.
    let room = alice
        .create_room(json!({ "preset": "private_chat", "name": "Porch", "room_version": "11" }))
        .await;
    alice
        .set_state(&room, "m.room.join_rules", "", json!({ "join_rule": "knock" }))
        .await;
    alice.invite(&room, &bob.user_id).await;
    bob.join(&room).await;

    // Carol, on C, knocks through A: C was never in the room.
    let (status, body) = carol
        .request(
            Method::POST,
            &format!("/knock/{}?via=hs-a.test", encode(&room)),
            Some(&json!({ "reason": "let me in" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", t.logs());
    assert_eq!(body["room_id"], room.as_str());
    let sync = carol.sync(None, 0, 10).await;
    let knocked = &sync["rooms"]["knock"][&room];
    assert!(knocked.is_object(), "Carol's /sync lists the knock: {sync}");
    let state = knocked["knock_state"]["events"].as_array().unwrap();
    assert!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Porch"),
        "with the room's stripped state: {knocked}"
    );
    assert!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "knock"),
        "and the knock itself: {knocked}"
    );
    // Both resident servers see the knock (A accepted it and sent it to B).
    assert_eq!(
        membership(&alice, &room, &carol.user_id).await.as_deref(),
        Some("knock")
    );
    wait_for(
        "B to see Carol's knock",
        || t.logs(),
        async || membership(&bob, &room, &carol.user_id).await.as_deref() == Some("knock"),
    )
    .await;
    let reason = bob
        .get_state_content(&room, "m.room.member", &carol.user_id)
        .await;
    assert_eq!(reason["reason"], "let me in");

    // Alice accepts the knock with an invite; Carol joins through A.
    alice.invite(&room, &carol.user_id).await;
    wait_for(
        "Carol's invite",
        || t.logs(),
        async || carol.sync(None, 0, 10).await["rooms"]["invite"][&room].is_object(),
    )
    .await;
    carol.join(&room).await;
    let mut everyone = vec![alice.user_id.clone(), bob.user_id.clone(), carol.user_id.clone()];
    everyone.sort();
    for client in [&alice, &bob, &carol] {
        wait_for(
            "all three joined everywhere",
            || t.logs(),
            async || joined(client, &room).await == everyone,
        )
        .await;
    }

    // Messages from all three servers, both ways: the same timeline everywhere.
    let mut sent = Vec::new();
    for (i, client) in [&alice, &bob, &carol, &carol, &bob, &alice].iter().enumerate() {
        let body = format!("m{i} from {}", client.user_id);
        client.send_text(&room, &body).await;
        sent.push(body);
    }
    let want = expected(&sent.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_messages(&t, &[&alice, &bob, &carol], &room, &want).await;

    // Bob leaves: everyone sees it; Carol's later message reaches A but not Bob's server
    // through the room (B has no one left in it).
    bob.leave(&room).await;
    for client in [&alice, &carol] {
        wait_for(
            "Bob's leave everywhere",
            || t.logs(),
            async || membership(client, &room, &bob.user_id).await.as_deref() == Some("leave"),
        )
        .await;
    }
    carol.send_text(&room, "after bob").await;
    wait_for(
        "Carol's message on A",
        || t.logs(),
        async || messages(&alice, &room).await.last().map(String::as_str) == Some("after bob"),
    )
    .await;
    assert_eq!(
        alice.room_state_ids(&room).await,
        carol.room_state_ids(&room).await,
        "A and C agree on the room's state"
    );

    // A knock retracted: Dave on C knocks on a second room, then leaves it.
    let dave = t.c.server.register("dave").await;
    let second = alice
        .create_room(json!({ "preset": "private_chat", "room_version": "12" }))
        .await;
    alice
        .set_state(&second, "m.room.join_rules", "", json!({ "join_rule": "knock" }))
        .await;
    dave.ok(
        Method::POST,
        &format!("/knock/{}?via=hs-a.test", encode(&second)),
        Some(&json!({})),
    )
    .await;
    assert_eq!(
        membership(&alice, &second, &dave.user_id).await.as_deref(),
        Some("knock"),
        "a knock on a version 12 room"
    );
    dave.leave(&second).await;
    assert_eq!(
        membership(&alice, &second, &dave.user_id).await.as_deref(),
        Some("leave"),
        "the knock retracted"
    );
    let sync = dave.sync(None, 0, 10).await;
    assert!(sync["rooms"]["knock"].get(&second).is_none(), "{sync}");
}

async fn joined(client: &Client, room_id: &str) -> Vec<String> {
    let (status, body) = client
        .request(
            Method::GET,
            &format!("/rooms/{}/joined_members", encode(room_id)),
            None,
        )
        .await;
    if status != StatusCode::OK {
        return Vec::new();
    }
    let mut members: Vec<String> = body["joined"].as_object().unwrap().keys().cloned().collect();
    members.sort();
    members
}

#[tokio::test]
async fn hostile_knocks_are_refused_with_the_spec_errors() {
    let t = three().await;
    let alice = t.a.server.register("alice").await;
    let carol = t.c.server.register("carol").await;
    let knock = |room: String| {
        let carol = &carol;
        async move {
            carol
                .request(
                    Method::POST,
                    &format!("/knock/{}?via=hs-a.test", encode(&room)),
                    Some(&json!({})),
                )
                .await
        }
    };

    // A public room: knocking is not its join rule.
    let public = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11" }))
        .await;
    let (status, body) = knock(public.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // A banned user may not knock.
    let knockable = alice
        .create_room(json!({ "preset": "private_chat", "room_version": "11" }))
        .await;
    alice
        .set_state(
            &knockable,
            "m.room.join_rules",
            "",
            json!({ "join_rule": "knock" }),
        )
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/rooms/{}/ban", encode(&knockable)),
            Some(&json!({ "user_id": carol.user_id })),
        )
        .await;
    let (status, body) = knock(knockable.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let sync = carol.sync(None, 0, 10).await;
    assert!(sync["rooms"]["knock"].get(&knockable).is_none(), "{sync}");

    // A knocking server that lists only versions without knocking: 400
    // M_INCOMPATIBLE_ROOM_VERSION from make_knock, as for make_join.
    let c_key = t.c.signing_key().await;
    let open = alice
        .create_room(json!({ "preset": "private_chat", "room_version": "11" }))
        .await;
    alice
        .set_state(&open, "m.room.join_rules", "", json!({ "join_rule": "knock" }))
        .await;
    let uri = |ver: &str| {
        format!(
            "/_matrix/federation/v1/make_knock/{}/{}?ver={ver}",
            encode(&open),
            encode(&carol.user_id)
        )
    };
    let (status, body) =
        t.a.signed(t.certs.path(), "hs-c.test", &c_key, "GET", &uri("6"))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INCOMPATIBLE_ROOM_VERSION");
    // The same request listing the room's version gets a knock template.
    let (status, body) =
        t.a.signed(t.certs.path(), "hs-c.test", &c_key, "GET", &uri("11"))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_version"], "11");
    assert_eq!(body["event"]["content"]["membership"], "knock");
    // Someone else's user: refused.
    let (status, _) =
        t.a.signed(
            t.certs.path(),
            "hs-c.test",
            &c_key,
            "GET",
            &format!(
                "/_matrix/federation/v1/make_knock/{}/{}?ver=11",
                encode(&open),
                encode("@mallory:hs-b.test")
            ),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_killed_server_catches_up_with_nothing_missing_or_doubled() {
    let mut t = three().await;
    let alice = t.a.server.register("alice").await;
    let bob = t.b.server.register("bob").await;
    let carol = t.c.server.register("carol").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11" }))
        .await;
    for client in [&bob, &carol] {
        client
            .ok(
                Method::POST,
                &format!("/join/{}?via=hs-a.test", encode(&room)),
                Some(&json!({})),
            )
            .await;
    }
    // Each server sends its events to the servers it knows to be in the room: everyone learns
    // of everyone's join first.
    let mut everyone = vec![alice.user_id.clone(), bob.user_id.clone(), carol.user_id.clone()];
    everyone.sort();
    for client in [&alice, &bob, &carol] {
        wait_for(
            "all three joined everywhere",
            || t.logs(),
            async || joined(client, &room).await == everyone,
        )
        .await;
    }
    let mut sent: Vec<String> = Vec::new();
    for (i, client) in [&alice, &bob, &carol].iter().enumerate() {
        let body = format!("before {i}");
        client.send_text(&room, &body).await;
        sent.push(body);
    }
    let want = expected(&sent.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_messages(&t, &[&alice, &bob, &carol], &room, &want).await;

    // C dies (SIGKILL) mid-conversation; A and B go on talking.
    t.c.server.kill();
    for i in 0..8 {
        let (client, body) = if i % 2 == 0 {
            (&alice, format!("while C is down {i}"))
        } else {
            (&bob, format!("while C is down {i}"))
        };
        client.send_text(&room, &body).await;
        sent.push(body);
    }
    let want = expected(&sent.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_messages(&t, &[&alice, &bob], &room, &want).await;

    // C comes back: the queues of A and B deliver what it missed, once.
    t.c.server.start_again().await;
    wait_for_messages(&t, &[&carol], &room, &want).await;
    // Carol talks again; everyone has everything, nothing twice.
    carol.send_text(&room, "after the restart").await;
    sent.push("after the restart".to_owned());
    let want = expected(&sent.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_messages(&t, &[&alice, &bob, &carol], &room, &want).await;
    let a_order = messages(&alice, &room).await;
    assert_eq!(a_order.len(), sent.len(), "nothing doubled on A: {a_order:?}");
    let c_order = messages(&carol, &room).await;
    assert_eq!(c_order.len(), sent.len(), "nothing doubled on C: {c_order:?}");
    assert_eq!(
        alice.room_state_ids(&room).await,
        carol.room_state_ids(&room).await
    );
}

/// A's queued PDUs for `destination`, as stored.
async fn queued_pdus(fed: &Fed, destination: &str) -> Vec<String> {
    let db = fed.server.db().await;
    sqlx::query("SELECT json FROM federation_outbound WHERE destination = $1 AND kind = 'pdu'")
        .bind(destination.to_owned())
        .fetch_all(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn sends_answered_just_before_a_kill_reach_the_other_server_once() {
    let mut t = three().await;
    let alice = t.a.server.register("alice").await;
    let bob = t.b.server.register("bob").await;
    // The default mode: search-enabled, so A stores the room's events sealed.
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11" }))
        .await;
    bob.ok(
        Method::POST,
        &format!("/join/{}?via=hs-a.test", encode(&room)),
        Some(&json!({})),
    )
    .await;
    let mut both = vec![alice.user_id.clone(), bob.user_id.clone()];
    both.sort();
    for client in [&alice, &bob] {
        wait_for(
            "both joined on both",
            || t.logs(),
            async || joined(client, &room).await == both,
        )
        .await;
    }

    // B is down: nothing A sends can leave before A dies, so only A's queue rows can bring
    // them. A answers the sends, then is killed (SIGKILL) at once.
    t.b.server.stop().await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let body = format!("quokkaventricle {i}");
        alice.send_text(&room, &body).await;
        sent.push(body);
    }
    t.a.server.kill();
    // The queue rows were committed with the events, sealed like them.
    let queued = queued_pdus(&t.a, "hs-b.test").await;
    assert!(queued.len() >= sent.len(), "{} rows", queued.len());
    for json in &queued {
        assert!(
            json.starts_with("~hearth-aead1:"),
            "a queued PDU in the clear: {json}"
        );
    }
    t.a.server.start_again().await;
    t.b.server.start_again().await;
    let want = expected(&sent.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_messages(&t, &[&bob], &room, &want).await;

    // B is up: A answers, is killed at once, and comes back.
    for i in 0..3 {
        let body = format!("just before the kill {i}");
        alice.send_text(&room, &body).await;
        sent.push(body);
    }
    t.a.server.kill();
    t.a.server.start_again().await;
    let want = expected(&sent.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_messages(&t, &[&bob], &room, &want).await;
    // Once each, whatever was sent before the kill and sent again after it.
    let on_b = messages(&bob, &room).await;
    assert_eq!(on_b.len(), sent.len(), "nothing doubled on B: {on_b:?}");
    wait_for(
        "A's queue for B to empty",
        || t.logs(),
        async || queued_pdus(&t.a, "hs-b.test").await.is_empty(),
    )
    .await;
}

/// Rewrites the `[federation.resolve]` entries of `fed`'s config: each of `to` (name → port).
fn repoint(fed: &Fed, to: &[(&str, u16)]) {
    let path = fed.server.config_path();
    let config = std::fs::read_to_string(path).unwrap();
    let (head, _) = config.split_once("[federation.resolve]").unwrap();
    let entries: String = to
        .iter()
        .map(|(n, p)| format!("\"{n}\" = \"127.0.0.1:{p}\"\n"))
        .collect();
    std::fs::write(path, format!("{head}[federation.resolve]\n{entries}")).unwrap();
}

/// Moves `fed`'s federation listener to `port`.
fn move_listener(fed: &mut Fed, port: u16) {
    let path = fed.server.config_path().to_owned();
    let config = std::fs::read_to_string(&path).unwrap();
    let config = config.replace(
        &format!("listen = \"127.0.0.1:{}\"", fed.port),
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&path, config).unwrap();
    fed.port = port;
}

#[tokio::test]
async fn a_partition_heals_to_the_same_state_on_all_three() {
    partition(false).await;
}

#[tokio::test]
async fn a_partition_with_a_conflicting_state_change_heals_to_the_same_state() {
    partition(true).await;
}

/// C cut off both ways while A and B change power levels and membership and Carol talks on C
/// (and, with `minority_topic`, sets the topic at a level she loses on the other side).
async fn partition(minority_topic: bool) {
    let mut t = three().await;
    let alice = t.a.server.register("alice").await;
    let bob = t.b.server.register("bob").await;
    let carol = t.c.server.register("carol").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11" }))
        .await;
    for client in [&bob, &carol] {
        client
            .ok(
                Method::POST,
                &format!("/join/{}?via=hs-a.test", encode(&room)),
                Some(&json!({})),
            )
            .await;
    }
    // Each server sends its events to the servers it knows to be in the room: everyone learns
    // of everyone's join first.
    let mut everyone = vec![alice.user_id.clone(), bob.user_id.clone(), carol.user_id.clone()];
    everyone.sort();
    for client in [&alice, &bob, &carol] {
        wait_for(
            "all three joined everywhere",
            || t.logs(),
            async || joined(client, &room).await == everyone,
        )
        .await;
    }
    // Bob and Carol may set the topic and the name.
    let mut levels = power_levels(&alice, &room).await;
    levels["users"][&bob.user_id] = json!(50);
    levels["users"][&carol.user_id] = json!(50);
    alice
        .set_state(&room, "m.room.power_levels", "", levels.clone())
        .await;
    for client in [&bob, &carol] {
        wait_for(
            "the new power levels everywhere",
            || t.logs(),
            async || power_levels(client, &room).await["users"][&carol.user_id] == 50,
        )
        .await;
    }
    carol.send_text(&room, "before the partition").await;
    wait_for_messages(&t, &[&alice, &bob], &room, &expected(&["before the partition"])).await;

    // The partition: C listens elsewhere and finds A and B nowhere; A and B still look for C
    // at its old port, where no one answers.
    let (a_port, b_port, c_port) = (t.a.port, t.b.port, t.c.port);
    let dead = free_port();
    t.c.server.stop().await;
    move_listener(&mut t.c, free_port());
    repoint(&t.c, &[("hs-a.test", dead), ("hs-b.test", dead)]);
    t.c.server.start_again().await;

    // On the majority side: Dan (of B) joins, Bob's level rises, Carol loses the right to set
    // the topic; Bob renames the room.
    let dan = t.b.server.register("dan").await;
    dan.ok(
        Method::POST,
        &format!("/join/{}?via=hs-a.test", encode(&room)),
        Some(&json!({})),
    )
    .await;
    let mut levels = power_levels(&alice, &room).await;
    levels["users"][&bob.user_id] = json!(75);
    levels["users"][&carol.user_id] = json!(0);
    levels["events"]["m.room.topic"] = json!(50);
    alice.set_state(&room, "m.room.power_levels", "", levels).await;
    alice.send_text(&room, "A during the partition").await;
    bob.set_state(&room, "m.room.name", "", json!({ "name": "Majority" }))
        .await;
    // On C, cut off: Carol (still at 50 there) sets the topic and talks.
    if minority_topic {
        carol
            .set_state(&room, "m.room.topic", "", json!({ "topic": "minority" }))
            .await;
    }
    // C stops right after the send: its queue rows were committed with the events.
    carol.send_text(&room, "C during the partition").await;

    // The partition heals: C listens where A and B look for it, and finds them again.
    t.c.server.stop().await;
    move_listener(&mut t.c, c_port);
    repoint(&t.c, &[("hs-a.test", a_port), ("hs-b.test", b_port)]);
    t.c.server.start_again().await;
    // Anyone's next event merges the branches.
    alice.send_text(&room, "after the partition").await;
    let all = expected(&[
        "before the partition",
        "A during the partition",
        "C during the partition",
        "after the partition",
    ]);
    wait_for_messages(&t, &[&alice, &bob, &carol], &room, &all).await;
    wait_for(
        "the same current state on all three",
        || t.logs(),
        async || {
            let a = alice.room_state_ids(&room).await;
            a == bob.room_state_ids(&room).await && a == carol.room_state_ids(&room).await
        },
    )
    .await;
    // That state is the majority's: Dan joined, the new levels, the new name; Carol's topic,
    // set at a level she no longer has, lost in the resolution.
    for client in [&alice, &bob, &carol] {
        assert_eq!(
            membership(client, &room, &dan.user_id).await.as_deref(),
            Some("join")
        );
        let levels = power_levels(client, &room).await;
        assert_eq!(levels["users"][&carol.user_id], 0, "{levels}");
        assert_eq!(levels["users"][&bob.user_id], 75, "{levels}");
        assert_eq!(
            client.get_state_content(&room, "m.room.name", "").await["name"],
            "Majority"
        );
        let (_, topic) = client
            .request(Method::GET, &Client::state_path(&room, "m.room.topic", ""), None)
            .await;
        assert_ne!(topic["topic"], "minority", "{}: {topic}", client.user_id);
    }
}

/// What a client sent through a recording front, in the clear.
type Recorded = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// A TLS front for `name` (its own dev certificate, so its peers trust it) that forwards to the
/// server's listener at `upstream` over TLS and records what clients send, in the clear. Both
/// sides speak HTTP/1.1 only, so the bytes pass through unchanged.
async fn recording_front(certs: &Path, name: &str, upstream: u16) -> (u16, Recorded) {
    use rustls::{
        ClientConfig, RootCertStore, ServerConfig,
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName as TlsName, pem::PemObject},
    };
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let cert = CertificateDer::from_pem_file(certs.join(format!("{name}.crt"))).unwrap();
    let key = PrivateKeyDer::from_pem_file(certs.join(format!("{name}.key"))).unwrap();
    let provider = Arc::new(ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tls_name = TlsName::try_from(name.to_owned()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorded: Recorded = Arc::default();
    let log = recorded.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, connector, tls_name, log) =
                (acceptor.clone(), connector.clone(), tls_name.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(down) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let Ok(up) = connector.connect(tls_name, up).await else {
                    return;
                };
                let (mut down_read, mut down_write) = tokio::io::split(down);
                let (mut up_read, mut up_write) = tokio::io::split(up);
                let answers = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut up_read, &mut down_write).await;
                    let _ = down_write.shutdown().await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = down_read.read(&mut buf).await {
                    if n == 0 || up_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = up_write.shutdown().await;
                let _ = answers.await;
            });
        }
    });
    (port, recorded)
}

/// How often `needle` occurs in what went through a front.
fn occurrences(recorded: &Recorded, needle: &str) -> usize {
    String::from_utf8_lossy(&recorded.lock().unwrap())
        .matches(needle)
        .count()
}

#[tokio::test]
async fn a_local_leave_of_a_remote_room_reaches_each_other_server_once() {
    let mut t = three().await;
    // B reaches A and C through recording fronts: everything B sends them is seen in the clear.
    let (to_a, seen_by_a) = recording_front(t.certs.path(), "hs-a.test", t.a.port).await;
    let (to_c, seen_by_c) = recording_front(t.certs.path(), "hs-c.test", t.c.port).await;
    t.b.server.stop().await;
    repoint(&t.b, &[("hs-a.test", to_a), ("hs-c.test", to_c)]);
    t.b.server.start_again().await;

    let alice = t.a.server.register("alice").await;
    let bob = t.b.server.register("bob").await;
    let carol = t.c.server.register("carol").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11" }))
        .await;
    for client in [&bob, &carol] {
        client
            .ok(
                Method::POST,
                &format!("/join/{}?via=hs-a.test", encode(&room)),
                Some(&json!({})),
            )
            .await;
    }
    let mut everyone = vec![alice.user_id.clone(), bob.user_id.clone(), carol.user_id.clone()];
    everyone.sort();
    for client in [&alice, &bob, &carol] {
        wait_for(
            "all three joined everywhere",
            || t.logs(),
            async || joined(client, &room).await == everyone,
        )
        .await;
    }
    // Bob's join went through the fronts: they do record B's traffic.
    assert!(occurrences(&seen_by_a, "/send_join/") >= 1);
    assert_eq!(occurrences(&seen_by_a, "\"membership\":\"leave\""), 0);

    // Bob leaves A's room: A and C hear of it, each once (the queue's transaction), and no
    // send_leave goes beside it.
    bob.leave(&room).await;
    for client in [&alice, &carol] {
        wait_for(
            "Bob's leave everywhere",
            || t.logs(),
            async || membership(client, &room, &bob.user_id).await.as_deref() == Some("leave"),
        )
        .await;
    }
    // Anything sent a second time would be on its way by now (the queue retries within 1 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (server, seen) in [("A", &seen_by_a), ("C", &seen_by_c)] {
        assert_eq!(
            occurrences(seen, "\"membership\":\"leave\""),
            1,
            "{server} received Bob's leave once"
        );
        assert_eq!(occurrences(seen, "/send_leave/"), 0, "no send_leave to {server}");
    }
    assert_eq!(
        alice.room_state_ids(&room).await,
        carol.room_state_ids(&room).await
    );
}

/// Rows of A's table of PDUs waiting for a prev event.
async fn pending_pdus(fed: &Fed) -> Vec<(String, String)> {
    let db = fed.server.db().await;
    sqlx::query("SELECT event_id, reason FROM federation_pending_pdus")
        .fetch_all(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_pdu_whose_prev_event_cannot_be_had_is_answered_with_an_error_and_placed_later() {
    let mut t = three().await;
    let alice = t.a.server.register("alice").await;
    let bob = t.b.server.register("bob").await;
    let carol = t.c.server.register("carol").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11" }))
        .await;
    for client in [&bob, &carol] {
        client
            .ok(
                Method::POST,
                &format!("/join/{}?via=hs-a.test", encode(&room)),
                Some(&json!({})),
            )
            .await;
    }
    let mut everyone = vec![alice.user_id.clone(), bob.user_id.clone(), carol.user_id.clone()];
    everyone.sort();
    for client in [&alice, &bob, &carol] {
        wait_for(
            "all three joined everywhere",
            || t.logs(),
            async || joined(client, &room).await == everyone,
        )
        .await;
    }

    // A reaches neither B nor C; B does not reach A. C reaches both.
    let (a_port, c_port) = (t.a.port, t.c.port);
    let dead = free_port();
    t.a.server.stop().await;
    repoint(&t.a, &[("hs-b.test", dead), ("hs-c.test", dead)]);
    t.a.server.start_again().await;
    t.b.server.stop().await;
    repoint(&t.b, &[("hs-a.test", dead), ("hs-c.test", c_port)]);
    t.b.server.start_again().await;

    // Bob's message reaches C only; Carol answers after it, so A gets Carol's message, whose
    // prev event (Bob's) no server A can reach will give it.
    bob.send_text(&room, "from B").await;
    wait_for_messages(&t, &[&carol], &room, &expected(&["from B"])).await;
    let answer = carol.send_text(&room, "from C, after B").await;
    wait_for(
        "A to keep Carol's message as pending",
        || t.logs(),
        async || pending_pdus(&t.a).await.iter().any(|(id, _)| *id == answer),
    )
    .await;
    let pending = pending_pdus(&t.a).await;
    assert!(pending[0].1.contains("prev event"), "{pending:?}");
    // Kept sealed, like the room's events (the default mode is search-enabled).
    let db = t.a.server.db().await;
    for row in sqlx::query("SELECT json FROM federation_pending_pdus")
        .fetch_all(&db)
        .await
        .unwrap()
    {
        let json: String = row.get(0);
        assert!(
            json.starts_with("~hearth-aead1:"),
            "a pending PDU in the clear: {json}"
        );
    }
    // The /send result told C so, for that PDU.
    let db = t.a.server.db().await;
    let responses: Vec<String> =
        sqlx::query("SELECT response FROM federation_inbound_txns WHERE origin = 'hs-c.test'")
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
    assert!(
        responses.iter().any(|r| {
            let r: Value = serde_json::from_str(r).unwrap();
            r[&answer].as_str().is_some_and(|e| e.contains("prev event"))
        }),
        "{responses:?}"
    );
    assert!(messages(&alice, &room).await.is_empty());

    // B reaches A again: its queue brings Bob's message, and Carol's, kept, follows it.
    t.b.server.stop().await;
    repoint(&t.b, &[("hs-a.test", a_port), ("hs-c.test", c_port)]);
    t.b.server.start_again().await;
    let both = expected(&["from B", "from C, after B"]);
    wait_for_messages(&t, &[&alice], &room, &both).await;
    assert_eq!(
        messages(&alice, &room).await,
        vec!["from B".to_owned(), "from C, after B".to_owned()],
        "in order, once each"
    );
    wait_for(
        "nothing left pending on A",
        || t.logs(),
        async || pending_pdus(&t.a).await.is_empty(),
    )
    .await;
}
