//! Sends share a transaction (group commit), but never their failures: an event the database
//! cannot store is refused before it joins a batch (4xx), and an event that fails in storage
//! anyway fails alone — every other sender in its batch gets its 200 and its event is stored.

mod common;

use std::collections::HashSet;

use common::{Client, Server, encode, txn_id};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{
    Executor, Row,
    any::{AnyPoolOptions, install_default_drivers},
};

/// Every event ID of the room, read back with `/messages`.
async fn room_event_ids(client: &Client, room: &str) -> HashSet<String> {
    let resp = client
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=1000", encode(room)),
            None,
        )
        .await;
    resp["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

/// Requests no database can store as they stand, each with what it is.
fn hostile_requests(room: &str, target: &str) -> Vec<(String, Method, String, Value)> {
    let room = encode(room);
    let msg = |extra: Value| {
        let mut content = json!({ "msgtype": "m.text", "body": "hostile" });
        content["m.relates_to"] = extra;
        content
    };
    let long = "a".repeat(3000);
    let send = |event_type: &str, txn: &str| format!("/rooms/{room}/send/{event_type}/{txn}");
    vec![
        (
            "3 KB relation event_id".into(),
            Method::PUT,
            send("m.room.message", &txn_id()),
            msg(json!({ "rel_type": "m.thread", "event_id": format!("${long}") })),
        ),
        (
            "relation event_id that is no event ID".into(),
            Method::PUT,
            send("m.room.message", &txn_id()),
            msg(json!({ "rel_type": "m.annotation", "event_id": "nope", "key": "x" })),
        ),
        (
            "relation event_id with NUL".into(),
            Method::PUT,
            send("m.room.message", &txn_id()),
            msg(json!({ "rel_type": "m.thread", "event_id": "$a\u{0}b" })),
        ),
        (
            "3 KB rel_type".into(),
            Method::PUT,
            send("m.room.message", &txn_id()),
            msg(json!({ "rel_type": long.clone(), "event_id": target })),
        ),
        (
            "NUL in txnId".into(),
            Method::PUT,
            send("m.room.message", &format!("{}%00", txn_id())),
            json!({ "msgtype": "m.text", "body": "nul" }),
        ),
        (
            "3 KB txnId".into(),
            Method::PUT,
            send("m.room.message", &long),
            json!({ "msgtype": "m.text", "body": "long txn" }),
        ),
        (
            "NUL in event type".into(),
            Method::PUT,
            send("org.example%00x", &txn_id()),
            json!({}),
        ),
        (
            "3 KB event type".into(),
            Method::PUT,
            send(&long, &txn_id()),
            json!({}),
        ),
        (
            "NUL in state key".into(),
            Method::PUT,
            format!("/rooms/{room}/state/org.example.state/a%00b"),
            json!({}),
        ),
        (
            "NUL in state event type".into(),
            Method::PUT,
            format!("/rooms/{room}/state/org.example%00/k"),
            json!({}),
        ),
        (
            "3 KB state key".into(),
            Method::PUT,
            format!("/rooms/{room}/state/org.example.state/{long}"),
            json!({}),
        ),
        (
            "NUL in redaction txnId".into(),
            Method::PUT,
            format!("/rooms/{room}/redact/{}/x%00", encode(target)),
            json!({}),
        ),
        (
            "NUL in redaction target".into(),
            Method::PUT,
            format!("/rooms/{room}/redact/%24abc%00/{}", txn_id()),
            json!({}),
        ),
        (
            "3 KB redaction target".into(),
            Method::PUT,
            format!("/rooms/{room}/redact/%24{long}/{}", txn_id()),
            json!({}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_sends_are_refused_and_never_fail_their_neighbours() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "busy" }))
        .await;
    bob.join(&room).await;
    let target = alice.send_text(&room, "target").await;

    let ordinary = (0..80).map(|i| {
        let sender = if i % 2 == 0 { alice.clone() } else { bob.clone() };
        let room = room.clone();
        async move {
            let path = sender.send_path(&room, "m.room.message");
            // U+0000 inside content is fine: canonical JSON stores it escaped.
            let body = json!({ "msgtype": "m.text", "body": format!("ordinary {i}\u{0}") });
            sender.request(Method::PUT, &path, Some(&body)).await
        }
    });
    let hostile =
        hostile_requests(&room, &target)
            .into_iter()
            .cycle()
            .take(40)
            .map(|(what, method, path, body)| {
                let alice = alice.clone();
                async move { (what, alice.request(method, &path, Some(&body)).await) }
            });
    let (ordinary, hostile) = tokio::join!(join_all(ordinary), join_all(hostile));

    for (what, (status, body)) in &hostile {
        assert!(status.is_client_error(), "{what}: {status} {body}");
        assert!(
            matches!(
                body["errcode"].as_str(),
                Some("M_BAD_JSON" | "M_INVALID_PARAM" | "M_TOO_LARGE" | "M_NOT_FOUND")
            ),
            "{what}: {status} {body}"
        );
    }
    let mut sent = HashSet::new();
    for (status, body) in &ordinary {
        assert_eq!(*status, StatusCode::OK, "{body}\n{}", server.log_tail());
        sent.insert(body["event_id"].as_str().expect("event_id").to_owned());
    }
    let stored = room_event_ids(&bob, &room).await;
    assert!(sent.is_subset(&stored), "missing: {:?}", sent.difference(&stored));
    // The room goes on normally.
    alice.send_text(&room, "after").await;
}

/// A writable connection to the server's database, to plant a failure the server cannot see
/// coming: a trigger that refuses `org.test.poison` events at insert time, standing in for any
/// storage failure that validation does not catch.
async fn poison_events(server: &Server) {
    install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&server.db_url)
        .await
        .expect("connect to the server's database");
    match server.backend {
        common::Backend::Sqlite => {
            pool.execute("PRAGMA busy_timeout = 10000")
                .await
                .expect("busy timeout");
            pool.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.type = 'org.test.poison' \
                 BEGIN SELECT RAISE(ABORT, 'poisoned event'); END",
            )
            .await
            .expect("create trigger");
        }
        common::Backend::Postgres => {
            pool.execute(
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'poisoned event'; END $$",
            )
            .await
            .expect("create function");
            pool.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON events FOR EACH ROW \
                 WHEN (NEW.type = 'org.test.poison') EXECUTE FUNCTION poison()",
            )
            .await
            .expect("create trigger");
        }
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_that_fails_in_storage_fails_alone() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "poisoned" }))
        .await;
    let other_room = bob.create_room(json!({ "name": "elsewhere" })).await;
    bob.join(&room).await;
    alice.send_text(&room, "before").await;
    poison_events(&server).await;

    // Many sends at once, so that they queue and are written in batches, with poisoned ones
    // among them.
    let sends = (0..150).map(|i| {
        // Alice is only in the first room.
        let elsewhere = i % 5 == 4;
        let sender = if i % 3 == 0 && !elsewhere {
            alice.clone()
        } else {
            bob.clone()
        };
        let room = if elsewhere {
            other_room.clone()
        } else {
            room.clone()
        };
        async move {
            let poisoned = i % 10 == 3;
            let event_type = if poisoned {
                "org.test.poison"
            } else {
                "m.room.message"
            };
            let body = json!({ "msgtype": "m.text", "body": format!("message {i}") });
            let path = sender.send_path(&room, event_type);
            (
                poisoned,
                room,
                sender.request(Method::PUT, &path, Some(&body)).await,
            )
        }
    });
    let results = join_all(sends).await;

    let mut sent: Vec<(String, String)> = Vec::new();
    for (poisoned, room, (status, body)) in &results {
        if *poisoned {
            assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        } else {
            assert_eq!(*status, StatusCode::OK, "{body}\n{}", server.log_tail());
            sent.push((
                room.clone(),
                body["event_id"].as_str().expect("event_id").to_owned(),
            ));
        }
    }
    let log = std::fs::read_to_string(server.dir().join("hearth-1.log")).unwrap_or_default();
    assert!(
        log.lines()
            .filter(|l| l.contains("storing a batch of events failed"))
            .any(|l| !l.contains("events=1")),
        "no poisoned event shared a batch, so isolation was not exercised:\n{}",
        server.log_tail()
    );
    for checked_room in [&room, &other_room] {
        let stored = room_event_ids(&bob, checked_room).await;
        for (_, id) in sent.iter().filter(|(r, _)| r == checked_room) {
            assert!(
                stored.contains(id),
                "{id} was answered 200 but is not in {checked_room}"
            );
        }
    }

    // Nothing stored names an event that was never stored (the batch that failed was rebuilt,
    // not stored with references into it), and the rooms go on.
    let db = server.db().await;
    let dangling: i64 = sqlx::query(
        "SELECT COUNT(*) FROM event_edges g WHERE NOT EXISTS \
         (SELECT 1 FROM events e WHERE e.event_id = g.prev_event_id)",
    )
    .fetch_one(&db)
    .await
    .expect("count dangling edges")
    .get(0);
    assert_eq!(dangling, 0);
    let poison_rows: i64 = sqlx::query("SELECT COUNT(*) FROM events WHERE type = 'org.test.poison'")
        .fetch_one(&db)
        .await
        .expect("count")
        .get(0);
    assert_eq!(poison_rows, 0);
    alice.send_text(&room, "after").await;
    bob.send_text(&other_room, "after").await;
}
