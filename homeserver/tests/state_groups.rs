//! Room state is stored as deltas: many state events cost about one row each, not a copy of the
//! whole state, and the state rebuilt from the deltas is what clients were shown at the time.

mod common;

use std::collections::HashMap;

use common::{Client, Server, StateGroups, count};
use serde_json::json;
use sqlx::Row;

/// (type, state key) → event ID.
type StateMap = HashMap<(String, String), String>;

const STATE_EVENTS: usize = 120;
const KEYS: usize = 40;

#[tokio::test]
async fn state_deltas_are_compact() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let mut members: Vec<Client> = Vec::new();
    for name in ["bob", "carol", "dave", "erin"] {
        members.push(server.register(name).await);
    }
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "deltas" }))
        .await;
    for m in &members {
        m.join(&room).await;
    }

    // Checkpoints: after these state events, what GET /state says, and which event it was.
    let checkpoints = [0usize, 17, 48, 49, 50, 51, 88, 100, 119];
    let mut shown: Vec<(String, StateMap)> = Vec::new();
    for i in 0..STATE_EVENTS {
        // A mix of new keys, overwritten keys and a replaced well-known event.
        let (event_type, state_key, content) = if i % 3 == 0 {
            (
                "m.room.topic".to_owned(),
                String::new(),
                json!({ "topic": format!("topic {i}") }),
            )
        } else {
            (
                "org.hearth.counter".to_owned(),
                format!("k{}", i % KEYS),
                json!({ "i": i }),
            )
        };
        let event_id = alice.set_state(&room, &event_type, &state_key, content).await;
        if i % 10 == 5 {
            alice.send_text(&room, &format!("message after {i}")).await;
        }
        if checkpoints.contains(&i) {
            let state = alice.room_state_ids(&room).await;
            assert_eq!(
                state.get(&(event_type, state_key)),
                Some(&event_id),
                "GET /state does not show the event just sent"
            );
            shown.push((event_id, state));
        }
    }

    let db = server.db().await;
    let final_state = alice.room_state_ids(&room).await;
    let state_size = final_state.len();
    let state_events = count(
        &db,
        "SELECT COUNT(*) FROM events WHERE room_id = $1 AND state_key IS NOT NULL",
        &[&room],
    )
    .await as usize;
    let groups = StateGroups::load(&db, &room).await;
    let rows = count(
        &db,
        "SELECT COUNT(*) FROM state_group_entries e JOIN state_groups g ON g.id = e.state_group \
         WHERE g.room_id = $1",
        &[&room],
    )
    .await as usize;

    // The state rebuilt at every checkpoint is what the client was shown then.
    for (event_id, state) in &shown {
        let group: i64 = sqlx::query("SELECT state_group FROM events WHERE event_id = $1")
            .bind(event_id.clone())
            .fetch_one(&db)
            .await
            .expect("checkpoint event stored")
            .get(0);
        assert_eq!(
            &groups.state_of(group),
            state,
            "state rebuilt from group {group} (after {event_id}) differs from GET /state at the time"
        );
    }

    // Size: what a full copy per state group would cost, against what is stored.
    let mut full_copies = 0;
    let mut longest_chain = 0;
    for (id, prev) in &groups.prev {
        full_copies += groups.state_of(*id).len();
        longest_chain = longest_chain.max(groups.chain(*id).len() - 1);
        if prev.is_some() {
            let n = groups.entries.get(id).map_or(0, Vec::len);
            assert_eq!(n, 1, "delta group {id} holds {n} rows for one state event");
        }
    }
    println!(
        "{state_events} state events, final state {state_size} entries, {} groups, {rows} rows stored \
         (a full copy per group would be {full_copies}), longest delta chain {longest_chain}",
        groups.prev.len()
    );
    assert!(
        state_events >= STATE_EVENTS,
        "only {state_events} state events stored"
    );
    assert!(
        groups.prev.len() <= state_events,
        "{} state groups for {state_events} state events: messages should not make groups",
        groups.prev.len()
    );
    assert!(
        rows * 5 <= STATE_EVENTS * state_size,
        "{rows} state rows is not far below {STATE_EVENTS} × {state_size}"
    );
    assert!(
        rows * 4 <= full_copies,
        "{rows} rows vs {full_copies} for full copies"
    );
    assert!(
        longest_chain < STATE_EVENTS / 2,
        "delta chain of {longest_chain}: reading state would walk most of the history"
    );
    db.close().await;
}
