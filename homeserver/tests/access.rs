//! Access control as the spec rules it, tried as an attacker would: forged and unauthorised
//! redactions leave their target intact everywhere it is served, and history visibility holds
//! on every read path (`/messages`, `/event`, `/context`, `/state`, `/members`, `/sync`).
//! The black-box access matrix is in `conformance-tests/tests/suite/visibility.rs`.

mod common;

use common::{Client, Server, encode, txn_id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The event as `/event` serves it to `client`.
async fn served(client: &Client, room: &str, event_id: &str) -> (StatusCode, Value) {
    client
        .request(
            Method::GET,
            &format!("/rooms/{}/event/{}", encode(room), encode(event_id)),
            None,
        )
        .await
}

/// `target` is served unredacted by `/event`, `/messages` and `/sync`.
async fn assert_intact(client: &Client, room: &str, target: &str, body: &str) {
    let (status, event) = served(client, room, target).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"]["body"], body, "/event: {event}");
    assert!(event["unsigned"].get("redacted_because").is_none(), "{event}");
    let page = messages(client, room, "b", 50).await;
    let found = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == target)
        .unwrap_or_else(|| panic!("target not in /messages: {page}"))
        .clone();
    assert_eq!(found["content"]["body"], body, "/messages: {found}");
    let sync = client.sync(None, 0, 50).await;
    let found = sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == target)
        .unwrap_or_else(|| panic!("target not in /sync: {sync}"))
        .clone();
    assert_eq!(found["content"]["body"], body, "/sync: {found}");
}

async fn messages(client: &Client, room: &str, dir: &str, limit: u32) -> Value {
    client
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir={dir}&limit={limit}", encode(room)),
            None,
        )
        .await
}

fn bodies(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn a_redacts_field_in_a_message_redacts_nothing() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let mallory = server.register("mallory").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    mallory.join(&room).await;
    let target = alice.send_text(&room, "keep me").await;
    // Top-level and content `redacts` on an ordinary message, in the same room.
    mallory
        .send(
            &room,
            "m.room.message",
            json!({ "msgtype": "m.text", "body": "x", "redacts": target }),
        )
        .await;
    // A state event of type m.room.redaction is no redaction either.
    let (status, _) = mallory
        .request(
            Method::PUT,
            &Client::state_path(&room, "m.room.redaction", "k"),
            Some(&json!({ "redacts": target })),
        )
        .await;
    assert!(
        status == StatusCode::OK || status == StatusCode::FORBIDDEN,
        "{status}"
    );
    assert_intact(&alice, &room, &target, "keep me").await;
    // A message whose `redacts` is not an event ID is just content.
    let odd = mallory
        .send(
            &room,
            "m.room.message",
            json!({ "body": "y", "redacts": "not an id" }),
        )
        .await;
    let (status, event) = served(&alice, &room, &odd).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"]["redacts"], "not an id");
}

#[tokio::test]
async fn a_redaction_cannot_reach_into_another_room() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let mallory = server.register("mallory").await;
    let victim_room = alice.create_room(json!({})).await;
    let target = alice.send_text(&victim_room, "private").await;
    let own_room = mallory.create_room(json!({})).await;
    let (status, body) = mallory
        .request(
            Method::PUT,
            &format!(
                "/rooms/{}/redact/{}/{}",
                encode(&own_room),
                encode(&target),
                txn_id()
            ),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    assert_intact(&alice, &victim_room, &target, "private").await;
}

#[tokio::test]
async fn only_the_sender_or_a_moderator_redacts() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let target = alice.send_text(&room, "mine").await;
    let (status, body) = bob
        .request(
            Method::PUT,
            &format!("/rooms/{}/redact/{}/{}", encode(&room), encode(&target), txn_id()),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_intact(&alice, &room, &target, "mine").await;
    // Bob redacts his own; Alice (the creator) redacts Bob's.
    let own = bob.send_text(&room, "bob's").await;
    bob.redact(&room, &own).await;
    let second = bob.send_text(&room, "bob's second").await;
    alice.redact(&room, &second).await;
    for id in [own, second] {
        let (_, event) = served(&alice, &room, &id).await;
        assert!(event["unsigned"]["redacted_because"].is_object(), "{event}");
        assert!(event["content"].get("body").is_none(), "{event}");
    }
}

/// Issue 9, case 2: knocking (or being invited) and leaving again shows nothing of the room.
#[tokio::test]
async fn knocking_or_rejecting_an_invite_reads_no_history() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let eve = server.register("eve").await;
    let room = alice
        .create_room(json!({ "room_version": "11", "initial_state": [
            { "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }
        ] }))
        .await;
    alice.send_text(&room, "secret").await;
    eve.ok(
        Method::POST,
        &format!("/knock/{}", encode(&room)),
        Some(&json!({})),
    )
    .await;
    eve.leave(&room).await;
    for path in [
        format!("/rooms/{}/messages?dir=b", encode(&room)),
        format!("/rooms/{}/state", encode(&room)),
        format!("/rooms/{}/members", encode(&room)),
    ] {
        let (status, body) = eve.request(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    let invited_room = alice.create_room(json!({})).await;
    let secret = alice.send_text(&invited_room, "secret too").await;
    alice.invite(&invited_room, &eve.user_id).await;
    eve.leave(&invited_room).await;
    let (status, body) = eve
        .request(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b", encode(&invited_room)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = served(&eve, &invited_room, &secret).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Issue 9, case 3: `joined` and `invited` hide what came before; `world_readable` is readable.
#[tokio::test]
async fn history_visibility_is_applied_per_event() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }
        ] }))
        .await;
    let before = alice.send_text(&room, "before bob").await;
    bob.join(&room).await;
    alice.send_text(&room, "after bob").await;
    let page = messages(&bob, &room, "b", 50).await;
    assert_eq!(bodies(&page), vec!["after bob"], "{page}");
    let (status, _) = served(&bob, &room, &before).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = bob
        .request(
            Method::GET,
            &format!("/rooms/{}/context/{}", encode(&room), encode(&before)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let sync = bob.sync(None, 0, 50).await;
    let timeline: Vec<&str> = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(timeline, vec!["after bob"], "{sync}");

    // invited: from the invite on.
    let carol = server.register("carol").await;
    let invited = alice
        .create_room(json!({ "initial_state": [
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "invited" } }
        ] }))
        .await;
    alice.send_text(&invited, "before invite").await;
    alice.invite(&invited, &carol.user_id).await;
    alice.send_text(&invited, "while invited").await;
    carol.join(&invited).await;
    alice.send_text(&invited, "after join").await;
    let page = messages(&carol, &invited, "b", 50).await;
    assert_eq!(bodies(&page), vec!["after join", "while invited"], "{page}");

    // world_readable: anyone may read, without joining.
    let open = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "world_readable" } }
        ] }))
        .await;
    let hello = alice.send_text(&open, "hello world").await;
    let dave = server.register("dave").await;
    let page = messages(&dave, &open, "b", 50).await;
    assert_eq!(bodies(&page), vec!["hello world"], "{page}");
    let (status, event) = served(&dave, &open, &hello).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    dave.ok(Method::GET, &format!("/rooms/{}/state", encode(&open)), None)
        .await;
    dave.ok(Method::GET, &format!("/rooms/{}/members", encode(&open)), None)
        .await;
    // What is sent after it stops being world-readable is not.
    alice
        .set_state(
            &open,
            "m.room.history_visibility",
            "",
            json!({ "history_visibility": "joined" }),
        )
        .await;
    alice.send_text(&open, "members only").await;
    let (status, _) = dave
        .request(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b", encode(&open)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_member_who_left_sees_up_to_the_leave() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    alice.send_text(&room, "while bob was here").await;
    bob.leave(&room).await;
    let later = alice.send_text(&room, "after bob left").await;
    alice
        .set_state(&room, "m.room.topic", "", json!({ "topic": "new topic" }))
        .await;
    let page = messages(&bob, &room, "b", 50).await;
    assert_eq!(bodies(&page), vec!["while bob was here"], "{page}");
    let (status, _) = served(&bob, &room, &later).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let state = bob
        .ok(Method::GET, &format!("/rooms/{}/state", encode(&room)), None)
        .await;
    assert!(
        !state
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.topic"),
        "state after the leave leaked: {state}"
    );
}

#[tokio::test]
async fn publishing_needs_the_canonical_alias_power() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let eve = server.register("eve").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let path = format!("/directory/list/room/{}", encode(&room));
    let public = json!({ "visibility": "public" });
    let (status, body) = bob.request(Method::PUT, &path, Some(&public)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = eve.request(Method::PUT, &path, Some(&public)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    alice.ok(Method::PUT, &path, Some(&public)).await;
    let listed = alice.ok(Method::GET, &path, None).await;
    assert_eq!(listed["visibility"], "public");
}

/// A viewer whose visible history is far back pages through a big room cheaply: the scan skips
/// what they may not see, so each page answers with events, not with empty chunks.
#[tokio::test]
async fn invisible_history_is_skipped_not_walked() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }
        ] }))
        .await;
    bob.join(&room).await;
    alice.send_text(&room, "seen").await;
    bob.leave(&room).await;
    for chunk in 0..30 {
        let texts: Vec<String> = (0..40).map(|i| format!("hidden {chunk}/{i}")).collect();
        futures_util::future::join_all(texts.iter().map(|t| alice.send_text(&room, t))).await;
    }
    let page = messages(&bob, &room, "b", 10).await;
    assert_eq!(bodies(&page), vec!["seen"], "{page}");
}

/// U+0000 reaches no query: PostgreSQL refuses it in text, so on any read or write path it is a
/// client error (400), never a 500, and alike on both backends where it comes in the URL.
#[tokio::test]
async fn nul_characters_are_client_errors() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    for path in [
        format!("/rooms/{}/state/m.room.name%00/x", encode(&room)),
        format!("/rooms/{}/event/%24abc%00", encode(&room)),
        format!("/rooms/{}/messages?dir=b&from=s1%00", encode(&room)),
        format!("/profile/{}%00", encode(&alice.user_id)),
    ] {
        let (status, body) = alice.request(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{path}: {body}");
    }
    // In a body, where it is only data for SQLite: refused or stored intact, never a 500.
    let name = "a\u{0}b";
    let (status, body) = alice
        .request(
            Method::PUT,
            &format!("/profile/{}/displayname", encode(&alice.user_id)),
            Some(&json!({ "displayname": name })),
        )
        .await;
    match status {
        StatusCode::OK => {
            let got = alice
                .ok(
                    Method::GET,
                    &format!("/profile/{}/displayname", encode(&alice.user_id)),
                    None,
                )
                .await;
            assert_eq!(got["displayname"], name);
        }
        _ => {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
        }
    }
}

/// A rejected invite moves the room to `leave` in `/sync` with the user's own leave event and
/// nothing of the room's history or state.
#[tokio::test]
async fn a_rejected_invite_syncs_as_a_bare_leave() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let eve = server.register("eve").await;
    let room = alice.create_room(json!({ "name": "secret name" })).await;
    alice.send_text(&room, "secret").await;
    alice.invite(&room, &eve.user_id).await;
    let first = eve.sync(None, 0, 10).await;
    assert!(first["rooms"]["invite"][&room].is_object(), "{first}");
    let since = first["next_batch"].as_str().unwrap().to_owned();
    eve.leave(&room).await;
    let next = eve.sync(Some(&since), 0, 10).await;
    let left = &next["rooms"]["leave"][&room];
    let timeline = left["timeline"]["events"].as_array().expect("leave timeline");
    assert_eq!(timeline.len(), 1, "{left}");
    assert_eq!(timeline[0]["type"], "m.room.member");
    assert_eq!(timeline[0]["state_key"], eve.user_id.as_str());
    assert_eq!(timeline[0]["content"]["membership"], "leave");
    assert!(left["state"]["events"].as_array().unwrap().is_empty(), "{left}");
}
