//! Edit and delete windows (spec/message-policy.md): the server's `[messages]` default
//! (15 minutes) and the room's `org.hearth.room.message_policy`, each checked just inside and
//! just outside its window. The servers run with `testing.adjustable_clock`, and the tests move
//! the clock forward (`POST /_hearth/testing/v1/clock/advance`) instead of waiting.

mod common;

use common::{Backend, Client, Server, encode, txn_id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const POLICY: &str = "org.hearth.room.message_policy";
const MINUTE: i64 = 60_000;

async fn start(extra: &str) -> Server {
    Server::start_with_config(
        Backend::from_env(),
        &format!("[testing]\nadjustable_clock = true\n{extra}"),
    )
    .await
}

/// Moves the server's clock forward by `ms`.
async fn advance(client: &Client, ms: i64) {
    let resp = client
        .http
        .post(format!("{}/_hearth/testing/v1/clock/advance", client.base_url))
        .bearer_auth(client.token.as_deref().unwrap_or_default())
        .json(&json!({ "ms": ms }))
        .send()
        .await
        .expect("clock advance");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

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
async fn the_server_default_is_fifteen_minutes() {
    let server = start("").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room_with_bob(&alice, &bob).await;

    let a = bob.send_text(&room, "a").await;
    let b = bob.send_text(&room, "b").await;
    let c = bob.send_text(&room, "c").await;
    advance(&bob, 15 * MINUTE - 5_000).await;
    // Just inside: 14:55 after sending.
    assert_ok(try_edit(&bob, &room, &a).await);
    assert_ok(try_redact(&bob, &room, &b).await);
    advance(&bob, 10_000).await;
    // Just outside: 15:05 after sending.
    assert_expired(try_edit(&bob, &room, &c).await);
    assert_expired(try_redact(&bob, &room, &c).await);
}

#[tokio::test]
async fn the_rooms_policy_limits_edits_and_deletes_of_ones_own_events() {
    let server = start("").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room_with_bob(&alice, &bob).await;
    alice
        .set_state(
            &room,
            POLICY,
            "",
            json!({ "edit_window_ms": MINUTE, "delete_window_ms": MINUTE }),
        )
        .await;

    let fresh = bob.send_text(&room, "fresh").await;
    let fresh2 = bob.send_text(&room, "fresh too").await;
    let old = bob.send_text(&room, "old").await;
    let old_encrypted = bob
        .send(
            &room,
            "m.room.encrypted",
            json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA", "sender_key": "k",
                    "device_id": "D", "session_id": "s" }),
        )
        .await;
    // Just inside: 59 s.
    advance(&bob, MINUTE - 1_000).await;
    assert_ok(try_edit(&bob, &room, &fresh).await);
    assert_ok(try_redact(&bob, &room, &fresh2).await);

    // Just outside: 61 s.
    advance(&bob, 2_000).await;
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
    advance(&alice, 2 * MINUTE).await;
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
    advance(&bob, 24 * 60 * MINUTE).await;
    assert_ok(try_edit(&bob, &room, &late).await);
    assert_ok(try_redact(&bob, &room, &late).await);
}

#[tokio::test]
async fn a_retried_transaction_is_answered_after_the_window() {
    let server = start("").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room_with_bob(&alice, &bob).await;
    let message = bob.send_text(&room, "x").await;
    let path = bob.send_path(&room, "m.room.message");
    let first = bob.ok(Method::PUT, &path, Some(&edit(&message, "y"))).await;
    advance(&bob, 16 * MINUTE).await;
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
    let server = start("[messages]\nedit_window = \"2m\"\ndelete_window = 120000\n").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room_with_bob(&alice, &bob).await;

    let inside = bob.send_text(&room, "inside").await;
    let outside = bob.send_text(&room, "outside").await;
    advance(&bob, 2 * MINUTE - 1_000).await;
    assert_ok(try_edit(&bob, &room, &inside).await);
    advance(&bob, 2_000).await;
    assert_expired(try_edit(&bob, &room, &outside).await);
    assert_expired(try_redact(&bob, &room, &outside).await);

    // The room lifts the edit window only: deletes keep the server's.
    alice
        .set_state(&room, POLICY, "", json!({ "edit_window_ms": 0 }))
        .await;
    assert_ok(try_edit(&bob, &room, &outside).await);
    assert_expired(try_redact(&bob, &room, &outside).await);
}

#[tokio::test]
async fn the_clock_moves_only_when_the_configuration_allows_it() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let resp = alice
        .http
        .post(format!("{}/_hearth/testing/v1/clock/advance", alice.base_url))
        .bearer_auth(alice.token.as_deref().unwrap_or_default())
        .json(&json!({ "ms": MINUTE }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");

    let server = start("").await;
    let bob = server.register("bob").await;
    for bad in [json!({ "ms": -1 }), json!({ "ms": "1m" }), json!({})] {
        let resp = bob
            .http
            .post(format!("{}/_hearth/testing/v1/clock/advance", bob.base_url))
            .bearer_auth(bob.token.as_deref().unwrap_or_default())
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // Without an access token: 401.
    let resp = bob
        .http
        .post(format!("{}/_hearth/testing/v1/clock/advance", bob.base_url))
        .json(&json!({ "ms": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}
