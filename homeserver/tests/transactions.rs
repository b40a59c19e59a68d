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

/// Logs `user` in again on a device ID the client chose.
async fn login_on(server: &Server, user: &str, device_id: &str) -> common::Client {
    let login = server
        .anon()
        .ok(
            Method::POST,
            "/login",
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user },
                "password": PASSWORD,
                "device_id": device_id,
            })),
        )
        .await;
    server.client_with_token(
        login["user_id"].as_str().expect("user_id"),
        device_id,
        login["access_token"].as_str().expect("access_token"),
    )
}

/// Appends are written in batches (group commit) and a batch looks its transactions up at
/// once: retries racing their first attempt, in one batch or across batches, still make one
/// event; and another user's device that happens to share the device ID and the txnId is a
/// request of its own, never answered with someone else's event.
#[tokio::test]
async fn concurrent_retransmissions_make_one_event_per_sender() {
    let server = Server::start().await;
    server.register("alice").await;
    server.register("mallory").await;
    let alice = login_on(&server, "alice", "SHARED").await;
    let mallory = login_on(&server, "mallory", "SHARED").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    mallory.join(&room).await;
    let path = format!("/rooms/{}/send/m.room.message/raced", encode(&room));
    let body = json!({ "msgtype": "m.text", "body": "once each" });
    let db = server.db().await;

    let mut sends = Vec::new();
    for i in 0..24 {
        let (client, path, body) = (
            if i % 2 == 0 {
                alice.clone()
            } else {
                mallory.clone()
            },
            path.clone(),
            body.clone(),
        );
        // Fresh messages in between, so the retries share batches with new events.
        let other = format!(
            "/rooms/{}/send/m.room.message/{}",
            encode(&room),
            common::txn_id()
        );
        sends.push(tokio::spawn(async move {
            let fresh = json!({ "msgtype": "m.text", "body": "x" });
            let (first, _) = tokio::join!(
                client.ok(Method::PUT, &path, Some(&body)),
                client.ok(Method::PUT, &other, Some(&fresh)),
            );
            (
                client.user_id.clone(),
                first["event_id"].as_str().expect("event_id").to_owned(),
            )
        }));
    }
    let mut answers: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for send in sends {
        let (user, event_id) = send.await.expect("send task");
        answers.entry(user).or_default().insert(event_id);
    }
    assert_eq!(answers.len(), 2);
    let alice_event = answers[&alice.user_id].iter().next().expect("one").clone();
    let mallory_event = answers[&mallory.user_id].iter().next().expect("one").clone();
    assert_eq!(
        answers[&alice.user_id].len(),
        1,
        "alice's retries made several events"
    );
    assert_eq!(
        answers[&mallory.user_id].len(),
        1,
        "mallory's retries made several events"
    );
    assert_ne!(
        alice_event, mallory_event,
        "mallory was answered with alice's event"
    );
    for (user, event_id) in [(&alice.user_id, &alice_event), (&mallory.user_id, &mallory_event)] {
        let sender: String = sqlx::query("SELECT sender FROM events WHERE event_id = $1")
            .bind(event_id.clone())
            .fetch_one(&db)
            .await
            .expect("event stored")
            .get(0);
        assert_eq!(&sender, user, "{event_id} is not {user}'s");
    }
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM events WHERE txn_id = 'raced'", &[]).await,
        2,
        "one event per sender"
    );
    db.close().await;
}

/// A retry after a restart (nothing in memory about the first attempt), sent in a batch with
/// new messages, is answered with the event stored before the restart.
#[tokio::test]
async fn a_retry_after_a_restart_gets_the_stored_event() {
    let mut server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let path = format!("/rooms/{}/send/m.room.message/before", encode(&room));
    let body = json!({ "msgtype": "m.text", "body": "sent once" });
    let first = alice.ok(Method::PUT, &path, Some(&body)).await;

    server.restart().await;
    let mut sends = Vec::new();
    for i in 0..8 {
        let (alice, room) = (alice.clone(), room.clone());
        sends.push(tokio::spawn(async move {
            alice.send_text(&room, &format!("new {i}")).await
        }));
    }
    let again = alice.ok(Method::PUT, &path, Some(&body)).await;
    let mut fresh = std::collections::HashSet::new();
    for send in sends {
        fresh.insert(send.await.expect("send task"));
    }
    assert_eq!(first["event_id"], again["event_id"], "the retry made a new event");
    assert_eq!(fresh.len(), 8, "new messages were deduplicated");
    assert!(!fresh.contains(first["event_id"].as_str().expect("event_id")));
    let db = server.db().await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM events WHERE txn_id = 'before'", &[]).await,
        1
    );
    db.close().await;
}
