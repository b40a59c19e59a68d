//! Transactions between servers, on the real binary: two Hearths exchanging to-device messages,
//! device keys, one-time key claims, profiles and aliases; `wiremock` as a destination that fails
//! then recovers (the queue retries with backoff, delivers in order, never twice) and a restart
//! with queued items; inbound `/send` idempotency, size bounds, signatures, and EDUs that speak
//! for users the origin does not own.

mod common;
mod e2ee_support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::federation::{dev_cert, tls_front};
use common::{Backend, RATE_LIMIT_FIELDS, Server, count, encode, free_port};
use e2ee_support::Device;
use hearth::{config::FederationConfig, federation::FederationClient};
use hearth_federation::{SigningKey, request_auth};
use reqwest::{Method, StatusCode};
use ruma::ServerName;
use serde_json::{Value, json};
use sqlx::Row;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path_regex},
};

fn name(s: &str) -> &ServerName {
    <&ServerName>::try_from(s).unwrap()
}

/// A federating Hearth: the process, its name and its federation port.
struct Fed {
    server: Server,
    name: String,
    port: u16,
}

/// Starts `server_name` on federation port `port`, trusting `ca_files`, finding the servers of
/// `resolve` (name → port on 127.0.0.1), retrying quickly.
async fn start(
    server_name: &str,
    port: u16,
    certs: &Path,
    ca_files: &[PathBuf],
    resolve: &[(&str, u16)],
) -> Fed {
    let cas: Vec<String> = ca_files.iter().map(|c| format!("\"{}\"", c.display())).collect();
    let entries: String = resolve
        .iter()
        .map(|(n, p)| format!("\"{n}\" = \"127.0.0.1:{p}\"\n"))
        .collect();
    let extra = format!(
        "[federation]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ntls_certificate = \"{}\"\n\
         tls_private_key = \"{}\"\nallow_ip_ranges = [\"127.0.0.1/32\"]\nca_files = [{}]\n\
         retry_initial_ms = 200\nretry_max_ms = 1000\n[federation.resolve]\n{entries}",
        certs.join(format!("{server_name}.crt")).display(),
        certs.join(format!("{server_name}.key")).display(),
        cas.join(", "),
    );
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

    /// A client (Hearth's own) that finds this server and trusts its certificate.
    fn client(&self, certs: &Path) -> FederationClient {
        let mut config = FederationConfig {
            ca_files: vec![certs.join(format!("{}.crt", self.name))],
            allow_ip_ranges: vec!["127.0.0.1/32".parse().unwrap()],
            ..Default::default()
        };
        config
            .resolve
            .insert(self.name.clone(), format!("127.0.0.1:{}", self.port));
        FederationClient::new("tester.invalid".try_into().unwrap(), &config).unwrap()
    }

    async fn outbound_rows(&self) -> i64 {
        count(
            &self.server.db().await,
            "SELECT COUNT(*) FROM federation_outbound",
            &[],
        )
        .await
    }
}

/// Two servers that trust and find each other (and `hs-c.test` on a closed port).
async fn two() -> (Fed, Fed, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let (a_cert, _) = dev_cert(certs.path(), "hs-a.test");
    let (b_cert, _) = dev_cert(certs.path(), "hs-b.test");
    let (a_port, b_port, closed) = (free_port(), free_port(), free_port());
    let resolve = [
        ("hs-a.test", a_port),
        ("hs-b.test", b_port),
        ("hs-c.test", closed),
    ];
    let cas = [a_cert, b_cert];
    let a = start("hs-a.test", a_port, certs.path(), &cas, &resolve).await;
    let b = start("hs-b.test", b_port, certs.path(), &cas, &resolve).await;
    (a, b, certs)
}

/// One Hearth (`hs-a.test`) whose destination `hs-w.test` is the mock server.
async fn with_mock_destination(mock: &MockServer) -> (Fed, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let (a_cert, _) = dev_cert(certs.path(), "hs-a.test");
    let (front, front_ca) = tls_front(*mock.address(), &["hs-w.test"], certs.path()).await;
    let a_port = free_port();
    let a = start(
        "hs-a.test",
        a_port,
        certs.path(),
        &[a_cert, front_ca],
        &[("hs-w.test", front)],
    )
    .await;
    (a, certs)
}

async fn send_to_device(client: &common::Client, txn: &str, messages: Value) -> StatusCode {
    let (status, body) = client
        .request(
            Method::PUT,
            &format!("/sendToDevice/org.example.test/{txn}"),
            Some(&json!({ "messages": messages })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    status
}

/// Syncs until a to-device event arrives (or 15 s pass): the events.
async fn wait_to_device(client: &common::Client) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sync = client.sync(None, 1000, 1).await;
        let events = sync["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !events.is_empty() || Instant::now() > deadline {
            return events;
        }
    }
}

/// The `n` of each `m.direct_to_device` message in the transactions `bodies`.
fn message_numbers(bodies: &[Value]) -> Vec<i64> {
    let mut numbers = Vec::new();
    for body in bodies {
        for edu in body["edus"].as_array().into_iter().flatten() {
            assert_eq!(edu["edu_type"], "m.direct_to_device", "{edu}");
            for devices in edu["content"]["messages"].as_object().unwrap().values() {
                for message in devices.as_object().unwrap().values() {
                    numbers.push(message["n"].as_i64().unwrap());
                }
            }
        }
    }
    numbers
}

/// The bodies of the `/send` transactions the mock received.
async fn transactions(mock: &MockServer) -> Vec<Value> {
    mock.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().starts_with("/_matrix/federation/v1/send/"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// The paths of the `/send` requests the mock received.
async fn transaction_paths(mock: &MockServer) -> Vec<String> {
    mock.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| r.url.path().to_owned())
        .filter(|p| p.starts_with("/_matrix/federation/v1/send/"))
        .collect()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn to_device_keys_profiles_and_aliases_across_two_servers() {
    let (a, b, _certs) = two().await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;

    // Bob's device keys and one-time keys, on B; Alice queries and claims them from A.
    let device = Device::new(&bob);
    bob.ok(
        Method::POST,
        "/keys/upload",
        Some(&json!({ "device_keys": device.device_keys(), "one_time_keys": device.one_time_keys("K", 2) })),
    )
    .await;
    let nobody = "@nobody:hs-c.test";
    let found = alice
        .ok(
            Method::POST,
            "/keys/query",
            Some(&json!({ "device_keys": { &bob.user_id: [], nobody: [] } })),
        )
        .await;
    assert_eq!(
        found["device_keys"][&bob.user_id][&bob.device_id]["keys"],
        device.device_keys()["keys"],
        "{found}\n{}",
        a.server.log_tail()
    );
    assert!(found["failures"]["hs-c.test"].is_object(), "{found}");
    assert!(found["failures"].get("hs-b.test").is_none(), "{found}");
    let claimed = alice
        .ok(
            Method::POST,
            "/keys/claim",
            Some(&json!({ "one_time_keys": {
                &bob.user_id: { &bob.device_id: "signed_curve25519" },
                nobody: { "X": "signed_curve25519" } } })),
        )
        .await;
    let keys = claimed["one_time_keys"][&bob.user_id][&bob.device_id]
        .as_object()
        .unwrap_or_else(|| panic!("{claimed}"));
    assert_eq!(keys.len(), 1);
    assert!(keys.keys().next().unwrap().starts_with("signed_curve25519:K"));
    assert!(claimed["failures"]["hs-c.test"].is_object(), "{claimed}");
    // Claimed on B: one key left there.
    let again = alice
        .ok(
            Method::POST,
            "/keys/claim",
            Some(&json!({ "one_time_keys": { &bob.user_id: { &bob.device_id: "signed_curve25519" } } })),
        )
        .await;
    assert_ne!(
        again["one_time_keys"][&bob.user_id][&bob.device_id],
        claimed["one_time_keys"][&bob.user_id][&bob.device_id],
        "each key handed out once"
    );

    // A to-device message from Alice reaches Bob's device through A's queue and B's /send.
    send_to_device(
        &alice,
        "t1",
        json!({ &bob.user_id: { &bob.device_id: { "n": 1 } } }),
    )
    .await;
    let events = wait_to_device(&bob).await;
    assert_eq!(
        events.len(),
        1,
        "{}\n{}",
        a.server.log_tail(),
        b.server.log_tail()
    );
    assert_eq!(events[0]["sender"], alice.user_id.as_str());
    assert_eq!(events[0]["type"], "org.example.test");
    assert_eq!(events[0]["content"]["n"], 1);
    // And back, to every device of Alice's.
    send_to_device(&bob, "t1", json!({ &alice.user_id: { "*": { "n": 2 } } })).await;
    let events = wait_to_device(&alice).await;
    assert_eq!(events.len(), 1, "{}", b.server.log_tail());
    assert_eq!(events[0]["content"]["n"], 2);
    wait_for("A's queue to empty", async || a.outbound_rows().await == 0).await;

    // Profiles of remote users come from their server.
    bob.ok(
        Method::PUT,
        &format!("/profile/{}/displayname", bob.user_id),
        Some(&json!({ "displayname": "Bob" })),
    )
    .await;
    let profile = alice
        .ok(Method::GET, &format!("/profile/{}", encode(&bob.user_id)), None)
        .await;
    assert_eq!(profile["displayname"], "Bob");
    let (status, _) = alice
        .request(
            Method::GET,
            &format!("/profile/{}", encode("@ghost:hs-b.test")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A remote alias resolves through B's /query/directory.
    let room_id = bob.create_room(json!({ "room_alias_name": "lobby" })).await;
    let resolved = alice
        .ok(
            Method::GET,
            &format!("/directory/room/{}", encode("#lobby:hs-b.test")),
            None,
        )
        .await;
    assert_eq!(resolved["room_id"], room_id.as_str());
    assert!(
        resolved["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "hs-b.test")
    );
    let (status, _) = alice
        .request(
            Method::GET,
            &format!("/directory/room/{}", encode("#nope:hs-b.test")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_queue_retries_with_backoff_and_delivers_in_order_once() {
    let mock = MockServer::start().await;
    let send_path = || path_regex("^/_matrix/federation/v1/send/.+$");
    Mock::given(method("PUT"))
        .and(send_path())
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&mock)
        .await;
    Mock::given(method("PUT"))
        .and(send_path())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "pdus": {} })))
        .with_priority(2)
        .mount(&mock)
        .await;
    let (a, _certs) = with_mock_destination(&mock).await;
    let alice = a.server.register("alice").await;
    let started = Instant::now();
    for n in 0..5 {
        send_to_device(
            &alice,
            &format!("m{n}"),
            json!({ "@w:hs-w.test": { "DEV": { "n": n } } }),
        )
        .await;
    }
    wait_for("every message to be accepted", async || {
        let all = transactions(&mock).await;
        all.len() > 3 && message_numbers(&all[3..]).len() >= 5
    })
    .await;
    let all = transactions(&mock).await;
    assert!(all.len() >= 4, "{all:?}");
    // Three failures, waited out with backoff (200 + 400 + 800 ms).
    assert!(
        started.elapsed() >= Duration::from_millis(1300),
        "{:?}",
        started.elapsed()
    );
    // The failed transaction is retried as it was (same txnId, same items) until accepted.
    let paths = transaction_paths(&mock).await;
    assert!(paths[..4].iter().all(|p| *p == paths[0]), "{paths:?}");
    assert!(
        all[..4]
            .iter()
            .all(|b| message_numbers(std::slice::from_ref(b)) == message_numbers(&all[..1]))
    );
    // What the destination accepted: everything, in order, once.
    let accepted = message_numbers(&all[3..]);
    assert_eq!(accepted, vec![0, 1, 2, 3, 4], "{all:?}");
    for body in &all {
        assert_eq!(body["origin"], "hs-a.test");
        assert!(body["edus"].as_array().unwrap().len() <= 100);
    }
    wait_for("the queue to empty", async || a.outbound_rows().await == 0).await;
    // Nothing more is sent once the queue is empty.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(transactions(&mock).await.len(), all.len());
}

#[tokio::test]
async fn queued_items_are_delivered_after_a_restart() {
    let mock = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&mock)
        .await;
    let (mut a, _certs) = with_mock_destination(&mock).await;
    let alice = a.server.register("alice").await;
    send_to_device(&alice, "r1", json!({ "@w:hs-w.test": { "DEV": { "n": 7 } } })).await;
    wait_for("a first attempt", async || !transactions(&mock).await.is_empty()).await;
    a.server.stop().await;
    assert_eq!(a.outbound_rows().await, 1, "kept while undelivered");
    mock.reset().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "pdus": {} })))
        .mount(&mock)
        .await;
    a.server.restart().await;
    wait_for("delivery after the restart", async || {
        message_numbers(&transactions(&mock).await) == vec![7]
    })
    .await;
    wait_for("the queue to empty", async || a.outbound_rows().await == 0).await;
}

/// Queue rows of `fed` for `destination` of one EDU type.
async fn queued_edus(fed: &Fed, destination: &str, edu_type: &str) -> i64 {
    count(
        &fed.server.db().await,
        "SELECT COUNT(*) FROM federation_outbound WHERE destination = $1 AND edu_type = $2",
        &[destination, edu_type],
    )
    .await
}

// A to-device message, a device-list update and a receipt answered while B is down, then A
// killed at once: they were queued before the answers, and reach B once after both restart.
#[tokio::test]
async fn edus_answered_just_before_a_kill_reach_a_server_that_was_down_once() {
    let (mut a, mut b, _certs) = two().await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.ok(
        Method::POST,
        &format!("/join/{}?via=hs-a.test", encode(&room_id)),
        Some(&json!({})),
    )
    .await;
    let hello = alice.send_text(&room_id, "hello").await;
    sync_until(&bob, "A's message on B", |s| {
        timeline_bodies(s, &room_id).contains(&"hello".to_owned())
    })
    .await;
    let alice_changes = "SELECT COUNT(*) FROM device_lists_stream WHERE user_id = $1";
    let before = count(&b.server.db().await, alice_changes, &[&alice.user_id]).await;

    b.server.stop().await;
    let to_bob = json!({ bob.user_id.as_str(): { bob.device_id.as_str(): { "n": 41 } } });
    send_to_device(&alice, "before-kill", to_bob).await;
    let device = Device::new(&alice);
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "device_keys": device.device_keys() })),
        )
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/rooms/{}/receipt/m.read/{}", encode(&room_id), encode(&hello)),
            Some(&json!({})),
        )
        .await;
    a.server.kill();
    for edu_type in ["m.direct_to_device", "m.device_list_update", "m.receipt"] {
        assert_eq!(
            queued_edus(&a, "hs-b.test", edu_type).await,
            1,
            "{edu_type} queued before the answer"
        );
    }

    b.server.start_again().await;
    a.server.start_again().await;
    wait_for("A's queue for B to empty", async || a.outbound_rows().await == 0).await;
    let events = wait_to_device(&bob).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["sender"], alice.user_id.as_str());
    assert_eq!(events[0]["content"]["n"], 41);
    sync_until(&bob, "Alice's receipt on B", |s| {
        s["rooms"]["join"][&room_id]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.receipt" && e["content"][&hello]["m.read"][&alice.user_id].is_object())
    })
    .await;
    // Once each: one message stored for Bob, one device-list change recorded for Alice.
    let db = b.server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM to_device_messages WHERE user_id = $1",
            &[&bob.user_id]
        )
        .await,
        1
    );
    assert_eq!(count(&db, alice_changes, &[&alice.user_id]).await, before + 1);
}

// A destination down for long keeps at most `max_queued_edus` EDUs: the oldest to-device
// messages go (logged as errors), the newest arrive in order once it is back.
#[tokio::test]
async fn a_queue_for_a_server_that_stays_down_is_bounded() {
    let mock = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&mock)
        .await;
    let (mut a, _certs) = with_mock_destination(&mock).await;
    let config = std::fs::read_to_string(a.server.config_path()).unwrap();
    let config = config.replace(
        "retry_max_ms = 1000\n",
        "retry_max_ms = 1000\nmax_queued_edus = 5\n",
    );
    std::fs::write(a.server.config_path(), config).unwrap();
    a.server.restart().await;
    let alice = a.server.register("alice").await;
    for n in 0..8 {
        send_to_device(
            &alice,
            &format!("m{n}"),
            json!({ "@w:hs-w.test": { "DEV": { "n": n } } }),
        )
        .await;
    }
    wait_for("the queue to be trimmed", async || a.outbound_rows().await == 5).await;
    // Logged: the log of this start (the second) says what was dropped.
    let log = std::fs::read_to_string(a.server.dir().join("hearth-2.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("federation queue full") && l.contains("m.direct_to_device")),
        "{}",
        a.server.log_tail()
    );
    mock.reset().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "pdus": {} })))
        .mount(&mock)
        .await;
    wait_for("the newest five to arrive", async || {
        message_numbers(&transactions(&mock).await) == vec![3, 4, 5, 6, 7]
    })
    .await;
    wait_for("the queue to empty", async || a.outbound_rows().await == 0).await;
}

/// Signs and sends `body` as `PUT /send/{txn}` from `origin` (with `key`) to `to`.
async fn put_transaction(
    to: &Fed,
    certs: &Path,
    origin: &str,
    key: &SigningKey,
    txn: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let uri = format!("/_matrix/federation/v1/send/{txn}");
    let bytes = serde_json::to_vec(body).unwrap();
    let auth = request_auth::sign(
        key,
        name(origin),
        name(&to.name),
        &request_auth::Method::PUT,
        &uri,
        Some(&bytes),
    )
    .unwrap();
    raw_put(to, certs, &uri, bytes, Some(auth)).await
}

async fn raw_put(
    to: &Fed,
    certs: &Path,
    uri: &str,
    bytes: Vec<u8>,
    auth: Option<String>,
) -> (StatusCode, Value) {
    let (status, body) = to
        .client(certs)
        .request("PUT", name(&to.name), uri, Some(bytes), auth, 1 << 20)
        .await
        .unwrap();
    (
        StatusCode::from_u16(status).unwrap(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn transaction(origin: &str, pdus: Vec<Value>, edus: Vec<Value>) -> Value {
    json!({ "origin": origin, "origin_server_ts": 1, "pdus": pdus, "edus": edus })
}

#[tokio::test]
async fn inbound_transactions_are_idempotent_bounded_and_authenticated() {
    let (a, b, certs) = two().await;
    let alice = a.server.register("alice").await;
    let b_key = b.signing_key().await;
    let to_alice = |message_id: &str, n: i64| {
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": "@bob:hs-b.test", "type": "org.example.test", "message_id": message_id,
            "messages": { &alice.user_id: { &alice.device_id: { "n": n } } } } })
    };

    // The same transaction twice: handled once, answered twice.
    let txn = transaction("hs-b.test", vec![], vec![to_alice("m1", 1)]);
    for _ in 0..2 {
        let (status, body) = put_transaction(&a, certs.path(), "hs-b.test", &b_key, "T1", &txn).await;
        assert_eq!(status, StatusCode::OK, "{body}\n{}", a.server.log_tail());
        assert_eq!(body, json!({ "pdus": {} }));
    }
    // The same message in another transaction: still once.
    let txn2 = transaction("hs-b.test", vec![], vec![to_alice("m1", 1), to_alice("m2", 2)]);
    let (status, _) = put_transaction(&a, certs.path(), "hs-b.test", &b_key, "T2", &txn2).await;
    assert_eq!(status, StatusCode::OK);
    let sync = alice.sync(None, 0, 1).await;
    let numbers: Vec<i64> = sync["to_device"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2], "{sync}");
    let db = a.server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM federation_inbound_txns WHERE origin = $1",
            &["hs-b.test"]
        )
        .await,
        2
    );

    // A to-device message claiming a sender of another server is dropped.
    let forged_sender = json!({ "edu_type": "m.direct_to_device", "content": {
        "sender": "@carol:hs-c.test", "type": "org.example.test", "message_id": "m3",
        "messages": { &alice.user_id: { &alice.device_id: { "n": 3 } } } } });
    let (status, _) = put_transaction(
        &a,
        certs.path(),
        "hs-b.test",
        &b_key,
        "T3",
        &transaction("hs-b.test", vec![], vec![forged_sender]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let next = alice.sync(Some(sync["next_batch"].as_str().unwrap()), 0, 1).await;
    assert!(
        next["to_device"]["events"].as_array().unwrap().is_empty(),
        "{next}"
    );

    // Too many PDUs or EDUs: 400, and nothing stored.
    let pdus = vec![json!({ "room_id": "!x:hs-b.test" }); 51];
    let (status, body) = put_transaction(
        &a,
        certs.path(),
        "hs-b.test",
        &b_key,
        "T4",
        &transaction("hs-b.test", pdus, vec![]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["errcode"].as_str().unwrap().starts_with("M_"), "{body}");
    let edus = (0..101).map(|i| to_alice(&format!("x{i}"), 100 + i)).collect();
    let (status, _) = put_transaction(
        &a,
        certs.path(),
        "hs-b.test",
        &b_key,
        "T5",
        &transaction("hs-b.test", vec![], edus),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let next = alice.sync(Some(sync["next_batch"].as_str().unwrap()), 0, 1).await;
    assert!(
        next["to_device"]["events"].as_array().unwrap().is_empty(),
        "{next}"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM federation_inbound_txns", &[]).await,
        3,
        "the refused transactions are not recorded"
    );

    // A PDU that cannot be handled fails alone (the placeholder pipeline refuses every PDU).
    let (status, body) = put_transaction(
        &a,
        certs.path(),
        "hs-b.test",
        &b_key,
        "T6",
        &transaction(
            "hs-b.test",
            vec![json!({ "garbage": true })],
            vec![to_alice("m6", 6)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let next = alice.sync(Some(sync["next_batch"].as_str().unwrap()), 0, 1).await;
    assert_eq!(next["to_device"]["events"][0]["content"]["n"], 6, "{next}");

    // Unsigned, forged (a key that is not B's), and a body whose origin is not the signer: refused.
    let bytes = serde_json::to_vec(&txn).unwrap();
    let (status, body) = raw_put(&a, certs.path(), "/_matrix/federation/v1/send/T7", bytes, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");
    let forger = SigningKey::generate(b_key.key_id().strip_prefix("ed25519:").unwrap()).unwrap();
    let (status, _) = put_transaction(&a, certs.path(), "hs-b.test", &forger, "T7", &txn).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = put_transaction(
        &a,
        certs.path(),
        "hs-b.test",
        &b_key,
        "T8",
        &transaction("hs-c.test", vec![], vec![]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn typing_for_users_the_origin_does_not_own_or_outside_the_room_is_ignored() {
    let (a, b, certs) = two().await;
    let alice = a.server.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let b_key = b.signing_key().await;
    let since = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let typing = |user: &str| json!({ "edu_type": "m.typing", "content": { "room_id": room_id, "user_id": user, "typing": true } });
    // Carol is not B's user; Bob is B's, but not in the room; Alice is A's own.
    let edus = vec![
        typing("@carol:hs-c.test"),
        typing("@bob:hs-b.test"),
        typing(&alice.user_id),
    ];
    let (status, _) = put_transaction(
        &a,
        certs.path(),
        "hs-b.test",
        &b_key,
        "TY1",
        &transaction("hs-b.test", vec![], edus),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sync = alice.sync(Some(&since), 0, 1).await;
    let ephemeral = &sync["rooms"]["join"][&room_id]["ephemeral"]["events"];
    assert!(
        ephemeral
            .as_array()
            .is_none_or(|events| events.iter().all(|e| e["type"] != "m.typing")),
        "{sync}"
    );
}

/// Signs and sends a request from `origin` (with `key`) to `to`.
async fn signed(
    to: &Fed,
    certs: &Path,
    origin: &str,
    key: &SigningKey,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
    let auth = request_auth::sign(
        key,
        name(origin),
        name(&to.name),
        &request_auth::Method::from_bytes(method.as_bytes()).unwrap(),
        uri,
        bytes.as_deref(),
    )
    .unwrap();
    let (status, body) = to
        .client(certs)
        .request(method, name(&to.name), uri, bytes, Some(auth), 1 << 20)
        .await
        .unwrap();
    (
        StatusCode::from_u16(status).unwrap(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_server_without_a_user_in_the_room_reads_nothing_of_it() {
    let (a, b, certs) = two().await;
    let alice = a.server.register("alice").await;
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public", "name": "Lobby" }))
        .await;
    let event_id = alice.send_text(&room_id, "hello").await;
    let b_key = b.signing_key().await;
    let (room, event) = (encode(&room_id), encode(&event_id));
    let reads = [
        ("GET", format!("/_matrix/federation/v1/event/{event}"), None),
        (
            "GET",
            format!("/_matrix/federation/v1/state/{room}?event_id={event}"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/state_ids/{room}?event_id={event}"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/event_auth/{room}/{event}"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/backfill/{room}?v={event}&limit=10"),
            None,
        ),
        (
            "POST",
            format!("/_matrix/federation/v1/get_missing_events/{room}"),
            Some(json!({ "earliest_events": [], "latest_events": [event_id], "limit": 10 })),
        ),
    ];
    for (method, uri, body) in reads {
        let (status, answer) = signed(&a, certs.path(), "hs-b.test", &b_key, method, &uri, body).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {answer}\n{}",
            a.server.log_tail()
        );
        assert_eq!(answer["errcode"], "M_FORBIDDEN");
    }
    // An unknown room is 404; an unsigned read is 401.
    let uri = format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={event}",
        encode("!nope:hs-a.test")
    );
    let (status, _) = signed(&a, certs.path(), "hs-b.test", &b_key, "GET", &uri, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let uri = format!("/_matrix/federation/v1/event/{event}");
    let (status, _) = a
        .client(certs.path())
        .request("GET", name("hs-a.test"), &uri, None, None, 1 << 20)
        .await
        .unwrap();
    assert_eq!(status, 401);

    // The public room directory is for every server.
    let (status, page) = signed(
        &a,
        certs.path(),
        "hs-b.test",
        &b_key,
        "GET",
        "/_matrix/federation/v1/publicRooms?limit=5",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["chunk"][0]["room_id"], room_id.as_str(), "{page}");
    let (status, page) = signed(
        &a,
        certs.path(),
        "hs-b.test",
        &b_key,
        "POST",
        "/_matrix/federation/v1/publicRooms",
        Some(json!({ "limit": 5, "filter": { "generic_search_term": "nothing like it" } })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page["chunk"].as_array().unwrap().is_empty(), "{page}");
}

/// Syncs `client` until `done` holds for a sync response (or 15 s pass).
async fn sync_until(client: &common::Client, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sync = client.sync(None, 500, 20).await;
        if done(&sync) {
            return sync;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {sync}");
    }
}

fn timeline_bodies(sync: &Value, room_id: &str) -> Vec<String> {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

// Needs joins across servers (the fed-rooms branch); passes on a merge of both branches.
#[tokio::test]
async fn a_shared_room_carries_messages_typing_receipts_and_device_lists_both_ways() {
    let (a, b, _certs) = two().await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let (status, body) = bob
        .request(
            Method::POST,
            &format!("/join/{}?via=hs-a.test", encode(&room_id)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", b.server.log_tail());

    let hello = alice.send_text(&room_id, "hello from A").await;
    sync_until(&bob, "A's message on B", |s| {
        timeline_bodies(s, &room_id).contains(&"hello from A".to_owned())
    })
    .await;
    bob.send_text(&room_id, "hello from B").await;
    sync_until(&alice, "B's message on A", |s| {
        timeline_bodies(s, &room_id).contains(&"hello from B".to_owned())
    })
    .await;

    // Typing and a read receipt from Alice reach Bob.
    alice
        .ok(
            Method::PUT,
            &format!("/rooms/{}/typing/{}", encode(&room_id), encode(&alice.user_id)),
            Some(&json!({ "typing": true, "timeout": 20000 })),
        )
        .await;
    let typing = |s: &Value| {
        s["rooms"]["join"][&room_id]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["type"] == "m.typing" && e["content"]["user_ids"].as_array().is_some_and(|u| !u.is_empty())
            })
    };
    sync_until(&bob, "Alice typing on B", typing).await;
    alice
        .ok(
            Method::POST,
            &format!("/rooms/{}/receipt/m.read/{}", encode(&room_id), encode(&hello)),
            Some(&json!({})),
        )
        .await;
    sync_until(&bob, "Alice's receipt on B", |s| {
        s["rooms"]["join"][&room_id]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.receipt" && e["content"][&hello]["m.read"][&alice.user_id].is_object())
    })
    .await;

    // Bob's new device keys: Alice hears of the change and fetches them from B.
    let since = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let device = Device::new(&bob);
    bob.ok(
        Method::POST,
        "/keys/upload",
        Some(&json!({ "device_keys": device.device_keys() })),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sync = alice.sync(Some(&since), 500, 1).await;
        let changed = sync["device_lists"]["changed"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if changed.iter().any(|u| u == bob.user_id.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Bob's device change never reached Alice: {sync}\n{}",
            a.server.log_tail()
        );
    }

    // A server ACL denying B: Alice's events no longer go there, B's typing is dropped.
    alice
        .set_state(
            &room_id,
            "m.room.server_acl",
            "",
            json!({ "allow": ["*"], "deny": ["hs-b.test"] }),
        )
        .await;
    alice.send_text(&room_id, "not for B").await;
    bob.ok(
        Method::PUT,
        &format!("/rooms/{}/typing/{}", encode(&room_id), encode(&bob.user_id)),
        Some(&json!({ "typing": true, "timeout": 20000 })),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sync = bob.sync(None, 0, 50).await;
    assert!(
        !timeline_bodies(&sync, &room_id).contains(&"not for B".to_owned()),
        "{sync}"
    );
    let sync = alice.sync(None, 0, 1).await;
    let bob_typing = sync["rooms"]["join"][&room_id]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| {
            e["type"] == "m.typing"
                && e["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|u| u == bob.user_id.as_str()))
        });
    assert!(!bob_typing, "{sync}");
    assert_eq!(
        count(
            &a.server.db().await,
            "SELECT COUNT(*) FROM federation_outbound WHERE destination = $1",
            &["hs-b.test"]
        )
        .await,
        0,
        "nothing queued for a denied server"
    );
}
