//! Events the authorization rules (or the server's own permission checks) refuse are answered
//! with 403 M_FORBIDDEN and leave no trace in the database.

mod common;

use std::collections::BTreeMap;

use common::{Client, Server, count, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{AnyPool, Row};

/// Row counts of every table an accepted event writes to, plus the forward extremities.
async fn footprint(db: &AnyPool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for table in [
        "events",
        "event_edges",
        "state_groups",
        "state_group_entries",
        "current_state",
        "room_memberships",
        "transaction_ids",
        "forward_extremities",
    ] {
        let n = count(db, &format!("SELECT COUNT(*) FROM {table}"), &[]).await;
        out.insert(table.to_owned(), n.to_string());
    }
    let extremities: Vec<String> =
        sqlx::query("SELECT room_id, event_id FROM forward_extremities ORDER BY room_id, event_id")
            .fetch_all(db)
            .await
            .expect("read forward_extremities")
            .into_iter()
            .map(|r| format!("{} {}", r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect();
    out.insert("extremities".into(), extremities.join(","));
    out
}

struct Case<'a> {
    what: &'a str,
    who: &'a Client,
    method: Method,
    path: String,
    body: Value,
}

async fn expect_rejected(db: &AnyPool, case: Case<'_>, failures: &mut Vec<String>) {
    let before = footprint(db).await;
    let (status, body) = case
        .who
        .request(case.method.clone(), &case.path, Some(&case.body))
        .await;
    let after = footprint(db).await;
    let line = format!(
        "{}: {} {} {} as {} -> {} {}",
        case.what, case.method, case.path, case.body, case.who.user_id, status, body
    );
    if status != StatusCode::FORBIDDEN || body["errcode"] != "M_FORBIDDEN" {
        failures.push(format!("not 403 M_FORBIDDEN: {line}"));
    }
    if before != after {
        failures.push(format!(
            "stored something: {line}\n  before {before:?}\n  after  {after:?}"
        ));
    }
}

fn state(room: &str, event_type: &str, key: &str) -> String {
    Client::state_path(room, event_type, key)
}

#[tokio::test]
async fn rejected_events_are_forbidden_and_not_stored() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let mallory = server.register("mallory").await;
    let db = server.db().await;
    let mut failures = Vec::new();

    for version in ["10", "11", "12"] {
        let room = alice
            .create_room(json!({ "room_version": version, "preset": "private_chat", "name": "guarded" }))
            .await;
        let r = encode(&room);
        let message = alice.send_text(&room, "hello").await;
        let state_before = alice.room_state_ids(&room).await;
        let text = json!({ "msgtype": "m.text", "body": "let me in" });

        // Outsiders.
        let cases = vec![
            Case {
                what: "non-member sends a message",
                who: &mallory,
                method: Method::PUT,
                path: mallory.send_path(&room, "m.room.message"),
                body: text.clone(),
            },
            Case {
                what: "non-member sets the topic",
                who: &mallory,
                method: Method::PUT,
                path: state(&room, "m.room.topic", ""),
                body: json!({ "topic": "mine" }),
            },
            Case {
                what: "non-member joins an invite-only room",
                who: &mallory,
                method: Method::POST,
                path: format!("/rooms/{r}/join"),
                body: json!({}),
            },
            Case {
                what: "non-member invites",
                who: &mallory,
                method: Method::POST,
                path: format!("/rooms/{r}/invite"),
                body: json!({ "user_id": carol.user_id }),
            },
            Case {
                what: "non-member redacts",
                who: &mallory,
                method: Method::PUT,
                path: format!("/rooms/{r}/redact/{}/{}", encode(&message), common::txn_id()),
                body: json!({}),
            },
        ];
        for case in cases {
            expect_rejected(&db, case, &mut failures).await;
        }

        alice.invite(&room, &bob.user_id).await;
        bob.join(&room).await;
        alice.invite(&room, &carol.user_id).await;
        carol.join(&room).await;
        carol.leave(&room).await;
        let mut pl = alice.get_state_content(&room, "m.room.power_levels", "").await;
        let mut bob_max = pl.clone();
        bob_max["users"][bob.user_id.as_str()] = json!(100);
        let mut alice_in_users = pl.clone();
        alice_in_users["users"][alice.user_id.as_str()] = json!(100);
        pl["users"][bob.user_id.as_str()] = json!(50);
        let mut bob_to_75 = pl.clone();
        bob_to_75["users"][bob.user_id.as_str()] = json!(75);

        // A member without the power.
        let cases = vec![
            Case {
                what: "member at level 0 sets power levels",
                who: &bob,
                method: Method::PUT,
                path: state(&room, "m.room.power_levels", ""),
                body: bob_max.clone(),
            },
            Case {
                what: "member at level 0 renames the room",
                who: &bob,
                method: Method::PUT,
                path: state(&room, "m.room.name", ""),
                body: json!({ "name": "bob's" }),
            },
            Case {
                what: "member at level 0 kicks the creator",
                who: &bob,
                method: Method::POST,
                path: format!("/rooms/{r}/kick"),
                body: json!({ "user_id": alice.user_id }),
            },
            Case {
                what: "member at level 0 bans",
                who: &bob,
                method: Method::POST,
                path: format!("/rooms/{r}/ban"),
                body: json!({ "user_id": carol.user_id }),
            },
            Case {
                what: "member at level 0 redacts someone else's event",
                who: &bob,
                method: Method::PUT,
                path: format!("/rooms/{r}/redact/{}/{}", encode(&message), common::txn_id()),
                body: json!({}),
            },
            Case {
                what: "a user who left sends a message",
                who: &carol,
                method: Method::PUT,
                path: carol.send_path(&room, "m.room.message"),
                body: text.clone(),
            },
            Case {
                what: "state keyed by another user's ID",
                who: &alice,
                method: Method::PUT,
                path: state(&room, "org.hearth.test", &bob.user_id),
                body: json!({ "owner": "not bob" }),
            },
            Case {
                what: "a second m.room.create",
                who: &alice,
                method: Method::PUT,
                path: state(&room, "m.room.create", ""),
                body: json!({ "room_version": version }),
            },
        ];
        for case in cases {
            expect_rejected(&db, case, &mut failures).await;
        }

        // Promote bob to 50: still not enough to raise himself above that.
        alice
            .set_state(&room, "m.room.power_levels", "", pl.clone())
            .await;
        let mut cases = vec![Case {
            what: "level-50 member raises himself to 75",
            who: &bob,
            method: Method::PUT,
            path: state(&room, "m.room.power_levels", ""),
            body: bob_to_75,
        }];
        if version == "12" {
            cases.push(Case {
                what: "v12 power levels naming the room creator",
                who: &alice,
                method: Method::PUT,
                path: state(&room, "m.room.power_levels", ""),
                body: alice_in_users,
            });
        }
        for case in cases {
            expect_rejected(&db, case, &mut failures).await;
        }
        alice
            .ok(
                Method::POST,
                &format!("/rooms/{r}/ban"),
                Some(&json!({ "user_id": mallory.user_id })),
            )
            .await;
        alice
            .set_state(&room, "m.room.join_rules", "", json!({ "join_rule": "public" }))
            .await;
        expect_rejected(
            &db,
            Case {
                what: "banned user joins a public room",
                who: &mallory,
                method: Method::POST,
                path: format!("/rooms/{r}/join"),
                body: json!({}),
            },
            &mut failures,
        )
        .await;

        // Nothing rejected shows in the state, and the room carries on from its last good event.
        let state_after = alice.room_state_ids(&room).await;
        for (key, id) in &state_after {
            if state_before.get(key) != Some(id) {
                let row = sqlx::query("SELECT sender FROM events WHERE event_id = $1")
                    .bind(id.clone())
                    .fetch_one(&db)
                    .await
                    .expect("state event stored");
                let sender: String = row.get(0);
                assert!(
                    sender == alice.user_id || sender == bob.user_id || sender == carol.user_id,
                    "unexpected state {key:?} from {sender}"
                );
            }
        }
        assert!(
            !state_after.contains_key(&("org.hearth.test".to_owned(), bob.user_id.clone())),
            "rejected state event is in the room state"
        );
        let last: String = sqlx::query(
            "SELECT event_id FROM events WHERE room_id = $1 ORDER BY stream_ordering DESC LIMIT 1",
        )
        .bind(room.clone())
        .fetch_one(&db)
        .await
        .expect("last event")
        .get(0);
        let next = bob.send_text(&room, "still here").await;
        let prevs: Vec<String> = sqlx::query("SELECT prev_event_id FROM event_edges WHERE event_id = $1")
            .bind(next)
            .fetch_all(&db)
            .await
            .expect("edges")
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            prevs,
            vec![last],
            "v{version}: new event does not follow the last accepted one"
        );
    }
    db.close().await;
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// An event over the 65536-byte PDU limit is refused with 413 M_TOO_LARGE and stores nothing,
/// whether message or state, also when the request body itself is under the body limit.
#[tokio::test]
async fn oversized_events_are_refused_and_not_stored() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let db = server.db().await;
    let big = "x".repeat(66_000);
    let mut failures = Vec::new();
    for (what, method, path, body) in [
        (
            "message",
            Method::PUT,
            alice.send_path(&room, "m.room.message"),
            json!({ "msgtype": "m.text", "body": big }),
        ),
        (
            "state event",
            Method::PUT,
            state(&room, "org.hearth.big", ""),
            json!({ "blob": big }),
        ),
        (
            "message just over the limit once wrapped in a PDU",
            Method::PUT,
            alice.send_path(&room, "m.room.message"),
            json!({ "msgtype": "m.text", "body": "y".repeat(65_400) }),
        ),
    ] {
        let before = footprint(&db).await;
        let (status, resp) = alice.request(method.clone(), &path, Some(&body)).await;
        let after = footprint(&db).await;
        if status != StatusCode::PAYLOAD_TOO_LARGE || resp["errcode"] != "M_TOO_LARGE" {
            failures.push(format!("{what}: {method} {path} -> {status} {resp}"));
        }
        if before != after {
            failures.push(format!(
                "{what}: stored something\n  before {before:?}\n  after  {after:?}"
            ));
        }
    }
    // Just under the limit is fine.
    let ok = alice
        .send(
            &room,
            "m.room.message",
            json!({ "msgtype": "m.text", "body": "z".repeat(60_000) }),
        )
        .await;
    assert!(ok.starts_with('$'));
    db.close().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
