//! A `/createRoom` that fails leaves no half-made room behind: no events, no room row, no state.

mod common;

use std::collections::BTreeMap;

use common::{Server, count};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::AnyPool;

async fn footprint(db: &AnyPool) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for table in [
        "rooms",
        "events",
        "event_edges",
        "state_groups",
        "current_state",
        "room_memberships",
        "room_aliases",
        "forward_extremities",
    ] {
        out.insert(
            table,
            count(db, &format!("SELECT COUNT(*) FROM {table}"), &[]).await,
        );
    }
    out
}

#[tokio::test]
async fn failed_create_room_leaves_nothing() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    alice
        .create_room(json!({ "room_alias_name": "taken", "preset": "public_chat" }))
        .await;
    let db = server.db().await;

    let cases = [
        (
            "alias already in use",
            json!({ "room_alias_name": "taken", "name": "second" }),
            "M_ROOM_IN_USE",
        ),
        (
            "unsupported room version",
            json!({ "room_version": "1", "name": "old" }),
            "M_UNSUPPORTED_ROOM_VERSION",
        ),
        (
            "invalid user ID in invite",
            json!({ "invite": ["not a user id"], "name": "bad invite" }),
            "",
        ),
        (
            "initial state with a non-object content",
            json!({ "initial_state": [{ "type": "m.room.topic", "state_key": "", "content": "text" }] }),
            "",
        ),
    ];
    let failures = try_cases(&alice, &db, &cases).await;
    db.close().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A value for a failure message, cut short.
fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(160) {
        Some((i, _)) => format!("{}… ({} bytes)", &text[..i], text.len()),
        None => text,
    }
}

async fn try_cases(alice: &common::Client, db: &AnyPool, cases: &[(&str, Value, &str)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (what, body, errcode) in cases {
        let errcode = *errcode;
        let before = footprint(db).await;
        let (status, resp) = alice.request(Method::POST, "/createRoom", Some(body)).await;
        let (body, resp_text) = (short(body), short(&resp));
        let after = footprint(db).await;
        if status == StatusCode::OK {
            failures.push(format!("{what}: accepted {body} -> {resp_text}"));
            continue;
        }
        if !status.is_client_error() || (!errcode.is_empty() && resp["errcode"] != errcode) {
            failures.push(format!(
                "{what}: {body} -> {status} {resp_text} (wanted 4xx {errcode})"
            ));
        }
        if before != after {
            failures.push(format!(
                "{what}: {body} -> {status} {resp_text} but left rows behind\n  before {before:?}\n  after  {after:?}"
            ));
        }
    }
    failures
}

/// Content that only fails when its event is built, after the create event was built. (Hearth
/// before 301755d left the create and join events behind, and answered 403 M_FORBIDDEN.)
#[tokio::test]
async fn create_room_failing_late_leaves_nothing() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let db = server.db().await;
    let big = "x".repeat(70_000);
    let cases = [
        (
            "power level override that is not power levels",
            json!({ "power_level_content_override": { "users": { "@bob:hearth.test": "high" } } }),
            "M_INVALID_ROOM_STATE",
        ),
        (
            "creator's own level set below what the name needs (the spec's example)",
            json!({
                "room_version": "10",
                "name": "unreachable",
                "power_level_content_override": { "users": { "@alice:hearth.test": 0 }, "events": { "m.room.name": 50 } },
            }),
            "M_INVALID_ROOM_STATE",
        ),
        ("a topic too large for an event", json!({ "topic": big }), ""),
        (
            "initial state too large for an event",
            json!({ "initial_state": [{ "type": "org.example.big", "state_key": "", "content": { "b": big } }] }),
            "",
        ),
    ];
    let failures = try_cases(&alice, &db, &cases).await;
    db.close().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
