//! Everything a client relies on survives a restart of the process.

mod common;

use std::collections::BTreeSet;

use common::{Server, count, encode, timeline_ids};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

async fn signing_key(server: &Server) -> (String, String) {
    let db = server.db().await;
    let rows = sqlx::query("SELECT key_id, pkcs8 FROM server_signing_keys")
        .fetch_all(&db)
        .await
        .expect("read signing keys");
    assert_eq!(rows.len(), 1, "exactly one signing key is stored");
    let key = (rows[0].get(0), rows[0].get(1));
    db.close().await;
    key
}

fn joined_rooms(sync: &Value) -> BTreeSet<String> {
    sync["rooms"]["join"]
        .as_object()
        .map(|rooms| rooms.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn restart_keeps_everything() {
    let mut server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let room = alice
        .create_room(json!({ "name": "Before the restart", "preset": "private_chat" }))
        .await;
    let other = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.invite(&room, &bob.user_id).await;
    bob.join(&room).await;
    bob.join(&other).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(alice.send_text(&room, &format!("alice {i}")).await);
        sent.push(bob.send_text(&room, &format!("bob {i}")).await);
    }
    let txn_event = alice
        .ok(
            Method::PUT,
            &format!("/rooms/{}/send/m.room.message/before-restart", encode(&room)),
            Some(&json!({ "msgtype": "m.text", "body": "dup" })),
        )
        .await["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();
    sent.push(txn_event.clone());
    alice
        .ok(
            Method::PUT,
            &format!("/profile/{}/displayname", encode(&alice.user_id)),
            Some(&json!({ "displayname": "Alice Liddell" })),
        )
        .await;

    // A second device that logs out before the restart must stay logged out.
    let login = server
        .anon()
        .ok(
            Method::POST,
            "/login",
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "bob" },
                "password": common::PASSWORD,
            })),
        )
        .await;
    let gone = server.client_with_token(
        &bob.user_id,
        login["device_id"].as_str().expect("device_id"),
        login["access_token"].as_str().expect("access_token"),
    );
    gone.ok(Method::POST, "/logout", Some(&json!({}))).await;

    let key_before = signing_key(&server).await;
    let alice_before = alice.sync(None, 0, 100).await;
    let bob_before = bob.sync(None, 0, 100).await;
    let state_before = alice.room_state_ids(&room).await;
    let since = alice_before["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    assert_eq!(
        joined_rooms(&alice_before),
        BTreeSet::from([room.clone(), other.clone()])
    );
    let timeline_before = timeline_ids(&alice_before, &room);
    for id in &sent {
        assert!(
            timeline_before.contains(id),
            "{id} missing from the sync before the restart"
        );
    }

    server.restart().await;

    // The same access tokens still work, for the same users and devices.
    for client in [&alice, &bob] {
        let who = client.ok(Method::GET, "/account/whoami", None).await;
        assert_eq!(who["user_id"], client.user_id.as_str());
        assert_eq!(who["device_id"], client.device_id.as_str());
    }
    let (status, body) = gone.request(Method::GET, "/account/whoami", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "logged-out token works after restart: {body}"
    );
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    let profile = alice
        .ok(
            Method::GET,
            &format!("/profile/{}/displayname", encode(&alice.user_id)),
            None,
        )
        .await;
    assert_eq!(profile["displayname"], "Alice Liddell");

    // The signing key is the one from before, not a new one.
    assert_eq!(
        signing_key(&server).await,
        key_before,
        "signing key changed across restart"
    );

    // Initial syncs show the same rooms and the same timelines.
    let alice_after = alice.sync(None, 0, 100).await;
    let bob_after = bob.sync(None, 0, 100).await;
    assert_eq!(joined_rooms(&alice_after), joined_rooms(&alice_before));
    assert_eq!(joined_rooms(&bob_after), joined_rooms(&bob_before));
    assert_eq!(timeline_ids(&alice_after, &room), timeline_before);
    assert_eq!(timeline_ids(&bob_after, &room), timeline_ids(&bob_before, &room));
    assert_eq!(
        timeline_ids(&alice_after, &other),
        timeline_ids(&alice_before, &other)
    );
    assert_eq!(alice.room_state_ids(&room).await, state_before);

    // A token from before the restart is still a valid position: nothing new yet.
    let idle = alice.sync(Some(&since), 0, 100).await;
    assert!(
        timeline_ids(&idle, &room).is_empty(),
        "an incremental sync from the old token returned old events: {idle}"
    );

    // New events can be sent, they continue the DAG, and the old token sees exactly them.
    // A transaction ID used before the restart still maps to its event (no second event).
    let txn_path = format!("/rooms/{}/send/m.room.message/before-restart", encode(&room));
    let again = alice
        .ok(
            Method::PUT,
            &txn_path,
            Some(&json!({ "msgtype": "m.text", "body": "dup" })),
        )
        .await;
    assert_eq!(
        again["event_id"].as_str(),
        Some(txn_event.as_str()),
        "txn ID not idempotent across restart"
    );

    let new_event = bob.send_text(&room, "after the restart").await;
    let (status, dup) = bob
        .request(
            Method::PUT,
            &bob.send_path(&room, "m.room.message"),
            Some(&json!({ "msgtype": "m.text", "body": "another" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{dup}");
    let another = dup["event_id"].as_str().expect("event_id").to_owned();
    let after = alice.sync(Some(&since), 0, 100).await;
    assert_eq!(timeline_ids(&after, &room), vec![new_event.clone(), another]);

    let db = server.db().await;
    let prev: Vec<String> = sqlx::query("SELECT prev_event_id FROM event_edges WHERE event_id = $1")
        .bind(new_event.clone())
        .fetch_all(&db)
        .await
        .expect("edges")
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        prev,
        vec![timeline_before.last().expect("timeline").clone()],
        "the first event after the restart must point at the last one before it"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM forward_extremities WHERE room_id = $1",
            &[&room]
        )
        .await,
        1
    );
    db.close().await;
}
