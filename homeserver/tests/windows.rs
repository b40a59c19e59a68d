//! Edit and delete windows (spec/message-policy.md): tiny windows set by the room's
//! `org.hearth.room.message_policy` or the server's `[messages]` config, a request just inside
//! (at once) and just outside (after sleeping past the window).

mod common;

use std::time::Duration;

use common::{Backend, Client, Server, encode, txn_id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const POLICY: &str = "org.hearth.room.message_policy";

fn edit(target: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("* {body}"),
        "m.new_content": { "msgtype": "m.text", "body": body },
        "m.relates_to": { "rel_type": "m.replace", "event_id": target },
    })
}

async fn try_edit(client: &Client, room: &str, target: &str) -> (StatusCode, Value) {
    client
        .request(
            Method::PUT,
            &client.send_path(room, "m.room.message"),
            Some(&edit(target, "edited")),
        )
        .await
}

async fn try_redact(client: &Client, room: &str, target: &str) -> (StatusCode, Value) {
    client
        .request(
            Method::PUT,
            &format!("/rooms/{}/redact/{}/{}", encode(room), encode(target), txn_id()),
            Some(&json!({})),
        )
        .await
}

fn assert_expired((status, body): (StatusCode, Value)) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(body["org.hearth.error"], "window_expired", "{body}");
}

fn assert_ok((status, body): (StatusCode, Value)) {
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A public room of alice's where bob (power 0) talks.
async fn room_with_bob(alice: &Client, bob: &Client) -> String {
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    room
}

#[tokio::test]
async fn the_rooms_policy_limits_edits_and_deletes_of_ones_own_events() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room_with_bob(&alice, &bob).await;
    alice
        .set_state(
            &room,
            POLICY,
            "",
            json!({ "edit_window_ms": 1500, "delete_window_ms": 1500 }),
        )
        .await;

    // Just inside: at once.
    let fresh = bob.send_text(&room, "fresh").await;
    assert_ok(try_edit(&bob, &room, &fresh).await);
    let fresh2 = bob.send_text(&room, "fresh too").await;
    assert_ok(try_redact(&bob, &room, &fresh2).await);

    // Just outside.
    let old = bob.send_text(&room, "old").await;
    let old_encrypted = bob
        .send(
            &room,
            "m.room.encrypted",
            json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA", "sender_key": "k",
                    "device_id": "D", "session_id": "s" }),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_expired(try_edit(&bob, &room, &old).await);
    assert_expired(try_redact(&bob, &room, &old).await);
    // Through PUT /send/m.room.redaction too.
    assert_expired(
        bob.request(
            Method::PUT,
            &bob.send_path(&room, "m.room.redaction"),
            Some(&json!({ "redacts": old })),
        )
        .await,
    );
    // In an encrypted room: the edit's m.relates_to is in clear.
    assert_expired(
        bob.request(
            Method::PUT,
            &bob.send_path(&room, "m.room.encrypted"),
            Some(
                &json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "BBBB",
                          "sender_key": "k", "device_id": "D", "session_id": "s",
                          "m.relates_to": { "rel_type": "m.replace", "event_id": old_encrypted } }),
            ),
        )
        .await,
    );

    // The moderator (alice, power 100 ≥ redact 50) is never limited, for her own events too.
    let alices = alice.send_text(&room, "mine").await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_ok(try_edit(&alice, &room, &alices).await);
    assert_ok(try_redact(&alice, &room, &old).await);
    assert_ok(try_redact(&alice, &room, &alices).await);

    // null means unlimited.
    alice
        .set_state(
            &room,
            POLICY,
            "",
            json!({ "edit_window_ms": null, "delete_window_ms": null }),
        )
        .await;
    let late = bob.send_text(&room, "late").await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_ok(try_edit(&bob, &room, &late).await);
    assert_ok(try_redact(&bob, &room, &late).await);
}

#[tokio::test]
async fn a_retried_transaction_is_answered_after_the_window() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room_with_bob(&alice, &bob).await;
    alice
        .set_state(&room, POLICY, "", json!({ "edit_window_ms": 1000 }))
        .await;
    let message = bob.send_text(&room, "x").await;
    let path = bob.send_path(&room, "m.room.message");
    let first = bob.ok(Method::PUT, &path, Some(&edit(&message, "y"))).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let retry = bob.ok(Method::PUT, &path, Some(&edit(&message, "y"))).await;
    assert_eq!(first["event_id"], retry["event_id"]);
}

#[tokio::test]
async fn the_policy_is_validated_and_needs_state_power() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room_with_bob(&alice, &bob).await;
    for bad in [
        json!({ "edit_window_ms": -1 }),
        json!({ "edit_window_ms": "15m" }),
        json!({ "delete_window_ms": 2.5 }),
        json!({ "delete_window_ms": {} }),
    ] {
        let (status, body) = alice
            .request(Method::PUT, &Client::state_path(&room, POLICY, ""), Some(&bad))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["errcode"], "M_BAD_JSON");
    }
    // Bob (power 0) may not set it; the state default is 50.
    let (status, body) = bob
        .request(
            Method::PUT,
            &Client::state_path(&room, POLICY, ""),
            Some(&json!({ "edit_window_ms": null })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn the_server_default_applies_unless_the_room_overrides_it() {
    let server = Server::start_with_config(
        Backend::from_env(),
        "[messages]\nedit_window = \"1s\"\ndelete_window = 1000\n",
    )
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room_with_bob(&alice, &bob).await;

    let inside = bob.send_text(&room, "inside").await;
    assert_ok(try_edit(&bob, &room, &inside).await);
    let outside = bob.send_text(&room, "outside").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_expired(try_edit(&bob, &room, &outside).await);
    assert_expired(try_redact(&bob, &room, &outside).await);

    // The room lifts the edit window only: deletes keep the server's.
    alice
        .set_state(&room, POLICY, "", json!({ "edit_window_ms": 0 }))
        .await;
    assert_ok(try_edit(&bob, &room, &outside).await);
    assert_expired(try_redact(&bob, &room, &outside).await);
}
