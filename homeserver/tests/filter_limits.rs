//! Filters cost the server a bounded amount: a pattern of many `*`s is matched in linear time,
//! and lists or entries past the limits are refused with 400 `M_INVALID_PARAM`, whether the
//! filter is uploaded or given inline.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Server, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// One past `MAX_FILTER_LIST_ENTRIES`.
const TOO_MANY: usize = 1001;
/// One past `MAX_FILTER_ENTRY_BYTES`.
const TOO_LONG: usize = 256;

async fn upload(client: &Client, filter: &Value) -> (StatusCode, Value) {
    client
        .request(
            Method::POST,
            &format!("/user/{}/filter", encode(&client.user_id)),
            Some(filter),
        )
        .await
}

fn assert_invalid_param((status, body): (StatusCode, Value), what: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stars_in_a_type_pattern_answer_quickly() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "stars" })).await;
    let wanted = alice.send(&room, "org.example.x", json!({ "n": 1 })).await;
    alice.send_text(&room, "not matched").await;

    // 40 stars then a letter the event types mostly lack: the old recursive matcher tried every
    // split of every type against it and never finished.
    let pattern = format!("{}x", "*".repeat(40));
    let filter = json!({ "types": [pattern] }).to_string();
    let started = Instant::now();
    let resp = alice
        .ok(
            Method::GET,
            &format!(
                "/rooms/{}/messages?dir=b&limit=50&filter={}",
                encode(&room),
                encode(&filter)
            ),
            None,
        )
        .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let types: Vec<&str> = resp["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert!(types.iter().all(|t| t.ends_with('x')), "{types:?}");
    let ids: Vec<&str> = resp["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id"))
        .collect();
    assert_eq!(ids, vec![wanted.as_str()]);

    // The same pattern in a /sync filter.
    let filter = json!({ "room": { "timeline": { "types": [format!("{}x", "*".repeat(40))] } } });
    let started = Instant::now();
    let sync = alice
        .ok(
            Method::GET,
            &format!("/sync?filter={}", encode(&filter.to_string())),
            None,
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let events = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .expect("timeline events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event_id"], wanted.as_str());
}

/// Filters past a limit, at different levels and in different lists.
fn oversized_filters() -> Vec<(&'static str, Value)> {
    let many: Vec<String> = (0..TOO_MANY).map(|i| format!("m.type.{i}")).collect();
    let long = "x".repeat(TOO_LONG);
    vec![
        (
            "too many timeline types",
            json!({ "room": { "timeline": { "types": many } } }),
        ),
        ("too many not_rooms", json!({ "room": { "not_rooms": many } })),
        (
            "too many presence senders",
            json!({ "presence": { "senders": many } }),
        ),
        (
            "long state not_types entry",
            json!({ "room": { "state": { "not_types": [long] } } }),
        ),
        (
            "long timeline rooms entry",
            json!({ "room": { "timeline": { "rooms": [long] } } }),
        ),
        (
            "long account data not_senders entry",
            json!({ "account_data": { "not_senders": [long] } }),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_filters_are_refused_on_upload_and_inline() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "limits" })).await;

    for (what, filter) in oversized_filters() {
        assert_invalid_param(upload(&alice, &filter).await, &format!("upload {what}"));
        let inline = encode(&filter.to_string());
        assert_invalid_param(
            alice
                .request(Method::GET, &format!("/sync?filter={inline}"), None)
                .await,
            &format!("/sync with {what}"),
        );
    }
    // /messages takes a room event filter: the lists at its top level.
    let many: Vec<String> = (0..TOO_MANY).map(|i| format!("@u{i}:x")).collect();
    for (what, filter) in [
        ("too many senders", json!({ "senders": many })),
        (
            "long not_types entry",
            json!({ "not_types": ["y".repeat(TOO_LONG)] }),
        ),
    ] {
        assert_invalid_param(
            alice
                .request(
                    Method::GET,
                    &format!(
                        "/rooms/{}/messages?dir=b&filter={}",
                        encode(&room),
                        encode(&filter.to_string())
                    ),
                    None,
                )
                .await,
            &format!("/messages with {what}"),
        );
    }

    // At the limits everything is accepted.
    let at_limit: Vec<String> = (0..TOO_MANY - 1).map(|i| format!("{i:0>255}")).collect();
    let filter = json!({ "room": { "timeline": { "not_types": at_limit } } });
    let (status, body) = upload(&alice, &filter).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["filter_id"].as_str().expect("filter_id");
    alice.ok(Method::GET, &format!("/sync?filter={id}"), None).await;
}

/// Parsed filters are shared between requests: a stored filter's ID still means only its owner's
/// filter, whoever used it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_filter_id_is_its_owners_alone() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    for n in 0..4 {
        alice.send_text(&room, &format!("m{n}")).await;
    }
    let limit = |n: u32| json!({ "room": { "timeline": { "limit": n } } });
    let (status, a) = upload(&alice, &limit(1)).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    let (status, b) = upload(&bob, &limit(3)).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let (a_id, b_id) = (a["filter_id"].as_str().unwrap(), b["filter_id"].as_str().unwrap());
    let timeline_len = |sync: &Value| {
        sync["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .map(Vec::len)
    };
    for _ in 0..2 {
        // Alice's first, so her parsed filter is the one cached when Bob asks.
        let (status, sync) = alice
            .request(Method::GET, &format!("/sync?filter={a_id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        assert_eq!(timeline_len(&sync), Some(1), "alice's filter: {sync}");
        let (status, sync) = bob
            .request(Method::GET, &format!("/sync?filter={b_id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        assert_eq!(timeline_len(&sync), Some(3), "bob's filter: {sync}");
    }
    if a_id != b_id {
        let (status, body) = bob
            .request(Method::GET, &format!("/sync?filter={a_id}"), None)
            .await;
        assert!(
            status.is_client_error(),
            "bob used alice's filter ID: {status} {body}"
        );
    }
    // The same inline filter is shared, and means the same for both.
    let inline = encode(&limit(2).to_string());
    for client in [&alice, &bob] {
        let (status, sync) = client
            .request(Method::GET, &format!("/sync?filter={inline}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        assert_eq!(timeline_len(&sync), Some(2), "inline filter: {sync}");
    }
}
