//! Push notifications end to end: the push rule outcome stored for each (user, event), the
//! unread counts the sync engine reads, the push rule API, pushers, and delivery to a push
//! gateway. Runs the real binary on SQLite or PostgreSQL (`HEARTH_TEST_DB`).

mod common;

use std::time::{Duration, Instant};

use common::{Client, Server, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{AnyPool, Row};
use wiremock::MockServer;

/// Bob's stored outcome for an event: `None` when it does not notify him, else (highlight,
/// thread ID).
async fn outcome(db: &AnyPool, user: &str, event_id: &str) -> Option<(bool, Option<String>)> {
    sqlx::query(
        "SELECT a.highlight, a.thread_id FROM event_push_outcomes a JOIN events e \
         ON e.stream_ordering = a.stream_ordering JOIN push_audience_members m \
         ON m.audience_id = a.audience_id WHERE m.user_id = $1 AND e.event_id = $2 AND a.notify = 1",
    )
    .bind(user.to_owned())
    .bind(event_id.to_owned())
    .fetch_optional(db)
    .await
    .expect("read event_push_outcomes")
    .map(|r| (r.get::<i64, _>(0) != 0, r.get::<Option<String>, _>(1)))
}

/// Bob's `/notifications` entry for an event.
async fn notification(client: &Client, event_id: &str) -> Option<Value> {
    let list = client.ok(Method::GET, "/notifications?limit=1000", None).await;
    list["notifications"]
        .as_array()
        .expect("notifications array")
        .iter()
        .find(|n| n["event"]["event_id"] == event_id)
        .cloned()
}

/// Sets the profile display name (which updates the member event in every joined room).
async fn set_displayname(client: &Client, name: &str) {
    client
        .ok(
            Method::PUT,
            &format!("/profile/{}/displayname", encode(&client.user_id)),
            Some(&json!({"displayname": name})),
        )
        .await;
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

/// Services on the running server's database, to call the library's `unread_counts` directly.
async fn services(server: &Server) -> hearth::services::Services {
    let store = hearth::store::Store::connect(&server.db_url, Some(2))
        .await
        .expect("open the server's store");
    let mut config = hearth::config::Config::dev();
    config.server_name = common::SERVER_NAME.to_owned();
    hearth::services::Services::new(
        config,
        store,
        hearth_federation::SigningKey::generate("test").expect("key"),
        std::sync::Arc::new(hearth::sync::notifier::LocalNotifier::default()),
    )
}

struct Case {
    name: &'static str,
    /// Room: "group" (alice, bob, carol) or "dm" (alice, bob).
    room: &'static str,
    /// Who sends: "alice" (room creator, power 100) or "carol" (power 0).
    sender: &'static str,
    event_type: &'static str,
    content: Value,
    /// Expected for bob: None = no notification, Some(highlight).
    expect: Option<bool>,
}

#[tokio::test]
async fn push_rule_outcomes_per_case() {
    let server = Server::start().await;
    let db = server.db().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let group = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&group).await;
    carol.join(&group).await;
    let dm = alice
        .create_room(json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true}))
        .await;
    bob.join(&dm).await;
    // Bob's display name in the group room.
    set_displayname(&bob, "Bobby Tables").await;
    let original = alice.send_text(&group, "original").await;

    let cases = vec![
        Case {
            name: "plain message in a group room notifies without highlight (.m.rule.message)",
            room: "group",
            sender: "alice",
            event_type: "m.room.message",
            content: text("hello all"),
            expect: Some(false),
        },
        Case {
            name: "m.mentions.user_ids with bob highlights (.m.rule.is_user_mention)",
            room: "group",
            sender: "carol",
            event_type: "m.room.message",
            content: json!({"msgtype": "m.text", "body": "bob: look", "m.mentions": {"user_ids": [bob.user_id]}}),
            expect: Some(true),
        },
        Case {
            name: "m.mentions.user_ids naming someone else does not highlight bob",
            room: "group",
            sender: "alice",
            event_type: "m.room.message",
            content: json!({"msgtype": "m.text", "body": "carol: look", "m.mentions": {"user_ids": [carol.user_id]}}),
            expect: Some(false),
        },
        Case {
            name: "@room from a sender with power >= notifications.room highlights",
            room: "group",
            sender: "alice",
            event_type: "m.room.message",
            content: json!({"msgtype": "m.text", "body": "@room hi", "m.mentions": {"room": true}}),
            expect: Some(true),
        },
        Case {
            name: "@room from a sender without the power only notifies",
            room: "group",
            sender: "carol",
            event_type: "m.room.message",
            content: json!({"msgtype": "m.text", "body": "@room hi", "m.mentions": {"room": true}}),
            expect: Some(false),
        },
        Case {
            name: "display name in the body without m.mentions only notifies (legacy rule removed in v1.17)",
            room: "group",
            sender: "alice",
            event_type: "m.room.message",
            content: text("Bobby Tables, hi"),
            expect: Some(false),
        },
        Case {
            name: "message in a one-to-one room notifies (.m.rule.room_one_to_one)",
            room: "dm",
            sender: "alice",
            event_type: "m.room.message",
            content: text("just us"),
            expect: Some(false),
        },
        Case {
            name: "notices are suppressed (.m.rule.suppress_notices)",
            room: "group",
            sender: "alice",
            event_type: "m.room.message",
            content: json!({"msgtype": "m.notice", "body": "bot says hi"}),
            expect: None,
        },
        Case {
            name: "edits are suppressed (.m.rule.suppress_edits)",
            room: "group",
            sender: "alice",
            event_type: "m.room.message",
            content: json!({
                "msgtype": "m.text", "body": "* edited",
                "m.mentions": {},
                "m.new_content": {"msgtype": "m.text", "body": "edited"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": original},
            }),
            expect: None,
        },
        Case {
            // .m.rule.is_user_mention comes before .m.rule.suppress_edits, and an edit's
            // m.mentions holds only the users it newly mentions.
            name: "an edit that newly mentions bob highlights",
            room: "group",
            sender: "alice",
            event_type: "m.room.message",
            content: json!({
                "msgtype": "m.text", "body": "* edited, bob",
                "m.mentions": {"user_ids": [bob.user_id]},
                "m.new_content": {"msgtype": "m.text", "body": "edited, bob", "m.mentions": {"user_ids": [bob.user_id]}},
                "m.relates_to": {"rel_type": "m.replace", "event_id": original},
            }),
            expect: Some(true),
        },
        Case {
            name: "reactions are suppressed (.m.rule.reaction)",
            room: "group",
            sender: "alice",
            event_type: "m.reaction",
            content: json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "👍"}}),
            expect: None,
        },
        Case {
            name: "unknown event types match no rule",
            room: "group",
            sender: "alice",
            event_type: "org.example.custom",
            content: json!({"body": "x"}),
            expect: None,
        },
        Case {
            name: "call invites notify (.m.rule.call)",
            room: "group",
            sender: "alice",
            event_type: "m.call.invite",
            content: json!({"call_id": "c1", "lifetime": 60000, "version": "1", "offer": {"type": "offer", "sdp": "v=0"}}),
            expect: Some(false),
        },
        Case {
            name: "encrypted events notify (.m.rule.encrypted)",
            room: "group",
            sender: "alice",
            event_type: "m.room.encrypted",
            content: json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "abc", "sender_key": "k", "session_id": "s", "device_id": "D"}),
            expect: Some(false),
        },
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let room = if case.room == "group" { &group } else { &dm };
        let sender = if case.sender == "alice" { &alice } else { &carol };
        let event_id = sender.send(room, case.event_type, case.content.clone()).await;
        let got = outcome(&db, &bob.user_id, &event_id).await.map(|(h, _)| h);
        if got != case.expect {
            failures.push(format!(
                "{}: expected {:?}, stored {:?}",
                case.name, case.expect, got
            ));
        }
        // The sender is never notified of their own event.
        assert_eq!(
            outcome(&db, &sender.user_id, &event_id).await,
            None,
            "{}",
            case.name
        );
        // /notifications lists exactly the notifying events, with the actions and the event.
        let listed = notification(&bob, &event_id).await;
        match (&case.expect, &listed) {
            (None, None) => {}
            (Some(highlight), Some(entry)) => {
                assert_eq!(entry["room_id"], json!(room), "{}", case.name);
                assert_eq!(entry["read"], json!(false), "{}", case.name);
                assert_eq!(entry["event"]["type"], json!(case.event_type), "{}", case.name);
                assert!(entry["ts"].as_i64().is_some(), "{}", case.name);
                let actions = entry["actions"].as_array().expect("actions");
                assert!(actions.contains(&json!("notify")), "{}: {entry}", case.name);
                assert_eq!(
                    actions.contains(&json!({"set_tweak": "highlight"})),
                    *highlight,
                    "{}: {entry}",
                    case.name
                );
            }
            _ => failures.push(format!("{}: /notifications entry {listed:?}", case.name)),
        }
    }
    assert!(failures.is_empty(), "failed cases:\n{}", failures.join("\n"));

    // The DM message carried the room_one_to_one sound tweak; the group message did not.
    let list = bob.ok(Method::GET, "/notifications?limit=1000", None).await;
    let dm_entry = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["room_id"] == dm)
        .expect("DM notification")
        .clone();
    assert!(
        dm_entry["actions"]
            .as_array()
            .unwrap()
            .contains(&json!({"set_tweak": "sound", "value": "default"})),
        "{dm_entry}"
    );
    // only=highlight keeps only the highlights: the user mention, the @room, the edit.
    let highlights = bob.ok(Method::GET, "/notifications?only=highlight", None).await;
    let expected = cases.iter().filter(|c| c.expect == Some(true)).count();
    assert_eq!(expected, 3);
    assert_eq!(
        highlights["notifications"].as_array().unwrap().len(),
        expected,
        "{highlights}"
    );
}

#[tokio::test]
async fn user_rules_change_outcomes() {
    let server = Server::start().await;
    let db = server.db().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let quiet = alice.create_room(json!({"preset": "public_chat"})).await;
    let quieter = alice.create_room(json!({"preset": "public_chat"})).await;
    for r in [&room, &quiet, &quieter] {
        bob.join(r).await;
        carol.join(r).await;
    }
    set_displayname(&bob, "Bobby").await;

    // A keyword content rule: whole words, case-insensitive.
    bob.ok(
        Method::PUT,
        "/pushrules/global/content/cake",
        Some(&json!({"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]})),
    )
    .await;
    let hit = alice.send_text(&room, "Who wants CAKE?").await;
    let miss = alice.send_text(&room, "cupcakes for all").await;
    assert_eq!(outcome(&db, &bob.user_id, &hit).await, Some((true, None)));
    assert_eq!(outcome(&db, &bob.user_id, &miss).await, Some((false, None)));

    // A user override rule with contains_display_name.
    bob.ok(
        Method::PUT,
        "/pushrules/global/override/my_name",
        Some(&json!({"conditions": [{"kind": "contains_display_name"}], "actions": ["notify", {"set_tweak": "highlight"}]})),
    )
    .await;
    let named = alice.send_text(&room, "hey Bobby, lunch?").await;
    let other = alice.send_text(&room, "hey Bobbyx").await;
    assert_eq!(outcome(&db, &bob.user_id, &named).await, Some((true, None)));
    assert_eq!(outcome(&db, &bob.user_id, &other).await, Some((false, None)));

    // Muting: a room rule with no actions; an override rule on room_id with dont_notify.
    bob.ok(
        Method::PUT,
        &format!("/pushrules/global/room/{}", encode(&quiet)),
        Some(&json!({"actions": []})),
    )
    .await;
    bob.ok(
        Method::PUT,
        &format!("/pushrules/global/override/{}", encode(&quieter)),
        Some(&json!({"conditions": [{"kind": "event_match", "key": "room_id", "pattern": quieter}], "actions": ["dont_notify"]})),
    )
    .await;
    let muted = alice.send_text(&quiet, "anyone?").await;
    let muted_too = alice.send_text(&quieter, "anyone?").await;
    let still = alice.send_text(&room, "still here").await;
    assert_eq!(outcome(&db, &bob.user_id, &muted).await, None);
    assert_eq!(outcome(&db, &bob.user_id, &muted_too).await, None);
    assert_eq!(outcome(&db, &bob.user_id, &still).await, Some((false, None)));
    // Carol has no such rules: she is notified in the muted rooms.
    assert_eq!(outcome(&db, &carol.user_id, &muted).await, Some((false, None)));
    // Override rules come before room rules: a mention (.m.rule.is_user_mention) in the room
    // muted by a room rule still highlights.
    let mention = alice
        .send(
            &quiet,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}}),
        )
        .await;
    assert_eq!(outcome(&db, &bob.user_id, &mention).await, Some((true, None)));

    // A sender rule.
    bob.ok(
        Method::PUT,
        &format!("/pushrules/global/sender/{}", encode(&carol.user_id)),
        Some(&json!({"actions": []})),
    )
    .await;
    let from_carol = carol.send_text(&room, "from carol").await;
    assert_eq!(outcome(&db, &bob.user_id, &from_carol).await, None);

    // Disabling a rule makes it never match; the master rule silences everything.
    bob.ok(
        Method::PUT,
        "/pushrules/global/content/cake/enabled",
        Some(&json!({"enabled": false})),
    )
    .await;
    let cake_again = alice.send_text(&room, "cake again").await;
    assert_eq!(outcome(&db, &bob.user_id, &cake_again).await, Some((false, None)));
    bob.ok(
        Method::PUT,
        "/pushrules/global/override/.m.rule.master/enabled",
        Some(&json!({"enabled": true})),
    )
    .await;
    let silenced = alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}}),
        )
        .await;
    assert_eq!(outcome(&db, &bob.user_id, &silenced).await, None);

    // Rules survive a restart (stored as m.push_rules account data).
    let mut server = server;
    server.restart().await;
    let after_restart = alice.send_text(&room, "after restart").await;
    assert_eq!(outcome(&db, &bob.user_id, &after_restart).await, None);
}

#[tokio::test]
async fn invites_and_threads_are_counted() {
    let server = Server::start().await;
    let db = server.db().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    carol.join(&room).await;

    // An invite notifies the invitee (.m.rule.invite_for_me) though not joined yet.
    let dave = server.register("dave").await;
    alice.invite(&room, &dave.user_id).await;
    let invite_event =
        alice.room_state_ids(&room).await[&("m.room.member".to_owned(), dave.user_id.clone())].clone();
    assert_eq!(
        outcome(&db, &dave.user_id, &invite_event).await,
        Some((false, None))
    );
    // Others are not notified of member events (.m.rule.member_event).
    assert_eq!(outcome(&db, &bob.user_id, &invite_event).await, None);
    // Invites made by createRoom (stored with the room's first events) notify too.
    let erin = server.register("erin").await;
    let dm = alice
        .create_room(json!({"preset": "trusted_private_chat", "invite": [erin.user_id], "is_direct": true}))
        .await;
    let dm_invite =
        alice.room_state_ids(&dm).await[&("m.room.member".to_owned(), erin.user_id.clone())].clone();
    assert_eq!(outcome(&db, &erin.user_id, &dm_invite).await, Some((false, None)));

    let svc = services(&server).await;
    let before = hearth::push::unread_counts(&svc, &bob.user_id, &room, 0)
        .await
        .unwrap();
    assert_eq!(before, hearth::push::Counts::default());

    let root = alice.send_text(&room, "thread root").await;
    let in_thread = |body: &str, mention: bool| {
        let mut content = json!({
            "msgtype": "m.text", "body": body,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true, "m.in_reply_to": {"event_id": root}},
        });
        if mention {
            content["m.mentions"] = json!({"user_ids": [bob.user_id]});
        }
        content
    };
    let r1 = carol
        .send(&room, "m.room.message", in_thread("first", false))
        .await;
    let r2 = alice
        .send(&room, "m.room.message", in_thread("second", true))
        .await;
    let main = alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "main", "m.mentions": {"user_ids": [bob.user_id]}}),
        )
        .await;
    let bob_own = bob.send(&room, "m.room.message", in_thread("mine", false)).await;

    assert_eq!(
        outcome(&db, &bob.user_id, &r1).await,
        Some((false, Some(root.clone())))
    );
    assert_eq!(
        outcome(&db, &bob.user_id, &r2).await,
        Some((true, Some(root.clone())))
    );
    assert_eq!(outcome(&db, &bob.user_id, &bob_own).await, None);

    let counts = hearth::push::unread_counts(&svc, &bob.user_id, &room, 0)
        .await
        .unwrap();
    // Main timeline: the root and the main mention; the thread: two replies, one highlight.
    assert_eq!(counts.notification_count, 2, "{counts:?}");
    assert_eq!(counts.highlight_count, 1, "{counts:?}");
    assert_eq!(counts.per_thread.get(&root), Some(&(2, 1)), "{counts:?}");
    assert_eq!(counts.total_notifications(), 4);
    assert_eq!(counts.total_highlights(), 2);

    // Counting after a position (a read receipt) leaves out what came before it.
    let stream_of = |event_id: String| {
        let db = db.clone();
        async move {
            sqlx::query("SELECT stream_ordering FROM events WHERE event_id = $1")
                .bind(event_id)
                .fetch_one(&db)
                .await
                .unwrap()
                .get::<i64, _>(0)
        }
    };
    let after_r2 = hearth::push::unread_counts(&svc, &bob.user_id, &room, stream_of(r2.clone()).await)
        .await
        .unwrap();
    assert_eq!(after_r2.notification_count, 1);
    assert_eq!(after_r2.highlight_count, 1);
    assert!(after_r2.per_thread.is_empty(), "{after_r2:?}");
    let after_main = hearth::push::unread_counts(&svc, &bob.user_id, &room, stream_of(main).await)
        .await
        .unwrap();
    assert_eq!(after_main, hearth::push::Counts::default());
    // Carol's counts are her own: root, r2 (she is not mentioned), main, bob's reply.
    let carol_counts = hearth::push::unread_counts(&svc, &carol.user_id, &room, 0)
        .await
        .unwrap();
    assert_eq!(carol_counts.total_notifications(), 4, "{carol_counts:?}");
    assert_eq!(carol_counts.total_highlights(), 0, "{carol_counts:?}");
}

#[tokio::test]
async fn notifications_paginate() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(alice.send_text(&room, &format!("message {i}")).await);
    }
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let path = match &from {
            Some(f) => format!("/notifications?limit=2&from={}", encode(f)),
            None => "/notifications?limit=2".to_owned(),
        };
        let page = bob.ok(Method::GET, &path, None).await;
        let items = page["notifications"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|n| n["event"]["event_id"].as_str().unwrap().to_owned()),
        );
        match page["next_token"].as_str() {
            Some(t) => from = Some(t.to_owned()),
            None => break,
        }
        assert!(seen.len() <= 5, "pagination does not end: {seen:?}");
    }
    sent.reverse();
    assert_eq!(seen, sent, "newest first, each once");
    let (status, body) = bob.request(Method::GET, "/notifications?from=abc", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

fn rule_ids(rules: &Value) -> Vec<String> {
    rules
        .as_array()
        .expect("rule array")
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn push_rule_api() {
    let server = Server::start().await;
    let bob = server.register("bob").await;

    // Defaults: the spec's predefined rules, in order.
    let all = bob.ok(Method::GET, "/pushrules/", None).await;
    let global = &all["global"];
    assert_eq!(
        rule_ids(&global["override"]),
        [
            ".m.rule.master",
            ".m.rule.suppress_notices",
            ".m.rule.invite_for_me",
            ".m.rule.member_event",
            ".m.rule.is_user_mention",
            ".m.rule.is_room_mention",
            ".m.rule.tombstone",
            ".m.rule.reaction",
            ".m.rule.room.server_acl",
            ".m.rule.suppress_edits",
        ]
    );
    assert_eq!(
        rule_ids(&global["underride"]),
        [
            ".m.rule.call",
            ".m.rule.encrypted_room_one_to_one",
            ".m.rule.room_one_to_one",
            ".m.rule.message",
            ".m.rule.encrypted",
        ]
    );
    for kind in ["content", "room", "sender"] {
        assert_eq!(global[kind], json!([]), "{kind}");
    }
    assert_eq!(bob.ok(Method::GET, "/pushrules/global/", None).await, *global);
    let invite = bob
        .ok(
            Method::GET,
            "/pushrules/global/override/.m.rule.invite_for_me",
            None,
        )
        .await;
    assert_eq!(invite["conditions"][2]["pattern"], json!(bob.user_id));
    assert_eq!(invite["default"], json!(true));

    // Create with before/after.
    let put = |id: &str, query: &str, pattern: &str| {
        let bob = bob.clone();
        let path = format!("/pushrules/global/content/{id}{query}");
        let body = json!({"pattern": pattern, "actions": ["notify"]});
        async move { bob.request(Method::PUT, &path, Some(&body)).await }
    };
    assert_eq!(put("a", "", "alpha").await.0, StatusCode::OK);
    assert_eq!(put("b", "", "beta").await.0, StatusCode::OK); // newest first
    assert_eq!(put("c", "?after=a", "gamma").await.0, StatusCode::OK);
    assert_eq!(put("d", "?before=b", "delta").await.0, StatusCode::OK);
    let rules = bob.ok(Method::GET, "/pushrules/global/", None).await;
    assert_eq!(rule_ids(&rules["content"]), ["d", "b", "a", "c"]);
    let a = bob.ok(Method::GET, "/pushrules/global/content/a", None).await;
    assert_eq!(
        a,
        json!({"rule_id": "a", "pattern": "alpha", "actions": ["notify"], "enabled": true, "default": false})
    );
    // Updating keeps the position unless moved.
    assert_eq!(put("a", "", "alpha2").await.0, StatusCode::OK);
    let rules = bob.ok(Method::GET, "/pushrules/global/", None).await;
    assert_eq!(rule_ids(&rules["content"]), ["d", "b", "a", "c"]);
    assert_eq!(rules["content"][2]["pattern"], json!("alpha2"));

    // enabled and actions.
    let enabled_path = "/pushrules/global/content/b/enabled";
    assert_eq!(
        bob.ok(Method::GET, enabled_path, None).await,
        json!({"enabled": true})
    );
    bob.ok(Method::PUT, enabled_path, Some(&json!({"enabled": false})))
        .await;
    assert_eq!(
        bob.ok(Method::GET, enabled_path, None).await,
        json!({"enabled": false})
    );
    let actions_path = "/pushrules/global/content/b/actions";
    let new_actions = json!(["notify", {"set_tweak": "sound", "value": "bing"}]);
    bob.ok(Method::PUT, actions_path, Some(&json!({"actions": new_actions})))
        .await;
    assert_eq!(
        bob.ok(Method::GET, actions_path, None).await,
        json!({"actions": new_actions})
    );
    // Server-default rules can be toggled and given other actions.
    bob.ok(
        Method::PUT,
        "/pushrules/global/underride/.m.rule.message/actions",
        Some(&json!({"actions": []})),
    )
    .await;
    assert_eq!(
        bob.ok(
            Method::GET,
            "/pushrules/global/underride/.m.rule.message/actions",
            None
        )
        .await,
        json!({"actions": []})
    );

    // The change reaches /sync as m.push_rules account data.
    let sync = bob.sync(None, 0, 1).await;
    let pushed = sync["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .cloned()
        .expect("m.push_rules in account_data");
    assert_eq!(
        rule_ids(&pushed["content"]["global"]["content"]),
        ["d", "b", "a", "c"]
    );

    // Errors.
    let cases: Vec<(Method, &str, Option<Value>, StatusCode, &str)> = vec![
        (
            Method::GET,
            "/pushrules/global/content/nope",
            None,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            Method::GET,
            "/pushrules/global/content/nope/enabled",
            None,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            Method::PUT,
            "/pushrules/global/content/nope/enabled",
            Some(json!({"enabled": true})),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            Method::PUT,
            "/pushrules/global/content/nope/actions",
            Some(json!({"actions": []})),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            Method::DELETE,
            "/pushrules/global/content/nope",
            None,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            Method::GET,
            "/pushrules/global/weird/a",
            None,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            Method::PUT,
            "/pushrules/global/override/.mine",
            Some(json!({"actions": []})),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            Method::DELETE,
            "/pushrules/global/override/.m.rule.master",
            None,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            Method::PUT,
            "/pushrules/global/content/x?before=zzz",
            Some(json!({"pattern": "x", "actions": []})),
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        ),
        (
            Method::PUT,
            "/pushrules/global/override/x?after=.m.rule.master",
            Some(json!({"actions": []})),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            Method::PUT,
            "/pushrules/global/content/x",
            Some(json!({"actions": []})),
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
        ),
        (
            Method::PUT,
            "/pushrules/global/content/x",
            Some(json!({"pattern": "x"})),
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
        ),
        (
            Method::PUT,
            "/pushrules/global/room/not-a-room",
            Some(json!({"actions": []})),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            Method::PUT,
            "/pushrules/global/sender/not-a-user",
            Some(json!({"actions": []})),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            Method::PUT,
            "/pushrules/global/content/b/enabled",
            Some(json!({"enabled": "yes"})),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
    ];
    for (method, path, body, status, errcode) in cases {
        let (got, resp) = bob.request(method.clone(), path, body.as_ref()).await;
        assert_eq!(
            (got, resp["errcode"].as_str()),
            (status, Some(errcode)),
            "{method} {path}: {resp}"
        );
    }
    // Not-found PUT before/after left nothing behind.
    let rules = bob.ok(Method::GET, "/pushrules/global/", None).await;
    assert_eq!(rule_ids(&rules["content"]), ["d", "b", "a", "c"]);

    // Delete.
    bob.ok(Method::DELETE, "/pushrules/global/content/a", None).await;
    let rules = bob.ok(Method::GET, "/pushrules/global/", None).await;
    assert_eq!(rule_ids(&rules["content"]), ["d", "b", "c"]);
    let (status, _) = bob
        .request(Method::GET, "/pushrules/global/content/a", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The account data event the sync engine can send: what /pushrules/ shows.
    let svc = services(&server).await;
    let event = hearth::push::push_rules_event(&svc, &ruma::UserId::parse(&bob.user_id).unwrap())
        .await
        .unwrap();
    assert_eq!(event["type"], json!("m.push_rules"));
    assert_eq!(event["content"], bob.ok(Method::GET, "/pushrules/", None).await);
    let carol = server.register("carol").await;
    let fresh = hearth::push::push_rules_event(&svc, &ruma::UserId::parse(&carol.user_id).unwrap())
        .await
        .unwrap();
    assert_eq!(fresh["content"], carol.ok(Method::GET, "/pushrules/", None).await);
    assert_eq!(fresh["content"]["global"]["content"], json!([]));
    // Without a token.
    let (status, body) = server.anon().request(Method::GET, "/pushrules/", None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("M_MISSING_TOKEN"))
    );
}

fn pusher_body(app_id: &str, pushkey: &str, url: &str) -> Value {
    json!({
        "kind": "http",
        "app_id": app_id,
        "pushkey": pushkey,
        "app_display_name": "Test App",
        "device_display_name": "Phone",
        "profile_tag": "tag1",
        "lang": "en",
        "data": {"url": url, "custom": "value"},
    })
}

/// A server that may push to gateways on loopback (where the mock gateways listen).
async fn start_allowing_local_gateways() -> Server {
    Server::start_with_config(
        common::Backend::from_env(),
        "[push]\nallow_private_addresses = true\n",
    )
    .await
}

#[tokio::test]
async fn pusher_api() {
    let server = start_allowing_local_gateways().await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let url = "http://127.0.0.1:9/_matrix/push/v1/notify";

    assert_eq!(
        bob.ok(Method::GET, "/pushers", None).await,
        json!({"pushers": []})
    );
    bob.ok(
        Method::POST,
        "/pushers/set",
        Some(&pusher_body("org.example.app", "key1", url)),
    )
    .await;
    let list = bob.ok(Method::GET, "/pushers", None).await;
    assert_eq!(
        list,
        json!({"pushers": [{
            "kind": "http", "app_id": "org.example.app", "pushkey": "key1",
            "app_display_name": "Test App", "device_display_name": "Phone", "profile_tag": "tag1",
            "lang": "en", "data": {"url": url, "custom": "value"},
        }]})
    );
    // Same app and key again replaces.
    let mut changed = pusher_body("org.example.app", "key1", url);
    changed["device_display_name"] = json!("Tablet");
    bob.ok(Method::POST, "/pushers/set", Some(&changed)).await;
    let list = bob.ok(Method::GET, "/pushers", None).await;
    assert_eq!(list["pushers"].as_array().unwrap().len(), 1);
    assert_eq!(list["pushers"][0]["device_display_name"], json!("Tablet"));

    // Another user taking the same app and key removes bob's, unless append.
    let mut appended = pusher_body("org.example.app", "key1", url);
    appended["append"] = json!(true);
    carol.ok(Method::POST, "/pushers/set", Some(&appended)).await;
    assert_eq!(
        bob.ok(Method::GET, "/pushers", None).await["pushers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    carol
        .ok(
            Method::POST,
            "/pushers/set",
            Some(&pusher_body("org.example.app", "key1", url)),
        )
        .await;
    assert_eq!(
        bob.ok(Method::GET, "/pushers", None).await,
        json!({"pushers": []})
    );
    assert_eq!(
        carol.ok(Method::GET, "/pushers", None).await["pushers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Delete with kind null.
    carol
        .ok(
            Method::POST,
            "/pushers/set",
            Some(&json!({"kind": null, "app_id": "org.example.app", "pushkey": "key1"})),
        )
        .await;
    assert_eq!(
        carol.ok(Method::GET, "/pushers", None).await,
        json!({"pushers": []})
    );

    // Invalid pushers.
    let mut no_lang = pusher_body("a", "k", url);
    no_lang.as_object_mut().unwrap().remove("lang");
    let mut no_url = pusher_body("a", "k", url);
    no_url["data"] = json!({});
    let cases = vec![
        (no_lang, "M_MISSING_PARAM"),
        (no_url, "M_INVALID_PARAM"),
        (
            pusher_body("a", "k", "http://127.0.0.1:9/notify"),
            "M_INVALID_PARAM",
        ),
        (json!({"kind": "http", "app_id": "a"}), "M_BAD_JSON"),
    ];
    for (body, errcode) in cases {
        let (status, resp) = bob.request(Method::POST, "/pushers/set", Some(&body)).await;
        assert_eq!(
            (status, resp["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some(errcode)),
            "{body}: {resp}"
        );
    }
    assert_eq!(
        bob.ok(Method::GET, "/pushers", None).await,
        json!({"pushers": []})
    );
}

/// Waits until the mock gateway has received `n` requests.
async fn received(gateway: &MockServer, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let requests = gateway.received_requests().await.unwrap_or_default();
        if requests.len() >= n {
            return requests
                .iter()
                .map(|r| serde_json::from_slice(&r.body).expect("JSON body"))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "gateway got {} of {n} requests",
            requests.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn delivery_to_push_gateway() {
    let gateway = common::push_gateway(&[]).await;
    let url = format!("{}/_matrix/push/v1/notify", gateway.uri());

    let mut server = start_allowing_local_gateways().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Tea room"}))
        .await;
    bob.join(&room).await;
    carol.join(&room).await;
    set_displayname(&alice, "Alice A.").await;
    bob.ok(
        Method::POST,
        "/pushers/set",
        Some(&pusher_body("org.example.app", "bobkey", &url)),
    )
    .await;
    let mut ids_only = pusher_body("org.example.app", "carolkey", &url);
    ids_only["data"]["format"] = json!("event_id_only");
    carol.ok(Method::POST, "/pushers/set", Some(&ids_only)).await;
    assert!(gateway.received_requests().await.unwrap().is_empty());

    let content =
        json!({"msgtype": "m.text", "body": "tea, bob?", "m.mentions": {"user_ids": [bob.user_id]}});
    let event_id = alice.send(&room, "m.room.message", content.clone()).await;
    let bodies = received(&gateway, 2).await;
    let for_key = |key: &str| {
        bodies
            .iter()
            .find(|b| b["notification"]["devices"][0]["pushkey"] == key)
            .unwrap_or_else(|| panic!("no notification for {key}: {bodies:?}"))
            .clone()
    };
    let bob_body = for_key("bobkey");
    let n = &bob_body["notification"];
    assert_eq!(n["event_id"], json!(event_id));
    assert_eq!(n["room_id"], json!(room));
    assert_eq!(n["type"], json!("m.room.message"));
    assert_eq!(n["sender"], json!(alice.user_id));
    assert_eq!(n["sender_display_name"], json!("Alice A."));
    assert_eq!(n["room_name"], json!("Tea room"));
    assert_eq!(n["content"], content);
    assert_eq!(n["prio"], json!("high"));
    assert_eq!(n["counts"]["unread"], json!(1));
    let device = &n["devices"][0];
    assert_eq!(n["devices"].as_array().unwrap().len(), 1);
    assert_eq!(device["app_id"], json!("org.example.app"));
    assert!(device["pushkey_ts"].as_i64().is_some());
    // data is forwarded without url.
    assert_eq!(device["data"], json!({"custom": "value"}));
    assert_eq!(device["tweaks"], json!({"sound": "default", "highlight": true}));

    // event_id_only: no event details.
    let carol_body = for_key("carolkey");
    let n = carol_body["notification"].as_object().unwrap();
    assert_eq!(n["event_id"], json!(event_id));
    assert_eq!(
        n["devices"][0]["data"],
        json!({"custom": "value", "format": "event_id_only"})
    );
    for field in ["type", "sender", "content", "sender_display_name", "room_name"] {
        assert!(
            !n.contains_key(field),
            "event_id_only carries {field}: {carol_body}"
        );
    }

    // Events that do not notify are not pushed; the sender is never pushed.
    alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.notice", "body": "quiet"}),
        )
        .await;
    bob.send_text(&room, "bob speaking").await; // notifies alice (no pusher) and carol
    let bodies = received(&gateway, 3).await;
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert_eq!(
        bodies[2]["notification"]["devices"][0]["pushkey"],
        json!("carolkey")
    );

    // A restarted server knows its users' pushers from the database: still delivered.
    server.restart().await;
    let after = alice.send_text(&room, "after the restart").await;
    let bodies = received(&gateway, 5).await;
    let mut keys: Vec<_> = bodies[3..]
        .iter()
        .map(|b| {
            assert_eq!(b["notification"]["event_id"], json!(after));
            b["notification"]["devices"][0]["pushkey"].clone()
        })
        .collect();
    keys.sort_by_key(|k| k.to_string());
    assert_eq!(keys, [json!("bobkey"), json!("carolkey")]);
}

/// A gateway behind HTTPS (as real ones are) gets its notifications when its certificate is
/// trusted (`push.ca_files` here; the system's authorities otherwise); one whose certificate is
/// not trusted gets nothing, and its pusher is kept (an unreachable gateway rejected nothing).
#[tokio::test]
async fn delivery_to_an_https_gateway() {
    let (trusted, untrusted) = (common::push_gateway(&[]).await, common::push_gateway(&[]).await);
    let certs = tempfile::tempdir().unwrap();
    let trusted_dir = certs.path().join("trusted");
    let untrusted_dir = certs.path().join("untrusted");
    std::fs::create_dir_all(&trusted_dir).unwrap();
    std::fs::create_dir_all(&untrusted_dir).unwrap();
    let (trusted_port, ca) =
        common::federation::tls_front(*trusted.address(), &["localhost"], &trusted_dir).await;
    let (untrusted_port, _) =
        common::federation::tls_front(*untrusted.address(), &["localhost"], &untrusted_dir).await;
    let server = Server::start_with_config(
        common::Backend::from_env(),
        &format!(
            "[push]\nallow_private_addresses = true\nca_files = [\"{}\"]\n",
            ca.display()
        ),
    )
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let notify = |port: u16| format!("https://localhost:{port}/_matrix/push/v1/notify");
    bob.ok(
        Method::POST,
        "/pushers/set",
        Some(&pusher_body(
            "org.example.untrusted",
            "untrusted",
            &notify(untrusted_port),
        )),
    )
    .await;
    alice.send_text(&room, "to an untrusted gateway").await;
    bob.ok(
        Method::POST,
        "/pushers/set",
        Some(&pusher_body("org.example.app", "bobkey", &notify(trusted_port))),
    )
    .await;
    let event_id = alice.send_text(&room, "over TLS").await;

    let bodies = received(&trusted, 1).await;
    let n = &bodies
        .iter()
        .find(|b| b["notification"]["event_id"] == event_id)
        .unwrap_or_else(|| panic!("no notification for {event_id}: {bodies:?}"))["notification"];
    assert_eq!(n["room_id"], json!(room));
    assert_eq!(n["devices"][0]["pushkey"], json!("bobkey"));
    // The untrusted front never completes a handshake, so nothing can reach its gateway.
    assert!(untrusted.received_requests().await.unwrap().is_empty());
    let pushers = bob.ok(Method::GET, "/pushers", None).await;
    assert_eq!(pushers["pushers"].as_array().unwrap().len(), 2, "{pushers}");
}

/// The badge (`counts.unread`) is what the user has not read: each joined room's notifications
/// after the user's read receipt there, as `/sync` counts them; a room the user left no longer
/// counts. (It once counted every notification the user ever had.)
#[tokio::test]
async fn the_badge_counts_what_is_unread_in_joined_rooms() {
    let gateway = common::push_gateway(&[]).await;
    let url = format!("{}/_matrix/push/v1/notify", gateway.uri());
    let server = start_allowing_local_gateways().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let tea = alice.create_room(json!({"preset": "public_chat"})).await;
    let cake = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&tea).await;
    bob.join(&cake).await;
    bob.ok(
        Method::POST,
        "/pushers/set",
        Some(&pusher_body("org.example.app", "bobkey", &url)),
    )
    .await;
    let badge = |bodies: &[Value], event: &str| {
        bodies
            .iter()
            .find(|b| b["notification"]["event_id"] == event)
            .unwrap_or_else(|| panic!("no notification for {event}: {bodies:?}"))["notification"]
            ["counts"]["unread"]
            .clone()
    };

    // In a two-member room every message notifies: three unread in all, across both rooms.
    alice.send_text(&tea, "one").await;
    let second = alice.send_text(&tea, "two").await;
    let third = alice.send_text(&cake, "three").await;
    let bodies = received(&gateway, 3).await;
    assert_eq!(badge(&bodies, &third), json!(3));

    // Bob reads the tea room: only the cake room's message and the new one are left.
    let path = format!("/rooms/{}/receipt/m.read/{}", encode(&tea), encode(&second));
    let (status, body) = bob.request(Method::POST, &path, Some(&json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fourth = alice.send_text(&tea, "four").await;
    let bodies = received(&gateway, 4).await;
    assert_eq!(badge(&bodies, &fourth), json!(2), "read messages still counted");

    // Bob leaves the cake room, unread message and all: it no longer counts.
    bob.leave(&cake).await;
    let fifth = alice.send_text(&tea, "five").await;
    let bodies = received(&gateway, 5).await;
    assert_eq!(badge(&bodies, &fifth), json!(2), "a left room still counted");
}

#[tokio::test]
async fn rejected_pushkeys_are_removed() {
    let gateway = common::push_gateway(&["stale"]).await;
    let url = format!("{}/_matrix/push/v1/notify", gateway.uri());
    let server = start_allowing_local_gateways().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    bob.ok(
        Method::POST,
        "/pushers/set",
        Some(&pusher_body("org.example.app", "stale", &url)),
    )
    .await;
    alice.send_text(&room, "hi").await;
    received(&gateway, 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bob.ok(Method::GET, "/pushers", None).await["pushers"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "rejected pusher still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn room_changes_reach_evaluation() {
    let server = Server::start().await;
    let db = server.db().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    let first = alice.send_text(&room, "one").await;
    assert_eq!(outcome(&db, &bob.user_id, &first).await, Some((false, None)));

    // A member who joins later is evaluated for the events after the join.
    carol.join(&room).await;
    let second = alice.send_text(&room, "two").await;
    assert_eq!(outcome(&db, &carol.user_id, &first).await, None);
    assert_eq!(outcome(&db, &carol.user_id, &second).await, Some((false, None)));

    // A power level change: carol's @room highlights only once she has the power for it.
    let room_mention = json!({"msgtype": "m.text", "body": "@room", "m.mentions": {"room": true}});
    let weak = carol.send(&room, "m.room.message", room_mention.clone()).await;
    assert_eq!(outcome(&db, &alice.user_id, &weak).await, Some((false, None)));
    let mut levels = alice.get_state_content(&room, "m.room.power_levels", "").await;
    levels["users"][&carol.user_id] = json!(50);
    alice.set_state(&room, "m.room.power_levels", "", levels).await;
    let strong = carol.send(&room, "m.room.message", room_mention).await;
    assert_eq!(outcome(&db, &alice.user_id, &strong).await, Some((true, None)));
    assert_eq!(outcome(&db, &bob.user_id, &strong).await, Some((true, None)));

    // A display name change is seen by contains_display_name.
    carol
        .ok(
            Method::PUT,
            "/pushrules/global/override/name",
            Some(&json!({"conditions": [{"kind": "contains_display_name"}], "actions": ["notify", {"set_tweak": "highlight"}]})),
        )
        .await;
    let before_rename = alice.send_text(&room, "Caroline?").await;
    assert_eq!(
        outcome(&db, &carol.user_id, &before_rename).await,
        Some((false, None))
    );
    set_displayname(&carol, "Caroline").await;
    let after_rename = alice.send_text(&room, "Caroline?").await;
    assert_eq!(
        outcome(&db, &carol.user_id, &after_rename).await,
        Some((true, None))
    );

    // A member who left is no longer notified.
    bob.leave(&room).await;
    let third = alice.send_text(&room, "three").await;
    assert_eq!(outcome(&db, &bob.user_id, &third).await, None);
    assert_eq!(outcome(&db, &carol.user_id, &third).await, Some((false, None)));
}

/// A joined room's `unread_notifications` in a `/sync` answer: (notifications, highlights).
fn unread(sync: &Value, room: &str) -> (Option<u64>, Option<u64>) {
    let c = &sync["rooms"]["join"][room]["unread_notifications"];
    (c["notification_count"].as_u64(), c["highlight_count"].as_u64())
}

/// The counts in `/sync` come from memory after the first read (`push/unread.rs`): they must
/// follow every new notifying event, every read receipt (public or private), and stay per user,
/// exactly as the database would count them.
#[tokio::test]
async fn sync_counts_follow_messages_and_receipts() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    carol.join(&room).await;
    let counts = |sync: &Value| unread(sync, &room);

    // Bob's first sync fills the cache with nothing unread.
    let first = bob.sync(None, 0, 10).await;
    assert_eq!(counts(&first), (Some(0), Some(0)), "{first}");
    let mut since = first["next_batch"].as_str().unwrap().to_owned();

    // Each round adds notifying events (one a mention) and checks the counts bob sees.
    let mut sent = Vec::new();
    for round in 0..3u64 {
        sent.push(alice.send_text(&room, &format!("round {round} a")).await);
        sent.push(
            alice
                .send(
                    &room,
                    "m.room.message",
                    json!({"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}}),
                )
                .await,
        );
        let sync = bob.sync(Some(&since), 0, 10).await;
        assert_eq!(
            counts(&sync),
            (Some(2 * (round + 1)), Some(round + 1)),
            "round {round}: {sync}"
        );
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }

    // A read receipt on the fourth event leaves the two after it.
    let receipt = |kind: &'static str, event: String| {
        let bob = &bob;
        let room = room.clone();
        async move {
            let (status, body) = bob
                .request(
                    Method::POST,
                    &format!("/rooms/{}/receipt/{kind}/{}", encode(&room), encode(&event)),
                    Some(&json!({})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    receipt("m.read", sent[3].clone()).await;
    sent.push(alice.send_text(&room, "after the receipt").await);
    let sync = bob.sync(Some(&since), 0, 10).await;
    assert_eq!(counts(&sync), (Some(3), Some(1)), "{sync}");
    since = sync["next_batch"].as_str().unwrap().to_owned();

    // A private receipt counts as well; then everything is read.
    receipt("m.read.private", sent[6].clone()).await;
    alice.send_text(&room, "one more").await;
    let sync = bob.sync(Some(&since), 0, 10).await;
    assert_eq!(counts(&sync), (Some(1), Some(0)), "{sync}");

    // Carol was never mentioned and sent no receipt: every message counts, no highlight. Bob's
    // receipts changed nothing of hers.
    let carol_sync = carol.sync(None, 0, 10).await;
    assert_eq!(counts(&carol_sync), (Some(8), Some(0)), "{carol_sync}");
    // Alice's own messages never count for her.
    let alice_sync = alice.sync(None, 0, 10).await;
    assert_eq!(counts(&alice_sync), (Some(0), Some(0)), "{alice_sync}");
}

/// The counts of several rooms are read together (one scan of the user's outcomes from the
/// oldest of their receipts, from the start when a room has none): each room still counts only
/// what follows its own receipt.
#[tokio::test]
async fn counts_of_several_rooms_follow_each_rooms_receipt() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let mut rooms = Vec::new();
    for _ in 0..3 {
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await;
        carol.join(&room).await;
        rooms.push(room);
    }
    let [early, late, third] = [&rooms[0], &rooms[1], &rooms[2]];
    let receipt = |reader: &Client, room: &str, event: &str| {
        let path = format!("/rooms/{}/receipt/m.read/{}", encode(room), encode(event));
        let reader = reader.clone();
        async move {
            let (status, body) = reader.request(Method::POST, &path, Some(&json!({}))).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };

    // Interleaved: the early room's receipt is older than most of the late room's messages.
    let first_early = alice.send_text(early, "early 1").await;
    let mut in_third = Vec::new();
    for i in 0..3 {
        alice.send_text(late, &format!("late {i}")).await;
        alice.send_text(early, &format!("early {}", i + 2)).await;
        in_third.push(alice.send_text(third, &format!("third {i}")).await);
    }
    let last_late = alice.send_text(late, "late last").await;
    for reader in [&bob, &carol] {
        receipt(reader, early, &first_early).await;
        receipt(reader, late, &last_late).await;
    }
    // Carol has a receipt in every room, bob none in the third.
    receipt(&carol, third, &in_third[0]).await;

    // Each first sync fills every room's counts at once.
    for (reader, in_third) in [(&bob, 3), (&carol, 2)] {
        let sync = reader.sync(None, 0, 10).await;
        let count =
            |room: &str| sync["rooms"]["join"][room]["unread_notifications"]["notification_count"].as_u64();
        assert_eq!(
            (count(early), count(late), count(third)),
            (Some(3), Some(0), Some(in_third)),
            "{}: {sync}",
            reader.user_id
        );
    }
}

/// Outcomes are stored per audience (the members who got the same one): a member who joins
/// later, one mentioned alone, and the sender each count exactly their own, in every room, and
/// audiences written before a restart (which empties the server's memory of them) still count.
#[tokio::test]
async fn each_member_counts_only_what_their_audience_got() {
    let mut server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let other = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    bob.join(&other).await;
    let counts = unread;
    let notified = |list: &Value| -> Vec<String> {
        list["notifications"]
            .as_array()
            .expect("notifications array")
            .iter()
            .map(|n| n["event"]["event_id"].as_str().unwrap().to_owned())
            .collect()
    };

    // Bob alone in both rooms with alice: one audience {bob} for both rooms' messages.
    let before_carol = alice.send_text(&room, "before carol").await;
    let elsewhere = alice.send_text(&other, "in the other room").await;
    carol.join(&room).await;
    // Now {bob, carol}; then a mention of carol alone (bob keeps the plain outcome).
    let after_carol = alice.send_text(&room, "after carol").await;
    let mention = alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "carol!", "m.mentions": {"user_ids": [carol.user_id]}}),
        )
        .await;
    let from_bob = bob.send_text(&room, "from bob").await;

    let check = |label: &'static str| {
        let (alice, bob, carol) = (&alice, &bob, &carol);
        let (room, other) = (room.clone(), other.clone());
        let (before_carol, elsewhere, after_carol, mention, from_bob) = (
            before_carol.clone(),
            elsewhere.clone(),
            after_carol.clone(),
            mention.clone(),
            from_bob.clone(),
        );
        async move {
            let sync = bob.sync(None, 0, 10).await;
            assert_eq!(counts(&sync, &room), (Some(3), Some(0)), "{label} bob: {sync}");
            assert_eq!(counts(&sync, &other), (Some(1), Some(0)), "{label} bob: {sync}");
            let sync = carol.sync(None, 0, 10).await;
            assert_eq!(counts(&sync, &room), (Some(3), Some(1)), "{label} carol: {sync}");
            let sync = alice.sync(None, 0, 10).await;
            assert_eq!(counts(&sync, &room), (Some(1), Some(0)), "{label} alice: {sync}");
            assert_eq!(counts(&sync, &other), (Some(0), Some(0)), "{label} alice: {sync}");

            let list = bob.ok(Method::GET, "/notifications", None).await;
            assert_eq!(
                notified(&list),
                [&*mention, &*after_carol, &*elsewhere, &*before_carol],
                "{label}: {list}"
            );
            let list = carol.ok(Method::GET, "/notifications", None).await;
            assert_eq!(
                notified(&list),
                [&*from_bob, &*mention, &*after_carol],
                "{label}: {list}"
            );
            let list = carol.ok(Method::GET, "/notifications?only=highlight", None).await;
            assert_eq!(notified(&list), [&*mention], "{label}: {list}");
            let list = alice.ok(Method::GET, "/notifications", None).await;
            assert_eq!(notified(&list), [&*from_bob], "{label}: {list}");
        }
    };
    check("before the restart").await;
    server.restart().await;
    check("after the restart").await;

    // The same audiences again after the restart: written again (ignored), counted once.
    alice.send_text(&room, "again").await;
    let sync = bob.sync(None, 0, 10).await;
    assert_eq!(counts(&sync, &room), (Some(4), Some(0)), "{sync}");
    let sync = carol.sync(None, 0, 10).await;
    assert_eq!(counts(&sync, &room), (Some(4), Some(1)), "{sync}");
}

/// `POST /_hearth/testing/v1/{path}` as `client`.
async fn testing_post(client: &Client, path: &str, body: Value) -> (StatusCode, Value) {
    let resp = client
        .http
        .post(format!("{}/_hearth/testing/v1/{path}", client.base_url))
        .bearer_auth(client.token.as_deref().unwrap_or_default())
        .json(&body)
        .send()
        .await
        .expect("testing request");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Old notifications are pruned by the server itself (`push.outcome_retention`, 30 days; the
/// testing route runs the hourly prune at once, at the adjustable clock's time): they leave
/// `/notifications`, the unread counts `/sync` shows stay, the same members are notified by the
/// next message, and a receipt after the pruned events reads them. Without the adjustable clock
/// the route does not exist.
#[tokio::test]
async fn pruned_notifications_keep_unread_counts() {
    let server = Server::start_with_config(
        common::Backend::from_env(),
        "[testing]\nadjustable_clock = true\n",
    )
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    carol.join(&room).await;
    // Eight more who read nothing: the prune writes their summaries as one statement.
    let mut others = Vec::new();
    for i in 0..8 {
        let other = server.register(&format!("dave{i}")).await;
        other.join(&room).await;
        others.push(other);
    }
    let counts = |sync: &Value| unread(sync, &room);
    let listed = |client: &Client| {
        let client = client.clone();
        async move {
            let page = client.ok(Method::GET, "/notifications", None).await;
            page["notifications"].as_array().expect("notifications").len()
        }
    };
    let prune = |client: &Client| {
        let client = client.clone();
        async move {
            let (status, body) = testing_post(&client, "push/prune", json!({})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["pruned"].as_u64().expect("pruned")
        }
    };
    let read_up_to = |client: &Client, event_id: &str| {
        let (client, path) = (
            client.clone(),
            format!("/rooms/{}/receipt/m.read/{}", encode(&room), encode(event_id)),
        );
        async move {
            let (status, body) = client.request(Method::POST, &path, Some(&json!({}))).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    let first = alice.send_text(&room, "one").await;
    alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}}),
        )
        .await;
    alice.send_text(&room, "three").await;
    read_up_to(&bob, &first).await;
    assert_eq!(counts(&bob.sync(None, 0, 10).await), (Some(2), Some(1)));
    assert_eq!(counts(&carol.sync(None, 0, 10).await), (Some(3), Some(0)));
    assert_eq!(listed(&carol).await, 3);

    // The stream is marked now; 35 days later what came before the mark goes: four outcomes
    // (the mention highlights bob, not carol: two outcomes).
    assert_eq!(prune(&alice).await, 0);
    for _ in 0..5 {
        let (status, body) =
            testing_post(&alice, "clock/advance", json!({ "ms": 7 * 24 * 3600 * 1000_i64 })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(prune(&alice).await, 4);
    assert_eq!(listed(&carol).await, 0);
    assert_eq!(listed(&bob).await, 0);
    assert_eq!(counts(&bob.sync(None, 0, 10).await), (Some(2), Some(1)));
    assert_eq!(counts(&carol.sync(None, 0, 10).await), (Some(3), Some(0)));
    for other in &others {
        assert_eq!(counts(&other.sync(None, 0, 10).await), (Some(3), Some(0)));
    }

    let later = alice.send_text(&room, "later").await;
    assert_eq!(counts(&bob.sync(None, 0, 10).await), (Some(3), Some(1)));
    assert_eq!(counts(&carol.sync(None, 0, 10).await), (Some(4), Some(0)));
    assert_eq!(listed(&carol).await, 1);
    read_up_to(&carol, &later).await;
    assert_eq!(counts(&carol.sync(None, 0, 10).await), (Some(0), Some(0)));
    assert_eq!(counts(&bob.sync(None, 0, 10).await), (Some(3), Some(1)));

    // A server without the adjustable clock has no such route.
    let plain = Server::start().await;
    let dave = plain.register("dave").await;
    let (status, body) = testing_post(&dave, "push/prune", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
}
