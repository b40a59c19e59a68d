//! Client-Server API §"Forming relationships between events" and the relationship types:
//! §"Event annotations and reactions" (duplicate annotations), §"Event replacements" (the
//! `m.replace` aggregation), §"Threading" (validation, the `m.thread` aggregation,
//! `GET /threads`), §"Reference relations" and `GET /relations` pagination.

use conformance_tests::{conformance_test, enc};
use serde_json::{Value, json};

const V1: &str = "/_matrix/client/v1";

fn react(target: &str, key: &str) -> Value {
    json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}})
}

fn thread(root: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body,
           "m.relates_to": {"rel_type": "m.thread", "event_id": root,
                            "is_falling_back": true, "m.in_reply_to": {"event_id": root}}})
}

fn edit(target: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": format!("* {body}"),
           "m.new_content": {"msgtype": "m.text", "body": body},
           "m.relates_to": {"rel_type": "m.replace", "event_id": target}})
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

conformance_test! {
    /// §Avoiding duplicate annotations: a second annotation with the same type and key on the
    /// same event by the same sender is 400 `M_DUPLICATE_ANNOTATION`, until the first is redacted.
    async fn duplicate_annotation_is_refused(hs) {
        let alice = hs.user("dupann").await;
        let room = alice.create_room(json!({})).await;
        let target = alice.send_text(&room, "react").await;
        let first = alice.send(&room, "m.reaction", react(&target, "👍")).await;
        alice
            .send_txn(&room, "m.reaction", &alice.txn_id(), &react(&target, "👍"))
            .await
            .expect_err(400, "M_DUPLICATE_ANNOTATION");
        alice.send(&room, "m.reaction", react(&target, "👎")).await;
        alice.redact(&room, &first, &json!({})).await.ok();
        alice.send(&room, "m.reaction", react(&target, "👍")).await;
    }
}

conformance_test! {
    /// §Server-side aggregation of `m.replace` relationships: the most recent valid edit is
    /// bundled in `unsigned.m.relations`; an edit by another user is not valid.
    async fn latest_edit_is_bundled(hs) {
        let alice = hs.user("edits").await;
        let bob = hs.user("edits-b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let original = alice.send_text(&room, "v0").await;
        alice.send(&room, "m.room.message", edit(&original, "v1")).await;
        let latest = alice.send(&room, "m.room.message", edit(&original, "v2")).await;
        bob.send(&room, "m.room.message", edit(&original, "not valid")).await;
        let event = bob.get_event(&room, &original).await.ok().clone();
        let replace = &event["unsigned"]["m.relations"]["m.replace"];
        assert_eq!(replace["event_id"], json!(latest), "{event}");
        assert_eq!(event["content"]["body"], "v0", "the original content is left intact");
    }
}

conformance_test! {
    /// §Server-side aggregation of `m.thread` relationships: `latest_event`, `count` and
    /// `current_user_participated` on the root.
    async fn thread_summary_is_bundled(hs) {
        let alice = hs.user("thr").await;
        let bob = hs.user("thr-b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let root = alice.send_text(&room, "root").await;
        alice.send(&room, "m.room.message", thread(&root, "one")).await;
        let last = alice.send(&room, "m.room.message", thread(&root, "two")).await;
        let event = bob.get_event(&room, &root).await.ok().clone();
        let summary = &event["unsigned"]["m.relations"]["m.thread"];
        assert_eq!(summary["count"], 2, "{event}");
        assert_eq!(summary["latest_event"]["event_id"], json!(last));
        assert_eq!(summary["current_user_participated"], false);
        let event = alice.get_event(&room, &root).await.ok().clone();
        assert_eq!(event["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], true);
    }
}

conformance_test! {
    /// §Validation of `m.thread` relationships: a thread cannot start from an event that itself
    /// has a relation (HTTP 400).
    async fn thread_from_a_relation_is_refused(hs) {
        let alice = hs.user("thrbad").await;
        let room = alice.create_room(json!({})).await;
        let root = alice.send_text(&room, "root").await;
        let reply = alice.send(&room, "m.room.message", thread(&root, "in thread")).await;
        let resp = alice.send_txn(&room, "m.room.message", &alice.txn_id(), &thread(&reply, "nested")).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
    }
}

conformance_test! {
    /// §Querying threads in a room: `GET /threads` lists thread roots, most recently active
    /// first; `include=participated` only those the user took part in.
    async fn threads_are_listed(hs) {
        let alice = hs.user("thrlist").await;
        let bob = hs.user("thrlist-b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let first = alice.send_text(&room, "first").await;
        let second = alice.send_text(&room, "second").await;
        bob.send(&room, "m.room.message", thread(&first, "b")).await;
        alice.send(&room, "m.room.message", thread(&second, "a")).await;
        let all = bob.get(&format!("{V1}/rooms/{}/threads", enc(&room))).await.ok().clone();
        assert_eq!(ids(&all["chunk"]), vec![second.clone(), first.clone()], "{all}");
        let mine = bob
            .get(&format!("{V1}/rooms/{}/threads?include=participated", enc(&room)))
            .await
            .ok()
            .clone();
        assert_eq!(ids(&mine["chunk"]), vec![first.clone()], "{mine}");
    }
}

conformance_test! {
    /// §Server-side aggregation of `m.reference`: a `chunk` of the referencing events' IDs.
    async fn references_are_bundled(hs) {
        let alice = hs.user("refs").await;
        let room = alice.create_room(json!({})).await;
        let target = alice.send_text(&room, "target").await;
        let reference = alice.send(&room, "m.room.message", json!({"msgtype": "m.text", "body": "see",
            "m.relates_to": {"rel_type": "m.reference", "event_id": target}})).await;
        let event = alice.get_event(&room, &target).await.ok().clone();
        assert_eq!(event["unsigned"]["m.relations"]["m.reference"]["chunk"],
            json!([{"event_id": reference}]), "{event}");
    }
}

conformance_test! {
    /// `GET /relations/{eventId}`: pages of `limit` children, newest first, continued with
    /// `next_batch` until every child was returned once.
    async fn relations_paginate(hs) {
        let alice = hs.user("relpage").await;
        let room = alice.create_room(json!({})).await;
        let root = alice.send_text(&room, "root").await;
        let mut sent = Vec::new();
        for key in ["a", "b", "c", "d", "e"] {
            sent.push(alice.send(&room, "m.reaction", react(&root, key)).await);
        }
        let mut got = Vec::new();
        let mut from: Option<String> = None;
        for _ in 0..10 {
            let mut path = format!("{V1}/rooms/{}/relations/{}?limit=2", enc(&room), enc(&root));
            if let Some(from) = &from {
                path.push_str(&format!("&from={}", enc(from)));
            }
            let page = alice.get(&path).await.ok().clone();
            got.extend(ids(&page["chunk"]));
            match page["next_batch"].as_str() {
                Some(next) => from = Some(next.to_owned()),
                None => break,
            }
        }
        sent.reverse();
        assert_eq!(got, sent);
    }
}
