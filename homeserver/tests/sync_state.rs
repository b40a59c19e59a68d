//! A client that keeps room state only from `/sync` (the `state` section, then the state events
//! of the timeline) ends up with exactly the room's current state as stored, also when the
//! timelines are limited (gappy syncs).

mod common;

use std::collections::HashMap;

use common::{Client, Server};
use serde_json::{Value, json};
use sqlx::{AnyPool, Row};

type StateMap = HashMap<(String, String), String>;

/// Applies one joined room section of a sync response to a client-side state map.
fn apply(state: &mut StateMap, room: &Value) {
    let ids = |section: &str| -> Vec<String> {
        room[section]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["event_id"].as_str().map(ToOwned::to_owned))
            .collect()
    };
    let timeline = ids("timeline");
    for id in ids("state") {
        assert!(
            !timeline.contains(&id),
            "{id} is in both state and timeline: {room}"
        );
    }
    for section in ["state", "timeline"] {
        for event in room[section]["events"].as_array().into_iter().flatten() {
            if let Some(key) = event["state_key"].as_str() {
                state.insert(
                    (event["type"].as_str().expect("type").to_owned(), key.to_owned()),
                    event["event_id"].as_str().expect("event_id").to_owned(),
                );
            }
        }
    }
}

async fn stored_state(db: &AnyPool, room: &str) -> StateMap {
    sqlx::query("SELECT type, state_key, event_id FROM current_state WHERE room_id = $1")
        .bind(room.to_owned())
        .fetch_all(db)
        .await
        .expect("read current_state")
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

async fn churn(alice: &Client, bob: &Client, room: &str, round: usize) {
    for i in 0..4 {
        alice
            .set_state(
                room,
                "org.hearth.sync",
                &format!("k{}", (round + i) % 5),
                json!({ "round": round, "i": i }),
            )
            .await;
        bob.send_text(room, &format!("round {round} message {i}")).await;
    }
    alice
        .set_state(
            room,
            "m.room.topic",
            "",
            json!({ "topic": format!("round {round}") }),
        )
        .await;
}

#[tokio::test]
async fn state_from_gappy_syncs_matches_the_stored_state() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "gaps" }))
        .await;
    bob.join(&room).await;
    churn(&alice, &bob, &room, 0).await;
    let db = server.db().await;

    // Timeline limits small enough that most syncs are gappy.
    for limit in [1u32, 3, 50] {
        let first = bob.sync(None, 0, limit).await;
        let mut state = StateMap::new();
        apply(&mut state, &first["rooms"]["join"][&room]);
        assert_eq!(
            state,
            stored_state(&db, &room).await,
            "initial sync (limit {limit})"
        );
        let mut since = first["next_batch"].as_str().expect("next_batch").to_owned();
        for round in 1..4 {
            churn(&alice, &bob, &room, round + limit as usize).await;
            if round == 2 {
                carol.join(&room).await;
                carol.send_text(&room, "hello").await;
            }
            let resp = bob.sync(Some(&since), 0, limit).await;
            let section = &resp["rooms"]["join"][&room];
            if limit < 10 {
                assert_eq!(
                    section["timeline"]["limited"],
                    json!(true),
                    "expected a gappy sync: {section}"
                );
            }
            apply(&mut state, section);
            assert_eq!(
                state,
                stored_state(&db, &room).await,
                "state kept from syncs differs from the stored state (limit {limit}, round {round})"
            );
            since = resp["next_batch"].as_str().expect("next_batch").to_owned();
        }
        // Carol leaves; she is no longer in the room for the next round.
        carol.leave(&room).await;
    }
    db.close().await;
}
