//! The incremental sync engine (issue 14): what a woken `/sync` costs, that it builds only
//! what moved, and that its shared caches never show anyone more than the database would.
//! The servers run with `testing.sync_stats`, whose counters these tests read.

mod common;
mod e2ee_support;

use std::time::Duration;

use common::{Backend, Client, Server, encode, timeline_ids};
use reqwest::Method;
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

/// Waits until `n` more requests than `before` found nothing and started waiting (the
/// long-polls), so that what follows wakes them.
async fn until_waiting(client: &Client, before: u64, n: u64) {
    for _ in 0..200 {
        if stat(&stats(client).await, "waits") >= before + n {
            // The wait is counted just before the waiter starts waiting.
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
    until_waiting(&alice, stat(&before, "waits"), 1).await;
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
    // The room's new event comes from the recent-event ring and its unread counts from memory
    // (push/unread.rs): a woken step reads at most a handful of rows.
    assert!(queries <= 2, "{queries} queries");
    // The woken computation read one room's timeline: the one that moved.
    assert_eq!(
        stat(&after, "rooms_scanned"),
        stat(&before, "rooms_scanned") + 1,
        "{before} -> {after}"
    );
    // Its timeline came from the recent-event ring, not the database.
    assert!(stat(&after, "ring_hits") > stat(&before, "ring_hits"));
}

/// A server name with a port (`host:port`, as in development and on loopback) still counts its
/// own users as local: their events go into the recent-event rings (a user ID splits at its
/// first colon, not its last).
#[tokio::test]
async fn a_server_name_with_a_port_serves_woken_syncs_from_the_ring() {
    let server = Server::start_named(
        Backend::from_env(),
        "localhost:8448",
        "",
        &format!("enabled = false\n{}", common::RATE_LIMIT_FIELDS),
        "[privacy]\ndefault_mode = \"none\"\n[testing]\nsync_stats = true\n",
    )
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    assert!(alice.user_id.ends_with(":localhost:8448"), "{}", alice.user_id);
    let rooms = rooms_with(&bob, &[&alice], 1).await;
    // A first message gives the room its ring.
    bob.send_text(&rooms[0], "first").await;
    let since = alice.sync(None, 0, 10).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    let before = stats(&alice).await;
    let poll = long_poll(&alice, &since);
    until_waiting(&alice, stat(&before, "waits"), 1).await;
    let event_id = bob.send_text(&rooms[0], "second").await;
    assert_eq!(timeline_ids(&poll.await.unwrap(), &rooms[0]), vec![event_id]);
    let after = stats(&alice).await;
    assert!(
        stat(&after, "ring_hits") > stat(&before, "ring_hits"),
        "{before} -> {after}"
    );
}

/// Three receivers of one event: it is formatted once, and each gets its own per-receiver
/// fields (only the sending device sees its transaction ID).
#[tokio::test]
async fn receivers_share_one_formatting_of_an_event() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let rooms = rooms_with(&bob, &[&alice, &carol], 2).await;
    let mut tokens = Vec::new();
    for client in [&alice, &bob, &carol] {
        tokens.push(
            client.sync(None, 0, 10).await["next_batch"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Past everyone's presence of coming online.
    for (client, token) in [&alice, &bob, &carol].into_iter().zip(tokens.iter_mut()) {
        *token = client.sync(Some(token), 0, 10).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let before = stats(&alice).await;
    let polls: Vec<_> = [&alice, &bob, &carol]
        .into_iter()
        .zip(&tokens)
        .map(|(client, token)| long_poll(client, token))
        .collect();
    until_waiting(&alice, stat(&before, "waits"), 3).await;
    let before = stats(&alice).await;
    let event_id = bob.send_text(&rooms[1], "to all").await;
    let mut seen = Vec::new();
    for poll in polls {
        let resp = poll.await.unwrap();
        let events = resp["rooms"]["join"][&rooms[1]]["timeline"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let event = events
            .iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .unwrap_or_else(|| panic!("the event in {resp}"))
            .clone();
        assert_eq!(event["content"]["body"], "to all");
        assert!(event.get("room_id").is_none());
        assert!(event["unsigned"]["age"].is_u64());
        seen.push(event);
    }
    let after = stats(&alice).await;
    assert_eq!(
        stat(&after, "format_misses") - stat(&before, "format_misses"),
        1,
        "formatted once: {before} -> {after}"
    );
    assert_eq!(stat(&after, "format_hits") - stat(&before, "format_hits"), 2);
    // alice, bob (the sender's device), carol.
    assert!(seen[0]["unsigned"].get("transaction_id").is_none());
    assert!(seen[1]["unsigned"]["transaction_id"].is_string(), "{}", seen[1]);
    assert!(seen[2]["unsigned"].get("transaction_id").is_none());
}

/// Typing, a receipt and presence wake a sync that builds only those: no room's timeline is
/// read, and typing costs no query at all.
#[tokio::test]
async fn ephemeral_wakes_do_no_room_work() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rooms = rooms_with(&bob, &[&alice], 10).await;
    let event_id = bob.send_text(&rooms[3], "read me").await;
    let mut since = alice.sync(None, 0, 10).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Typing.
    let before = stats(&alice).await;
    let poll = long_poll(&alice, &since);
    until_waiting(&alice, stat(&before, "waits"), 1).await;
    bob.ok(
        Method::PUT,
        &format!("/rooms/{}/typing/{}", encode(&rooms[3]), encode(&bob.user_id)),
        Some(&json!({ "typing": true, "timeout": 10000 })),
    )
    .await;
    let woken = poll.await.unwrap();
    let join = woken["rooms"]["join"].as_object().unwrap();
    assert_eq!(join.len(), 1, "{woken}");
    let ephemeral = &woken["rooms"]["join"][&rooms[3]]["ephemeral"]["events"];
    assert_eq!(ephemeral[0]["type"], "m.typing", "{woken}");
    assert_eq!(ephemeral[0]["content"]["user_ids"], json!([bob.user_id]));
    assert!(timeline_ids(&woken, &rooms[3]).is_empty());
    let after = stats(&alice).await;
    assert_eq!(stat(&after, "rooms_scanned"), stat(&before, "rooms_scanned"));
    assert_eq!(stat(&after, "last_woken_queries"), 0, "{after}");
    since = woken["next_batch"].as_str().unwrap().to_owned();

    // A receipt.
    let before = stats(&alice).await;
    let poll = long_poll(&alice, &since);
    until_waiting(&alice, stat(&before, "waits"), 1).await;
    bob.ok(
        Method::POST,
        &format!(
            "/rooms/{}/receipt/m.read/{}",
            encode(&rooms[3]),
            encode(&event_id)
        ),
        Some(&json!({})),
    )
    .await;
    let woken = poll.await.unwrap();
    let ephemeral = &woken["rooms"]["join"][&rooms[3]]["ephemeral"]["events"];
    let receipt = ephemeral
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .unwrap_or_else(|| panic!("a receipt in {woken}"));
    assert!(receipt["content"][&event_id]["m.read"][&bob.user_id]["ts"].is_u64());
    let after = stats(&alice).await;
    assert_eq!(stat(&after, "rooms_scanned"), stat(&before, "rooms_scanned"));
    since = woken["next_batch"].as_str().unwrap().to_owned();

    // Presence of someone sharing a room.
    let before = stats(&alice).await;
    let poll = long_poll(&alice, &since);
    until_waiting(&alice, stat(&before, "waits"), 1).await;
    bob.ok(
        Method::PUT,
        &format!("/presence/{}/status", encode(&bob.user_id)),
        Some(&json!({ "presence": "unavailable", "status_msg": "away" })),
    )
    .await;
    let woken = poll.await.unwrap();
    let presence = woken["presence"]["events"].as_array().unwrap();
    assert!(
        presence
            .iter()
            .any(|p| p["sender"] == bob.user_id.as_str() && p["content"]["status_msg"] == "away"),
        "{woken}"
    );
    assert!(woken["rooms"]["join"].as_object().unwrap().is_empty(), "{woken}");
    let after = stats(&alice).await;
    assert_eq!(stat(&after, "rooms_scanned"), stat(&before, "rooms_scanned"));
    assert!(stat(&after, "last_woken_queries") <= 2, "{after}");
}

/// Presence reaches only users who share a room: a stranger's long-poll is not woken.
#[tokio::test]
async fn presence_wakes_only_users_who_share_a_room() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let stranger = server.register("stranger").await;
    rooms_with(&bob, &[&alice], 1).await;
    let since = stranger.sync(None, 0, 10).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = stats(&stranger).await;
    let client = stranger.clone();
    let poll = tokio::spawn(async move { client.sync(Some(&since), 1500, 10).await });
    until_waiting(&stranger, stat(&before, "waits"), 1).await;
    bob.ok(
        Method::PUT,
        &format!("/presence/{}/status", encode(&bob.user_id)),
        Some(&json!({ "presence": "unavailable", "status_msg": "secret" })),
    )
    .await;
    let resp = poll.await.unwrap();
    assert!(!resp.to_string().contains("secret"), "{resp}");
    let after = stats(&stranger).await;
    assert_eq!(stat(&after, "woken_computes"), stat(&before, "woken_computes"));
}

/// A filter that excludes all presence (`"not_types": ["*"]`, as bots and benchmarks ask) gets
/// none in a catch-up and is not woken by it, while the same sync without it sees the change.
#[tokio::test]
async fn a_filter_without_presence_is_not_woken_by_it() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    rooms_with(&bob, &[&alice], 1).await;
    let filter = encode(&json!({ "presence": { "not_types": ["*"] } }).to_string());
    let filtered = |since: String, timeout: u64| {
        let (alice, filter) = (alice.clone(), filter.clone());
        async move {
            let path = format!("/sync?timeout={timeout}&filter={filter}&since={}", encode(&since));
            alice.ok(Method::GET, &path, None).await
        }
    };
    let since = alice.sync(None, 0, 10).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let set_away = |status: &'static str| {
        let bob = bob.clone();
        async move {
            let path = format!("/presence/{}/status", encode(&bob.user_id));
            let body = json!({ "presence": "unavailable", "status_msg": status });
            bob.ok(Method::PUT, &path, Some(&body)).await;
        }
    };
    set_away("away").await;
    let unfiltered = alice.sync(Some(&since), 0, 10).await;
    assert!(
        unfiltered["presence"].to_string().contains("away"),
        "{unfiltered}"
    );
    let caught_up = filtered(since.clone(), 0).await;
    assert!(!caught_up.to_string().contains("away"), "{caught_up}");

    let since = caught_up["next_batch"].as_str().unwrap().to_owned();
    let before = stats(&alice).await;
    let poll = tokio::spawn(filtered(since, 1500));
    until_waiting(&alice, stat(&before, "waits"), 1).await;
    set_away("still away").await;
    let resp = poll.await.unwrap();
    assert!(!resp.to_string().contains("still away"), "{resp}");
    let after = stats(&alice).await;
    assert_eq!(stat(&after, "woken_computes"), stat(&before, "woken_computes"));
}

/// An event cached (formatted and in its room's ring) and then redacted: the next syncs show
/// it redacted, not the cached copy.
#[tokio::test]
async fn a_redaction_after_caching_is_reflected() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rooms = rooms_with(&bob, &[&alice], 1).await;
    let room = &rooms[0];
    let since = alice.sync(None, 0, 10).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = stats(&alice).await;
    let poll = long_poll(&alice, &since);
    until_waiting(&alice, stat(&before, "waits"), 1).await;
    let event_id = bob.send_text(room, "regrettable").await;
    let woken = poll.await.unwrap();
    assert_eq!(timeline_ids(&woken, room), vec![event_id.clone()]);
    // Formatted again from the cache by a second sync over the same range.
    let again = alice.sync(Some(&since), 0, 10).await;
    assert!(again.to_string().contains("regrettable"));
    assert!(stat(&stats(&alice).await, "format_hits") > stat(&before, "format_hits"));

    let redaction = bob.redact(room, &event_id).await;
    let after = alice.sync(Some(&since), 0, 10).await;
    assert!(!after.to_string().contains("regrettable"), "{after}");
    let events = after["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .unwrap();
    let redacted = events
        .iter()
        .find(|e| e["event_id"] == event_id.as_str())
        .unwrap();
    assert_eq!(redacted["content"], json!({}));
    assert_eq!(
        redacted["unsigned"]["redacted_because"]["event_id"],
        redaction.as_str()
    );
    assert!(events.iter().any(|e| e["event_id"] == redaction.as_str()));
    // And through /messages, which reads the same rings.
    let messages = alice
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=10", encode(room)),
            None,
        )
        .await;
    assert!(!messages.to_string().contains("regrettable"), "{messages}");
}

/// A user who left, and one who never joined, never get a cached event of the room: the
/// rings answer reads, the visibility check still decides.
#[tokio::test]
async fn cached_events_never_reach_those_who_may_not_see_them() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let dave = server.register("dave").await;
    let eve = server.register("eve").await;
    let room = bob
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": { "history_visibility": "joined" }
            }]
        }))
        .await;
    alice.join(&room).await;
    dave.join(&room).await;
    bob.send_text(&room, "before").await;
    let dave_before_leave = dave.sync(None, 0, 10).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    dave.leave(&room).await;
    let dave_since = dave.sync(Some(&dave_before_leave), 0, 10).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let eve_since = eve.sync(None, 0, 10).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // alice receives the secret, so it is in the ring and formatted.
    let alice_since = alice.sync(None, 0, 10).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let poll = long_poll(&alice, &alice_since);
    let dave_client = dave.clone();
    let dave_poll = tokio::spawn(async move { dave_client.sync(Some(&dave_since), 1500, 10).await });
    let (eve_client, eve_from) = (eve.clone(), eve_since.clone());
    let eve_poll = tokio::spawn(async move { eve_client.sync(Some(&eve_from), 1500, 10).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let secret = bob.send_text(&room, "secret after they left").await;
    assert!(poll.await.unwrap().to_string().contains(&secret));
    for resp in [dave_poll.await.unwrap(), eve_poll.await.unwrap()] {
        assert!(!resp.to_string().contains(&secret), "{resp}");
    }
    // Their later syncs and reads neither: the room's `leave` section ends at the leave.
    let dave_sync = dave.sync(Some(&dave_before_leave), 0, 50).await;
    assert!(dave_sync["rooms"]["leave"][&room].is_object(), "{dave_sync}");
    assert!(!dave_sync.to_string().contains(&secret), "{dave_sync}");
    let dave_sync = dave.sync(None, 0, 50).await;
    assert!(!dave_sync.to_string().contains(&secret), "{dave_sync}");
    let messages = dave
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=50", encode(&room)),
            None,
        )
        .await;
    assert!(!messages.to_string().contains(&secret), "{messages}");
    let (status, body) = eve
        .request(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=50", encode(&room)),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // A user who joins later sees nothing from before (history visibility `joined`), even
    // though the ring holds it.
    eve.join(&room).await;
    let eve_sync = eve.sync(Some(&eve_since), 0, 50).await;
    assert!(!eve_sync.to_string().contains(&secret), "{eve_sync}");
    assert!(eve_sync["rooms"]["join"][&room].is_object(), "{eve_sync}");
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

fn next_batch(resp: &Value) -> String {
    resp["next_batch"].as_str().unwrap().to_owned()
}

/// A client that follows its `next_batch` gets each next request computed from where the last
/// one left off: no full computation while only its joined rooms move, and the same events a
/// full computation gives.
#[tokio::test]
async fn a_request_from_the_last_next_batch_continues_without_a_full_computation() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rooms = rooms_with(&bob, &[&alice], 3).await;
    let mut since = next_batch(&alice.sync(None, 0, 10).await);
    since = next_batch(&alice.sync(Some(&since), 0, 10).await);
    let first = since.clone();

    let before = stats(&alice).await;
    let mut sent = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        sent.push(bob.send_text(room, &format!("message {i}")).await);
        let resp = alice.sync(Some(&since), 0, 10).await;
        assert_eq!(timeline_ids(&resp, room), vec![sent[i].clone()], "{resp}");
        assert_eq!(resp["rooms"]["join"].as_object().unwrap().len(), 1, "{resp}");
        since = next_batch(&resp);
    }
    let after = stats(&alice).await;
    assert_eq!(
        stat(&after, "full_computes"),
        stat(&before, "full_computes"),
        "{before} -> {after}"
    );
    assert_eq!(
        stat(&after, "continued_computes"),
        stat(&before, "continued_computes") + 3
    );

    // The whole range again from the first token (not the kept one): computed in full, the same
    // events.
    let full = alice.sync(Some(&first), 0, 10).await;
    for (room, event) in rooms.iter().zip(&sent) {
        assert_eq!(timeline_ids(&full, room), vec![event.clone()], "{full}");
    }
    assert_eq!(
        stat(&stats(&alice).await, "full_computes"),
        stat(&after, "full_computes") + 1
    );
}

/// What a continuation cannot know from its rooms — an invite, account data, new one-time key
/// counts — makes the next request compute in full, so none of it is missed.
#[tokio::test]
async fn a_continued_request_still_sees_invites_account_data_and_key_counts() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rooms = rooms_with(&bob, &[&alice], 1).await;
    let mut since = next_batch(&alice.sync(None, 0, 10).await);
    since = next_batch(&alice.sync(Some(&since), 0, 10).await);

    // An invite to a room the continued step did not watch.
    let invited = bob
        .create_room(json!({ "preset": "private_chat", "invite": [alice.user_id.clone()] }))
        .await;
    let resp = alice.sync(Some(&since), 0, 10).await;
    assert!(resp["rooms"]["invite"][&invited].is_object(), "{resp}");
    since = next_batch(&resp);

    // Account data.
    alice
        .ok(
            Method::PUT,
            &format!(
                "/user/{}/account_data/org.example.setting",
                encode(&alice.user_id)
            ),
            Some(&json!({ "on": true })),
        )
        .await;
    let resp = alice.sync(Some(&since), 0, 10).await;
    let types: Vec<&Value> = resp["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["type"])
        .collect();
    assert!(types.contains(&&json!("org.example.setting")), "{resp}");
    since = next_batch(&resp);

    // A message then a long-poll that continues: it waits, and is woken by the next message.
    bob.send_text(&rooms[0], "first").await;
    let resp = alice.sync(Some(&since), 0, 10).await;
    since = next_batch(&resp);
    let before = stats(&alice).await;
    let poll = long_poll(&alice, &since);
    until_waiting(&alice, stat(&before, "waits"), 1).await;
    let second = bob.send_text(&rooms[0], "second").await;
    let woken = poll.await.unwrap();
    assert_eq!(timeline_ids(&woken, &rooms[0]), vec![second]);
    since = next_batch(&woken);

    // One-time keys uploaded by the device: the next continued sync has the new count.
    let dev = e2ee_support::Device::new(&alice);
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "device_keys": dev.device_keys(), "one_time_keys": dev.one_time_keys("A", 3) })),
        )
        .await;
    let resp = alice.sync(Some(&since), 0, 10).await;
    assert_eq!(
        resp["device_one_time_keys_count"]["signed_curve25519"], 3,
        "{resp}"
    );
    since = next_batch(&resp);
    // Claimed by someone else: the count goes down in the next continued sync.
    bob.ok(
        Method::POST,
        "/keys/claim",
        Some(&json!({ "one_time_keys": { alice.user_id.clone(): { alice.device_id.clone(): "signed_curve25519" } } })),
    )
    .await;
    let resp = alice.sync(Some(&since), 0, 10).await;
    assert_eq!(
        resp["device_one_time_keys_count"]["signed_curve25519"], 2,
        "{resp}"
    );
}

/// Another device of the same user, or the same device with another filter, does not continue
/// someone else's step: each gets what a full computation gives.
#[tokio::test]
async fn a_different_filter_does_not_continue_a_step() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rooms = rooms_with(&bob, &[&alice], 2).await;
    let since = next_batch(&alice.sync(None, 0, 10).await);
    let since = next_batch(&alice.sync(Some(&since), 0, 10).await);
    let event = bob.send_text(&rooms[1], "hello").await;
    // A filter naming only the other room, from the continued token: the full answer under it.
    let filter = json!({ "room": { "rooms": [rooms[0].clone()] } }).to_string();
    let before = stats(&alice).await;
    let resp = alice
        .ok(
            Method::GET,
            &format!(
                "/sync?timeout=0&since={}&filter={}",
                encode(&since),
                encode(&filter)
            ),
            None,
        )
        .await;
    assert!(resp["rooms"]["join"][&rooms[1]].is_null(), "{resp}");
    let after = stats(&alice).await;
    assert_eq!(
        stat(&after, "continued_computes"),
        stat(&before, "continued_computes")
    );
    // And the original filter from the same token still sees the message.
    let resp = alice.sync(Some(&since), 0, 10).await;
    assert_eq!(timeline_ids(&resp, &rooms[1]), vec![event]);
}

/// A continued step of a user kicked from a room: the leave, and nothing sent after it, even
/// though the step that is continued watched that room as joined.
#[tokio::test]
async fn a_continued_step_after_a_kick_shows_the_leave_and_nothing_after() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rooms = rooms_with(&bob, &[&alice], 2).await;
    let mut since = next_batch(&alice.sync(None, 0, 10).await);
    bob.send_text(&rooms[0], "before").await;
    since = next_batch(&alice.sync(Some(&since), 0, 10).await);

    bob.ok(
        Method::POST,
        &format!("/rooms/{}/kick", encode(&rooms[0])),
        Some(&json!({ "user_id": alice.user_id.clone() })),
    )
    .await;
    bob.send_text(&rooms[0], "after the kick").await;
    let other = bob.send_text(&rooms[1], "in the other room").await;
    let resp = alice.sync(Some(&since), 0, 10).await;
    assert!(resp["rooms"]["join"][&rooms[0]].is_null(), "{resp}");
    let left = &resp["rooms"]["leave"][&rooms[0]];
    assert!(left.is_object(), "{resp}");
    assert!(!resp.to_string().contains("after the kick"), "{resp}");
    assert_eq!(timeline_ids(&resp, &rooms[1]), vec![other]);
    // And the next continued step does not bring the room back.
    bob.send_text(&rooms[0], "later still").await;
    let next = alice.sync(Some(&next_batch(&resp)), 0, 10).await;
    assert!(!next.to_string().contains("later still"), "{next}");
}

/// The events of `room`'s timeline in a sync response.
fn timeline(resp: &Value, room: &str) -> Vec<Value> {
    resp["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Two identical long-polls (one device, one `since`, one filter) woken by one message: one
/// computation answers both, with the same events and `next_batch`.
#[tokio::test]
async fn identical_long_polls_share_one_computation() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rooms = rooms_with(&bob, &[&alice], 2).await;
    let mut since = next_batch(&alice.sync(None, 0, 10).await);
    since = next_batch(&alice.sync(Some(&since), 0, 10).await);

    let before = stats(&alice).await;
    let polls = [long_poll(&alice, &since), long_poll(&alice, &since)];
    until_waiting(&alice, stat(&before, "waits"), 2).await;
    let before = stats(&alice).await;
    let event_id = bob.send_text(&rooms[1], "to both tabs").await;
    let mut answers = Vec::new();
    for poll in polls {
        answers.push(poll.await.unwrap());
    }
    for answer in &answers {
        assert_eq!(
            timeline_ids(answer, &rooms[1]),
            vec![event_id.clone()],
            "{answer}"
        );
    }
    assert_eq!(answers[0]["next_batch"], answers[1]["next_batch"]);
    let after = stats(&alice).await;
    assert_eq!(
        stat(&after, "woken_computes") - stat(&before, "woken_computes"),
        1,
        "one computation: {before} -> {after}"
    );
    assert_eq!(
        stat(&after, "shared_answers") - stat(&before, "shared_answers"),
        1
    );

    // The device's next request, from that `next_batch`, continues from the shared step.
    let next = alice
        .sync(Some(answers[0]["next_batch"].as_str().unwrap()), 0, 10)
        .await;
    assert!(next["rooms"]["join"].as_object().unwrap().is_empty(), "{next}");
    assert_eq!(
        stat(&stats(&alice).await, "full_computes"),
        stat(&after, "full_computes")
    );
}

/// Identical-looking long-polls of another device of the same user, and of another user, from
/// the same `since`, never get the shared answer: only the sending device sees its transaction
/// ID, whoever computed first.
#[tokio::test]
async fn another_device_or_user_never_gets_a_shared_answer() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let rooms = rooms_with(&bob, &[&alice, &carol], 1).await;
    let alice2 = e2ee_support::login(&server, "alice").await;
    assert_ne!(alice.device_id, alice2.device_id);
    // Past everyone's presence of coming online, then one token for all.
    for client in [&alice, &alice2, &bob, &carol] {
        client.sync(None, 0, 10).await;
    }
    let since = next_batch(&alice.sync(None, 0, 10).await);
    for client in [&alice2, &carol] {
        client.sync(Some(&since), 0, 10).await;
    }

    let before = stats(&alice).await;
    let polls = [
        long_poll(&alice, &since),
        long_poll(&alice2, &since),
        long_poll(&carol, &since),
        long_poll(&alice, &since),
    ];
    until_waiting(&alice, stat(&before, "waits"), 4).await;
    let before = stats(&alice).await;
    let path = alice.send_path(&rooms[0], "m.room.message");
    let txn = path.rsplit('/').next().unwrap().to_owned();
    let (status, sent) = alice
        .request(
            Method::PUT,
            &path,
            Some(&json!({ "msgtype": "m.text", "body": "from alice's first device" })),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let mut answers = Vec::new();
    for poll in polls {
        answers.push(poll.await.unwrap());
    }
    for (i, answer) in answers.iter().enumerate() {
        let events = timeline(answer, &rooms[0]);
        let event = events
            .iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .unwrap_or_else(|| panic!("poll {i}: the event in {answer}"));
        let txn_id = &txn;
        let txn = &event["unsigned"]["transaction_id"];
        if i == 0 || i == 3 {
            assert_eq!(txn, txn_id.as_str(), "the sending device's poll {i}: {event}");
        } else {
            assert!(txn.is_null(), "poll {i} is not the sending device's: {event}");
        }
    }
    let after = stats(&alice).await;
    // Only alice's first device's two polls shared.
    assert_eq!(
        stat(&after, "shared_answers") - stat(&before, "shared_answers"),
        1,
        "{before} -> {after}"
    );
    assert_eq!(
        stat(&after, "woken_computes") - stat(&before, "woken_computes"),
        3
    );
}

/// To-device messages for one device reach both of its identical long-polls and no poll of the
/// user's other device.
#[tokio::test]
async fn shared_to_device_messages_reach_only_their_device() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alice2 = e2ee_support::login(&server, "alice").await;
    for client in [&alice, &alice2, &bob] {
        client.sync(None, 0, 10).await;
    }
    let since = next_batch(&alice.sync(None, 0, 10).await);
    alice2.sync(Some(&since), 0, 10).await;

    let before = stats(&alice).await;
    let polls = [long_poll(&alice, &since), long_poll(&alice, &since)];
    let other = {
        let alice2 = alice2.clone();
        let since = since.clone();
        tokio::spawn(async move { alice2.sync(Some(&since), 1_500, 10).await })
    };
    until_waiting(&alice, stat(&before, "waits"), 3).await;
    let before = stats(&alice).await;
    let messages =
        json!({ alice.user_id.clone(): { alice.device_id.clone(): { "secret": "for the first device" } } });
    let (status, body) = bob
        .request(
            Method::PUT,
            "/sendToDevice/org.example.test/t1",
            Some(&json!({ "messages": messages })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for poll in polls {
        let answer = poll.await.unwrap();
        let events = answer["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(events.len(), 1, "{answer}");
        assert_eq!(events[0]["content"]["secret"], "for the first device");
    }
    let other = other.await.unwrap();
    assert!(
        other["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "the other device's poll: {other}"
    );
    let after = stats(&alice).await;
    assert_eq!(
        stat(&after, "shared_answers") - stat(&before, "shared_answers"),
        1,
        "{before} -> {after}"
    );
}

/// A long-poll that found nothing keeps its step from its own `since`: the device's identical
/// request (another tab) continues it instead of computing in full, and both get the message.
#[tokio::test]
async fn an_identical_request_continues_a_waiting_step() {
    let server = start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rooms = rooms_with(&bob, &[&alice], 2).await;
    let mut since = next_batch(&alice.sync(None, 0, 10).await);
    since = next_batch(&alice.sync(Some(&since), 0, 10).await);
    // Another filter than the steps kept so far: the first long-poll computes in full.
    let poll = |client: &Client, since: &str| {
        let (client, since) = (client.clone(), since.to_owned());
        tokio::spawn(async move { client.sync(Some(&since), 10_000, 9).await })
    };

    let before = stats(&alice).await;
    let one = poll(&alice, &since);
    until_waiting(&alice, stat(&before, "waits"), 1).await;
    let middle = stats(&alice).await;
    assert_eq!(stat(&middle, "full_computes"), stat(&before, "full_computes") + 1);
    let two = poll(&alice, &since);
    until_waiting(&alice, stat(&middle, "waits"), 1).await;
    let after = stats(&alice).await;
    assert_eq!(
        stat(&after, "full_computes"),
        stat(&middle, "full_computes"),
        "{middle} -> {after}"
    );
    assert_eq!(
        stat(&after, "continued_computes"),
        stat(&middle, "continued_computes") + 1
    );

    let event_id = bob.send_text(&rooms[0], "to both").await;
    for poll in [one, two] {
        let answer = poll.await.unwrap();
        assert_eq!(
            timeline_ids(&answer, &rooms[0]),
            vec![event_id.clone()],
            "{answer}"
        );
    }
}
