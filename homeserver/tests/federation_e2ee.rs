//! End-to-end encryption across servers, on the real binary: Alice on `hs-a.test` and Bob on
//! `hs-b.test` in a Megolm room, each with a real `hearth-e2ee` device (vodozemac). Device keys
//! are queried and one-time keys claimed over federation, room keys travel as Olm to-device
//! messages in `m.direct_to_device` EDUs, messages are decrypted both ways; Bob's second device
//! reaches Alice as a device-list update and receives her next room key; his deleted device
//! leaves her view and her next session. Hostile: a fake server's `/send` speaking for another
//! server's users (to-device, device-list and signing-key updates) changes nothing.

mod common;
mod e2ee_support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::federation::{dev_cert, tls_front};
use common::{Backend, Client, RATE_LIMIT_FIELDS, Server, count, encode, free_port};
use e2ee_support::{login, password_auth};
use hearth_e2ee::{ClientError, DecryptedEvent, E2eeClient, MEGOLM_ALGORITHM, Transport};
use hearth_federation::{SigningKey, request_auth, server_keys};
use reqwest::{Method, StatusCode};
use ruma::ServerName;
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header as header_is, method, path},
};

fn name(s: &str) -> &ServerName {
    <&ServerName>::try_from(s).unwrap()
}

/// The test client as a `hearth-e2ee` transport (paths start with `/_matrix/`).
#[derive(Clone)]
struct Http(Client);

impl Transport for Http {
    async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let m = Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Transport(e.to_string()))?;
        let mut req = self.0.http.request(m, format!("{}{path}", self.0.base_url));
        if let Some(token) = &self.0.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(ClientError::Status {
                method: method.to_owned(),
                path: path.to_owned(),
                status,
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Unexpected(e.to_string()))
    }
}

type Dev = E2eeClient<Http>;

/// A device for `client`'s session: keys uploaded (a few one-time keys), positioned in `/sync`.
async fn device(client: &Client) -> Dev {
    let mut d = E2eeClient::new(Http(client.clone()), &client.user_id, &client.device_id);
    d.device.set_one_time_key_target(5);
    d.upload_initial_keys().await.expect("keys/upload");
    d.sync_once(0).await.expect("initial sync");
    d
}

/// Starts `server_name` on federation port `port`, trusting `ca_files`, finding the servers of
/// `resolve` (name → port on 127.0.0.1), retrying quickly.
async fn start(
    server_name: &str,
    port: u16,
    certs: &Path,
    ca_files: &[PathBuf],
    resolve: &[(&str, u16)],
) -> Server {
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
    Server::start_named(
        Backend::from_env(),
        server_name,
        "",
        &format!("enabled = false\n{RATE_LIMIT_FIELDS}"),
        &extra,
    )
    .await
}

/// Two Hearths (`hs-a.test`, `hs-b.test`) that find and trust each other; A also finds and
/// trusts `hs-f.test`, a fake server (wiremock behind a TLS front) that publishes a real key.
struct Setup {
    a: Server,
    b: Server,
    a_port: u16,
    certs: tempfile::TempDir,
    fake_key: SigningKey,
    _mock: MockServer,
}

const FAKE: &str = "hs-f.test";

async fn setup() -> Setup {
    let certs = tempfile::tempdir().unwrap();
    let a_cert = dev_cert(certs.path(), "hs-a.test").0;
    let b_cert = dev_cert(certs.path(), "hs-b.test").0;
    let mock = MockServer::start().await;
    let (front, front_ca) = tls_front(*mock.address(), &[FAKE], certs.path()).await;
    let fake_key = SigningKey::generate("fake").unwrap();
    let keys = server_keys::build(name(FAKE), &fake_key, &[], now_ms() + 3_600_000);
    Mock::given(method("GET"))
        .and(path("/_matrix/key/v2/server"))
        .and(header_is("host", FAKE))
        .respond_with(ResponseTemplate::new(200).set_body_json(&keys))
        .mount(&mock)
        .await;
    let (a_port, b_port) = (free_port(), free_port());
    let resolve = [("hs-a.test", a_port), ("hs-b.test", b_port), (FAKE, front)];
    let cas = [a_cert, b_cert, front_ca];
    let a = start("hs-a.test", a_port, certs.path(), &cas, &resolve).await;
    let b = start("hs-b.test", b_port, certs.path(), &cas[..2], &resolve[..2]).await;
    Setup {
        a,
        b,
        a_port,
        certs,
        fake_key,
        _mock: mock,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Alice (on A) creates a Megolm room; Bob (on B) joins it over federation.
async fn encrypted_room(alice: &Client, bob: &Client, b: &Server) -> String {
    let room_id = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.encryption", "state_key": "",
                                "content": { "algorithm": MEGOLM_ALGORITHM } }],
        }))
        .await;
    let (status, body) = bob
        .request(
            Method::POST,
            &format!("/join/{}?via=hs-a.test", encode(&room_id)),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", b.log_tail());
    room_id
}

/// Syncs `d` until the room's timeline brings `event_id` and it decrypts (its room key may
/// come in a later sync); 20 s at most.
async fn receive(d: &mut Dev, room_id: &str, event_id: &str) -> DecryptedEvent {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut event: Option<Value> = None;
    let mut last_error = String::new();
    loop {
        let (sync, changes) = d.sync_once(500).await.expect("sync");
        if event.is_none() {
            event = sync["rooms"]["join"][room_id]["timeline"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["event_id"] == event_id)
                .cloned();
        }
        if let Some(e) = &event {
            match d.decrypt(room_id, e) {
                Ok(decrypted) => return decrypted,
                Err(error) => last_error = format!("{error}; {:?}", changes.failures),
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never decrypted {event_id} (seen: {}): {last_error}",
            d.device.user_id(),
            event.is_some()
        );
    }
}

/// Syncs `d` (a driver, which queries stale device lists itself) until `device_lists.changed`
/// has named `user` and `d` knows exactly `expected` as `user`'s devices; 20 s at most.
async fn until_devices(d: &mut Dev, user: &str, expected: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut expected = expected.to_vec();
    expected.sort();
    let mut told = false;
    loop {
        let (sync, _) = d.sync_once(500).await.expect("sync");
        told |= sync["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == user));
        let mut known: Vec<String> = d
            .device
            .devices_of(user)
            .into_iter()
            .map(|k| k.device_id)
            .collect();
        known.sort();
        if told && known == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never saw {user}'s devices become {expected:?} (told: {told}, known: {known:?})",
            d.device.user_id()
        );
    }
}

async fn send_text(d: &mut Dev, room_id: &str, body: &str) -> String {
    d.send_encrypted(
        room_id,
        "m.room.message",
        &json!({ "msgtype": "m.text", "body": body }),
    )
    .await
    .unwrap_or_else(|e| panic!("{} sending {body:?}: {e}", d.device.user_id()))
}

/// The device IDs `client`'s server lists for `user` in `/keys/query`.
async fn queried_devices(client: &Client, user: &str) -> Vec<String> {
    let found = client
        .ok(
            Method::POST,
            "/keys/query",
            Some(&json!({ "device_keys": { user: [] } })),
        )
        .await;
    assert!(
        found["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{found}"
    );
    let mut ids: Vec<String> = found["device_keys"][user]
        .as_object()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test]
async fn megolm_both_ways_and_device_list_changes_across_two_servers() {
    let s = setup().await;
    let alice = s.a.register("alice").await;
    let bob = s.b.register("bob").await;
    let room_id = encrypted_room(&alice, &bob, &s.b).await;
    let mut alice_dev = device(&alice).await;
    let mut bob_dev = device(&bob).await;

    // Alice → Bob: keys queried and claimed from B, the room key by Olm over federation.
    let hello = send_text(&mut alice_dev, &room_id, "hello Bob").await;
    assert_eq!(
        alice_dev.device.room_key_recipients(&room_id),
        vec![(bob.user_id.clone(), bob.device_id.clone())],
        "{}",
        s.a.log_tail()
    );
    let got = receive(&mut bob_dev, &room_id, &hello).await;
    assert_eq!(got.event_type, "m.room.message");
    assert_eq!(got.content["body"], "hello Bob");
    assert_eq!(got.sender_device, alice.device_id);

    // Bob → Alice.
    let reply = send_text(&mut bob_dev, &room_id, "hello Alice").await;
    let got = receive(&mut alice_dev, &room_id, &reply).await;
    assert_eq!(got.content["body"], "hello Alice");
    assert_eq!(got.sender_device, bob.device_id);
    // The server saw ciphertext only.
    let stored = alice
        .ok(
            Method::GET,
            &format!("/rooms/{}/event/{}", encode(&room_id), encode(&reply)),
            None,
        )
        .await;
    assert_eq!(stored["type"], "m.room.encrypted");
    assert!(!stored.to_string().contains("hello Alice"));

    // Bob's second device uploads keys: Alice hears of it in /sync and finds it over federation.
    let bob2 = login(&s.b, "bob").await;
    let mut bob2_dev = device(&bob2).await;
    let mut both = vec![bob.device_id.clone(), bob2.device_id.clone()];
    both.sort();
    until_devices(&mut alice_dev, &bob.user_id, &both).await;
    assert_eq!(queried_devices(&alice, &bob.user_id).await, both);

    // Alice's next message: the room key reaches the new device (a key claimed from B), which
    // decrypts it; the first device still reads the same session.
    let session = alice_dev.device.outbound_session_id(&room_id);
    let next = send_text(&mut alice_dev, &room_id, "hello both").await;
    assert_eq!(alice_dev.device.outbound_session_id(&room_id), session);
    assert!(
        alice_dev
            .device
            .room_key_recipients(&room_id)
            .contains(&(bob.user_id.clone(), bob2.device_id.clone()))
    );
    assert_eq!(
        receive(&mut bob2_dev, &room_id, &next).await.content["body"],
        "hello both"
    );
    assert_eq!(
        receive(&mut bob_dev, &room_id, &next).await.content["body"],
        "hello both"
    );
    // And the new device talks back.
    let from2 = send_text(&mut bob2_dev, &room_id, "from the new device").await;
    let got = receive(&mut alice_dev, &room_id, &from2).await;
    assert_eq!(got.sender_device, bob2.device_id);

    // Bob deletes the second device: Alice's view of his devices drops it, and her next
    // message goes out under a new session that device never received.
    let path = format!("/devices/{}", encode(&bob2.device_id));
    let (status, challenge) = bob.request(Method::DELETE, &path, Some(&json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let session_id = challenge["session"].as_str().unwrap();
    bob.ok(
        Method::DELETE,
        &path,
        Some(&json!({ "auth": password_auth("bob", Some(session_id)) })),
    )
    .await;
    until_devices(&mut alice_dev, &bob.user_id, std::slice::from_ref(&bob.device_id)).await;
    assert_eq!(
        queried_devices(&alice, &bob.user_id).await,
        vec![bob.device_id.clone()]
    );
    let after = send_text(&mut alice_dev, &room_id, "only the first device").await;
    assert_ne!(alice_dev.device.outbound_session_id(&room_id), session);
    assert_eq!(
        alice_dev.device.room_key_recipients(&room_id),
        vec![(bob.user_id.clone(), bob.device_id.clone())]
    );
    assert_eq!(
        receive(&mut bob_dev, &room_id, &after).await.content["body"],
        "only the first device"
    );

    // Bob logs out his last device: A hears of it too, though no device of his is left to list.
    bob.ok(Method::POST, "/logout", Some(&json!({}))).await;
    until_devices(&mut alice_dev, &bob.user_id, &[]).await;
    assert!(queried_devices(&alice, &bob.user_id).await.is_empty());
}

/// Signs and sends a transaction as the fake server to A.
async fn send_as_fake(s: &Setup, edus: Vec<Value>) -> (StatusCode, Value) {
    let mut config = hearth::config::FederationConfig {
        ca_files: vec![s.certs.path().join("hs-a.test.crt")],
        allow_ip_ranges: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    };
    config
        .resolve
        .insert("hs-a.test".into(), format!("127.0.0.1:{}", s.a_port));
    let client = hearth::federation::FederationClient::new(FAKE.try_into().unwrap(), &config).unwrap();
    let body = serde_json::to_vec(&json!({
        "origin": FAKE, "origin_server_ts": now_ms(), "pdus": [], "edus": edus,
    }))
    .unwrap();
    let uri = format!("/_matrix/federation/v1/send/{}", common::txn_id());
    let auth = request_auth::sign(
        &s.fake_key,
        name(FAKE),
        name("hs-a.test"),
        &request_auth::Method::PUT,
        &uri,
        Some(&body),
    )
    .unwrap();
    let (status, body) = client
        .request("PUT", name("hs-a.test"), &uri, Some(body), Some(auth), 1 << 20)
        .await
        .unwrap();
    (
        StatusCode::from_u16(status).unwrap(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_server_speaking_for_another_servers_users_changes_nothing() {
    let s = setup().await;
    let alice = s.a.register("alice").await;
    let bob = s.b.register("bob").await;
    let room_id = encrypted_room(&alice, &bob, &s.b).await;
    let mut alice_dev = device(&alice).await;
    let mut bob_dev = device(&bob).await;
    // Alice and Bob have talked: Alice's device knows Bob's.
    let hello = send_text(&mut alice_dev, &room_id, "hello Bob").await;
    receive(&mut bob_dev, &room_id, &hello).await;
    let db = s.a.db().await;
    let rows = |user: &str| {
        let (db, user) = (db.clone(), user.to_owned());
        async move {
            count(
                &db,
                "SELECT COUNT(*) FROM device_lists_stream WHERE user_id = $1",
                &[&user],
            )
            .await
        }
    };
    let bob_rows = rows(&bob.user_id).await;
    let since = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // hs-f.test speaks for Bob (of hs-b.test): a to-device message, an Olm-shaped one naming
    // Bob's real curve25519 key, a device-list update and a signing-key update. Its own user's
    // message and update are the control: the transaction itself was handled.
    let to_alice = |sender: &str, message_id: &str, content: Value| {
        // The control is of a type the device ignores; the forgeries are encrypted-looking.
        let event_type = if sender == bob.user_id {
            "m.room.encrypted"
        } else {
            "org.example.control"
        };
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": sender, "type": event_type, "message_id": message_id,
            "messages": { &alice.user_id: { &alice.device_id: content } } } })
    };
    let bob_key = bob_dev.device.curve25519_key();
    let edus = vec![
        to_alice(&bob.user_id, "forged-1", json!({ "forged": true })),
        to_alice(
            &bob.user_id,
            "forged-2",
            json!({ "algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": bob_key,
                    "ciphertext": { alice_dev.device.curve25519_key(): { "type": 0, "body": "AAAA" } } }),
        ),
        to_alice(&bob.user_id, "forged-3", json!({ "to": "every device" })),
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": bob.user_id, "device_id": "EVIL", "stream_id": 99, "prev_id": [],
            "keys": { "user_id": bob.user_id, "device_id": "EVIL",
                      "algorithms": [MEGOLM_ALGORITHM], "keys": {} } } }),
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": bob.user_id, "device_id": bob.device_id, "stream_id": 100, "prev_id": [],
            "deleted": true } }),
        json!({ "edu_type": "m.signing_key_update", "content": { "user_id": bob.user_id } }),
        to_alice("@mallory:hs-f.test", "control", json!({ "control": true })),
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": "@mallory:hs-f.test", "device_id": "M", "stream_id": 1, "prev_id": [] } }),
    ];
    let (status, body) = send_as_fake(&s, edus).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", s.a.log_tail());
    // The wildcard form of the forgery, in a transaction of its own.
    let wildcard = json!({ "edu_type": "m.direct_to_device", "content": {
        "sender": bob.user_id, "type": "m.room.encrypted", "message_id": "forged-4",
        "messages": { &alice.user_id: { "*": { "forged": true } } } } });
    let (status, _) = send_as_fake(&s, vec![wildcard]).await;
    assert_eq!(status, StatusCode::OK);

    // Only the control message reached Alice.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sync = loop {
        let sync = alice.sync(Some(&since), 500, 1).await;
        if sync["to_device"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
        {
            break sync;
        }
        assert!(
            Instant::now() < deadline,
            "the control message never came: {sync}"
        );
    };
    let events = sync["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{sync}");
    assert_eq!(events[0]["sender"], "@mallory:hs-f.test");
    // Bob's device list did not change on A: no new row, not in `changed`, same devices.
    assert_eq!(rows(&bob.user_id).await, bob_rows);
    assert_eq!(
        rows("@mallory:hs-f.test").await,
        1,
        "the control update was applied"
    );
    assert!(
        sync["device_lists"]["changed"]
            .as_array()
            .is_none_or(|c| c.iter().all(|u| u != bob.user_id.as_str())),
        "{sync}"
    );
    assert_eq!(
        queried_devices(&alice, &bob.user_id).await,
        vec![bob.device_id.clone()]
    );
    // Alice's device goes on as before: Bob's next message decrypts, nothing failed.
    let (_, changes) = alice_dev.sync_once(0).await.unwrap();
    assert!(changes.failures.is_empty(), "{:?}", changes.failures);
    let reply = send_text(&mut bob_dev, &room_id, "still here").await;
    assert_eq!(
        receive(&mut alice_dev, &room_id, &reply).await.content["body"],
        "still here"
    );
}
