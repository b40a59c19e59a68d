//! `PUT /rooms/{roomId}/state/m.room.member/{userId}` (the spec's own example for the endpoint):
//! a member changing their per-room profile is an ordinary member event that updates the stored
//! membership tables, while changing someone else's membership is refused and stores nothing.

mod common;

use common::{Client, Server, count};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn per_room_profile_through_put_state() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;

    let event_id = bob
        .set_state(
            &room,
            "m.room.member",
            &bob.user_id,
            json!({ "membership": "join", "displayname": "Bob in this room" }),
        )
        .await;
    let content = alice
        .get_state_content(&room, "m.room.member", &bob.user_id)
        .await;
    assert_eq!(content["displayname"], "Bob in this room");
    assert_eq!(content["membership"], "join");

    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM current_state WHERE room_id = $1 AND type = 'm.room.member' \
             AND state_key = $2 AND event_id = $3 AND membership = 'join'",
            &[&room, &bob.user_id, &event_id],
        )
        .await,
        1,
        "current_state does not hold the new member event"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM room_memberships WHERE event_id = $1 AND membership = 'join'",
            &[&event_id],
        )
        .await,
        1,
        "room_memberships does not record the new member event"
    );
    db.close().await;
}

#[tokio::test]
async fn someone_elses_membership_through_put_state_is_refused() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let db = server.db().await;
    let before = count(&db, "SELECT COUNT(*) FROM events", &[]).await;
    let (status, resp) = bob
        .request(
            Method::PUT,
            &Client::state_path(&room, "m.room.member", &alice.user_id),
            Some(&json!({ "membership": "leave" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{resp}");
    assert_eq!(resp["errcode"], "M_FORBIDDEN");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM events", &[]).await, before);
    db.close().await;
}
