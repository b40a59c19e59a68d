//! Room upgrades, the user directory, public room pagination, presence in /sync and typing
//! expiry, driven over HTTP against the real binary (SQLite or PostgreSQL per HEARTH_TEST_DB).

mod common;

use std::time::{Duration, Instant};

use common::{Server, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn an_upgrade_replaces_the_room_and_carries_its_settings() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = alice
        .create_room(json!({
            "room_version": "10", "preset": "public_chat", "name": "Old name",
            "topic": "Old topic", "room_alias_name": "upgraded", "visibility": "public",
        }))
        .await;
    bob.join(&old).await;

    // Only someone allowed to send m.room.tombstone may upgrade.
    let path = format!("/rooms/{}/upgrade", encode(&old));
    let (status, body) = bob
        .request(Method::POST, &path, Some(&json!({ "new_version": "12" })))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
    );
    let (status, body) = alice
        .request(Method::POST, &path, Some(&json!({ "new_version": "9" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], "M_UNSUPPORTED_ROOM_VERSION");

    let new = alice
        .ok(Method::POST, &path, Some(&json!({ "new_version": "12" })))
        .await["replacement_room"]
        .as_str()
        .expect("replacement_room")
        .to_owned();
    assert_ne!(new, old);
    let create = alice.get_state_content(&new, "m.room.create", "").await;
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], json!(old));
    assert_eq!(
        alice.get_state_content(&new, "m.room.name", "").await["name"],
        "Old name"
    );
    assert_eq!(
        alice.get_state_content(&new, "m.room.topic", "").await["topic"],
        "Old topic"
    );
    assert_eq!(
        alice.get_state_content(&new, "m.room.join_rules", "").await["join_rule"],
        "public"
    );
    // Version 12 creators are not listed in power levels.
    let levels = alice.get_state_content(&new, "m.room.power_levels", "").await;
    assert!(levels["users"].get(&alice.user_id).is_none(), "{levels}");

    let tombstone = alice.get_state_content(&old, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], json!(new));
    // The alias follows the room, and so does its directory listing.
    let alias = encode(&format!("#upgraded:{}", common::SERVER_NAME));
    let resolved = alice
        .ok(Method::GET, &format!("/directory/room/{alias}"), None)
        .await;
    assert_eq!(resolved["room_id"], json!(new));
    let listed = alice.ok(Method::GET, "/publicRooms", None).await;
    let ids: Vec<&str> = listed["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["room_id"].as_str())
        .collect();
    assert!(
        ids.contains(&new.as_str()) && !ids.contains(&old.as_str()),
        "{listed}"
    );
    // The old room is now read-mostly for ordinary members.
    let (status, _) = bob
        .request(
            Method::PUT,
            &bob.send_path(&old, "m.room.message"),
            Some(&json!({ "msgtype": "m.text", "body": "late" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Bob can follow the tombstone.
    bob.join(&new).await;
}

#[tokio::test]
async fn the_user_directory_finds_only_users_one_may_see() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bobby").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice.invite(&room, &bob.user_id).await;
    bob.join(&room).await;
    let public = dave
        .create_room(json!({ "preset": "public_chat", "visibility": "public" }))
        .await;
    let _ = public;

    let search = |term: &str| json!({ "search_term": term });
    let found = alice
        .ok(Method::POST, "/user_directory/search", Some(&search("bob")))
        .await;
    let ids: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["user_id"].as_str())
        .collect();
    assert_eq!(ids, vec![bob.user_id.as_str()]);
    // Carol shares no room with Alice and is in no public room.
    let found = alice
        .ok(Method::POST, "/user_directory/search", Some(&search("carol")))
        .await;
    assert_eq!(found["results"], json!([]), "{found}");
    let _ = carol;
    // Dave is in a public room, so he can be found by anyone.
    let found = alice
        .ok(Method::POST, "/user_directory/search", Some(&search("dav")))
        .await;
    assert_eq!(found["results"][0]["user_id"], json!(dave.user_id));
    // A limit cuts the list and says so.
    let found = alice
        .ok(
            Method::POST,
            "/user_directory/search",
            Some(&json!({ "search_term": "", "limit": 1 })),
        )
        .await;
    assert_eq!(found["results"].as_array().unwrap().len(), 1);
    assert_eq!(found["limited"], true);
    let (status, body) = alice
        .request(
            Method::POST,
            "/user_directory/search",
            Some(&json!({ "search_term": 1 })),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_BAD_JSON"))
    );
}

#[tokio::test]
async fn public_rooms_paginate_without_gaps_or_repeats() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let mut created = Vec::new();
    for i in 0..5 {
        let name = format!("Room {i}");
        created.push(
            alice
                .create_room(json!({ "preset": "public_chat", "visibility": "public", "name": name }))
                .await,
        );
    }
    alice
        .create_room(json!({ "preset": "private_chat", "name": "Hidden" }))
        .await;
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    for _ in 0..10 {
        let mut body = json!({ "limit": 2 });
        if let Some(s) = &since {
            body["since"] = json!(s);
        }
        let page = alice.ok(Method::POST, "/publicRooms", Some(&body)).await;
        assert_eq!(page["total_room_count_estimate"], 5);
        for room in page["chunk"].as_array().unwrap() {
            seen.push(room["room_id"].as_str().unwrap().to_owned());
        }
        match page["next_batch"].as_str() {
            Some(next) => since = Some(next.to_owned()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a room was listed twice: {seen:?}");
    created.sort();
    assert_eq!(sorted, created);
    let found = alice
        .ok(
            Method::POST,
            "/publicRooms",
            Some(&json!({ "filter": { "generic_search_term": "room 3" } })),
        )
        .await;
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["chunk"][0]["name"], "Room 3");
}

fn presence_of<'a>(sync: &'a Value, user_id: &str) -> Option<&'a Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["sender"] == user_id)
}

#[tokio::test]
async fn presence_reaches_only_users_who_share_a_room() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let bob_since = bob.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let carol_since = carol.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    let status = json!({ "presence": "unavailable", "status_msg": "lunch" });
    alice
        .ok(
            Method::PUT,
            &format!("/presence/{}/status", encode(&alice.user_id)),
            Some(&status),
        )
        .await;
    let seen = bob.sync(Some(&bob_since), 5_000, 1).await;
    let event = presence_of(&seen, &alice.user_id).unwrap_or_else(|| panic!("no presence for alice: {seen}"));
    assert_eq!(event["content"]["presence"], "unavailable");
    assert_eq!(event["content"]["status_msg"], "lunch");
    let unseen = carol.sync(Some(&carol_since), 0, 1).await;
    assert!(presence_of(&unseen, &alice.user_id).is_none(), "{unseen}");
    let (status, _) = carol
        .request(
            Method::GET,
            &format!("/presence/{}/status", encode(&alice.user_id)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

fn typing_in(sync: &Value, room_id: &str) -> Option<Vec<String>> {
    let events = sync["rooms"]["join"][room_id]["ephemeral"]["events"].as_array()?;
    let typing = events.iter().find(|e| e["type"] == "m.typing")?;
    Some(
        typing["content"]["user_ids"]
            .as_array()?
            .iter()
            .filter_map(|u| u.as_str().map(String::from))
            .collect(),
    )
}

#[tokio::test]
async fn typing_expires_on_time_and_wakes_the_long_poll() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let since = bob.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    let path = format!("/rooms/{}/typing/{}", encode(&room), encode(&alice.user_id));
    alice
        .ok(
            Method::PUT,
            &path,
            Some(&json!({ "typing": true, "timeout": 1500 })),
        )
        .await;
    let started = bob.sync(Some(&since), 5_000, 1).await;
    assert_eq!(
        typing_in(&started, &room),
        Some(vec![alice.user_id.clone()]),
        "{started}"
    );

    // The next long-poll returns when the notification times out, not at its own timeout.
    let next = started["next_batch"].as_str().unwrap().to_owned();
    let t0 = Instant::now();
    let stopped = bob.sync(Some(&next), 20_000, 1).await;
    let waited = t0.elapsed();
    assert_eq!(typing_in(&stopped, &room), Some(vec![]), "{stopped}");
    assert!(
        waited < Duration::from_secs(10),
        "typing expiry took {waited:?} to reach sync"
    );
}

fn unread(sync: &Value, room_id: &str) -> (u64, u64) {
    let counts = &sync["rooms"]["join"][room_id]["unread_notifications"];
    (
        counts["notification_count"].as_u64().unwrap_or(99),
        counts["highlight_count"].as_u64().unwrap_or(99),
    )
}

#[tokio::test]
async fn unread_counts_in_sync_follow_messages_mentions_and_receipts() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    carol.join(&room).await;
    let initial = bob.sync(None, 0, 5).await;
    assert!(
        initial["account_data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.push_rules"),
        "no m.push_rules in the initial sync"
    );
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    alice.send_text(&room, "hello all").await;
    let mention =
        json!({ "msgtype": "m.text", "body": "bob: look", "m.mentions": { "user_ids": [bob.user_id] } });
    let last = alice.send(&room, "m.room.message", mention).await;
    let seen = bob.sync(Some(&since), 5_000, 5).await;
    assert_eq!(unread(&seen, &room), (2, 1), "{}", seen["rooms"]["join"][&room]);
    // The sender's own messages never count for them.
    let theirs = alice.sync(None, 0, 5).await;
    assert_eq!(unread(&theirs, &room), (0, 0));

    // A read receipt on the newest event clears the counts, and the room comes down again.
    let next = seen["next_batch"].as_str().unwrap().to_owned();
    bob.ok(
        Method::POST,
        &format!("/rooms/{}/receipt/m.read/{}", encode(&room), encode(&last)),
        Some(&json!({})),
    )
    .await;
    let cleared = bob.sync(Some(&next), 5_000, 5).await;
    assert_eq!(
        unread(&cleared, &room),
        (0, 0),
        "{}",
        cleared["rooms"]["join"][&room]
    );
}
