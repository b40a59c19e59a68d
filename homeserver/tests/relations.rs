//! Relations over HTTP (issue 12): duplicate annotations, bundled aggregations (edits, threads,
//! references) wherever events are served, `/relations` and `/threads` with their pagination
//! and visibility, and relations reaching long-polls at once.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{Client, Server, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn public_room(alice: &Client, others: &[&Client]) -> String {
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    for other in others {
        other.join(&room).await;
    }
    room
}

fn react(target: &str, key: &str) -> Value {
    json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": key } })
}

fn edit(target: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("* {body}"),
        "m.new_content": { "msgtype": "m.text", "body": body },
        "m.relates_to": { "rel_type": "m.replace", "event_id": target },
    })
}

fn thread_reply(root: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": true,
            "m.in_reply_to": { "event_id": root },
        },
    })
}

async fn send_raw(client: &Client, room: &str, event_type: &str, content: &Value) -> (StatusCode, Value) {
    client
        .request(Method::PUT, &client.send_path(room, event_type), Some(content))
        .await
}

async fn get_event(client: &Client, room: &str, event_id: &str) -> Value {
    client
        .ok(
            Method::GET,
            &format!("/rooms/{}/event/{}", encode(room), encode(event_id)),
            None,
        )
        .await
}

fn relations_of(event: &Value) -> &Value {
    &event["unsigned"]["m.relations"]
}

async fn relations(client: &Client, room: &str, path: &str) -> (StatusCode, Value) {
    client
        .request_v1(Method::GET, &format!("/rooms/{}/relations/{path}", encode(room)))
        .await
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["event_id"].as_str().map(ToOwned::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_second_identical_annotation_is_refused_until_the_first_is_redacted() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice, &[&bob]).await;
    let message = alice.send_text(&room, "react to me").await;

    let first = bob.send(&room, "m.reaction", react(&message, "👍")).await;
    let (status, body) = send_raw(&bob, &room, "m.reaction", &react(&message, "👍")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_DUPLICATE_ANNOTATION");
    // Another key, another sender, another event type: all fine.
    bob.send(&room, "m.reaction", react(&message, "🎉")).await;
    alice.send(&room, "m.reaction", react(&message, "👍")).await;
    bob.send(&room, "org.example.vote", react(&message, "👍")).await;

    // Once redacted, the key is free again.
    bob.redact(&room, &first).await;
    bob.send(&room, "m.reaction", react(&message, "👍")).await;
    let (status, body) = send_raw(&bob, &room, "m.reaction", &react(&message, "👍")).await;
    assert_eq!(body["errcode"], "M_DUPLICATE_ANNOTATION", "{status} {body}");

    // Annotations are not bundled.
    let event = get_event(&alice, &room, &message).await;
    assert!(relations_of(&event).get("m.annotation").is_none(), "{event}");
}

#[tokio::test]
async fn identical_annotations_sent_at_once_are_stored_once() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = public_room(&alice, &[]).await;
    let message = alice.send_text(&room, "race").await;
    let content = react(&message, "🏁");
    let sends = (0..8).map(|_| send_raw(&alice, &room, "m.reaction", &content));
    let answers = futures_util::future::join_all(sends).await;
    let ok = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let dup = answers
        .iter()
        .filter(|(_, b)| b["errcode"] == "M_DUPLICATE_ANNOTATION")
        .count();
    assert_eq!((ok, dup), (1, 7), "{answers:?}");
}

#[tokio::test]
async fn the_latest_valid_edit_is_bundled() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice, &[&bob]).await;
    let message = alice.send_text(&room, "v0").await;

    let mut edits = Vec::new();
    for n in 1..=3 {
        edits.push(
            alice
                .send(&room, "m.room.message", edit(&message, &format!("v{n}")))
                .await,
        );
    }
    // Invalid edits, stored but ignored: another sender, another type, no m.new_content, and
    // an edit of an edit.
    bob.send(&room, "m.room.message", edit(&message, "bob's")).await;
    alice
        .send(&room, "org.example.other", edit(&message, "other type"))
        .await;
    alice
        .send(
            &room,
            "m.room.message",
            json!({ "body": "* x", "m.relates_to": { "rel_type": "m.replace", "event_id": message } }),
        )
        .await;
    let of_edit = alice
        .send(&room, "m.room.message", edit(&edits[0], "edit of edit"))
        .await;

    let event = get_event(&bob, &room, &message).await;
    let replace = &relations_of(&event)["m.replace"];
    assert_eq!(replace["event_id"], edits[2], "{event}");
    assert_eq!(replace["content"]["m.new_content"]["body"], "v3");
    assert_eq!(replace["sender"], alice.user_id);
    assert_eq!(event["content"]["body"], "v0", "the original's content stays");
    // The edit of an edit is never bundled on the edit it targets.
    let first = get_event(&bob, &room, &edits[0]).await;
    assert!(relations_of(&first).get("m.replace").is_none(), "{first}");
    assert!(!of_edit.is_empty());

    // A redacted edit no longer replaces: the one before it is the latest again.
    alice.redact(&room, &edits[2]).await;
    let event = get_event(&bob, &room, &message).await;
    assert_eq!(relations_of(&event)["m.replace"]["event_id"], edits[1], "{event}");

    // The same through /messages and /context.
    let page = bob
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=50", encode(&room)),
            None,
        )
        .await;
    let original = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == message)
        .expect("original in /messages")
        .clone();
    assert_eq!(relations_of(&original)["m.replace"]["event_id"], edits[1]);
    let context = bob
        .ok(
            Method::GET,
            &format!("/rooms/{}/context/{}?limit=4", encode(&room), encode(&message)),
            None,
        )
        .await;
    assert_eq!(relations_of(&context["event"])["m.replace"]["event_id"], edits[1]);

    // A redacted original loses its m.replace bundle.
    alice.redact(&room, &message).await;
    let event = get_event(&bob, &room, &message).await;
    assert!(relations_of(&event).get("m.replace").is_none(), "{event}");
}

#[tokio::test]
async fn threads_are_summarised_in_sync_messages_and_event() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = public_room(&alice, &[&bob, &carol]).await;
    let root = alice.send_text(&room, "root").await;
    let r1 = bob
        .send(&room, "m.room.message", thread_reply(&root, "one"))
        .await;
    let r2 = alice
        .send(&room, "m.room.message", thread_reply(&root, "two"))
        .await;
    let r3 = bob
        .send(&room, "m.room.message", thread_reply(&root, "three"))
        .await;
    // The latest reply's own edits are bundled on it.
    let r3_edit = bob.send(&room, "m.room.message", edit(&r3, "three!")).await;

    for viewer in [&bob, &carol] {
        let event = get_event(viewer, &room, &root).await;
        let thread = &relations_of(&event)["m.thread"];
        assert_eq!(thread["count"], 3, "{event}");
        assert_eq!(thread["latest_event"]["event_id"], r3);
        assert_eq!(
            thread["latest_event"]["unsigned"]["m.relations"]["m.replace"]["event_id"],
            r3_edit
        );
        assert_eq!(thread["current_user_participated"], viewer.user_id == bob.user_id);
    }

    let sync = carol.sync(None, 0, 50).await;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let in_sync = timeline
        .iter()
        .find(|e| e["event_id"] == root)
        .expect("root in sync");
    assert_eq!(relations_of(in_sync)["m.thread"]["count"], 3, "{in_sync}");

    let page = carol
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=50", encode(&room)),
            None,
        )
        .await;
    let in_messages = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root)
        .expect("root in /messages")
        .clone();
    assert_eq!(
        relations_of(&in_messages)["m.thread"]["latest_event"]["event_id"],
        r3
    );

    // A redacted reply leaves the count.
    bob.redact(&room, &r3).await;
    let event = get_event(&carol, &room, &root).await;
    assert_eq!(relations_of(&event)["m.thread"]["count"], 2, "{event}");
    assert_eq!(relations_of(&event)["m.thread"]["latest_event"]["event_id"], r2);

    // A thread cannot start from an event with a relation: a thread reply, an edit, a reaction.
    let reaction = carol.send(&room, "m.reaction", react(&root, "👀")).await;
    for parent in [&r1, &r3_edit, &reaction] {
        let (status, body) = send_raw(&carol, &room, "m.room.message", &thread_reply(parent, "nested")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errcode"], "M_UNKNOWN");
    }
    // A reply (m.in_reply_to only) can be a thread root.
    let reply = carol
        .send(
            &room,
            "m.room.message",
            json!({ "body": "re", "m.relates_to": { "m.in_reply_to": { "event_id": root } } }),
        )
        .await;
    carol
        .send(&room, "m.room.message", thread_reply(&reply, "ok"))
        .await;
}

#[tokio::test]
async fn threads_lists_roots_by_latest_activity() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice, &[&bob]).await;
    let a = alice.send_text(&room, "thread a").await;
    let b = alice.send_text(&room, "thread b").await;
    let c = bob.send_text(&room, "thread c").await;
    alice.send(&room, "m.room.message", thread_reply(&a, "a1")).await;
    bob.send(&room, "m.room.message", thread_reply(&b, "b1")).await;
    alice.send(&room, "m.room.message", thread_reply(&c, "c1")).await;
    alice.send(&room, "m.room.message", thread_reply(&a, "a2")).await;

    let path = format!("/rooms/{}/threads", encode(&room));
    let (status, all) = bob.request_v1(Method::GET, &path).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(ids(&all["chunk"]), vec![a.clone(), c.clone(), b.clone()]);
    assert_eq!(all["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 2);

    // Bob replied in b and started c.
    let (_, mine) = bob
        .request_v1(Method::GET, &format!("{path}?include=participated"))
        .await;
    assert_eq!(ids(&mine["chunk"]), vec![c.clone(), b.clone()], "{mine}");

    // Pagination, one at a time, without loss or repetition.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..5 {
        let query = match &from {
            Some(token) => format!("{path}?limit=1&from={}", encode(token)),
            None => format!("{path}?limit=1"),
        };
        let (status, page) = bob.request_v1(Method::GET, &query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page["chunk"]));
        match page["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, vec![a, c, b]);

    // Outsiders of a private room get 403; a bad token 400.
    let eve = server.register("eve").await;
    let private = alice.create_room(json!({ "preset": "private_chat" })).await;
    let (status, _) = eve
        .request_v1(Method::GET, &format!("/rooms/{}/threads", encode(&private)))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = bob.request_v1(Method::GET, &format!("{path}?from=garbage")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn relations_paginate_both_ways_without_loss_or_repetition() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice, &[&bob]).await;
    let root = alice.send_text(&room, "root").await;
    let mut children = Vec::new();
    for n in 0..4 {
        children.push(
            bob.send(&room, "m.room.message", thread_reply(&root, &format!("r{n}")))
                .await,
        );
        alice.send_text(&room, "noise").await;
        children.push(
            alice
                .send(&room, "m.reaction", react(&root, &format!("k{n}")))
                .await,
        );
    }
    let reference = bob
        .send(
            &room,
            "m.room.message",
            json!({ "body": "see", "m.relates_to": { "rel_type": "m.reference", "event_id": root } }),
        )
        .await;
    children.push(reference.clone());

    // Backwards (the default): newest first.
    let mut backwards = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let query = match &from {
            Some(token) => format!("{}?limit=3&from={}", encode(&root), encode(token)),
            None => format!("{}?limit=3", encode(&root)),
        };
        let (status, page) = relations(&bob, &room, &query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page["chunk"].as_array().unwrap().len() <= 3);
        backwards.extend(ids(&page["chunk"]));
        match page["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected = children.clone();
    expected.reverse();
    assert_eq!(backwards, expected);

    // Forwards: oldest first.
    let mut forwards = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let query = match &from {
            Some(token) => format!("{}?dir=f&limit=2&from={}", encode(&root), encode(token)),
            None => format!("{}?dir=f&limit=2", encode(&root)),
        };
        let (_, page) = relations(&bob, &room, &query).await;
        forwards.extend(ids(&page["chunk"]));
        match page["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(forwards, children);

    // By relation type, and by relation and event type.
    let (_, threads) = relations(&bob, &room, &format!("{}/m.thread", encode(&root))).await;
    assert_eq!(ids(&threads["chunk"]).len(), 4);
    let (_, reactions) = relations(&bob, &room, &format!("{}/m.annotation/m.reaction", encode(&root))).await;
    assert_eq!(ids(&reactions["chunk"]).len(), 4);
    let (_, none) = relations(
        &bob,
        &room,
        &format!("{}/m.annotation/m.room.message", encode(&root)),
    )
    .await;
    assert!(ids(&none["chunk"]).is_empty());

    // The reference is bundled as a chunk of event IDs.
    let event = get_event(&bob, &room, &root).await;
    assert_eq!(
        relations_of(&event)["m.reference"]["chunk"],
        json!([{ "event_id": reference }])
    );

    // recurse: a reaction to a thread reply is a grandchild.
    let grandchild = alice.send(&room, "m.reaction", react(&children[0], "🙂")).await;
    let (_, flat) = relations(&bob, &room, &format!("{}?limit=100", encode(&root))).await;
    assert!(!ids(&flat["chunk"]).contains(&grandchild));
    let (_, deep) = relations(&bob, &room, &format!("{}?limit=100&recurse=true", encode(&root))).await;
    assert!(ids(&deep["chunk"]).contains(&grandchild), "{deep}");
    assert_eq!(deep["recursion_depth"], 3);

    // Hostile: unknown event 404, bad token 400, absurd limit clamped, outsider 403/404.
    let (status, _) = relations(&bob, &room, &encode("$nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = relations(&bob, &room, &format!("{}?from=xyz", encode(&root))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, page) = relations(&bob, &room, &format!("{}?limit=100000000", encode(&root))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page["chunk"]).len(), children.len());
    let private = alice.create_room(json!({ "preset": "private_chat" })).await;
    let secret = alice.send_text(&private, "secret").await;
    let (status, _) = relations(&bob, &private, &encode(&secret)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_former_member_sees_no_relation_sent_after_they_left() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [{
            "type": "m.room.history_visibility", "state_key": "",
            "content": { "history_visibility": "joined" } }] }))
        .await;
    bob.join(&room).await;
    let root = alice.send_text(&room, "root").await;
    let before = alice
        .send(&room, "m.room.message", thread_reply(&root, "before"))
        .await;
    let seen_edit = alice.send(&room, "m.room.message", edit(&root, "seen")).await;
    bob.leave(&room).await;
    let after = alice
        .send(&room, "m.room.message", thread_reply(&root, "after"))
        .await;
    alice.send(&room, "m.reaction", react(&root, "🤫")).await;
    alice.send(&room, "m.room.message", edit(&root, "unseen")).await;

    let (status, page) = relations(&bob, &room, &encode(&root)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let got = ids(&page["chunk"]);
    assert!(got.contains(&before) && !got.contains(&after), "{got:?}");
    assert_eq!(got.len(), 2, "{got:?}");
    let event = get_event(&bob, &room, &root).await;
    assert_eq!(relations_of(&event)["m.thread"]["count"], 1, "{event}");
    assert_eq!(
        relations_of(&event)["m.thread"]["latest_event"]["event_id"],
        before
    );
    assert_eq!(relations_of(&event)["m.replace"]["event_id"], seen_edit);
    let (_, threads) = bob
        .request_v1(Method::GET, &format!("/rooms/{}/threads", encode(&room)))
        .await;
    assert_eq!(ids(&threads["chunk"]), vec![root.clone()]);

    // Alice sees everything.
    let event = get_event(&alice, &room, &root).await;
    assert_eq!(relations_of(&event)["m.thread"]["count"], 2);
}

#[tokio::test]
async fn relations_to_an_event_of_another_room_are_ignored() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let one = public_room(&alice, &[]).await;
    let two = public_room(&alice, &[]).await;
    let root = alice.send_text(&one, "root").await;
    // Stored (the spec ignores such relations, it does not refuse them)…
    alice
        .send(&two, "m.room.message", thread_reply(&root, "elsewhere"))
        .await;
    alice.send(&two, "m.room.message", edit(&root, "elsewhere")).await;
    alice.send(&two, "m.reaction", react(&root, "👍")).await;
    // …but neither aggregated nor listed, and the key stays free in the parent's room.
    alice.send(&one, "m.reaction", react(&root, "👍")).await;
    let event = get_event(&alice, &one, &root).await;
    assert!(relations_of(&event).get("m.thread").is_none(), "{event}");
    assert!(relations_of(&event).get("m.replace").is_none(), "{event}");
    let (_, page) = relations(&alice, &one, &encode(&root)).await;
    assert_eq!(ids(&page["chunk"]).len(), 1, "{page}");
}

#[tokio::test]
async fn reactions_and_edits_wake_other_members_long_polls() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice, &[&bob]).await;
    let message = alice.send_text(&room, "hi").await;
    let mut since = bob.sync(None, 0, 10).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    for content in [react(&message, "❤️"), edit(&message, "hello")] {
        let event_type = if content["m.relates_to"]["rel_type"] == "m.annotation" {
            "m.reaction"
        } else {
            "m.room.message"
        };
        let poll = {
            let bob = bob.clone();
            let since = since.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let sync = bob.sync(Some(&since), 20_000, 10).await;
                (sync, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = alice.send(&room, event_type, content.clone()).await;
        let (sync, waited) = poll.await.unwrap();
        assert!(waited < Duration::from_secs(10), "woken after {waited:?}");
        let got: BTreeSet<String> = common::timeline_ids(&sync, &room).into_iter().collect();
        assert!(got.contains(&sent), "{sync}");
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
}

#[tokio::test]
async fn edits_do_not_notify_again_and_threads_count_apart() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice, &[&bob]).await;
    let root = alice.send_text(&room, "one").await;
    let filter = json!({ "room": { "timeline": { "limit": 5, "unread_thread_notifications": true } } });
    let counts = |sync: &Value| {
        (
            sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"].clone(),
            sync["rooms"]["join"][&room]["unread_thread_notifications"].clone(),
        )
    };
    let sync_path = format!("/sync?filter={}", encode(&filter.to_string()));
    let before = bob.ok(Method::GET, &sync_path, None).await;
    assert_eq!(counts(&before).0, 1, "{before}");

    alice
        .send(&room, "m.room.message", edit(&root, "one, edited"))
        .await;
    let after_edit = bob.ok(Method::GET, &sync_path, None).await;
    assert_eq!(counts(&after_edit).0, 1, "an edit does not notify: {after_edit}");

    alice
        .send(&room, "m.room.message", thread_reply(&root, "in thread"))
        .await;
    alice
        .send(&room, "m.room.message", thread_reply(&root, "in thread again"))
        .await;
    let after_thread = bob.ok(Method::GET, &sync_path, None).await;
    let (main, threads) = counts(&after_thread);
    assert_eq!(main, 1, "{after_thread}");
    assert_eq!(threads[&root]["notification_count"], 2, "{after_thread}");
}

#[tokio::test]
async fn related_by_filters_keep_events_with_such_children() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice, &[&bob]).await;
    let root = alice.send_text(&room, "root").await;
    let reacted = alice.send_text(&room, "reacted").await;
    alice.send_text(&room, "plain").await;
    let reply = bob.send(&room, "m.room.message", thread_reply(&root, "r")).await;
    bob.send(&room, "m.reaction", react(&reacted, "👍")).await;

    let messages = |filter: Value| {
        let alice = alice.clone();
        let room = room.clone();
        async move {
            alice
                .request(
                    Method::GET,
                    &format!(
                        "/rooms/{}/messages?dir=b&limit=50&filter={}",
                        encode(&room),
                        encode(&filter.to_string())
                    ),
                    None,
                )
                .await
        }
    };
    let (status, page) = messages(json!({ "related_by_rel_types": ["m.thread"] })).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page["chunk"]), vec![root.clone()]);
    let (_, page) = messages(json!({ "related_by_senders": [bob.user_id] })).await;
    assert_eq!(ids(&page["chunk"]), vec![reacted.clone(), root.clone()]);
    let (_, page) =
        messages(json!({ "related_by_senders": [alice.user_id], "related_by_rel_types": ["m.thread"] }))
            .await;
    assert!(ids(&page["chunk"]).is_empty(), "{page}");

    // /sync applies it to timelines.
    let filter = json!({ "room": { "timeline": { "related_by_rel_types": ["m.annotation"] } } });
    let sync = alice
        .ok(
            Method::GET,
            &format!("/sync?filter={}", encode(&filter.to_string())),
            None,
        )
        .await;
    assert_eq!(common::timeline_ids(&sync, &room), vec![reacted]);

    // Hostile: too long a list.
    let many: Vec<String> = (0..1001).map(|n| format!("@u{n}:x")).collect();
    let (status, body) = messages(json!({ "related_by_senders": many })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(!reply.is_empty());
}
