//! Strict end-to-end encrypted rooms (spec/privacy-modes.md), driven over HTTP: plaintext from
//! local users is refused with `"org.hearth.error": "strict_e2e"`, real Megolm messages (made
//! here with vodozemac) are accepted, garbage ciphertext is not, encryption cannot be changed or
//! removed, the mode cannot go back, redactions and state events pass — and then everything the
//! server persisted (database files, a `pg_dump`, logs, media) is scanned for the plaintexts
//! that were only ever sent encrypted or refused; a plaintext sent in a plain room is found by
//! the same scan.

mod common;

use std::path::Path;

use common::{Backend, Client, Server, encode, txn_id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use vodozemac::megolm::{GroupSession, SessionConfig};

const MEGOLM: &str = "m.megolm.v1.aes-sha2";
const PRIVACY: &str = "org.hearth.room.privacy";

fn megolm_content(session: &mut GroupSession, plaintext: &str) -> Value {
    let payload = json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": plaintext}});
    let message = session.encrypt(payload.to_string());
    json!({
        "algorithm": MEGOLM,
        "ciphertext": message.to_base64(),
        "session_id": session.session_id(),
        "sender_key": "c2VuZGVyIGtleQ",
        "device_id": "DEVICE",
    })
}

async fn send_raw(client: &Client, room: &str, event_type: &str, content: &Value) -> (StatusCode, Value) {
    let path = format!("/rooms/{}/send/{}/{}", encode(room), encode(event_type), txn_id());
    client.request(Method::PUT, &path, Some(content)).await
}

async fn put_state(client: &Client, room: &str, event_type: &str, content: &Value) -> (StatusCode, Value) {
    client
        .request(
            Method::PUT,
            &Client::state_path(room, event_type, ""),
            Some(content),
        )
        .await
}

fn assert_strict_refusal(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{what}: {body}");
    assert_eq!(body["org.hearth.error"], "strict_e2e", "{what}: {body}");
}

fn encrypted_room_body() -> Value {
    json!({"initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}]})
}

#[tokio::test]
async fn a_strict_room_takes_only_megolm_and_keeps_its_encryption() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(encrypted_room_body()).await;
    alice.invite(&room, &bob.user_id).await;
    bob.join(&room).await;
    assert_eq!(
        alice.get_state_content(&room, PRIVACY, "").await,
        json!({"mode": "strict_e2e"}),
        "Hearth wrote the mode at creation"
    );

    // Plaintext of every kind is refused.
    for (event_type, content) in [
        ("m.room.message", json!({"msgtype": "m.text", "body": "hello"})),
        (
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "👍"}}),
        ),
        (
            "m.sticker",
            json!({"body": "sticker", "url": "mxc://hearth.test/abc", "info": {}}),
        ),
        (
            "m.poll.start",
            json!({"m.poll": {"question": {"m.text": [{"body": "?"}]}}}),
        ),
        ("org.example.custom", json!({"anything": "goes"})),
        (
            "m.room.encrypted",
            json!({"algorithm": MEGOLM, "ciphertext": "plain words, not Megolm"}),
        ),
        (
            "m.room.encrypted",
            json!({"algorithm": MEGOLM, "ciphertext": "aGVsbG8gd29ybGQ"}),
        ),
        ("m.room.encrypted", json!({"algorithm": MEGOLM})),
        ("m.room.encrypted", json!({"algorithm": MEGOLM, "ciphertext": 42})),
        (
            "m.room.encrypted",
            json!({"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": {}}),
        ),
        ("m.room.encrypted", json!({"ciphertext": "x"})),
    ] {
        let (status, body) = send_raw(&bob, &room, event_type, &content).await;
        assert_strict_refusal(status, &body, &format!("{event_type} {content}"));
    }

    // A real Megolm message is accepted and delivered.
    let mut session = GroupSession::new(SessionConfig::version_1());
    let (status, body) = send_raw(
        &alice,
        &room,
        "m.room.encrypted",
        &megolm_content(&mut session, "hi bob"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let encrypted_id = body["event_id"].as_str().unwrap().to_owned();
    let sync = bob.sync(None, 0, 50).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        timeline.iter().any(|e| e["event_id"] == encrypted_id.as_str()),
        "{sync}"
    );
    assert!(
        timeline
            .iter()
            .filter(|e| e["state_key"].is_null())
            .all(|e| e["type"] == "m.room.encrypted"),
        "only encrypted messages in the timeline: {sync}"
    );

    // Redactions (both endpoints) and ordinary state events pass.
    alice.redact(&room, &encrypted_id).await;
    let (status, body) = send_raw(
        &alice,
        &room,
        "m.room.encrypted",
        &megolm_content(&mut session, "again"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = body["event_id"].as_str().unwrap().to_owned();
    let (status, body) = send_raw(&alice, &room, "m.room.redaction", &json!({"redacts": second})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = put_state(&alice, &room, "m.room.topic", &json!({"topic": "state passes"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Encryption cannot change or go; the same content again changes nothing and is accepted.
    for content in [
        json!({"algorithm": MEGOLM, "rotation_period_ms": 1000}),
        json!({"algorithm": "m.olm.v1.curve25519-aes-sha2"}),
        json!({}),
    ] {
        let (status, body) = put_state(&alice, &room, "m.room.encryption", &content).await;
        assert_strict_refusal(status, &body, &format!("m.room.encryption {content}"));
    }
    let (status, body) = put_state(&alice, &room, "m.room.encryption", &json!({"algorithm": MEGOLM})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Nor be redacted away, nor the mode event.
    let ids = alice.room_state_ids(&room).await;
    for key in ["m.room.encryption", PRIVACY] {
        let event_id = &ids[&(key.to_owned(), String::new())];
        let path = format!(
            "/rooms/{}/redact/{}/{}",
            encode(&room),
            encode(event_id),
            txn_id()
        );
        let (status, body) = alice.request(Method::PUT, &path, Some(&json!({}))).await;
        assert_strict_refusal(status, &body, &format!("redacting {key}"));
    }

    // The mode only moves towards strict.
    for content in [
        json!({"mode": "search_enabled"}),
        json!({}),
        json!({"mode": "plain"}),
    ] {
        let (status, body) = put_state(&alice, &room, PRIVACY, &content).await;
        assert_strict_refusal(status, &body, &format!("mode {content}"));
    }
    let (status, body) = put_state(&alice, &room, PRIVACY, &json!({"mode": "strict_e2e"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        alice.get_state_content(&room, "m.room.encryption", "").await,
        json!({"algorithm": MEGOLM})
    );

    // Still refusing plaintext after all that.
    let (status, body) = send_raw(
        &alice,
        &room,
        "m.room.message",
        &json!({"msgtype": "m.text", "body": "x"}),
    )
    .await;
    assert_strict_refusal(status, &body, "plaintext at the end");
}

#[tokio::test]
async fn rooms_become_strict_when_encryption_is_enabled() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let text = json!({"msgtype": "m.text", "body": "plain"});

    // A plain room: plaintext is fine until encryption is enabled, then Hearth writes the mode
    // as the user who enabled it.
    let room = alice.create_room(json!({})).await;
    let (status, _) = send_raw(&alice, &room, "m.room.message", &text).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = put_state(&alice, &room, "m.room.encryption", &json!({"algorithm": MEGOLM})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        alice.get_state_content(&room, PRIVACY, "").await,
        json!({"mode": "strict_e2e"})
    );
    let ids = alice.room_state_ids(&room).await;
    let mode_event = alice
        .ok(
            Method::GET,
            &format!(
                "/rooms/{}/event/{}",
                encode(&room),
                encode(&ids[&(PRIVACY.to_owned(), String::new())])
            ),
            None,
        )
        .await;
    assert_eq!(mode_event["sender"], alice.user_id.as_str());
    let (status, body) = send_raw(&alice, &room, "m.room.message", &text).await;
    assert_strict_refusal(status, &body, "after enabling encryption");

    // A search_enabled room is readable by the server and cannot stay so once encrypted.
    let room = alice
        .create_room(json!({"initial_state": [{"type": PRIVACY, "content": {"mode": "search_enabled"}}]}))
        .await;
    let (status, _) = send_raw(&alice, &room, "m.room.message", &text).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = put_state(&alice, &room, "m.room.encryption", &json!({"algorithm": MEGOLM})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        alice.get_state_content(&room, PRIVACY, "").await,
        json!({"mode": "strict_e2e"})
    );
    let (status, body) = send_raw(&alice, &room, "m.room.message", &text).await;
    assert_strict_refusal(status, &body, "search_enabled room after encryption");

    // A mode set explicitly, without encryption yet, is strict all the same.
    let room = alice.create_room(json!({})).await;
    let (status, body) = put_state(&alice, &room, PRIVACY, &json!({"mode": "strict_e2e"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send_raw(&alice, &room, "m.room.message", &text).await;
    assert_strict_refusal(status, &body, "explicit strict mode");
    // A strict room's encryption is Megolm.
    let (status, body) = put_state(
        &alice,
        &room,
        "m.room.encryption",
        &json!({"algorithm": "org.example.rot13"}),
    )
    .await;
    assert_strict_refusal(status, &body, "non-Megolm encryption");

    // createRoom: search_enabled after encryption is refused as a whole, nothing is created.
    let rooms_before = alice.ok(Method::GET, "/joined_rooms", None).await;
    let (status, body) = alice
        .request(
            Method::POST,
            "/createRoom",
            Some(&json!({"initial_state": [
                {"type": "m.room.encryption", "content": {"algorithm": MEGOLM}},
                {"type": PRIVACY, "content": {"mode": "search_enabled"}},
            ]})),
        )
        .await;
    assert_strict_refusal(status, &body, "createRoom with encryption, then search_enabled");
    let (status, body) = alice
        .request(
            Method::POST,
            "/createRoom",
            Some(&json!({"initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.olm.v1.curve25519-aes-sha2"}}]})),
        )
        .await;
    assert_strict_refusal(status, &body, "createRoom with Olm room encryption");
    assert_eq!(alice.ok(Method::GET, "/joined_rooms", None).await, rooms_before);

    // An upgrade keeps the room strict.
    let room = alice.create_room(encrypted_room_body()).await;
    let upgraded = alice
        .ok(
            Method::POST,
            &format!("/rooms/{}/upgrade", encode(&room)),
            Some(&json!({"new_version": "12"})),
        )
        .await;
    let new_room = upgraded["replacement_room"].as_str().unwrap();
    assert_eq!(
        alice.get_state_content(new_room, PRIVACY, "").await,
        json!({"mode": "strict_e2e"})
    );
    let (status, body) = send_raw(&alice, new_room, "m.room.message", &text).await;
    assert_strict_refusal(status, &body, "upgraded room");
}

#[tokio::test]
async fn encrypted_rooms_stay_plain_when_the_config_says_so() {
    let server =
        Server::start_with_config(Backend::from_env(), "[privacy]\nencrypted_rooms_strict = false\n").await;
    let alice = server.register("alice").await;
    let room = alice.create_room(encrypted_room_body()).await;
    let (status, body) = send_raw(
        &alice,
        &room,
        "m.room.message",
        &json!({"msgtype": "m.text", "body": "ok"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = alice
        .request(Method::GET, &Client::state_path(&room, PRIVACY, ""), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no mode event");
    // An explicit strict mode still holds.
    let (status, body) = put_state(&alice, &room, PRIVACY, &json!({"mode": "strict_e2e"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send_raw(
        &alice,
        &room,
        "m.room.message",
        &json!({"msgtype": "m.text", "body": "no"}),
    )
    .await;
    assert_strict_refusal(status, &body, "explicitly strict");
}

/// Every file under `dir`, recursively, that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

/// Where `needle` occurs among everything the server persisted: its directory (database
/// files with the WAL, logs, media, config) and, on PostgreSQL, a dump of its database.
fn persisted_places(server: &Server, needle: &str) -> Vec<String> {
    let mut places = files_containing(server.dir(), needle.as_bytes());
    if server.backend == Backend::Postgres {
        let dump = std::process::Command::new("pg_dump")
            .arg("--dbname")
            .arg(&server.db_url)
            .output()
            .expect("run pg_dump");
        assert!(
            dump.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        assert!(dump.stdout.len() > 1000, "a dump with the schema in it");
        if dump.stdout.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            places.push("pg_dump".into());
        }
    }
    places
}

#[tokio::test]
async fn nothing_persisted_holds_what_was_sent_encrypted() {
    let server = Server::start_with_plain_rooms().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let encrypted_secret = format!("megolm-only-secret-{unique}");
    let refused_secret = format!("refused-plaintext-secret-{unique}");
    let control_secret = format!("plain-room-control-{unique}");

    let room = alice.create_room(encrypted_room_body()).await;
    alice.invite(&room, &bob.user_id).await;
    bob.join(&room).await;
    let mut session = GroupSession::new(SessionConfig::version_1());
    for i in 0..20 {
        let (status, body) = send_raw(
            &alice,
            &room,
            "m.room.encrypted",
            &megolm_content(&mut session, &format!("{encrypted_secret} #{i}")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Refused plaintext leaves no trace either (not even in the log).
    let (status, body) = send_raw(
        &bob,
        &room,
        "m.room.message",
        &json!({"msgtype": "m.text", "body": refused_secret}),
    )
    .await;
    assert_strict_refusal(status, &body, "plaintext");
    let (status, body) = send_raw(
        &bob,
        &room,
        "m.room.encrypted",
        &json!({"algorithm": MEGOLM, "ciphertext": refused_secret}),
    )
    .await;
    assert_strict_refusal(status, &body, "fake ciphertext");
    // Delivered and read: sync, messages, receipts, notifications touch it.
    let sync = bob.sync(None, 0, 50).await;
    assert!(sync["rooms"]["join"][&room].is_object());
    bob.ok(
        Method::GET,
        &format!("/rooms/{}/messages?dir=b&limit=50", encode(&room)),
        None,
    )
    .await;
    bob.ok(Method::GET, "/notifications", None).await;

    // The control: a plain room's plaintext is stored, and the same scan finds it.
    let plain = alice.create_room(json!({})).await;
    alice.send_text(&plain, &control_secret).await;

    let control = persisted_places(&server, &control_secret);
    assert!(!control.is_empty(), "the scan finds plaintext the server stored");
    assert!(
        persisted_places(&server, &encrypted_secret).is_empty(),
        "a plaintext sent only encrypted was persisted"
    );
    assert!(
        persisted_places(&server, &refused_secret).is_empty(),
        "a refused plaintext was persisted"
    );
}
