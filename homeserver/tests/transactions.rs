//! Transaction IDs make a retransmission idempotent, scoped to one device and one endpoint path
//! (Client-Server API, "Transaction identifiers"); what is stored shows whether a request made a
//! new event.

mod common;

use common::{PASSWORD, Server, count, encode};
use reqwest::Method;
use serde_json::json;
use sqlx::Row;

#[tokio::test]
async fn retransmissions_are_idempotent_per_device_and_path() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let path = format!("/rooms/{}/send/m.room.message/same-txn", encode(&room));
    let body = json!({ "msgtype": "m.text", "body": "once" });
    let db = server.db().await;

    let first = alice.ok(Method::PUT, &path, Some(&body)).await;
    let before = count(&db, "SELECT COUNT(*) FROM events", &[]).await;
    let again = alice.ok(Method::PUT, &path, Some(&body)).await;
    assert_eq!(
        first["event_id"], again["event_id"],
        "retransmission made a new event"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM events", &[]).await, before);

    // Another device of the same user: a distinct request.
    let login = server
        .anon()
        .ok(
            Method::POST,
            "/login",
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": PASSWORD,
            })),
        )
        .await;
    let phone = server.client_with_token(
        &alice.user_id,
        login["device_id"].as_str().expect("device_id"),
        login["access_token"].as_str().expect("access_token"),
    );
    assert_ne!(phone.device_id, alice.device_id);
    let other_device = phone.ok(Method::PUT, &path, Some(&body)).await;
    assert_ne!(
        other_device["event_id"], first["event_id"],
        "a second device's request was taken for a retransmission"
    );
    db.close().await;
}

#[tokio::test]
async fn the_same_txn_id_on_another_path_is_a_new_request() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room_a = alice.create_room(json!({ "preset": "private_chat" })).await;
    let room_b = alice.create_room(json!({ "preset": "private_chat" })).await;
    let body = json!({ "msgtype": "m.text", "body": "hi" });
    let db = server.db().await;

    let in_a = alice
        .ok(
            Method::PUT,
            &format!("/rooms/{}/send/m.room.message/t1", encode(&room_a)),
            Some(&body),
        )
        .await;
    let in_a = in_a["event_id"].as_str().expect("event_id").to_owned();

    // Another room: another path, so a new event, stored in that room.
    let in_b = alice
        .ok(
            Method::PUT,
            &format!("/rooms/{}/send/m.room.message/t1", encode(&room_b)),
            Some(&body),
        )
        .await;
    let in_b = in_b["event_id"].as_str().expect("event_id").to_owned();
    assert_ne!(in_b, in_a, "PUT send/t1 in room B answered with room A's event");
    let stored_room: String = sqlx::query("SELECT room_id FROM events WHERE event_id = $1")
        .bind(in_b.clone())
        .fetch_one(&db)
        .await
        .expect("event stored")
        .get(0);
    assert_eq!(stored_room, room_b);

    // /redact is another endpoint: the same txnId makes a redaction.
    let redaction = alice
        .ok(
            Method::PUT,
            &format!("/rooms/{}/redact/{}/t1", encode(&room_a), encode(&in_a)),
            Some(&json!({})),
        )
        .await;
    let redaction = redaction["event_id"].as_str().expect("event_id").to_owned();
    let kind: String = sqlx::query("SELECT type FROM events WHERE event_id = $1")
        .bind(redaction.clone())
        .fetch_one(&db)
        .await
        .expect("event stored")
        .get(0);
    assert_eq!(
        kind, "m.room.redaction",
        "PUT redact/.../t1 answered with {redaction}, a {kind}"
    );
    db.close().await;
}
