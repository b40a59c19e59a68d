//! `/messages` walks the stored timeline exactly: backwards from a sync's `prev_batch` and then
//! forwards again, every stored event of the room once, in stream order, while others write.

mod common;

use common::{Client, Server, encode};
use reqwest::Method;
use serde_json::json;
use sqlx::Row;

async fn page(
    client: &Client,
    room: &str,
    from: &str,
    dir: &str,
    limit: u32,
) -> (Vec<String>, Option<String>) {
    let resp = client
        .ok(
            Method::GET,
            &format!(
                "/rooms/{}/messages?dir={dir}&limit={limit}&from={}",
                encode(room),
                encode(from)
            ),
            None,
        )
        .await;
    let ids = resp["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect();
    (ids, resp["end"].as_str().map(ToOwned::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn messages_pagination_matches_the_stored_timeline() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "pages" }))
        .await;
    bob.join(&room).await;
    for i in 0..60 {
        if i % 9 == 0 {
            alice
                .set_state(&room, "org.hearth.page", &format!("{i}"), json!({ "i": i }))
                .await;
        }
        let sender = if i % 2 == 0 { &alice } else { &bob };
        sender.send_text(&room, &format!("page {i}")).await;
    }
    let sync = alice.sync(None, 0, 5).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    let prev_batch = timeline["prev_batch"].as_str().expect("prev_batch").to_owned();
    let mut newest_first: Vec<String> = timeline["events"]
        .as_array()
        .expect("events")
        .iter()
        .rev()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect();

    // Writes after the sync must not appear when paginating back from its prev_batch.
    let writer = {
        let (bob, room) = (bob.clone(), room.clone());
        tokio::spawn(async move {
            for i in 0..20 {
                bob.send_text(&room, &format!("late {i}")).await;
            }
        })
    };
    let mut from = prev_batch;
    let mut pages = 0;
    // Events of the last page read from `from` (they lie before it, so a forward pass from
    // `from` does not repeat them).
    let mut before_from = 0;
    loop {
        let (ids, end) = page(&alice, &room, &from, "b", 7).await;
        pages += 1;
        assert!(pages < 100, "backwards pagination does not end");
        if ids.is_empty() {
            break;
        }
        before_from = ids.len();
        newest_first.extend(ids);
        match end {
            Some(end) => {
                from = end;
                before_from = 0;
            }
            None => break,
        }
    }
    writer.await.expect("writer");

    let db = server.db().await;
    let stored: Vec<String> =
        sqlx::query("SELECT event_id FROM events WHERE room_id = $1 ORDER BY stream_ordering")
            .bind(room.clone())
            .fetch_all(&db)
            .await
            .expect("read events")
            .into_iter()
            .map(|r| r.get(0))
            .collect();
    db.close().await;
    let mut oldest_first = newest_first.clone();
    oldest_first.reverse();
    assert_eq!(
        oldest_first,
        stored[..oldest_first.len().min(stored.len())].to_vec(),
        "backwards pagination is not the stored timeline up to the sync"
    );
    assert_eq!(
        stored.len(),
        oldest_first.len() + 20,
        "backwards pagination missed events before the sync, or showed later ones"
    );

    // Forwards from where the backwards pass stopped, to now: the rest of the room, once.
    let mut forwards = Vec::new();
    let mut from_f = from;
    loop {
        let (ids, end) = page(&alice, &room, &from_f, "f", 9).await;
        if ids.is_empty() {
            break;
        }
        forwards.extend(ids);
        match end {
            Some(end) => from_f = end,
            None => break,
        }
        assert!(
            forwards.len() <= stored.len(),
            "forwards pagination repeats events"
        );
    }
    assert_eq!(
        forwards,
        stored[before_from..].to_vec(),
        "forwards pagination is not the stored timeline"
    );
    assert_eq!(
        stored[0], oldest_first[0],
        "backwards pagination does not reach the create event"
    );
}
