//! Incremental sync under concurrent writers: every event reaches a syncing client exactly once,
//! in the order each sender sent it, whether the client long-polls or polls.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Client, Server, encode};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;

const SENDERS: usize = 4;
const ROOMS: usize = 3;
const PER_SENDER: usize = 30;

/// When a watching client may stop: a sync that starts after every writer has had its answer
/// must return whatever is still missing, so one more round after that is decisive. The cap
/// only keeps a hanging server from hanging the test.
#[derive(Clone)]
struct Finish {
    writers_done: Arc<AtomicBool>,
    cap: Instant,
}

impl Finish {
    fn new() -> Self {
        Finish {
            writers_done: Arc::new(AtomicBool::new(false)),
            cap: Instant::now() + Duration::from_secs(60),
        }
    }

    fn writers_done(&self) {
        self.writers_done.store(true, Ordering::SeqCst);
    }

    /// Read before each sync: true when that sync is the last one needed.
    fn last_round(&self) -> bool {
        self.writers_done.load(Ordering::SeqCst) || Instant::now() > self.cap
    }
}

/// (room, event ID, sender) in the order the syncs delivered them.
type Seen = Vec<(String, String, String)>;

async fn observe(client: Client, since: String, timeout_ms: u64, expected: usize, finish: Finish) -> Seen {
    let mut since = since;
    let mut seen: Seen = Vec::new();
    let mut syncs = 0;
    loop {
        let last_round = finish.last_round();
        // After the writers, a long-poll would wait its full timeout for nothing.
        let timeout = if seen.len() >= expected { 0 } else { timeout_ms };
        let resp: Value = client.sync(Some(&since), timeout, 1000).await;
        syncs += 1;
        let next = resp["next_batch"].as_str().expect("next_batch").to_owned();
        if let Some(rooms) = resp["rooms"]["join"].as_object() {
            for (room_id, room) in rooms {
                assert_ne!(
                    room["timeline"]["limited"],
                    json!(true),
                    "timeline limited with a 1000-event limit: {room}"
                );
                for event in room["timeline"]["events"].as_array().into_iter().flatten() {
                    if event["type"] == "m.room.message" {
                        seen.push((
                            room_id.clone(),
                            event["event_id"].as_str().expect("event_id").to_owned(),
                            event["sender"].as_str().expect("sender").to_owned(),
                        ));
                    }
                }
            }
        }
        since = next;
        if last_round {
            break;
        }
    }
    println!(
        "observer (timeout {timeout_ms} ms): {} events in {syncs} syncs",
        seen.len()
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_tokens_never_skip_or_repeat() {
    let server = Server::start().await;
    let watcher = server.register("watcher").await;
    let poller = server.register("poller").await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(server.register(&format!("sender{i}")).await);
    }
    let mut rooms = Vec::new();
    for i in 0..ROOMS {
        let room = watcher
            .create_room(json!({ "preset": "public_chat", "name": format!("busy {i}") }))
            .await;
        poller.join(&room).await;
        for s in &senders {
            s.join(&room).await;
        }
        rooms.push(room);
    }
    let since_w = watcher.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let since_p = poller.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();

    let total = SENDERS * PER_SENDER;
    let finish = Finish::new();
    let long_poll = tokio::spawn(observe(watcher.clone(), since_w, 3000, total, finish.clone()));
    let short_poll = tokio::spawn(observe(poller.clone(), since_p, 0, total, finish.clone()));

    let mut tasks = Vec::new();
    for (i, sender) in senders.iter().enumerate() {
        let sender = sender.clone();
        let rooms = rooms.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for k in 0..PER_SENDER {
                let room = &rooms[(k + i) % ROOMS];
                let id = sender.send_text(room, &format!("{} #{k}", sender.user_id)).await;
                sent.push((room.clone(), id));
            }
            (sender.user_id.clone(), sent)
        }));
    }
    let mut sent: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for t in tasks {
        let (user, events) = t.await.expect("sender task");
        sent.insert(user, events);
    }
    finish.writers_done();

    let db = server.db().await;
    let mut stream_of: HashMap<String, i64> = HashMap::new();
    for r in sqlx::query("SELECT event_id, stream_ordering FROM events")
        .fetch_all(&db)
        .await
        .expect("read events")
    {
        stream_of.insert(r.get(0), r.get(1));
    }
    db.close().await;

    for (name, handle) in [("long-poll", long_poll), ("poll", short_poll)] {
        let seen = handle.await.expect("observer task");
        // Exactly once.
        let mut unique = HashSet::new();
        for (_, id, _) in &seen {
            assert!(unique.insert(id.clone()), "{name}: {id} delivered twice");
        }
        for (user, events) in &sent {
            for (room, id) in events {
                assert!(
                    seen.iter().any(|(r, e, _)| r == room && e == id),
                    "{name}: {id} from {user} in {room} never delivered"
                );
            }
        }
        assert_eq!(seen.len(), total, "{name}: unexpected extra events");
        // In each sender's order, per room; and in stream order per room.
        for (user, events) in &sent {
            for room in &rooms {
                let sent_order: Vec<&String> =
                    events.iter().filter(|(r, _)| r == room).map(|(_, e)| e).collect();
                let seen_order: Vec<&String> = seen
                    .iter()
                    .filter(|(r, _, s)| r == room && s == user)
                    .map(|(_, e, _)| e)
                    .collect();
                assert_eq!(
                    seen_order, sent_order,
                    "{name}: {user}'s events in {room} out of order"
                );
            }
        }
        for room in &rooms {
            let positions: Vec<i64> = seen
                .iter()
                .filter(|(r, _, _)| r == room)
                .map(|(_, e, _)| stream_of[e])
                .collect();
            assert!(
                positions.windows(2).all(|w| w[0] < w[1]),
                "{name}: {room} delivered out of stream order: {positions:?}"
            );
        }
    }
}

/// Account data has its own stream: updates written concurrently (by this user's devices and by
/// other users, who share the stream's positions) each reach the user's incremental syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn account_data_sync_never_skips() {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 25;
    let server = Server::start().await;
    let watcher = server.register("watcher").await;
    let mut others = Vec::new();
    for i in 0..WRITERS {
        others.push(server.register(&format!("other{i}")).await);
    }
    let since = watcher.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();

    let finish = Finish::new();
    let watch = {
        let watcher = watcher.clone();
        let finish = finish.clone();
        tokio::spawn(async move {
            let mut since = since;
            let mut seen: Vec<String> = Vec::new();
            loop {
                let last_round = finish.last_round();
                let resp = watcher.sync(Some(&since), 0, 10).await;
                for event in resp["account_data"]["events"].as_array().into_iter().flatten() {
                    if let Some(t) = event["type"].as_str()
                        && t.starts_with("org.hearth.ad.")
                    {
                        seen.push(t.to_owned());
                    }
                }
                since = resp["next_batch"].as_str().expect("next_batch").to_owned();
                if last_round {
                    break;
                }
            }
            seen
        })
    };

    let mut tasks = Vec::new();
    for (w, other) in others.iter().enumerate() {
        // The watcher's own writes (as from several devices at once) and another user's writes,
        // which take positions in the same stream.
        let own = watcher.clone();
        let other = other.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let t = format!("org.hearth.ad.{w}.{i}");
                own.ok(
                    Method::PUT,
                    &format!("/user/{}/account_data/{t}", encode(&own.user_id)),
                    Some(&json!({ "i": i })),
                )
                .await;
                other
                    .ok(
                        Method::PUT,
                        &format!("/user/{}/account_data/{t}", encode(&other.user_id)),
                        Some(&json!({ "i": i })),
                    )
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    finish.writers_done();
    let seen = watch.await.expect("watcher");
    let unique: HashSet<&String> = seen.iter().collect();
    let missing: Vec<String> = (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |i| format!("org.hearth.ad.{w}.{i}")))
        .filter(|t| !unique.contains(t))
        .collect();
    println!(
        "account data: {} updates seen, {} missing",
        seen.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "account data never delivered by incremental sync: {missing:?}"
    );
    assert_eq!(unique.len(), seen.len(), "account data delivered twice");
}

/// Read receipts posted concurrently by many users: the watcher's incremental syncs end with
/// every user's last receipt (a skipped final update would leave a stale read marker forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receipt_sync_ends_with_every_latest_receipt() {
    const READERS: usize = 5;
    const EVENTS: usize = 15;
    let server = Server::start().await;
    let watcher = server.register("watcher").await;
    let room = watcher.create_room(json!({ "preset": "public_chat" })).await;
    let mut readers = Vec::new();
    for i in 0..READERS {
        let r = server.register(&format!("reader{i}")).await;
        r.join(&room).await;
        readers.push(r);
    }
    let mut events = Vec::new();
    for i in 0..EVENTS {
        events.push(watcher.send_text(&room, &format!("read me {i}")).await);
    }
    let since = watcher.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();

    let finish = Finish::new();
    let last_event = events.last().expect("events").clone();
    let reader_ids: Vec<String> = readers.iter().map(|r| r.user_id.clone()).collect();
    let watch = {
        let (watcher, room, finish, last_event, reader_ids) = (
            watcher.clone(),
            room.clone(),
            finish.clone(),
            last_event.clone(),
            reader_ids.clone(),
        );
        tokio::spawn(async move {
            let mut since = since;
            let mut latest: HashMap<String, String> = HashMap::new();
            let mut updates = 0;
            loop {
                let done = reader_ids.iter().all(|u| latest.get(u) == Some(&last_event));
                if done {
                    break;
                }
                let last_round = finish.last_round();
                let resp = watcher.sync(Some(&since), 0, 1).await;
                for event in resp["rooms"]["join"][&room]["ephemeral"]["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if event["type"] != "m.receipt" {
                        continue;
                    }
                    for (event_id, types) in event["content"].as_object().into_iter().flatten() {
                        for user in types["m.read"].as_object().into_iter().flatten().map(|(u, _)| u) {
                            latest.insert(user.clone(), event_id.clone());
                            updates += 1;
                        }
                    }
                }
                since = resp["next_batch"].as_str().expect("next_batch").to_owned();
                if last_round {
                    break;
                }
            }
            (latest, updates)
        })
    };

    let mut tasks = Vec::new();
    for reader in &readers {
        let (reader, room, events) = (reader.clone(), room.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            for event_id in &events {
                reader
                    .ok(
                        Method::POST,
                        &format!("/rooms/{}/receipt/m.read/{}", encode(&room), encode(event_id)),
                        Some(&json!({})),
                    )
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("reader");
    }
    finish.writers_done();
    let (latest, updates) = watch.await.expect("watcher");
    println!("receipts: {updates} updates seen");
    for user in &reader_ids {
        assert_eq!(
            latest.get(user),
            Some(&last_event),
            "{user}'s last receipt never reached the watcher's sync (saw {:?})",
            latest.get(user)
        );
    }
}

/// Presence set concurrently by many users: the watcher's incremental syncs end with every
/// user's last status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_sync_ends_with_every_latest_status() {
    const USERS: usize = 5;
    const UPDATES: usize = 15;
    let server = Server::start().await;
    let watcher = server.register("watcher").await;
    let room = watcher.create_room(json!({ "preset": "public_chat" })).await;
    let mut users = Vec::new();
    for i in 0..USERS {
        let u = server.register(&format!("busy{i}")).await;
        u.join(&room).await;
        users.push(u);
    }
    let since = watcher.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let last = format!("status {}", UPDATES - 1);
    let ids: Vec<String> = users.iter().map(|u| u.user_id.clone()).collect();
    let finish = Finish::new();
    let watch = {
        let (watcher, finish, last, ids) = (watcher.clone(), finish.clone(), last.clone(), ids.clone());
        tokio::spawn(async move {
            let mut since = since;
            let mut latest: HashMap<String, String> = HashMap::new();
            loop {
                let done = ids.iter().all(|u| latest.get(u) == Some(&last));
                if done {
                    break;
                }
                let last_round = finish.last_round();
                let resp = watcher.sync(Some(&since), 0, 1).await;
                for event in resp["presence"]["events"].as_array().into_iter().flatten() {
                    if let (Some(sender), Some(msg)) =
                        (event["sender"].as_str(), event["content"]["status_msg"].as_str())
                    {
                        latest.insert(sender.to_owned(), msg.to_owned());
                    }
                }
                since = resp["next_batch"].as_str().expect("next_batch").to_owned();
                if last_round {
                    break;
                }
            }
            latest
        })
    };
    let mut tasks = Vec::new();
    for user in &users {
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..UPDATES {
                user.ok(
                    Method::PUT,
                    &format!("/presence/{}/status", encode(&user.user_id)),
                    Some(&json!({ "presence": "online", "status_msg": format!("status {i}") })),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    finish.writers_done();
    let latest = watch.await.expect("watcher");
    for user in &ids {
        assert_eq!(
            latest.get(user),
            Some(&last),
            "{user}'s last presence never reached the watcher's sync"
        );
    }
}
