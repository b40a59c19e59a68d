//! The incremental sync engine (issue 14): what a woken `/sync` costs, that it builds only
//! what moved, and that its shared caches never show anyone more than the database would.
//! The servers run with `testing.sync_stats`, whose counters these tests read.

mod common;

use std::time::Duration;

use common::{Backend, Client, Server, timeline_ids};
use serde_json::{Value, json};

async fn start() -> Server {
    Server::start_with_config(
        Backend::from_env(),
        "[privacy]\ndefault_mode = \"none\"\n[testing]\nsync_stats = true\n",
    )
    .await
}

async fn stats(client: &Client) -> Value {
    let url = format!("{}/_hearth/testing/v1/sync_stats", client.base_url);
    let resp = client
        .http
        .get(&url)
        .bearer_auth(client.token.as_deref().unwrap_or_default())
        .send()
        .await
        .expect("stats");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("stats JSON")
}

fn stat(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {stats}"))
}

/// `count` rooms made by `owner`, each joined by `others`.
async fn rooms_with(owner: &Client, others: &[&Client], count: usize) -> Vec<String> {
    let mut rooms = Vec::new();
    for i in 0..count {
        let room = owner
            .create_room(json!({ "preset": "public_chat", "name": format!("room {i}") }))
            .await;
        for other in others {
            other.join(&room).await;
        }
        rooms.push(room);
    }
    rooms
}

/// Starts a long-poll of `client` from `since` in the background.
fn long_poll(client: &Client, since: &str) -> tokio::task::JoinHandle<Value> {
    let client = client.clone();
    let since = since.to_owned();
    tokio::spawn(async move { client.sync(Some(&since), 10_000, 10).await })
}

/// Waits until the server has run `n` full computations more than `before` (the long-polls'
/// first steps), so that what follows wakes them.
async fn until_waiting(client: &Client, before: u64, n: u64) {
    for _ in 0..200 {
        if stat(&stats(client).await, "full_computes") >= before + n {
            // The computation is counted just before the waiter registers.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the long-polls never started");
}

#[tokio::test]
async fn a_woken_sync_is_measured_and_delivers_the_message() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rooms = rooms_with(&bob, &[&alice], 10).await;
    let initial = alice.sync(None, 0, 10).await;
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    let before = stats(&alice).await;
    let poll = long_poll(&alice, &since);
    until_waiting(&alice, stat(&before, "full_computes"), 1).await;
    let event_id = bob.send_text(&rooms[3], "hello").await;
    let woken = poll.await.unwrap();
    assert_eq!(timeline_ids(&woken, &rooms[3]), vec![event_id]);
    assert_eq!(
        woken["rooms"]["join"].as_object().unwrap().len(),
        1,
        "only the room that moved: {woken}"
    );

    let after = stats(&alice).await;
    assert_eq!(
        stat(&after, "woken_computes"),
        stat(&before, "woken_computes") + 1
    );
    let queries = stat(&after, "last_woken_queries");
    eprintln!("a woken sync of a user in 10 rooms, one room with a message: {queries} queries");
    assert!(queries > 0);
}

#[tokio::test]
async fn sync_stats_are_absent_unless_configured() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let url = format!("{}/_hearth/testing/v1/sync_stats", alice.base_url);
    let resp = alice
        .http
        .get(&url)
        .bearer_auth(alice.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    // And never without a token.
    let resp = alice.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}
