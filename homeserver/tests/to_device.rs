//! `PUT /sendToDevice` over HTTP: delivery in order, idempotent transaction IDs, `*`, deletion
//! only after acknowledgement, durability across a restart and a SIGKILL, bounded queues.

mod common;
mod e2ee_support;

use common::{Server, count};
use e2ee_support::{login, password_auth};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn events(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn numbers(sync: &Value) -> Vec<i64> {
    events(sync)
        .iter()
        .filter_map(|e| e["content"]["n"].as_i64())
        .collect()
}

async fn send(client: &common::Client, txn: &str, messages: Value) -> (StatusCode, Value) {
    client
        .request(
            Method::PUT,
            &format!("/sendToDevice/org.example.test/{txn}"),
            Some(&json!({ "messages": messages })),
        )
        .await
}

#[tokio::test]
async fn delivered_in_order_once_acknowledged() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bob2 = login(&server, "bob").await;
    let s0 = bob.sync(None, 0, 1).await;
    let since = s0["next_batch"].as_str().unwrap().to_owned();

    // A long-poll wakes for a message to the device.
    let waiting = {
        let bob = bob.clone();
        let since = since.clone();
        tokio::spawn(async move { bob.sync(Some(&since), 20_000, 1).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    for n in 0..3 {
        let (status, resp) = send(
            &alice,
            &format!("t{n}"),
            json!({ bob.user_id.clone(): { bob.device_id.clone(): { "n": n } } }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{resp}");
    }
    let woke = waiting.await.unwrap();
    assert!(started.elapsed().as_secs() < 10);
    assert!(!events(&woke).is_empty(), "{woke}");
    // The same transaction ID again stores nothing; from another device it is another request.
    send(
        &alice,
        "t1",
        json!({ bob.user_id.clone(): { bob.device_id.clone(): { "n": 99 } } }),
    )
    .await;
    let alice2 = login(&server, "alice").await;
    send(
        &alice2,
        "t1",
        json!({ bob.user_id.clone(): { bob.device_id.clone(): { "n": 3 } } }),
    )
    .await;

    let s1 = bob.sync(Some(&since), 0, 1).await;
    assert_eq!(numbers(&s1), vec![0, 1, 2, 3], "in order, no duplicate: {s1}");
    let ev = &events(&s1)[0];
    assert_eq!(ev["sender"], json!(alice.user_id));
    assert_eq!(ev["type"], "org.example.test");
    // Not acknowledged yet: the same `since` gets them again.
    let again = bob.sync(Some(&since), 0, 1).await;
    assert_eq!(numbers(&again), vec![0, 1, 2, 3]);
    // Acknowledged by syncing with the later token: gone.
    let s2 = bob.sync(Some(s1["next_batch"].as_str().unwrap()), 0, 1).await;
    assert!(events(&s2).is_empty(), "{s2}");
    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM to_device_messages WHERE device_id = $1",
            &[&bob.device_id]
        )
        .await,
        0
    );
    // The other device got nothing.
    assert!(events(&bob2.sync(None, 0, 1).await).is_empty());

    // `*` reaches every device of the user.
    send(
        &alice,
        "star",
        json!({ bob.user_id.clone(): { "*": { "n": 7 } } }),
    )
    .await;
    assert_eq!(
        numbers(&bob.sync(Some(s2["next_batch"].as_str().unwrap()), 0, 1).await),
        vec![7]
    );
    assert_eq!(numbers(&bob2.sync(None, 0, 1).await), vec![7]);
}

#[tokio::test]
async fn more_than_a_sync_holds_come_in_batches() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    for n in 0..150 {
        send(
            &alice,
            &format!("b{n}"),
            json!({ bob.user_id.clone(): { bob.device_id.clone(): { "n": n } } }),
        )
        .await;
    }
    let s1 = bob.sync(None, 0, 1).await;
    assert_eq!(numbers(&s1), (0..100).collect::<Vec<_>>());
    let s2 = bob.sync(Some(s1["next_batch"].as_str().unwrap()), 0, 1).await;
    assert_eq!(numbers(&s2), (100..150).collect::<Vec<_>>());
}

#[tokio::test]
async fn queued_messages_survive_restart_and_sigkill() {
    let mut server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let to_bob = |n: i64| json!({ bob.user_id.clone(): { bob.device_id.clone(): { "n": n } } });
    send(&alice, "r1", to_bob(1)).await;
    server.restart().await;
    send(&alice, "r2", to_bob(2)).await;
    server.crash_and_restart().await;
    // The transaction ID is remembered across the crash too.
    let (status, _) = send(&alice, "r2", to_bob(22)).await;
    assert_eq!(status, StatusCode::OK);
    let s = bob.sync(None, 0, 1).await;
    assert_eq!(numbers(&s), vec![1, 2], "{s}");
    // Delivered but not acknowledged before a crash: delivered again.
    server.crash_and_restart().await;
    let s = bob.sync(None, 0, 1).await;
    assert_eq!(numbers(&s), vec![1, 2], "{s}");
    let s = bob.sync(Some(s["next_batch"].as_str().unwrap()), 0, 1).await;
    assert!(events(&s).is_empty());
}

#[tokio::test]
async fn floods_and_hostile_bodies_are_refused() {
    let server = Server::start_with_config(
        common::Backend::from_env(),
        "[limits]\nmax_pending_to_device = 5\n",
    )
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let to_bob = |n: i64| json!({ bob.user_id.clone(): { bob.device_id.clone(): { "n": n } } });
    for n in 0..5 {
        let (status, _) = send(&alice, &format!("f{n}"), to_bob(n)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, resp) = send(&alice, "f5", to_bob(5)).await;
    assert_eq!(
        (status, resp["errcode"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!("M_LIMIT_EXCEEDED")),
        "{resp}"
    );
    // Refused, so the transaction ID is free for a retry once the queue drains.
    let s = bob.sync(None, 0, 1).await;
    bob.sync(Some(s["next_batch"].as_str().unwrap()), 0, 1).await;
    let (status, _) = send(&alice, "f5", to_bob(5)).await;
    assert_eq!(status, StatusCode::OK);

    // Too many recipients in one request.
    let many: serde_json::Map<String, Value> = (0..1001).map(|i| (format!("D{i}"), json!({}))).collect();
    let (status, resp) = send(&alice, "many", json!({ bob.user_id.clone(): many })).await;
    assert_eq!(
        (status, resp["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
    );
    // Bad user IDs, non-object contents, a body without `messages`.
    let (status, _) = send(&alice, "bad1", json!({ "not-a-user": { "D": {} } })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(&alice, "bad2", json!({ bob.user_id.clone(): { "D": 5 } })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = alice
        .request(
            Method::PUT,
            "/sendToDevice/t/x",
            Some(&json!({ "nomessages": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // An unknown device: accepted, nothing queued.
    let (status, _) = send(
        &alice,
        "ghost",
        json!({ bob.user_id.clone(): { "GHOST": {"n": 1} } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM to_device_messages WHERE device_id = $1",
            &["GHOST"]
        )
        .await,
        0
    );
}

#[tokio::test]
async fn deleting_a_device_drops_its_queue() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bob2 = login(&server, "bob").await;
    send(&alice, "d1", json!({ bob.user_id.clone(): { "*": { "n": 1 } } })).await;
    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM to_device_messages WHERE user_id = $1",
            &[&bob.user_id]
        )
        .await,
        2
    );
    let body = json!({ "devices": [bob2.device_id.clone()] });
    let (status, challenge) = bob.request(Method::POST, "/delete_devices", Some(&body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = challenge["session"].as_str().unwrap();
    bob.ok(
        Method::POST,
        "/delete_devices",
        Some(&json!({ "devices": [bob2.device_id.clone()], "auth": password_auth("bob", Some(session)) })),
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM to_device_messages WHERE device_id = $1",
            &[&bob2.device_id]
        )
        .await,
        0
    );
    assert_eq!(numbers(&bob.sync(None, 0, 1).await), vec![1]);
    // logout/all drops the rest.
    bob.ok(Method::POST, "/logout/all", Some(&json!({}))).await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM to_device_messages WHERE user_id = $1",
            &[&bob.user_id]
        )
        .await,
        0
    );
}
